"""Device check and timing of the memory-bound variants of the Hopper (Gluon) sparse-decode kernel
(``OPENMLA_SPARSE_GLUON_VARIANT``, ``gluon_launch.GLUON_VARIANTS``) against the default launch,
V3.2 layout, b=128 topk=2048. One self-contained run (< 4 minutes on an H100):

    PYTHONPATH=src python3 benchmarks/sparse_decode_variants.py            # on the GPU
    PYTHONPATH=src python3 benchmarks/sparse_decode_variants.py --compile  # no GPU: sm_90 report

1. device ceilings (copy GB/s, bf16 matmul TFLOPS);
2. first launch of every variant in a subprocess under a 60 s watchdog (a hang is reported);
3. correctness of the default and every variant against the float32 reference (public call,
   NaN-filled outputs), small shapes and one bench shape;
4. timing of split kernel + combine at (s_q, h_q) = (1, 16), (1, 64), (1, 128), (2, 128):
   events (``time_fn``, L2 flushed) and CUDA-graph replay (``graph_time_fn``: GPU time), for
   the default and each variant × a few split-KV part multipliers;
5. a compact table last.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import traceback

import torch

from openmla.testing.compare import nan_filled_outputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse_decode_gluon import _case, _check  # noqa: E402  (same helpers)

B, TOPK, S_K, PBS = 128, 2048, 32768, 64
BENCH = [(1, 16), (1, 64), (1, 128), (2, 128)]  # (s_q, h_q)
TARGET_US = {(1, 16): 72.0}  # H100 target of the memory-bound case
PART_MULTS = (1, 2, 4)
WATCHDOG_S = 60
SMALL = [(4, 1, 16, 512, 64, 2, False, False), (6, 2, 16, 300, 100, 64, True, False),
         (3, 1, 64, 2046, 2048, 64, True, False), (3, 2, 128, 1000, 200, 64, True, True)]


def _variants():
    from openmla.ops.sparse_decode.gluon_launch import GLUON_VARIANTS

    return sorted(GLUON_VARIANTS)


def _check_variant(case, variant):
    old = os.environ.get("OPENMLA_SPARSE_GLUON_VARIANT")
    if variant:
        os.environ["OPENMLA_SPARSE_GLUON_VARIANT"] = variant
    try:
        return _check(case, "gluon")
    finally:
        if old is None:
            os.environ.pop("OPENMLA_SPARSE_GLUON_VARIANT", None)
        else:
            os.environ["OPENMLA_SPARSE_GLUON_VARIANT"] = old


def _child(variant) -> int:
    """(subprocess) the variant's first launches."""
    for i, shape in enumerate(SMALL[:2]):
        err = _check_variant(_case(shape, seed=i), variant)
        print(f"child {variant} {shape}: {'ok' if err is None else err}", flush=True)
    return 0


def _watchdog(variant) -> str:
    env = dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "src"))
    try:
        res = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True,
                             text=True, env=env, timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired:
        return f"HANG (no result after {WATCHDOG_S} s)"
    print(res.stdout, end="")
    if res.returncode != 0:
        print(res.stderr[-2000:])
        return f"child failed rc={res.returncode}"
    bad = [ln for ln in res.stdout.splitlines() if ln.startswith("child") and "ok" not in ln]
    return "ok" if not bad else f"MISMATCH ({len(bad)})"


