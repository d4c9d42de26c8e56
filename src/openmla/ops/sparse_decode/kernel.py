"""Portable Triton kernel of sparse MLA decode over an FP8 KV cache (split KV over a
device-computed schedule).

Program (head tile, query token t, part p) walks the requests of part p (``ops/schedule``). For
each it loads BLOCK_H heads of token t's query once, then walks the request's 64-slot blocks of
its range: main-cache slots ``indices[r, t, :T]`` first, then the extra cache's slots. A tile
gathers the tokens its indices name with per-row pointers, dequantizes them in registers
(fp8 → fp32 × tile scale → bf16, as ``kvcache.fp8.gather_dequant``), and runs online softmax in
base 2 (finite running-max sentinel) with bf16 MMAs and fp32 accumulation. The 512 value dims
are kept as two 256-wide halves (two accumulators, as FlashMLA's two consumer warpgroups).

Layouts (SPEC §2.4): V32 (d_qk 576) token = 512 fp8 + 4 fp32 scales (one per 128 dims) + 64 bf16
RoPE at ``page * stride0 + row * 656``; K = all 576 dims, V = the 512 NoPE dims. MODEL1 (d_qk
512) page = ``pbs`` rows of 576 bytes (448 fp8 + 64 bf16 RoPE), then ``pbs`` rows of 8 bytes (7
UE8M0 scales, one per 64 dims); K = V = all 512 dims (RoPE in the last 64 of the second half).
Invalid slots (index < 0, >= num_blocks * pbs, or at a position >= the length) are never
dereferenced: their loads are masked to 0 and their scores to -inf.

A request the schedule kept in one piece gets its final output (sink applied) and natural-log lse
here; a split one writes its piece (locally normalised output, base-2 lse) for the combine.
"""
import triton
import triton.language as tl

from .._triton_utils import round_to_bf16_grid, schedule_part, softmax_pv_step

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
MAX_SENTINEL = tl.constexpr(-1.0e30)  # finite running-max start: no -inf - -inf in exp2

TILE = tl.constexpr(64)  # dims per dequantization tile (MODEL1 scale granularity)
TILES_PER_HALF = tl.constexpr(4)  # a 256-wide half of the value dims = 4 tiles
D_HALF = tl.constexpr(256)
D_ROPE = tl.constexpr(64)
# V32: 656 bytes per token
V32_TOKEN_BYTES = tl.constexpr(656)
V32_SCALE_OFFSET = tl.constexpr(512)  # 4 fp32 scales
V32_ROPE_OFFSET = tl.constexpr(528)  # 64 bf16
V32_TILES_PER_SCALE = tl.constexpr(2)  # one scale per 128 dims
# MODEL1: page = PAGE_SIZE rows of 576 bytes, then PAGE_SIZE rows of 8 scale bytes
M1_ROW_BYTES = tl.constexpr(576)
M1_ROPE_OFFSET = tl.constexpr(448)  # in the row, after the 448 fp8 bytes
M1_SCALE_BYTES = tl.constexpr(8)  # 7 UE8M0 scales + 1 pad byte
M1_NOPE_TILES = tl.constexpr(7)  # 448 / 64; the 8th tile of the value is the RoPE part
UE8M0_BIAS = tl.constexpr(127)
FP32_MANTISSA_BITS = tl.constexpr(23)
FP32_BITS_2_POW_M127 = tl.constexpr(0x00400000)  # 2^-127, a subnormal float32 (UE8M0 byte 0)


