"""Dense MHA varlen prefill forward on an H100: the Hopper Gluon kernel (ops/mha_prefill/
gluon_kernel.py) beside the portable Triton forward and torch's SDPA, 4 sequences x 4096 tokens,
causal and not, 16 and 128 heads, head dims (192, 128) and (128, 128). Under 4 minutes.

1. ceilings (copy, bf16 matmul);
2. in a subprocess with a 60 s watchdog (a hang cannot take this run down): the first launches,
   and correctness against the float32 reference at odd lengths, varlen with empty sequences,
   s_k < s_q and s_k > s_q, GQA, with NaN-filled output buffers;
3. timings (openmla.testing.bench.time_fn): Gluon (each --tiles variant, persistent grid and
   one CTA per work item) vs Triton vs SDPA;
   compact table last.

    PYTHONPATH=src python benchmarks/mha_gluon_forward.py [--tiles 128x2 64x3] [--quick]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

CHECK = r"""
import sys, torch
from openmla.ops.mha_prefill.gluon_launch import TILES, gluon_forward_ok, mha_prefill_fwd_gluon_kernel
from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
from openmla.testing.compare import nan_filled_outputs
nan_filled_outputs().__enter__()  # every output element the kernel fails to write stays NaN
cases = [((1,), (1,), 4, 4), ((63,), (63,), 4, 4), ((113,), (113,), 4, 2), ((1023,), (1023,), 8, 1),
         ((4097,), (4097,), 4, 4), ((0, 300, 1, 0, 777), (5, 300, 0, 0, 900), 8, 4),
         ((700, 33), (300, 20), 8, 1), ((300, 129), (1000, 500), 16, 2),
         ((1000, 3000, 17, 0, 2048), (900, 3100, 40, 5, 2000), 16, 4)]
worst, bad = 0.0, 0
DIMS = [tuple(int(x) for x in a.split("/")) for a in sys.argv[1].split(",")]
GRIDS = [x == "1" for x in sys.argv[2].split(",")]  # persistent or not
for dims in DIMS:
    for lq, lk, hq, hkv in cases:
        for causal in (True, False):
            g = torch.Generator().manual_seed(len(lq) + hq)
            mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).cuda()
            q, k, v = mk(sum(lq), hq, dims[0]), mk(sum(lk), hkv, dims[0]), mk(sum(lk), hkv, dims[1])
            cu = lambda ls: torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
            assert gluon_forward_ok(q, k, v)
            r_out, r_lse = mha_prefill_fwd_ref(q, k, v, cu(lq), cu(lk), dims[0] ** -0.5, causal)
            for persistent in GRIDS:
                out, lse = mha_prefill_fwd_gluon_kernel(q, k, v, cu(lq), cu(lk), dims[0] ** -0.5, causal,
                                                        *TILES[dims], persistent)
                lse = lse.t()
                torch.cuda.synchronize()
                err = (out.float() - r_out).abs().max().item()
                lse_ok = torch.equal(torch.isinf(lse), torch.isinf(r_lse)) and (
                    (lse - r_lse)[~torch.isinf(r_lse)].abs().max().item() < 1e-2 if r_lse.isfinite().any() else True)
                ok = err < 2e-2 and lse_ok and not out.isnan().any().item()
                worst = max(worst, err)
                bad += not ok
                print(f"  {'ok' if ok else 'FAIL'} dims={dims} lq={lq} h={hq}/{hkv} causal={causal} persistent={persistent} err {err:.3g}", flush=True)
                if not ok:
                    print(f"  FAIL dims={dims} lq={lq} lk={lk} h={hq}/{hkv} causal={causal} persistent={persistent}: out err {err:.3g} lse_ok {lse_ok}", flush=True)
