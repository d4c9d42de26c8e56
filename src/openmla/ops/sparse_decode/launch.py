"""Launch the portable sparse-decode kernel: schedule (when the meta object has none) → split
kernel → combine, each a torch.library op. No host synchronisation anywhere."""
from __future__ import annotations

import math

import torch

from ... import _library
from ...device import device_info, interpreting
from ...errors import ArgumentValueError
from ...kvcache.fp8 import fp8_format
from ..combine.launch import decode_combine, decode_outputs
from ..schedule.ref import META_COLS, REQUEST_OVERHEAD
from .config import SCHED_N, pick_config
from .kernel import _sparse_decode_kernel

LOG2E = 1.0 / math.log(2.0)
# the kernel reads V32 scales as fp32 and RoPE values as bf16 straight from the byte cache
_ELEMENT_ALIGN = {576: 4, 512: 2}


def schedule_lengths(b: int, topk: int, topk_length: torch.Tensor | None,
                     extra_topk: int | None, extra_topk_length: torch.Tensor | None,
                     device: torch.device) -> torch.Tensor:
    """Per-request lengths the schedule splits (SPEC §3.1), int32 ``[b]``, on the device:
    ``T = topk_length`` (or topk); with an extra cache ``roundup(max(T, 1), 64) + T'``."""
    if topk_length is None:
        length = torch.full((b,), topk, dtype=torch.int32, device=device)
    else:
        length = topk_length.clamp(0, topk).to(torch.int32)
    if extra_topk is None:
        return length
    main = (length.clamp(min=1) + SCHED_N - 1) // SCHED_N * SCHED_N
    if extra_topk_length is None:
        return (main + extra_topk).to(torch.int32)
    return (main + extra_topk_length.clamp(0, extra_topk)).to(torch.int32)


def _check_alignment(name: str, cache: torch.Tensor, d_qk: int) -> None:
    align = _ELEMENT_ALIGN[d_qk]
    stride0 = cache.stride(0) * cache.element_size()
    if cache.data_ptr() % align or (cache.shape[0] > 1 and stride0 % align):
        raise ArgumentValueError(
            f"{name}: expected a base address and block stride (dim 0) that are multiples of "
            f"{align} bytes (the kernel loads the {fp8_format(d_qk).name} scales and RoPE values "
            f"in place), got address {cache.data_ptr()} and stride {stride0}; use the reference "
            f"backend (OPENMLA_BACKEND_SPARSE_DECODE=reference) for such a cache")


