"""Feasibility of the swapped decode product for small h_q in Gluon / Triton 3.6 (sm_90, offline):
S^T [64 keys, 16 rows] = K [64, 576] . Q^T (Q [16, 576] in smem, permuted: B K-major, N = 16),
O^T [256, 16] += V^T [256, 64] . P^T [64, 16] (V^T: the K tile's first 256 columns permuted,
MN-major A from smem; P^T in smem [64, 16], B MN-major).

    /work/venv/bin/python benchmarks/gluon_notes/swap_ab_decode_probe.py

Result (2026-11-22, CPU machine, Triton 3.6): compiles; every product is m64n16k16; the S^T
products carry no transpose flags, the O^T ones transpose both A and B in the instruction (no
data shuffles). Correctness has not been run on a GPU: this is a feasibility probe for the
small-h_q decode design in docs/dense_decode.md, not a kernel."""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma,
                                                               warpgroup_mma_wait)
from triton.experimental.gluon._runtime import GluonASTSource


@gluon.jit
def swap_kernel(k_ptr, q_ptr, o_ptr, NK: gl.constexpr, H: gl.constexpr, D: gl.constexpr,
                DV: gl.constexpr):
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    rk = gl.arange(0, NK, layout=gl.SliceLayout(1, blk))
    rd = gl.arange(0, D, layout=gl.SliceLayout(0, blk))
    kt = gl.load(k_ptr + rk[:, None] * D + rd[None, :])
    rh = gl.arange(0, H, layout=gl.SliceLayout(1, blk))
    qt = gl.load(q_ptr + rh[:, None] * D + rd[None, :])
    k_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([NK, D], gl.bfloat16)
    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([H, D], gl.bfloat16)
    k_s = gl.allocate_shared_memory(gl.bfloat16, [NK, D], k_sl, kt)
    q_s = gl.allocate_shared_memory(gl.bfloat16, [H, D], q_sl, qt)
    fence_async_shared()
    # S^T = K . Q^T : M = NK keys, N = H rows
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, H, 16])
    st = gl.zeros([NK, H], gl.float32, s_l)
    st = warpgroup_mma(k_s, q_s.permute((1, 0)), st, use_acc=False, is_async=True)
    st = warpgroup_mma_wait(0, deps=[st])
    # softmax over the keys = over M: a reduction across the warps of the warpgroup
    m = gl.max(st, axis=0)
    p = gl.exp2(st - gl.expand_dims(m, 0))
    l = gl.sum(p, axis=0)
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([NK, H], gl.bfloat16)
    p_s = gl.allocate_shared_memory(gl.bfloat16, [NK, H], p_sl, p.to(gl.bfloat16))
    fence_async_shared()
    # O^T = V^T . P^T : A = V^T [DV, NK] from the K tile's first DV columns (MN-major), B = P^T
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, H, 16])
    ot = gl.zeros([DV, H], gl.float32, o_l)
    vt = k_s.slice(0, DV, dim=1).permute((1, 0))
    ot = warpgroup_mma(vt, p_s, ot, use_acc=False, is_async=True)
    ot = warpgroup_mma_wait(0, deps=[ot])
    ot = ot / gl.expand_dims(gl.convert_layout(l, gl.SliceLayout(0, o_l)), 0)
    ro = gl.arange(0, DV, layout=gl.SliceLayout(1, blk))
    rh2 = gl.arange(0, H, layout=gl.SliceLayout(0, blk))
    gl.store(o_ptr + rh2[None, :] * DV + ro[:, None], gl.convert_layout(ot, blk))


ptx = ""
for dv in (64, 128, 256):
    sig = {"k_ptr": "*bf16", "q_ptr": "*bf16", "o_ptr": "*fp32", "NK": "constexpr", "H": "constexpr",
           "D": "constexpr", "DV": "constexpr"}
    try:
        c = triton.compile(GluonASTSource(fn=swap_kernel, signature=sig,
                                          constexprs={"NK": 64, "H": 16, "D": 256, "DV": dv}),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = c.asm["ptx"]
        shapes = sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)))
        print("DV", dv, "compiled; wgmma shapes", shapes, "count", len(re.findall(r"wgmma\.mma_async", ptx)))
    except Exception as e:
        print("DV", dv, "FAILED:", str(e).splitlines()[-1][:300] if str(e) else repr(e))
lines = [l.strip() for l in ptx.splitlines() if "wgmma.mma_async" in l]
print(lines[0][:200]); print(lines[-1][:200])
print("ld.shared / st.shared count:", len(re.findall(r"\bld\.shared", ptx)), len(re.findall(r"\bst\.shared", ptx)))
