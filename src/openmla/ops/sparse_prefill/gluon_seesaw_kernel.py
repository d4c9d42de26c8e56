"""Hopper (sm90) sparse MLA prefill in Gluon with the seesaw schedule (SPEC §6.1), d_qk 576.

Same contract, work items and gather as ``gluon_kernel.py``; the two warpgroups are peers, as
in dense decode's ``gluon_seesaw_kernel.py``: each owns half of the output columns and an item's
key tiles go in pairs (B0, B1), B0 in ring stage 0 and B1 in stage 1. Warpgroup 0 computes S0,
its softmax and P0 (published in B0's RoPE buffer with m0 and the row sums), O_L += P0·V0_L, then
O_L += P1·V1_L once P1 is published; warpgroup 1 computes S1 meanwhile, its softmax at
m1 = max(m0, rowmax S1), publishes P1 (a buffer of its own), then O_R += (P0 brought to m1)·V0_R
and P1·V1_R. Each key tile is gathered as three pieces (L = K[:, :256], R = K[:, 256:512], E = RoPE)
with barriers of their own, and each piece goes back to the gather as soon as its last reader is
done (E1 after S1; L0 after P0·V0_L; R0 and E0 after P0·V0_R; R1 after P1·V1_R; L1 after
P1·V1_L), the gather refilling them in that order. An odd tile count ends with a pair whose B1
lists no slot (zero-filled, every key masked). At the end of an item both warpgroups hold the
same m and l; warpgroup 0 writes max_logits and lse, each its half of O.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._gluon_decode import ml_load, seesaw_p0_at_m1, seesaw_softmax0, seesaw_softmax1
from .gluon_kernel import (MAX_SENTINEL, _gather_q, _gather_rows, _item, _item_multiplier,
                           _store_out, _store_stats, gather_layout)

PIECE_L = gl.constexpr(0)
PIECE_R = gl.constexpr(1)
PIECE_E = gl.constexpr(2)


@gluon.jit
def _row_offsets(idx, s_kv, stride_kvs):
    """Row offsets of a tile's slots and which are valid (invalid ones read row 0, masked)."""
    ok = (idx >= 0) & (idx < s_kv)
    return gl.where(ok, idx, 0).to(gl.int64) * stride_kvs, ok


@gluon.jit
def _gather_piece(dst, kv_ptr, off, ok, col0, WIDTH: gl.constexpr, layout: gl.constexpr,
                  ready, free, phase, EVICT_LAST: gl.constexpr):
    mbarrier.wait(free, phase ^ 1)
    _gather_rows(dst, kv_ptr, off, ok, col0, WIDTH, layout, EVICT_LAST)
    async_copy.mbarrier_arrive(ready, increment_count=False)


