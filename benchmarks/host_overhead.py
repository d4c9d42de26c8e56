"""Where the time of a public decode call goes: GPU time (CUDA-graph replay of the whole call),
the event-timed call (what `openmla bench` reports: host gaps between kernels included) and the
host time per call (calls queued without synchronisation), per backend, with a cProfile of the
host side of the slowest backend.

    PYTHONPATH=src python benchmarks/host_overhead.py [--shape b s_q h_q s_k] [--op sparse_decode]

(sparse decode: V3.2 cache, topk 2048; ``s_k`` is the cache length.)
"""
import argparse
import cProfile
import io
import os
import pstats
import time

import torch

import openmla
from openmla.testing import generate as gen
from openmla.testing.bench import graph_time_fn, time_fn


def host_time_us(fn, reps=200):
    """Host microseconds per call of ``fn``, calls queued without synchronisation."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / reps * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", nargs=4, type=int, default=[128, 1, 128, 1024])
    ap.add_argument("--backends", nargs="*", default=["triton", "gluon"])
    ap.add_argument("--op", default="dense_decode", choices=["dense_decode", "sparse_decode"])
    ap.add_argument("--fresh-meta", action="store_true",
                    help="a new schedule object per call, as `openmla bench` times it")
    args = ap.parse_args()
    b, s_q, h_q, s_k = args.shape
    if args.op == "dense_decode":
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, device="cuda", seed=0)
    else:
        case = gen.sparse_decode_inputs(b, s_q, h_q, s_k, 2048, varlen=False, device="cuda",
                                        seed=0)
    kw = gen.public_kwargs(case)
    meta = openmla.get_mla_metadata()[0]  # one schedule reused, as an engine does per step

    def call():
        m = openmla.get_mla_metadata()[0] if args.fresh_meta else meta
        return openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=m)

    rows = []
    for be in args.backends:
        os.environ[f"OPENMLA_BACKEND_{args.op.upper()}"] = be
        meta = openmla.get_mla_metadata()[0]
        call()
        ev = time_fn(call, device="cuda", budget_s=0.5, max_runs=100).p50
        gr = graph_time_fn(call, device="cuda", reps=50, flush_l2=False).p50
        ho = host_time_us(call)
        rows.append((be, ev, gr, ho))
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(100):
            call()
        pr.disable()
        torch.cuda.synchronize()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        print(f"--- host profile, {be}, 100 calls ---")
        print("\n".join(buf.getvalue().splitlines()[6:24]))
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumtime").print_stats(30)
        print(f"--- cumulative, {be} ---")
        print("\n".join(buf.getvalue().splitlines()[6:40]))
    print(f"\n{args.op} b={b} s_q={s_q} h_q={h_q} s_k={s_k}")
    print(f"{'backend':8} {'events us':>10} {'graph us':>10} {'host us':>10}")
    for be, ev, gr, ho in rows:
        print(f"{be:8} {ev:10.1f} {gr:10.1f} {ho:10.1f}")


if __name__ == "__main__":
    main()
