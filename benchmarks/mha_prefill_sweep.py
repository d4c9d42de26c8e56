"""Launch-config sweep of openmla's dense MHA prefill Triton kernels on one GPU, beside torch SDPA
in the same run (4 sequences x 4096 tokens unless --seqlen). For each shape: SDPA forward and
forward + backward, then every forward config (the op ``openmla::mha_prefill_fwd``) and every
backward config (``openmla::mha_prefill_bwd`` on the saved out / lse), each checked against
SDPA's output / gradients on the same random data first (outputs come from memory NaN-filled
beforehand, so an unwritten element shows), each in its own try/except. Then the public
``flash_attn_varlen_func`` forward + backward with the default config. Compact table last.

    PYTHONPATH=src python3 benchmarks/mha_prefill_sweep.py [--quick]

Backward configs: (dq_block_m, dq_block_n, dkdv_block_m, dkdv_block_n, warps, dq_stages,
dkdv_stages); dq_block_m 0 = no dQ kernel, dQ added from the dK/dV kernel by TMA reduce-adds
(dq_block_n 2) or pointer atomics (dq_block_n 1).
"""
import argparse
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from openmla import _library
from openmla.device import device_info
from openmla.ops.mha_prefill.config import DQ_FUSED, DQ_TMA, pick_config
from openmla.testing.bench import measure_ceilings, time_fn
from openmla.testing.flops import mha_flops

FUSED_TMA = (DQ_FUSED, DQ_TMA)
# (label, fwd configs, bwd configs) per shape; the 128-head shape keeps to a few
FWD_MAIN = [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 1), (128, 128, 8, 2),
            (64, 64, 4, 3), (64, 128, 4, 2)]
BWD_MAIN = [(*FUSED_TMA, 32, 128, 8, 2, 1),
            (*FUSED_TMA, 64, 128, 8, 2, 1), (*FUSED_TMA, 32, 128, 8, 2, 2),
            (*FUSED_TMA, 32, 64, 4, 2, 1),
            (64, 64, 32, 128, 8, 2, 1), (128, 64, 32, 128, 8, 2, 1),
            (64, 64, 32, 64, 8, 2, 1)]  # the last: the kernels' first (untimed) config
SHAPES = [
    # (h, d, dv, causal, fwd configs, bwd configs)
    (16, 192, 128, True, FWD_MAIN, BWD_MAIN),
    (128, 192, 128, True, [(128, 64, 8, 3), (128, 128, 8, 1)],
     [(*FUSED_TMA, 32, 128, 8, 2, 1), (64, 64, 32, 128, 8, 2, 1)]),
    (16, 128, 128, True, [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3)],
     [(64, 64, 32, 128, 8, 2, 1), (128, 64, 32, 128, 8, 2, 1), (64, 64, 32, 64, 8, 2, 1)]),
    (16, 192, 128, False, [(128, 64, 8, 3), (128, 128, 8, 1), (128, 64, 8, 2)],
     [(*FUSED_TMA, 32, 128, 8, 2, 1), (64, 64, 32, 128, 8, 2, 1)]),
]
TOL_OUT = 2e-2  # max |ours - SDPA| / max |SDPA|, bf16 both
TOL_GRAD = 3e-2


def _nan_fill_pool(nbytes):
    """Leave NaN bytes in the caching allocator's free blocks, so outputs the kernels fail to
    write read as NaN."""
    junk = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").fill_(float("nan"))
    del junk


