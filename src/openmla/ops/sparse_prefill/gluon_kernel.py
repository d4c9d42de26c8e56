"""Hopper (sm90) fast path of sparse MLA prefill in Gluon: warp-specialized and persistent.

A work item is (query token, block of 64 heads); its 64 query rows are one wgmma M tile and its
key tiles are the token's top-k list in 64-slot steps. Each CTA walks work items
``pid, pid + grid, ...`` (token-major, so the head blocks of a token run on neighbouring CTAs at
the same time and share the gathered rows in L2) through three partitions that hand tiles over
shared memory:

* gather (LOAD_WARPS warps): reads the 64 indices of a tile and copies the rows they name with
  ``cp.async`` (16-byte pieces; a warp instruction copies the 128-byte pieces of four rows,
  ``gather_layout``) into a ring of STAGES NVMMA-swizzled key buffers (two 256-wide halves plus,
  for d_qk 576, the 64-wide RoPE part).
  Invalid slots (index < 0 or >= s_kv, or slot >= topk_length) are predicated off, so their rows
  are zero-filled and never read from memory; completion is signalled by per-thread
  ``cp.async.mbarrier.arrive`` on the stage's barrier. The item's query rows come the same way
  (heads past h_q zero-filled), once per item, into a Q buffer freed as soon as the item's last
  scores are in registers, so the next item's Q loads under this item's tail;
* softmax warpgroup (default partition): S = Q·Kᵀ with wgmma from shared memory, -inf at invalid
  slots (an additive 0 / -inf row, the scale folded into the exponent's FMA), online softmax
  (base 2) with a lazy reference: a row's exponentials are taken against a reference maximum
  that moves only when the row's maximum rises more than 2^RESCALE_LOG2 above it (so P stays
  below 2^8 and most tiles rescale nothing: α = 1 exactly). It publishes P (bf16), the rescale
  factor of each row and one flag per warp (did any of its rows' references move), and
  accumulates the first D_SOFT columns of the output, O_S = O_S·α + P·V[:, :D_SOFT] (128 by
  default: this warpgroup's chain sets the pace, so it keeps a quarter of the P·V work); at the
  end of an item it writes max_logits (the true running maximum, kept beside the reference),
  lse and O_S, and hands the PV warpgroup the final multiplier of each row (sink factor / row
  sum, 0 for rows with no valid key);
* PV warpgroup: the other columns, O = O·α + P·V[:, D_SOFT:] with P read from shared memory
  (V[:, 256:] and, below D_SOFT = 256, V[:, D_SOFT:256] as a second accumulator); the rescale
  of its 192 accumulator registers a thread is skipped when no warp's flag is set.

V is the first 512 dims of a row (all of it for d_qk 512): the same buffers as K. Rows with no
valid index end with P = 0 everywhere, O = 0, max_logits -inf and lse +inf.
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

from .._gluon_decode import handoff_barriers, issue_scores

LN2 = gl.constexpr(0.6931471805599453)
LOG2E = gl.constexpr(1.4426950408889634)
MAX_SENTINEL = gl.constexpr(-1.0e30)  # finite running-max start: no (-inf) - (-inf)
# A row's reference maximum moves only when the row's maximum rises more than this (base 2)
# above it: P <= 2^8 (far inside bf16's range; its relative rounding does not depend on the
# magnitude), and most key tiles leave every reference where it is, so both warpgroups skip the
# rescale of their accumulators. (H200, s_q=4096 h_q=128 topk=2048 d_qk 576, events µs: with
# the scale folded into the exponent, 4270.9 against 4454.6; the fold alone 4458.5 against
# 4528.5.)
RESCALE_LOG2 = gl.constexpr(8.0)


@gluon.jit
def _item(item, n_hb, topk, topk_length_ptr, stride_tl, HAS_TOPK_LEN: gl.constexpr,
          BLOCK_N: gl.constexpr):
    """Token, head block, number of listed slots and of key tiles of work item ``item`` (the
    same in every partition)."""
    tok = item // n_hb
    hb = item % n_hb
    n_slots = topk
    if HAS_TOPK_LEN:
        n_slots = gl.maximum(gl.minimum(gl.load(topk_length_ptr + tok.to(gl.int64) * stride_tl),
                                        topk), 0)
    return tok, hb, n_slots, (n_slots + BLOCK_N - 1) // BLOCK_N


@gluon.jit
def _tile_slots(idx_row, t, offs_n, n_slots, s_kv, BLOCK_N: gl.constexpr):
    """The indices of key tile ``t`` (-1 past the listed slots) and which of them are valid
    (index in [0, s_kv) and listed)."""
    slots = t * BLOCK_N + offs_n
    idx = gl.load(idx_row + slots, mask=slots < n_slots, other=-1)
    return idx, (idx >= 0) & (idx < s_kv)


@gluon.jit
def _tile_bias(idx_row, t, offs_n, n_slots, s_kv, BLOCK_N: gl.constexpr):
    """0 at the valid slots of key tile ``t`` and -inf at the others: a [1, BLOCK_N] row added
    to the tile's scores."""
    _, ok = _tile_slots(idx_row, t, offs_n, n_slots, s_kv, BLOCK_N)
    return gl.expand_dims(gl.where(ok, 0.0, float("-inf")), 0)


