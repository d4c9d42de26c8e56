"""Device check and timing of the Hopper (Gluon) sparse-decode kernel against the portable Triton
kernel, V3.2 layout (d_qk 576), b=128 topk=2048. One self-contained run (< 5 minutes on an H100):

    PYTHONPATH=src python3 benchmarks/sparse_decode_gluon.py            # on the GPU
    PYTHONPATH=src python3 benchmarks/sparse_decode_gluon.py --compile  # no GPU: sm_90 report

1. device ceilings (copy GB/s, bf16 matmul TFLOPS);
2. first Gluon launches in a subprocess under a watchdog (a kernel that hangs is reported, not
   waited on forever) — small shapes and one bench shape, against the float32 reference;
3. correctness in this process: small shapes and every bench shape, outputs NaN-filled first;
4. timing (median µs, L2 flushed): public call (schedule reused through the meta object) and
   split kernel alone, gluon vs triton, plus launch variants of the Gluon kernel (register split,
   ring depth), each guarded;
5. a compact table last.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import traceback

import torch

from openmla.testing.compare import nan_filled_outputs

FLASHMLA_H100_US = {(1, 128): 218.0, (2, 128): 415.0}  # FlashMLA on an H100 (the issue)
TARGET_US = {(1, 16): 72.0}  # memory-bound target of the issue (H100)
BENCH = [(1, 128), (2, 128), (1, 64), (1, 16)]  # (s_q, h_q); b=128, topk=2048
B, TOPK, S_K, PBS = 128, 2048, 32768, 64
# (b, s_q, h_q, s_k, topk, pbs, topk_length, all_invalid)
SMALL = [(4, 1, 16, 512, 64, 2, False, False), (5, 2, 64, 1024, 576, 61, True, False),
         (3, 1, 128, 2046, 2048, 64, False, False), (6, 2, 16, 300, 100, 64, True, False),
         (2, 1, 64, 300, 130, 64, False, True)]
WATCHDOG_S = 240
# launch variants of the split kernel: (label, kwargs of sparse_decode_gluon_kernels)
VARIANTS = [("pv168/prod128", dict(pv_regs=168, producer_regs=128)),
            ("pv160/prod120", dict(pv_regs=160, producer_regs=120)),
            ("stages1", dict(stages=1))]


def _case(shape, seed=0):
    from openmla.testing import generate as gen

    b, s_q, h_q, s_k, topk, pbs, tl, inv = shape
    case = gen.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=576, page_block_size=pbs,
                                    with_topk_length=tl, all_invalid=inv, device="cuda",
                                    seed=seed)
    sink = case["attn_sink"]
    sink[: min(3, h_q)] = torch.tensor([float("inf"), float("-inf"), 0.5], device="cuda")[:h_q]
    if tl:
        case["topk_length"][0] = 0
    return case


@contextlib.contextmanager
def _backend(name):
    old = os.environ.get("OPENMLA_BACKEND_SPARSE_DECODE")
    os.environ["OPENMLA_BACKEND_SPARSE_DECODE"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPENMLA_BACKEND_SPARSE_DECODE", None)
        else:
            os.environ["OPENMLA_BACKEND_SPARSE_DECODE"] = old


def _check(case, backend):
    """Public call with the backend forced (NaN-filled outputs) against the reference; returns
    an error string or None."""
    import openmla
    from openmla.ops.sparse_decode.ref import sparse_decode_ref
    from openmla.testing import generate as gen
    from openmla.testing.compare import TOLERANCES, compare

    with _backend(backend), nan_filled_outputs():
        out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                  tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    torch.cuda.synchronize()
    r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    why = compare(out, r_out.to(torch.bfloat16), tol["out"])
    why_l = compare(lse, r_lse, tol["lse"])
    if why or why_l:
        return f"out: {why}; lse: {why_l}"
    return None


def _first_launch_child() -> int:
    """(subprocess) the first Gluon launches: small shapes, then one bench shape."""
    for i, shape in enumerate(SMALL):
        err = _check(_case(shape, seed=i), "gluon")
        print(f"child small {shape}: {'ok' if err is None else err}", flush=True)
    err = _check(_case((B, 1, 128, S_K, TOPK, PBS, False, False), seed=7), "gluon")
    print(f"child bench (1, 128): {'ok' if err is None else err}", flush=True)
    return 0


def _watchdog() -> str:
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "src"))
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True,
                             env=env, timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out)
        return f"HANG: no result after {WATCHDOG_S} s (kernel hang?)"
    print(res.stdout, end="")
    if res.returncode != 0:
        print(res.stderr[-3000:])
        return f"child failed rc={res.returncode}"
    bad = [line for line in res.stdout.splitlines() if line.startswith("child") and "ok" not in line]
    return f"ok ({time.time() - t0:.0f} s)" if not bad else f"MISMATCH ({len(bad)})"


def _time(fn):
    from openmla.testing.bench import time_fn

    return time_fn(fn, device="cuda", budget_s=0.5, max_runs=40).p50


def _bench_shape(s_q, h_q, table):
    import openmla
    from openmla import _library
    from openmla.device import device_info
    from openmla.ops.sparse_decode import gluon_launch as gll
    from openmla.ops.sparse_decode.config import pick_config
    from openmla.ops.sparse_decode.launch import schedule_lengths
    from openmla.testing import generate as gen

    case = _case((B, s_q, h_q, S_K, TOPK, PBS, False, False), seed=s_q * 1000 + h_q)
    kw = gen.public_kwargs(case)
    res = {}
    for backend in ("triton", "gluon"):
        try:
            err = _check(case, backend)
            res[f"{backend} ok"] = "ok" if err is None else "BAD"
            if err:
                print(f"  {backend} s_q={s_q} h_q={h_q}: {err}")
            meta = openmla.get_mla_metadata()[0]
            with _backend(backend):
                res[f"{backend} call"] = _time(
                    lambda: openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta))
        except Exception:
            traceback.print_exc()
            res[f"{backend} call"] = float("nan")
    info = device_info("cuda")
    q, kc, idx = case["q"], case["k_cache"], case["indices"]
    lengths = schedule_lengths(B, TOPK, None, None, None, q.device)
    args = (case["softmax_scale"], 512, case["attn_sink"], None)
    try:
        cfg = pick_config(h_q, s_q, info)
        meta, splits = _library.ops.decode_schedule(lengths, cfg.num_parts)
        res["triton split+comb"] = _time(lambda: _library.ops.sparse_decode(
            q, kc, idx, meta, splits, *args, None, None, None, cfg.block_h, cfg.block_n,
            cfg.num_warps, cfg.num_stages))
    except Exception:
        traceback.print_exc()
    parts = gll.num_parts_for(h_q, s_q, info.num_sms, q.shape[0])
    meta, splits = _library.ops.decode_schedule(lengths, parts)
    for label, extra in [("gluon split", {})] + VARIANTS:
        try:
            kwargs = dict(stages=gll.GLUON_STAGES)
            kwargs.update(extra)
            stages = kwargs.pop("stages")
            if extra:  # a variant: check it before timing it
                with nan_filled_outputs():
                    o, lse = gll.sparse_decode_gluon_kernels(q, kc, idx, meta, splits, *args,
                                                             stages, **kwargs)
                ref_o, _ = gll.sparse_decode_gluon_kernels(q, kc, idx, meta, splits, *args,
                                                           gll.GLUON_STAGES)
                if not torch.equal(o, ref_o):
                    print(f"  variant {label}: output differs from the default launch")
            res[label] = _time(lambda: gll.sparse_decode_gluon_kernels(
                q, kc, idx, meta, splits, *args, stages, combine=False, **kwargs))
        except Exception:
            traceback.print_exc()
            res[label] = float("nan")
    table.append(((s_q, h_q), res))
    print(f"  s_q={s_q} h_q={h_q}: " + ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()),
        flush=True)


def _compile_report() -> int:
    """(no GPU) registers, spills, shared memory and wgmma count of the split kernel for sm_90."""
    from openmla.ops.sparse_decode.gluon_launch import compile_sm90
    from openmla.testing.sm90 import ptxas_report

    for kw in [{}, dict(has_sink=False, has_topk_len=False), dict(pv_regs=168, producer_regs=128),
               dict(pv_regs=160, producer_regs=120), dict(stages=1)]:
        k = compile_sm90(**kw)
        ptx = k.asm["ptx"]
        rep = ptxas_report(ptx)
        nreg = sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})
        print(f"{str(kw):48} maxnreg {rep.registers} setmaxnreg {nreg} "
              f"spill-bytes {rep.spill_stores} smem {k.metadata.shared} "
              f"wgmma {ptx.count('wgmma.mma_async')}", flush=True)
    return 0


def main() -> int:
    if "--child" in sys.argv:
        return _first_launch_child()
    if "--compile" in sys.argv:
        os.environ.pop("TRITON_INTERPRET", None)
        return _compile_report()
    from openmla.device import device_info, gluon_available
    from openmla.testing.bench import measure_ceilings

    t0 = time.time()
    info = device_info("cuda")
    print(f"device {info.name} ({info.num_sms} SMs, sm_{info.arch}), gluon {gluon_available()}")
    if not info.is_hopper:
        print("not a Hopper GPU: the Gluon kernel does not run here")
        return 1
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOPS")
    status = _watchdog()
    print(f"first launches (subprocess, watchdog {WATCHDOG_S} s): {status}", flush=True)
    if not status.startswith("ok"):
        print("the Gluon kernel failed or hung: no timing")
        return 1
    for i, shape in enumerate(SMALL):
        err = _check(_case(shape, seed=100 + i), "gluon")
        print(f"small {shape}: {'ok' if err is None else err}", flush=True)
    table = []
    for s_q, h_q in BENCH:
        _bench_shape(s_q, h_q, table)
        torch.cuda.empty_cache()  # the shape's 2.8 GB cache is gone with its frame
    print(f"\n=== sparse decode V3.2 b={B} topk={TOPK} s_k={S_K}: median µs "
          f"({time.time() - t0:.0f} s total) ===")
    cols = ["triton ok", "gluon ok", "triton call", "gluon call", "triton split+comb",
            "gluon split"] + [v[0] for v in VARIANTS]
    print("s_q h_q | " + " | ".join(cols) + " | FlashMLA H100 | gluon/FlashMLA")
    for (s_q, h_q), res in table:
        ref = FLASHMLA_H100_US.get((s_q, h_q)) or TARGET_US.get((s_q, h_q))
        g = res.get("gluon call", float("nan"))
        frac = f"{ref / g:.2f}x" if ref and g == g else "-"
        vals = [res.get(c, "-") for c in cols]
        print(f"{s_q:3} {h_q:3} | " + " | ".join(
            f"{v:.1f}" if isinstance(v, float) else str(v) for v in vals)
            + f" | {ref or '-'} | {frac}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