def _rel(a, b):
    a, b = a.float(), b.float()
    if torch.isnan(a).any():
        return float("nan")
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-9)).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="first shape only")
    args = ap.parse_args()
    t_start = time.time()
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    n, L = args.seqs, args.seqlen
    rows = []  # (shape label, what, config, us, TFLOPS, err)
    for h, d, dv, causal, fwd_cfgs, bwd_cfgs in (SHAPES[:1] if args.quick else SHAPES):
        label = f"h{h} {d}/{dv} {'causal' if causal else 'full'}"
        print(f"\n== {label}  (default {pick_config(d, dv, device_info(dev))})", flush=True)
        g = torch.Generator(device=dev).manual_seed(h + d)
        q, k = (torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16, generator=g)
                for _ in range(2))
        v, dout = (torch.randn(n * L, h, dv, device=dev, dtype=torch.bfloat16, generator=g)
                   for _ in range(2))
        cu = torch.arange(0, n + 1, device=dev, dtype=torch.int32) * L
        scale = d ** -0.5
        cu_l = [i * L for i in range(n + 1)]
        fl_f = mha_flops(cu_l, cu_l, h, d, dv, causal)
        fl_b = mha_flops(cu_l, cu_l, h, d, dv, causal, backward=True)
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

        def sdpa():
            qs, ks, vs = (t.view(n, L, h, -1).transpose(1, 2) for t in (qg, kg, vg))
            return F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal,
                                                  scale=scale).transpose(1, 2)

        ref_out = sdpa()
        ref_grads = torch.autograd.grad(ref_out, (qg, kg, vg), dout.view(n, L, h, dv))
        ref_out = ref_out.reshape(n * L, h, dv).detach()

        def record(what, cfg, t, fl, err):
            tf = fl / t / 1e6
            rows.append((label, what, cfg, t, tf, err))
            print(f"  {what:8} {str(cfg):34} {t:9.1f} us {tf:6.1f} TFLOPS "
                  f"({tf / ceil.matmul_tflops:.2f} mm)  err {err}", flush=True)

        t = time_fn(lambda: sdpa(), device=dev, budget_s=0.4, max_runs=20).p50
        record("fwd", "sdpa", t, fl_f, "-")

        def sdpa_fb():
            o = sdpa()
            torch.autograd.grad(o, (qg, kg, vg), dout.view(n, L, h, dv))
        t = time_fn(sdpa_fb, device=dev, budget_s=0.6, max_runs=15).p50
        record("fwd+bwd", "sdpa", t, fl_f + fl_b, "-")

        saved = None
        for cfg in fwd_cfgs:
            try:
                _nan_fill_pool(2 * q.numel() * 2)
                out, lse = _library.ops.mha_prefill_fwd(q, k, v, cu, cu, scale, causal, *cfg)
                err = _rel(out, ref_out)
                if not err <= TOL_OUT:
                    raise AssertionError(f"out rel err {err}")
                if saved is None:
                    saved = (out, lse)
                t = time_fn(lambda: _library.ops.mha_prefill_fwd(q, k, v, cu, cu, scale, causal,
                                                                 *cfg),
                            device=dev, budget_s=0.3, max_runs=20).p50
                record("fwd", cfg, t, fl_f, f"{err:.1e}")
            except Exception as e:  # noqa: BLE001 - one failing config must not end the sweep
                print(f"  fwd {cfg} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
                rows.append((label, "fwd", cfg, float("nan"), float("nan"), "FAILED"))
        if saved is None:
            saved = (ref_out, None)
        out, lse = saved
        for cfg in bwd_cfgs if lse is not None else ():  # no forward config: no backward
            try:
                _nan_fill_pool(4 * q.numel() * 4)
                grads = _library.ops.mha_prefill_bwd(dout, q, k, v, out, lse.t(), cu, cu, scale,
                                                     causal, *cfg)
                errs = [_rel(a, b.reshape(a.shape)) for a, b in zip(grads, ref_grads)]
                if not all(e <= TOL_GRAD for e in errs):
                    raise AssertionError(f"dq/dk/dv rel err {errs}")
                del grads
                t = time_fn(lambda: _library.ops.mha_prefill_bwd(
                    dout, q, k, v, out, lse.t(), cu, cu, scale, causal, *cfg),
                    device=dev, budget_s=0.5, max_runs=12).p50
                record("bwd", cfg, t, fl_b, "/".join(f"{e:.0e}" for e in errs))
            except Exception as e:  # noqa: BLE001
                print(f"  bwd {cfg} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
                traceback.print_exc(limit=2)
                rows.append((label, "bwd", cfg, float("nan"), float("nan"), "FAILED"))

        try:  # the public autograd call with the default config
            import openmla
            qp, kp, vp = (t.detach().clone().requires_grad_() for t in (q, k, v))

            def ours_fb():
                o = openmla.flash_attn_varlen_func(qp, kp, vp, cu, cu, L, L, causal=causal)[0]
                torch.autograd.grad(o, (qp, kp, vp), dout)
            t = time_fn(ours_fb, device=dev, budget_s=0.6, max_runs=15).p50
            record("fwd+bwd", "openmla default", t, fl_f + fl_b, "-")
        except Exception as e:  # noqa: BLE001
            print(f"  public fwd+bwd FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
        q = k = v = dout = qg = kg = vg = saved = out = lse = ref_grads = ref_out = None
        torch.cuda.empty_cache()
        print(f"  ({time.time() - t_start:.0f} s so far)", flush=True)

    print(f"\n{'shape':22} {'what':8} {'config':34} {'us':>9} {'TFLOPS':>7} {'mm':>5}  err")
    for label, what, cfg, t, tf, err in rows:
        print(f"{label:22} {what:8} {str(cfg):34} {t:9.1f} {tf:7.1f} "
              f"{tf / ceil.matmul_tflops:5.2f}  {err}")
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
