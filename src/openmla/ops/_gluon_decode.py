"""Gluon (Hopper) pieces shared by the MLA kernels: dense and sparse decode, sparse prefill."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def handoff_barriers(STAGES: gl.constexpr, Q_ARRIVALS: gl.constexpr,
                     K_ARRIVALS: gl.constexpr, K_RELEASES: gl.constexpr = 2):
    """The barriers of the two-warpgroup kernels (a softmax and a P·V warpgroup fed by a
    loader): Q landed / Q free, P published / P free, and per ring stage key tile landed / key
    tile free (both warpgroups release it). ``Q_ARRIVALS`` / ``K_ARRIVALS``: the arrivals that
    complete a landing (1 for a TMA load with its byte count, a thread count for cp.async, plus
    any single arrival the loader adds after its copies);
    ``K_RELEASES``: those that free a key tile (4 when a CTA pair shares the tiles)."""
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=Q_ARRIVALS)
    mbarrier.init(q_free, count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_free, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=K_ARRIVALS)
        mbarrier.init(k_free.index(i), count=K_RELEASES)  # both warpgroups (of both CTAs)
    return q_ready, q_free, p_ready, p_free, k_ready, k_free


@gluon.jit
def load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF: gl.constexpr):
    """TMA copy of request number ``rq``'s Q rows (two NoPE halves and the RoPE part) once the
    previous request's Q has been released."""
    q_bytes: gl.constexpr = 2 * q_desc.block_type.nbytes + qr_desc.block_type.nbytes
    mbarrier.wait(q_free, (rq & 1) ^ 1)
    mbarrier.expect(q_ready, q_bytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_ready, q_s.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row, D_HALF], q_ready, q_s.index(1))
    tma.async_copy_global_to_shared(qr_desc, [q_row, 2 * D_HALF], q_ready, qr_s)


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


@gluon.jit
def p_in_rope_slot(kr_s, stage, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr):
    """P [BLOCK_H, BLOCK_N] of the key tile in ring ``stage`` of the seesaw kernels: the bytes
    of its RoPE key buffer, dead once the tile's S is done."""
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], kr_s.dtype)
    return kr_s.index(stage)._reinterpret(kr_s.dtype, [BLOCK_H, BLOCK_N], p_sl)


@gluon.jit
def ml_load(ml_s, ml2_s, ph, k: gl.constexpr, BLOCK_H: gl.constexpr, layout: gl.constexpr):
    """Row vector k of [m0, l0, m1, l1] that the seesaw kernels' warpgroups exchange, for pair
    parity ``ph`` (one buffer per parity)."""
    if ph == 0:
        v = ml_s.slice(k * BLOCK_H, BLOCK_H).load(layout)
    else:
        v = ml2_s.slice(k * BLOCK_H, BLOCK_H).load(layout)
    return v


@gluon.jit
def ml_store(ml_s, ml2_s, ph, k: gl.constexpr, BLOCK_H: gl.constexpr, v):
    """Store row vector k of [m0, l0, m1, l1] for pair parity ``ph`` (see ``ml_load``)."""
    if ph == 0:
        ml_s.slice(k * BLOCK_H, BLOCK_H).store(v)
    else:
        ml2_s.slice(k * BLOCK_H, BLOCK_H).store(v)


