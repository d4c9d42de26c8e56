"""Dense MHA varlen prefill on the GPU: openmla's public `flash_attn_varlen_func` (forward, and
forward + backward) beside torch's `scaled_dot_product_attention` on the same data, with the
copy and matmul ceilings measured in the same run (ANCHORS.md's MHA rows: 4 sequences of 4096
tokens, causal, d_qk 192 / d_v 128). Checks openmla's output against SDPA first. Table last.

    PYTHONPATH=src python benchmarks/mha_prefill_bench.py [--heads 16 128] [--quick]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import openmla
from openmla.testing.bench import measure_ceilings, time_fn
from openmla.testing.flops import mha_flops


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", nargs="*", type=int, default=[16, 128])
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--dims", nargs=2, type=int, default=[192, 128])
    ap.add_argument("--no-causal", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    d, dv = args.dims
    causal = not args.no_causal
    n, L = args.seqs, args.seqlen
    rows = []
    for h in args.heads:
        g = torch.Generator(device=dev).manual_seed(h)
        q = torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(n * L, h, d, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(n * L, h, dv, device=dev, dtype=torch.bfloat16, generator=g)
        dout = torch.randn(n * L, h, dv, device=dev, dtype=torch.bfloat16, generator=g)
        cu = torch.arange(0, n + 1, device=dev, dtype=torch.int32) * L
        for t in (q, k, v):
            t.requires_grad_()

        def ours():
            return openmla.flash_attn_varlen_func(q, k, v, cu, cu, L, L, causal=causal)[0]

        def sdpa():  # [n, h, L, d] views of the same tensors
            qs, ks, vs = (t.view(n, L, h, -1).transpose(1, 2) for t in (q, k, v))
            return F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal).transpose(1, 2) \
                .reshape(n * L, h, dv)

        o1, o2 = ours(), sdpa()
        err = (o1.float() - o2.float()).abs().max().item()
        g1 = torch.autograd.grad(o1, (q, k, v), dout)
        g2 = torch.autograd.grad(o2, (q, k, v), dout)
        gerr = [(a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-9)
                for a, b in zip(g1, g2)]
        print(f"h={h}: out max abs diff vs SDPA {err:.3g}; grads max rel-to-max diff "
              + " ".join(f"{x:.3g}" for x in gerr), flush=True)
        for name, fn in (("openmla", ours), ("sdpa", sdpa)):
            t_f = time_fn(lambda: fn(), device=dev, budget_s=1.0, max_runs=30).p50

            def fb(fn=fn):
                o = fn()
                torch.autograd.grad(o, (q, k, v), dout)
            t_fb = time_fn(fb, device=dev, budget_s=1.5, max_runs=20).p50
            for what, t, bwd in (("fwd", t_f, False), ("fwd+bwd", t_fb, True)):
                cu_l = [i * L for i in range(n + 1)]
                fl = mha_flops(cu_l, cu_l, h, d, dv, causal)
                if bwd:
                    fl += mha_flops(cu_l, cu_l, h, d, dv, causal, backward=True)
                tf = fl / t / 1e6
                rows.append((h, what, name, t, tf, tf / ceil.matmul_tflops))
                print(f"  h={h} {what:7} {name:8} {t:9.1f} us {tf:6.1f} TFLOPS", flush=True)
        del q, k, v, dout
        torch.cuda.empty_cache()
    print(f"\n{'h':>4} {'pass':8} {'impl':8} {'us':>9} {'TFLOPS':>7} {'mm':>5}")
    for h, what, name, t, tf, frac in rows:
        print(f"{h:4} {what:8} {name:8} {t:9.1f} {tf:7.1f} {frac:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
