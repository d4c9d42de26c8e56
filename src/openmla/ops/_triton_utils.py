"""Small Triton helpers shared by the kernels."""
import triton
import triton.language as tl

BF16_LOW_BITS = tl.constexpr(0xFFFF0000)  # the bits of a float32 that survive in a bfloat16
BF16_HALF_ULP = tl.constexpr(0x7FFF)


@triton.jit
def round_to_bf16_grid(x):
    """Round float32 ``x`` to the nearest bfloat16 value (ties to even), still as float32.

    Under ``TRITON_INTERPRET=1`` a float32 → bfloat16 cast truncates; rounding first makes the
    cast exact there, so interpreted kernels round their outputs exactly as the GPU does."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + BF16_HALF_ULP)) & BF16_LOW_BITS
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def softmax_pv_step(s, valid, m_i, l_i, acc0, acc1, v0, v1, UPCAST_DOT: tl.constexpr):
    """One key tile of the online softmax (base 2): scores ``s`` (already scaled by log2 e) with
    ``valid`` masking, running max ``m_i`` and sum ``l_i``, and ``acc0 / acc1 += P·v0 / P·v1``
    for the two 256-wide halves of the output. Returns ``(m_new, l_i, acc0, acc1)``."""
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_H]
    p = tl.exp2(s - m_new[:, None])  # [BLOCK_H, BLOCK_N]
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if not UPCAST_DOT:
        p = p.to(v0.dtype)
    acc0 = tl.dot(p, v0, acc0 * alpha[:, None])  # [BLOCK_H, D_HALF]
    acc1 = tl.dot(p, v1, acc1 * alpha[:, None])
    return m_new, l_i, acc0, acc1


@triton.jit
def schedule_part(meta_ptr, pid_part, META_COLS: tl.constexpr):
    """Row ``pid_part`` of the split-KV schedule (``ops/schedule``): the part's first and last
    request, the first request's position on the schedule's line, the payload, and the part's
    interval ``[part_lo, part_hi)`` on that line."""
    meta = meta_ptr + pid_part * META_COLS
    payload = tl.load(meta + 3)
    part_lo = pid_part * payload
    return (tl.load(meta + 0), tl.load(meta + 1), tl.load(meta + 2), payload, part_lo,
            part_lo + payload)
