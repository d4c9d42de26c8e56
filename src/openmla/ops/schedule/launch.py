"""Launch the schedule kernel: ``(meta [P, 8], num_splits [b + 1])`` int32 on the device."""
from __future__ import annotations

import torch
import triton

from .._launch import launch
from .kernel import _decode_schedule_kernel
from .ref import BLOCK_N, META_COLS, REQUEST_OVERHEAD

# Requests per step of the schedule kernel: [PARTS, CHUNK] comparisons live in registers (32:
# no spills at 256 parts). Measured on an H200 (graph replay of the kernel alone, b=128): 10.3 us
# at 128 parts, 12.3 at 132; steps of 128 requests with 32 warps were slower (12.3 / 16.1).
SCHEDULE_CHUNK = 32


# How far below one CTA per SM a part count of whole requests may fall (the Gluon decode
# launches; measurements at their call sites).
WHOLE_REQUEST_MIN_FRACTION = 0.95


def whole_request_parts(b: int, max_parts: int,
                        min_fraction: float = WHOLE_REQUEST_MIN_FRACTION) -> int:
    """The largest split-KV part count of at least ``min_fraction * max_parts`` (and at most
    ``max_parts``) that is a multiple or an exact divisor of ``b``, else ``max_parts``: with
    equal-length requests every part then covers whole requests or equal pieces of one (no
    request split unevenly, no extra partial output and combine work)."""
    if b < 1 or max_parts < 1:
        return max(max_parts, 1)
    if b <= max_parts:
        even = max_parts // b * b  # each request in max_parts // b equal parts
    else:
        even = b // -(-b // max_parts)  # ceil(b / max_parts) requests a part, when exact
        if b % even:
            even = 0
    return even if even >= min_fraction * max_parts else max_parts


def decode_schedule(lengths: torch.Tensor, num_parts: int,
                    overhead: int = REQUEST_OVERHEAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Schedule ``lengths [b]`` (int32, keys per request) over ``num_parts`` parts."""
    b = lengths.shape[0]
    meta = torch.empty(num_parts, META_COLS, dtype=torch.int32, device=lengths.device)
    num_splits = torch.empty(b + 1, dtype=torch.int32, device=lengths.device)
    launch(_decode_schedule_kernel, (1,), (lengths, meta, num_splits, b, num_parts),
           dict(BLOCK_N=BLOCK_N, OVERHEAD=overhead, META_COLS=META_COLS,
                CHUNK=min(SCHEDULE_CHUNK, triton.next_power_of_2(max(b, 1))),
                PARTS=triton.next_power_of_2(num_parts), num_warps=4))
    return meta, num_splits
