"""Launch the portable sparse-prefill kernel: pick the configuration, then one
``openmla::sparse_prefill`` op (allocate → grid → kernel). No host synchronisation."""
from __future__ import annotations

import math

import torch

from ... import _library
from ...device import device_info, interpreting
from .config import pick_config
from .kernel import _sparse_prefill_kernel

LOG2E = 1.0 / math.log(2.0)
D_V = 512  # the kernel's V width: the first 512 dims of kv (all of them for d_qk 512)


def sparse_prefill_triton(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor,
                          sm_scale: float, d_v: int = D_V,
                          attn_sink: torch.Tensor | None = None,
                          topk_length: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backend entry (arguments already validated by ``flash_mla_sparse_fwd``)."""
    _, h_q, d_qk = q.shape
    cfg = pick_config(h_q, d_qk, indices.shape[-1], device_info(q.device))
    return _library.ops.sparse_prefill(q, kv, indices, attn_sink, topk_length, sm_scale, d_v,
                                       cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages)


def outputs(q: torch.Tensor, d_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``out [s_q, h_q, d_v]`` (q's dtype), ``max_logits`` and ``lse [s_q, h_q]`` float32, as
    every sparse-prefill kernel writes them (``d_v`` must be the kernels' V width)."""
    if d_v != D_V:
        raise ValueError(f"d_v: expected {D_V}, got {d_v}")
    s_q, h_q, _ = q.shape
    return (torch.empty(s_q, h_q, d_v, dtype=q.dtype, device=q.device),
            torch.empty(s_q, h_q, dtype=torch.float32, device=q.device),
            torch.empty(s_q, h_q, dtype=torch.float32, device=q.device))


def sparse_prefill_kernel(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, block_h,
                          block_n, num_warps, num_stages):
    """One kernel launch (the body of the ``openmla::sparse_prefill`` op)."""
    s_q, h_q, d_qk = q.shape
    s_kv = kv.shape[0]
    topk = indices.shape[-1]
    out, max_logits, lse = outputs(q, d_v)
    if s_q == 0:
        return out, max_logits, lse
    n_head_blocks = -(-h_q // block_h)
    # optional inputs: a placeholder pointer (never read) when absent
    sink = attn_sink if attn_sink is not None else lse
    lengths = topk_length if topk_length is not None else indices
    grid = (s_q * n_head_blocks,)
    _sparse_prefill_kernel[grid](
        q, kv, indices, lengths, sink,
        out, max_logits, lse,
        sm_scale * LOG2E,
        s_kv, h_q, topk, n_head_blocks,
        q.stride(0), q.stride(1),
        kv.stride(0),
        indices.stride(0),
        lengths.stride(0),
        sink.stride(0),
        out.stride(0), out.stride(1),
        max_logits.stride(0), max_logits.stride(1),
        lse.stride(0), lse.stride(1),
        D_NOPE=D_V, D_ROPE=d_qk - D_V,
        BLOCK_H=block_h, BLOCK_N=block_n,
        HAS_TOPK_LEN=topk_length is not None, HAS_SINK=attn_sink is not None,
        UPCAST_DOT=interpreting(), ROUND_OUT=interpreting() and q.dtype == torch.bfloat16,
        num_warps=num_warps, num_stages=num_stages)
    return out, max_logits, lse
