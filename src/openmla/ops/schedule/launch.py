"""Launch the schedule kernel: ``(meta [P, 8], num_splits [b + 1])`` int32 on the device."""
from __future__ import annotations

import torch
import triton

from .kernel import _decode_schedule_kernel
from .ref import BLOCK_N, META_COLS, REQUEST_OVERHEAD

# Requests per step of the schedule kernel: [PARTS, CHUNK] comparisons live in registers (32: no spills at 256 parts).
SCHEDULE_CHUNK = 32


def decode_schedule(lengths: torch.Tensor, num_parts: int,
                    overhead: int = REQUEST_OVERHEAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Schedule ``lengths [b]`` (int32, keys per request) over ``num_parts`` parts."""
    b = lengths.shape[0]
    meta = torch.empty(num_parts, META_COLS, dtype=torch.int32, device=lengths.device)
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=lengths.device)
    _decode_schedule_kernel[(1,)](
        lengths, meta, num_splits, b, num_parts,
        BLOCK_N=BLOCK_N, OVERHEAD=overhead, META_COLS=META_COLS,
        CHUNK=min(SCHEDULE_CHUNK, triton.next_power_of_2(max(b, 1))),
        PARTS=triton.next_power_of_2(num_parts), num_warps=4)
    return meta, num_splits
