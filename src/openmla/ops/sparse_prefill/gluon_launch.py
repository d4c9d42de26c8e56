"""Launch the Hopper sparse-prefill kernel (``gluon_kernel.py``): one
``openmla::sparse_prefill_gluon`` op (allocate → persistent grid → kernel). No host
synchronisation."""
from __future__ import annotations


import os

import torch

from ...device import device_info
from .launch import D_V, LOG2E, outputs

BLOCK_H = 64  # query heads per work item: one wgmma M tile (h_q not a multiple: masked rows)
BLOCK_N = 64  # index slots per key tile
STAGES = 2  # key-tile ring: Q (72 KiB) + 2 x K (72 KiB) + P (8 KiB) fill 227 KiB at d_qk 576
LOAD_WARPS = 4  # gathering warps: 16 rows of each 64-row tile per warp
# Output columns of the softmax warpgroup (the PV warpgroup has the other 384): the softmax
# warpgroup's chain (S, exponentials, its P·V) sets the pace, so a quarter of O rather than a
# half takes a P·V off it. H200, events µs, two alternating runs: h_q=128 d_qk=576 4759.6 /
# 4818.4 against 4837.6 / 4862.8 with 256; h_q=64 and d_qk=512 unchanged.
SOFT_COLS = 128
# setmaxnreg of the PV warpgroup (its 64x384 fp32 accumulators: 192) and of the gather warps;
# the softmax warpgroup keeps the rest: 128 x (184 + 232 + 96) = 64K registers; ptxas reports
# no spill at these (96 gather registers hold the tile's 16 row addresses per thread; 80
# spilled)
PV_REGS = 232
LOAD_REGS = 96
# The seesaw kernel (gluon_seesaw_kernel.py, d_qk 576): two peer warpgroups at 216 registers (the
# default partition keeps what is left) and the gather's 80, no spill. It was the default at one
# block of heads a token (h_q <= 64) while the gathers issued 3x the instructions they do now;
# with the four-row gather layout (gluon_kernel.gather_layout) the default kernel is ahead
# everywhere (H200, s_q=4096 s_kv=32768 topk=2048, events µs: h_q=64 2269.8 against 2374.5,
# h_q=128 4439.0 against 4548.4), so it runs only when OPENMLA_SP_SEESAW=1 forces it (d_qk 576).
SEESAW_ENV = "OPENMLA_SP_SEESAW"
SEESAW_PEER_REGS = 216
SEESAW_LOAD_REGS = 80


def use_seesaw(d_qk: int) -> bool:
    """Whether a launch takes the seesaw kernel: only when OPENMLA_SP_SEESAW=1 asks for it, and
    at d_qk 576."""
    return d_qk == D_V + 64 and os.environ.get(SEESAW_ENV) == "1"


ALIGN = 16  # cp.async copies 16-byte pieces: bases and row strides must be 16-byte aligned


def gluon_ok(q: torch.Tensor, kv: torch.Tensor) -> bool:
    """Whether the Gluon kernel can address these tensors (else the portable kernel runs):
    16-byte aligned bases and row strides, at least one KV row (an empty ``kv`` may have no
    address at all)."""
    esize = q.element_size()
    return (q.dtype == torch.bfloat16 and kv.dtype == torch.bfloat16 and kv.shape[0] > 0
            and q.data_ptr() % ALIGN == 0 and kv.data_ptr() % ALIGN == 0
            and (q.stride(0) * esize) % ALIGN == 0 and (q.stride(1) * esize) % ALIGN == 0
            and (kv.stride(0) * esize) % ALIGN == 0)


def sparse_prefill_gluon(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor,
                         sm_scale: float, d_v: int = D_V,
                         attn_sink: torch.Tensor | None = None,
                         topk_length: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backend entry (arguments already validated by ``flash_mla_sparse_fwd``)."""
    from .gluon_library import ops  # registers the op on first use

    return ops.sparse_prefill_gluon(q, kv, indices, attn_sink, topk_length, sm_scale, d_v,
                                    STAGES, LOAD_WARPS, 0, False)


def sparse_prefill_gluon_kernel(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, stages,
                                load_warps, grid_ctas, evict_last):
    """One kernel launch (the body of the ``openmla::sparse_prefill_gluon`` op).

    ``grid_ctas``: CTAs of the persistent grid, 0 for one per SM (a CTA fills an SM's shared
    memory); a negative value launches one CTA per work item (no persistence)."""
    from .gluon_kernel import _sparse_prefill_gluon_kernel

    s_q, h_q, d_qk = q.shape
    s_kv = kv.shape[0]
    topk = indices.shape[-1]
    out, max_logits, lse = outputs(q, d_v)
    if s_q == 0:
        return out, max_logits, lse
    n_hb = -(-h_q // BLOCK_H)
    n_items = s_q * n_hb
    if grid_ctas == 0:
        grid_ctas = device_info(q.device).num_sms
    elif grid_ctas < 0:
        grid_ctas = n_items
    grid = (max(min(grid_ctas, n_items), 1),)
    sink = attn_sink if attn_sink is not None else lse  # placeholder pointers, never read
    lengths = topk_length if topk_length is not None else indices
    args = (q, kv, indices, lengths, sink, out, max_logits, lse, sm_scale * LOG2E,
            s_kv, h_q, topk, n_hb, n_items,
            q.stride(0), q.stride(1), kv.stride(0), indices.stride(0),
            lengths.stride(0), sink.stride(0), out.stride(0), out.stride(1),
            max_logits.stride(0), max_logits.stride(1), lse.stride(0), lse.stride(1))
    common = dict(D_HALF=D_V // 2, D_ROPE=d_qk - D_V, BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N,
                  HAS_TOPK_LEN=topk_length is not None, HAS_SINK=attn_sink is not None,
                  EVICT_LAST=bool(evict_last), num_warps=4)
    if use_seesaw(d_qk):  # two key stages and 4 gather warps, whatever was asked
        from .gluon_seesaw_kernel import _sparse_prefill_seesaw_kernel

        _sparse_prefill_seesaw_kernel[grid](*args, PEER_REGS=SEESAW_PEER_REGS,
                                            LOAD_REGS=SEESAW_LOAD_REGS, LOAD_WARPS=LOAD_WARPS,
                                            **common)
        return out, max_logits, lse
    if load_warps == 4:
        pv_regs, load_regs = PV_REGS, LOAD_REGS
    else:  # variants for a sweep: 128 x (softmax + pv) + 32 x load_warps x load <= 64K
        pv_regs = PV_REGS
        softmax_regs = 512 - PV_REGS - LOAD_REGS  # what the softmax warpgroup keeps at 4 warps
        load_regs = min((65536 - 128 * (softmax_regs + pv_regs)) // (32 * load_warps) // 8 * 8,
                        256)
    _sparse_prefill_gluon_kernel[grid](*args, STAGES=stages, PV_REGS=pv_regs,
                                       LOAD_REGS=load_regs, LOAD_WARPS=load_warps,
                                       D_SOFT=SOFT_COLS, **common)
    return out, max_logits, lse
