"""Launch configuration of the portable dense-decode kernel: a frozen dataclass chosen by a pure
heuristic of the shape and the device, so it can be tested without a GPU."""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

BLOCK_N = 64  # keys per step: the scheduling block of every decode path
INTERPRETER_PARTS = 3


@dataclass(frozen=True)
class DenseDecodeConfig:
    block_h: int  # query rows (token-major, then head) per program
    num_warps: int
    num_stages: int
    num_parts: int  # split-KV partitions (grid axis 2)


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def pick_config(rows: int, h_kv: int, info: DeviceInfo) -> DenseDecodeConfig:
    """``rows`` = s_q * h_q / h_kv query rows per KV head."""
    # tl.dot needs M >= 16; 64 rows amortise each K tile over the most heads without spilling
    # the 64 x 512 fp32 accumulator (8 warps: 128 registers per thread for it).
    block_h = min(_pow2_at_least(rows, 16), 64)
    num_warps = 8 if block_h >= 64 else 4
    row_tiles = -(-rows // block_h)
    if info.num_sms > 0:
        num_parts = max(info.num_sms // h_kv // row_tiles, 1)
    else:
        # interpreter on a CPU: a few parts, so that requests get split and combined
        num_parts = INTERPRETER_PARTS
    return DenseDecodeConfig(block_h=block_h, num_warps=num_warps, num_stages=2,
                             num_parts=num_parts)
