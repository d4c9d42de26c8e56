"""Hopper (sm90) fast path of sparse MLA decode over the V3.2 FP8 KV cache (d_qk 576), in Gluon.

Same split-KV contract as the portable kernel (``kernel.py``: schedule, pieces, combine, sink in
the split kernel for requests kept whole). A CTA owns 64 query heads of one query token (grid
``(head tiles, s_q, parts)``; fewer than 64 heads are padded to one 64-row wgmma tile whose extra
rows are never written) and walks the 64-slot index tiles of its part. Three partitions hand tiles
through shared memory:

* producer warpgroup (4 warps): TMA copy of the tile's Q once per request; per index tile it loads
  the 64 indices, gathers the 656-byte token rows they name with 16-byte loads (invalid slots:
  index < 0, >= num_blocks * pbs, or at a position >= the length, are never dereferenced and give
  zero rows; the indices are loaded one tile ahead), dequantizes the fp8 NoPE part (fp8 → fp32 × per-128-dim scale → bf16) and writes the
  bf16 K tile (two 256-wide halves + the 64-wide RoPE part) and a per-slot validity flag into a
  ring of STAGES buffers. The gathers of a tile are issued before the wait for a free buffer, so
  their latency overlaps the consumers' work on the previous tiles;
* softmax warpgroup (the default partition): S = Q·Kᵀ with wgmma from shared memory, invalid slots
  masked to -inf, online softmax (base 2), publishes P (bf16) and the rescale factor of each row,
  and accumulates O_L = O_L·α + P·V[:, :256];
* PV warpgroup: O_R = O_R·α + P·V[:, 256:] with P read from shared memory.

At h_q <= 16 (``SWAP``) the same pieces run the swapped product: the heads are the MMA's N
(BLOCK_H = 16), Sᵀ [64 slots, heads] = K·Qᵀ, the online softmax runs over axis 0 (a reduction
across the warps), Pᵀ goes through shared memory and each warpgroup accumulates its half of
Oᵀ [256, heads] = Vᵀ·Pᵀ with Vᵀ read transposed from the key tile. The smaller accumulators free
the registers for a second producer partition: the tiles of a part alternate between the two
(each fills its own ring stage), so two tiles' gathers are in flight; the first loads Q.

With two head blocks a token (65-128 heads, ``PAIR``) the two CTAs of a token run as a cluster
(``_gluon_cluster.launch_pair``) and share the key tiles: each producer gathers and dequantizes
half of a tile's rows into its own ring stage and copies them into the same rows of the peer's
stage (bulk shared-to-shared copies completing on the peer's key barrier); a stage is free once
the consumers of both CTAs released it (two local and two remote arrives). Per CTA the gathers
and the dequantization halve; the outputs are bitwise those of two independent CTAs.

Each request ends with one more message from the softmax warpgroup: the factor every output row
is multiplied by (1/l, with the sink's 1/(1 + 2^(σ·log2e − lse₂)) for a request kept in one piece,
0 for rows that saw no valid key), so both warpgroups store their half without further talk.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .._gluon_cluster import arrive_peer, bulk_to_peer, cluster_sync, smem_base
from .._gluon_decode import handoff_barriers, issue_scores, load_q, swapped_softmax_step
from ..schedule.gluon import schedule_part

LN2 = gl.constexpr(0.6931471805599453)
LOG2E = gl.constexpr(1.4426950408889634)
MAX_SENTINEL = gl.constexpr(-1.0e30)  # finite running-max start: no -inf - -inf in exp2

# V32 token row: 512 fp8 NoPE bytes, 4 fp32 scales (one per 128 dims), 64 bf16 RoPE values
TOKEN_BYTES = gl.constexpr(656)
SCALE_OFFSET = gl.constexpr(512)
ROPE_OFFSET = gl.constexpr(528)
GROUP = gl.constexpr(128)  # NoPE dims per scale


@gluon.jit
def _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo, part_hi,
                   HAS_TOPK_LEN: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr):
    """Attended length of request r and its index tiles [t_lo, t_hi) inside this part (the same
    in every partition); one scheduling block = one tile of BLOCK_N (= SCHED_N) slots."""
    length = gl.to_tensor(topk)
    if HAS_TOPK_LEN:
        length = gl.minimum(gl.maximum(gl.load(topk_len_ptr + r), 0), topk)
    n_tiles = (length + BLOCK_N - 1) // BLOCK_N
    n_sched = gl.maximum(n_tiles, 1)
    t_lo = gl.maximum(part_lo - line_pos - OVERHEAD, 0)
    t_hi = gl.minimum(gl.minimum(part_hi - line_pos - OVERHEAD, n_sched), n_tiles)
    return length, n_sched, t_lo, t_hi


@gluon.jit
def _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part, OVERHEAD: gl.constexpr):
    """Whether request r is one piece (final output here) and, if not, the index of this part's
    piece in the combine's accumulators."""
    first_part = (line_pos + OVERHEAD) // payload
    last_part = (line_pos + OVERHEAD + n_sched - 1) // payload
    piece = gl.load(num_splits_ptr + r) + pid_part - first_part
    return first_part == last_part, first_part != last_part, piece