@gluon.jit
def _softmax_rows(sc, m_i, l_i):
    """One online-softmax step over the rows of ``sc`` (base 2, scaled and masked scores):
    the new running max, the new row sums, the old sums' rescale factor and P (fp32)."""
    m_new = gl.maximum(m_i, gl.max(sc, axis=1))
    p = gl.exp2(sc - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    return m_new, l_i * alpha + gl.sum(p, axis=1), alpha, p


@gluon.jit
def seesaw_softmax0(sc, m_i, l_i, kr_s, z, ml_s, ml2_s, ph, p_bar, BLOCK_H: gl.constexpr,
                    BLOCK_N: gl.constexpr):
    """Warpgroup 0 of a seesaw pair in the sparse-prefill kernel's order: the online softmax of
    the scaled, masked scores ``sc`` of B0 (base 2), then P0 (into B0's RoPE buffer), m0 and l0
    published to warpgroup 1 (``p_bar`` 0), which reads P0 back (``seesaw_p0_at_m1``). Returns
    m0, l0, the rescale factor of O and P0 in bf16."""
    m_i, l_i, alpha, p = _softmax_rows(sc, m_i, l_i)
    p16 = p.to(kr_s.dtype)
    p_in_rope_slot(kr_s, z, BLOCK_H, BLOCK_N).store(p16)
    ml_store(ml_s, ml2_s, ph, 0, BLOCK_H, m_i)
    ml_store(ml_s, ml2_s, ph, 1, BLOCK_H, l_i)
    fence_async_shared()
    mbarrier.arrive(p_bar.index(0), count=1)
    return m_i, l_i, alpha, p16


@gluon.jit
def seesaw_softmax0_kept(sc, m_i, l_i, ml_s, ml2_s, ph, p_bar, BLOCK_H: gl.constexpr):
    """Warpgroup 0 of a seesaw pair in the dense-decode kernel's order: the online softmax of
    the scaled, masked scores ``sc`` of B0 (base 2); m0 and l0 published to warpgroup 1
    (``p_bar`` 0). Returns m0, l0, the rescale factor of O and P0 in fp32 (kept until warpgroup
    1's max is known: ``seesaw_store_p0_at_m1``)."""
    m_i, l_i, alpha, p = _softmax_rows(sc, m_i, l_i)
    ml_store(ml_s, ml2_s, ph, 0, BLOCK_H, m_i)
    ml_store(ml_s, ml2_s, ph, 1, BLOCK_H, l_i)
    mbarrier.arrive(p_bar.index(0), count=1)
    return m_i, l_i, alpha, p


@gluon.jit
def seesaw_store_p0_at_m1(p, m0, kr_s, z, ml_s, ml2_s, ph, p_bar, BLOCK_H: gl.constexpr,
                          BLOCK_N: gl.constexpr, row_layout: gl.constexpr):
    """Warpgroup 0, once warpgroup 1 has published m1 and l1 (``p_bar`` 1): P0 brought to m1
    (P0 · exp2(m0 − m1), rounded to bf16 as P1 is) into B0's RoPE buffer for warpgroup 1's
    P0 · V0_R (``p_bar`` 2). Returns m1, l1 and exp2(m0 − m1), O_L's rescale factor."""
    mbarrier.wait(p_bar.index(1), ph)
    m1 = ml_load(ml_s, ml2_s, ph, 2, BLOCK_H, row_layout)
    l1 = ml_load(ml_s, ml2_s, ph, 3, BLOCK_H, row_layout)
    d = gl.exp2(m0 - m1)
    p_in_rope_slot(kr_s, z, BLOCK_H, BLOCK_N).store((p * gl.expand_dims(d, 1)).to(kr_s.dtype))
    fence_async_shared()
    mbarrier.arrive(p_bar.index(2), count=1)
    return m1, l1, d


@gluon.jit
def seesaw_softmax1(sc, p1_s, ml_s, ml2_s, ph, p_bar, BLOCK_H: gl.constexpr,
                    row_layout: gl.constexpr):
    """Warpgroup 1 of a seesaw pair: once warpgroup 0 has published m0 and l0, the softmax of
    B1's scores ``sc`` at m1 = max(m0, rowmax), then P1 (into ``p1_s``), m1 and l1 published
    (``p_bar`` 1). Returns m1, l1, exp2(m0 - m1) and P1 in bf16."""
    mbarrier.wait(p_bar.index(0), ph)
    m0 = ml_load(ml_s, ml2_s, ph, 0, BLOCK_H, row_layout)
    l0s = ml_load(ml_s, ml2_s, ph, 1, BLOCK_H, row_layout)
    m1 = gl.maximum(m0, gl.max(sc, axis=1))
    p = gl.exp2(sc - gl.expand_dims(m1, 1))
    alpha1 = gl.exp2(m0 - m1)
    l_i = l0s * alpha1 + gl.sum(p, axis=1)
    p16 = p.to(p1_s.dtype)
    p1_s.store(p16)
    ml_store(ml_s, ml2_s, ph, 2, BLOCK_H, m1)
    ml_store(ml_s, ml2_s, ph, 3, BLOCK_H, l_i)
    fence_async_shared()
    mbarrier.arrive(p_bar.index(1), count=1)
    return m1, l_i, alpha1, p16


@gluon.jit
def seesaw_p0_at_m1(kr_s, z, alpha1, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                    s_layout: gl.constexpr):
    """Warpgroup 1 in the sparse-prefill kernel's order: P0 read back from B0's RoPE buffer and
    brought to its max (P0 · exp2(m0 − m1)), in bf16 like P1."""
    p0 = p_in_rope_slot(kr_s, z, BLOCK_H, BLOCK_N).load(s_layout).to(gl.float32)
    return (p0 * gl.expand_dims(alpha1, 1)).to(kr_s.dtype)
