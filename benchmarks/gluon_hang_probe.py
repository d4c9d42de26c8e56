"""Run the Gluon dense-decode kernel on small configurations, each in a subprocess with a
watchdog, to find which configuration (if any) fails to finish or is wrong; a launch that hangs
prints where each partition of each CTA waits (progress counters in pinned host memory).

    PYTHONPATH=src python benchmarks/gluon_hang_probe.py
"""
import subprocess
import sys

CASES = [  # (b, s_q, h_q, s_k, parts, causal, zero_seqlens, warps of the loader partition)
    (2, 1, 64, 640, 2, False, False, 1),  # two parts, no request split
    (1, 1, 64, 640, 3, False, False, 1),  # one request split in three pieces
    (2, 1, 128, 200, 1, False, False, 1),  # two row tiles, one part
    (4, 2, 64, 300, 3, True, False, 1),  # did not finish on 2026-11-22
    (74, 1, 128, 1500, 66, False, True, 1),  # did not finish on 2026-11-22
    (4, 2, 64, 300, 3, True, False, 4),
    (74, 1, 128, 1500, 66, False, True, 4),
]

CHILD = r"""
import os, sys, time, torch, openmla
from openmla import _library
from openmla.ops.dense_decode.launch import GLUON_BLOCK_H, dense_decode_gluon_kernels
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, compare
b, s_q, h_q, s_k, parts, causal, zero, load_warps = eval(sys.argv[1])
case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, zero_seqlens=zero, varlen=zero,
                               device="cuda", seed=1)
lengths = case["cache_seqlens"]
meta, splits = _library.ops.decode_schedule(lengths, parts)
ctas = -(-(s_q * h_q) // GLUON_BLOCK_H) * parts
progress = torch.full((ctas * 3 * 4,), -1, dtype=torch.int32, pin_memory=True)
torch.cuda.synchronize()
out, lse = dense_decode_gluon_kernels(case["q"], case["k_cache"], case["block_table"], lengths,
                                      meta, splits, case["softmax_scale"], causal, 512, 2,
                                      progress=progress, load_warps=load_warps)
done = torch.cuda.Event()
done.record()
t0 = time.time()
while not done.query() and time.time() - t0 < WATCHDOG_S:
    time.sleep(0.1)
if not done.query():
    # hung: show every partition that has not reached its end (sites 9 / 19 / 29)
    p = progress.view(ctas, 3, 4).tolist()
    names = ("load", "softmax", "pv")
    print("HUNG; meta", meta.tolist()[:4], "splits", splits.tolist()[:8])
    for c in range(ctas):
        stuck = [f"{names[k]}: r={p[c][k][0]} it={p[c][k][1]} msg={p[c][k][2]} site={p[c][k][3]}"
                 for k in range(3) if p[c][k][3] not in (9, 19, 29)]
        if stuck:
            print(f"cta {c}:", "; ".join(stuck))
    print("HUNG", flush=True)
    os._exit(3)
r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
why = compare(out, r_out.to(out.dtype), TOLERANCES["dense_decode"]["out"]) or compare(
    lse, r_lse, TOLERANCES["dense_decode"]["lse"])
print("OK" if why is None else "WRONG " + why, "splits", splits.tolist()[:8], flush=True)
"""
WATCHDOG_S = 15  # a launch of these sizes takes milliseconds


def probe(case, watchdog_s=WATCHDOG_S) -> tuple[bool, str]:
    """Run ``case`` in a subprocess: (finished, report). ``finished`` is False when the launch
    hung (the report then holds where each partition of each CTA waits) or the process did not
    exit; the report's last line says OK or WRONG otherwise."""
    try:
        res = subprocess.run([sys.executable, "-c", CHILD.replace("WATCHDOG_S", str(watchdog_s)),
                              repr(case)], capture_output=True, text=True,
                             timeout=watchdog_s + 120)
    except subprocess.TimeoutExpired:
        return False, "TIMEOUT (the process did not exit)"
    lines = (res.stdout + res.stderr).strip().splitlines()
    if lines and lines[-1] == "HUNG":  # the progress dump, then the verdict
        return False, "\n  " + "\n  ".join(lines[-40:-1])
    return bool(lines) and res.returncode == 0, (lines[-1][:300] if lines
                                                 else f"rc={res.returncode}")


if __name__ == "__main__":
    for case in CASES:
        print(case, probe(case)[1], flush=True)
