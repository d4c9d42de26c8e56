"""Launch configuration of the sparse-prefill kernel: a frozen dataclass chosen by a pure
heuristic of the shape and the device, so it can be tested without a GPU.

The numbers below are the design's starting point (SPEC §6.3), not yet measured: tuning on an
H100 / H200 comes later and each branch will then carry the number that justified it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

BLOCK_N = 64  # index slots per step of the top-k loop (FlashMLA's prefill steps by 64 too)
MIN_BLOCK_H = 16  # tl.dot needs M >= 16; fewer heads are masked rows of a 16-row tile
MAX_BLOCK_H = 64  # FlashMLA's CTA covers 64 heads; the [64, 512] fp32 accumulator fills 8 warps


@dataclass(frozen=True)
class SparsePrefillConfig:
    block_h: int  # query heads per program (power of two >= 16; rows past h_q masked)
    block_n: int  # index slots per step of the top-k loop
    num_warps: int
    num_stages: int


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def pick_config(h_q: int, d_qk: int, topk: int, info: DeviceInfo) -> SparsePrefillConfig:
    """Configuration for ``h_q`` query heads, head dim ``d_qk`` (512 or 576) and ``topk`` index
    slots per token on the device ``info`` (CPU: the interpreter, where only correctness
    matters)."""
    del d_qk, topk, info  # not used yet: no measurement distinguishes them so far
    # untuned: 64 heads amortise each gathered KV tile over the most query rows (one K tile
    # read per 64 heads, as FlashMLA); h_q 128 takes two programs per token
    block_h = min(_pow2_at_least(h_q, MIN_BLOCK_H), MAX_BLOCK_H)
    # untuned: 8 warps as dense decode, whose [64, 512] accumulator spilled at 4 warps
    return SparsePrefillConfig(block_h=block_h, block_n=BLOCK_N, num_warps=8, num_stages=2)