def _bench_shape(s_q, h_q, variants, table):
    from openmla import _library
    from openmla.device import device_info
    from openmla.ops.sparse_decode import gluon_launch as gll
    from openmla.ops.sparse_decode.launch import schedule_lengths
    from openmla.testing.bench import graph_time_fn, time_fn

    case = _case((B, s_q, h_q, S_K, TOPK, PBS, False, False), seed=s_q * 1000 + h_q)
    for v in [None] + variants:
        err = _check_variant(case, v)
        print(f"  s_q={s_q} h_q={h_q} {v or 'default'}: {'ok' if err is None else err}",
              flush=True)
    q, kc, idx = case["q"], case["k_cache"], case["indices"]
    args = (case["softmax_scale"], 512, case["attn_sink"], None)
    lengths = schedule_lengths(B, TOPK, None, None, None, q.device)
    base = gll.num_parts_for(h_q, s_q, device_info(q.device).num_sms)
    rows = []
    for v in [None] + variants:
        spec = gll.gluon_variant(v)
        own = 1 if spec is None else spec.parts_mult
        # the parts multiplier sweep for the default and the variants that keep its parts
        for mult in sorted({own, *PART_MULTS}) if own == 1 else (own,):
            label = f"{v or 'default'} x{mult}"
            try:
                meta, splits = _library.ops.decode_schedule(lengths, base * mult)
                if mult != own:  # correctness of this parts count too (NaN-filled outputs)
                    with nan_filled_outputs():
                        o, _ = gll.sparse_decode_gluon_kernels(q, kc, idx, meta, splits, *args,
                                                               gll.GLUON_STAGES, variant=v)
                    if torch.isnan(o).any():
                        print(f"  {label}: NaN in the output")

                def fn(meta=meta, splits=splits, v=v):
                    return gll.sparse_decode_gluon_kernels(q, kc, idx, meta, splits, *args,
                                                           gll.GLUON_STAGES, variant=v)

                ev = time_fn(fn, device="cuda", budget_s=0.3, max_runs=30).p50
                gr = graph_time_fn(fn, device="cuda", reps=20).p50
            except Exception:
                traceback.print_exc()
                ev = gr = float("nan")
            rows.append((label, ev, gr))
            print(f"  s_q={s_q} h_q={h_q} {label}: events {ev:.1f} µs, graph {gr:.1f} µs",
                  flush=True)
    table.append(((s_q, h_q), rows))


def _compile_report() -> int:
    from openmla.ops.sparse_decode.gluon_launch import compile_sm90
    from openmla.testing.sm90 import ptxas_report

    for v in [None] + _variants():
        k = compile_sm90(variant=v)
        ptx = k.asm["ptx"]
        rep = ptxas_report(ptx)
        warn = sorted(set(re.findall(r"\(C75\d\d\)", rep.text)))
        print(f"{v or 'default':20} spill-bytes {rep.spill_stores} "
              f"smem {k.metadata.shared} wgmma {ptx.count('wgmma.mma_async')} "
              f"ptxas warnings {warn}", flush=True)
    return 0


def main() -> int:
    if "--child" in sys.argv:
        return _child(sys.argv[sys.argv.index("--child") + 1])
    if "--compile" in sys.argv:
        os.environ.pop("TRITON_INTERPRET", None)
        return _compile_report()
    from openmla.device import device_info, gluon_available
    from openmla.testing.bench import measure_ceilings

    t0 = time.time()
    os.environ.pop("OPENMLA_SPARSE_GLUON_VARIANT", None)
    os.environ["OPENMLA_BACKEND_SPARSE_DECODE"] = "gluon"
    info = device_info("cuda")
    print(f"device {info.name} ({info.num_sms} SMs, sm_{info.arch}), gluon {gluon_available()}")
    if not info.is_hopper:
        print("not a Hopper GPU: the Gluon kernel does not run here")
        return 1
    ceil = measure_ceilings("cuda")
    print(f"ceilings: copy {ceil.copy_gbps:.0f} GB/s, bf16 matmul {ceil.matmul_tflops:.0f} TFLOPS"
          f"; {B * TOPK * 656 / 1e6:.0f} MB of token rows at s_q=1 = "
          f"{B * TOPK * 656 / (ceil.copy_gbps * 1e3):.0f} µs at the copy rate")
    variants = []
    for v in _variants():
        status = _watchdog(v)
        print(f"first launch of {v} (subprocess, watchdog {WATCHDOG_S} s): {status}", flush=True)
        if status == "ok":
            variants.append(v)
    for i, shape in enumerate(SMALL):
        case = _case(shape, seed=100 + i)
        for v in [None] + variants:
            err = _check_variant(case, v)
            print(f"small {shape} {v or 'default'}: {'ok' if err is None else err}", flush=True)
    table = []
    for s_q, h_q in BENCH:
        _bench_shape(s_q, h_q, variants, table)
        torch.cuda.empty_cache()
    print(f"\n=== sparse decode V3.2 b={B} topk={TOPK}: split kernel + combine, median µs "
          f"(events | CUDA graph), {time.time() - t0:.0f} s total ===")
    for (s_q, h_q), rows in table:
        target = TARGET_US.get((s_q, h_q))
        print(f"s_q={s_q} h_q={h_q}" + (f" (target {target} µs graph)" if target else ""))
        best = min(rows, key=lambda r: r[2] if r[2] == r[2] else float("inf"))
        for label, ev, gr in rows:
            mark = " <- best" if (label, ev, gr) == best else ""
            print(f"  {label:24} {ev:8.1f} | {gr:8.1f}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
