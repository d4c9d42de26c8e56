"""Sparse decode on Hopper: variants of the Gluon kernels chosen through the environment, timed
in alternating rounds of CUDA-graph replays (L2 flushed before each) after a check of each
variant: bitwise equal to the first variant, or else (a variant that sums in another order)
within the tolerances of the float32 reference.

    PYTHONPATH=src python benchmarks/sparse_decode_ab.py [--variants=default,pf_all] [--small-h]
"""
import os
import sys

import torch

import openmla
from openmla.ops.sparse_decode.ref import sparse_decode_ref
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, assert_close
from openmla.testing.bench import graph_time_fn, measure_ceilings, print_round_table, round_row

VARIANTS = {  # name: environment
    "default": {},
    # every head block of a token asks L2 for the next tile's rows (before the seventh session;
    # the default has head block 0 ask alone when h_q > 64)
    "pf_all": {"OPENMLA_SPARSE_PREFETCH": "all"},
    # the ring kernel (h_q <= 16) against the register-gather swapped kernel (--small-h)
    "swapped": {"OPENMLA_SPARSE_RING": "0"},
    # two independent CTAs a token at h_q > 64, each gathering the whole tile (the default
    # shares the tiles between the two CTAs of a cluster)
    "single": {"OPENMLA_SPARSE_PAIR": "0"},
}
ENV_KEYS = ("OPENMLA_SPARSE_PREFETCH", "OPENMLA_SPARSE_RING", "OPENMLA_SPARSE_PAIR")
SHAPES = [(128, 2, 128, 2048), (128, 1, 128, 2048), (128, 1, 64, 2048)]  # b, s_q, h_q, topk
SMALL_H_SHAPES = [(128, 1, 16, 2048), (128, 2, 16, 2048), (128, 1, 8, 2048)]  # --small-h
S_K = 32768
REPS = 12
ROUNDS = 6


def _use(env):
    for k in ENV_KEYS:
        os.environ.pop(k, None)
    os.environ.update(env)


def main():
    names = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--variants=")),
                 list(VARIANTS))
    os.environ["OPENMLA_BACKEND_SPARSE_DECODE"] = "gluon"
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, matmul {ceil.matmul_tflops:.0f} TFLOPS",
          flush=True)
    rows = []
    for b, s_q, h_q, topk in SMALL_H_SHAPES if "--small-h" in sys.argv else SHAPES:
        case = gen.sparse_decode_inputs(b, s_q, h_q, S_K, topk, device="cuda", seed=0)
        kw = gen.public_kwargs(case)
        flop = 2 * b * s_q * h_q * topk * (576 + 512)
        first = None
        for name in names:  # bitwise check against the first variant
            _use(VARIANTS[name])
            out = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
            torch.cuda.synchronize()
            if first is None:
                first = out
            else:
                same = all(torch.equal(x, y) for x, y in zip(out, first))
                print(f"b={b} s_q={s_q} h_q={h_q}: {name} bitwise equal to {names[0]}: {same}",
                      flush=True)
                if not same:
                    r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
                    tol = TOLERANCES["sparse_decode"]
                    assert_close("out", out[0], r_out.to(out[0].dtype), tol["out"])
                    assert_close("lse", out[1], r_lse, tol["lse"])
                    print(f"  {name} within the reference's tolerances", flush=True)
        times = {name: [] for name in names}
        for _ in range(ROUNDS):
            for name in names:
                _use(VARIANTS[name])
                meta = openmla.get_mla_metadata()[0]

                def call(meta=meta):
                    return openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
                times[name].append(graph_time_fn(call, device="cuda", reps=REPS).p50)
        for name in names:
            rows.append(round_row(f"b={b} s_q={s_q} h_q={h_q} topk={topk}", name, times[name],
                                  flop, ceil.matmul_tflops))
        del case, kw
        torch.cuda.empty_cache()
    print_round_table(rows, 32, 10)


if __name__ == "__main__":
    main()
