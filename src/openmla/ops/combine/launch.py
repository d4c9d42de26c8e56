"""Launch the combine kernel over every (request, token) and block of heads."""
from __future__ import annotations

import torch
import triton

from ...device import interpreting
from .._launch import launch
from .kernel import _decode_combine_kernel

COMBINE_BLOCK_H = 8  # heads per program: one warp per head, as FlashMLA's combine


def decode_outputs(q: torch.Tensor, head_dim_v: int, num_parts: int, out_dtype: torch.dtype,
                   lse_heads_first: bool):
    """What a decode split kernel writes and the combine reads: ``out [b, s_q, h_q, head_dim_v]``
    (``out_dtype``), ``lse`` float32 (``[b, h_q, s_q]`` when ``lse_heads_first``, else
    ``[b, s_q, h_q]``) and the split accumulators ``o_acc [b + P, s_q, h_q, head_dim_v]`` /
    ``lse_acc [b + P, s_q, h_q]`` float32 (b + P bounds the schedule's pieces)."""
    b, s_q, h_q, _ = q.shape
    pieces = b + num_parts
    lse_shape = (b, h_q, s_q) if lse_heads_first else (b, s_q, h_q)
    return (torch.empty(b, s_q, h_q, head_dim_v, dtype=out_dtype, device=q.device),
            torch.empty(lse_shape, dtype=torch.float32, device=q.device),
            torch.empty(pieces, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device),
            torch.empty(pieces, s_q, h_q, dtype=torch.float32, device=q.device))


def decode_combine(o_acc: torch.Tensor, lse_acc: torch.Tensor, num_splits: torch.Tensor,
                   out: torch.Tensor, lse: torch.Tensor,
                   attn_sink: torch.Tensor | None = None) -> None:
    """Merge split pieces into ``out [b, s_q, h_q, D_V]`` and ``lse [b, h_q, s_q]`` in place."""
    b, s_q, h_q, d_v = out.shape
    grid = (b * s_q, triton.cdiv(h_q, COMBINE_BLOCK_H))
    launch(_decode_combine_kernel, grid, (
        o_acc, lse_acc, num_splits, attn_sink if attn_sink is not None else lse_acc, out, lse,
        s_q, h_q,
        o_acc.stride(0), o_acc.stride(1), o_acc.stride(2),
        lse_acc.stride(0), lse_acc.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(2), lse.stride(1)),
        dict(D_V=d_v, BLOCK_H=COMBINE_BLOCK_H, HAS_SINK=attn_sink is not None,
             ROUND_OUT=interpreting() and out.dtype == torch.bfloat16, num_warps=4))