@gluon.jit
def _store_half(acc, fin, r, tok, head, mask_r, offs_d, whole, split, piece, out_ptr, o_acc_ptr,
                stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t, stride_oa_h,
                ROW_AXIS: gl.constexpr = 0):
    """One 256-wide half of the tile's output rows, ``acc · fin``: the final output when the
    request is one piece, else this piece into the combine's accumulators. Both destinations
    are written with complementary masks (no divergent branch around stores inside a
    warp-specialized partition). ``acc`` holds the heads along ``ROW_AXIS`` (1: transposed,
    ``[256, heads]``)."""
    D_AXIS: gl.constexpr = 1 - ROW_AXIS
    o = acc * gl.expand_dims(fin, D_AXIS)
    head2 = gl.expand_dims(head, D_AXIS)
    d2 = gl.expand_dims(offs_d, ROW_AXIS)
    mask2 = gl.expand_dims(mask_r, D_AXIS)
    ptrs = out_ptr + r.to(gl.int64) * stride_ob + tok * stride_ot + head2 * stride_oh + d2
    gl.store(ptrs, o.to(out_ptr.dtype.element_ty), mask=mask2 & whole)
    acc_ptrs = (o_acc_ptr + piece.to(gl.int64) * stride_oa_piece + tok * stride_oa_t
                + head2 * stride_oa_h + d2)
    gl.store(acc_ptrs, o, mask=mask2 & split)


@gluon.jit
def _store_lse(has_keys, lse2, r, tok, head, mask, whole, split, piece, lse_ptr, lse_acc_ptr,
               stride_lb, stride_lt, stride_lh, stride_la_piece, stride_la_t):
    """A request's lse: natural log (+inf for rows that saw no key) into the output when it is
    one piece, else this piece's base-2 lse into the combine's accumulators (complementary
    masks, as ``_store_half``)."""
    lse_nat = gl.where(has_keys, lse2 * LN2, float("inf"))
    gl.store(lse_ptr + r.to(gl.int64) * stride_lb + tok * stride_lt + head * stride_lh,
             lse_nat, mask=mask & whole)
    gl.store(lse_acc_ptr + piece.to(gl.int64) * stride_la_piece + tok * stride_la_t + head,
             lse2, mask=mask & split)


@gluon.jit
def _request_factors(l_i, m_i, whole, sink2, HAS_SINK: gl.constexpr):
    """Per output row at the end of a request: whether it saw a key, its lse (base 2) and the
    factor its output is multiplied by (1/l, with the sink's 1/(1 + 2^(σ·log2e − lse₂)) for a
    request kept in one piece, 0 for rows that saw no key)."""
    has_keys = l_i > 0.0
    safe_l = gl.where(has_keys, l_i, 1.0)
    lse2 = gl.where(has_keys, m_i + gl.log2(safe_l), float("-inf"))  # base 2
    inv = 1.0 / safe_l  # acc is 0 in rows that saw no key
    fin = inv
    if HAS_SINK:
        # out · 1 / (1 + 2^(σ·log2e − lse₂)); σ = +inf → 0; rows without keys stay 0
        gap = sink2 - gl.where(has_keys, lse2, 0.0)
        fin = gl.where(whole, gl.where(has_keys, inv / (1.0 + gl.exp2(gap)), 0.0), inv)
    return has_keys, lse2, fin


@gluon.jit
def _dequant_store(raw, scale, dst):
    """fp8 e4m3 bytes ``raw [BLOCK_N, GROUP]`` × per-row ``scale`` → bf16 into ``dst``."""
    x = raw.to(gl.float8e4nv, bitcast=True).to(gl.float32) * gl.expand_dims(scale, 1)
    dst.store(x.to(gl.bfloat16))


