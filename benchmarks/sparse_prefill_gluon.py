"""Sparse prefill on a Hopper GPU: the Gluon kernel (``ops/sparse_prefill/gluon_kernel.py``) against
the portable Triton kernel. One self-contained run (well under 5 minutes):

1. a watchdog subprocess makes the first Gluon launches (small case, then one bench shape) and
   must finish within HANG_S seconds, so a hanging kernel is reported instead of freezing the run;
2. the copy / matmul ceilings of this device;
3. correctness: fresh random inputs (NaN in every KV row no valid slot names, outputs allocated
   as NaN) against the float32 reference, small cases and the bench shapes (reference on a
   subset of tokens);
4. timing of Gluon launch variants and of the portable kernel at s_q 4096, s_kv 32768, topk 2048;
   a compact table last.

    PYTHONPATH=src python3 benchmarks/sparse_prefill_gluon.py
"""
import os
import subprocess
import sys
import time
import traceback

import torch

HANG_S = 240  # the watchdog's limit: first compiles (~10 s each) plus launches
BENCH = [  # (name, h_q, d_qk)
    ("h128 d576", 128, 576),
    ("h64 d576", 64, 576),
    ("h128 d512", 128, 512),
]
S_Q, S_KV, TOPK = 4096, 32768, 2048
# FlashMLA on an H200 (docs/sparse_prefill.md), for the "x FlashMLA" column
FLASH_MLA_US = {"h128 d576": 4164, "h64 d576": 1924, "h128 d512": 3861}
# (label, stages, load_warps, grid_ctas, evict_last): grid_ctas 0 = persistent (one CTA per SM),
# -1 = one CTA per work item
VARIANTS = [
    ("persist", 2, 4, 0, False),
    ("persist+evict_last", 2, 4, 0, True),
    ("1 CTA/item", 2, 4, -1, False),
    ("1 CTA/item+evict_last", 2, 4, -1, True),
]
SMALL = [  # (d_qk, s_q, s_kv, h_q, topk, features)
    (576, 62, 592, 128, 128, True), (576, 213, 1592, 64, 384, False),
    (512, 62, 592, 128, 128, True), (512, 37, 300, 64, 200, True),
    (576, 37, 300, 3, 65, True), (576, 50, 1840, 72, 130, False),
]


def _case(d_qk, s_q, s_kv, h_q, topk, feats, seed):
    from openmla.testing import generate as gen

    return gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=feats,
                                     with_attn_sink=feats, all_invalid=feats, device="cuda",
                                     seed=seed, non_contiguous=feats)


def _poison_kv(case):
    """NaN in every KV row that no listed, valid slot names."""
    kv, idx, lengths = case["kv"], case["indices"][:, 0], case["topk_length"]
    s_kv = kv.shape[0]
    slot = torch.arange(idx.shape[-1], device=idx.device)
    listed = slot[None, :] < (lengths[:, None] if lengths is not None else idx.shape[-1])
    valid = listed & (idx >= 0) & (idx < s_kv)
    referenced = torch.zeros(s_kv, dtype=torch.bool, device=kv.device)
    referenced[idx[valid].long()] = True
    kv[~referenced] = float("nan")
    return case


def _run(case, variant):
    from openmla.ops.sparse_prefill.gluon_launch import sparse_prefill_gluon_kernel

    _, stages, load_warps, grid_ctas, evict_last = variant
    return sparse_prefill_gluon_kernel(case["q"], case["kv"], case["indices"], case["attn_sink"],
                                       case["topk_length"], case["sm_scale"], 512, stages,
                                       load_warps, grid_ctas, evict_last)


def _poisoned_run(case, variant):
    """The kernel with every output allocated as NaN (an unwritten element fails the check)."""
    from openmla.testing.compare import nan_filled_outputs

    with nan_filled_outputs():
        return _run(case, variant)


def _check(case, got, rows=None):
    """Reason for a mismatch with the reference (on the token subset ``rows``), else None."""
    from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
    from openmla.testing import generate as gen
    from openmla.testing.compare import TOLERANCES, compare

    tol = TOLERANCES["sparse_prefill"]
    kw = gen.reference_kwargs("sparse_prefill", case)
    out, ml, lse = got
    if rows is not None:
        kw = dict(kw, q=kw["q"][rows], indices=kw["indices"][rows])
        if kw.get("topk_length") is not None:
            kw["topk_length"] = kw["topk_length"][rows]
        out, ml, lse = out[rows], ml[rows], lse[rows]
    r_out, r_ml, r_lse = sparse_prefill_ref(**kw)
    for name, a, r in (("out", out.float(), r_out), ("max_logits", ml, r_ml), ("lse", lse, r_lse)):
        why = compare(a, r, tol[name])
        if why is not None:
            return f"{name}: {why}"
    return None