@gluon.constexpr_function
def gather_layout(load_warps):
    """The layout of the gathers' cp.async copies (16 bytes a thread): a warp instruction copies
    the 128-byte pieces of four rows, so a thread holds 4 rows of a 64-row tile and reuses their
    addresses, with immediate offsets, across the columns. (One 512-byte half row a warp
    instruction instead held 16 row addresses a thread, rebuilt per copy: 3x the gather's
    instructions; H200, s_q=4096 h_q=128 d_qk 576: 4690 against 4439 µs.)"""
    return gl.BlockedLayout([1, 8], [4, 8], [load_warps, 1], [1, 0])


@gluon.jit
def _gather_rows(dst, base_ptr, row_off, row_ok, col0, WIDTH: gl.constexpr,
                 layout: gl.constexpr, EVICT_LAST: gl.constexpr):
    """cp.async of ``WIDTH`` columns from ``col0`` of the rows at ``base_ptr + row_off`` into
    ``dst``; rows where ``row_ok`` is false are zero-filled without being read."""
    cols = col0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
    ptrs = base_ptr + gl.expand_dims(row_off, 1) + gl.expand_dims(cols, 0)
    if EVICT_LAST:
        async_copy.async_copy_global_to_shared(dst, ptrs, mask=gl.expand_dims(row_ok, 1),
                                               eviction_policy="evict_last")
    else:
        async_copy.async_copy_global_to_shared(dst, ptrs, mask=gl.expand_dims(row_ok, 1))


@gluon.jit
def _gather_q(q_s, qr_s, q_ptr, tok64, hb, h_q, stride_qt, stride_qh, offs_qh, q_ready, q_free,
              rq, D_HALF: gl.constexpr, D_ROPE: gl.constexpr, BLOCK_H: gl.constexpr,
              rows_l: gl.constexpr):
    """An item's query rows into ``q_s`` / ``qr_s`` once both warpgroups are done with the
    previous item's (heads past h_q read as zeros); ``q_ready`` is arrived as they land."""
    mbarrier.wait(q_free, (rq & 1) ^ 1)
    q_base = q_ptr + tok64 * stride_qt
    head = hb * BLOCK_H + offs_qh
    _gather_rows(q_s.index(0), q_base, head * stride_qh, head < h_q, 0, D_HALF, rows_l, False)
    _gather_rows(q_s.index(1), q_base, head * stride_qh, head < h_q, D_HALF, D_HALF, rows_l,
                 False)
    if D_ROPE > 0:
        _gather_rows(qr_s, q_base, head * stride_qh, head < h_q, 2 * D_HALF, D_ROPE, rows_l,
                     False)
    async_copy.mbarrier_arrive(q_ready, increment_count=False)