@gluon.jit
def _store_rows(k_s, kr_s, v_s, s, raw0, raw1, raw2, raw3, sc0, sc1, sc2, sc3, rope, valid,
                ROW0: gl.constexpr):
    """Dequantize the gathered rows into rows [ROW0, ROW0 + rows) of ring stage ``s``: the two
    256-wide key halves, the RoPE part and the validity flags (a CTA pair: each CTA its half)."""
    ROWS: gl.constexpr = raw0.shape[0]
    k0 = k_s.index(2 * s).slice(ROW0, ROWS, dim=0)
    k1 = k_s.index(2 * s + 1).slice(ROW0, ROWS, dim=0)
    _dequant_store(raw0, sc0, k0.slice(0, GROUP, dim=1))
    _dequant_store(raw1, sc1, k0.slice(GROUP, GROUP, dim=1))
    _dequant_store(raw2, sc2, k1.slice(0, GROUP, dim=1))
    _dequant_store(raw3, sc3, k1.slice(GROUP, GROUP, dim=1))
    kr_s.index(s).slice(ROW0, ROWS, dim=0).store(rope)
    v_s.index(s).slice(ROW0, ROWS).store(valid.to(gl.int32))


@gluon.jit
def _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE: gl.constexpr):
    """Which index slots are valid (inside the length, 0 <= index < num_tokens) and the byte
    offset in the cache of the token row each names (0 for the invalid ones)."""
    valid = (slots < length) & (idx >= 0) & (idx < num_tokens)
    p_tok = gl.where(valid, idx, 0).to(gl.int64)
    page = p_tok // PAGE_SIZE
    return valid, page * stride_kp + (p_tok - page * PAGE_SIZE) * TOKEN_BYTES


@gluon.jit
def _split_scales(sc4, scols, row_l: gl.constexpr):
    """The four per-128-dim scales of each row (``sc4 [rows, 4]``) as four row vectors in
    ``row_l``."""
    sc0 = gl.convert_layout(gl.sum(gl.where(scols == 0, sc4, 0.0), axis=1), row_l)
    sc1 = gl.convert_layout(gl.sum(gl.where(scols == 1, sc4, 0.0), axis=1), row_l)
    sc2 = gl.convert_layout(gl.sum(gl.where(scols == 2, sc4, 0.0), axis=1), row_l)
    sc3 = gl.convert_layout(gl.sum(gl.where(scols == 3, sc4, 0.0), axis=1), row_l)
    return sc0, sc1, sc2, sc3


