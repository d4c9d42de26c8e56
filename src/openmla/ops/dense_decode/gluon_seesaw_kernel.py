"""Hopper (sm90) dense MLA decode in Gluon with the seesaw schedule (SPEC §6.1), 64-row tiles.

Same split-KV contract, schedule and output protocol as ``gluon_kernel.py``; the two
warpgroups are peers instead of a softmax warpgroup and a P·V warpgroup. Each owns half of the
output columns (warpgroup 0: O[:, :256], warpgroup 1: O[:, 256:]) and a request's key tiles go
in pairs (B0, B1) = (tiles t_lo + 2j, t_lo + 2j + 1), B0 in ring stage 0 and B1 in stage 1:

* warpgroup 0 computes S0 = Q·K0ᵀ, the new running max m0 and P0 = exp2(S0 − m0), publishes
  m0 and the row sums, adds O_L = O_L·α0 + P0·V0[:, :256] (P0 from registers); once warpgroup 1
  has published m1 it stores P0 brought to m1 (P0·exp2(m0 − m1), rounded to bf16 as P1 is) into
  B0's RoPE key buffer (dead once S0 is done) for warpgroup 1, and adds
  O_L = O_L·exp2(m0 − m1) + P1·V1[:, :256];
* warpgroup 1 computes S1 = Q·K1ᵀ meanwhile; with m0 published it does its softmax at
  m1 = max(m0, rowmax S1), publishes P1 (a buffer of its own), m1 and the row sums, brings O_R
  to m1 in one step (exp2(m_prev − m1)), adds P1·V1[:, 256:] from registers and, once warpgroup
  0 has stored it, P0·V0[:, 256:] straight from shared memory.

So warpgroup 1's exponentials run under warpgroup 0's products, and both end a pair with the
same m and l (plain online softmax, no final exchange). (Warpgroup 1 reading P0 back at m0 and
scaling it itself, the previous order, was 1-3 % slower at s_q = 1 on an H200.)

Each key tile arrives as three pieces with barriers of their own, the NoPE halves L = K[:, :256]
and R = K[:, 256:512] and the RoPE part E, and each piece is given back by the one warpgroup
that reads it last, as soon as it has: E1 by warpgroup 1 right after S1; L0 by warpgroup 0 after
P0·V0_L; R1 by warpgroup 1 after P1·V1_R; R0 and E0 (P0) by warpgroup 1 after P0·V0_R; L1 by
warpgroup 0 after P1·V1_L. The loader refills them in that order, each S consumes its pieces in
the order they come back (S0: L, R, E; S1: E, R, L), and the loader asks L2 for the next pair's
tiles (a prefetch, from row tile 0 only) while it issues this pair's copies: the four row
tiles of a s_q = 2, h_q = 128 request read the same keys, and the copies then come from L2.

An odd tile count ends with a pair whose B1 is the last tile again with every key masked
(P1 = 0). V rows past the sequence end are zeroed in shared memory by the warpgroup that reads
them before its P·V, so NaN in unused cache rows never reaches the result.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._gluon_decode import (load_q, p_in_rope_slot, seesaw_softmax0_kept, seesaw_softmax1,
                             seesaw_store_p0_at_m1)
from ..schedule.gluon import schedule_part
from .gluon_kernel import MAX_SENTINEL, _request_blocks, _store_half, _zero_tail

# pieces of a key tile: ring index stage * 3 + piece
PIECE_L = gl.constexpr(0)  # K[:, :256], V's left half
PIECE_R = gl.constexpr(1)  # K[:, 256:512], V's right half
PIECE_E = gl.constexpr(2)  # K[:, 512:576], RoPE; P of the tile once its S is done


@gluon.jit
def _load_piece(desc, row, col, dst, ready, free, phase):
    mbarrier.wait(free, phase ^ 1)
    mbarrier.expect(ready, desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], ready, dst)


@gluon.jit
def _prefetch_tile(k_ptr, row, BLOCK_N: gl.constexpr, D: gl.constexpr):
    """Ask L2 for the BLOCK_N contiguous cache rows from ``row`` (one 128-byte line a lane and
    instruction; 1 warp), so that the TMA copies of that key tile find it there."""
    LINES: gl.constexpr = BLOCK_N * D * 2 // 128
    pf_l: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    base = k_ptr + row.to(gl.int64) * D
    offs = gl.arange(0, 512, layout=pf_l) * 64
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                              [base + offs], dtype=gl.int32, is_pure=False, pack=1)
    offs2 = 512 * 64 + gl.arange(0, LINES - 512, layout=pf_l) * 64
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l",
                              [base + offs2], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _tile_row(bt_row, t, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr):
    """First cache row of key tile ``t`` of the request whose block-table row is ``bt_row``."""
    key0 = t * BLOCK_N
    page = gl.load(bt_row + key0 // PAGE_SIZE)
    return page * PAGE_SIZE + key0 % PAGE_SIZE


@gluon.jit
def _seesaw_load(q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s,
                 q_ready, q_free, k_ready, k_free,
                 block_table_ptr, seqlens_ptr, meta_ptr, s_q, h_q, stride_bt,
                 PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                 BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                 META_COLS: gl.constexpr, CAUSAL: gl.constexpr, k_ptr):
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    pc = 0
    rq = 0
    r = begin_req
    while r <= end_req:  # (a while loop: see gluon_kernel._load_partition)
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        q_row = r * rows + pid_row * BLOCK_H
        load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF)
        bt_row = block_table_ptr + r.to(gl.int64) * stride_bt
        n_pairs = (gl.maximum(t_hi - t_lo, 0) + 1) // 2
        j = 0
        while j < n_pairs:
            ph = pc & 1
            t0 = t_lo + 2 * j
            row0 = _tile_row(bt_row, t0, PAGE_SIZE, BLOCK_N)
            # B1: the next tile, or the last one again (all masked) after an odd count
            row1 = _tile_row(bt_row, gl.minimum(t0 + 1, t_hi - 1), PAGE_SIZE, BLOCK_N)
            # in the order the pieces come back: E1 (after S1), L0 (after P0·V0_L), R1 (after
            # P1·V1_R), R0 and E0 (after P0·V0_R), L1 (after P1·V1_L)
            _load_piece(kr_desc, row1, 2 * D_HALF, kr_s.index(1), k_ready.index(3 + PIECE_E),
                        k_free.index(3 + PIECE_E), ph)
            _load_piece(k_desc, row0, 0, k_s.index(0), k_ready.index(PIECE_L),
                        k_free.index(PIECE_L), ph)
            _load_piece(k_desc, row1, D_HALF, k_s.index(3), k_ready.index(3 + PIECE_R),
                        k_free.index(3 + PIECE_R), ph)
            _load_piece(k_desc, row0, D_HALF, k_s.index(1), k_ready.index(PIECE_R),
                        k_free.index(PIECE_R), ph)
            _load_piece(kr_desc, row0, 2 * D_HALF, kr_s.index(0), k_ready.index(PIECE_E),
                        k_free.index(PIECE_E), ph)
            _load_piece(k_desc, row1, 0, k_s.index(2), k_ready.index(3 + PIECE_L),
                        k_free.index(3 + PIECE_L), ph)
            # the next pair's tiles into L2 while this pair's copies are under way; the row
            # tiles of a request run side by side on the same keys, and one asking is enough
            # (the others' asks doubled the L2 requests: H200 A/B 0.4-1.8 % slower)
            if t0 + 2 < t_hi and pid_row == 0:
                _prefetch_tile(k_ptr, _tile_row(bt_row, t0 + 2, PAGE_SIZE, BLOCK_N), BLOCK_N,
                               2 * D_HALF + kr_desc.block_type.shape[1])
            if t0 + 3 < t_hi and pid_row == 0:
                _prefetch_tile(k_ptr, _tile_row(bt_row, t0 + 3, PAGE_SIZE, BLOCK_N), BLOCK_N,
                               2 * D_HALF + kr_desc.block_type.shape[1])
            pc += 1
            j += 1
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _seesaw_peer(q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready, k_free, p_bar,
                 seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                 lse_acc_ptr, scale_log2, s_q, h_q,
                 stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                 stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                 WG: gl.constexpr, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                 BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                 META_COLS: gl.constexpr, CAUSAL: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    rows_s = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_s)
    last_off_s = rows_s // h_q  # token of each row, for the causal mask
    offs_n = gl.arange(0, BLOCK_N, layout=col_s)
    rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
    offs_d = WG * D_HALF + gl.arange(0, D_HALF, layout=col_o)
    dtype: gl.constexpr = k_s.dtype

    pc = 0  # tile pairs so far (CTA-wide): the phase of the ring and of p_bar
    rq = 0
    for r in range(begin_req, end_req + 1):
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        row_last = seqlen - s_q + last_off_s  # [BLOCK_H] last key each row may see
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        n_pairs = (gl.maximum(t_hi - t_lo, 0) + 1) // 2
        j = 0
        while j < n_pairs:
            ph = pc & 1
            # a zero ptxas cannot prove: the shared-memory operands below sit at fixed places,
            # and descriptors it could hoist out of the loop would take registers the
            # accumulators need (it rebuilds them per pair instead)
            z = j // (n_pairs + 1)
            t0 = t_lo + 2 * j
            t_mine = t0 + WG
            key0_0 = t0 * BLOCK_N  # B0's keys
            key0_1 = gl.minimum(t0 + 1, t_hi - 1) * BLOCK_N  # the rows B1 holds
            # --- S of this warpgroup's tile (stage WG), pieces in the order they come back
            sc = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_layout)
            if WG == 0:
                mbarrier.wait(k_ready.index(PIECE_L), ph)
                sc = warpgroup_mma(q_s.index(z), k_s.index(z).permute((1, 0)), sc,
                                   use_acc=False, is_async=True)
                mbarrier.wait(k_ready.index(PIECE_R), ph)
                sc = warpgroup_mma(q_s.index(1 + z), k_s.index(1 + z).permute((1, 0)), sc,
                                   is_async=True)
                mbarrier.wait(k_ready.index(PIECE_E), ph)
                sc = warpgroup_mma(qr_s, kr_s.index(z).permute((1, 0)), sc, is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            else:
                mbarrier.wait(k_ready.index(3 + PIECE_E), ph)
                sc = warpgroup_mma(qr_s, kr_s.index(1 + z).permute((1, 0)), sc, use_acc=False,
                                   is_async=True)
                mbarrier.wait(k_ready.index(3 + PIECE_R), ph)
                sc = warpgroup_mma(q_s.index(1 + z), k_s.index(3 + z).permute((1, 0)), sc,
                                   is_async=True)
                mbarrier.wait(k_ready.index(3 + PIECE_L), ph)
                sc = warpgroup_mma(q_s.index(z), k_s.index(2 + z).permute((1, 0)), sc,
                                   is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
                mbarrier.arrive(k_free.index(3 + PIECE_E), count=1)  # E1: read by S1 only
            # Q is read only by S = Q·Kᵀ: free it after the request's last scores
            mbarrier.arrive(q_free, count=1, pred=j == n_pairs - 1)
            # a mask only where a key can fall past the sequence end, past a row's causal limit
            # (seqlen - s_q + its token), or in the all-masked B1 of an odd count (H200 A/B:
            # 0.3-1.1 % faster than masking every tile)
            sc = sc * scale_log2
            if (t_mine >= t_hi) | ((t_mine + 1) * BLOCK_N > seqlen - (s_q - 1 if CAUSAL else 0)):
                keys = t_mine * BLOCK_N + offs_n
                valid = gl.expand_dims((keys < seqlen) & (t_mine < t_hi), 0)
                if CAUSAL:
                    valid = valid & (gl.expand_dims(keys, 0) <= gl.expand_dims(row_last, 1))
                sc = gl.where(valid, sc, float("-inf"))
            if WG == 0:
                # m0 and l0 to warpgroup 1; P0 · V0_L at m0 from registers
                m_i, l_i, alpha, p = seesaw_softmax0_kept(sc, m_i, l_i, ml_s, ml2_s, ph, p_bar,
                                                          BLOCK_H)
                l0 = k_s.index(z)
                _zero_tail(k_s, z, 1, key0_0, seqlen, BLOCK_N)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout), l0, acc,
                                    is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(PIECE_L), count=1)  # done with L0
                # once warpgroup 1 has its max m1: P0 at m1 for its P0 · V0_R, O_L to m1,
                # P1 · V1_L
                m_i, l_i, d = seesaw_store_p0_at_m1(p, m_i, kr_s, z, ml_s, ml2_s, ph, p_bar,
                                                    BLOCK_H, BLOCK_N, row_s)
                l1 = k_s.index(2 + z)
                _zero_tail(k_s, 2 + z, 1, key0_1, seqlen, BLOCK_N)
                acc = acc * gl.expand_dims(gl.convert_layout(d, row_o), 1)
                acc = warpgroup_mma(p1_s, l1, acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(3 + PIECE_L), count=1)  # done with L1
            else:
                # m1 = max(m0, rowmax S1), P1 published; O_R to m1 in one step
                # (exp2(m_prev - m0) · exp2(m0 - m1)), P1 · V1_R from registers, then P0 · V0_R
                # with P0 at m1 from B0's RoPE buffer once warpgroup 0 has put it there
                m1, l_i, alpha1, p16 = seesaw_softmax1(sc, p1_s, ml_s, ml2_s, ph, p_bar, BLOCK_H,
                                                       row_s)
                acc = acc * gl.expand_dims(gl.convert_layout(gl.exp2(m_i - m1), row_o), 1)
                m_i = m1
                r1 = k_s.index(3 + z)
                _zero_tail(k_s, 3 + z, 1, key0_1, seqlen, BLOCK_N)
                r0 = k_s.index(1 + z)
                _zero_tail(k_s, 1 + z, 1, key0_0, seqlen, BLOCK_N)
                acc = warpgroup_mma(gl.convert_layout(p16, p_layout), r1, acc, is_async=True)
                mbarrier.wait(p_bar.index(2), ph)
                acc = warpgroup_mma(p_in_rope_slot(kr_s, z, BLOCK_H, BLOCK_N), r0, acc,
                                    is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                mbarrier.arrive(k_free.index(3 + PIECE_R), count=1)  # done with R1
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(k_free.index(PIECE_R), count=1)  # done with R0 and E0 (P0)
                mbarrier.arrive(k_free.index(PIECE_E), count=1)
            pc += 1
            j += 1
        # a request with no key tile in this part never read its Q
        mbarrier.arrive(q_free, count=1, pred=n_pairs == 0)
        _store_half(acc, gl.convert_layout(l_i, row_o), gl.convert_layout(m_i, row_o), r,
                    rows_o // h_q, rows_o % h_q, rows_o < rows, offs_d, line_pos, n_sched,
                    payload, pid_part, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                    lse_acc_ptr, stride_ob, stride_ot, stride_oh, stride_lb, stride_lh,
                    stride_lt, stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                    stride_la_t, OVERHEAD, WG == 0)
        line_pos += OVERHEAD + n_sched
        rq += 1


@gluon.jit
def _dense_decode_seesaw_kernel(
    q_desc, qr_desc, k_desc, kr_desc,
    block_table_ptr, seqlens_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, k_ptr,
    scale_log2, s_q, h_q,
    stride_bt,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_lt,
    stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr,
    OVERHEAD: gl.constexpr, META_COLS: gl.constexpr, CAUSAL: gl.constexpr,
    PEER_REGS: gl.constexpr, LOAD_REGS: gl.constexpr,
):
    gl.static_assert(BLOCK_H == BLOCK_N, "P lives in a RoPE key buffer: BLOCK_H == BLOCK_N")
    gl.static_assert(D_ROPE == BLOCK_N, "P lives in a RoPE key buffer: D_ROPE == BLOCK_N")
    dtype: gl.constexpr = k_desc.dtype
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [4, BLOCK_N, D_HALF], k_desc.layout)
    kr_s = gl.allocate_shared_memory(dtype, [2, BLOCK_N, D_ROPE], kr_desc.layout)
    p1_s = gl.allocate_shared_memory(
        dtype, [BLOCK_H, BLOCK_N], gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype))
    # m and l of each warpgroup's tile, by pair parity: [m0, l0, m1, l1] x 2
    ml_s = gl.allocate_shared_memory(gl.float32, [4 * BLOCK_H],
                                     gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    ml2_s = gl.allocate_shared_memory(gl.float32, [4 * BLOCK_H],
                                      gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [6, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [6, 1], mbarrier.MBarrierLayout())
    p_bar = gl.allocate_shared_memory(gl.int64, [3, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_free, count=2)  # both warpgroups compute S
    for i in gl.static_range(6):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=1)  # one warpgroup gives each piece back
    for i in gl.static_range(3):
        mbarrier.init(p_bar.index(i), count=1)
    fence_async_shared()

    # warpgroup 1 (the more registers: P0 read back beside its own P1) is the default
    # partition, which keeps all 256 registers a thread; warpgroup 0 gets PEER_REGS
    gl.warp_specialize([
        (_seesaw_peer, (q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready, k_free,
                        p_bar, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr,
                        o_acc_ptr, lse_acc_ptr, scale_log2, s_q, h_q,
                        stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                        stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                        stride_la_t, 1, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD,
                        META_COLS, CAUSAL)),
        (_seesaw_peer, (q_s, qr_s, k_s, kr_s, p1_s, ml_s, ml2_s, q_ready, q_free, k_ready, k_free,
                        p_bar, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr,
                        o_acc_ptr, lse_acc_ptr, scale_log2, s_q, h_q,
                        stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                        stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                        stride_la_t, 0, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD,
                        META_COLS, CAUSAL)),
        (_seesaw_load, (q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s, q_ready,
                        q_free, k_ready, k_free, block_table_ptr, seqlens_ptr, meta_ptr, s_q,
                        h_q, stride_bt, PAGE_SIZE, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                        OVERHEAD, META_COLS, CAUSAL, k_ptr)),
    ], [4, 1], [PEER_REGS, LOAD_REGS])