print(f"correctness: {bad} failing cases, worst out abs err {worst:.3g}", flush=True)
sys.exit(1 if bad else 0)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", nargs="*", default=None,
                    help="Gluon (block_n x stages) variants to time; default: the configured one")
    ap.add_argument("--heads", nargs="*", type=int, default=[16, 128])
    ap.add_argument("--quick", action="store_true", help="skip the correctness subprocess")
    ap.add_argument("--dims", nargs="*", default=["192/128", "128/128"])
    ap.add_argument("--no-triton", action="store_true", help="do not time the portable forward")
    ap.add_argument("--time", default="1,0", help="grids timed: 1 persistent, 0 one CTA an item")
    ap.add_argument("--check", default="0,1", help="grids the correctness check runs")
    ap.add_argument("--watchdog", type=float, default=240.0,
                    help="seconds the correctness subprocess may take (a hang is reported)")
    ap.add_argument("--profile", choices=["causal", "noncausal"], default=None,
                    help="only call the Gluon forward 3 times at 4 x 4096, the first --dims and "
                         "--heads (for Nsight Compute: --launch-skip 2 --launch-count 1)")
    args = ap.parse_args()
    from openmla.ops.mha_prefill import gluon_launch
    from openmla.ops.mha_prefill.launch import mha_prefill_fwd_triton
    from openmla.testing.bench import check_in_subprocess, measure_ceilings, time_fn
    from openmla.testing.flops import mha_flops

    dev = torch.device("cuda")
    if args.profile:
        d, dv = (int(x) for x in args.dims[0].split("/"))
        h, n, L = args.heads[0], 4, 4096
        cu = torch.arange(0, n + 1, device=dev, dtype=torch.int32) * L
        q, k = (torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
        v = torch.randn(n * L, h, dv, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            gluon_launch.mha_prefill_fwd_gluon(q, k, v, cu, cu, d ** -0.5,
                                               args.profile == "causal")
        torch.cuda.synchronize()
        return 0
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    if not args.quick and not check_in_subprocess(CHECK, [",".join(args.dims), args.check],
                                                  timeout=args.watchdog):
        print("first launch / correctness FAILED: no timings", flush=True)
        return 1

    n, L = 4, 4096
    cu = torch.arange(0, n + 1, device=dev, dtype=torch.int32) * L
    cu_l = [i * L for i in range(n + 1)]
    rows = []
    for dims in [tuple(int(x) for x in a.split("/")) for a in args.dims]:
        d, dv = dims
        tiles = ([tuple(int(x) for x in t.split("x")) for t in args.tiles] if args.tiles
                 else [gluon_launch.TILES[dims]])
        for h in args.heads:
            g = torch.Generator(device=dev).manual_seed(h)
            q = torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16, generator=g)
            k = torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16, generator=g)
            v = torch.randn(n * L, h, dv, device=dev, dtype=torch.bfloat16, generator=g)
            for causal in (True, False):
                scale = d ** -0.5
                fns = {}
                for bn, st in tiles:
                    for persist in [x == "1" for x in args.time.split(",")]:
                        def gl_fwd(bn=bn, st=st, causal=causal, persist=persist):
                            return gluon_launch.mha_prefill_fwd_gluon_kernel(
                                q, k, v, cu, cu, scale, causal, bn, st, persist)[0]
                        fns[f"gl{bn}x{st}{'-pers' if persist else '-item'}"] = gl_fwd

                def tr_fwd(causal=causal):
                    return mha_prefill_fwd_triton(q, k, v, cu, cu, scale, causal)[0]

                def sdpa(causal=causal):
                    qs, ks, vs = (t.view(n, L, h, -1).transpose(1, 2) for t in (q, k, v))
                    return F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal,
                                                          scale=scale)
                if not args.no_triton:
                    fns["triton"] = tr_fwd
                fns["sdpa"] = sdpa
                ref = sdpa().transpose(1, 2).reshape(n * L, h, dv).float()
                fl = mha_flops(cu_l, cu_l, h, d, dv, causal)
                for name, fn in fns.items():
                    with torch.no_grad():
                        o = fn()
                        if name != "sdpa":
                            err = (o.float() - ref).abs().max().item()
                        else:
                            err = 0.0
                        t = time_fn(fn, device=dev, budget_s=0.8, max_runs=30).p50
                    tf = fl / t / 1e6
                    rows.append((dims, h, causal, name, t, tf, tf / ceil.matmul_tflops, err))
                    print(f"  {dims} h={h:3} causal={causal!s:5} {name:12} {t:9.1f} us "
                          f"{tf:6.1f} TFLOPS  max|diff vs sdpa| {err:.3g}", flush=True)
            del q, k, v
            torch.cuda.empty_cache()
    print(f"\n{'dims':10} {'h':>4} {'causal':6} {'impl':12} {'us':>9} {'TFLOPS':>7} {'mm':>5}")
    for dims, h, causal, name, t, tf, frac, _ in rows:
        print(f"{dims[0]}/{dims[1]:<6} {h:4} {causal!s:6} {name:12} {t:9.1f} {tf:7.1f} {frac:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
