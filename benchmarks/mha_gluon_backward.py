"""Dense MHA varlen prefill backward on Hopper: the Gluon kernel (ops/mha_prefill/
gluon_bwd_kernel.py) beside the portable Triton backward and torch's SDPA, 4 sequences x 4096
tokens, causal and not, 16 and 128 heads, head dims (192, 128) and (128, 128).

1. ceilings (copy, bf16 matmul);
2. in a subprocess with a watchdog (a hang cannot take this run down): correctness of the Gluon
   backward against the float32 reference by FlashAttention's rule (compare_to_baseline against
   PyTorch in the inputs' precision) at odd lengths, varlen with empty sequences, s_k < s_q and
   s_k > s_q, GQA, plus run-to-run bitwise equality of dK / dV;
3. timings (openmla.testing.bench.time_fn): backward alone (Gluon, Triton) and forward + backward
   through the public function against SDPA; compact table last.

    PYTHONPATH=src python benchmarks/mha_gluon_backward.py [--quick] [--heads 16 128]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

CHECK = r"""
import sys, torch
from openmla.ops.mha_prefill.gluon_bwd_launch import gluon_backward_ok, mha_prefill_bwd_gluon_kernel
from openmla.ops.mha_prefill.ref import mha_prefill_bwd_ref, mha_prefill_fwd_ref
from openmla.testing.compare import TOLERANCES, compare_to_baseline, mha_backward_baseline
TOL = TOLERANCES["mha_prefill"]
VARIANTS = {"lag1": dict(lag=True, sdp_early=False), "lag0": dict(lag=False, sdp_early=False),
            "lag1e": dict(lag=True, sdp_early=True), "lag0e": dict(lag=False, sdp_early=True)}
LAGS = sys.argv[1].split(",")
cases = [((1,), (1,), 4, 4), ((63,), (63,), 4, 4), ((113,), (113,), 4, 2), ((1023,), (1023,), 8, 1),
         ((4097,), (4097,), 2, 2), ((0, 300, 1, 0, 777), (5, 300, 0, 0, 900), 8, 4),
         ((700, 33), (300, 20), 8, 1), ((300, 129), (1000, 500), 16, 2)]
bad = 0
for dims in ((192, 128), (128, 128)):
    for lq, lk, hq, hkv in cases:
        for causal in (True, False):
            g = torch.Generator().manual_seed(len(lq) + hq)
            mk = lambda *s: (torch.randn(*s, generator=g) / 3).to(torch.bfloat16).cuda()
            q, k, v = mk(sum(lq), hq, dims[0]), mk(sum(lk), hkv, dims[0]), mk(sum(lk), hkv, dims[1])
            dout = mk(sum(lq), hq, dims[1])
            cu = lambda ls: torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
            cq, ck = cu(lq), cu(lk)
            assert gluon_backward_ok(q, k, v)
            scale = dims[0] ** -0.5
            r_out, r_lse = mha_prefill_fwd_ref(q, k, v, cq, ck, scale, causal)
            want = mha_prefill_bwd_ref(dout, q, k, v, r_out, r_lse, cq, ck, scale, causal)
            base = mha_backward_baseline(q, k, v, cq, ck, scale, causal, dout)
            o16 = r_out.to(q.dtype)
            for lag in LAGS:
              if lag.endswith("e") and dims[0] == 192:
                  continue
              got = mha_prefill_bwd_gluon_kernel(dout, q, k, v, o16, r_lse, cq, ck, scale, causal, **VARIANTS[lag])
              again = mha_prefill_bwd_gluon_kernel(dout, q, k, v, o16, r_lse, cq, ck, scale, causal, **VARIANTS[lag])
              torch.cuda.synchronize()
              msgs = []
              for name, a, w, b in zip(("dq", "dk", "dv"), got, want, base):
                  why = compare_to_baseline(a, w, b, TOL[name].cos_diff_tol) if a.numel() else None
                  if why:
                      msgs.append(f"{name}: {why}")
              if not (torch.equal(got[1], again[1]) and torch.equal(got[2], again[2])):
                  msgs.append("dk/dv not bitwise reproducible")
              err = max(((a.float() - w).abs().max().item() if a.numel() else 0.0) for a, w in zip(got, want))
              bad += bool(msgs)
              print(f"  {'FAIL' if msgs else 'ok'} lag={lag} dims={dims} lq={lq} lk={lk} h={hq}/{hkv} causal={causal} max err {err:.3g} {'; '.join(msgs)}", flush=True)