@gluon.jit
def _item_multiplier(m_i, l_i, hb, offs_h_s, h_q, sink_ptr, stride_sink, BLOCK_H: gl.constexpr,
                     HAS_SINK: gl.constexpr):
    """End of an item: whether each row saw a valid key, its base-2 lse, the multiplier of its
    output (sink factor / row sum; 0 for a row with no valid key), its head and head mask."""
    has_keys = l_i > 0.0
    safe_l = gl.where(has_keys, l_i, 1.0)
    lse2 = m_i + gl.log2(safe_l)
    mult = 1.0 / safe_l
    head_s = hb * BLOCK_H + offs_h_s
    mask_s = head_s < h_q
    if HAS_SINK:
        # out · 1 / (1 + e^(σ - lse)); σ = +inf gives 0, σ = -inf gives 1
        sink = gl.load(sink_ptr + head_s * stride_sink, mask=mask_s, other=float("-inf"))
        mult = mult / (1.0 + gl.exp2(sink * LOG2E - gl.where(has_keys, lse2, 0.0)))
    mult = gl.where(has_keys, mult, 0.0)
    return has_keys, lse2, mult, head_s, mask_s


@gluon.jit
def _store_stats(max_logits_ptr, lse_ptr, tok64, head_s, mask_s, has_keys, m_i, lse2,
                 stride_mt, stride_mh, stride_lt, stride_lh):
    """max_logits and lse of an item's rows, natural log (-inf / +inf for rows with no key)."""
    gl.store(max_logits_ptr + tok64 * stride_mt + head_s * stride_mh,
             gl.where(has_keys, m_i * LN2, float("-inf")), mask=mask_s)
    gl.store(lse_ptr + tok64 * stride_lt + head_s * stride_lh,
             gl.where(has_keys, lse2 * LN2, float("inf")), mask=mask_s)


@gluon.jit
def _store_out(acc, mult, out_ptr, tok, hb, offs_h_o, h_q, offs_d, stride_ot, stride_oh,
               BLOCK_H: gl.constexpr):
    """One warpgroup's columns ``offs_d`` of an item's output, ``acc`` times each row's
    ``mult`` (already in the rows' layout of ``acc``)."""
    head_o = hb * BLOCK_H + offs_h_o
    o = acc * gl.expand_dims(mult, 1)
    ptrs = (out_ptr + tok.to(gl.int64) * stride_ot + gl.expand_dims(head_o * stride_oh, 1)
            + gl.expand_dims(offs_d, 0))
    gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(head_o < h_q, 1))


