"""Run the Gluon dense-decode kernel on small configurations, each in a subprocess with a
watchdog, to find which configuration (if any) fails to finish or is wrong.

    PYTHONPATH=src python benchmarks/gluon_hang_probe.py
"""
import subprocess
import sys

CASES = [  # (b, s_q, h_q, s_k, parts, causal, zero_seqlens)
    (2, 1, 64, 640, 2, False, False),  # two parts, no request split
    (1, 1, 64, 640, 1, False, False),  # one part
    (1, 1, 64, 640, 2, False, False),  # one request split in two pieces
    (1, 1, 64, 640, 3, False, False),
    (4, 2, 64, 300, 3, True, False),
    (74, 1, 128, 1500, 66, False, True),
]

CHILD = r"""
import sys, torch, openmla
from openmla import _library
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, compare
b, s_q, h_q, s_k, parts, causal, zero = eval(sys.argv[1])
case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, zero_seqlens=zero, varlen=zero,
                               device="cuda", seed=1)
lengths = case["cache_seqlens"]
meta, splits = _library.ops.decode_schedule(lengths, parts)
out, lse = _library.ops.dense_decode_gluon(case["q"], case["k_cache"], case["block_table"],
                                           lengths, meta, splits, case["softmax_scale"], causal,
                                           512, 2)
torch.cuda.synchronize()
r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
why = compare(out, r_out.to(out.dtype), TOLERANCES["dense_decode"]["out"]) or compare(
    lse, r_lse, TOLERANCES["dense_decode"]["lse"])
print("OK" if why is None else "WRONG " + why, "splits", splits.tolist()[:8], flush=True)
"""

for case in CASES:
    try:
        res = subprocess.run([sys.executable, "-c", CHILD, repr(case)], capture_output=True,
                             text=True, timeout=40)
        tail = (res.stdout + res.stderr).strip().splitlines()
        print(case, tail[-1][:300] if tail else f"rc={res.returncode}", flush=True)
    except subprocess.TimeoutExpired:
        print(case, "TIMEOUT (no finish in 40 s)", flush=True)
