"""Dense decode at s_q·h_q <= 32 on a Hopper GPU: the default Gluon kernel (64-row tiles) against
the swapped-product kernel (gluon_kernel.py with SWAP; the default there, OPENMLA_DENSE_GLUON_SMALL_H=0 turns it off).

1. the swapped kernel's first launches and correctness against the float32 reference in a
   subprocess with a watchdog (a hang is reported, not waited on);
2. CUDA-graph timing of the public call (a fresh schedule a call, as `openmla bench`) for both,
   b=128 s_k=8192, h_q 16, 8 and 32, with the copy ceiling of the same run; compact table last.

    PYTHONPATH=src python benchmarks/dense_small_h.py
"""
import os
import sys

import torch

CHECK = r"""
import os, torch, openmla
os.environ["OPENMLA_BACKEND_DENSE_DECODE"] = "gluon"
os.environ["OPENMLA_DENSE_GLUON_SMALL_H"] = "1"
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, compare, nan_filled_outputs
bad = 0
for shape in [(4, 1, 16, 700, False, False, False), (3, 2, 8, 300, True, True, False),
              (74, 1, 16, 1500, False, True, True), (2, 1, 8, 64, False, False, False),
              (5, 4, 4, 2000, True, True, False), (6, 1, 32, 900, False, True, False),
              (4, 2, 12, 1300, True, True, True)]:
    b, s_q, h_q, s_k, causal, varlen, zero = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, varlen=varlen,
                                   zero_seqlens=zero, device="cuda", seed=1)
    with nan_filled_outputs():
        meta = openmla.get_mla_metadata()[0]
        out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                  tile_scheduler_metadata=meta)
    torch.cuda.synchronize()
    r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    why = compare(out, r_out.to(out.dtype), tol["out"]) or compare(lse, r_lse, tol["lse"])
    bad += why is not None
    print(shape, "ok" if why is None else "WRONG " + why, flush=True)
raise SystemExit(1 if bad else 0)
"""


def main() -> int:
    import openmla
    from openmla.testing import generate as gen
    from openmla.testing.bench import check_in_subprocess, graph_time_fn, measure_ceilings
    from openmla.testing.flops import dense_decode_bytes

    if not check_in_subprocess(CHECK, timeout=240, tail=3000):
        print("correctness FAILED: no timings")
        return 1
    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    print(f"{torch.cuda.get_device_name()}  copy {ceil.copy_gbps:.0f} GB/s", flush=True)
    os.environ["OPENMLA_BACKEND_DENSE_DECODE"] = "gluon"
    rows = []
    for h_q in (16, 8, 32):
        case = gen.dense_decode_inputs(128, 1, h_q, 8192, device="cuda", seed=0)
        kw = gen.public_kwargs(case)
        nbytes = dense_decode_bytes(128, 1, h_q, 1, 576, 512, [8192] * 128)

        def call():
            return openmla.flash_mla_with_kvcache(
                **kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
        for name, flag in (("default", "0"), ("small-h", "1")):
            os.environ["OPENMLA_DENSE_GLUON_SMALL_H"] = flag
            t = graph_time_fn(call, device=dev, reps=40).p50
            frac = nbytes / (t * 1e-6) / 1e9 / ceil.copy_gbps
            rows.append((h_q, name, t, frac))
            print(f"  h_q={h_q} {name:8} graph {t:8.1f} us  {frac:.2f} of copy", flush=True)
    print(f"\n{'h_q':>4} {'kernel':8} {'graph us':>9} {'copy':>5}")
    for h_q, name, t, frac in rows:
        print(f"{h_q:4} {name:8} {t:9.1f} {frac:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