@gluon.jit
def _load_partition(q_s, qr_s, k_s, kr_s, q_ready, q_free, k_ready, k_free,
                    q_ptr, kv_ptr, indices_ptr, topk_length_ptr,
                    s_kv, h_q, topk, n_hb, n_items,
                    stride_qt, stride_qh, stride_kvs, stride_it, stride_tl,
                    D_HALF: gl.constexpr, D_ROPE: gl.constexpr, BLOCK_H: gl.constexpr,
                    BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_TOPK_LEN: gl.constexpr,
                    LOAD_WARPS: gl.constexpr, EVICT_LAST: gl.constexpr):
    rows_l: gl.constexpr = gather_layout(LOAD_WARPS)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, rows_l))
    offs_qh = gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, rows_l))
    it = 0
    rq = 0
    item = gl.program_id(0)
    # while loops: Triton 3.6 may drop a for loop's carried value used only as an inner bound
    while item < n_items:
        tok, hb, n_slots, n_tiles = _item(item, n_hb, topk, topk_length_ptr, stride_tl,
                                          HAS_TOPK_LEN, BLOCK_N)
        tok64 = tok.to(gl.int64)
        # --- the item's query rows
        _gather_q(q_s, qr_s, q_ptr, tok64, hb, h_q, stride_qt, stride_qh, offs_qh, q_ready,
                  q_free, rq, D_HALF, D_ROPE, BLOCK_H, rows_l)
        # --- the key tiles
        idx_row = indices_ptr + tok64 * stride_it
        t = 0
        while t < n_tiles:
            s = it % STAGES
            # the tile's indices are read before waiting for its buffer (their latency hides
            # behind the wait)
            idx, ok = _tile_slots(idx_row, t, offs_n, n_slots, s_kv, BLOCK_N)
            off = gl.where(ok, idx, 0).to(gl.int64) * stride_kvs
            mbarrier.wait(k_free.index(s), ((it // STAGES) & 1) ^ 1)
            _gather_rows(k_s.index(2 * s), kv_ptr, off, ok, 0, D_HALF, rows_l, EVICT_LAST)
            _gather_rows(k_s.index(2 * s + 1), kv_ptr, off, ok, D_HALF, D_HALF, rows_l,
                         EVICT_LAST)
            if D_ROPE > 0:
                _gather_rows(kr_s.index(s), kv_ptr, off, ok, 2 * D_HALF, D_ROPE, rows_l,
                             EVICT_LAST)
            async_copy.mbarrier_arrive(k_ready.index(s), increment_count=False)
            it += 1
            t += 1
        rq += 1
        item += gl.num_programs(0)


@gluon.jit
def _softmax_partition(q_s, qr_s, k_s, kr_s, p_s, a_s, f_s, q_ready, q_free, k_ready, k_free,
                       p_ready, p_free,
                       indices_ptr, topk_length_ptr, sink_ptr, out_ptr, max_logits_ptr, lse_ptr,
                       scale_log2, s_kv, h_q, topk, n_hb, n_items,
                       stride_it, stride_tl, stride_sink, stride_ot, stride_oh,
                       stride_mt, stride_mh, stride_lt, stride_lh,
                       D_HALF: gl.constexpr, D_ROPE: gl.constexpr, BLOCK_H: gl.constexpr,
                       BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_TOPK_LEN: gl.constexpr,
                       HAS_SINK: gl.constexpr, D_SOFT: gl.constexpr):
    # this warpgroup's output columns: O[:, :D_SOFT] (D_SOFT <= D_HALF; the PV warpgroup the rest)
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_SOFT, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=col_s)
    offs_h_s = gl.arange(0, BLOCK_H, layout=row_s)
    offs_h_o = gl.arange(0, BLOCK_H, layout=row_o)
    offs_d = gl.arange(0, D_SOFT, layout=col_o)
    it = 0
    msg = 0
    rq = 0
    item = gl.program_id(0)
    while item < n_items:
        tok, hb, n_slots, n_tiles = _item(item, n_hb, topk, topk_length_ptr, stride_tl,
                                          HAS_TOPK_LEN, BLOCK_N)
        tok64 = tok.to(gl.int64)
        idx_row = indices_ptr + tok64 * stride_it
        mbarrier.wait(q_ready, rq & 1)
        fence_async_shared()  # cp.async (generic proxy) wrote Q; wgmma reads it (async proxy)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)  # the references
        mx_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)  # the true maxima
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_SOFT], gl.float32, layout=o_layout)
        t = 0
        while t < n_tiles:
            s = it % STAGES
            bias = _tile_bias(idx_row, t, offs_n, n_slots, s_kv, BLOCK_N)
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            fence_async_shared()
            k0 = k_s.index(2 * s)
            sc = issue_scores(q_s, qr_s, k_s, kr_s, s, s_layout, BLOCK_H, BLOCK_N,
                              ROPE=D_ROPE > 0)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            # Q is read only by S = Q·Kᵀ: free it after the item's last scores
            if t == n_tiles - 1:
                mbarrier.arrive(q_free, count=1)
            # base-2 scores, -inf at invalid slots; scale_log2 > 0, so the maximum of the
            # unscaled row is the scaled one's and the scale folds into the exponent's FMA
            sc = sc + bias
            mt = gl.max(sc, axis=1) * scale_log2
            mx_i = gl.maximum(mx_i, mt)
            m_new = gl.where(mt > m_i + RESCALE_LOG2, mt, m_i)
            p = gl.exp2(sc * scale_log2 - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)  # exactly 1 where the reference stayed
            l_i = l_i * alpha + gl.sum(p, axis=1)
            # per warp (16 rows): whether any of its references moved
            moved = gl.max(gl.reshape((m_new != m_i).to(gl.int32), [4, BLOCK_H // 4]), axis=1)
            m_i = m_new
            p16 = p.to(k_s.dtype)
            # hand P, the rescale factors and the warps' flags to the PV warpgroup
            mbarrier.wait(p_free, (msg & 1) ^ 1)
            p_s.store(p16)
            a_s.store(alpha)
            f_s.store(moved)
            fence_async_shared()
            mbarrier.arrive(p_ready, count=1)
            msg += 1
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            if D_SOFT < D_HALF:
                k0 = k0.slice(0, D_SOFT, dim=1)
            acc = warpgroup_mma(gl.convert_layout(p16, p_layout), k0, acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(k_free.index(s), count=1)
            it += 1
            t += 1
        # an item with no key tile never read its Q
        if n_tiles == 0:
            mbarrier.arrive(q_free, count=1)
        has_keys, lse2, mult, head_s, mask_s = _item_multiplier(
            m_i, l_i, hb, offs_h_s, h_q, sink_ptr, stride_sink, BLOCK_H, HAS_SINK)
        # final message of the item: each row's output multiplier
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(mult)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_stats(max_logits_ptr, lse_ptr, tok64, head_s, mask_s, has_keys, mx_i, lse2,
                     stride_mt, stride_mh, stride_lt, stride_lh)
        _store_out(acc, gl.convert_layout(mult, row_o), out_ptr, tok64, hb, offs_h_o, h_q,
                   offs_d, stride_ot, stride_oh, BLOCK_H)
        rq += 1
        item += gl.num_programs(0)


@gluon.jit
def _pv_partition(k_s, p_s, a_s, f_s, k_ready, k_free, p_ready, p_free,
                  topk_length_ptr, out_ptr, h_q, topk, n_hb, n_items,
                  stride_tl, stride_ot, stride_oh,
                  D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                  STAGES: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, D_SOFT: gl.constexpr):
    # this warpgroup's output columns: O[:, D_SOFT:], as the right half V[:, 256:] (acc) plus,
    # when D_SOFT < D_HALF, the rest of the left half V[:, D_SOFT:256] (acc2)
    D_EXTRA: gl.constexpr = D_HALF - D_SOFT
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    offs_h_o = gl.arange(0, BLOCK_H, layout=row_o)
    offs_d = D_HALF + gl.arange(0, D_HALF, layout=col_o)
    EW: gl.constexpr = D_EXTRA if D_EXTRA > 0 else 16
    o2_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, EW, 16])
    row_o2: gl.constexpr = gl.SliceLayout(1, o2_layout)
    offs_d2 = D_SOFT + gl.arange(0, EW, layout=gl.SliceLayout(0, o2_layout))
    offs_h_o2 = gl.arange(0, BLOCK_H, layout=row_o2)
    flags_l: gl.constexpr = gl.BlockedLayout([4], [32], [4], [0])  # the 4 flags in every thread
    it = 0
    msg = 0
    item = gl.program_id(0)
    while item < n_items:
        tok, hb, n_slots, n_tiles = _item(item, n_hb, topk, topk_length_ptr, stride_tl,
                                          HAS_TOPK_LEN, BLOCK_N)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        if D_EXTRA > 0:
            acc2 = gl.zeros([BLOCK_H, EW], gl.float32, layout=o2_layout)
        t = 0
        while t < n_tiles:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            mbarrier.wait(p_ready, msg & 1)
            fence_async_shared()
            if gl.max(f_s.load(flags_l), axis=0) != 0:  # some row's reference moved
                acc = acc * gl.expand_dims(a_s.load(row_o), 1)
                if D_EXTRA > 0:
                    acc2 = acc2 * gl.expand_dims(a_s.load(row_o2), 1)
            if D_EXTRA > 0:
                acc2 = warpgroup_mma(p_s, k_s.index(2 * s).slice(D_SOFT, EW, dim=1), acc2,
                                     is_async=True)
            acc = warpgroup_mma(p_s, k_s.index(2 * s + 1), acc, is_async=True)
            if D_EXTRA > 0:
                acc, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc2))
            else:
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(k_free.index(s), count=1)
            msg += 1
            it += 1
            t += 1
        mbarrier.wait(p_ready, msg & 1)
        mult = a_s.load(row_o)
        if D_EXTRA > 0:
            mult2 = a_s.load(row_o2)
        mbarrier.arrive(p_free, count=1)
        msg += 1
        _store_out(acc, mult, out_ptr, tok, hb, offs_h_o, h_q, offs_d, stride_ot, stride_oh,
                   BLOCK_H)
        if D_EXTRA > 0:
            _store_out(acc2, mult2, out_ptr, tok, hb, offs_h_o2, h_q, offs_d2, stride_ot,
                       stride_oh, BLOCK_H)
        item += gl.num_programs(0)


