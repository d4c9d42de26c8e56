"""Portable Triton kernel of dense MLA decode (split KV over a device-computed schedule).

Program (row tile, KV head g, part p) walks the requests of part p (``ops/schedule``). For each
it loads the tile's query rows (token-major, then head within the group of g) once, then streams
the request's 64-token blocks of its range through the page table: scores ``Q·Kᵀ`` as a 512-wide
NoPE dot plus a 64-wide RoPE dot, masks (sequence end, bottom-right causal), online softmax in
base 2 with a finite running-max sentinel, and ``acc += P·V`` with V the first 512 dims of the
same K tile. A request the schedule did not split gets its final output and lse here; a split
one writes its piece (locally normalised output, base-2 lse) for the combine kernel.
"""
import triton
import triton.language as tl

from .._triton_utils import round_to_bf16_grid, schedule_part, softmax_pv_step

LN2 = tl.constexpr(0.6931471805599453)
MAX_SENTINEL = tl.constexpr(-1.0e30)  # running-max start: finite, so exp2(m_old - m_new) never sees -inf - -inf


@triton.jit
def _store_request(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, acc, m_i, l_i,
                   r, r64, tok, head, mask_r, offs_d, line_pos, n_sched, payload, pid_part,
                   stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                   stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                   OVERHEAD: tl.constexpr, ROUND_OUT: tl.constexpr):
    """Write one request's result for this tile: the final output and natural-log lse when the
    schedule kept the request in one piece, else this piece's locally normalised output and
    base-2 lse into the accumulators for the combine kernel."""
    has_keys = l_i > 0.0
    safe_l = tl.where(has_keys, l_i, 1.0)
    o = acc / safe_l[:, None]  # 0 where no key was seen (acc is 0 there)
    lse2 = tl.where(has_keys, m_i + tl.log2(safe_l), float("-inf"))
    first_part = (line_pos + OVERHEAD) // payload
    last_part = (line_pos + OVERHEAD + n_sched - 1) // payload
    if first_part == last_part:
        o_ptrs = (out_ptr + r64 * stride_ob + tok[:, None] * stride_ot
                  + head[:, None] * stride_oh + offs_d[None, :])
        if ROUND_OUT:
            o = round_to_bf16_grid(o)
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask_r[:, None])
        lse = tl.where(has_keys, lse2 * LN2, float("inf"))
        tl.store(lse_ptr + r * stride_lb + head * stride_lh + tok * stride_lt, lse, mask=mask_r)
    else:
        piece = tl.load(num_splits_ptr + r) + pid_part - first_part
        oa = (o_acc_ptr + piece.to(tl.int64) * stride_oa_piece + tok[:, None] * stride_oa_t
              + head[:, None] * stride_oa_h + offs_d[None, :])
        tl.store(oa, o, mask=mask_r[:, None])
        tl.store(lse_acc_ptr + piece * stride_la_piece + tok * stride_la_t + head, lse2,
                 mask=mask_r)


