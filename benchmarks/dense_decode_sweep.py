"""Dense decode on the GPU: check the Triton kernel against the reference at the benchmark shapes,
then time launch configurations (block_h, num_warps, num_stages) of the split kernel at each
shape, with the copy and matmul ceilings measured in the same run. Prints a table last.

    PYTHONPATH=src python benchmarks/dense_decode_sweep.py [--quick]
"""
import argparse
import itertools
import sys

import torch

import openmla
from openmla import _library
from openmla.device import device_info
from openmla.ops.dense_decode.config import pick_config
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.testing import flops as F
from openmla.testing import generate as gen
from openmla.testing.bench import measure_ceilings, time_fn
from openmla.testing.compare import TOLERANCES, compare

SHAPES = {  # name: (b, s_q, h_q, s_k, causal, varlen, page_block_size)
    "mem h16": (128, 1, 16, 8192, False, False, 64),
    "h64": (128, 1, 64, 8192, False, False, 64),
    "h128": (128, 1, 128, 8192, False, False, 64),
    "compute s_q2 h128": (128, 2, 128, 8192, True, False, 64),
    "short s_k1024 h128": (128, 1, 128, 1024, False, False, 64),
    "varlen mean4096 h128": (128, 1, 128, 4096, False, True, 64),
    "mem h16 pbs16": (128, 1, 16, 8192, False, False, 16),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = ap.parse_args()
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s  "
          f"matmul {ceil.matmul_tflops:.0f} TFLOPS", flush=True)
    rows_out = []
    for name in args.shapes:
        b, s_q, h_q, s_k, causal, varlen, pbs = SHAPES[name]
        case = gen.dense_decode_inputs(b, s_q, h_q, s_k, page_block_size=pbs, causal=causal,
                                       varlen=varlen, device=dev, seed=0)
        kw = gen.public_kwargs(case)
        seqlens = case["cache_seqlens"].tolist()
        fl = F.dense_decode_flops(b, s_q, h_q, 576, 512, seqlens)
        by = F.dense_decode_bytes(b, s_q, h_q, 1, 576, 512, seqlens)
        out, lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
        r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
        tol = TOLERANCES["dense_decode"]
        why = compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])
        print(f"{name}: check {'PASS' if why is None else 'FAIL ' + why}", flush=True)
        del r_out, r_lse
        base = pick_config(s_q * h_q, 1, device_info(dev), pbs)
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        variants = [(base.block_h, base.block_n, base.num_warps, base.num_stages, base.use_tma, 1)]
        if not args.quick:
            if s_q * h_q < 64:  # memory-bound: (bh, bn, warps, stages, tma, parts per SM slot)
                grid_ = itertools.product([base.block_h], (32, 64), (8,), (2, 3, 4), (False, True),
                                          (1, 2))
            else:
                grid_ = itertools.product([64], (32, 64), (8,), (2, 3), (True,), (1, 2))
            variants += [v for v in grid_ if v != variants[0] and (pbs % 64 == 0 or not v[4])]
        schedules = {}
        for bh, bn, nw, ns, tma, mult in variants:
            if mult not in schedules:
                schedules[mult] = _library.ops.decode_schedule(
                    kw["cache_seqlens"], mult * max(sms // (-(-s_q * h_q // bh)), 1))
            meta, splits = schedules[mult]

            def call(bh=bh, bn=bn, nw=nw, ns=ns, tma=tma, meta=meta, splits=splits):
                return _library.ops.dense_decode(kw["q"], kw["k_cache"], kw["block_table"],
                                                 kw["cache_seqlens"], meta, splits,
                                                 kw["softmax_scale"], causal, 512, bh, bn, nw,
                                                 ns, tma)
            tag = f"bh={bh} bn={bn} w={nw} st={ns} tma={tma} x{mult}"
            try:
                o2, l2 = call()
                bad = compare(o2, out, tol["out"]) or compare(l2, lse, tol["lse"])
                if bad:
                    print(f"  {name} {tag}: WRONG {bad}", flush=True)
                t = time_fn(call, device=dev, budget_s=0.5, max_runs=50).p50
            except Exception as e:  # a config the compiler rejects (e.g. out of shared memory)
                print(f"  {name} {tag}: {type(e).__name__} {e}"[:300], flush=True)
                continue
            tf, gb = fl / t / 1e6, by / t / 1e3
            rows_out.append((name, f"{bh}/{bn}{'T' if tma else 'P'}x{mult}", nw, ns, t, tf, gb,
                             gb / ceil.copy_gbps, tf / ceil.matmul_tflops))
            print(f"  {name} {tag}: {t:9.1f} us {tf:7.1f} TFLOPS {gb:7.0f} GB/s", flush=True)
        # the whole public call (schedule + split + combine), default config
        pub = time_fn(lambda: openmla.flash_mla_with_kvcache(
            **kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0]), device=dev,
            budget_s=0.5, max_runs=50).p50
        rows_out.append((name, "public", "", "", pub, fl / pub / 1e6, by / pub / 1e3,
                         by / pub / 1e3 / ceil.copy_gbps, fl / pub / 1e6 / ceil.matmul_tflops))
        del case, kw
        torch.cuda.empty_cache()
    from openmla.ops.dense_decode.kernel import _dense_decode_kernel, _dense_decode_tma_kernel
    for fn in (_dense_decode_kernel, _dense_decode_tma_kernel):
        for cache in fn.device_caches.values():
            for key, k in cache[0].items():
                print(f"{fn.__name__}: warps {k.metadata.num_warps} stages {k.metadata.num_stages}"
                      f" regs {k.n_regs} spills {k.n_spills} smem {k.metadata.shared}")
    print(f"\n{'shape':22} {'config':>10} {'w':>2} {'st':>2} {'us':>9} {'TFLOPS':>7} {'GB/s':>6} "
          f"{'copy':>5} {'mm':>5}")
    for r in rows_out:
        print(f"{r[0]:22} {r[1]!s:>10} {r[2]!s:>2} {r[3]!s:>2} {r[4]:9.1f} {r[5]:7.1f} {r[6]:6.0f} "
              f"{r[7]:5.2f} {r[8]:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
