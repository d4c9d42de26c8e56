"""Dense decode on Hopper: the seesaw kernel (``gluon_seesaw_kernel.py``, OPENMLA_DENSE_SEESAW=1)
against the default 64-row kernel. First correctness of the seesaw kernel in a watchdogged
subprocess (float32 reference, NaN-filled outputs, bitwise run to run), then both kernels timed
in alternating rounds of CUDA-graph replays (L2 flushed before each), with the
matmul and copy ceilings of the same run.

    PYTHONPATH=src python benchmarks/dense_seesaw_ab.py [--check-only|--time-only]
        [--seesaw-shapes] [--variants=default,seesaw]
"""
import os
import sys

CHECK = r"""
import os, sys, torch
os.environ["OPENMLA_BACKEND_DENSE_DECODE"] = "gluon"
os.environ["OPENMLA_DENSE_SEESAW"] = sys.argv[1]
for kv in sys.argv[2:]:
    os.environ[kv.split("=")[0]] = kv.split("=")[1]
import openmla
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, assert_close, nan_filled_outputs
from openmla.ops.dense_decode.ref import dense_decode_ref
SHAPES = [(2, 1, 64, 64, False, False, False), (1, 1, 128, 65, False, False, False),
          (3, 2, 64, 300, True, True, False), (74, 1, 128, 1500, False, True, True),
          (4, 4, 64, 2000, True, True, False), (2, 1, 128, 16384, False, False, False),
          (7, 2, 128, 777, True, False, False), (5, 1, 64, 129, False, True, True),
          (128, 2, 128, 8192, True, False, False), (16, 1, 48, 3000, False, True, False)]
for i, (b, s_q, h_q, s_k, causal, varlen, zero) in enumerate(SHAPES):
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, varlen=varlen,
                                   zero_seqlens=zero, device="cuda", seed=100 + i)
    meta = openmla.get_mla_metadata()[0]
    with nan_filled_outputs():
        out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                  tile_scheduler_metadata=meta)
    r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out, r_out.to(torch.bfloat16), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])
    again = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case), tile_scheduler_metadata=meta)
    torch.cuda.synchronize()
    same = torch.equal(again[0], out) and torch.equal(again[1], lse)
    err = (out.float() - r_out).abs().max().item()
    print(f"ok {(b, s_q, h_q, s_k, causal, varlen, zero)} max|err| {err:.2e} bitwise {same}",
          flush=True)
    assert same
print("ALL OK")
"""


def check(flag: str, extra=()) -> bool:
    from openmla.testing.bench import check_in_subprocess

    print(f"seesaw={flag} {' '.join(extra)}:", flush=True)
    return check_in_subprocess(CHECK, [flag, *extra], timeout=240)


ENV_KEYS = ("OPENMLA_DENSE_SEESAW",)
VARIANTS = {  # name: environment
    "default": {"OPENMLA_DENSE_SEESAW": "0"},
    "seesaw": {"OPENMLA_DENSE_SEESAW": "1"},
}
REPS = 12
ROUNDS = 6
SHAPES = [(128, 2, 128, 8192, True, False), (128, 1, 128, 8192, False, False),
          (128, 1, 128, 1024, False, False), (128, 1, 64, 8192, False, False),
          (128, 1, 16, 8192, False, False), (128, 1, 128, 4096, False, True)]


def time_ab():
    import torch

    import openmla
    from openmla.testing import generate as gen
    from openmla.testing.bench import (graph_time_fn, measure_ceilings, print_round_table,
                                        round_row)


    os.environ["OPENMLA_BACKEND_DENSE_DECODE"] = "gluon"
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, matmul {ceil.matmul_tflops:.0f} TFLOPS",
          flush=True)
    # --seesaw-shapes: only the shapes the seesaw kernel runs by default (more than 64 rows)
    shapes = [sh for sh in SHAPES if sh[1] * sh[2] > 64] if "--seesaw-shapes" in sys.argv else SHAPES
    rows = []
    for b, s_q, h_q, s_k, causal, varlen in shapes:
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, varlen=varlen,
                                       device="cuda", seed=0)
        kw = gen.public_kwargs(case)
        flop = 2 * s_q * h_q * int(case["cache_seqlens"].sum()) * (576 + 512)
        if causal:
            flop -= 2 * b * h_q * (s_q * (s_q - 1) // 2) * (576 + 512)
        # rounds of a few replays of each variant in turn (one CUDA graph alive at a time), so
        # the card's clock drift reaches every variant alike
        times = {name: [] for name in VARIANTS}
        for _ in range(ROUNDS):
            for name, env in VARIANTS.items():
                for k in ENV_KEYS:
                    os.environ.pop(k, None)
                os.environ.update(env)
                meta = openmla.get_mla_metadata()[0]

                def call(meta=meta):
                    return openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=meta)
                t = graph_time_fn(call, device="cuda", reps=REPS)
                times[name] += [t.p50]
        label = (f"b={b} s_q={s_q} h_q={h_q} s_k={s_k}{' causal' if causal else ''}"
                 f"{' varlen' if varlen else ''}")
        for name in VARIANTS:
            rows.append(round_row(label, name, times[name], flop, ceil.matmul_tflops))
            print(rows[-1], flush=True)
        del case, kw
        torch.cuda.empty_cache()
    print_round_table(rows)


if __name__ == "__main__":
    ok = True
    if "--time-only" not in sys.argv:
        flag = next((a.split("=")[1] for a in sys.argv if a.startswith("--check-flag=")), "1")
        ok = check(flag)
        for extra in sys.argv:
            if ok and extra.startswith("--check-env="):  # e.g. --check-env=OPENMLA_PDL=2
                ok = check(flag, extra.split("=", 1)[1].split(","))
    for a in sys.argv:
        if a.startswith("--variants="):
            keep = a.split("=", 1)[1].split(",")
            for name in list(VARIANTS):
                if name not in keep:
                    del VARIANTS[name]
    if ok and "--check-only" not in sys.argv:
        time_ab()
