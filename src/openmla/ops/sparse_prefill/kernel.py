"""Portable Triton kernel of sparse MLA prefill (SPEC §2.3, §6.3).

Program (query token t, block of BLOCK_H heads) covers the token's whole top-k list: it loads
the heads' query rows once, then walks the index list in BLOCK_N-slot chunks, gathering the KV
rows the valid slots name (per-row pointers, masked: invalid slots read zeros and never touch
memory), scores ``Q·Kᵀ`` as a 512-wide dot plus, for d_qk 576, a 64-wide RoPE dot, and folds
them into an online softmax in base 2 with ``acc += P·V``, V being the same 512-wide tile. No
split over top-k, so max_logits, lse and the sink-scaled output are written directly.
"""
import triton
import triton.language as tl

from .._triton_utils import round_to_bf16_grid

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
MAX_SENTINEL = tl.constexpr(-1.0e30)  # running-max start: finite, so exp2(m_old - m_new) never sees -inf - -inf


@triton.jit
def _sparse_prefill_kernel(
    q_ptr, kv_ptr, indices_ptr, topk_length_ptr, sink_ptr,
    out_ptr, max_logits_ptr, lse_ptr,
    scale_log2,  # sm_scale * log2(e)
    s_kv, h_q, topk, n_head_blocks,
    stride_qt, stride_qh,  # q [s_q, h_q, D_NOPE + D_ROPE], last dim contiguous
    stride_kvs,  # kv [s_kv, 1, D_NOPE + D_ROPE], last dim contiguous
    stride_it,  # indices [s_q, 1, topk], last dim contiguous
    stride_tl,  # topk_length [s_q]
    stride_sink,  # attn_sink [h_q]
    stride_ot, stride_oh,  # out [s_q, h_q, D_NOPE], last dim contiguous
    stride_mt, stride_mh,  # max_logits [s_q, h_q]
    stride_lt, stride_lh,  # lse [s_q, h_q]
    D_NOPE: tl.constexpr,  # 512: the dims that are both K and V (all of d_qk 512)
    D_ROPE: tl.constexpr,  # 64 for d_qk 576 (K only), 0 for d_qk 512
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TOPK_LEN: tl.constexpr, HAS_SINK: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # fp32 dots (the interpreter's bf16 tl.dot is wrong)
    ROUND_OUT: tl.constexpr,  # round to bf16 by hand (interpreter casts truncate)
):
    # one flat grid axis, token-major: the head blocks of a token run side by side and share
    # its gathered KV rows in L2; axis 0 takes s_q * n_head_blocks up to 2^31 - 1
    pid = tl.program_id(0)
    tok = (pid // n_head_blocks).to(tl.int64)  # 64-bit: tok * stride_qt passes 2^31 at s_q 70000
    pid_h = pid % n_head_blocks

    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    mask_h = offs_h < h_q
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_dn = tl.arange(0, D_NOPE)  # [D_NOPE]

    q_row = q_ptr + tok * stride_qt + offs_h * stride_qh  # [BLOCK_H]
    q_nope = tl.load(q_row[:, None] + offs_dn[None, :], mask=mask_h[:, None],
                     other=0.0)  # [BLOCK_H, D_NOPE]
    if UPCAST_DOT:
        q_nope = q_nope.to(tl.float32)
    if D_ROPE > 0:
        offs_dr = D_NOPE + tl.arange(0, D_ROPE)  # [D_ROPE]
        q_rope = tl.load(q_row[:, None] + offs_dr[None, :], mask=mask_h[:, None],
                         other=0.0)  # [BLOCK_H, D_ROPE]
        if UPCAST_DOT:
            q_rope = q_rope.to(tl.float32)

    # slots past topk_length are ignored entirely (never loaded: they may hold garbage)
    n_slots = topk
    if HAS_TOPK_LEN:
        n_slots = tl.maximum(tl.minimum(tl.load(topk_length_ptr + tok * stride_tl), topk), 0)

    m_i = tl.full([BLOCK_H], MAX_SENTINEL, tl.float32)  # running max, base-2 units
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_H, D_NOPE], dtype=tl.float32)  # unnormalised P·V
    idx_row = indices_ptr + tok * stride_it
    for start in range(0, n_slots, BLOCK_N):
        slots = start + offs_n  # [BLOCK_N]
        in_list = slots < n_slots
        idx = tl.load(idx_row + slots, mask=in_list, other=-1)  # [BLOCK_N]
        valid = in_list & (idx >= 0) & (idx < s_kv)  # [BLOCK_N]
        kv_row = kv_ptr + idx.to(tl.int64) * stride_kvs  # [BLOCK_N]
        # invalid rows read as zeros: NaN in rows nobody references never reaches a dot
        k_nope = tl.load(kv_row[:, None] + offs_dn[None, :], mask=valid[:, None],
                         other=0.0)  # [BLOCK_N, D_NOPE]
        if UPCAST_DOT:
            k_nope = k_nope.to(tl.float32)
        s = tl.dot(q_nope, tl.trans(k_nope))  # [BLOCK_H, BLOCK_N]
        if D_ROPE > 0:
            k_rope = tl.load(kv_row[:, None] + offs_dr[None, :], mask=valid[:, None],
                             other=0.0)  # [BLOCK_N, D_ROPE]
            if UPCAST_DOT:
                k_rope = k_rope.to(tl.float32)
            s = tl.dot(q_rope, tl.trans(k_rope), s)
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))  # [BLOCK_H, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_H]
        p = tl.exp2(s - m_new[:, None])  # [BLOCK_H, BLOCK_N]; 0 at invalid slots
        alpha = tl.exp2(m_i - m_new)  # [BLOCK_H]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        if UPCAST_DOT:
            acc = tl.dot(p, k_nope, acc)  # [BLOCK_H, D_NOPE]
        else:
            acc = tl.dot(p.to(k_nope.dtype), k_nope, acc)
        m_i = m_new

    has_keys = l_i > 0.0  # [BLOCK_H] rows that saw at least one valid index
    safe_l = tl.where(has_keys, l_i, 1.0)
    lse2 = m_i + tl.log2(safe_l)  # [BLOCK_H] base-2 lse (meaningless where not has_keys)
    # lonely rows: acc is 0 (invalid rows were read as zeros) and safe_l is 1, so o is 0
    o = acc / safe_l[:, None]  # [BLOCK_H, D_NOPE]
    if HAS_SINK:
        # out · 1 / (1 + e^(σ - lse)): σ = +inf gives 0, σ = -inf gives 1; a lonely row takes
        # lse 0 here so the factor stays finite and its output 0 whatever the sink
        sink = tl.load(sink_ptr + offs_h * stride_sink, mask=mask_h, other=float("-inf"))
        factor = 1.0 / (1.0 + tl.exp2(sink * LOG2E - tl.where(has_keys, lse2, 0.0)))
        o = o * factor[:, None]
    if ROUND_OUT:
        o = round_to_bf16_grid(o)
    o_ptrs = out_ptr + tok * stride_ot + offs_h[:, None] * stride_oh + offs_dn[None, :]
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=mask_h[:, None])
    max_logits = tl.where(has_keys, m_i * LN2, float("-inf"))  # natural units
    lse = tl.where(has_keys, lse2 * LN2, float("inf"))
    tl.store(max_logits_ptr + tok * stride_mt + offs_h * stride_mh, max_logits, mask=mask_h)
    tl.store(lse_ptr + tok * stride_lt + offs_h * stride_lh, lse, mask=mask_h)