@triton.jit
def _ue8m0_to_fp32(e):
    """UE8M0 bytes → float32 ``2^(e − 127)``, exactly (built in the exponent field)."""
    bits = e.to(tl.uint32) << FP32_MANTISSA_BITS
    bits = tl.where(e == 0, FP32_BITS_2_POW_M127, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dequant_half(cache_ptr, page_off, row, valid, HALF: tl.constexpr,
                  PAGE_SIZE: tl.constexpr, MODEL1: tl.constexpr, BLOCK_N: tl.constexpr,
                  ROUND: tl.constexpr):
    """Value dims ``[HALF * 256, HALF * 256 + 256)`` of BLOCK_N gathered tokens, bf16
    ``[BLOCK_N, 256]``; rows where ``valid`` is False are 0 and never read.

    ``page_off`` is the byte offset of each token's page (int64), ``row`` its row in the page.
    The half is handled as 4 tiles of 64 dims so each tile's scale broadcasts over its dims."""
    offs_t = HALF * TILES_PER_HALF + tl.arange(0, TILES_PER_HALF)  # [4] tile index in the token
    offs_c = tl.arange(0, TILE)  # [TILE]
    col = (offs_t * TILE)[None, :, None] + offs_c[None, None, :]  # [1, 4, TILE] fp8 byte
    if MODEL1:
        row_ptr = cache_ptr + page_off + row * M1_ROW_BYTES  # [BLOCK_N]
        is_nope = offs_t < M1_NOPE_TILES  # [4]
        raw = tl.load(row_ptr[:, None, None] + col,  # [BLOCK_N, 4, TILE] u8
                      mask=valid[:, None, None] & is_nope[None, :, None], other=0)
        s_ptr = cache_ptr + page_off + PAGE_SIZE * M1_ROW_BYTES + row * M1_SCALE_BYTES  # [BLOCK_N]
        e = tl.load(s_ptr[:, None] + offs_t[None, :],
                    mask=valid[:, None] & is_nope[None, :], other=UE8M0_BIAS)  # [BLOCK_N, 4] u8
        scale = _ue8m0_to_fp32(e)  # [BLOCK_N, 4]
    else:
        tok_ptr = cache_ptr + page_off + row * V32_TOKEN_BYTES  # [BLOCK_N]
        raw = tl.load(tok_ptr[:, None, None] + col,  # [BLOCK_N, 4, TILE] u8
                      mask=valid[:, None, None], other=0)
        s_ptr = (tok_ptr + V32_SCALE_OFFSET).to(tl.pointer_type(tl.float32))  # [BLOCK_N]
        scale = tl.load(s_ptr[:, None] + (offs_t // V32_TILES_PER_SCALE)[None, :],
                        mask=valid[:, None], other=0.0)  # [BLOCK_N, 4] fp32
    x = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale[:, :, None]  # [BLOCK_N, 4, TILE]
    if ROUND:
        x = round_to_bf16_grid(x)
    x = x.to(tl.bfloat16)
    if MODEL1:
        if HALF == 1:  # the last tile of the value is the bf16 RoPE part
            is_rope = offs_t == M1_NOPE_TILES  # [4]
            rope_ptr = (row_ptr + M1_ROPE_OFFSET).to(tl.pointer_type(tl.bfloat16))  # [BLOCK_N]
            rope = tl.load(rope_ptr[:, None, None] + (offs_c[None, None, :] + 0 * col),
                           mask=valid[:, None, None] & is_rope[None, :, None], other=0.0)
            x = tl.where(is_rope[None, :, None], rope, x)  # [BLOCK_N, 4, TILE]
    return tl.reshape(x, [BLOCK_N, D_HALF])


@triton.jit
def _attend_tile(acc0, acc1, m_i, l_i, q0, q1, qr, cache_ptr, idx_row, slot0, length,
                 num_tokens, stride_page, scale_log2,
                 PAGE_SIZE: tl.constexpr, MODEL1: tl.constexpr, BLOCK_N: tl.constexpr,
                 UPCAST_DOT: tl.constexpr, ROUND: tl.constexpr):
    """One tile of BLOCK_N index slots ``[slot0, slot0 + BLOCK_N)`` of one cache: gather,
    dequantize, scores, online softmax (base 2), ``acc += P·V``."""
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    slots = slot0 + offs_n
    in_len = slots < length
    idx = tl.load(idx_row + slots, mask=in_len, other=-1)  # [BLOCK_N] physical token
    valid = in_len & (idx >= 0) & (idx < num_tokens)
    p_tok = tl.where(valid, idx, 0).to(tl.int64)
    page = p_tok // PAGE_SIZE
    row = p_tok - page * PAGE_SIZE
    page_off = page * stride_page  # [BLOCK_N] int64 (page × stride can pass 2^31)
    k0 = _dequant_half(cache_ptr, page_off, row, valid, 0, PAGE_SIZE, MODEL1, BLOCK_N, ROUND)
    k1 = _dequant_half(cache_ptr, page_off, row, valid, 1, PAGE_SIZE, MODEL1, BLOCK_N, ROUND)
    if UPCAST_DOT:
        k0 = k0.to(tl.float32)
        k1 = k1.to(tl.float32)
    s = tl.dot(q0, tl.trans(k0))  # [BLOCK_H, BLOCK_N]
    s = tl.dot(q1, tl.trans(k1), s)
    if not MODEL1:  # V32 keys carry 64 RoPE dims beyond the value
        rope_ptr = (cache_ptr + page_off + row * V32_TOKEN_BYTES
                    + V32_ROPE_OFFSET).to(tl.pointer_type(tl.bfloat16))  # [BLOCK_N]
        kr = tl.load(rope_ptr[:, None] + tl.arange(0, D_ROPE)[None, :], mask=valid[:, None],
                     other=0.0)  # [BLOCK_N, D_ROPE]
        if UPCAST_DOT:
            kr = kr.to(tl.float32)
        s = tl.dot(qr, tl.trans(kr), s)
    m_new, l_i, acc0, acc1 = softmax_pv_step(s * scale_log2, valid[None, :], m_i, l_i, acc0,
                                             acc1, k0, k1, UPCAST_DOT)
    return acc0, acc1, m_new, l_i


@triton.jit
def _store_half(acc, inv, dst, offs_d, mask_h, ROUND: tl.constexpr):
    o = acc * inv[:, None]  # [BLOCK_H, D_HALF]
    if ROUND:
        o = round_to_bf16_grid(o)
    tl.store(dst[:, None] + offs_d[None, :], o.to(dst.dtype.element_ty), mask=mask_h[:, None])


@triton.jit
def _sparse_decode_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr,
    ek_ptr, eidx_ptr, etopk_len_ptr, sink_ptr,
    meta_ptr, num_splits_ptr,
    out_ptr, lse_ptr, o_acc_ptr, lse_acc_ptr,
    scale_log2,  # softmax_scale * log2(e)
    h_q, topk, extra_topk, num_tokens, extra_num_tokens,
    stride_qb, stride_qt, stride_qh,  # q [b, s_q, h_q, d_qk], last dim 1
    stride_kp,  # k_cache bytes between pages
    stride_ib, stride_it,  # indices [b, s_q, topk], last dim 1
    stride_ekp, stride_eib, stride_eit,  # the same for the extra cache
    stride_ob, stride_ot, stride_oh,  # out [b, s_q, h_q, 512], last dim 1
    stride_lb, stride_lt, stride_lh,  # lse [b, s_q, h_q]
    stride_oa_piece, stride_oa_t, stride_oa_h,  # o_acc [pieces, s_q, h_q, 512], last dim 1
    stride_la_piece, stride_la_t,  # lse_acc [pieces, s_q, h_q], last dim 1
    PAGE_SIZE: tl.constexpr, EXTRA_PAGE_SIZE: tl.constexpr,
    MODEL1: tl.constexpr,  # d_qk 512 layout (else V32, d_qk 576)
    HAS_TOPK_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_EXTRA_TOPK_LEN: tl.constexpr,
    HAS_SINK: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SCHED_N: tl.constexpr,
    OVERHEAD: tl.constexpr, META_COLS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    ROUND_OUT: tl.constexpr,  # round to bf16 by hand (interpreter casts truncate)
):
    pid_h = tl.program_id(0)
    tok = tl.program_id(1)
    pid_part = tl.program_id(2)
    SUB: tl.constexpr = SCHED_N // BLOCK_N  # tiles per scheduling block

    begin_req, end_req, line_pos, payload, part_lo, part_hi = schedule_part(meta_ptr, pid_part,
                                                                            META_COLS)

    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H] query heads of this tile
    mask_h = offs_h < h_q
    offs_d0 = tl.arange(0, D_HALF)  # [D_HALF]
    offs_d1 = D_HALF + tl.arange(0, D_HALF)
    if HAS_SINK:
        sink2 = tl.load(sink_ptr + offs_h, mask=mask_h, other=float("-inf")) * LOG2E  # [BLOCK_H]

    for r in range(begin_req, end_req + 1):
        r64 = tl.full([], 0, tl.int64) + r  # 64-bit row offsets
        length = tl.full([], 0, tl.int32) + topk  # main slots attended: T
        if HAS_TOPK_LEN:
            length = tl.minimum(tl.maximum(tl.load(topk_len_ptr + r), 0), topk)
        main_tiles = (length + BLOCK_N - 1) // BLOCK_N
        if HAS_EXTRA:
            e_length = tl.full([], 0, tl.int32) + extra_topk
            if HAS_EXTRA_TOPK_LEN:
                e_length = tl.minimum(tl.maximum(tl.load(etopk_len_ptr + r), 0), extra_topk)
            main_blocks = tl.maximum((length + SCHED_N - 1) // SCHED_N, 1)  # extra blocks follow
            n_sched = main_blocks + (e_length + SCHED_N - 1) // SCHED_N
        else:
            n_sched = tl.maximum((length + SCHED_N - 1) // SCHED_N, 1)
        # this part's scheduling blocks of request r
        blk_lo = tl.maximum(part_lo - line_pos - OVERHEAD, 0)
        blk_hi = tl.minimum(part_hi - line_pos - OVERHEAD, n_sched)

        q_row = q_ptr + r64 * stride_qb + tok * stride_qt + offs_h * stride_qh  # [BLOCK_H]
        q0 = tl.load(q_row[:, None] + offs_d0[None, :], mask=mask_h[:, None], other=0.0)
        q1 = tl.load(q_row[:, None] + offs_d1[None, :], mask=mask_h[:, None], other=0.0)
        if MODEL1:
            qr = q0  # unused: MODEL1 keys are the 512 value dims
        else:
            qr = tl.load(q_row[:, None] + 2 * D_HALF + tl.arange(0, D_ROPE)[None, :],
                         mask=mask_h[:, None], other=0.0)  # [BLOCK_H, D_ROPE]
        if UPCAST_DOT:
            q0 = q0.to(tl.float32)
            q1 = q1.to(tl.float32)
            qr = qr.to(tl.float32)
        m_i = tl.full([BLOCK_H], MAX_SENTINEL, tl.float32)
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc0 = tl.zeros([BLOCK_H, D_HALF], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_H, D_HALF], dtype=tl.float32)

        idx_row = idx_ptr + r64 * stride_ib + tok * stride_it
        for tile in range(blk_lo * SUB, tl.minimum(blk_hi * SUB, main_tiles)):
            acc0, acc1, m_i, l_i = _attend_tile(
                acc0, acc1, m_i, l_i, q0, q1, qr, k_ptr, idx_row, tile * BLOCK_N, length,
                num_tokens, stride_kp, scale_log2, PAGE_SIZE, MODEL1, BLOCK_N, UPCAST_DOT,
                ROUND_OUT)
        if HAS_EXTRA:
            e_idx_row = eidx_ptr + r64 * stride_eib + tok * stride_eit
            e_lo = tl.maximum(blk_lo - main_blocks, 0) * SUB
            e_hi = tl.minimum((blk_hi - main_blocks) * SUB, (e_length + BLOCK_N - 1) // BLOCK_N)
            for tile in range(e_lo, e_hi):
                acc0, acc1, m_i, l_i = _attend_tile(
                    acc0, acc1, m_i, l_i, q0, q1, qr, ek_ptr, e_idx_row, tile * BLOCK_N,
                    e_length, extra_num_tokens, stride_ekp, scale_log2, EXTRA_PAGE_SIZE, MODEL1,
                    BLOCK_N, UPCAST_DOT, ROUND_OUT)

        has_keys = l_i > 0.0
        safe_l = tl.where(has_keys, l_i, 1.0)
        lse2 = tl.where(has_keys, m_i + tl.log2(safe_l), float("-inf"))  # [BLOCK_H] base 2
        first_part = (line_pos + OVERHEAD) // payload
        last_part = (line_pos + OVERHEAD + n_sched - 1) // payload
        if first_part == last_part:  # one piece: final output and lse
            inv = 1.0 / safe_l  # acc is 0 where no key was seen
            if HAS_SINK:
                # out · 1 / (1 + 2^(σ·log2e − lse2)); σ = +inf → 0, lonely rows stay 0
                gap = sink2 - tl.where(has_keys, lse2, 0.0)  # no -inf - -inf in lonely rows
                inv = tl.where(has_keys, inv / (1.0 + tl.exp2(gap)), 0.0)
            o_row = out_ptr + r64 * stride_ob + tok * stride_ot + offs_h * stride_oh
            _store_half(acc0, inv, o_row, offs_d0, mask_h, ROUND_OUT)
            _store_half(acc1, inv, o_row, offs_d1, mask_h, ROUND_OUT)
            lse = tl.where(has_keys, lse2 * LN2, float("inf"))
            tl.store(lse_ptr + r64 * stride_lb + tok * stride_lt + offs_h * stride_lh, lse,
                     mask=mask_h)
        else:  # one piece of a split request: locally normalised output, base-2 lse
            piece = (tl.load(num_splits_ptr + r) + pid_part - first_part).to(tl.int64)
            oa_row = (o_acc_ptr + piece * stride_oa_piece + tok * stride_oa_t
                      + offs_h * stride_oa_h)  # [BLOCK_H]
            inv = 1.0 / safe_l
            _store_half(acc0, inv, oa_row, offs_d0, mask_h, False)
            _store_half(acc1, inv, oa_row, offs_d1, mask_h, False)
            tl.store(lse_acc_ptr + piece * stride_la_piece + tok * stride_la_t + offs_h, lse2,
                     mask=mask_h)
        line_pos += OVERHEAD + n_sched