@gluon.jit
def _sparse_prefill_gluon_kernel(
    q_ptr, kv_ptr, indices_ptr, topk_length_ptr, sink_ptr,
    out_ptr, max_logits_ptr, lse_ptr,
    scale_log2,  # sm_scale * log2(e)
    s_kv, h_q, topk, n_hb, n_items,
    stride_qt, stride_qh,  # q [s_q, h_q, d_qk], last dim contiguous
    stride_kvs,  # kv [s_kv, 1, d_qk], last dim contiguous
    stride_it,  # indices [s_q, 1, topk], last dim contiguous
    stride_tl, stride_sink,
    stride_ot, stride_oh,  # out [s_q, h_q, 512]
    stride_mt, stride_mh, stride_lt, stride_lh,  # max_logits, lse [s_q, h_q]
    D_HALF: gl.constexpr,  # 256: half of V's 512 dims
    D_ROPE: gl.constexpr,  # 64 for d_qk 576, 0 for d_qk 512
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    PV_REGS: gl.constexpr, LOAD_REGS: gl.constexpr, LOAD_WARPS: gl.constexpr,
    EVICT_LAST: gl.constexpr,  # evict_last hint on the KV gathers (rows are shared by tokens)
    D_SOFT: gl.constexpr = 256,  # output columns of the softmax warpgroup (the PV one the rest)
):
    dtype: gl.constexpr = kv_ptr.dtype.element_ty
    half_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_HALF], dtype)
    rope_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, 64], dtype)
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], half_sl)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], half_sl)
    if D_ROPE > 0:
        qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], rope_sl)
        kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], rope_sl)
    else:  # never read; one 8-row slice keeps the partitions' signatures
        qr_s = gl.allocate_shared_memory(dtype, [8, 64], rope_sl)
        kr_s = gl.allocate_shared_memory(dtype, [1, 8, 64], rope_sl)
    p_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
    p_s = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    f_s = gl.allocate_shared_memory(gl.int32, [4], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    # every gathering thread arrives (cp.async.mbarrier.arrive.noinc) once its copies land
    q_ready, q_free, p_ready, p_free, k_ready, k_free = handoff_barriers(
        STAGES, 32 * LOAD_WARPS, 32 * LOAD_WARPS)
    fence_async_shared()

    gl.warp_specialize([
        (_softmax_partition, (q_s, qr_s, k_s, kr_s, p_s, a_s, f_s, q_ready, q_free, k_ready, k_free,
                              p_ready, p_free, indices_ptr, topk_length_ptr, sink_ptr, out_ptr,
                              max_logits_ptr, lse_ptr, scale_log2, s_kv, h_q, topk, n_hb,
                              n_items, stride_it, stride_tl, stride_sink, stride_ot, stride_oh,
                              stride_mt, stride_mh, stride_lt, stride_lh, D_HALF, D_ROPE,
                              BLOCK_H, BLOCK_N, STAGES, HAS_TOPK_LEN, HAS_SINK, D_SOFT)),
        (_pv_partition, (k_s, p_s, a_s, f_s, k_ready, k_free, p_ready, p_free, topk_length_ptr,
                         out_ptr, h_q, topk, n_hb, n_items, stride_tl, stride_ot, stride_oh,
                         D_HALF, BLOCK_H, BLOCK_N, STAGES, HAS_TOPK_LEN, D_SOFT)),
        (_load_partition, (q_s, qr_s, k_s, kr_s, q_ready, q_free, k_ready, k_free, q_ptr,
                           kv_ptr, indices_ptr, topk_length_ptr, s_kv, h_q, topk, n_hb, n_items,
                           stride_qt, stride_qh, stride_kvs, stride_it, stride_tl, D_HALF,
                           D_ROPE, BLOCK_H, BLOCK_N, STAGES, HAS_TOPK_LEN, LOAD_WARPS,
                           EVICT_LAST)),
    ], [4, LOAD_WARPS], [PV_REGS, LOAD_REGS])
