"""Launch the Hopper (Gluon) sparse-decode split kernel: schedule (kept per shape without
``topk_length``, else made on the device when the meta object has none) → split kernel
(``gluon_kernel.py``) → combine (``ops/combine``, shared with the portable path; left out when
the schedule keeps every request whole), no host synchronisation once a shape's schedule is
kept. Calls the kernel cannot take go to the portable launcher."""
from __future__ import annotations

import math
import os

import torch

from ... import _library
from ...device import device_info
from .._gluon_cluster import launch_pair, smem_offsets
from .._gluon_host import nvmma_layout, tma_descriptor
from .._launch import launch
from ..combine.launch import decode_combine
from ..schedule.ref import META_COLS, REQUEST_OVERHEAD
from ..schedule.launch import whole_request_parts
from .config import SCHED_N
from .launch import _check_alignment, outputs, schedule_lengths, sparse_decode_triton

LOG2E = 1.0 / math.log(2.0)
D_QK = 576  # V3.2 layout only (MODEL1 and the extra cache run the portable kernel)
D_V = 512
GLUON_BLOCK_H = 64  # query heads of one token per CTA: one wgmma M tile (fewer are padded)
GLUON_BLOCK_N = SCHED_N  # index slots per tile = one scheduling block
# ring of dequantized key tiles: Q (72 KiB) + 2 x K (72 KiB each) + P (8 KiB) ≈ 224 KiB of smem
GLUON_STAGES = 2
GLUON_PRODUCER_WARPS = 4  # the gather + dequantization warpgroup
# registers a thread keeps (setmaxnreg; 12 warps cap the kernel at 168): the PV warpgroup holds a
# 64x256 fp32 accumulator (128), the producer a tile's gathered bytes (80) and their conversion,
# the softmax warpgroup gets the rest (208). ptxas for sm_90 (`benchmarks/sparse_decode_gluon.py
# --compile`): 96 bytes of scalar spills (loop state, no tensor data) with (160, 136); PV below
# 160 spills its accumulator's neighbours (436 B at 152). Not timed yet.
GLUON_PV_REGS = 160
GLUON_PRODUCER_REGS = 136
# At most SMALL_H_HEADS heads a query token run the swapped-product kernel with two producer
# warpgroups (``gluon_kernel.py`` with SWAP): the heads are the MMA's N = 16;
# OPENMLA_SPARSE_GLUON_SMALL_H=0 keeps the 64-row kernel. 16 warps: 128 registers a thread on
# average, split as below (the softmax warpgroup gets the rest, 112). ptxas for sm_90: 60 bytes
# of spills at N = 16; at N = 32 (17-32 heads) 950-1200 bytes whatever the split, so those
# head counts stay on the 64-row kernel.
SMALL_H_ENV = "OPENMLA_SPARSE_GLUON_SMALL_H"
SMALL_H_HEADS = 16
SMALL_H_PV_REGS = 88
SMALL_H_PRODUCER_REGS = 152
# the producer prefetches the next index tile's token rows into L2 while it dequantizes the
# current one (``gluon_kernel._prefetch_rows``; H200 graph replay, b=128 topk=2048, without /
# with / two tiles ahead: h_q=16 148.2 / 136.3 / 143.6 µs, s_q=2 h_q=128 498.6 / 479.6 / 480.6).
# With several head blocks a token (h_q > 64) only head block 0 asks (PREFETCH = 2): the others
# read the same rows. H200 graph replay, b=128 topk=2048 (``benchmarks/sparse_decode_ab.py``):
# s_q=2 h_q=128 457.7 -> 454.2 µs, s_q=1 h_q=128 236.8 -> 232.9; at one head block the branch
# alone cost 3 % (131.1 -> 135.1 at h_q=64), so those keep PREFETCH = True.
GLUON_PREFETCH = True
PREFETCH_HEAD_BLOCK0 = 2
PREFETCH_ENV = "OPENMLA_SPARSE_PREFETCH"  # "all": every head block asks (comparisons)
# At most SMALL_H_HEADS heads run the ring kernel (``gluon_ring_kernel.py``): the token rows go to
# shared memory with cp.async through RING_SLOTS half-tile raw slots, beside two dequantized key
# stages, and the swapped kernel's consumers; the output is bitwise the swapped kernel's.
# OPENMLA_SPARSE_RING=0 keeps the register-gather swapped kernel. 16 warps; the converter's
# and issuer's registers as below (H200 graph replay, b=128 topk=2048, h_q=16: converter 104 /
# 96 / 88 with the issuer at 64 / 64 / 56: 97.1 / 97.1 / 101.7 µs; the swapped kernel 108.5).
# At most SMALL_H_HEADS heads run the raw-stage kernel (``gluon_raw_kernel.py``, the default
# since the tenth session): the token rows stay fp8 in four shared-memory stages and the two MMA
# warpgroups convert their wgmma A operands in registers (exact fp8 → f16) and multiply in f16.
# OPENMLA_SPARSE_RAW=0 keeps the ring kernel below. 12 warps; registers of the PV warpgroup and
# the issuer as below (the softmax warpgroup the rest, 232), no spills: the PV warpgroup makes
# the four f16 Pᵀ_g and the issuer the scale maxima (eleventh session; H200 graph replay,
# b=128 topk=2048 h_q=16: 67.6-68.3 µs, issuer 64: 68.3, the ring kernel 95.9).
RAW_ENV = "OPENMLA_SPARSE_RAW"
RAW_STAGES = 4
RAW_PV_REGS = 208
RAW_ISSUER_REGS = 72
RING_ENV = "OPENMLA_SPARSE_RING"
RING_SLOTS = 3
RING_CONVERTER_REGS = 104
RING_ISSUER_REGS = 64

