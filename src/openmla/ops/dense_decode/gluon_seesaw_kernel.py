"""Hopper (sm90) dense MLA decode in Gluon, variant that overlaps the softmax with tensor-core work.

Same contract as ``gluon_kernel.py`` (split-KV schedule, final output or pieces for the combine
kernel, masks, NaN safety) and the same three partitions: a 1-warp TMA loader, a softmax warpgroup
that owns O[:, :256], a PV warpgroup that owns O[:, 256:]. Selected with
``OPENMLA_DENSE_GLUON_VARIANT=seesaw`` (see ``launch.py``).

What differs is the softmax warpgroup's schedule. In ``gluon_kernel.py`` it runs, per key tile,
S(t) = Q·K(t)ᵀ → wait → softmax(t) → P(t)·V(t)[:, :256] → wait, so the tensor cores idle while it
computes exponentials. Here the work is software-pipelined by one tile:

    issue S(t)          (three async wgmma: RoPE part, NoPE half 1, NoPE half 0)
    issue O_L += P(t-1)·V(t-1)[:, :256]     (async, P(t-1) held in registers)
    wait until only that P·V is in flight   → S(t) in registers
    masks + online softmax of tile t, publish P(t) and α(t) to the PV warpgroup
    wait for the P·V                        → O_L ← O_L·α(t)

so the exponentials of tile t run while the tensor cores do P(t-1)·V(t-1) of both warpgroups.

The key ring has two stages of 72 KiB (nothing more fits beside the 72 KiB Q), and with this
schedule a tile's NoPE half 0 stays in use until the next tile's softmax is done: the copy of the
tile after next into that stage can only start then. To keep most of that copy off the critical
path, each stage is three buffers with their own ready / free barriers: the RoPE part (free once
S(t) is read), NoPE half 1 (= V[:, 256:], free once S(t) and the PV warpgroup's P·V are done) and
NoPE half 0 (= V[:, :256], free after this warpgroup's P·V, one tile later). S(t) is issued in that
order, so its first two products run while half 0 is still arriving.

Unused cache rows may hold NaN: the last, partial key tile of a request has its V rows past the
sequence end zeroed in shared memory after S(t) was read and before any P·V reads them.
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

from .gluon_kernel import MAX_SENTINEL, _part, _request_blocks, _store_half, _trace


@gluon.jit
def _seesaw_load_partition(q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s,
                           q_ready, q_free, r_ready, r_free, v0_ready, v0_free, v1_ready, v1_free,
                           block_table_ptr, seqlens_ptr, meta_ptr, s_q, h_q, stride_bt,
                           PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, BLOCK_H: gl.constexpr,
                           BLOCK_N: gl.constexpr, SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                           META_COLS: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr,
                           progress_ptr, TRACE: gl.constexpr):
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = _part(meta_ptr, pid_part,
                                                                    META_COLS)
    q_bytes: gl.constexpr = 2 * q_desc.block_type.nbytes + qr_desc.block_type.nbytes
    half_bytes: gl.constexpr = k_desc.block_type.nbytes
    rope_bytes: gl.constexpr = kr_desc.block_type.nbytes
    it = 0
    rq = 0
    r = begin_req
    # while, not for: a for loop's carried value used only as inner-loop bounds (line_pos) is
    # dropped by Triton 3.6 inside warp-specialized partitions
    while r <= end_req:
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        q_row = r * rows + pid_row * BLOCK_H
        _trace(progress_ptr, 0, r, it, rq, 1, TRACE)
        mbarrier.wait(q_free, (rq & 1) ^ 1)
        mbarrier.expect(q_ready, q_bytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_ready, q_s.index(0))
        tma.async_copy_global_to_shared(q_desc, [q_row, D_HALF], q_ready, q_s.index(1))
        tma.async_copy_global_to_shared(qr_desc, [q_row, 2 * D_HALF], q_ready, qr_s)
        bt_row = block_table_ptr + r.to(gl.int64) * stride_bt
        for t in range(t_lo, t_hi):
            s = it % STAGES
            phase = ((it // STAGES) & 1) ^ 1
            key0 = t * BLOCK_N
            page = gl.load(bt_row + key0 // PAGE_SIZE)
            k_row = page * PAGE_SIZE + key0 % PAGE_SIZE
            # in the order the buffers come free (and the order S consumes them)
            _trace(progress_ptr, 0, r, it, rq, 2, TRACE)
            mbarrier.wait(r_free.index(s), phase)
            mbarrier.expect(r_ready.index(s), rope_bytes)
            tma.async_copy_global_to_shared(kr_desc, [k_row, 2 * D_HALF], r_ready.index(s),
                                            kr_s.index(s))
            _trace(progress_ptr, 0, r, it, rq, 3, TRACE)
            mbarrier.wait(v1_free.index(s), phase)
            mbarrier.expect(v1_ready.index(s), half_bytes)
            tma.async_copy_global_to_shared(k_desc, [k_row, D_HALF], v1_ready.index(s),
                                            k_s.index(2 * s + 1))
            _trace(progress_ptr, 0, r, it, rq, 4, TRACE)
            mbarrier.wait(v0_free.index(s), phase)
            mbarrier.expect(v0_ready.index(s), half_bytes)
            tma.async_copy_global_to_shared(k_desc, [k_row, 0], v0_ready.index(s),
                                            k_s.index(2 * s))
            it += 1
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1
    _trace(progress_ptr, 0, end_req, it, rq, 9, TRACE)


@gluon.jit
def _issue_scores(q_s, qr_s, k_s, kr_s, r_ready, v0_ready, v1_ready, s, phase,
                  BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, s_layout: gl.constexpr):
    """Issue S = Q·K(stage s)ᵀ as three async wgmma, each after its part of the tile arrived:
    RoPE first, then NoPE half 1, then half 0 (the part that comes free last)."""
    sc = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_layout)
    mbarrier.wait(r_ready.index(s), phase)
    sc = warpgroup_mma(qr_s, kr_s.index(s).permute((1, 0)), sc, use_acc=False, is_async=True)
    mbarrier.wait(v1_ready.index(s), phase)
    sc = warpgroup_mma(q_s.index(1), k_s.index(2 * s + 1).permute((1, 0)), sc, is_async=True)
    mbarrier.wait(v0_ready.index(s), phase)
    sc = warpgroup_mma(q_s.index(0), k_s.index(2 * s).permute((1, 0)), sc, is_async=True)
    return sc


@gluon.jit
def _softmax_tile(sc, m_i, l_i, t, seqlen, row_last, offs_n, zrow, k_s, s, scale_log2,
                  BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr, zero_layout: gl.constexpr):
    """Masks and one online-softmax step on the scores of tile t (in stage s); zeroes the V rows
    of the stage past the sequence end when the tile is partial. Returns the new row max, row
    sum, P (16-bit) and the rescale factor of the rows."""
    key0 = t * BLOCK_N
    keys = key0 + offs_n
    valid = gl.expand_dims(keys < seqlen, 0)
    if CAUSAL:
        valid = valid & (gl.expand_dims(keys, 0) <= gl.expand_dims(row_last, 1))
    sc = gl.where(valid, sc * scale_log2, float("-inf"))
    if key0 + BLOCK_N > seqlen:
        # S(t) is already read: zero the V rows past the sequence end (both halves) before any
        # P·V reads them (0·NaN would poison the output)
        keep = gl.expand_dims(key0 + zrow < seqlen, 1)
        for half in gl.static_range(2):
            buf = k_s.index(2 * s + half)
            buf.store(gl.where(keep, buf.load(zero_layout), 0.0))
        fence_async_shared()
    m_new = gl.maximum(m_i, gl.max(sc, axis=1))
    p = gl.exp2(sc - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return m_new, l_i, p.to(k_s.dtype), alpha


@gluon.jit
def _publish(p_s, a_s, p_ready, p_free, p16, alpha, msg):
    """Hand P and the rescale factors of a tile to the PV warpgroup (message ``msg``)."""
    mbarrier.wait(p_free, (msg & 1) ^ 1)
    p_s.store(p16)
    a_s.store(alpha)
    fence_async_shared()
    mbarrier.arrive(p_ready, count=1)


@gluon.jit
def _seesaw_softmax_partition(q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free,
                              r_ready, r_free, v0_ready, v0_free, v1_ready, v1_free,
                              p_ready, p_free,
                              seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                              lse_acc_ptr, scale_log2, s_q, h_q,
                              stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                              stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                              stride_la_t,
                              D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                              SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr,
                              META_COLS: gl.constexpr, CAUSAL: gl.constexpr,
                              STAGES: gl.constexpr, progress_ptr, TRACE: gl.constexpr):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    zero_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])

    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = _part(meta_ptr, pid_part,
                                                                    META_COLS)

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
    r = begin_req
    while r <= end_req:
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        row_last = seqlen - s_q + last_off_s  # [BLOCK_H] last key each row may see
        _trace(progress_ptr, 1, r, it, msg, 11, TRACE)
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        # P of the previous tile as the A operand of this warpgroup's P·V (one tile behind)
        p_op = gl.zeros([BLOCK_H, BLOCK_N], k_s.dtype, layout=p_layout)
        if t_lo < t_hi:
            # first tile of the request: scores and softmax, no P·V to overlap yet
            s = it % STAGES
            _trace(progress_ptr, 1, r, it, msg, 12, TRACE)
            sc = _issue_scores(q_s, qr_s, k_s, kr_s, r_ready, v0_ready, v1_ready, s,
                               (it // STAGES) & 1, BLOCK_H, BLOCK_N, s_layout)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            # Q is read only by S: free it after the last tile's scores (next request's Q then
            # loads under this request's tail)
            mbarrier.arrive(q_free, count=1, pred=t_lo == t_hi - 1)
            m_i, l_i, p16, alpha = _softmax_tile(sc, m_i, l_i, t_lo, seqlen, row_last, offs_n,
                                                 zrow, k_s, s, scale_log2, BLOCK_N, CAUSAL,
                                                 zero_layout)
            mbarrier.arrive(r_free.index(s), count=1)
            mbarrier.arrive(v1_free.index(s), count=1)
            _trace(progress_ptr, 1, r, it, msg, 13, TRACE)
            _publish(p_s, a_s, p_ready, p_free, p16, alpha, msg)
            msg += 1
            p_op = gl.convert_layout(p16, p_layout)
            it += 1
        else:  # a request with no key tile in this part: Q was never read
            mbarrier.arrive(q_free, count=1)
        for t in range(t_lo + 1, t_hi):
            s = it % STAGES
            sp = (it + STAGES - 1) % STAGES  # stage of the previous tile
            _trace(progress_ptr, 1, r, it, msg, 14, TRACE)
            sc = _issue_scores(q_s, qr_s, k_s, kr_s, r_ready, v0_ready, v1_ready, s,
                               (it // STAGES) & 1, BLOCK_H, BLOCK_N, s_layout)
            # O_L += P(t-1)·V(t-1)[:, :256]; O_L was already rescaled by α(t-1)
            acc = warpgroup_mma(p_op, k_s.index(2 * sp), acc, is_async=True)
            # wgmma groups retire in order: one left in flight means S(t) is complete
            sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))
            mbarrier.arrive(q_free, count=1, pred=t == t_hi - 1)
            m_i, l_i, p16, alpha = _softmax_tile(sc, m_i, l_i, t, seqlen, row_last, offs_n,
                                                 zrow, k_s, s, scale_log2, BLOCK_N, CAUSAL,
                                                 zero_layout)
            mbarrier.arrive(r_free.index(s), count=1)
            mbarrier.arrive(v1_free.index(s), count=1)
            _trace(progress_ptr, 1, r, it, msg, 15, TRACE)
            _publish(p_s, a_s, p_ready, p_free, p16, alpha, msg)
            msg += 1
            acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
            mbarrier.arrive(v0_free.index(sp), count=1)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            p_op = gl.convert_layout(p16, p_layout)
            it += 1
        if t_lo < t_hi:
            # drain: the last tile's P·V
            sp = (it + STAGES - 1) % STAGES
            acc = warpgroup_mma(p_op, k_s.index(2 * sp), acc, is_async=True)
            acc, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p_op))
            mbarrier.arrive(v0_free.index(sp), count=1)
        # final message of the request: the row sums, for the PV warpgroup's normalisation
        _trace(progress_ptr, 1, r, it, msg, 16, TRACE)
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
        r += 1
    _trace(progress_ptr, 1, end_req, it, msg, 19, TRACE)


@gluon.jit
def _seesaw_pv_partition(k_s, p_s, a_s, v1_ready, v1_free, p_ready, p_free,
                         seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                         lse_acc_ptr, s_q, h_q,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                         D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                         SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                         CAUSAL: gl.constexpr, STAGES: gl.constexpr, progress_ptr,
                         TRACE: gl.constexpr):
    """O_R ← O_R·α(t) + P(t)·V(t)[:, 256:] for every tile, P and α from shared memory."""
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = _part(meta_ptr, pid_part,
                                                                    META_COLS)
    rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
    mask_o = rows_o < rows
    tok_o = rows_o // h_q
    head_o = rows_o % h_q
    offs_d = D_HALF + gl.arange(0, D_HALF, layout=col_o)
    it = 0
    msg = 0
    r = begin_req
    while r <= end_req:
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        for t in range(t_lo, t_hi):
            s = it % STAGES
            _trace(progress_ptr, 2, r, it, msg, 21, TRACE)
            mbarrier.wait(v1_ready.index(s), (it // STAGES) & 1)
            _trace(progress_ptr, 2, r, it, msg, 22, TRACE)
            mbarrier.wait(p_ready, msg & 1)
            alpha = a_s.load(row_o)
            acc = acc * gl.expand_dims(alpha, 1)
            acc = warpgroup_mma(p_s, k_s.index(2 * s + 1), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(v1_free.index(s), count=1)
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
                    OVERHEAD, False)
        line_pos += OVERHEAD + n_sched
        r += 1
    _trace(progress_ptr, 2, end_req, it, msg, 29, TRACE)


@gluon.jit
def _dense_decode_gluon_seesaw_kernel(
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
    progress_ptr, TRACE: gl.constexpr, LOAD_WARPS: gl.constexpr,
):
    # the softmax warpgroup zeroes V rows of tile t while its P·V of tile t-1 is in flight
    gl.static_assert(STAGES >= 2, "the pipelined schedule needs two key stages")
    dtype: gl.constexpr = k_desc.dtype
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_desc.layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
    p_s = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_layout)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    r_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    r_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v0_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v0_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v1_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v1_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_free, count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_free, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(r_ready.index(i), count=1)
        mbarrier.init(r_free.index(i), count=1)  # the softmax warpgroup, after S
        mbarrier.init(v0_ready.index(i), count=1)
        mbarrier.init(v0_free.index(i), count=1)  # the softmax warpgroup, after its P·V
        mbarrier.init(v1_ready.index(i), count=1)
        mbarrier.init(v1_free.index(i), count=2)  # softmax (after S) and PV warpgroup
    fence_async_shared()

    gl.warp_specialize([
        (_seesaw_softmax_partition, (q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free,
                                     r_ready, r_free, v0_ready, v0_free, v1_ready, v1_free,
                                     p_ready, p_free, seqlens_ptr, meta_ptr, num_splits_ptr,
                                     out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, s_q,
                                     h_q, stride_ob, stride_ot, stride_oh, stride_lb, stride_lh,
                                     stride_lt, stride_oa_piece, stride_oa_t, stride_oa_h,
                                     stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N,
                                     SCHED_N, OVERHEAD, META_COLS, CAUSAL, STAGES, progress_ptr,
                                     TRACE)),
        (_seesaw_pv_partition, (k_s, p_s, a_s, v1_ready, v1_free, p_ready, p_free, seqlens_ptr,
                                meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                                lse_acc_ptr, s_q, h_q, stride_ob, stride_ot, stride_oh,
                                stride_lb, stride_lh, stride_lt, stride_oa_piece, stride_oa_t,
                                stride_oa_h, stride_la_piece, stride_la_t, D_HALF, BLOCK_H,
                                BLOCK_N, SCHED_N, OVERHEAD, META_COLS, CAUSAL, STAGES,
                                progress_ptr, TRACE)),
        (_seesaw_load_partition, (q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s,
                                  q_ready, q_free, r_ready, r_free, v0_ready, v0_free, v1_ready,
                                  v1_free, block_table_ptr, seqlens_ptr, meta_ptr, s_q, h_q,
                                  stride_bt, PAGE_SIZE, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                                  OVERHEAD, META_COLS, CAUSAL, STAGES, progress_ptr, TRACE)),
    ], [4, LOAD_WARPS], [PV_REGS, LOAD_REGS])