def sparse_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor,
                         softmax_scale: float, head_dim_v: int,
                         attn_sink: torch.Tensor | None = None,
                         topk_length: torch.Tensor | None = None,
                         extra_k_cache: torch.Tensor | None = None,
                         extra_indices_in_kvcache: torch.Tensor | None = None,
                         extra_topk_length: torch.Tensor | None = None,
                         sched=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend entry: picks the launch configuration, reuses or computes the schedule (and
    stores it in ``sched``, a FlashMLASchedMeta, for the next layers of the step).

    Returns ``out [b, s_q, h_q, 512]`` bf16 and ``lse [b, h_q, s_q]`` float32, a transposed view
    of a contiguous ``[b, s_q, h_q]`` buffer (FlashMLA's layout)."""
    b, s_q, h_q, d_qk = q.shape
    cfg = pick_config(h_q, s_q, device_info(q.device))
    meta = num_splits = None
    if sched is not None and sched.tile_scheduler_metadata is not None:
        meta, num_splits = sched.tile_scheduler_metadata, sched.num_splits
        if meta.shape[0] != cfg.num_parts or meta.device != q.device:
            meta = None  # made for another device or launch shape: schedule again
    if meta is None:
        extra_topk = (extra_indices_in_kvcache.shape[-1]
                      if extra_indices_in_kvcache is not None else None)
        lengths = schedule_lengths(b, indices.shape[-1], topk_length, extra_topk,
                                   extra_topk_length, q.device)
        meta, num_splits = _library.ops.decode_schedule(lengths, cfg.num_parts)
        if sched is not None:
            sched.tile_scheduler_metadata, sched.num_splits = meta, num_splits
    out, lse = _library.ops.sparse_decode(
        q, k_cache, indices, meta, num_splits, softmax_scale, head_dim_v, attn_sink,
        topk_length, extra_k_cache, extra_indices_in_kvcache, extra_topk_length,
        cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_stages)
    return out, lse.transpose(1, 2)


def outputs(q: torch.Tensor, head_dim_v: int, num_parts: int):
    """bf16 out and lse ``[b, s_q, h_q]`` (the public lse is its transposed view), with the
    accumulators, as every sparse-decode split kernel writes them."""
    return decode_outputs(q, head_dim_v, num_parts, torch.bfloat16, lse_heads_first=False)


def sparse_decode_kernels(q, k_cache, indices, meta, num_splits, softmax_scale, head_dim_v,
                          attn_sink, topk_length, extra_k_cache, extra_indices_in_kvcache,
                          extra_topk_length, block_h, block_n, num_warps, num_stages):
    """Split kernel and combine for one call (the body of the ``openmla::sparse_decode`` op).

    Returns ``out [b, s_q, h_q, head_dim_v]`` bf16 and ``lse [b, s_q, h_q]`` float32, both
    contiguous (the public layout of lse is the ``[b, h_q, s_q]`` transposed view)."""
    b, s_q, h_q, d_qk = q.shape
    fmt = fp8_format(d_qk)
    _check_alignment("k_cache", k_cache, d_qk)  # here, on real tensors (addresses)
    if extra_k_cache is not None:
        _check_alignment("extra_k_cache", extra_k_cache, d_qk)
    num_parts = meta.shape[0]
    out, lse, o_acc, lse_acc = outputs(q, head_dim_v, num_parts)
    kc = k_cache.view(torch.uint8)
    has_extra = extra_k_cache is not None
    ekc = extra_k_cache.view(torch.uint8) if has_extra else kc
    e_idx = extra_indices_in_kvcache if has_extra else indices
    grid = (-(-h_q // block_h), s_q, num_parts)
    _sparse_decode_kernel[grid](
        q, kc, indices, topk_length if topk_length is not None else indices,
        ekc, e_idx, extra_topk_length if extra_topk_length is not None else indices,
        attn_sink if attn_sink is not None else lse,
        meta, num_splits,
        out, lse, o_acc, lse_acc,
        softmax_scale * LOG2E,
        h_q, indices.shape[-1], e_idx.shape[-1], kc.shape[0] * kc.shape[1],
        ekc.shape[0] * ekc.shape[1],
        q.stride(0), q.stride(1), q.stride(2),
        kc.stride(0),
        indices.stride(0), indices.stride(1),
        ekc.stride(0), e_idx.stride(0), e_idx.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        o_acc.stride(0), o_acc.stride(1), o_acc.stride(2),
        lse_acc.stride(0), lse_acc.stride(1),
        PAGE_SIZE=kc.shape[1], EXTRA_PAGE_SIZE=ekc.shape[1], MODEL1=fmt.block_interleaved,
        HAS_TOPK_LEN=topk_length is not None, HAS_EXTRA=has_extra,
        HAS_EXTRA_TOPK_LEN=has_extra and extra_topk_length is not None,
        HAS_SINK=attn_sink is not None,
        BLOCK_H=block_h, BLOCK_N=block_n, SCHED_N=SCHED_N, OVERHEAD=REQUEST_OVERHEAD,
        META_COLS=META_COLS, UPCAST_DOT=interpreting(), ROUND_OUT=interpreting(),
        num_warps=num_warps, num_stages=num_stages)
    decode_combine(o_acc, lse_acc, num_splits, out, lse.transpose(1, 2), attn_sink)
    return out, lse
