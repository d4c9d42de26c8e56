"""Launch the portable dense-decode kernels: schedule (when the meta object has none) → split
kernel → combine, each a torch.library op. No host synchronisation anywhere."""
from __future__ import annotations

import math
import os

import torch

from ... import _library
from ...device import device_info, interpreting
from .._gluon_host import tma_descriptor
from .._launch import launch
from ..combine.launch import decode_combine, decode_outputs
from ..schedule.ref import META_COLS, REQUEST_OVERHEAD
from ..schedule.launch import whole_request_parts
from .config import SCHED_N, pick_config
from .kernel import _dense_decode_kernel, _dense_decode_tma_kernel

LOG2E = 1.0 / math.log(2.0)
GLUON_BLOCK_H = 64  # query rows per CTA: one wgmma M tile
GLUON_BLOCK_N = 64  # keys per tile
GLUON_STAGES = 2  # key-tile ring depth: Q (72 KiB) + 2 x K (72 KiB) + P fill 227 KiB of smem
GLUON_PV_REGS = 208  # registers a thread of the PV warpgroup keeps (its 64x256 fp32 accumulator: 128)
GLUON_LOAD_WARPS = 1  # warps of the TMA-issuing partition (4 is the variant to compare)
# At most SMALL_H_ROWS rows a request (s_q·h_q) run the swapped product (gluon_kernel.py with
# SWAP), with the rows as the MMA's N: 16, or 32 above 16 rows. It is the
# faster one there (H200, b=128 s_k=8192: 290 against 301 µs at h_q=16, 0.99 of the copy
# ceiling); OPENMLA_DENSE_GLUON_SMALL_H=0 keeps the 64-row kernel for comparisons
SMALL_H_ENV = "OPENMLA_DENSE_GLUON_SMALL_H"
SMALL_H_ROWS = 32
SMALL_H_PV_REGS = 208
GLUON_LOAD_REGS = 24  # the TMA-issuing warp needs few; 128 x (256 + 208 + 24) fits the 64K register file
# Requests of more than one 64-row tile (s_q·h_q > 64: the compute-bound shapes) run the seesaw
# kernel (gluon_seesaw_kernel.py: two peer warpgroups, each with its half of O and the S and
# softmax of every other key tile, the next pair's tiles prefetched into L2). H100, CUDA-graph
# replay, b=128: s_q=2 h_q=128 s_k=8192 causal 982 against 1038 us, s_q=1 h_q=128 521 against
# 531, s_k=1024 108.5 against 112.4, varlen ~4096 295.5 against 302.6; with one row tile
# (h_q=64, memory-bound) it lost (457.6 against 425.2), so those keep the default kernel.
# OPENMLA_DENSE_SEESAW=0 / 1 forces the choice for 64-row tiles (tests, comparisons).
SEESAW_ENV = "OPENMLA_DENSE_SEESAW"
SEESAW_PEER_REGS = 248  # warpgroup 0's registers (it keeps P0 in fp32 across its P0·V0_L);
# the default partition (warpgroup 1) gets what is left: 128 x (248 + 232 + 24) = 64,512