def first_launch() -> int:
    """Body of the watchdog subprocess: the first Gluon launches, checked."""
    t0 = time.time()
    case = _poison_kv(_case(576, 62, 592, 128, 128, True, seed=1))
    got = _poisoned_run(case, VARIANTS[0])
    torch.cuda.synchronize()
    print(f"first launch (small) done in {time.time() - t0:.1f} s: {_check(case, got) or 'OK'}",
          flush=True)
    t0 = time.time()
    case = _case(576, S_Q, S_KV, 128, TOPK, False, seed=2)
    _run(case, VARIANTS[0])
    torch.cuda.synchronize()
    print(f"first launch (bench h128 d576) done in {time.time() - t0:.1f} s", flush=True)
    return 0


def main() -> int:
    from openmla.device import device_info
    from openmla.ops.sparse_prefill.launch import sparse_prefill_triton
    from openmla.testing.bench import measure_ceilings, time_fn
    from openmla.testing.flops import sparse_prefill_flops

    info = device_info("cuda")
    print(f"device: {torch.cuda.get_device_name()} sm_{info.arch} {info.num_sms} SMs", flush=True)
    if not info.is_hopper:
        print("not a Hopper GPU: the Gluon kernel is sm_90 only")
        return 1

    # 1. watchdog around the first launches
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, __file__, "--first-launch"], timeout=HANG_S,
                             capture_output=True, text=True, env=dict(os.environ))
        print(res.stdout.strip())
        if res.returncode != 0:
            print("FIRST LAUNCH FAILED:\n" + res.stderr[-4000:])
            return 1
    except subprocess.TimeoutExpired as e:
        print(f"HANG: the first Gluon launches did not finish in {HANG_S} s")
        print((e.stdout or b"").decode(errors="replace")[-2000:] if isinstance(e.stdout, bytes)
              else (e.stdout or "")[-2000:])
        return 1
    print(f"watchdog passed in {time.time() - t0:.1f} s", flush=True)

    # 2. ceilings
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOPS",
          flush=True)

    # 3. correctness
    failures = []
    for i, shape in enumerate(SMALL):
        for variant in VARIANTS:
            try:
                case = _poison_kv(_case(*shape, seed=100 + i))
                why = _check(case, _poisoned_run(case, variant))
            except Exception as e:  # noqa: BLE001 - report and go on
                why = f"raised {type(e).__name__}: {e}"
            if why:
                failures.append(f"small {shape} {variant[0]}: {why}")
    print(f"small cases: {len(SMALL) * len(VARIANTS) - len(failures)}/"
          f"{len(SMALL) * len(VARIANTS)} OK", flush=True)

    # 4. bench shapes: check (token subset), then time
    rows_sub = torch.cat([torch.arange(0, 96), torch.arange(S_Q - 96, S_Q)]).cuda()
    table = []
    for name, h_q, d_qk in BENCH:
        case = _case(d_qk, S_Q, S_KV, h_q, TOPK, False, seed=7)
        flop = sparse_prefill_flops(S_Q, h_q, d_qk, 512, topk=TOPK)
        kw = dict(q=case["q"], kv=case["kv"], indices=case["indices"], sm_scale=case["sm_scale"])
        try:
            t = time_fn(lambda: sparse_prefill_triton(**kw), budget_s=1.0, max_runs=30)
            table.append((name, "triton", t.p50, flop, "OK"))
        except Exception as e:  # noqa: BLE001
            table.append((name, "triton", float("nan"), flop, f"raised {type(e).__name__}"))
        for variant in VARIANTS:
            try:
                why = _check(case, _poisoned_run(case, variant), rows_sub)
                t = time_fn(lambda: _run(case, variant), budget_s=1.0, max_runs=30)
                table.append((name, variant[0], t.p50, flop, why or "OK"))
                if why:
                    failures.append(f"{name} {variant[0]}: {why}")
            except Exception as e:  # noqa: BLE001
                table.append((name, variant[0], float("nan"), flop, f"raised {type(e).__name__}"))
                failures.append(f"{name} {variant[0]}: {traceback.format_exc(limit=3)}")
            print(f"  {name} {variant[0]}: {table[-1][2]:.0f} us {table[-1][4]}", flush=True)

    for f in failures:
        print("FAIL", f)
    print(f"\n{'shape':10} {'kernel':24} {'us':>8} {'TFLOPS':>7} {'x matmul':>8} "
          f"{'x triton':>8} {'x FlashMLA':>10}  check")
    base = {name: us for name, kernel, us, _, _ in table if kernel == "triton"}
    for name, kernel, us, flop, ok in table:
        tf = flop / us / 1e6
        print(f"{name:10} {kernel:24} {us:8.0f} {tf:7.0f} {tf / ceil.matmul_tflops:8.2f} "
              f"{base[name] / us:8.2f} {FLASH_MLA_US[name] / us:10.2f}  {ok[:40]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    if "--first-launch" in sys.argv:
        sys.exit(first_launch())
    sys.exit(main())
