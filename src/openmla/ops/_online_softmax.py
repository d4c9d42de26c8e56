"""Online softmax over key chunks in float32, shared by the references of every op.

The references walk the keys in chunks so their memory stays bounded at production shapes;
this accumulator keeps the running max ``m``, the running sum ``l`` of ``exp(s - m)`` and the
unnormalised output ``acc`` of each query row, in natural-log units.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

NEG_INF = float("-inf")
POS_INF = float("inf")


class OnlineSoftmax:
    """Running softmax state for rows of shape ``rows``, output width ``d_v``."""

    def __init__(self, rows: tuple[int, ...], d_v: int, device: torch.device):
        self.m = torch.full(rows, NEG_INF, dtype=torch.float32, device=device)  # [*rows]
        self.l = torch.zeros(rows, dtype=torch.float32, device=device)  # [*rows]
        self.acc = torch.zeros(rows + (d_v,), dtype=torch.float32, device=device)  # [*rows, d_v]

    def update(self, scores: torch.Tensor, pv: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Fold in one chunk: ``scores`` ``[*rows, c]`` with -inf at masked keys; ``pv(p)`` maps
        probabilities ``[*rows, c]`` to ``p @ V`` ``[*rows, d_v]`` (V zeroed at masked keys)."""
        m_new = torch.maximum(self.m, scores.amax(dim=-1))  # [*rows]
        # rows that have seen no valid key yet keep a finite shift so exp never sees -inf - -inf
        shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(scores - shift.unsqueeze(-1))  # [*rows, c]; 0 at masked keys
        corr = torch.exp(self.m - shift)  # [*rows]; 0 while m is -inf
        self.l = self.l * corr + p.sum(dim=-1)
        self.acc = self.acc * corr.unsqueeze(-1) + pv(p)
        self.m = m_new

    @property
    def has_keys(self) -> torch.Tensor:
        """Rows that attended at least one key."""
        return self.l > 0

    def lse(self, lonely: float = POS_INF) -> torch.Tensor:
        """``ln Σ exp(s)`` per row (natural log); ``lonely`` where a row had no valid key."""
        safe_l = torch.where(self.has_keys, self.l, torch.ones_like(self.l))
        return torch.where(self.has_keys, self.m + torch.log(safe_l),
                           torch.full_like(self.l, lonely))

    def out(self, attn_sink: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised output ``[*rows, d_v]``; 0 for rows with no valid key. With a sink
        ``σ`` (broadcastable to rows) the output is scaled by ``1 / (1 + exp(σ - lse))``."""
        safe_l = torch.where(self.has_keys, self.l, torch.ones_like(self.l))
        out = self.acc / safe_l.unsqueeze(-1)
        if attn_sink is not None:
            lse = self.lse(lonely=POS_INF)
            # exp(σ - lse) = +inf for σ = +inf gives 0; σ = -inf gives factor 1
            factor = 1.0 / (1.0 + torch.exp(attn_sink.float() - lse))
            out = out * factor.unsqueeze(-1)
        return torch.where(self.has_keys.unsqueeze(-1), out, torch.zeros_like(out))


def chunk_size(total: int, elems_per_item: int, budget_elems: int, align: int = 1) -> int:
    """Largest chunk (a multiple of ``align``, at least ``align``, at most ``total``) whose
    working set ``chunk * elems_per_item`` fits in ``budget_elems``."""
    c = max(budget_elems // max(elems_per_item, 1), 1)
    c = max((c // align) * align, align)
    return max(min(c, total), 1)


# Working-set budget of one reference chunk, in float32 elements (256 MiB): keeps the references
# usable as the GPU correctness oracle at production shapes without running out of memory.
REF_BUDGET_ELEMS = 64 * 1024 * 1024

LOG2E = 1.0 / math.log(2.0)
