"""Hopper (sm90) sparse MLA decode over the V3.2 FP8 cache for at most 32 heads a query token,
in Gluon: the swapped product, with two producer warpgroups.

At h_q ≤ 32 the 64-row kernel (``gluon_kernel.py``) pads the heads to a 64-row wgmma tile and is
bound by its single producer warpgroup: gathering and dequantizing one 64-slot tile at a time,
it waits out each tile's memory latency. Here the heads are the MMA's N (BLOCK_H = 16 or 32),
which shrinks the consumers' accumulators (Oᵀ [256, BLOCK_H] a warpgroup) enough to give the
register file to a second producer warpgroup:

* producers 0 and 1 (``gluon_kernel._producer_partition`` with PRODUCERS = 2): the tiles of a
  part alternate between them (with two ring stages each fills its own stage), so two tiles'
  gathers are in flight at once, each with the L2 prefetch of its next tile; producer 0 loads Q;
* softmax warpgroup: Sᵀ [64 slots, BLOCK_H] = K·Qᵀ, invalid slots → -inf along axis 0, online
  softmax over the slots (a reduction across the warps), Pᵀ (bf16) and α through shared
  memory, Oᵀ_L [256, BLOCK_H] += Vᵀ_L·Pᵀ with Vᵀ read transposed from the key tile;
* PV warpgroup: Oᵀ_R += Vᵀ_R·Pᵀ.

Same schedule, pieces, sink, final-factor message and output protocol as the 64-row kernel;
rows past h_q are computed on whatever Q rows TMA brings and never stored.
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
from .gluon_kernel import (LN2, LOG2E, MAX_SENTINEL, _pieces, _producer_partition,
                           _request_tiles, _store_half)


@gluon.jit
def _softmax_partition_t(q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                         p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
                         out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lt, stride_lh,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                         stride_la_t,
                         D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                         OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                         HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
                         STAGES: gl.constexpr):
    # Sᵀ [BLOCK_N slots, BLOCK_H heads] and Oᵀ [D_HALF, BLOCK_H]: wgmma accumulators, N = BLOCK_H
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    key_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    head_sl: gl.constexpr = gl.SliceLayout(0, s_layout)
    d_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    head_ol: gl.constexpr = gl.SliceLayout(0, o_layout)

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_s = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_sl)
    mask_s = head_s < h_q
    if HAS_SINK:
        sink2 = gl.load(sink_ptr + head_s, mask=mask_s, other=float("-inf")) * LOG2E
    head_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_ol)
    mask_o = head_o < h_q
    offs_d = gl.arange(0, D_HALF, layout=d_o)

    it = 0
    msg = 0
    rq = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=head_sl)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=head_sl)
        acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            k0 = k_s.index(2 * s)
            k1 = k_s.index(2 * s + 1)
            st = gl.zeros([BLOCK_N, BLOCK_H], gl.float32, layout=s_layout)
            st = warpgroup_mma(k0, q_s.index(0).permute((1, 0)), st, use_acc=False,
                               is_async=True)
            st = warpgroup_mma(k1, q_s.index(1).permute((1, 0)), st, is_async=True)
            st = warpgroup_mma(kr_s.index(s), qr_s.permute((1, 0)), st, is_async=True)
            valid = gl.expand_dims(v_s.index(s).load(key_s) != 0, 1)
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
            # Q is read only by Sᵀ = K·Qᵀ: free it after the request's last tile of scores
            mbarrier.arrive(q_free, count=1, pred=t == t_hi - 1)
            st = gl.where(valid, st * scale_log2, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(st, axis=0))
            p = gl.exp2(st - gl.expand_dims(m_new, 0))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=0)
            m_i = m_new
            # hand Pᵀ and the rescale factors to the PV warpgroup
            mbarrier.wait(p_free, (msg & 1) ^ 1)
            p_s.store(p.to(k_s.dtype))
            a_s.store(alpha)
            fence_async_shared()
            mbarrier.arrive(p_ready, count=1)
            msg += 1
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, head_ol), 0)
            acc = warpgroup_mma(k0.permute((1, 0)), p_s, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(k_free.index(s), count=1)
            it += 1
            t += 1
        # a request with no index tile in this part: Q was never read
        mbarrier.arrive(q_free, count=1, pred=t_hi <= t_lo)
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part,
                                      OVERHEAD)
        has_keys = l_i > 0.0
        safe_l = gl.where(has_keys, l_i, 1.0)
        lse2 = gl.where(has_keys, m_i + gl.log2(safe_l), float("-inf"))  # base 2
        inv = 1.0 / safe_l  # acc is 0 in rows that saw no key
        fin = inv
        if HAS_SINK:
            # out · 1 / (1 + 2^(σ·log2e − lse₂)); σ = +inf → 0; rows without keys stay 0
            gap = sink2 - gl.where(has_keys, lse2, 0.0)
            fin = gl.where(whole, gl.where(has_keys, inv / (1.0 + gl.exp2(gap)), 0.0), inv)
        # final message of the request: the factor of each output row, for the PV warpgroup
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(fin)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_half(acc, gl.convert_layout(fin, head_ol), r, tok, head_o, mask_o, offs_d, whole,
                    split, piece, out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh,
                    stride_oa_piece, stride_oa_t, stride_oa_h, ROW_AXIS=1)
        lse_nat = gl.where(has_keys, lse2 * LN2, float("inf"))
        gl.store(lse_ptr + r.to(gl.int64) * stride_lb + tok * stride_lt + head_s * stride_lh,
                 lse_nat, mask=mask_s & whole)
        gl.store(lse_acc_ptr + piece.to(gl.int64) * stride_la_piece + tok * stride_la_t + head_s,
                 lse2, mask=mask_s & split)
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _pv_partition_t(k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr, meta_ptr,
                    num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk,
                    stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t, stride_oa_h,
                    D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                    OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                    HAS_TOPK_LEN: gl.constexpr, STAGES: gl.constexpr):
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_H, 16])
    d_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    head_ol: gl.constexpr = gl.SliceLayout(0, o_layout)
    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_ol)
    mask_o = head_o < h_q
    offs_d = D_HALF + gl.arange(0, D_HALF, layout=d_o)
    it = 0
    msg = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            mbarrier.wait(p_ready, msg & 1)
            alpha = a_s.load(head_ol)
            acc = acc * gl.expand_dims(alpha, 0)
            acc = warpgroup_mma(k_s.index(2 * s + 1).permute((1, 0)), p_s, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(k_free.index(s), count=1)
            msg += 1
            it += 1
            t += 1
        mbarrier.wait(p_ready, msg & 1)
        fin = a_s.load(head_ol)
        mbarrier.arrive(p_free, count=1)
        msg += 1
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part,
                                      OVERHEAD)
        _store_half(acc, fin, r, tok, head_o, mask_o, offs_d, whole, split, piece, out_ptr,
                    o_acc_ptr, stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t,
                    stride_oa_h, ROW_AXIS=1)
        line_pos += OVERHEAD + n_sched
        r += 1


@gluon.jit
def _sparse_decode_gluon_small_h_kernel(
    q_desc, qr_desc, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q, topk, num_tokens,
    stride_kp,
    stride_ib, stride_it,
    stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lt, stride_lh,
    stride_oa_piece, stride_oa_t, stride_oa_h,
    stride_la_piece, stride_la_t,
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr,
    META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    STAGES: gl.constexpr, PV_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    PRODUCER_WARPS: gl.constexpr, PREFETCH: gl.constexpr = 1,
):
    # the 64-row kernel's signature (one launch call serves both)
    gl.static_assert(STAGES == 2)  # two producers, each filling its own ring stage
    dtype: gl.constexpr = gl.bfloat16
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_HALF], dtype)
    kr_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_ROPE], dtype)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], dtype)
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_layout)
    v_s = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
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
        (_softmax_partition_t, (q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready,
                                k_free, p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr,
                                num_splits_ptr, out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
                                scale_log2, h_q, topk, stride_ob, stride_ot, stride_oh,
                                stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t,
                                stride_oa_h, stride_la_piece, stride_la_t, D_HALF, BLOCK_H,
                                BLOCK_N, OVERHEAD, META_COLS, HAS_TOPK_LEN, HAS_SINK, STAGES)),
        (_pv_partition_t, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr,
                           meta_ptr, num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk, stride_ob,
                           stride_ot, stride_oh, stride_oa_piece, stride_oa_t, stride_oa_h,
                           D_HALF, BLOCK_H, BLOCK_N, OVERHEAD, META_COLS, HAS_TOPK_LEN,
                           STAGES)),
        (_producer_partition, (q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free,
                               k_ready, k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q,
                               topk, num_tokens, stride_kp, stride_ib, stride_it, D_HALF,
                               BLOCK_H, BLOCK_N, PAGE_SIZE, OVERHEAD, META_COLS, HAS_TOPK_LEN,
                               STAGES, PRODUCER_WARPS, PREFETCH, 2, 0)),
        (_producer_partition, (q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free,
                               k_ready, k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q,
                               topk, num_tokens, stride_kp, stride_ib, stride_it, D_HALF,
                               BLOCK_H, BLOCK_N, PAGE_SIZE, OVERHEAD, META_COLS, HAS_TOPK_LEN,
                               STAGES, PRODUCER_WARPS, PREFETCH, 2, 1)),
    ], [4, PRODUCER_WARPS, PRODUCER_WARPS], [PV_REGS, PRODUCER_REGS, PRODUCER_REGS])