# With two head blocks a token (h_q > 64) the two CTAs of a token run as a cluster and share the
# key tiles: each gathers and dequantizes half of a tile's rows and copies them into the peer's
# shared memory (``gluon_kernel._producer_partition`` with PAIR, ``_gluon_cluster``).
# OPENMLA_SPARSE_PAIR=0 keeps two independent CTAs that each gather the whole tile.
PAIR_ENV = "OPENMLA_SPARSE_PAIR"
# the kernel's offset constexprs and the buffers whose shared offsets they carry
PAIR_BUFFERS = {"SMEM_K": "k_s", "SMEM_KR": "kr_s", "SMEM_V": "v_s", "SMEM_READY": "k_ready",
                "SMEM_FREE": "k_free"}


def gluon_ok(q: torch.Tensor, k_cache: torch.Tensor, head_dim_v: int,
             extra_k_cache: torch.Tensor | None) -> bool:
    """Whether the Gluon kernel takes this call: V3.2 layout (d_qk 576), bf16 q, 512 value
    dims, no extra cache, a non-empty cache on a CUDA device."""
    return (q.shape[-1] == D_QK and q.dtype == torch.bfloat16 and head_dim_v == D_V
            and extra_k_cache is None and q.is_cuda
            and k_cache.shape[0] * k_cache.shape[1] > 0)