@triton.jit
def _dense_decode_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2,  # softmax_scale * log2(e)
    s_q, group, h_q,
    stride_qb, stride_qt, stride_qh,  # q [b, s_q, h_q, D], last dim contiguous
    stride_kp, stride_ko, stride_kh,  # k_cache [num_pages, PAGE_SIZE, h_kv, D], last dim 1
    stride_bt,  # block_table [b, max_blocks], last dim 1
    stride_ob, stride_ot, stride_oh,  # out [b, s_q, h_q, D_V], last dim 1
    stride_lb, stride_lh, stride_lt,  # lse [b, h_q, s_q]
    stride_oa_piece, stride_oa_t, stride_oa_h,  # o_acc [pieces, s_q, h_q, D_V], last dim 1
    stride_la_piece, stride_la_t,  # lse_acc [pieces, s_q, h_q], last dim 1
    PAGE_SIZE: tl.constexpr, D_NOPE: tl.constexpr, D_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SCHED_N: tl.constexpr,
    OVERHEAD: tl.constexpr, META_COLS: tl.constexpr, CAUSAL: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    ROUND_OUT: tl.constexpr,  # round to bf16 by hand (interpreter casts truncate)
):
    pid_row = tl.program_id(0)
    g = tl.program_id(1)
    pid_part = tl.program_id(2)
    rows = s_q * group

    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(meta_ptr, pid_part,
                                                                            META_COLS)

    offs_r = pid_row * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] query rows of this tile
    mask_r = offs_r < rows
    tok = offs_r // group  # query token of each row
    head = g * group + offs_r % group  # query head of each row
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_dn = tl.arange(0, D_NOPE)  # [D_NOPE]
    offs_dr = D_NOPE + tl.arange(0, D_ROPE)  # [D_ROPE]
    q_row = tok * stride_qt + head * stride_qh  # [BLOCK_H]

    for r in range(begin_req, end_req + 1):
        r64 = tl.full([], 0, tl.int64) + r  # 64-bit row offsets (b * stride can pass 2^31)
        seqlen = tl.load(seqlens_ptr + r)
        n_blocks = (seqlen + SCHED_N - 1) // SCHED_N
        n_sched = tl.maximum(n_blocks, 1)
        blk_lo = tl.maximum(part_lo - line_pos - OVERHEAD, 0)
        blk_hi = tl.minimum(tl.minimum(part_hi - line_pos - OVERHEAD, n_sched), n_blocks)
        # key tiles of BLOCK_N inside this part's scheduling blocks
        blk_lo = blk_lo * (SCHED_N // BLOCK_N)
        blk_hi = tl.minimum(blk_hi * (SCHED_N // BLOCK_N), (seqlen + BLOCK_N - 1) // BLOCK_N)
        # bottom-right causal: the last row of the tile sees keys up to seqlen - s_q + t_max
        if CAUSAL:
            t_max = (tl.minimum(pid_row * BLOCK_H + BLOCK_H, rows) - 1) // group
            last_key = seqlen - s_q + t_max
            blk_hi = tl.minimum(blk_hi, tl.maximum(last_key + BLOCK_N, 0) // BLOCK_N)

        q_base = q_ptr + r64 * stride_qb + q_row  # [BLOCK_H]
        q_nope = tl.load(q_base[:, None] + offs_dn[None, :], mask=mask_r[:, None], other=0.0)
        q_rope = tl.load(q_base[:, None] + offs_dr[None, :], mask=mask_r[:, None], other=0.0)
        if UPCAST_DOT:
            q_nope = q_nope.to(tl.float32)
            q_rope = q_rope.to(tl.float32)
        m_i = tl.full([BLOCK_H], MAX_SENTINEL, tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, D_NOPE], dtype=tl.float32)
        if CAUSAL:
            row_last = seqlen - s_q + tok  # [BLOCK_H] last key each row may see
        bt_row = block_table_ptr + r64 * stride_bt
        for blk in range(blk_lo, blk_hi):
            keys = blk * BLOCK_N + offs_n  # [BLOCK_N]
            in_seq = keys < seqlen
            page = tl.load(bt_row + keys // PAGE_SIZE, mask=in_seq, other=0).to(tl.int64)
            k_row = k_ptr + page * stride_kp + (keys % PAGE_SIZE) * stride_ko + g * stride_kh
            k_nope = tl.load(k_row[:, None] + offs_dn[None, :], mask=in_seq[:, None], other=0.0)
            k_rope = tl.load(k_row[:, None] + offs_dr[None, :], mask=in_seq[:, None], other=0.0)
            if UPCAST_DOT:
                k_nope = k_nope.to(tl.float32)
                k_rope = k_rope.to(tl.float32)
            s = tl.dot(q_nope, tl.trans(k_nope))  # [BLOCK_H, BLOCK_N]
            s = tl.dot(q_rope, tl.trans(k_rope), s)
            s = s * scale_log2
            valid = in_seq[None, :]  # [1, BLOCK_N]
            if CAUSAL:
                valid = valid & (keys[None, :] <= row_last[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_H]
            p = tl.exp2(s - m_new[:, None])  # [BLOCK_H, BLOCK_N]
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None]
            if UPCAST_DOT:
                acc = tl.dot(p, k_nope, acc)
            else:
                acc = tl.dot(p.to(k_nope.dtype), k_nope, acc)
            m_i = m_new

        _store_request(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, acc, m_i, l_i,
                       r, r64, tok, head, mask_r, offs_dn, line_pos, n_sched, payload, pid_part,
                       stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                       stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                       OVERHEAD, ROUND_OUT)
        line_pos += OVERHEAD + n_sched


@triton.jit
def _dense_decode_tma_kernel(
    q_desc, qr_desc, k_desc, kr_desc,  # tensor descriptors: q [b*s_q*h_q, D], k [pages, PAGE, D]
    block_table_ptr, seqlens_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q,
    stride_bt,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_lt,
    stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: tl.constexpr, D_HALF: tl.constexpr, D_ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SCHED_N: tl.constexpr,
    OVERHEAD: tl.constexpr, META_COLS: tl.constexpr, CAUSAL: tl.constexpr,
    UPCAST_DOT: tl.constexpr, ROUND_OUT: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """The same computation as ``_dense_decode_kernel`` for one KV head (h_kv = 1, MLA's MQA
    mode) and page sizes that are multiples of BLOCK_N: Q and K tiles arrive through tensor
    descriptors (TMA on Hopper) straight into shared memory, the 512-wide NoPE part as two
    256-wide halves (the copy engine's box limit) that also split the accumulator in two. Full
    key tiles need no sequence mask; only the last, partial tile zeroes its V rows past the
    sequence end (unused cache rows may hold NaN)."""
    pid_row = tl.program_id(0)
    pid_part = tl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(meta_ptr, pid_part,
                                                                            META_COLS)
    SUB: tl.constexpr = SCHED_N // BLOCK_N  # key tiles per scheduling block

    offs_r = pid_row * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    mask_r = offs_r < rows
    tok = offs_r // h_q
    head = offs_r % h_q
    offs_n = tl.arange(0, BLOCK_N)
    offs_d0 = tl.arange(0, D_HALF)
    offs_d1 = D_HALF + tl.arange(0, D_HALF)

    for r in range(begin_req, end_req + 1):
        r64 = tl.full([], 0, tl.int64) + r
        seqlen = tl.load(seqlens_ptr + r)
        n_blocks = (seqlen + SCHED_N - 1) // SCHED_N
        n_sched = tl.maximum(n_blocks, 1)
        blk_lo = tl.maximum(part_lo - line_pos - OVERHEAD, 0)
        blk_hi = tl.minimum(tl.minimum(part_hi - line_pos - OVERHEAD, n_sched), n_blocks)
        t_lo = blk_lo * SUB
        t_hi = tl.minimum(blk_hi * SUB, (seqlen + BLOCK_N - 1) // BLOCK_N)
        row_last = seqlen - s_q + tok  # [BLOCK_H] last key of each row (causal)
        if CAUSAL:
            t_max = (tl.minimum(pid_row * BLOCK_H + BLOCK_H, rows) - 1) // h_q
            t_hi = tl.minimum(t_hi, tl.maximum(seqlen - s_q + t_max + BLOCK_N, 0) // BLOCK_N)
        t_full = tl.minimum(t_hi, seqlen // BLOCK_N)  # tiles with every key inside the sequence

        q_row = r * rows + pid_row * BLOCK_H
        q0 = q_desc.load([q_row, 0])  # [BLOCK_H, D_HALF]
        q1 = q_desc.load([q_row, D_HALF])
        qr = qr_desc.load([q_row, 2 * D_HALF])  # [BLOCK_H, D_ROPE]
        if UPCAST_DOT:
            q0 = q0.to(tl.float32)
            q1 = q1.to(tl.float32)
            qr = qr.to(tl.float32)
        m_i = tl.full([BLOCK_H], MAX_SENTINEL, tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc0 = tl.zeros([BLOCK_H, D_HALF], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_H, D_HALF], dtype=tl.float32)
        bt_row = block_table_ptr + r64 * stride_bt
        for t in tl.range(t_lo, t_full, num_stages=NUM_STAGES):
            key0 = t * BLOCK_N
            page = tl.load(bt_row + key0 // PAGE_SIZE)
            off = key0 % PAGE_SIZE
            k0 = tl.reshape(k_desc.load([page, off, 0]), [BLOCK_N, D_HALF])
            k1 = tl.reshape(k_desc.load([page, off, D_HALF]), [BLOCK_N, D_HALF])
            kr = tl.reshape(kr_desc.load([page, off, 2 * D_HALF]), [BLOCK_N, D_ROPE])
            if UPCAST_DOT:
                k0 = k0.to(tl.float32)
                k1 = k1.to(tl.float32)
                kr = kr.to(tl.float32)
            s = tl.dot(q0, tl.trans(k0))
            s = tl.dot(q1, tl.trans(k1), s)
            s = tl.dot(qr, tl.trans(kr), s) * scale_log2  # [BLOCK_H, BLOCK_N]
            if CAUSAL:
                valid = (key0 + offs_n)[None, :] <= row_last[:, None]
            else:
                valid = tl.full([1, BLOCK_N], 1, tl.int1)
            m_i, l_i, acc0, acc1 = softmax_pv_step(s, valid, m_i, l_i, acc0, acc1, k0, k1,
                                                    UPCAST_DOT)
        if t_full < t_hi:  # the last tile runs past the sequence end
            key0 = t_full * BLOCK_N
            keys = key0 + offs_n
            in_seq = keys < seqlen
            page = tl.load(bt_row + key0 // PAGE_SIZE)
            off = key0 % PAGE_SIZE
            k0 = tl.reshape(k_desc.load([page, off, 0]), [BLOCK_N, D_HALF])
            k1 = tl.reshape(k_desc.load([page, off, D_HALF]), [BLOCK_N, D_HALF])
            kr = tl.reshape(kr_desc.load([page, off, 2 * D_HALF]), [BLOCK_N, D_ROPE])
            k0 = tl.where(in_seq[:, None], k0, 0.0)
            k1 = tl.where(in_seq[:, None], k1, 0.0)
            kr = tl.where(in_seq[:, None], kr, 0.0)
            if UPCAST_DOT:
                k0 = k0.to(tl.float32)
                k1 = k1.to(tl.float32)
                kr = kr.to(tl.float32)
            s = tl.dot(q0, tl.trans(k0))
            s = tl.dot(q1, tl.trans(k1), s)
            s = tl.dot(qr, tl.trans(kr), s) * scale_log2
            valid = in_seq[None, :]
            if CAUSAL:
                valid = valid & (keys[None, :] <= row_last[:, None])
            m_i, l_i, acc0, acc1 = softmax_pv_step(s, valid, m_i, l_i, acc0, acc1, k0, k1,
                                                    UPCAST_DOT)
        _store_request(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, acc0, m_i, l_i,
                       r, r64, tok, head, mask_r, offs_d0, line_pos, n_sched, payload, pid_part,
                       stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                       stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                       OVERHEAD, ROUND_OUT)
        _store_request(out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, num_splits_ptr, acc1, m_i, l_i,
                       r, r64, tok, head, mask_r, offs_d1, line_pos, n_sched, payload, pid_part,
                       stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                       stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                       OVERHEAD, ROUND_OUT)
        line_pos += OVERHEAD + n_sched
