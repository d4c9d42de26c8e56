"""Launch the schedule kernel: ``(meta [P, 8], num_splits [b + 1])`` int32 on the device."""
from __future__ import annotations

import torch
import triton

from .kernel import _decode_schedule_kernel
from .ref import BLOCK_N, META_COLS, REQUEST_OVERHEAD

# Requests per step of the schedule kernel: up to MAX_CHUNK, with enough warps that the
# [PARTS, CHUNK] comparisons take at most ELEMS_PER_THREAD registers a thread (no ptxas spills
# from 2 to 1024 parts, sm_90). b=128 with 128 parts is then one step per pass instead of
# four: each step waits for a global load and several cross-warp reductions.
MAX_CHUNK = 128
ELEMS_PER_THREAD = 16
MAX_WARPS = 32


def schedule_launch(b: int, num_parts: int) -> tuple[int, int, int]:
    """(PARTS, CHUNK, num_warps) of the schedule kernel for ``b`` requests and ``num_parts``."""
    parts = triton.next_power_of_2(max(num_parts, 1))
    chunk = min(triton.next_power_of_2(max(b, 1)), MAX_CHUNK,
                max(ELEMS_PER_THREAD * 32 * MAX_WARPS // parts, 1))
    warps = min(max(parts * chunk // (ELEMS_PER_THREAD * 32), 4), MAX_WARPS)
    return parts, chunk, warps


def whole_request_parts(b: int, max_parts: int, min_fraction: float = 0.95) -> int:
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
    parts, chunk, warps = schedule_launch(b, num_parts)
    _decode_schedule_kernel[(1,)](
        lengths, meta, num_splits, b, num_parts,
        BLOCK_N=BLOCK_N, OVERHEAD=overhead, META_COLS=META_COLS,
        CHUNK=chunk, PARTS=parts, num_warps=warps)
    return meta, num_splits
