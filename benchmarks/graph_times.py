"""Public decode calls timed two ways: CUDA events around each call (host gaps included, what
`openmla bench` reports) and CUDA-graph replay of one call (GPU time only, as an engine that
captures its decode step sees it), per backend.

    PYTHONPATH=src python benchmarks/graph_times.py
"""
import os
import sys

import torch

import openmla
from openmla.testing import generate as gen
from openmla.testing.bench import graph_time_fn, time_fn

sys.path.insert(0, os.path.dirname(__file__))
from host_overhead import host_time_us  # noqa: E402

SHAPES = [  # (op, label, case factory)
    ("sparse_decode", "V32 s_q=1 h_q=128", lambda: gen.sparse_decode_inputs(
        128, 1, 128, 32768, 2048, varlen=False, device="cuda", seed=0)),
    ("sparse_decode", "V32 s_q=2 h_q=128", lambda: gen.sparse_decode_inputs(
        128, 2, 128, 32768, 2048, varlen=False, device="cuda", seed=0)),
    ("sparse_decode", "V32 s_q=1 h_q=64", lambda: gen.sparse_decode_inputs(
        128, 1, 64, 32768, 2048, varlen=False, device="cuda", seed=0)),
    ("sparse_decode", "V32 s_q=1 h_q=16", lambda: gen.sparse_decode_inputs(
        128, 1, 16, 32768, 2048, varlen=False, device="cuda", seed=0)),
    ("dense_decode", "s_k=1024 h_q=128", lambda: gen.dense_decode_inputs(
        128, 1, 128, 1024, device="cuda", seed=0)),
]


def main():
    rows = []
    for op, label, make in SHAPES:
        case = make()
        kw = gen.public_kwargs(case)
        for be in ("triton", "gluon"):
            os.environ[f"OPENMLA_BACKEND_{op.upper()}"] = be
            meta = openmla.get_mla_metadata()[0]

            def call():
                return openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
            try:
                call()
                ev = time_fn(call, device="cuda", budget_s=0.5, max_runs=50).p50
                gr = graph_time_fn(call, device="cuda", reps=50, flush_l2=False).p50
                ho = host_time_us(call, reps=100)
            except Exception as e:  # noqa: BLE001
                print(f"{op} {label} {be}: {type(e).__name__} {e}"[:300], flush=True)
                continue
            rows.append((op, label, be, ev, gr, ho))
            print(f"{op} {label} {be}: events {ev:.1f} graph {gr:.1f} host {ho:.1f}", flush=True)
        os.environ.pop(f"OPENMLA_BACKEND_{op.upper()}", None)
        del case, kw
        torch.cuda.empty_cache()
    print(f"\n{'op':14} {'shape':20} {'backend':7} {'events':>8} {'graph':>8} {'host':>8}")
    for r in rows:
        print(f"{r[0]:14} {r[1]:20} {r[2]:7} {r[3]:8.1f} {r[4]:8.1f} {r[5]:8.1f}")


if __name__ == "__main__":
    main()
