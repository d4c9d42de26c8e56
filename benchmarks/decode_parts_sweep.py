"""Dense and sparse (V3.2) decode, Hopper Gluon kernels: the split-KV part count against time
(CUDA-graph replay of split kernel + combine, the schedule computed once outside as an engine
reuses it across layers), at memory-bound and compute-bound shapes.

    PYTHONPATH=src python benchmarks/dense_parts_sweep.py
"""
import torch

from openmla import _library
from openmla.ops.dense_decode.launch import GLUON_STAGES
from openmla.testing import generate as gen
from openmla.testing.bench import graph_time_fn, measure_ceilings

SHAPES = [(128, 1, 16, 8192, False), (128, 1, 64, 8192, False), (128, 2, 128, 8192, True)]
PARTS = [132, 128, 124, 96, 66, 64, 256, 264]


def main() -> None:
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    for b, s_q, h_q, s_k, causal in SHAPES:
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, device="cuda", seed=0)
        rows = s_q * h_q
        tiles = -(-rows // 64)
        for parts in PARTS:
            n = max(parts // tiles, 1) if rows > 64 else parts
            meta, splits = _library.ops.decode_schedule(case["cache_seqlens"], n)

            def call(meta=meta, splits=splits):
                return _library.ops.dense_decode_gluon(
                    case["q"], case["k_cache"], case["block_table"], case["cache_seqlens"],
                    meta, splits, case["softmax_scale"], causal, 512, GLUON_STAGES)
            t = graph_time_fn(call, device=dev, reps=40).p50
            print(f"b={b} s_q={s_q} h_q={h_q} causal={causal}: parts {n:4d} x {tiles} row "
                  f"tiles = {n * tiles:4d} CTAs  graph {t:8.1f} us", flush=True)


def sparse() -> None:
    from openmla.ops.sparse_decode import gluon_library  # noqa: F401
    from openmla.ops.sparse_decode.gluon_launch import GLUON_STAGES as SPARSE_STAGES
    from openmla.ops.sparse_decode.launch import schedule_lengths

    dev = torch.device("cuda")
    for s_q, h_q in ((1, 16), (1, 64), (1, 128), (2, 128)):
        case = gen.sparse_decode_inputs(128, s_q, h_q, 32768, 2048, device="cuda", seed=0)
        tiles = s_q * -(-h_q // 64)
        lengths = schedule_lengths(128, 2048, None, None, None, dev)
        for n in sorted({132 // tiles, 128 // tiles, 124 // tiles}, reverse=True):
            meta, splits = _library.ops.decode_schedule(lengths, n)

            def call(meta=meta, splits=splits):
                return torch.ops.openmla.sparse_decode_gluon(
                    case["q"], case["k_cache"], case["indices"], meta, splits,
                    case["softmax_scale"], 512, case.get("attn_sink"), None, SPARSE_STAGES)
            t = graph_time_fn(call, device=dev, reps=40).p50
            print(f"sparse V3.2 b=128 s_q={s_q} h_q={h_q}: parts {n:4d} x {tiles} = "
                  f"{n * tiles:4d} CTAs  graph {t:8.1f} us", flush=True)


if __name__ == "__main__":
    main()
    sparse()
    main()
