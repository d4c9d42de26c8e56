"""Hopper (sm90) forward of dense MHA varlen prefill in Gluon, FlashAttention-3 style.

Same contract as the portable forward (``kernel.py``): the flat grid of virtual 128-row blocks ×
query heads, bottom-right causal masking, out ``[total_q, h_q, d_v]`` and the head-major lse
buffer ``[h_q, total_q]`` (natural log; rows with no visible key: out 0, lse -inf).

A work item is BLOCK_M = 128 query rows of one head. A CTA takes one item, or with a
persistent grid walks items pid, pid + G, ... (``_program``); the ring of key tiles and the
barrier phases run on across its items, and the next item's Q loads as soon as both consumers
have issued their last Q·Kᵀ of the current one. A CTA has three partitions:

* load (1 warp): TMA copies of the CTA's Q (once, two 64-row halves) and of each key tile's K
  (head dim as DA + DB columns, 192 = 128 + 64) and V into rings of STAGES buffers. K and V have
  their own ready / free barriers, so Q·Kᵀ of a tile can start before its V lands and the next
  K can load while V is still being read;
* two consumer warpgroups (the default partition and one worker), each owning 64 of the rows:
  S = Q·Kᵀ with wgmma from shared memory, base-2 online softmax in registers, O += P·V with P
  from registers (the A operand) and V from shared memory.

Inside a consumer the two GEMMs of consecutive tiles overlap with the softmax: S of tile j is
issued, then P·V of tile j-1, and the softmax of tile j runs while P·V j-1 is still on the
tensor cores. The two consumers are not explicitly ping-ponged: they drift, so one warpgroup's
softmax fills the other's GEMM gaps.

Both consumers walk the same key tiles (the CTA's causal range, so the shared ring needs no
per-warpgroup bookkeeping); each separates its unmasked tiles from the masked ones (the diagonal
and a ragged last tile) with its own bound, so most tiles skip the mask.

Varlen through 2-D descriptors over ``[total, heads * d]``: the head is the column coordinate;
rows past a sequence's end are loaded (the next sequence's rows, or zeros past the tensor) but
never used: their scores are -inf, their V rows are zeroed in shared memory before any P·V reads
them (so a NaN there cannot leak through 0 · NaN), and stores of O and lse are masked.
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

LN2 = gl.constexpr(0.6931471805599453)
MAX_SENTINEL = gl.constexpr(-1.0e30)  # finite running-max start: exp2(m_old - m_new) never NaN
WG0 = gl.constexpr(0)  # the consumer warpgroups: rows 0-63 and 64-127 of the CTA's tile
WG1 = gl.constexpr(1)


@gluon.jit
def find_seq(cu_ptr, blk, n_seqs, BLOCK: gl.constexpr):
    """The sequence owning virtual block ``blk`` of a grid that gives every sequence
    ``len // BLOCK + 1`` blocks: the largest n with ``cu[n] // BLOCK + n <= blk``."""
    lo = n_seqs * 0
    hi = n_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        start = gl.load(cu_ptr + mid) // BLOCK + mid
        if start <= blk:
            lo = mid
        else:
            hi = mid - 1
    return lo


