"""The CTA-pair helpers (``ops/_gluon_cluster.py``): shared offsets read from a compiled kernel
(no GPU needed), and on a Hopper GPU a pair kernel (``gluon_pair_kernel.py``) in which each CTA
fills half of a swizzled bf16 tile and copies it into the peer's shared memory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

_COMPILE = """
import sys, triton
sys.path.insert(0, sys.argv[1])
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from gluon_pair_kernel import _pair_kernel
from openmla.ops._gluon_cluster import smem_offsets
ce = dict(SMEM_TILE=0, SMEM_READY=0, SMEM_DONE=0, ROWS=64, COLS=256)
sig = {"in_ptr": "*bf16", "out_ptr": "*bf16", **{k: "constexpr" for k in ce}}
c = triton.compile(GluonASTSource(fn=_pair_kernel, signature=sig, constexprs=ce),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
for k, v in smem_offsets(c.asm["ttgir"]).items():
    print(k, v)
ptx = c.asm["ptx"]
print("bulk", ptx.count("cp.async.bulk.shared::cluster.shared::cta"))
print("remote_arrive", ptx.count("mbarrier.arrive.shared::cluster.b64"))
print("cluster_barrier", ptx.count("barrier.cluster.arrive"))
"""


def test_smem_offsets_of_a_compiled_pair_kernel():
    """The buffers' shared offsets come out of the compiled kernel by name, and the pair
    kernel has its four bulk copies, its remote arrive and one cluster barrier a partition."""
    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", _COMPILE, str(HERE)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got = {k: int(v) for k, v in (line.split() for line in res.stdout.splitlines() if line)}
    assert got["tile"] % 1024 == 0  # the 128-byte swizzle's alignment
    assert not got["tile"] <= got["ready"] < got["tile"] + 64 * 256 * 2
    assert got["ready"] != got["done"] and got["ready"] % 8 == 0 == got["done"] % 8
    assert (got["bulk"], got["remote_arrive"], got["cluster_barrier"]) == (4, 1, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                    reason="needs a Hopper GPU")
@pytest.mark.parametrize("cols", [64, 256])
def test_pair_shares_a_swizzled_tile_gpu(cols):
    sys.path.insert(0, str(HERE))
    from gluon_pair_kernel import BUFFERS, _pair_kernel

    from openmla.ops._gluon_cluster import launch_pair

    x = torch.randn(64, cols, device="cuda").to(torch.bfloat16)
    out = torch.full((2, 64, cols), float("nan"), device="cuda", dtype=torch.bfloat16)
    launch_pair(_pair_kernel, (2, 1, 1), (x, out), dict(ROWS=64, COLS=cols, num_warps=4),
                BUFFERS)
    torch.cuda.synchronize()
    for rank in range(2):
        bad = (out[rank] != x).nonzero()
        assert bad.numel() == 0, (f"CTA {rank}: {bad.shape[0]} elements differ, rows "
                                  f"{sorted(set(bad[:, 0].tolist()))[:16]}, columns "
                                  f"{sorted(set(bad[:, 1].tolist()))[:16]}")
