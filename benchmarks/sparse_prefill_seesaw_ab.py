"""Sparse prefill on Hopper: the seesaw kernel (``gluon_seesaw_kernel.py``, OPENMLA_SP_SEESAW=1)
against the default kernel. Correctness of the seesaw kernel first (float32 reference,
NaN-filled outputs, bitwise run to run), then both timed in alternating rounds (events, L2
flushed before each call; AB_ROUNDS rounds, 4 unless set).

    PYTHONPATH=src python benchmarks/sparse_prefill_seesaw_ab.py [--time-only] [--check-env=K=V,...]
        [--variants=default,seesaw,default_item_grid,seesaw_item_grid,seesaw_evict_last,
                    default_evict_last]
"""
import os
import sys

import torch

import openmla
from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
from openmla.testing import generate as gen
from openmla.testing.bench import measure_ceilings, time_samples
from openmla.testing.compare import TOLERANCES, assert_close, nan_filled_outputs

ENV = "OPENMLA_SP_SEESAW"
CHECKS = [  # (s_q, s_kv, h_q, topk, sink, topk_length)
    (5, 300, 64, 130, True, True), (3, 1000, 128, 256, False, False),
    (7, 200, 16, 64, True, False), (2, 4096, 128, 2048, True, True),
    (4, 129, 100, 65, False, True), (64, 32768, 128, 2048, True, False)]
SHAPES = [(4096, 32768, 128, 2048, 576), (4096, 32768, 64, 2048, 576)]  # + d_qk
SHAPES_512 = [(4096, 32768, 128, 2048, 512)]  # --d512: also d_qk 512


def check(env=None):
    """The seesaw kernel (or, with ``env``, the kernel those variables pick) on CHECKS."""
    os.environ.update(env if env is not None else {ENV: "1"})
    print(f"check {env if env is not None else {ENV: '1'}}", flush=True)
    for i, (s_q, s_kv, h_q, topk, sink, tl) in enumerate(CHECKS):
        case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, with_attn_sink=sink,
                                         with_topk_length=tl, device="cuda", seed=10 + i)
        with nan_filled_outputs():
            out = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
        ref = sparse_prefill_ref(**gen.reference_kwargs("sparse_prefill", case))
        tol = TOLERANCES["sparse_prefill"]
        for name, a, r in zip(("out", "max_logits", "lse"), out, ref):
            assert_close(name, a, r.to(a.dtype), tol[name])
        again = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
        same = all(torch.equal(x, y) for x, y in zip(out, again))
        print(f"ok {(s_q, s_kv, h_q, topk, sink, tl)} bitwise {same}", flush=True)
        assert same


# name: (OPENMLA_SP_SEESAW, CTAs of the grid (0: one per SM, persistent; -1: one per work item),
# evict-last cache hint on the gathers)
VARIANTS = {"default": ("0", 0, False), "seesaw": ("1", 0, False),
            "default_item_grid": ("0", -1, False), "seesaw_item_grid": ("1", -1, False),
            "seesaw_evict_last": ("1", 0, True), "default_evict_last": ("0", 0, True)}
VARIANT_ENV = ()  # variables a variant may set (a 4th element: {name: value})


def _call(kw, grid_ctas, evict_last):
    from openmla.ops.sparse_prefill import gluon_launch as L
    from openmla.ops.sparse_prefill.gluon_library import ops

    if grid_ctas == 0 and not evict_last:  # the public call
        return lambda: openmla.flash_mla_sparse_fwd(**kw)
    return lambda: ops.sparse_prefill_gluon(
        kw["q"], kw["kv"], kw["indices"], kw.get("attn_sink"), kw.get("topk_length"),
        kw["sm_scale"], kw.get("d_v", 512), L.STAGES, L.LOAD_WARPS, grid_ctas, evict_last)


def time_ab(names):
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, matmul {ceil.matmul_tflops:.0f} TFLOPS")
    for s_q, s_kv, h_q, topk, d_qk in SHAPES + (SHAPES_512 if "--d512" in sys.argv else []):
        case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_attn_sink=True,
                                         device="cuda", seed=0)
        kw = gen.public_kwargs(case)
        t = {name: [] for name in names}
        for _ in range(int(os.environ.get("AB_ROUNDS", "4"))):
            for name in names:
                flag, grid_ctas, evict_last, *env = VARIANTS[name]
                os.environ[ENV] = flag
                for k in VARIANT_ENV:
                    os.environ.pop(k, None)
                os.environ.update(env[0] if env else {})
                t[name] += time_samples(_call(kw, grid_ctas, evict_last), device="cuda",
                                        budget_s=0.5, max_runs=40)
        flop = 2 * s_q * h_q * topk * (d_qk + 512)
        for name in names:
            x = sorted(t[name])
            med = x[len(x) // 2]
            print(f"s_q={s_q} h_q={h_q} topk={topk} d_qk={d_qk} {name:18} median {med:8.1f} us "
                  f"(p20 {x[len(x) // 5]:.1f}, p80 {x[4 * len(x) // 5]:.1f}) "
                  f"{flop / med / 1e6 / ceil.matmul_tflops:.3f} of matmul", flush=True)
        del case, kw
        torch.cuda.empty_cache()


if __name__ == "__main__":
    if "--time-only" not in sys.argv:
        check()
    for arg in sys.argv:  # e.g. --check-env=OPENMLA_SP_SEESAW=0
        if arg.startswith("--check-env="):
            check(dict(kv.split("=", 1) for kv in arg.split("=", 1)[1].split(",")))
    chosen = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--variants=")),
                  ["default", "seesaw"])
    time_ab(chosen)
