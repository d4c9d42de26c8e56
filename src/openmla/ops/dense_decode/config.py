"""Launch configuration of the dense-decode kernels: a frozen dataclass chosen by a pure
heuristic of the shape and the device, so it can be tested without a GPU."""
from __future__ import annotations

from dataclasses import dataclass

from ...device import DeviceInfo

SCHED_N = 64  # keys per scheduling block, every decode path
INTERPRETER_PARTS = 3  # a few parts under the interpreter, so requests get split and combined
TMA_MIN_ARCH = 90  # tensor descriptors lower to the copy engine from Hopper on


@dataclass(frozen=True)
class DenseDecodeConfig:
    block_h: int  # query rows (token-major, then head) per program
    block_n: int  # keys per step of the inner loop (divides SCHED_N)
    num_warps: int
    num_stages: int
    num_parts: int  # split-KV partitions (grid axis 2)
    use_tma: bool  # Q / K through tensor descriptors (h_kv = 1, page size a multiple of block_n)


def _pow2_at_least(n: int, lo: int) -> int:
    p = lo
    while p < n:
        p *= 2
    return p


def pick_config(rows: int, h_kv: int, info: DeviceInfo, page_size: int = 64,
                ) -> DenseDecodeConfig:
    """``rows`` = s_q * h_q / h_kv query rows per KV head."""
    # tl.dot needs M >= 16; 64 rows amortise each K tile over the most heads
    block_h = min(_pow2_at_least(rows, 16), 64)
    # H200, b=128 s_k=8192: 4 warps spill heavily at every tile size (the [rows, 512] fp32
    # accumulator and the K tile as mma operands); 8 warps: h_q=16 0.62 of copy vs 0.59.
    num_warps = 8
    block_n = SCHED_N
    row_tiles = -(-rows // block_h)
    if info.num_sms > 0:
        num_parts = max(info.num_sms // h_kv // row_tiles, 1)
    else:
        num_parts = INTERPRETER_PARTS
    tma_device = info.kind == "cpu" or (info.arch >= TMA_MIN_ARCH and not info.is_hip)
    # descriptors pay when K tiles feed wgmma (64 rows: 292 vs 260 TFLOPS at s_q=2 h_q=128 on an
    # H200); with fewer rows the pointer kernel streams faster (h_q=16: 0.62 vs 0.45 of copy)
    use_tma = tma_device and h_kv == 1 and page_size % block_n == 0 and block_h >= 64
    return DenseDecodeConfig(block_h=block_h, block_n=block_n, num_warps=num_warps, num_stages=2,
                             num_parts=num_parts, use_tma=use_tma)
