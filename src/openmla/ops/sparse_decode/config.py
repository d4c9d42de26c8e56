"""Launch configuration of the sparse-decode kernel: a frozen dataclass chosen by a pure heuristic
of the shape and the device, so it can be tested without a GPU.

The values below follow SPEC §6.2's Triton mapping and the dense-decode measurements
(``ops/dense_decode/config.py``); they are not yet tuned for this kernel. Tuning comes from GPU
runs (registers / spills from ``benchmarks/compile_sm90.py``, timings from the sweep) and each
changed branch must carry the measured number that justified it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

SCHED_N = 64  # index slots per scheduling block, every decode path
MIN_BLOCK_H = 16  # tl.dot needs M >= 16
MAX_BLOCK_H = 64  # a [64, 512] fp32 accumulator is 128 registers per thread at 8 warps
INTERPRETER_PARTS = 3  # a few parts under the interpreter, so requests get split and combined


@dataclass(frozen=True)
class SparseDecodeConfig:
    block_h: int  # query heads of one token per program
    block_n: int  # index slots per step of the inner loop (divides SCHED_N)
    num_warps: int
    num_stages: int
    num_parts: int  # split-KV partitions (grid axis 2)


def pick_config(h_q: int, s_q: int, info: DeviceInfo) -> SparseDecodeConfig:
    """Configuration for ``h_q`` heads and ``s_q`` query tokens per request on ``info``."""
    # every head of a token shares its gathered KV tile: as many heads per program as the
    # accumulator allows amortise the dequantization (SPEC §6.2: dequant-bound at 64 heads)
    block_h = min(max(MIN_BLOCK_H, 1 << (h_q - 1).bit_length()), MAX_BLOCK_H)
    head_tiles = -(-h_q // block_h)
    # grid (head_tiles, s_q, parts) fills the SMs once, as FlashMLA's SM90 sparse split:
    # max(num_SMs // s_q // (h_q / 64), 1)
    if info.num_sms > 0:
        num_parts = max(info.num_sms // (s_q * head_tiles), 1)
    else:
        num_parts = INTERPRETER_PARTS
    # 8 warps: the dense kernel's measured choice for the same [64, 512] fp32 accumulator.
    # ptxas for sm_90 (V32, 16-aligned strides): BLOCK_H 64 -> 255 registers, 812 B of spill
    # stores (wgmma); BLOCK_H 16 -> 128 B at 8 warps vs 1036 B at 4 warps (mma.sync).
    # num_stages 1: 144 KiB of shared memory; 2 stages spill less (520 B) but take 186 KiB.
    # Not timed yet: a GPU sweep decides between them.
    return SparseDecodeConfig(block_h=block_h, block_n=SCHED_N, num_warps=8, num_stages=1,
                              num_parts=num_parts)
