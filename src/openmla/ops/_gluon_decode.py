"""Gluon (Hopper) pieces shared by the MLA kernels: dense and sparse decode, sparse prefill."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def issue_scores(q_s, qr_s, k_s, kr_s, s, layout: gl.constexpr, ROWS: gl.constexpr,
                 KEYS: gl.constexpr, SWAP: gl.constexpr = False, ROPE: gl.constexpr = True):
    """Issue (asynchronously) the scores of the key tile in ring stage ``s``: S = Q·Kᵀ
    ``[ROWS, KEYS]``, or with SWAP Sᵀ = K·Qᵀ ``[KEYS, ROWS]``. The head dims come as two
    256-wide halves (``q_s`` 0 / 1 against ``k_s`` 2s / 2s + 1) plus, with ROPE, the 64-wide RoPE
    part (``qr_s`` against ``kr_s`` s)."""
    k0 = k_s.index(2 * s)
    k1 = k_s.index(2 * s + 1)
    if SWAP:
        sc = gl.zeros([KEYS, ROWS], gl.float32, layout=layout)
        sc = warpgroup_mma(k0, q_s.index(0).permute((1, 0)), sc, use_acc=False,
                           is_async=True)
        sc = warpgroup_mma(k1, q_s.index(1).permute((1, 0)), sc, is_async=True)
        if ROPE:
            sc = warpgroup_mma(kr_s.index(s), qr_s.permute((1, 0)), sc, is_async=True)
    else:
        sc = gl.zeros([ROWS, KEYS], gl.float32, layout=layout)
        sc = warpgroup_mma(q_s.index(0), k0.permute((1, 0)), sc, use_acc=False,
                           is_async=True)
        sc = warpgroup_mma(q_s.index(1), k1.permute((1, 0)), sc, is_async=True)
        if ROPE:
            sc = warpgroup_mma(qr_s, kr_s.index(s).permute((1, 0)), sc, is_async=True)
    return sc


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