@gluon.jit
def _seesaw_gather(q_s, qr_s, k_s, kr_s, q_ready, q_free, k_ready, k_free,
                   q_ptr, kv_ptr, indices_ptr, topk_length_ptr,
                   s_kv, h_q, topk, n_hb, n_items,
                   stride_qt, stride_qh, stride_kvs, stride_it, stride_tl,
                   D_HALF: gl.constexpr, D_ROPE: gl.constexpr, BLOCK_H: gl.constexpr,
                   BLOCK_N: gl.constexpr, HAS_TOPK_LEN: gl.constexpr,
                   LOAD_WARPS: gl.constexpr, EVICT_LAST: gl.constexpr):
    rows_l: gl.constexpr = gather_layout(LOAD_WARPS)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, rows_l))
    offs_qh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, rows_l))
    pc = 0
    rq = 0
    item = gl.program_id(0)
    while item < n_items:
        tok, hb, n_slots, n_tiles = _item(item, n_hb, topk, topk_length_ptr, stride_tl,
                                          HAS_TOPK_LEN, BLOCK_N)
        tok64 = tok.to(gl.int64)
        _gather_q(q_s, qr_s, q_ptr, tok64, hb, h_q, stride_qt, stride_qh, offs_qh, q_ready,
                  q_free, rq, D_HALF, D_ROPE, BLOCK_H, rows_l)
        idx_row = indices_ptr + tok64 * stride_it
        n_pairs = (n_tiles + 1) // 2
        j = 0
        while j < n_pairs:
            ph = pc & 1
            # the indices of both tiles first (their latency hides behind the waits); B1 past
            # the item's last tile lists no slot: zero-filled, never read from memory
            s0 = 2 * j * BLOCK_N + offs_n
            off0, ok0 = _row_offsets(gl.load(idx_row + s0, mask=s0 < n_slots, other=-1), s_kv,
                                     stride_kvs)
            s1 = s0 + BLOCK_N
            off1, ok1 = _row_offsets(gl.load(idx_row + s1, mask=s1 < n_slots, other=-1), s_kv,
                                     stride_kvs)
            # in the order the pieces come back: E1, L0, R0, E0, R1, L1
            _gather_piece(kr_s.index(1), kv_ptr, off1, ok1, 2 * D_HALF, D_ROPE, rows_l,
                          k_ready.index(3 + PIECE_E), k_free.index(3 + PIECE_E), ph, EVICT_LAST)
            _gather_piece(k_s.index(0), kv_ptr, off0, ok0, 0, D_HALF, rows_l,
                          k_ready.index(PIECE_L), k_free.index(PIECE_L), ph, EVICT_LAST)
            _gather_piece(k_s.index(1), kv_ptr, off0, ok0, D_HALF, D_HALF, rows_l,
                          k_ready.index(PIECE_R), k_free.index(PIECE_R), ph, EVICT_LAST)
            _gather_piece(kr_s.index(0), kv_ptr, off0, ok0, 2 * D_HALF, D_ROPE, rows_l,
                          k_ready.index(PIECE_E), k_free.index(PIECE_E), ph, EVICT_LAST)
            _gather_piece(k_s.index(3), kv_ptr, off1, ok1, D_HALF, D_HALF, rows_l,
                          k_ready.index(3 + PIECE_R), k_free.index(3 + PIECE_R), ph, EVICT_LAST)
            _gather_piece(k_s.index(2), kv_ptr, off1, ok1, 0, D_HALF, rows_l,
                          k_ready.index(3 + PIECE_L), k_free.index(3 + PIECE_L), ph, EVICT_LAST)
            pc += 1
            j += 1
        rq += 1
        item += gl.num_programs(0)


@gluon.jit
def _wait_piece(ready, ph):
    mbarrier.wait(ready, ph)
    fence_async_shared()  # cp.async (generic proxy) wrote the piece; wgmma reads it (async proxy)