@gluon.jit
def _prefetch_rows(k_ptr, idx, valid, stride_kp, PAGE_SIZE: gl.constexpr, WARPS: gl.constexpr):
    """Ask L2 for the token rows ``idx`` names (``valid`` ones; the others prefetch the cache's
    first line): six 128-byte lines cover a 656-byte row whatever its alignment. Nothing comes
    back to registers, so a tile's rows can be brought closer while the one before it is
    dequantized."""
    pf_l: gl.constexpr = gl.BlockedLayout([1, 1], [4, 8], [WARPS, 1], [1, 0])
    idx = gl.convert_layout(idx, gl.SliceLayout(1, pf_l))
    valid = gl.convert_layout(valid, gl.SliceLayout(1, pf_l))
    p_tok = gl.where(valid, idx, 0).to(gl.int64)
    page = p_tok // PAGE_SIZE
    row = page * stride_kp + (p_tok - page * PAGE_SIZE) * TOKEN_BYTES
    row = gl.where(valid, row, 0)
    line = gl.arange(0, 8, layout=gl.SliceLayout(0, pf_l))
    off = gl.where(line < 5, line * 128, TOKEN_BYTES - 1)  # last byte: the row's last line
    addr = k_ptr + (gl.expand_dims(row, 1) + gl.expand_dims(off, 0))
    gl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [addr],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _producer_partition(q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free, k_ready,
                        k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk,
                        num_tokens, stride_kp, stride_ib, stride_it,
                        D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                        PAGE_SIZE: gl.constexpr, OVERHEAD: gl.constexpr,
                        META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr,
                        STAGES: gl.constexpr, WARPS: gl.constexpr, PREFETCH: gl.constexpr,
                        PRODUCERS: gl.constexpr = 1, PID: gl.constexpr = 0,
                        PAIR: gl.constexpr = False, SMEM_K: gl.constexpr = 0,
                        SMEM_KR: gl.constexpr = 0, SMEM_V: gl.constexpr = 0,
                        SMEM_READY: gl.constexpr = 0):
    # PRODUCERS partitions may share the tiles: this one (PID) takes the tiles whose running
    # count over the part is PID modulo PRODUCERS, and the first one loads Q.
    # PAIR: the two CTAs (head blocks) of a cluster share every tile: each gathers and
    # dequantizes half of its rows (CTA rank = pid_h: rows [rank·ROWS, rank·ROWS + ROWS)) into
    # its own stage, then copies them into the same rows of the peer's stage (bulk copies
    # completing on the peer's k_ready, whose expected bytes this CTA's arrive announces).
    # one thread: 16 consecutive bytes of a token row; 8 threads span a 128-byte scale group
    nope_l: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [WARPS, 1], [1, 0])
    # RoPE: 8 bf16 (16 bytes) a thread, 8 threads span the 64 values
    rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
    row_l: gl.constexpr = gl.SliceLayout(1, nope_l)
    rrow_l: gl.constexpr = gl.SliceLayout(1, rope_l)
    # the 4 fp32 scales of a row in one thread (16 bytes), rows spread as in nope_l
    sc_l: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [WARPS, 1], [1, 0])
    srow_l: gl.constexpr = gl.SliceLayout(1, sc_l)
    D_ROPE: gl.constexpr = kr_s.shape[2]

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    ROWS: gl.constexpr = BLOCK_N // 2 if PAIR else BLOCK_N  # token rows this CTA gathers
    # a pair: bytes of one half of a stage's rows (k: 128-byte rows in 64-column blocks)
    HALF_BLOCK: gl.constexpr = ROWS * 128
    STAGE_K: gl.constexpr = 2 * BLOCK_N * D_HALF * 2
    PEER_BYTES: gl.constexpr = (2 * D_HALF // 64 + 1) * HALF_BLOCK + ROWS * 4
    offs_n = gl.arange(0, ROWS, layout=row_l)
    if PAIR:
        cluster_sync()  # both CTAs' barriers are initialised
        offs_n += pid_h * ROWS
        smem = smem_base()
        peer = 1 - pid_h
    cols = gl.expand_dims(gl.arange(0, GROUP, layout=gl.SliceLayout(0, nope_l)), 0)
    rcols = gl.expand_dims(gl.arange(0, D_ROPE, layout=gl.SliceLayout(0, rope_l)), 0)
    scols = gl.expand_dims(gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l)), 0)
    it = 0
    rq = 0
    r = begin_req
    # while loops, not `for ... in range`: Triton 3.6 drops a for loop's carried value that is
    # used only as the bounds of an inner loop (line_pos) inside warp-specialized partitions
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        q_row = (r * s_q + tok) * h_q + pid_h * BLOCK_H
        if PID == 0:
            load_q(q_desc, qr_desc, q_s, qr_s, q_ready, q_free, rq, q_row, D_HALF)
        idx_row = idx_ptr + r.to(gl.int64) * stride_ib + tok * stride_it
        if PRODUCERS > 1:  # first tile of this request that is this partition's
            it_end = it + gl.maximum(t_hi - t_lo, 0)
            skip = (PID - it % PRODUCERS + PRODUCERS) % PRODUCERS
            t_lo = t_lo + skip
            it = it + skip
        # the indices are loaded two tiles ahead: a gather never waits for its index load, and
        # (PREFETCH) the next tile's rows are prefetched into L2 while this one is dequantized
        STEP: gl.constexpr = BLOCK_N * PRODUCERS  # slots between this partition's tiles
        slots = t_lo * BLOCK_N + offs_n
        idx_next = gl.load(idx_row + slots, mask=slots < length, other=-1)
        idx_after = gl.load(idx_row + slots + STEP, mask=slots + STEP < length, other=-1)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            slots = t * BLOCK_N + offs_n
            idx = idx_next
            valid, row = _token_rows(idx, slots, length, num_tokens, stride_kp, PAGE_SIZE)
            tok_ptr = k_ptr + row
            row_ptr = gl.expand_dims(tok_ptr, 1) + cols  # [BLOCK_N, GROUP] bytes of group 0
            vmask = gl.expand_dims(valid, 1)
            # every gather of the tile first (all in flight together) ...
            raw0 = gl.load(row_ptr, mask=vmask, other=0)
            raw1 = gl.load(row_ptr + GROUP, mask=vmask, other=0)
            raw2 = gl.load(row_ptr + 2 * GROUP, mask=vmask, other=0)
            raw3 = gl.load(row_ptr + 3 * GROUP, mask=vmask, other=0)
            # the four scales of a row: one 16-byte load
            sc_ptr = (gl.convert_layout(tok_ptr, srow_l) + SCALE_OFFSET).to(
                gl.pointer_type(gl.float32))
            sc4 = gl.load(gl.expand_dims(sc_ptr, 1) + scols,
                          mask=gl.expand_dims(gl.convert_layout(valid, srow_l), 1), other=0.0)
            sc0, sc1, sc2, sc3 = _split_scales(sc4, scols, row_l)
            r_ptr = gl.convert_layout(tok_ptr + ROPE_OFFSET, rrow_l).to(
                gl.pointer_type(gl.bfloat16))
            r_valid = gl.expand_dims(gl.convert_layout(valid, rrow_l), 1)
            rope = gl.load(gl.expand_dims(r_ptr, 1) + rcols, mask=r_valid, other=0.0)
            if PREFETCH:
                nxt = slots + STEP < length
                pf_ok = nxt & (idx_after >= 0) & (idx_after < num_tokens)
                if PAIR:
                    _prefetch_rows(k_ptr, idx_after, pf_ok, stride_kp, PAGE_SIZE, WARPS)
                elif PREFETCH == 2:  # only head block 0 asks: the others read the same rows
                    # (several head blocks a token: gluon_launch.PREFETCH_HEAD_BLOCK0)
                    if pid_h == 0:
                        _prefetch_rows(k_ptr, idx_after, pf_ok, stride_kp, PAGE_SIZE, WARPS)
                else:
                    _prefetch_rows(k_ptr, idx_after, pf_ok, stride_kp, PAGE_SIZE, WARPS)
            idx_next = idx_after
            idx_after = gl.load(idx_row + slots + 2 * STEP, mask=slots + 2 * STEP < length,
                                other=-1)
            # ... then wait for the ring slot, dequantize and publish
            mbarrier.wait(k_free.index(s), ((it // STAGES) & 1) ^ 1)
            if PAIR:
                if pid_h == 0:
                    _store_rows(k_s, kr_s, v_s, s, raw0, raw1, raw2, raw3, sc0, sc1, sc2, sc3,
                                rope, valid, 0)
                else:
                    _store_rows(k_s, kr_s, v_s, s, raw0, raw1, raw2, raw3, sc0, sc1, sc2, sc3,
                                rope, valid, ROWS)
                fence_async_shared()
                # every thread's rows are stored and fenced before thread 0 arrives and copies
                # them to the peer (Gluon's expect is one thread's, with no barrier before it)
                gl.thread_barrier()
                mbarrier.expect(k_ready.index(s), PEER_BYTES)  # the peer's half, in bytes
                bar = smem + SMEM_READY + 8 * s
                bulk_to_peer(smem + SMEM_K + s * STAGE_K + pid_h * HALF_BLOCK, bar, peer,
                             HALF_BLOCK, 2 * D_HALF // 64, 2 * HALF_BLOCK)
                bulk_to_peer(smem + SMEM_KR + s * (BLOCK_N * D_ROPE * 2) + pid_h * HALF_BLOCK,
                             bar, peer, HALF_BLOCK)
                bulk_to_peer(smem + SMEM_V + s * (BLOCK_N * 4) + pid_h * (ROWS * 4), bar, peer,
                             ROWS * 4)
            else:
                _store_rows(k_s, kr_s, v_s, s, raw0, raw1, raw2, raw3, sc0, sc1, sc2, sc3, rope,
                            valid, 0)
                fence_async_shared()
                mbarrier.arrive(k_ready.index(s), count=1)
            it += PRODUCERS
            t += PRODUCERS
        if PRODUCERS > 1:
            it = it_end
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1
    if PAIR:
        # the peer's consumers release every tile here too (remote arrives on k_free): wait
        # for the last releases, so this CTA outlives every access the peer makes to it
        for j in gl.static_range(STAGES):
            mbarrier.wait(k_free.index((it + j) % STAGES), (((it + j) // STAGES) & 1) ^ 1)


@gluon.jit
def _softmax_partition(q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                       p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
                       out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk,
                       stride_ob, stride_ot, stride_oh, stride_lb, stride_lt, stride_lh,
                       stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece, stride_la_t,
                       D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                       OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                       HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
                       STAGES: gl.constexpr, PAIR: gl.constexpr = False,
                       SMEM_FREE: gl.constexpr = 0):
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, D_HALF, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_s = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_s)
    mask_s = head_s < h_q
    sink2 = gl.zeros([BLOCK_H], gl.float32, layout=row_s)  # read only with a sink
    if HAS_SINK:
        sink2 = gl.load(sink_ptr + head_s, mask=mask_s, other=float("-inf")) * LOG2E
    head_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=row_o)
    mask_o = head_o < h_q
    offs_d = gl.arange(0, D_HALF, layout=col_o)
    if PAIR:  # no partition starts before both CTAs' barriers are initialised
        cluster_sync()
        free_peer = smem_base() + SMEM_FREE

    it = 0
    msg = 0
    rq = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        mbarrier.wait(q_ready, rq & 1)
        m_i = gl.full([BLOCK_H], MAX_SENTINEL, gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_s)
        acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            k0 = k_s.index(2 * s)
            sc = issue_scores(q_s, qr_s, k_s, kr_s, s, s_layout, BLOCK_H, BLOCK_N)
            valid = gl.expand_dims(v_s.index(s).load(col_s) != 0, 0)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            # Q is read only by S = Q·Kᵀ: free it after the request's last tile of scores, so
            # the next request's Q loads under this tile's softmax and P·V
            mbarrier.arrive(q_free, count=1, pred=t == t_hi - 1)
            sc = gl.where(valid, sc * scale_log2, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            p = gl.exp2(sc - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            p16 = p.to(k_s.dtype)
            # hand P and the rescale factors to the PV warpgroup
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
            if PAIR:  # the peer's producer copies its half rows into this stage too
                arrive_peer(free_peer + 8 * s, 1 - pid_h)
            it += 1
            t += 1
        # a request with no index tile in this part: Q was never read
        mbarrier.arrive(q_free, count=1, pred=t_hi <= t_lo)
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part, OVERHEAD)
        has_keys, lse2, fin = _request_factors(l_i, m_i, whole, sink2, HAS_SINK)
        # final message of the request: the factor of each output row, for the PV warpgroup
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(fin)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_half(acc, gl.convert_layout(fin, row_o), r, tok, head_o, mask_o, offs_d, whole,
                    split, piece, out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh, stride_oa_piece,
                    stride_oa_t, stride_oa_h)
        _store_lse(has_keys, lse2, r, tok, head_s, mask_s, whole, split, piece, lse_ptr,
                   lse_acc_ptr, stride_lb, stride_lt, stride_lh, stride_la_piece, stride_la_t)
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _softmax_partition_swapped(q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
                         p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
                         out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk,
                         stride_ob, stride_ot, stride_oh, stride_lb, stride_lt, stride_lh,
                         stride_oa_piece, stride_oa_t, stride_oa_h, stride_la_piece,
                         stride_la_t,
                         D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                         OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                         HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
                         STAGES: gl.constexpr):
    """The softmax warpgroup of the swapped product (h_q <= 16): Sᵀ = K·Qᵀ [slots, heads],
    the online softmax over axis 0, Pᵀ to the PV warpgroup, Oᵀ_L += Vᵀ[:256, :]·Pᵀ."""
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
    sink2 = gl.zeros([BLOCK_H], gl.float32, layout=head_sl)  # read only with a sink
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
            st = issue_scores(q_s, qr_s, k_s, kr_s, s, s_layout, BLOCK_H, BLOCK_N, SWAP=True)
            valid = gl.expand_dims(v_s.index(s).load(key_s) != 0, 1)
            st = warpgroup_mma_wait(num_outstanding=0, deps=(st,))
            # Q is read only by Sᵀ = K·Qᵀ: free it after the request's last tile of scores
            mbarrier.arrive(q_free, count=1, pred=t == t_hi - 1)
            st = gl.where(valid, st * scale_log2, float("-inf"))
            # online softmax; Pᵀ and the rescale factors to the PV warpgroup; own half of O
            m_i, l_i, acc, msg = swapped_softmax_step(st, m_i, l_i, acc, k0, p_s, a_s, p_free,
                                                      p_ready, k_free.index(s), msg, head_ol)
            it += 1
            t += 1
        # a request with no index tile in this part: Q was never read
        mbarrier.arrive(q_free, count=1, pred=t_hi <= t_lo)
        whole, split, piece = _pieces(num_splits_ptr, r, line_pos, n_sched, payload, pid_part,
                                      OVERHEAD)
        has_keys, lse2, fin = _request_factors(l_i, m_i, whole, sink2, HAS_SINK)
        # final message of the request: the factor of each output row, for the PV warpgroup
        mbarrier.wait(p_free, (msg & 1) ^ 1)
        a_s.store(fin)
        mbarrier.arrive(p_ready, count=1)
        msg += 1
        _store_half(acc, gl.convert_layout(fin, head_ol), r, tok, head_o, mask_o, offs_d, whole,
                    split, piece, out_ptr, o_acc_ptr, stride_ob, stride_ot, stride_oh,
                    stride_oa_piece, stride_oa_t, stride_oa_h, ROW_AXIS=1)
        _store_lse(has_keys, lse2, r, tok, head_s, mask_s, whole, split, piece, lse_ptr,
                   lse_acc_ptr, stride_lb, stride_lt, stride_lh, stride_la_piece, stride_la_t)
        line_pos += OVERHEAD + n_sched
        rq += 1
        r += 1


@gluon.jit
def _pv_partition(k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr, meta_ptr,
                  num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk,
                  stride_ob, stride_ot, stride_oh, stride_oa_piece, stride_oa_t, stride_oa_h,
                  D_HALF: gl.constexpr, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
                  OVERHEAD: gl.constexpr, META_COLS: gl.constexpr,
                  HAS_TOPK_LEN: gl.constexpr, STAGES: gl.constexpr, SWAP: gl.constexpr = False,
                  PAIR: gl.constexpr = False, SMEM_FREE: gl.constexpr = 0):
    """O_R = O_R·α + P·V[:, 256:] (SWAP: Oᵀ_R = Oᵀ_R·α + Vᵀ[256:, :]·Pᵀ, heads along axis 1)."""
    HEAD_AXIS: gl.constexpr = 1 if SWAP else 0
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_H if SWAP else D_HALF, 16])
    head_ol: gl.constexpr = gl.SliceLayout(1 - HEAD_AXIS, o_layout)
    d_o: gl.constexpr = gl.SliceLayout(HEAD_AXIS, o_layout)
    pid_h = gl.program_id(0)
    tok = gl.program_id(1)
    pid_part = gl.program_id(2)
    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(
        meta_ptr, pid_part, META_COLS)
    head_o = pid_h * BLOCK_H + gl.arange(0, BLOCK_H, layout=head_ol)
    mask_o = head_o < h_q
    offs_d = D_HALF + gl.arange(0, D_HALF, layout=d_o)
    if PAIR:  # no partition starts before both CTAs' barriers are initialised
        cluster_sync()
        free_peer = smem_base() + SMEM_FREE
    it = 0
    msg = 0
    r = begin_req
    while r <= end_req:
        length, n_sched, t_lo, t_hi = _request_tiles(topk_len_ptr, r, topk, line_pos, part_lo,
                                                     part_hi, HAS_TOPK_LEN, BLOCK_N, OVERHEAD)
        if SWAP:
            acc = gl.zeros([D_HALF, BLOCK_H], gl.float32, layout=o_layout)
        else:
            acc = gl.zeros([BLOCK_H, D_HALF], gl.float32, layout=o_layout)
        t = t_lo
        while t < t_hi:
            s = it % STAGES
            mbarrier.wait(k_ready.index(s), (it // STAGES) & 1)
            mbarrier.wait(p_ready, msg & 1)
            alpha = a_s.load(head_ol)
            acc = acc * gl.expand_dims(alpha, 1 - HEAD_AXIS)
            if SWAP:
                acc = warpgroup_mma(k_s.index(2 * s + 1).permute((1, 0)), p_s, acc,
                                    is_async=True)
            else:
                acc = warpgroup_mma(p_s, k_s.index(2 * s + 1), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(p_free, count=1)
            mbarrier.arrive(k_free.index(s), count=1)
            if PAIR:
                arrive_peer(free_peer + 8 * s, 1 - pid_h)
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
                    stride_oa_h, ROW_AXIS=HEAD_AXIS)
        line_pos += OVERHEAD + n_sched
        r += 1


@gluon.jit
def _sparse_decode_gluon_kernel(
    q_desc, qr_desc, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2, s_q, h_q, topk, num_tokens,
    stride_kp,  # k_cache bytes between pages
    stride_ib, stride_it,  # indices [b, s_q, topk], last dim 1
    stride_ob, stride_ot, stride_oh,  # out [b, s_q, h_q, 512], last dim 1
    stride_lb, stride_lt, stride_lh,  # lse [b, s_q, h_q]
    stride_oa_piece, stride_oa_t, stride_oa_h,  # o_acc [pieces, s_q, h_q, 512], last dim 1
    stride_la_piece, stride_la_t,  # lse_acc [pieces, s_q, h_q], last dim 1
    PAGE_SIZE: gl.constexpr, D_HALF: gl.constexpr, D_ROPE: gl.constexpr,
    BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, OVERHEAD: gl.constexpr,
    META_COLS: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    STAGES: gl.constexpr, PV_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
    PRODUCER_WARPS: gl.constexpr, PREFETCH: gl.constexpr = True,
    SWAP: gl.constexpr = False, PAIR: gl.constexpr = False,
    SMEM_K: gl.constexpr = 0, SMEM_KR: gl.constexpr = 0, SMEM_V: gl.constexpr = 0,
    SMEM_READY: gl.constexpr = 0, SMEM_FREE: gl.constexpr = 0,
):
    # PAIR (two head blocks a token, launched as clusters of two CTAs by
    # ``_gluon_cluster.launch_pair``): the CTAs share each key tile, each gathering and
    # dequantizing half of it (see ``_producer_partition``); SMEM_*: the shared offsets of the
    # buffers the peer writes into or arrives on, found by the launcher
    # SWAP (h_q <= 16, BLOCK_H = 16): the swapped product, with two producer partitions taking
    # alternate tiles (each fills its own ring stage)
    gl.static_assert(not SWAP or STAGES == 2)
    dtype: gl.constexpr = gl.bfloat16
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_HALF], dtype)
    kr_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D_ROPE], dtype)
    q_s = gl.allocate_shared_memory(dtype, [2, BLOCK_H, D_HALF], q_desc.layout)
    qr_s = gl.allocate_shared_memory(dtype, [BLOCK_H, D_ROPE], qr_desc.layout)
    k_s = gl.allocate_shared_memory(dtype, [2 * STAGES, BLOCK_N, D_HALF], k_layout)
    kr_s = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D_ROPE], kr_layout)
    v_s = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    if SWAP:  # Pᵀ
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_H], dtype)
        p_s = gl.allocate_shared_memory(dtype, [BLOCK_N, BLOCK_H], p_layout)
    else:
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
        p_s = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_layout)
    a_s = gl.allocate_shared_memory(gl.float32, [BLOCK_H],
                                    gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready, q_free, p_ready, p_free, k_ready, k_free = handoff_barriers(
        STAGES, 1, 1, 4 if PAIR else 2)
    fence_async_shared()

    # (argument tuples written out in each call: a tuple held in a variable loses the
    # constexpr-ness of its members)
    if SWAP:
        gl.warp_specialize([
            (_softmax_partition_swapped, (q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
              p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr, out_ptr,
              lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk, stride_ob, stride_ot,
              stride_oh, stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t,
              stride_oa_h, stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, HAS_SINK, STAGES)),
            (_pv_partition, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr, meta_ptr,
              num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk, stride_ob, stride_ot, stride_oh,
              stride_oa_piece, stride_oa_t, stride_oa_h, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, STAGES, SWAP)),
            (_producer_partition, (q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free, k_ready,
              k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk, num_tokens,
              stride_kp, stride_ib, stride_it, D_HALF, BLOCK_H, BLOCK_N, PAGE_SIZE, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, STAGES, PRODUCER_WARPS, PREFETCH, 2, 0)),
            (_producer_partition, (q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free, k_ready,
              k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk, num_tokens,
              stride_kp, stride_ib, stride_it, D_HALF, BLOCK_H, BLOCK_N, PAGE_SIZE, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, STAGES, PRODUCER_WARPS, PREFETCH, 2, 1)),
        ], [4, PRODUCER_WARPS, PRODUCER_WARPS], [PV_REGS, PRODUCER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_softmax_partition, (q_s, qr_s, k_s, kr_s, v_s, p_s, a_s, q_ready, q_free, k_ready, k_free,
              p_ready, p_free, topk_len_ptr, sink_ptr, meta_ptr, num_splits_ptr, out_ptr,
              lse_ptr, o_acc_ptr, lse_acc_ptr, scale_log2, h_q, topk, stride_ob, stride_ot,
              stride_oh, stride_lb, stride_lt, stride_lh, stride_oa_piece, stride_oa_t,
              stride_oa_h, stride_la_piece, stride_la_t, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, HAS_SINK, STAGES, PAIR, SMEM_FREE)),
            (_pv_partition, (k_s, p_s, a_s, k_ready, k_free, p_ready, p_free, topk_len_ptr, meta_ptr,
              num_splits_ptr, out_ptr, o_acc_ptr, h_q, topk, stride_ob, stride_ot, stride_oh,
              stride_oa_piece, stride_oa_t, stride_oa_h, D_HALF, BLOCK_H, BLOCK_N, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, STAGES, SWAP, PAIR, SMEM_FREE)),
            (_producer_partition, (q_desc, qr_desc, q_s, qr_s, k_s, kr_s, v_s, q_ready, q_free, k_ready,
              k_free, k_ptr, idx_ptr, topk_len_ptr, meta_ptr, s_q, h_q, topk, num_tokens,
              stride_kp, stride_ib, stride_it, D_HALF, BLOCK_H, BLOCK_N, PAGE_SIZE, OVERHEAD,
              META_COLS, HAS_TOPK_LEN, STAGES, PRODUCER_WARPS, PREFETCH, 1, 0, PAIR, SMEM_K,
              SMEM_KR, SMEM_V, SMEM_READY)),
        ], [4, PRODUCER_WARPS], [PV_REGS, PRODUCER_REGS])
