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