# Split-KV parts: (head tiles × s_q × parts) CTAs fill the SMs once, with the part count
# rounded down to whole requests a part when one is close (``whole_request_parts``). Measured
# on an H200, V3.2 b=128 topk=2048, graph replay, parts of whole requests against one CTA per
# SM: h_q=16 138.3 vs 141.0 us, h_q=64 144.4 vs 160.6, s_q=1 h_q=128 253.8 vs 271.9, s_q=2
# h_q=128 495.2 vs 512.6.
def num_parts_for(h_q: int, s_q: int, num_sms: int, b: int = 0) -> int:
    """Split-KV parts of the launch (``b`` = 0: one CTA per SM, no rounding to requests)."""
    head_tiles = -(-h_q // GLUON_BLOCK_H)
    max_parts = max(num_sms // (s_q * head_tiles), 1)
    if b < 1:
        return max_parts
    return whole_request_parts(b, max_parts)


# Without topk_length every request attends topk slots, so the schedule is a function of (b,
# topk, parts) alone: it is made once per shape and kept (``fixed_schedule``), and when it keeps
# every request in one part the split kernel writes the final output itself and the combine is
# left out. A call then launches one kernel instead of four (length fill, schedule, split,
# combine). OPENMLA_SPARSE_FIXED_SCHEDULE=0 schedules every call (comparisons).
FIXED_SCHEDULE_ENV = "OPENMLA_SPARSE_FIXED_SCHEDULE"
# kept for the process's life: a captured CUDA graph may hold their addresses (an entry is a
# few hundred bytes of device memory a shape)
_FIXED_SCHEDULES: dict[tuple, tuple[torch.Tensor, torch.Tensor, bool]] = {}


def _schedule(b: int, topk: int, topk_length: torch.Tensor | None, num_parts: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-KV schedule (metadata, piece offsets) of ``b`` requests, made on the device."""
    lengths = schedule_lengths(b, topk, topk_length, None, None, device)
    return _library.ops.decode_schedule(lengths, num_parts)


def fixed_schedule(b: int, topk: int, num_parts: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """The kept schedule of ``b`` requests of ``topk`` slots over ``num_parts`` parts: its
    metadata, its piece offsets, and whether any request is split (the combine is needed).
    Made on first use outside CUDA-graph capture (it reads one flag back to the host); during a
    capture that has not seen the shape, and while torch.compile traces, None (the call
    schedules on the device as before). A ``tile_scheduler_metadata`` passed by the caller is
    neither read nor filled on this path."""
    if os.environ.get(FIXED_SCHEDULE_ENV, "1") == "0":
        return None
    key = (device, b, topk, num_parts)
    hit = _FIXED_SCHEDULES.get(key)
    if hit is not None:
        return hit
    if torch.compiler.is_compiling() or (device.type == "cuda"
                                         and torch.cuda.is_current_stream_capturing()):
        return None  # tracing (fake tensors) or capturing: schedule on the device as before
    meta, num_splits = _schedule(b, topk, None, num_parts, device)
    split = bool((num_splits[1:] - num_splits[:-1] > 1).any())
    _FIXED_SCHEDULES[key] = hit = (meta, num_splits, split)
    return hit


def sparse_decode_gluon(q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor,
                        softmax_scale: float, head_dim_v: int,
                        attn_sink: torch.Tensor | None = None,
                        topk_length: torch.Tensor | None = None,
                        extra_k_cache: torch.Tensor | None = None,
                        extra_indices_in_kvcache: torch.Tensor | None = None,
                        extra_topk_length: torch.Tensor | None = None,
                        sched=None, stages: int = GLUON_STAGES
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hopper backend entry (same contract as ``sparse_decode_triton``)."""
    if not gluon_ok(q, k_cache, head_dim_v, extra_k_cache):
        return sparse_decode_triton(q, k_cache, indices, softmax_scale, head_dim_v, attn_sink,
                                    topk_length, extra_k_cache, extra_indices_in_kvcache,
                                    extra_topk_length, sched)
    from . import gluon_library  # noqa: F401  (registers openmla::sparse_decode_gluon)

    b, s_q, h_q, _ = q.shape
    num_parts = num_parts_for(h_q, s_q, device_info(q.device).num_sms, b)
    meta = num_splits = None
    combine = True
    fixed = fixed_schedule(b, indices.shape[-1], num_parts, q.device) if (
        topk_length is None) else None
    if fixed is not None:
        meta, num_splits, combine = fixed
    elif sched is not None and sched.tile_scheduler_metadata is not None:
        meta, num_splits = sched.tile_scheduler_metadata, sched.num_splits
        if meta.shape[0] != num_parts or meta.device != q.device:
            meta = None  # made for another device or launch shape: schedule again
    if meta is None:
        meta, num_splits = _schedule(b, indices.shape[-1], topk_length, num_parts, q.device)
        if sched is not None:
            sched.tile_scheduler_metadata, sched.num_splits = meta, num_splits
    out, lse = torch.ops.openmla.sparse_decode_gluon(q, k_cache, indices, meta, num_splits,
                                                     softmax_scale, head_dim_v, attn_sink,
                                                     topk_length, stages, combine)
    return out, lse.transpose(1, 2)


def small_h(h_q: int) -> bool:
    """Whether a launch with h_q heads runs the swapped-product kernel."""
    return h_q <= SMALL_H_HEADS and os.environ.get(SMALL_H_ENV, "1") != "0"


def raw(h_q: int) -> bool:
    """Whether a launch with h_q heads runs the raw-stage kernel."""
    return small_h(h_q) and os.environ.get(RAW_ENV, "1") != "0"


def ring(h_q: int) -> bool:
    """Whether a launch with h_q heads runs the cp.async ring kernel."""
    return small_h(h_q) and os.environ.get(RING_ENV, "1") != "0" and not raw(h_q)


_PAIRS_FAILED: list[str] = []  # why a pair launch failed on this process's device, if one did


def pair(head_blocks: int, swap: bool = False) -> bool:
    """Whether a launch with ``head_blocks`` blocks of 64 heads a token runs CTA pairs."""
    return (head_blocks == 2 and not swap and not _PAIRS_FAILED
            and os.environ.get(PAIR_ENV, "1") != "0")


def _no_pairs(err: Exception) -> None:
    """A pair launch failed (a device or partition that cannot co-schedule two CTAs of this
    size): warn once and run independent CTAs from now on."""
    import warnings

    _PAIRS_FAILED.append(str(err))
    warnings.warn(f"openmla: sparse decode falls back to independent CTAs at 65-128 heads "
                  f"(the CTA-pair launch failed: {err})", RuntimeWarning, stacklevel=3)


def _split_kernel(use_ring: bool, swap: bool, stages: int, pv_regs: int, producer_regs: int,
                  head_blocks: int = 1, paired: bool = False, use_raw: bool = False):
    """The split kernel of a launch and its own constexprs: the raw-stage or the cp.async ring
    kernel (h_q <= 16) or the register-gather kernel (64-row, or swapped with ``swap``) over
    ``head_blocks`` blocks of heads a token."""
    if use_raw:
        from .gluon_raw_kernel import _sparse_decode_raw_kernel
        return _sparse_decode_raw_kernel, dict(STAGES=RAW_STAGES, PV_REGS=RAW_PV_REGS,
                                               ISSUER_REGS=RAW_ISSUER_REGS)
    if use_ring:
        from .gluon_ring_kernel import _sparse_decode_ring_kernel
        return _sparse_decode_ring_kernel, dict(
            SLOTS=RING_SLOTS, PV_REGS=pv_regs, CONVERTER_REGS=RING_CONVERTER_REGS,
            ISSUER_REGS=RING_ISSUER_REGS, WARPS=4)
    from .gluon_kernel import _sparse_decode_gluon_kernel
    return _sparse_decode_gluon_kernel, dict(
        STAGES=stages, PV_REGS=pv_regs, PRODUCER_REGS=producer_regs,
        PRODUCER_WARPS=GLUON_PRODUCER_WARPS,
        PREFETCH=(PREFETCH_HEAD_BLOCK0 if head_blocks > 1 and os.environ.get(PREFETCH_ENV) != "all"
                  else GLUON_PREFETCH), SWAP=swap, PAIR=paired)


def sparse_decode_gluon_kernels(q, k_cache, indices, meta, num_splits, softmax_scale,
                                head_dim_v, attn_sink, topk_length, stages,
                                pv_regs=GLUON_PV_REGS, producer_regs=GLUON_PRODUCER_REGS,
                                combine=True):
    """Gluon split kernel and combine for one call (the ``openmla::sparse_decode_gluon`` op).
    ``pv_regs`` / ``producer_regs`` / ``combine=False`` are for benchmarks only.

    Returns ``out [b, s_q, h_q, 512]`` bf16 and ``lse [b, s_q, h_q]`` float32, both
    contiguous (the public lse is the ``[b, h_q, s_q]`` transposed view)."""
    from triton.experimental.gluon import language as gl

    b, s_q, h_q, d_qk = q.shape
    _check_alignment("k_cache", k_cache, d_qk)
    num_parts = meta.shape[0]
    out, lse, o_acc, lse_acc = outputs(q, head_dim_v, num_parts)
    kc = k_cache.view(torch.uint8)
    half, d_rope = head_dim_v // 2, d_qk - head_dim_v
    q2 = q.contiguous().view(b * s_q * h_q, d_qk)  # rows: request, token, head

    swap = small_h(h_q)
    block_h = 16 if swap else GLUON_BLOCK_H
    if swap and pv_regs == GLUON_PV_REGS and producer_regs == GLUON_PRODUCER_REGS:
        pv_regs, producer_regs = SMALL_H_PV_REGS, SMALL_H_PRODUCER_REGS
    grid = (-(-h_q // block_h), s_q, num_parts)
    paired = pair(grid[0], swap)
    args = (
        tma_descriptor(q2, [block_h, half], gl.bfloat16),
        tma_descriptor(q2, [block_h, d_rope], gl.bfloat16),
        kc, indices, topk_length if topk_length is not None else indices,
        attn_sink if attn_sink is not None else lse, meta, num_splits,
        out, lse, o_acc, lse_acc,
        softmax_scale * LOG2E, s_q, h_q, indices.shape[-1], kc.shape[0] * kc.shape[1],
        kc.stride(0), indices.stride(0), indices.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        o_acc.stride(0), o_acc.stride(1), o_acc.stride(2),
        lse_acc.stride(0), lse_acc.stride(1))
    kw = dict(PAGE_SIZE=kc.shape[1], D_HALF=half, D_ROPE=d_rope, BLOCK_H=block_h,
              BLOCK_N=GLUON_BLOCK_N, OVERHEAD=REQUEST_OVERHEAD, META_COLS=META_COLS,
              HAS_TOPK_LEN=topk_length is not None, HAS_SINK=attn_sink is not None,
              num_warps=4)
    if paired:
        fn, consts = _split_kernel(False, swap, stages, pv_regs, producer_regs, grid[0], True)
        try:
            launch_pair(fn, grid, args, dict(kw, **consts), PAIR_BUFFERS)
        except RuntimeError as err:  # a device that cannot launch the cluster: no pairs
            _no_pairs(err)
            paired = False
    if not paired:
        fn, consts = _split_kernel(ring(h_q), swap, stages, pv_regs, producer_regs, grid[0],
                                   use_raw=raw(h_q))
        launch(fn, grid, args, dict(kw, **consts))
    if combine:
        decode_combine(o_acc, lse_acc, num_splits, out, lse.transpose(1, 2), attn_sink)
    return out, lse


# --- offline compilation for sm_90 (no GPU needed): tests and reports ------------------------

def compile_sm90(page_size: int = 64, has_topk_len: bool = True, has_sink: bool = True,
                 stages: int = GLUON_STAGES, pv_regs: int | None = None,
                 producer_regs: int | None = None, block_h: int = GLUON_BLOCK_H,
                 ring: bool = False, head_blocks: int = 1, paired: bool = False,
                 raw: bool = False):
    """The split kernel compiled for Hopper (sm_90) with 16-divisible pointers and strides, as
    a launch at production shapes specialises it (``head_blocks`` blocks of heads a token).
    Must run without TRITON_INTERPRET."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from ...testing.sm90 import with_constexpr_defaults

    swap = block_h != GLUON_BLOCK_H
    regs = (SMALL_H_PV_REGS, SMALL_H_PRODUCER_REGS) if swap else (GLUON_PV_REGS,
                                                                   GLUON_PRODUCER_REGS)
    pv_regs = regs[0] if pv_regs is None else pv_regs
    producer_regs = regs[1] if producer_regs is None else producer_regs

    def desc(shape):
        layout = nvmma_layout(tuple(shape), gl.bfloat16)
        return f"tensordesc<bf16[{','.join(map(str, shape))}],{layout!r}>"

    types = {"q_desc": desc([block_h, D_V // 2]), "qr_desc": desc([block_h, 64]),
             "k_ptr": "*u8", "idx_ptr": "*i32", "topk_len_ptr": "*i32", "sink_ptr": "*fp32",
             "meta_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": "*bf16",
             "lse_ptr": "*fp32", "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32",
             "scale_log2": "fp32"}
    ce = dict(PAGE_SIZE=page_size, D_HALF=D_V // 2, D_ROPE=D_QK - D_V, BLOCK_H=block_h,
              BLOCK_N=GLUON_BLOCK_N, OVERHEAD=REQUEST_OVERHEAD, META_COLS=META_COLS,
              HAS_TOPK_LEN=has_topk_len, HAS_SINK=has_sink)
    fn, consts = _split_kernel(ring, swap, stages, pv_regs, producer_regs, head_blocks, paired,
                               use_raw=raw)
    ce.update(consts)
    ce = with_constexpr_defaults(fn, ce)

    def build():
        sig, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in ce:
                sig[name] = "constexpr"
            else:
                sig[name] = types.get(name, "i32")
                if sig[name].startswith("*") or name.startswith("stride_"):
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = GluonASTSource(fn=fn, signature=sig, constexprs=ce, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    if not paired:
        return build()
    ce.update({k: 0 for k in PAIR_BUFFERS})  # placeholders, then the offsets they gave
    offs = smem_offsets(build().asm["ttgir"])
    ce.update({k: offs[n] for k, n in PAIR_BUFFERS.items()})
    return build()