print(f"correctness: {bad} failing cases", flush=True)
sys.exit(1 if bad else 0)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", nargs="*", type=int, default=[16, 128])
    ap.add_argument("--quick", action="store_true", help="skip the correctness subprocess")
    ap.add_argument("--watchdog", type=float, default=240.0)
    ap.add_argument("--lags", default="lag1", help="Gluon schedules to check and time, "
                    "comma-separated: lag1 (dQ lagged one step), lag0 (dQ in its own step); "
                    "an 'e' suffix issues dP with S (head dim 128 only)")
    ap.add_argument("--dims", nargs="*", default=["192/128", "128/128"])
    ap.add_argument("--no-causal", action="store_true", help="time causal only")
    ap.add_argument("--profile", action="store_true",
                    help="only call the Gluon backward 3 times at 4 x 4096, (192, 128), the first "
                         "--heads, causal (for Nsight Compute: --launch-skip 2 --launch-count 1)")
    args = ap.parse_args()
    from openmla import flash_attn_varlen_func
    from openmla.ops.mha_prefill.gluon_bwd_launch import mha_prefill_bwd_gluon_kernel
    from openmla.ops.mha_prefill.gluon_launch import mha_prefill_fwd_gluon
    from openmla.ops.mha_prefill.launch import mha_prefill_bwd_triton
    from openmla.testing.bench import check_in_subprocess, measure_ceilings, time_fn
    from openmla.testing.flops import mha_flops

    dev = torch.device("cuda")
    n, L = 4, 4096
    cu = torch.arange(0, n + 1, device=dev, dtype=torch.int32) * L
    if args.profile:
        h = args.heads[0]
        q, k, dout = (torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16)
                      for d in (192, 192, 128))
        v = torch.randn(n * L, h, 128, device=dev, dtype=torch.bfloat16)
        out, lse = mha_prefill_fwd_gluon(q, k, v, cu, cu, 192 ** -0.5, True)
        for _ in range(3):
            mha_prefill_bwd_gluon_kernel(dout, q, k, v, out, lse, cu, cu, 192 ** -0.5, True)
        torch.cuda.synchronize()
        return 0
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    if not args.quick and not check_in_subprocess(CHECK, [args.lags], timeout=args.watchdog,
                                                  tail=6000):
        print("correctness FAILED: no timings", flush=True)
        return 1

    rows = []
    variants = {"lag1": dict(lag=True, sdp_early=False), "lag0": dict(lag=False, sdp_early=False),
                "lag1e": dict(lag=True, sdp_early=True), "lag0e": dict(lag=False, sdp_early=True)}
    for dims in args.dims:
        d, dv = (int(x) for x in dims.split("/"))
        for h in args.heads:
            g = torch.Generator(device=dev).manual_seed(h)
            mk = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g)  # noqa
            q, k, v, dout = mk(n * L, h, d), mk(n * L, h, d), mk(n * L, h, dv), mk(n * L, h, dv)
            for causal in ((True,) if args.no_causal else (True, False)):
                scale = d ** -0.5
                out, lse = mha_prefill_fwd_gluon(q, k, v, cu, cu, scale, causal)
                cl = cu.tolist()
                fl_f = mha_flops(cl, cl, h, d, dv, causal)
                fl_b = mha_flops(cl, cl, h, d, dv, causal, backward=True)
                bwd = {
                    f"gluon bwd {lag}": lambda lag=lag: mha_prefill_bwd_gluon_kernel(
                        dout, q, k, v, out, lse, cu, cu, scale, causal, **variants[lag])
                    for lag in args.lags.split(",") if not (lag.endswith("e") and d == 192)}
                bwd.update({
                    "triton bwd": lambda: mha_prefill_bwd_triton(
                        dout, q, k, v, out, lse, cu, cu, scale, causal),
                })
                qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

                def fwd_bwd():
                    o, _ = flash_attn_varlen_func(qg, kg, vg, cu, cu, L, L, causal=causal)
                    return torch.autograd.grad(o, (qg, kg, vg), dout)

                qs, ks, vs = (t.view(n, L, h, -1).transpose(1, 2).detach().clone()
                              .requires_grad_() for t in (q, k, v))
                dos = dout.view(n, L, h, dv).transpose(1, 2)

                def sdpa():
                    o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale)
                    return torch.autograd.grad(o, (qs, ks, vs), dos)

                for name, fn in (*bwd.items(), ("openmla fwd+bwd", fwd_bwd),
                                 ("sdpa fwd+bwd", sdpa)):
                    t = time_fn(fn, device=dev).p50
                    flop = fl_b if "+" not in name else fl_f + fl_b
                    rows.append((f"{d}/{dv}", h, causal, name, t, flop / t / 1e6))
                    print(f"  {d}/{dv} h={h} causal={causal} {name}: {t:.1f} us "
                          f"{flop / t / 1e6:.0f} TFLOPS", flush=True)
    print(f"\n{'dims':8}{'h':>5}{'causal':>8}  {'provider':18}{'us':>10}{'TFLOPS':>8}{'frac':>6}")
    for dims, h, causal, name, t, tf in rows:
        print(f"{dims:8}{h:5}{causal!s:>8}  {name:18}{t:10.1f}{tf:8.0f}"
              f"{tf / ceil.matmul_tflops:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
