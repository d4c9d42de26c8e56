"""Combine kernel: for each (request, query token, block of heads) whose request was split into
several pieces, merge the pieces' locally normalised outputs through their base-2 lse and write
the final output and natural-log lse. Requests with one piece were written by the split kernel.
With a sink σ the merged output is scaled by 1 / (1 + 2^(σ·log2e − G)) (sparse decode)."""
import triton
import triton.language as tl

from .._triton_utils import round_to_bf16_grid

LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _decode_combine_kernel(
    o_acc_ptr, lse_acc_ptr, num_splits_ptr, sink_ptr, out_ptr, lse_ptr,
    s_q, h_q,
    stride_oa_piece, stride_oa_t, stride_oa_h,  # o_acc [pieces, s_q, h_q, D_V], last dim 1
    stride_la_piece, stride_la_t,  # lse_acc [pieces, s_q, h_q], last dim 1
    stride_ob, stride_ot, stride_oh,  # out [b, s_q, h_q, D_V], last dim 1
    stride_lb, stride_lt, stride_lh,  # lse [b, h_q, s_q] (any strides)
    D_V: tl.constexpr, BLOCK_H: tl.constexpr, HAS_SINK: tl.constexpr,
    ROUND_OUT: tl.constexpr,  # round to bf16 by hand (interpreter casts truncate)
):
    pid_bt = tl.program_id(0)  # request * s_q + token (axis 0: no 65535 limit)
    pid_h = tl.program_id(1)
    r = pid_bt // s_q
    t = pid_bt % s_q
    first = tl.load(num_splits_ptr + r)
    n = tl.load(num_splits_ptr + r + 1) - first
    if n > 1:
        offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
        mask_h = offs_h < h_q
        offs_d = tl.arange(0, D_V)  # [D_V]
        la = lse_acc_ptr + t * stride_la_t + offs_h  # [BLOCK_H]
        m = tl.full([BLOCK_H], float("-inf"), tl.float32)
        for j in range(first, first + n):
            m = tl.maximum(m, tl.load(la + j * stride_la_piece, mask=mask_h, other=float("-inf")))
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        total = tl.zeros([BLOCK_H], dtype=tl.float32)
        for j in range(first, first + n):
            lse_j = tl.load(la + j * stride_la_piece, mask=mask_h, other=float("-inf"))
            total += tl.exp2(lse_j - m_safe)
        lonely = total == 0.0
        g = tl.where(lonely, float("inf"), tl.log2(tl.where(lonely, 1.0, total)) + m_safe)
        lse_nat = g * LN2  # sink-free, natural log; +inf when nothing was attended
        if HAS_SINK:
            sink2 = tl.load(sink_ptr + offs_h, mask=mask_h, other=float("-inf")) * LOG2E
            # G += lg(1 + 2^(σ - G)) = lg(2^G + 2^σ), computed stably
            hi = tl.maximum(g, sink2)
            lo = tl.minimum(g, sink2)
            same = hi == lo  # both +inf on a lonely row with a +inf sink: keep inf - inf out
            gap = tl.where(same, 0.0, lo) - tl.where(same, 0.0, hi)
            g_sink = hi + tl.log2(1.0 + tl.exp2(gap))
            g = tl.where(lonely, g, tl.where(sink2 == float("inf"), float("inf"), g_sink))
        acc = tl.zeros([BLOCK_H, D_V], dtype=tl.float32)
        oa = o_acc_ptr + t * stride_oa_t + offs_h[:, None] * stride_oa_h + offs_d[None, :]
        for j in range(first, first + n):
            lse_j = tl.load(la + j * stride_la_piece, mask=mask_h, other=float("-inf"))
            w = tl.where(lonely | (g == float("inf")), 0.0, tl.exp2(lse_j - g))  # [BLOCK_H]
            o_j = tl.load(oa + j * stride_oa_piece, mask=mask_h[:, None], other=0.0)
            acc += w[:, None] * o_j
        out = out_ptr + r * stride_ob + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
        if ROUND_OUT:
            acc = round_to_bf16_grid(acc)
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_h[:, None])
        tl.store(lse_ptr + r * stride_lb + t * stride_lt + offs_h * stride_lh, lse_nat, mask=mask_h)
