"""Float32-free reference of the split-KV schedule: the executable spec of ``kernel.py``.

Work is laid on one line: request r occupies ``[S_r, S_r + c + n_r)`` where ``n_r`` is its
number of 64-token blocks (at least 1, so that empty requests still get a part that writes their
output) and the first ``c`` units stand for the fixed cost of starting a request. Part p of P
covers ``[p * payload, (p + 1) * payload)`` with ``payload = ceil(total / P)``: it processes the
blocks of every request whose block range ``[S_r + c, S_r + c + n_r)`` meets its interval.

Outputs (int32, what the kernels and FlashMLASchedMeta store):
* ``meta [P, 8]``: per part ``begin_req``, ``end_req`` (inclusive; ``end_req < begin_req`` for
  an empty part), ``S_begin`` (line position of begin_req), ``payload``, then zeros;
* ``num_splits [b + 1]``: prefix sums of the pieces each request is cut into; request r's
  pieces occupy accumulator slots ``num_splits[r] .. num_splits[r + 1] - 1``.
"""
from __future__ import annotations

import torch

BLOCK_N = 64  # tokens per scheduling block, every decode path
META_COLS = 8
# Fixed cost of a request in block units (FlashMLA's measured overhead of a piece).
REQUEST_OVERHEAD = 5


def schedule_ref(lengths: torch.Tensor, num_parts: int, overhead: int = REQUEST_OVERHEAD,
                 block_n: int = BLOCK_N) -> tuple[torch.Tensor, torch.Tensor]:
    """``lengths [b]`` (keys per request) → ``(meta [P, 8], num_splits [b + 1])`` int32."""
    n = torch.clamp((lengths.long() + block_n - 1) // block_n, min=1)  # [b]
    cost = n + overhead
    total = int(cost.sum())
    payload = -(-total // num_parts)
    s = torch.cumsum(cost, 0) - cost  # [b] exclusive prefix
    start, end = s + overhead, s + overhead + n
    pieces = (end - 1) // payload - start // payload + 1
    num_splits = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=lengths.device)
    num_splits[1:] = torch.cumsum(pieces, 0)
    x0 = torch.arange(num_parts, device=lengths.device) * payload  # [P]
    x1 = x0 + payload
    before = end[None, :] <= x0[:, None]  # [P, b]
    begin = before.sum(1)
    last = (start[None, :] < x1[:, None]).sum(1) - 1
    s_begin = (cost[None, :] * before).sum(1)
    meta = torch.zeros(num_parts, META_COLS, dtype=torch.int64, device=lengths.device)
    meta[:, 0], meta[:, 1], meta[:, 2], meta[:, 3] = begin, last, s_begin, payload
    return meta.to(torch.int32), num_splits.to(torch.int32)
