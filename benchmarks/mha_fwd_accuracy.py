"""How far bf16 forwards of dense MHA prefill sit from the float32 reference on unit-variance
data (sharp softmax rows whose P·V terms cancel): the Hopper Gluon forward, the portable Triton
forward, and plain PyTorch with P rounded to bf16 (FlashAttention's test baseline). Per case:
max abs error of out, and how many elements fall outside the op's element-wise tolerance.

    PYTHONPATH=src python benchmarks/mha_fwd_accuracy.py
"""
import torch

from openmla.ops.mha_prefill.gluon_launch import mha_prefill_fwd_gluon
from openmla.ops.mha_prefill.launch import mha_prefill_fwd_triton
from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
from openmla.testing.compare import TOLERANCES, mha_forward_baseline

TOL = TOLERANCES["mha_prefill"]["out"]
CASES = [((63,), (63,), 4, 4, True), ((63,), (63,), 4, 4, False), ((1023,), (1023,), 4, 4, True),
         ((1000,), (1000,), 16, 16, True), ((700, 33), (300, 20), 8, 1, True),
         ((4097,), (4097,), 4, 4, False)]


def cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                        device="cuda")


def stats(out, ref):
    a, r = out.double(), ref.double()
    err = (a - r).abs()
    bad = (err > TOL.abs_tol) & (err > TOL.rel_tol * r.abs())
    return err.max().item(), int(bad.sum())


def main():
    print(f"tolerance: abs {TOL.abs_tol:g} / rel {TOL.rel_tol:g}")
    print(f"{'case':44} {'dims':8} {'impl':8} {'max err':>9} {'outside tol':>11}")
    for lens_q, lens_k, h_q, h_kv, causal in CASES:
        for d, dv in ((192, 128), (128, 128)):
            g = torch.Generator().manual_seed(len(lens_q) + h_q)
            mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).cuda()  # noqa: E731
            q = mk(sum(lens_q), h_q, d)
            k, v = mk(sum(lens_k), h_kv, d), mk(sum(lens_k), h_kv, dv)
            cu_q, cu_k, scale = cu(lens_q), cu(lens_k), d ** -0.5
            ref, _ = mha_prefill_fwd_ref(q, k, v, cu_q, cu_k, scale, causal)
            outs = {"gluon": mha_prefill_fwd_gluon(q, k, v, cu_q, cu_k, scale, causal)[0],
                    "triton": mha_prefill_fwd_triton(q, k, v, cu_q, cu_k, scale, causal)[0],
                    "torch-p16": mha_forward_baseline(q, k, v, cu_q, cu_k, scale, causal)}
            name = f"{lens_q}->{lens_k} h{h_q}/{h_kv} causal={causal}"
            for impl, out in outs.items():
                err, bad = stats(out, ref)
                print(f"{name:44} {d}/{dv:<4} {impl:8} {err:9.5f} {bad:11d}")


if __name__ == "__main__":
    main()
