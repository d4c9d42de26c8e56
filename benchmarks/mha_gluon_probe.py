"""Run the Gluon MHA forward on a few configurations, each in a subprocess with a watchdog, to
find which (if any) fails to finish or is wrong: one CTA per work item against the persistent
grid, one item per CTA against several, and other register splits.

    PYTHONPATH=src python benchmarks/mha_gluon_probe.py
"""
import subprocess
import sys

# (lens_q, lens_k, h_q, h_kv, (d_qk, d_v), causal, persistent, load_regs, consumer_regs)
CASES = [
    ((1023,), (1023,), 8, 1, (192, 128), True, False, 24, 240),
    ((1023,), (1023,), 8, 1, (192, 128), True, True, 24, 240),  # 72 items: one per CTA
    ((300,), (300,), 4, 4, (128, 128), False, True, 24, 240),
    ((1000, 3000, 17, 0, 2048),) * 2 + (16, 4, (192, 128), True, True, 24, 240),  # > 1 item a CTA
    ((1000, 3000, 17, 0, 2048),) * 2 + (16, 4, (192, 128), False, True, 24, 240),
    ((1000, 3000, 17, 0, 2048),) * 2 + (16, 4, (192, 128), True, True, 40, 232),
    ((1000, 3000, 17, 0, 2048),) * 2 + (16, 4, (192, 128), True, False, 24, 240),
]

CHILD = r"""
import os, sys, time, torch
from openmla.ops.mha_prefill import gluon_launch
from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
lq, lk, h, hkv, dims, causal, persistent, load_regs, cons_regs = eval(sys.argv[1])
gluon_launch.LOAD_REGS, gluon_launch.CONSUMER_REGS = load_regs, cons_regs
g = torch.Generator().manual_seed(0)
mk = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16).cuda()
q, k, v = mk(sum(lq), h, dims[0]), mk(sum(lk), hkv, dims[0]), mk(sum(lk), hkv, dims[1])
cu = lambda ls: torch.tensor([0] + torch.tensor(ls).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
torch.cuda.synchronize()
t0 = time.time()
out, lse = gluon_launch.mha_prefill_fwd_gluon(q, k, v, cu(lq), cu(lk), dims[0] ** -0.5, causal,
                                              persistent=persistent)
done = torch.cuda.Event()
done.record()
while not done.query() and time.time() - t0 < 40:
    time.sleep(0.05)
if not done.query():
    print("HUNG", flush=True)
    os._exit(3)
r_out, r_lse = mha_prefill_fwd_ref(q, k, v, cu(lq), cu(lk), dims[0] ** -0.5, causal)
err = (out.float() - r_out).abs().max().item()
fin = ~torch.isinf(r_lse)
lerr = (lse - r_lse)[fin].abs().max().item() if fin.any() else 0.0
ok = err < 2e-2 and lerr < 1e-3 and torch.equal(torch.isinf(lse), ~fin)
print(("OK" if ok else "WRONG"), f"out err {err:.3g} lse err {lerr:.3g} ({time.time() - t0:.1f} s)", flush=True)
"""


def main() -> None:
    for case in CASES:
        try:
            res = subprocess.run([sys.executable, "-c", CHILD, repr(case)], capture_output=True,
                                 text=True, timeout=90)
            line = (res.stdout.strip().splitlines() or [res.stderr.strip()[-600:]])[-1]
        except subprocess.TimeoutExpired:
            line = "TIMEOUT (the child did not exit)"
        print(f"{case}: {line}", flush=True)


if __name__ == "__main__":
    main()
