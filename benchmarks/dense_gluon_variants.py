"""Dense decode on a Hopper GPU: the validated Gluon kernel (``gluon_kernel.py``) against the
pipelined variant (``gluon_seesaw_kernel.py``, OPENMLA_DENSE_GLUON_VARIANT=seesaw).

1. ceilings (copy, bf16 matmul) measured in this run;
2. the variant's first launch in a subprocess with a watchdog (a hang is reported, not waited on);
3. correctness of both kernels against the reference at small and benchmark shapes, outputs
   allocated NaN-filled so an element a kernel fails to write fails the check;
4. timing of both kernels (events around each call, and CUDA-graph replay) at b=128 s_k=8192.
A compact table comes last. About 2-3 minutes on an H100.

    PYTHONPATH=src python benchmarks/dense_gluon_variants.py
"""
import functools
import os
import sys

import torch

from openmla import _library
from openmla.device import device_info
from openmla.ops.dense_decode import launch as L
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.testing import flops as F
from openmla.testing import generate as gen
from openmla.testing.bench import graph_time_fn, measure_ceilings, time_fn
from openmla.testing.compare import TOLERANCES, compare, nan_filled_outputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gluon_hang_probe import probe  # noqa: E402  (the watchdog + hang report)

WATCHDOG_S = 60
CHECK_SHAPES = [  # (b, s_q, h_q, s_k, page_block_size, causal, varlen, zero_seqlens)
    (2, 1, 64, 200, 64, False, False, False),
    (5, 2, 64, 1000, 64, True, True, True),
    (74, 1, 128, 1500, 64, False, True, True),
    (9, 3, 128, 777, 256, True, True, True),
    (3, 1, 16, 700, 64, False, True, True),
    (7, 2, 24, 900, 64, True, True, False),
    (128, 2, 128, 8192, 64, True, False, False),
    (128, 1, 64, 8192, 64, False, True, False),
]
BENCH_SHAPES = {  # name: (b, s_q, h_q, s_k, causal)
    "s_q2 h128 causal": (128, 2, 128, 8192, True),
    "s_q1 h128": (128, 1, 128, 8192, False),
    "s_q1 h64": (128, 1, 64, 8192, False),
    "s_q1 h16": (128, 1, 16, 8192, False),
}
KERNELS = {name: functools.partial(L.dense_decode_gluon_kernels, variant=name)
           for name in ("base", "seesaw")}

FIRST_LAUNCH = (4, 2, 64, 300, 3, True, True, 1)  # a split schedule, causal, zero lengths


def first_launch() -> bool:
    """True when the variant's first launch finished (right or wrong) inside the watchdog."""
    finished, report = probe(FIRST_LAUNCH, "seesaw", WATCHDOG_S)
    print("seesaw first launch:", report, flush=True)
    return finished


def _call(kernel, case, causal, meta, splits):
    return lambda: kernel(case["q"], case["k_cache"], case["block_table"], case["cache_seqlens"],
                          meta, splits, case["softmax_scale"], causal, 512, L.GLUON_STAGES)


def _schedule(case, s_q, h_q):
    parts = max(device_info(case["q"].device).num_sms // -(-(s_q * h_q) // L.GLUON_BLOCK_H), 1)
    return _library.ops.decode_schedule(case["cache_seqlens"], parts)


def check(dev) -> dict:
    bad = {name: 0 for name in KERNELS}
    for shape in CHECK_SHAPES:
        b, s_q, h_q, s_k, pbs, causal, varlen, zero = shape
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, page_block_size=pbs, causal=causal,
                                       varlen=varlen, zero_seqlens=zero, device=dev, seed=3)
        meta, splits = _schedule(case, s_q, h_q)
        r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
        tol = TOLERANCES["dense_decode"]
        for name, kernel in KERNELS.items():
            with nan_filled_outputs():
                out, lse = _call(kernel, case, causal and s_q > 1, meta, splits)()
                torch.cuda.synchronize()
            why = compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])
            bad[name] += why is not None
            print(f"check {name:6} {shape}: {'PASS' if why is None else 'FAIL ' + why}",
                  flush=True)
        del case, r_out, r_lse
        torch.cuda.empty_cache()
    return bad


def bench(dev, ceil) -> list:
    rows = []
    for label, (b, s_q, h_q, s_k, causal) in BENCH_SHAPES.items():
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, device=dev, seed=0)
        seqlens = case["cache_seqlens"].tolist()
        fl = F.dense_decode_flops(b, s_q, h_q, 576, 512, seqlens)
        by = F.dense_decode_bytes(b, s_q, h_q, 1, 576, 512, seqlens)
        meta, splits = _schedule(case, s_q, h_q)
        times = {}
        for name, kernel in KERNELS.items():
            fn = _call(kernel, case, causal and s_q > 1, meta, splits)
            t = time_fn(fn, device=dev, budget_s=0.4, max_runs=40).p50
            g = graph_time_fn(fn, device=dev, reps=20)
            times[name] = (t, g.p50 if g is not None else float("nan"))
            print(f"{label} {name}: {t:8.1f} us (graph {times[name][1]:8.1f} us) "
                  f"{fl / t / 1e6:6.1f} TFLOPS {by / t / 1e3:6.0f} GB/s", flush=True)
        base_t = times["base"][0]
        for name, (t, g) in times.items():
            rows.append((label, name, t, g, fl / t / 1e6 / ceil.matmul_tflops,
                         by / t / 1e3 / ceil.copy_gbps, base_t / t))
        del case
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    if not first_launch():
        print("seesaw variant hung or failed on its first launch: not run in this process")
        del KERNELS["seesaw"]
    bad = check(dev)
    rows = bench(dev, ceil)
    print(f"\nchecks failed: {bad}")
    print(f"{'shape':18} {'kernel':>7} {'us':>8} {'graph us':>9} {'mm':>5} {'copy':>5} "
          f"{'speedup':>7}")
    for r in rows:
        print(f"{r[0]:18} {r[1]:>7} {r[2]:8.1f} {r[3]:9.1f} {r[4]:5.2f} {r[5]:5.2f} {r[6]:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
