"""Hopper (sm90) fast path of dense MLA decode in Gluon: warp-specialized, one KV head.

Same split-KV contract as the portable kernel (``kernel.py``: schedule, pieces, combine), with the
work of a 64-row query tile spread over three partitions that hand tiles through shared memory:

* load (1 warp): TMA copies of the tile's Q (once per request) and of each key tile (two 256-wide
  NoPE halves and the 64-wide RoPE part) into a ring of STAGES buffers, gated by mbarriers;
* softmax warpgroup (the default partition): S = Q·Kᵀ with wgmma from shared memory, masks,
  online softmax (base 2), publishes P (bf16) and the rescale factor of each row, and accumulates
  the left half of the output, O_L = O_L·α + P·V[:, :256];
* PV warpgroup: O_R = O_R·α + P·V[:, 256:] with P read from shared memory.

At s_q·h_q <= 32 (``SWAP``; BLOCK_H = 16 or 32) the same partitions run the swapped product,
so that the rows are not padded to a 64-row tile (a quarter of the tensor work at h_q = 16): the
keys are the MMA's M and the rows its N, Sᵀ [64 keys, rows] = K·Qᵀ, the online softmax runs
over axis 0 (a reduction across the warps), Pᵀ goes through shared memory and each warpgroup
accumulates its 256-wide half of Oᵀ = Vᵀ·Pᵀ with Vᵀ read transposed from the key tile.

Splitting the 64×512 fp32 output over two warpgroups keeps each accumulator at 128 registers a
thread (SPEC §6.1); while the softmax warpgroup does its exponentials the other one keeps the
tensor cores busy. Unused cache rows may hold NaN: the last, partial key tile of a request has its
V rows past the sequence end zeroed in shared memory before any P·V reads them.
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

from .._gluon_decode import handoff_barriers, issue_scores, load_q, swapped_softmax_step
from ..schedule.gluon import schedule_part

LN2 = gl.constexpr(0.6931471805599453)
MAX_SENTINEL = gl.constexpr(-1.0e30)


@gluon.jit
def _trace(progress_ptr, partition: gl.constexpr, r, step, msg, site: gl.constexpr,
           TRACE: gl.constexpr):
    """Debug only (TRACE): record where this partition of this CTA is — request, tile counter,
    message counter and the wait it is about to enter — in host-visible memory, so that a launch
    that never finishes can be inspected from the host while it hangs."""
    if TRACE:
        cta = gl.program_id(2) * gl.num_programs(0) + gl.program_id(0)
        base = progress_ptr + (cta * 3 + partition) * 4
        gl.store(base + 0, r)
        gl.store(base + 1, step)
        gl.store(base + 2, msg)
        gl.store(base + 3, site)


@gluon.jit
def _request_blocks(seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
                    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr,
                    OVERHEAD: gl.constexpr, CAUSAL: gl.constexpr):
    """Key tiles [t_lo, t_hi) of request r inside this part (identical in every partition)."""
    seqlen = gl.load(seqlens_ptr + r)
    n_blocks = (seqlen + SCHED_N - 1) // SCHED_N
    n_sched = gl.maximum(n_blocks, 1)
    blk_lo = gl.maximum(part_lo - line_pos - OVERHEAD, 0)
    blk_hi = gl.minimum(gl.minimum(part_hi - line_pos - OVERHEAD, n_sched), n_blocks)
    t_lo = blk_lo * (SCHED_N // BLOCK_N)
    t_hi = gl.minimum(blk_hi * (SCHED_N // BLOCK_N), (seqlen + BLOCK_N - 1) // BLOCK_N)
    if CAUSAL:
        t_max = (gl.minimum(pid_row * BLOCK_H + BLOCK_H, rows) - 1) // h_q
        t_hi = gl.minimum(t_hi, gl.maximum(seqlen - s_q + t_max + BLOCK_N, 0) // BLOCK_N)
    return seqlen, n_sched, t_lo, t_hi


@gluon.jit
def _store_half(acc, l_i, m_i, r, tok, head, mask_r, offs_d, line_pos, n_sched, payload,
                pid_part, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                OVERHEAD: gl.constexpr, WRITE_LSE: gl.constexpr, ROW_AXIS: gl.constexpr = 0):
    """Write one 256-wide half of a request's result for this tile: final output (+ lse) when
    the request is one piece, else this piece into the accumulators for the combine kernel.
    ``acc`` holds the rows along ``ROW_AXIS`` (0: ``[rows, 256]``; 1: transposed, ``[256, rows]``);
    the row vectors (``l_i``, ``m_i``, ``tok``, ``head``, ``mask_r``) and ``offs_d`` are slices of
    its layout."""
    D_AXIS: gl.constexpr = 1 - ROW_AXIS
    has_keys = l_i > 0.0
    safe_l = gl.where(has_keys, l_i, 1.0)
    o = acc / gl.expand_dims(safe_l, D_AXIS)
    first_part = (line_pos + OVERHEAD) // payload
    last_part = (line_pos + OVERHEAD + n_sched - 1) // payload
    # both destinations are written with complementary masks (no divergent branch around
    # stores inside a warp-specialized partition)
    whole = first_part == last_part
    split = first_part != last_part
    piece = gl.load(num_splits_ptr + r) + pid_part - first_part
    r64 = r.to(gl.int64)
    tok2 = gl.expand_dims(tok, D_AXIS)
    head2 = gl.expand_dims(head, D_AXIS)
    d2 = gl.expand_dims(offs_d, ROW_AXIS)
    mask2 = gl.expand_dims(mask_r, D_AXIS)
    ptrs = out_ptr + r64 * stride_ob + tok2 * stride_ot + head2 * stride_oh + d2
    gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=mask2 & whole)
    acc_ptrs = (o_acc_ptr + piece.to(gl.int64) * stride_oa_piece + tok2 * stride_oa_t
                + head2 * stride_oa_h + d2)
    gl.store(acc_ptrs, o, mask=mask2 & split)
    if WRITE_LSE:
        lse2 = gl.where(has_keys, m_i + gl.log2(safe_l), float("-inf"))
        gl.store(lse_ptr + r * stride_lb + head * stride_lh + tok * stride_lt,
                 gl.where(has_keys, lse2 * LN2, float("inf")), mask=mask_r & whole)
        gl.store(lse_acc_ptr + piece * stride_la_piece + tok * stride_la_t + head, lse2,
                 mask=mask_r & split)


@gluon.jit
def _zero_tail(k_s, first, COUNT: gl.constexpr, key0, seqlen, BLOCK_N: gl.constexpr):
    """Zero the rows past the sequence end of the ``COUNT`` [BLOCK_N, 256] V halves of ``k_s``
    from index ``first`` (a key tile from key ``key0``), before any P·V reads them: unused cache
    rows may hold NaN, and 0 · NaN would reach the output."""
    if key0 + BLOCK_N > seqlen:
        zero_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        zrow = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, zero_layout))
        keep = gl.expand_dims(key0 + zrow < seqlen, 1)
        for half in gl.static_range(COUNT):
            buf = k_s.index(first + half)
            buf.store(gl.where(keep, buf.load(zero_layout), 0.0))
        fence_async_shared()


@gluon.jit
def _load_partition(q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s,
                    q_ready, q_free, k_ready, k_free,
                    block_table_ptr, seqlens_ptr, meta_ptr, s_q, h_q, stride_bt,
                    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                    BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                    META_COLS: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr,
                    progress_ptr, TRACE: gl.constexpr):
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    k_bytes: gl.constexpr = 2 * k_desc.block_type.nbytes + kr_desc.block_type.nbytes
    it = 0
    rq = 0
    r = begin_req
    # A while loop, not `for r in range(...)`: Triton 3.6 drops a for loop's carried value that
    # is used only as the bounds of an inner loop (line_pos here), which froze the block ranges
    # at the part's first request and made the loader disagree with the consumers (a hang).
    while r <= end_req:
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        q_row = r * rows + pid_row * BLOCK_H
        _trace(progress_ptr, 0, r, it, rq, 1, TRACE)
        load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF)
        bt_row = block_table_ptr + r.to(gl.int64) * stride_bt
        for t in range(t_lo, t_hi):
            s = it % STAGES
            _trace(progress_ptr, 0, r, it, rq, 2, TRACE)
            mbarrier.wait(k_free.index(s), ((it // STAGES) & 1) ^ 1)
            key0 = t * BLOCK_N
            page = gl.load(bt_row + key0 // PAGE_SIZE)
            k_row = page * PAGE_SIZE + key0 % PAGE_SIZE
            mbarrier.expect(k_ready.index(s), k_bytes)
            tma.async_copy_global_to_shared(k_desc, [k_row, 0], k_ready.index(s), k_s.index(2 * s))
            tma.async_copy_global_to_shared(k_desc, [k_row, D_HALF], k_ready.index(s),
                                            k_s.index(2 * s + 1))
            tma.async_copy_global_to_shared(kr_desc, [k_row, 2 * D_HALF], k_ready.index(s),
                                            kr_s.index(s))
            it += 1
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1
    _trace(progress_ptr, 0, end_req, it, rq, 9, TRACE)


@gluon.jit
def _softmax_partition(q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                       p_ready, p_free,
                       seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                       lse_acc_ptr, scale_log2, s_q, h_q,
                       stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                       stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                       D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                       SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                       CAUSAL: gl.constexpr, STAGES: gl.constexpr, progress_ptr,
                       TRACE: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    # V rows past the sequence end are zeroed through registers in this layout
    zero_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])

    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)

    rows_s = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_s)
    last_off_s = rows_s // h_q  # token of each row, for the causal mask
    offs_n = gl.arange(0, BLOCK_N, layout=col_s)
    rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
    mask_o = rows_o < rows
    tok_o = rows_o // h_q
    head_o = rows_o % h_q
    offs_d = gl.arange(0, D_HALF, layout=col_o)
    zrow = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, zero_layout))

    it = 0
    msg = 0
    rq = 0
    for r in range(begin_req, end_req + 1):
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        row_last = seqlen - s_q + last_off_s  # [BLOCK_H] last key each row may see
        _trace(progress_ptr, 1, r, it, msg, 11, TRACE)
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        for t in range(t_lo, t_hi):
            s = it % STAGES
            _trace(progress_ptr, 1, r, it, msg, 12, TRACE)
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            k0 = k_s.index(2 * s)
            sc = issue_scores(q_s, qr_s, k_s, kr_s, s, s_layout, BLOCK_H, BLOCK_N)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            if t == t_hi - 1:
                # Q is read only by S = Q·Kᵀ: free it as soon as the last tile's scores are in
                # registers, so the next request's Q (and key tiles) load under this tile's
                # softmax and P·V instead of after them
                mbarrier.arrive(q_free, count=1)
            key0 = t * BLOCK_N
            keys = key0 + offs_n
            valid = gl.expand_dims(keys < seqlen, 0)
            if CAUSAL:
                valid = valid & (gl.expand_dims(keys, 0) <= gl.expand_dims(row_last, 1))
            sc = gl.where(valid, sc * scale_log2, float("-inf"))
            if key0 + BLOCK_N > seqlen:
                # zero the V rows past the sequence end (both halves) before any P·V reads them
                keep = gl.expand_dims(key0 + zrow < seqlen, 1)
                for half in gl.static_range(2):
                    buf = k_s.index(2 * s + half)
                    buf.store(gl.where(keep, buf.load(zero_layout), 0.0))
                fence_async_shared()
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            p = gl.exp2(sc - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            p16 = p.to(k_s.dtype)
            # hand P and the rescale factors to the PV warpgroup
            _trace(progress_ptr, 1, r, it, msg, 13, TRACE)
            mbarrier.wait(p_free, (msg & 1) ^ 1)
            p_s.store(p16)
            a_s.store(alpha)
            fence_async_shared()
            mbarrier.arrive(p_ready, count=1)
            msg += 1
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            acc = warpgroup_mma(gl.convert_layout(p16, p_layout), k0, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(k_free.index(s), count=1)
            it += 1
        if t_hi <= t_lo:  # a request with no key tile in this part: Q was never read
            mbarrier.arrive(q_free, count=1)
        # final message of the request: the row sums, for the PV warpgroup's normalisation
        _trace(progress_ptr, 1, r, it, msg, 14, TRACE)
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(l_i)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_half(acc, gl.convert_layout(l_i, row_o), gl.convert_layout(m_i, row_o), r, tok_o,
                    head_o, mask_o, offs_d, line_pos, n_sched, payload, pid_part,
                    num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                    stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                    stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                    OVERHEAD, True)
        line_pos += OVERHEAD + n_sched
        rq += 1
    _trace(progress_ptr, 1, end_req, it, msg, 19, TRACE)


@gluon.jit
def _softmax_partition_swapped(q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                         p_ready, p_free,
                         seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                         lse_acc_ptr, scale_log2, s_q, h_q,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                         stride_la_t,
                         D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                         SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                         META_COLS: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    # Sᵀ [BLOCK_N keys, BLOCK_H rows] and Oᵀ [D_HALF, BLOCK_H]: wgmma accumulators, N = BLOCK_H
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    key_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    d_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    row_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    last_off_s = gl.arange(0, BLOCK_H, layout=row_s) // h_q  # token of each row (causal mask)

    it = 0
    msg = 0
    rq = 0
    for r in range(begin_req, end_req + 1):
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        row_last = seqlen - s_q + last_off_s  # [BLOCK_H] last key each row may see
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        for t in range(t_lo, t_hi):
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            k0 = k_s.index(2 * s)
            st = issue_scores(q_s, qr_s, k_s, kr_s, s, s_layout, BLOCK_H, BLOCK_N, SWAP=True)
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
            if t == t_hi - 1:
                mbarrier.arrive(q_free, count=1)  # Q is read only by Sᵀ = K·Qᵀ
            key0 = t * BLOCK_N
            keys = gl.expand_dims(key0 + gl.arange(0, BLOCK_N, layout=key_s), 1)
            valid = keys < seqlen
            if CAUSAL:
                valid = valid & (keys <= gl.expand_dims(row_last, 0))
            st = gl.where(valid, st * scale_log2, float("-inf"))
            _zero_tail(k_s, 2 * s, 2, key0, seqlen, BLOCK_N)  # both V halves of the tile
            # online softmax; Pᵀ and the rescale factors to the other warpgroup; own half of O
            m_i, l_i, acc, msg = swapped_softmax_step(st, m_i, l_i, acc, k0, p_s, a_s, p_free,
                                                      p_ready, k_free.index(s), msg, row_o)
            it += 1
        if t_hi <= t_lo:  # a request with no key tile in this part: Q was never read
            mbarrier.arrive(q_free, count=1)
        # final message of the request: the row sums, for the other warpgroup's normalisation
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(l_i)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
        _store_half(acc, gl.convert_layout(l_i, row_o), gl.convert_layout(m_i, row_o), r,
                    rows_o // h_q, rows_o % h_q, rows_o < rows, gl.arange(0, D_HALF, layout=d_o),
                    line_pos, n_sched, payload, pid_part, num_splits_ptr, out_ptr, lse_ptr,
                    o_acc_ptr, lse_acc_ptr, stride_ob, stride_ot, stride_oh, stride_lb,
                    stride_lh, stride_lt, stride_oa_piece, stride_oa_t, stride_oa_h,
                    stride_la_piece, stride_la_t, OVERHEAD, True, ROW_AXIS=1)
        line_pos += OVERHEAD + n_sched
        rq += 1


@gluon.jit
def _pv_partition(k_s, p_s, a_s, k_ready, k_free, p_ready, p_free,
                  seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                  lse_acc_ptr, s_q, h_q,
                  stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                  stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                  D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                  SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                  CAUSAL: gl.constexpr, STAGES: gl.constexpr, progress_ptr,
                  TRACE: gl.constexpr, SWAP: gl.constexpr = False):
    """O_R = O_R·α + P·V[:, 256:] (SWAP: Oᵀ_R = Oᵀ_R·α + Vᵀ[256:, :]·Pᵀ, rows along axis 1)."""
    ROW_AXIS: gl.constexpr = 1 if SWAP else 0
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_H if SWAP else D_HALF, 16])
    row_o: gl.constexpr = gl.SliceLayout(1 - ROW_AXIS, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(ROW_AXIS, o_layout)
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
    mask_o = rows_o < rows
    tok_o = rows_o // h_q
    head_o = rows_o % h_q
    offs_d = D_HALF + gl.arange(0, D_HALF, layout=col_o)
    it = 0
    msg = 0
    for r in range(begin_req, end_req + 1):
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        if SWAP:
            acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        else:
            acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        for t in range(t_lo, t_hi):
            s = it % STAGES
            _trace(progress_ptr, 2, r, it, msg, 21, TRACE)
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            _trace(progress_ptr, 2, r, it, msg, 22, TRACE)
            mbarrier.wait(p_ready, msg & 1)
            alpha = a_s.load(row_o)
            acc = acc * gl.expand_dims(alpha, 1 - ROW_AXIS)
            if SWAP:
                acc = warpgroup_mma(k_s.index(2 * s + 1).permute((1, 0)), p_s, acc,
                                    is_async=True)
            else:
                acc = warpgroup_mma(p_s, k_s.index(2 * s + 1), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(k_free.index(s), count=1)
            msg += 1
            it += 1
        _trace(progress_ptr, 2, r, it, msg, 23, TRACE)
        mbarrier.wait(p_ready, msg & 1)
        l_i = a_s.load(row_o)
        mbarrier.arrive(p_free, count=1)
        msg += 1
        _store_half(acc, l_i, l_i, r, tok_o, head_o, mask_o, offs_d, line_pos, n_sched, payload,
                    pid_part, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                    stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                    stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                    OVERHEAD, False, ROW_AXIS=ROW_AXIS)
        line_pos += OVERHEAD + n_sched
    _trace(progress_ptr, 2, end_req, it, msg, 29, TRACE)


@gluon.jit
def _dense_decode_gluon_kernel(
    q_desc, qr_desc, k_desc, kr_desc,
    block_table_ptr, seqlens_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q,
    stride_bt,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_lt,
    stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr,
    OVERHEAD: gl.constexpr, META_COLS: gl.constexpr, CAUSAL: gl.constexpr,
    STAGES: gl.constexpr, PV_REGS: gl.constexpr, LOAD_REGS: gl.constexpr,
    progress_ptr, TRACE: gl.constexpr, LOAD_WARPS: gl.constexpr, SWAP: gl.constexpr = False,
):
    # SWAP (s_q·h_q <= 32, BLOCK_H = 16 or 32): the swapped product; TRACE then reaches the
    # loader and the PV partition only
    dtype: gl.constexpr = k_desc.dtype
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_desc.layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_desc.layout)
    if SWAP:  # Pᵀ
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], dtype)
        p_s = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_H], p_layout)
    else:
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
        p_s = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_layout)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready, q_free, p_ready, p_free, k_ready, k_free = handoff_barriers(STAGES, 1, 1)
    fence_async_shared()

    # (argument tuples written out in each call: a tuple held in a variable loses the
    # constexpr-ness of its members)
    if SWAP:
        gl.warp_specialize([
            (_softmax_partition_swapped, (q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                              p_ready, p_free, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr,
                              lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, s_q, h_q,
                              stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                              stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                              stride_la_t, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD,
                              META_COLS, CAUSAL, STAGES)),
            (_pv_partition, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, seqlens_ptr, meta_ptr,
                         num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, s_q, h_q,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                         stride_la_t, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, META_COLS,
                         CAUSAL, STAGES, progress_ptr, TRACE, SWAP)),
            (_load_partition, (q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s, q_ready,
                           q_free, k_ready, k_free, block_table_ptr, seqlens_ptr, meta_ptr, s_q,
                           h_q, stride_bt, PAGE_SIZE, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                           OVERHEAD, META_COLS, CAUSAL, STAGES, progress_ptr, TRACE)),
        ], [4, LOAD_WARPS], [PV_REGS, LOAD_REGS])
    else:
        gl.warp_specialize([
            (_softmax_partition, (q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                              p_ready, p_free, seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr,
                              lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, s_q, h_q,
                              stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                              stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                              stride_la_t, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD,
                              META_COLS, CAUSAL, STAGES, progress_ptr, TRACE)),
            (_pv_partition, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, seqlens_ptr, meta_ptr,
                         num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, s_q, h_q,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                         stride_la_t, D_HALF, BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, META_COLS,
                         CAUSAL, STAGES, progress_ptr, TRACE, SWAP)),
            (_load_partition, (q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s, q_ready,
                           q_free, k_ready, k_free, block_table_ptr, seqlens_ptr, meta_ptr, s_q,
                           h_q, stride_bt, PAGE_SIZE, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                           OVERHEAD, META_COLS, CAUSAL, STAGES, progress_ptr, TRACE)),
        ], [4, LOAD_WARPS], [PV_REGS, LOAD_REGS])
