"""Hopper (sm90) dense MLA decode for at most 32 query rows a request (s_q·h_q ≤ 32), in Gluon:
the swapped product. The default there on Hopper (``OPENMLA_DENSE_GLUON_SMALL_H=0`` runs the
64-row kernel instead); on an H200 at b=128 s_k=8192 it takes 290 against 301 µs at h_q=16 and
reaches 0.98-0.99 of the copy ceiling at h_q 8, 16 and 32.

The default kernel (``gluon_kernel.py``) pads the rows to a 64-row wgmma tile, so at h_q = 16
three quarters of its tensor work is padding; on an H200 that work is nearly as long as the key
tile's memory time. Here the keys are the MMA's M dimension and the rows its N (BLOCK_H = 16
or 32):

* Sᵀ [64 keys, BLOCK_H rows] = K·Qᵀ (A = the key tile from shared memory, B = Q permuted);
* online softmax over the keys: axis 0, a reduction across the warps of the warpgroup;
* Oᵀ [512, BLOCK_H] += Vᵀ·Pᵀ, with Vᵀ the key tile's first 512 columns read transposed from
  shared memory (MN-major A) and Pᵀ [64, BLOCK_H] bf16 in shared memory (MN-major B). Each of
  the two warpgroups owns one 256-wide half of Oᵀ, as in the default kernel.

Same schedule, pieces, loader (``gluon_kernel._load_partition`` with a BLOCK_H-row Q), V-row
zeroing past the sequence end and output protocol as the default kernel; rows past s_q·h_q are
computed on whatever Q rows TMA brings and never stored.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from ..schedule.gluon import schedule_part
from .gluon_kernel import MAX_SENTINEL, _load_partition, _request_blocks, _store_half


@gluon.jit
def _softmax_partition_t(q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
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
    zero_layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])

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
            k1 = k_s.index(2 * s + 1)
            st = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=s_layout)
            st = warpgroup_mma(k0, q_s.index(0).permute((1, 0)), st, use_acc=False,
                               is_async=True)
            st = warpgroup_mma(k1, q_s.index(1).permute((1, 0)), st, is_async=True)
            st = warpgroup_mma(kr_s.index(s), qr_s.permute((1, 0)), st, is_async=True)
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
            if t == t_hi - 1:
                mbarrier.arrive(q_free, count=1)  # Q is read only by Sᵀ = K·Qᵀ
            key0 = t * BLOCK_N
            keys = gl.expand_dims(key0 + gl.arange(0, BLOCK_N, layout=key_s), 1)
            valid = keys < seqlen
            if CAUSAL:
                valid = valid & (keys <= gl.expand_dims(row_last, 0))
            st = gl.where(valid, st * scale_log2, float("-inf"))
            if key0 + BLOCK_N > seqlen:
                # zero the V rows past the sequence end (both halves) before any P·V reads them
                zrow = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, zero_layout))
                keep = gl.expand_dims(key0 + zrow < seqlen, 1)
                for half in gl.static_range(2):
                    buf = k_s.index(2 * s + half)
                    buf.store(gl.where(keep, buf.load(zero_layout), 0.0))
                fence_async_shared()
            m_new = gl.maximum(m_i, gl.max(st, axis=0))
            p = gl.exp2(st - gl.expand_dims(m_new, 0))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=0)
            m_i = m_new
            # hand Pᵀ and the rescale factors to the other warpgroup
            mbarrier.wait(p_free, (msg & 1) ^ 1)
            p_s.store(p.to(k_s.dtype))
            a_s.store(alpha)
            fence_async_shared()
            mbarrier.arrive(p_ready, count=1)
            msg += 1
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 0)
            acc = warpgroup_mma(k0.permute((1, 0)), p_s, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(k_free.index(s), count=1)
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
def _pv_partition_t(k_s, p_s, a_s, k_ready, k_free, p_ready, p_free,
                    seqlens_ptr, meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr,
                    lse_acc_ptr, s_q, h_q,
                    stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                    stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                    D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                    SCHED_N: gl.constexpr, OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                    CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    d_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    row_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    pid_row = gl.program_id(0)
    pid_part = gl.program_id(2)
    rows = s_q * h_q
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    it = 0
    msg = 0
    for r in range(begin_req, end_req + 1):
        seqlen, n_sched, t_lo, t_hi = _request_blocks(
            seqlens_ptr, r, line_pos, part_lo, part_hi, pid_row, rows, s_q, h_q,
            BLOCK_H, BLOCK_N, SCHED_N, OVERHEAD, CAUSAL)
        acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        for t in range(t_lo, t_hi):
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            mbarrier.wait(p_ready, msg & 1)
            alpha = a_s.load(row_o)
            acc = acc * gl.expand_dims(alpha, 0)
            acc = warpgroup_mma(k_s.index(2 * s + 1).permute((1, 0)), p_s, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(k_free.index(s), count=1)
            msg += 1
            it += 1
        mbarrier.wait(p_ready, msg & 1)
        l_i = a_s.load(row_o)
        mbarrier.arrive(p_free, count=1)
        msg += 1
        rows_o = pid_row * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
        _store_half(acc, l_i, l_i, r, rows_o // h_q, rows_o % h_q, rows_o < rows,
                    D_HALF + gl.arange(0, D_HALF, layout=d_o), line_pos, n_sched, payload,
                    pid_part, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                    stride_ob, stride_ot, stride_oh, stride_lb, stride_lh, stride_lt,
                    stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                    OVERHEAD, False, ROW_AXIS=1)
        line_pos += OVERHEAD + n_sched


@gluon.jit
def _dense_decode_gluon_small_h_kernel(
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
    # the default kernel's signature (one launch serves both); TRACE reaches the loader only
    dtype: gl.constexpr = k_desc.dtype
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_desc.layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], dtype)
    p_s = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_H], p_layout)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_free, count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_free, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)  # both warpgroups release a key tile
    fence_async_shared()

    gl.warp_specialize([
        (_softmax_partition_t, (q_s, qr_s, k_s, kr_s, p_s, a_s, q_ready, q_free, k_ready,
                                k_free, p_ready, p_free, seqlens_ptr, meta_ptr, num_splits_ptr,
                                out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, s_q, h_q,
                                stride_ob, stride_ot, stride_oh, stride_lb, stride_lh,
                                stride_lt, stride_oa_piece, stride_oa_t, stride_oa_h,
                                stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N,
                                SCHED_N, OVERHEAD, META_COLS, CAUSAL, STAGES)),
        (_pv_partition_t, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, seqlens_ptr,
                           meta_ptr, num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                           s_q, h_q, stride_ob, stride_ot, stride_oh, stride_lb, stride_lh,
                           stride_lt, stride_oa_piece, stride_oa_t, stride_oa_h,
                           stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                           OVERHEAD, META_COLS, CAUSAL, STAGES)),
        (_load_partition, (q_desc, qr_desc, k_desc, kr_desc, q_s, qr_s, k_s, kr_s, q_ready,
                           q_free, k_ready, k_free, block_table_ptr, seqlens_ptr, meta_ptr, s_q,
                           h_q, stride_bt, PAGE_SIZE, D_HALF, BLOCK_H, BLOCK_N, SCHED_N,
                           OVERHEAD, META_COLS, CAUSAL, STAGES, progress_ptr, TRACE)),
    ], [4, LOAD_WARPS], [PV_REGS, LOAD_REGS])