@gluon.jit
def _seesaw_peer(q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready, k_free,
                 p_bar, indices_ptr, topk_length_ptr, sink_ptr, out_ptr, max_logits_ptr,
                 lse_ptr, scale_log2, s_kv, h_q, topk, n_hb, n_items,
                 stride_it, stride_tl, stride_sink, stride_ot, stride_oh,
                 stride_mt, stride_mh, stride_lt, stride_lh,
                 WG: gl.constexpr, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                 BLOCK_N: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=col_s)
    offs_h_s = gl.arange(0, BLOCK_H, layout=row_s)
    offs_h_o = gl.arange(0, BLOCK_H, layout=row_o)
    offs_d = WG * D_HALF + gl.arange(0, D_HALF, layout=col_o)
    dtype: gl.constexpr = k_s.dtype
    pc = 0
    rq = 0
    item = gl.program_id(0)
    while item < n_items:
        tok, hb, n_slots, n_tiles = _item(item, n_hb, topk, topk_length_ptr, stride_tl,
                                          HAS_TOPK_LEN, BLOCK_N)
        n_pairs = (n_tiles + 1) // 2
        tok64 = tok.to(gl.int64)
        idx_row = indices_ptr + tok64 * stride_it
        mbarrier.wait(q_ready, rq & 1)
        fence_async_shared()
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        j = 0
        while j < n_pairs:
            ph = pc & 1
            # a zero ptxas cannot prove (fixed shared-memory operands; see the dense kernel)
            z = j // (n_pairs + 1)
            slots = (2 * j + WG) * BLOCK_N + offs_n
            idx = gl.load(idx_row + slots, mask=slots < n_slots, other=-1)
            valid = gl.expand_dims((idx >= 0) & (idx < s_kv), 0)
            sc = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_layout)
            if WG == 0:
                _wait_piece(k_ready.index(PIECE_L), ph)
                sc = warpgroup_mma(q_s.index(z), k_s.index(z).permute((1, 0)), sc,
                                   use_acc=False, is_async=True)
                _wait_piece(k_ready.index(PIECE_R), ph)
                sc = warpgroup_mma(q_s.index(1 + z), k_s.index(1 + z).permute((1, 0)), sc,
                                   is_async=True)
                _wait_piece(k_ready.index(PIECE_E), ph)
                sc = warpgroup_mma(qr_s, kr_s.index(z).permute((1, 0)), sc, is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            else:
                _wait_piece(k_ready.index(3 + PIECE_E), ph)
                sc = warpgroup_mma(qr_s, kr_s.index(1 + z).permute((1, 0)), sc, use_acc=False,
                                   is_async=True)
                _wait_piece(k_ready.index(3 + PIECE_R), ph)
                sc = warpgroup_mma(q_s.index(1 + z), k_s.index(3 + z).permute((1, 0)), sc,
                                   is_async=True)
                _wait_piece(k_ready.index(3 + PIECE_L), ph)
                sc = warpgroup_mma(q_s.index(z), k_s.index(2 + z).permute((1, 0)), sc,
                                   is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
                mbarrier.arrive(k_free.index(3 + PIECE_E), count=1)  # E1: read by S1 only
            # Q is read only by S = Q·Kᵀ: free it after the item's last scores
            mbarrier.arrive(q_free, count=1, pred=j == n_pairs - 1)
            sc = gl.where(valid, sc * scale_log2, float("-inf"))
            if WG == 0:
                # publish P0 (in B0's RoPE buffer, read by warpgroup 1), m0 and l0
                m_i, l_i, alpha, p16 = seesaw_softmax0(sc, m_i, l_i, kr_s, z, ml_s, ml2_s, ph,
                                                       p_bar, BLOCK_H, BLOCK_N)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                acc = warpgroup_mma(gl.convert_layout(p16, p_layout), k_s.index(z), acc,
                                    is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(PIECE_L), count=1)  # done with L0
                mbarrier.wait(p_bar.index(1), ph)
                m1 = ml_load(ml_s, ml2_s, ph, 2, BLOCK_H, row_s)
                l_i = ml_load(ml_s, ml2_s, ph, 3, BLOCK_H, row_s)
                acc = acc * gl.expand_dims(gl.convert_layout(gl.exp2(m_i - m1), row_o), 1)
                m_i = m1
                acc = warpgroup_mma(p1_s, k_s.index(2 + z), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(3 + PIECE_L), count=1)  # done with L1
            else:
                # m1 = max(m0, rowmax S1): warpgroup 0's max and sums of P0 first
                m1, l_i, alpha1, p16 = seesaw_softmax1(sc, p1_s, ml_s, ml2_s, ph, p_bar, BLOCK_H,
                                                       row_s)
                acc = acc * gl.expand_dims(gl.convert_layout(gl.exp2(m_i - m1), row_o), 1)
                m_i = m1
                # P0 · V0[:, 256:] with P0 brought to m1, so that R0 and E0 go back first
                p0 = seesaw_p0_at_m1(kr_s, z, alpha1, BLOCK_H, BLOCK_N, s_layout)
                acc = warpgroup_mma(gl.convert_layout(p0, p_layout), k_s.index(1 + z), acc,
                                    is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(PIECE_R), count=1)  # done with R0 and E0 (P0)
                mbarrier.arrive(k_free.index(PIECE_E), count=1)
                acc = warpgroup_mma(gl.convert_layout(p16, p_layout), k_s.index(3 + z), acc,
                                    is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(3 + PIECE_R), count=1)  # done with R1
            pc += 1
            j += 1
        # an item with no key tile never read its Q
        mbarrier.arrive(q_free, count=1, pred=n_pairs == 0)
        has_keys, lse2, mult, head_s, mask_s = _item_multiplier(
            m_i, l_i, hb, offs_h_s, h_q, sink_ptr, stride_sink, BLOCK_H, HAS_SINK)
        if WG == 0:
            _store_stats(max_logits_ptr, lse_ptr, tok64, head_s, mask_s, has_keys, m_i, lse2,
                         stride_mt, stride_mh, stride_lt, stride_lh)
        _store_out(acc, gl.convert_layout(mult, row_o), out_ptr, tok64, hb, offs_h_o, h_q,
                   offs_d, stride_ot, stride_oh, BLOCK_H)
        rq += 1
        item += gl.num_programs(0)


@gluon.jit
def _sparse_prefill_seesaw_kernel(
    q_ptr, kv_ptr, indices_ptr, topk_length_ptr, sink_ptr,
    out_ptr, max_logits_ptr, lse_ptr,
    scale_log2,  # sm_scale * log2(e)
    s_kv, h_q, topk, n_hb, n_items,
    stride_qt, stride_qh, stride_kvs, stride_it, stride_tl, stride_sink,
    stride_ot, stride_oh, stride_mt, stride_mh, stride_lt, stride_lh,
    D_HALF: gl.constexpr, D_ROPE: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
    HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    PEER_REGS: gl.constexpr, LOAD_REGS: gl.constexpr, LOAD_WARPS: gl.constexpr,
    EVICT_LAST: gl.constexpr,
):
    gl.static_assert(D_ROPE == BLOCK_N, "P lives in a RoPE key buffer: d_qk 576 only")
    gl.static_assert(BLOCK_H == BLOCK_N, "P lives in a RoPE key buffer: BLOCK_H == BLOCK_N")
    dtype: gl.constexpr = kv_ptr.dtype.element_ty
    half_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_HALF], dtype)
    rope_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_ROPE], dtype)
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], half_sl)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], rope_sl)
    k_s = gl.allocate_shared_memory(dtype, [4, BLOCK_N, D_HALF], half_sl)
    kr_s = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_ROPE], rope_sl)
    p1_s = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
    ml_s = gl.allocate_shared_memory(gl.float32, [4 * BLOCK_H],
                                     gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    ml2_s = gl.allocate_shared_memory(gl.float32, [4 * BLOCK_H],
                                      gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [6, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [6, 1], mbarrier.MBarrierLayout())
    p_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    # every gathering thread arrives (cp.async.mbarrier.arrive.noinc) once its copies land
    mbarrier.init(q_ready, count=32 * LOAD_WARPS)
    mbarrier.init(q_free, count=2)  # both warpgroups compute S
    for i in gl.static_range(6):
        mbarrier.init(k_ready.index(i), count=32 * LOAD_WARPS)
        mbarrier.init(k_free.index(i), count=1)  # one warpgroup gives each piece back
    for i in gl.static_range(2):
        mbarrier.init(p_bar.index(i), count=1)
    fence_async_shared()

    # warpgroup 1 (P0 read back beside its own P1) is the default partition: the most registers
    gl.warp_specialize([
        (_seesaw_peer, (q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready,
                        k_free, p_bar, indices_ptr, topk_length_ptr, sink_ptr, out_ptr,
                        max_logits_ptr, lse_ptr, scale_log2, s_kv, h_q, topk, n_hb, n_items,
                        stride_it, stride_tl, stride_sink, stride_ot, stride_oh,
                        stride_mt, stride_mh, stride_lt, stride_lh, 1, D_HALF, BLOCK_H,
                        BLOCK_N, HAS_TOPK_LEN, HAS_SINK)),
        (_seesaw_peer, (q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready,
                        k_free, p_bar, indices_ptr, topk_length_ptr, sink_ptr, out_ptr,
                        max_logits_ptr, lse_ptr, scale_log2, s_kv, h_q, topk, n_hb, n_items,
                        stride_it, stride_tl, stride_sink, stride_ot, stride_oh,
                        stride_mt, stride_mh, stride_lt, stride_lh, 0, D_HALF, BLOCK_H,
                        BLOCK_N, HAS_TOPK_LEN, HAS_SINK)),
        (_seesaw_gather, (q_s, qr_s, k_s, kr_s, q_ready, q_free, k_ready, k_free, q_ptr, kv_ptr,
                          indices_ptr, topk_length_ptr, s_kv, h_q, topk, n_hb, n_items,
                          stride_qt, stride_qh, stride_kvs, stride_it, stride_tl, D_HALF,
                          D_ROPE, BLOCK_H, BLOCK_N, HAS_TOPK_LEN, LOAD_WARPS, EVICT_LAST)),
    ], [4, LOAD_WARPS], [PEER_REGS, LOAD_REGS])
