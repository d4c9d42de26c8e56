"""Gluon (Hopper) pieces shared by the dense and sparse decode kernels."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def swapped_softmax_step(st, m_i, l_i, acc, k0, p_s, a_s, p_free, p_ready, k_free, msg,
                         row_layout: gl.constexpr):
    """One key tile of the swapped-product softmax warpgroup: the online softmax of the scaled,
    masked scores ``st [keys, rows]`` (base 2), Pᵀ and the rescale factors handed to the other
    warpgroup through ``p_s`` / ``a_s`` (message ``msg``, barriers ``p_free`` / ``p_ready``),
    then its own half of Oᵀ rescaled and ``acc += K0ᵀ·Pᵀ``; ``k_free`` is arrived once that MMA
    is done. Returns the new running max, sum, accumulator and message count."""
    m_new = gl.maximum(m_i, gl.max(st, axis=0))
    p = gl.exp2(st - gl.expand_dims(m_new, 0))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=0)
    mbarrier.wait(p_free, (msg & 1) ^ 1)
    p_s.store(p.to(k0.dtype))
    a_s.store(alpha)
    fence_async_shared()
    mbarrier.arrive(p_ready, count=1)
    acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_layout), 0)
    acc = warpgroup_mma(k0.permute((1, 0)), p_s, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    mbarrier.arrive(k_free, count=1)
    return m_new, l_i, acc, msg + 1