@gluon.jit
def zero_rows_from(buf, row0, end, ROWS: gl.constexpr):
    """Zero the rows of the shared tile ``buf [ROWS, d]`` whose key index ``row0 + r`` is at or
    past ``end`` (16 rows at a time), so a NaN loaded past a sequence end cannot reach an MMA
    through a zero factor."""
    CHUNK: gl.constexpr = 16
    zl: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    zrow = gl.arange(0, CHUNK, layout=gl.SliceLayout(1, zl))
    for c in gl.static_range(ROWS // CHUNK):
        part = buf.slice(c * CHUNK, CHUNK, dim=0)
        keep = gl.expand_dims(row0 + c * CHUNK + zrow < end, 1)
        part.store(gl.where(keep, part.load(zl), 0.0))


@gluon.jit
def _program(item, n_items, cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, BLOCK_M: gl.constexpr,
             BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Work item ``item``'s head, sequence bounds, first local row m0 and key tile count
    (identical in every partition; 0 tiles for an idle block past its sequence).

    A CTA takes items pid, pid + G, pid + 2G, ... (G CTAs). Every other full round of G items is
    walked backwards, so a CTA that drew a long causal block in one round draws a short one in
    the next (with one CTA per item, G = n_items: the identity)."""
    g = gl.num_programs(0)
    rnd = item // g
    if (rnd % 2 == 1) & ((rnd + 1) * g <= n_items):
        item = rnd * g + (g - 1 - item % g)
    head = item // n_vblocks
    blk = n_vblocks - 1 - item % n_vblocks  # long causal blocks of a sequence start first
    lo = find_seq(cu_q_ptr, blk, n_seqs, BLOCK_M)
    q_start = gl.load(cu_q_ptr + lo)
    s_q = gl.load(cu_q_ptr + lo + 1) - q_start
    m0 = (blk - q_start // BLOCK_M - lo) * BLOCK_M
    k_start = gl.load(cu_k_ptr + lo)
    s_k = gl.load(cu_k_ptr + lo + 1) - k_start
    if CAUSAL:
        n_end = gl.minimum(s_k, gl.maximum(m0 + BLOCK_M + s_k - s_q, 0))
    else:
        n_end = s_k
    n_tiles = gl.where(m0 < s_q, (n_end + BLOCK_N - 1) // BLOCK_N, 0)
    return head, q_start, s_q, m0, k_start, s_k, n_tiles


@gluon.jit
def _load_partition(qa_desc, qb_desc, ka_desc, kb_desc, v_desc, qa_s, qb_s, ka_s, kb_s, v_s,
                    q_ready, q_free, k_ready, k_free, v_ready, v_free,
                    cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, n_items, group,
                    D_QK: gl.constexpr, D_V: gl.constexpr, DA: gl.constexpr, DB: gl.constexpr,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                    CAUSAL: gl.constexpr):
    HALF: gl.constexpr = BLOCK_M // 2
    if DB > 0:
        q_bytes: gl.constexpr = 2 * (qa_desc.block_type.nbytes + qb_desc.block_type.nbytes)
        k_bytes: gl.constexpr = ka_desc.block_type.nbytes + kb_desc.block_type.nbytes
    else:
        q_bytes: gl.constexpr = 2 * qa_desc.block_type.nbytes
        k_bytes: gl.constexpr = ka_desc.block_type.nbytes
    t = 0  # key tiles loaded so far by this CTA: the ring slot and phase run on across items
    qc = 0  # items with key tiles so far: the phase of q_ready / q_free
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        head, q_start, s_q, m0, k_start, s_k, n_tiles = _program(
            item, n_items, cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, BLOCK_M, BLOCK_N, CAUSAL)
        if n_tiles > 0:
            kv_head = head // group
            q_row = q_start + m0
            # the previous item's last Q·Kᵀ is done in both consumers: Q may be overwritten
            # while they finish that item (its last P·V and the stores)
            mbarrier.wait(q_free, (qc & 1) ^ 1)
            mbarrier.expect(q_ready, q_bytes)
            for w in gl.static_range(2):
                tma.async_copy_global_to_shared(qa_desc, [q_row + w * HALF, head * D_QK],
                                                q_ready, qa_s.index(w))
                if DB > 0:
                    tma.async_copy_global_to_shared(qb_desc,
                                                    [q_row + w * HALF, head * D_QK + DA],
                                                    q_ready, qb_s.index(w))
            qc += 1
            for j in range(n_tiles):
                s = t % STAGES
                phase = ((t // STAGES) & 1) ^ 1
                k_row = k_start + j * BLOCK_N
                mbarrier.wait(k_free.index(s), phase)
                mbarrier.expect(k_ready.index(s), k_bytes)
                tma.async_copy_global_to_shared(ka_desc, [k_row, kv_head * D_QK],
                                                k_ready.index(s), ka_s.index(s))
                if DB > 0:
                    tma.async_copy_global_to_shared(kb_desc, [k_row, kv_head * D_QK + DA],
                                                    k_ready.index(s), kb_s.index(s))
                mbarrier.wait(v_free.index(s), phase)
                mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(v_desc, [k_row, kv_head * D_V],
                                                v_ready.index(s), v_s.index(s))
                t += 1


@gluon.jit
def _scores(qa, qb, ka_s, kb_s, k_ready, s, phase, s_layout: gl.constexpr, HALF: gl.constexpr,
            BLOCK_N: gl.constexpr, DB: gl.constexpr):
    """Issue S = Q·Kᵀ of the key tile in stage s (asynchronous; returns the token)."""
    mbarrier.wait(k_ready.index(s), phase)
    sc = gl.zeros([HALF, BLOCK_N], gl.float32, layout=s_layout)
    sc = warpgroup_mma(qa, ka_s.index(s).permute((1, 0)), sc, use_acc=False, is_async=True)
    if DB > 0:
        sc = warpgroup_mma(qb, kb_s.index(s).permute((1, 0)), sc, is_async=True)
    return sc


@gluon.jit
def _softmax(sc, m_i, l_i, key0, n_full, s_k, row_last, offs_n, scale_log2,
             CAUSAL: gl.constexpr):
    """Online-softmax step on the scores of the tile at key0: P (fp32), the rescale factor of
    each row, and the new running max and sum. Tiles past n_full pay for the mask."""
    if key0 >= n_full:
        keys = gl.expand_dims(key0 + offs_n, 0)
        valid = keys < s_k
        if CAUSAL:
            valid = valid & (keys <= gl.expand_dims(row_last, 1))
        sc = gl.where(valid, sc, float("-inf"))
    # the max of the raw scores, scaled once per row (scale > 0); then one FMA per element
    m_new = gl.maximum(m_i, gl.max(sc, axis=1) * scale_log2)
    p = gl.exp2(sc * scale_log2 - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _await_v(v_s, v_ready, v_fix, s, phase, fix_phase, key0, s_k, WG: gl.constexpr,
             BLOCK_N: gl.constexpr, D_V: gl.constexpr):
    """Wait for the V tile in stage s. On the (at most one per item) tile that crosses the
    sequence end, each warpgroup zeroes half of the rows past the end, and both meet at v_fix
    (phase ``fix_phase``) before either reads the tile."""
    mbarrier.wait(v_ready.index(s), phase)
    if key0 + BLOCK_N > s_k:
        HALF_N: gl.constexpr = BLOCK_N // 2
        zero_rows_from(v_s.index(s).slice(WG * HALF_N, HALF_N, dim=0), key0 + WG * HALF_N,
                       s_k, HALF_N)
        fence_async_shared()
        mbarrier.arrive(v_fix, count=1)
        mbarrier.wait(v_fix, fix_phase)


@gluon.jit
def _consumer_partition(qa_s, qb_s, ka_s, kb_s, v_s, q_ready, q_free, k_ready, k_free, v_ready,
                        v_free, v_fix, cu_q_ptr, cu_k_ptr, out_ptr, lse_ptr, scale_log2, n_seqs,
                        n_vblocks, n_items, stride_ot, stride_oh, stride_lt, stride_lh,
                        WG: gl.constexpr, DB: gl.constexpr, D_V: gl.constexpr,
                        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                        CAUSAL: gl.constexpr):
    HALF: gl.constexpr = BLOCK_M // 2
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_V, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    dtype: gl.constexpr = v_s.dtype
    qa = qa_s.index(WG)
    qb = qb_s.index(WG)

    t = 0  # key tiles consumed so far by this CTA (the loader's count: same ring slots, phases)
    qc = 0  # items with key tiles so far (q_ready phase)
    fc = 0  # tiles crossing a sequence end so far (v_fix phase)
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        head, q_start, s_q, m0, k_start, s_k, n_tiles = _program(
            item, n_items, cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, BLOCK_M, BLOCK_N, CAUSAL)
        r0 = m0 + WG * HALF  # first local row of this warpgroup
        diag = s_k - s_q  # row i sees keys j <= i + diag
        if CAUSAL:
            n_full = gl.minimum(s_k, gl.maximum(r0 + diag + 1, 0)) // BLOCK_N * BLOCK_N
        else:
            n_full = s_k // BLOCK_N * BLOCK_N
        row_last = r0 + gl.arange(0, HALF, layout=row_s) + diag
        offs_n = gl.arange(0, BLOCK_N, layout=col_s)

        m_i = gl.full([HALF], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([HALF], gl.float32, layout=row_s)
        acc = gl.zeros([HALF, D_V], gl.float32, layout=o_layout)
        if n_tiles > 0:
            fix_phase = fc & 1
            mbarrier.wait(q_ready, qc & 1)
            # prologue: scores and P of tile 0
            s0 = t % STAGES
            sc = _scores(qa, qb, ka_s, kb_s, k_ready, s0, (t // STAGES) & 1, s_layout, HALF,
                         BLOCK_N, DB)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            mbarrier.arrive(k_free.index(s0), count=1)
            p, alpha, m_i, l_i = _softmax(sc, m_i, l_i, 0, n_full, s_k, row_last, offs_n,
                                          scale_log2, CAUSAL)
            p16 = gl.convert_layout(p.to(dtype), p_layout)
            for j in range(1, n_tiles):
                tj = t + j
                s = tj % STAGES
                phase = (tj // STAGES) & 1
                sp = (tj - 1) % STAGES
                pphase = ((tj - 1) // STAGES) & 1
                # S_j = Q·K_jᵀ, then O += P_{j-1}·V_{j-1}; the softmax of tile j overlaps
                # the latter
                sc = _scores(qa, qb, ka_s, kb_s, k_ready, s, phase, s_layout, HALF, BLOCK_N, DB)
                _await_v(v_s, v_ready, v_fix, sp, pphase, fix_phase, (j - 1) * BLOCK_N, s_k,
                         WG, BLOCK_N, D_V)
                acc = warpgroup_mma(p16, v_s.index(sp), acc, is_async=True)
                sc = warpgroup_mma_wait(num_outstanding=1, deps=(sc,))
                mbarrier.arrive(k_free.index(s), count=1)
                p, alpha, m_i, l_i = _softmax(sc, m_i, l_i, j * BLOCK_N, n_full, s_k, row_last,
                                              offs_n, scale_log2, CAUSAL)
                acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
                mbarrier.arrive(v_free.index(sp), count=1)
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                p16 = gl.convert_layout(p.to(dtype), p_layout)
            # every Q·Kᵀ of the item is done: the loader may bring the next item's Q
            mbarrier.arrive(q_free, count=1)
            # epilogue: P·V of the last tile
            tl_ = t + n_tiles - 1
            sl = tl_ % STAGES
            _await_v(v_s, v_ready, v_fix, sl, (tl_ // STAGES) & 1, fix_phase,
                     (n_tiles - 1) * BLOCK_N, s_k, WG, BLOCK_N, D_V)
            acc = warpgroup_mma(p16, v_s.index(sl), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(v_free.index(sl), count=1)
            t += n_tiles
            qc += 1
            fc += (n_tiles * BLOCK_N > s_k).to(gl.int32)

        # normalise and store this warpgroup's 64 rows (masked: rows past the sequence end
        # belong to the next sequence or to no one); the item's bounds are read again rather
        # than held in registers through the key loop
        head, q_start, s_q, m0, k_start, s_k, n_tiles = _program(
            item, n_items, cu_q_ptr, cu_k_ptr, n_seqs, n_vblocks, BLOCK_M, BLOCK_N, CAUSAL)
        r0 = m0 + WG * HALF
        l_o = gl.convert_layout(l_i, row_o)
        m_o = gl.convert_layout(m_i, row_o)
        has_keys = l_o > 0.0
        safe_l = gl.where(has_keys, l_o, 1.0)
        o = acc / gl.expand_dims(safe_l, 1)
        rows = r0 + gl.arange(0, HALF, layout=row_o)
        mask_r = rows < s_q
        tok = (q_start + rows).to(gl.int64)
        offs_d = gl.arange(0, D_V, layout=col_o)
        ptrs = (out_ptr + head * stride_oh + gl.expand_dims(tok * stride_ot, 1)
                + gl.expand_dims(offs_d, 0))
        gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(mask_r, 1))
        lse = gl.where(has_keys, (m_o + gl.log2(safe_l)) * LN2, float("-inf"))
        gl.store(lse_ptr + head * stride_lh + tok * stride_lt, lse, mask=mask_r)


@gluon.jit
def _mha_fwd_gluon_kernel(
    qa_desc, qb_desc, ka_desc, kb_desc, v_desc,
    cu_q_ptr, cu_k_ptr, out_ptr, lse_ptr,
    scale_log2,  # softmax_scale * log2(e)
    n_seqs, n_vblocks, n_items, group,  # n_items = n_vblocks * h_q; group = h_q // h_kv
    stride_ot, stride_oh,  # out [total_q, h_q, D_V]
    stride_lt, stride_lh,  # lse [total_q, h_q] (a view of a [h_q, total_q] buffer)
    D_QK: gl.constexpr, D_V: gl.constexpr, DA: gl.constexpr, DB: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, LOAD_REGS: gl.constexpr,
):
    HALF: gl.constexpr = BLOCK_M // 2
    dtype: gl.constexpr = ka_desc.dtype
    qa_s = gl.allocate_shared_memory(dtype, [2, HALF, DA], qa_desc.layout)
    ka_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DA], ka_desc.layout)
    if DB > 0:
        qb_s = gl.allocate_shared_memory(dtype, [2, HALF, DB], qb_desc.layout)
        kb_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DB], kb_desc.layout)
    else:  # placeholders, never read
        qb_s = qa_s
        kb_s = ka_s
    v_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_V], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    v_fix = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_free, count=2)  # both consumers are done with the item's Q
    mbarrier.init(v_fix, count=2)  # both consumers fix their half of the tail V tile
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)  # both consumers release a tile
        mbarrier.init(v_free.index(i), count=2)
    fence_async_shared()

    gl.warp_specialize([
        (_consumer_partition, (qa_s, qb_s, ka_s, kb_s, v_s, q_ready, q_free, k_ready, k_free,
                               v_ready, v_free, v_fix, cu_q_ptr, cu_k_ptr, out_ptr, lse_ptr,
                               scale_log2, n_seqs, n_vblocks, n_items, stride_ot, stride_oh,
                               stride_lt, stride_lh,
                               WG0, DB, D_V, BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
        (_consumer_partition, (qa_s, qb_s, ka_s, kb_s, v_s, q_ready, q_free, k_ready, k_free,
                               v_ready, v_free, v_fix, cu_q_ptr, cu_k_ptr, out_ptr, lse_ptr,
                               scale_log2, n_seqs, n_vblocks, n_items, stride_ot, stride_oh,
                               stride_lt, stride_lh,
                               WG1, DB, D_V, BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
        (_load_partition, (qa_desc, qb_desc, ka_desc, kb_desc, v_desc, qa_s, qb_s, ka_s, kb_s,
                           v_s, q_ready, q_free, k_ready, k_free, v_ready, v_free, cu_q_ptr,
                           cu_k_ptr, n_seqs, n_vblocks, n_items, group, D_QK, D_V, DA, DB,
                           BLOCK_M, BLOCK_N, STAGES, CAUSAL)),
    ], [4, 1], [CONSUMER_REGS, LOAD_REGS])