def use_seesaw(rows: int) -> bool:
    """Whether a launch of ``rows`` query rows a request (64-row tiles) takes the seesaw kernel."""
    forced = os.environ.get(SEESAW_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return rows > GLUON_BLOCK_H


def _schedule(sched, cache_seqlens: torch.Tensor, num_parts: int):
    """The schedule stored in ``sched`` (a FlashMLASchedMeta) when it fits this launch, else a
    new one computed on the device and stored there for the next layers of the step."""
    if sched is not None and sched.tile_scheduler_metadata is not None:
        meta, num_splits = sched.tile_scheduler_metadata, sched.num_splits
        if meta.shape[0] == num_parts and meta.device == cache_seqlens.device:
            return meta, num_splits
    meta, num_splits = _library.ops.decode_schedule(cache_seqlens, num_parts)
    if sched is not None:
        sched.tile_scheduler_metadata, sched.num_splits = meta, num_splits
    return meta, num_splits


def dense_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                        cache_seqlens: torch.Tensor, softmax_scale: float, causal: bool,
                        head_dim_v: int, sched=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The portable backend: picks the launch configuration and the schedule, then runs the
    split and combine kernels (one torch.library op)."""
    _, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    cfg = pick_config(s_q * (h_q // h_kv), h_kv, device_info(q.device), k_cache.shape[1])
    meta, num_splits = _schedule(sched, cache_seqlens, cfg.num_parts)
    return _library.ops.dense_decode(q, k_cache, block_table, cache_seqlens, meta, num_splits,
                                     softmax_scale, causal, head_dim_v, cfg.block_h, cfg.block_n,
                                     cfg.num_warps, cfg.num_stages, cfg.use_tma)


# Memory-bound launches (one row tile) take a part count that divides into whole requests when
# one is close to one CTA per SM: equal-length requests then run unsplit (no second Q load,
# partial output or combine work per CTA). Measured on an H200 (graph replay, b=128
# s_k=8192): h_q=16 292.5 us with 128 parts against 304.3 with 132, h_q=64 297.7 against
# 324.8; with four row tiles (s_q=2 h_q=128) 128 CTAs lost to 132 (988.8 against 962.5 us).
def gluon_num_parts(b: int, row_tiles: int, num_sms: int) -> int:
    """Split-KV parts of the Gluon launch: one CTA per SM (``num_sms // row_tiles`` parts), or
    for a single row tile ``schedule.launch.whole_request_parts`` of that."""
    max_parts = max(num_sms // row_tiles, 1)
    if row_tiles != 1:
        return max_parts
    return whole_request_parts(b, max_parts)


def dense_decode_gluon(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                       cache_seqlens: torch.Tensor, softmax_scale: float, causal: bool,
                       head_dim_v: int, sched=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hopper backend (``gluon_kernel.py``): 64-row tiles, one KV head."""
    b, s_q, h_q, _ = q.shape
    row_tiles = -(-(s_q * h_q) // GLUON_BLOCK_H)
    num_parts = gluon_num_parts(b, row_tiles, device_info(q.device).num_sms)
    meta, num_splits = _schedule(sched, cache_seqlens, num_parts)
    return _library.ops.dense_decode_gluon(q, k_cache, block_table, cache_seqlens, meta,
                                           num_splits, softmax_scale, causal, head_dim_v,
                                           GLUON_STAGES)


def _outputs(q: torch.Tensor, head_dim_v: int, num_parts: int):
    """out in q's dtype and lse ``[b, h_q, s_q]`` (the public layout), with the accumulators."""
    return decode_outputs(q, head_dim_v, num_parts, q.dtype, lse_heads_first=True)


def _output_strides(out, lse, o_acc, lse_acc) -> tuple[int, ...]:
    """The stride arguments every split kernel takes for its outputs, in its argument order."""
    return (out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), lse.stride(2),
            o_acc.stride(0), o_acc.stride(1), o_acc.stride(2),
            lse_acc.stride(0), lse_acc.stride(1))


def dense_decode_kernels(q, k_cache, block_table, cache_seqlens, meta, num_splits,
                         softmax_scale, causal, head_dim_v, block_h, block_n, num_warps,
                         num_stages, use_tma):
    """Split kernel and combine for one call (the body of the ``openmla::dense_decode`` op)."""
    b, s_q, h_q, d = q.shape
    _, page_size, h_kv, _ = k_cache.shape
    group = h_q // h_kv
    rows = s_q * group
    num_parts = meta.shape[0]
    causal = bool(causal) and s_q > 1
    out, lse, o_acc, lse_acc = _outputs(q, head_dim_v, num_parts)
    grid = (-(-rows // block_h), h_kv, num_parts)
    if use_tma and _tma_ok(q, k_cache, block_h, block_n):
        _launch_tma(grid, q, k_cache, block_table, cache_seqlens, meta, num_splits, out, lse,
                    o_acc, lse_acc, softmax_scale, causal, head_dim_v, block_h, block_n,
                    num_warps, num_stages)
        decode_combine(o_acc, lse_acc, num_splits, out, lse)
        return out, lse
    _dense_decode_kernel[grid](
        q, k_cache, block_table, cache_seqlens, meta, num_splits,
        out, lse, o_acc, lse_acc,
        softmax_scale * LOG2E, s_q, group, h_q,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0),
        *_output_strides(out, lse, o_acc, lse_acc),
        PAGE_SIZE=page_size, D_NOPE=head_dim_v, D_ROPE=d - head_dim_v,
        BLOCK_H=block_h, BLOCK_N=block_n, SCHED_N=SCHED_N, OVERHEAD=REQUEST_OVERHEAD,
        META_COLS=META_COLS,
        CAUSAL=causal, UPCAST_DOT=interpreting(),
        ROUND_OUT=interpreting() and q.dtype == torch.bfloat16,
        num_warps=num_warps, num_stages=num_stages)
    decode_combine(o_acc, lse_acc, num_splits, out, lse)
    return out, lse


TMA_ALIGN_BYTES = 16  # the copy engine needs 16-byte aligned bases and strides


def _tma_ok(q, k_cache, block_h, block_n) -> bool:
    """Whether the descriptor kernel can address these tensors (else the pointer kernel runs)."""
    num_pages, page_size, h_kv, d = k_cache.shape
    esize = k_cache.element_size()
    return (h_kv == 1 and page_size % block_n == 0 and num_pages > 0
            and k_cache.data_ptr() % TMA_ALIGN_BYTES == 0
            and (k_cache.stride(0) * esize) % TMA_ALIGN_BYTES == 0
            and (k_cache.stride(1) * esize) % TMA_ALIGN_BYTES == 0)


def _launch_tma(grid, q, k_cache, block_table, cache_seqlens, meta, num_splits, out, lse, o_acc,
                lse_acc, softmax_scale, causal, head_dim_v, block_h, block_n, num_warps,
                num_stages):
    from triton.tools.tensor_descriptor import TensorDescriptor

    b, s_q, h_q, d = q.shape
    num_pages, page_size, _, _ = k_cache.shape
    half, d_rope = head_dim_v // 2, d - head_dim_v
    q2 = q.contiguous().view(b * s_q * h_q, d)  # rows: request, token, head
    k3 = k_cache[:, :, 0, :]  # [pages, page_size, d], strides kept (padded pages allowed)
    k_strides = [k3.stride(0), k3.stride(1), 1]
    q_desc = TensorDescriptor.from_tensor(q2, [block_h, half])
    qr_desc = TensorDescriptor.from_tensor(q2, [block_h, d_rope])
    k_desc = TensorDescriptor(k3, list(k3.shape), k_strides, [1, block_n, half])
    kr_desc = TensorDescriptor(k3, list(k3.shape), k_strides, [1, block_n, d_rope])
    _dense_decode_tma_kernel[grid](
        q_desc, qr_desc, k_desc, kr_desc, block_table, cache_seqlens, meta, num_splits,
        out, lse, o_acc, lse_acc,
        softmax_scale * LOG2E, s_q, h_q,
        block_table.stride(0),
        *_output_strides(out, lse, o_acc, lse_acc),
        PAGE_SIZE=page_size, D_HALF=half, D_ROPE=d_rope,
        BLOCK_H=block_h, BLOCK_N=block_n, SCHED_N=SCHED_N, OVERHEAD=REQUEST_OVERHEAD,
        META_COLS=META_COLS, CAUSAL=bool(causal) and s_q > 1, UPCAST_DOT=interpreting(),
        ROUND_OUT=interpreting() and q.dtype == torch.bfloat16, NUM_STAGES=num_stages,
        num_warps=num_warps, num_stages=num_stages)


def gluon_ok(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the Gluon kernel can address these tensors: one KV head, pages of whole key
    tiles stored without padding (2-D descriptor over the cache), 16-byte aligned bases."""
    num_pages, page_size, h_kv, d = k_cache.shape
    # (base addresses are checked inside the op, where torch.compile does not trace)
    return (h_kv == 1 and num_pages > 0 and page_size % GLUON_BLOCK_N == 0
            and k_cache.stride(1) == d and k_cache.stride(0) == page_size * d)


def dense_decode_gluon_kernels(q, k_cache, block_table, cache_seqlens, meta, num_splits,
                               softmax_scale, causal, head_dim_v, stages, progress=None,
                               load_warps=GLUON_LOAD_WARPS):
    """Gluon split kernel and combine for one call (the ``openmla::dense_decode_gluon`` op): the
    swapped-product kernel at s_q·h_q <= 32, the seesaw kernel (``gluon_seesaw_kernel.py``)
    above 64 rows (``use_seesaw``), the default one (``gluon_kernel.py``) between; ``stages``
    is the default kernel's ring depth (the seesaw kernel has two stages).

    ``progress`` (debugging only): an int32 tensor of ``grid_ctas * 3 * 4`` elements in memory the
    host can read while the kernel runs (pinned host memory); each partition of each CTA writes
    its request, tile and message counters and the wait it enters (see ``_trace``)."""
    from triton.experimental.gluon import language as gl

    from .gluon_kernel import _dense_decode_gluon_kernel

    b, s_q, h_q, d = q.shape
    num_pages, page_size, _, _ = k_cache.shape
    rows = s_q * h_q
    num_parts = meta.shape[0]
    half, d_rope = head_dim_v // 2, d - head_dim_v
    q = q.contiguous()
    if q.data_ptr() % TMA_ALIGN_BYTES or k_cache.data_ptr() % TMA_ALIGN_BYTES:
        # the copy engine cannot address these bases: the portable kernel, same schedule
        cfg = pick_config(rows, 1, device_info(q.device), page_size)
        return dense_decode_kernels(q, k_cache, block_table, cache_seqlens, meta, num_splits,
                                    softmax_scale, causal, head_dim_v, cfg.block_h, cfg.block_n,
                                    cfg.num_warps, cfg.num_stages, cfg.use_tma)
    out, lse, o_acc, lse_acc = _outputs(q, head_dim_v, num_parts)
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q2 = q.view(b * rows, d)
    k2 = k_cache.view(num_pages * page_size, d)
    swap = rows <= SMALL_H_ROWS and os.environ.get(SMALL_H_ENV, "1") != "0"
    block_h, pv_regs = GLUON_BLOCK_H, GLUON_PV_REGS
    if swap:
        block_h, pv_regs = (16 if rows <= 16 else 32), SMALL_H_PV_REGS
    grid = (-(-rows // block_h), 1, num_parts)
    descs = (tma_descriptor(q2, [block_h, half], gdt), tma_descriptor(q2, [block_h, d_rope], gdt),
             tma_descriptor(k2, [GLUON_BLOCK_N, half], gdt),
             tma_descriptor(k2, [GLUON_BLOCK_N, d_rope], gdt))
    if not swap and progress is None and use_seesaw(rows):
        from .gluon_seesaw_kernel import _dense_decode_seesaw_kernel

        launch(_dense_decode_seesaw_kernel, grid, (
            *descs, block_table, cache_seqlens, meta, num_splits, out, lse, o_acc, lse_acc, k2,
            softmax_scale * LOG2E, s_q, h_q, block_table.stride(0),
            *_output_strides(out, lse, o_acc, lse_acc)), dict(
            PAGE_SIZE=page_size, D_HALF=half, D_ROPE=d_rope, BLOCK_H=block_h,
            BLOCK_N=GLUON_BLOCK_N, SCHED_N=SCHED_N, OVERHEAD=REQUEST_OVERHEAD,
            META_COLS=META_COLS, CAUSAL=bool(causal) and s_q > 1, PEER_REGS=SEESAW_PEER_REGS,
            LOAD_REGS=GLUON_LOAD_REGS, num_warps=4))
        decode_combine(o_acc, lse_acc, num_splits, out, lse)
        return out, lse
    launch(_dense_decode_gluon_kernel, grid, (
        *descs, block_table, cache_seqlens, meta, num_splits, out, lse, o_acc, lse_acc,
        softmax_scale * LOG2E, s_q, h_q,
        block_table.stride(0),
        *_output_strides(out, lse, o_acc, lse_acc)), dict(
        PAGE_SIZE=page_size, D_HALF=half, D_ROPE=d_rope, BLOCK_H=block_h,
        BLOCK_N=GLUON_BLOCK_N, SCHED_N=SCHED_N, OVERHEAD=REQUEST_OVERHEAD, META_COLS=META_COLS,
        CAUSAL=bool(causal) and s_q > 1, STAGES=stages, PV_REGS=pv_regs,
        LOAD_REGS=GLUON_LOAD_REGS, progress_ptr=progress if progress is not None else meta,
        TRACE=progress is not None, LOAD_WARPS=load_warps, SWAP=swap, num_warps=4))
    decode_combine(o_acc, lse_acc, num_splits, out, lse)
    return out, lse
