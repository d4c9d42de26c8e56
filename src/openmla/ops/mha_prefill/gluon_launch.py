"""Launch the Hopper Gluon forward of dense MHA varlen prefill (``gluon_kernel.py``) as one
``openmla::mha_prefill_fwd_gluon`` op: the ``gluon`` backend's forward on Hopper
(``__init__.run_gluon``) when ``gluon_forward_ok`` holds; out / lse have the portable forward's
layout, which both backwards (``gluon_bwd_launch``, the portable one) read.

Like the portable launch: no host synchronisation, the grid is sized from the shapes alone, rows
outside every sequence are not written.
"""
from __future__ import annotations

import math

import torch

from ... import _library
from ...device import device_info, gluon_available, interpreting
from .._gluon_host import nvmma_layout, tma_descriptor
from . import gluon_library  # noqa: F401 - registers openmla::mha_prefill_fwd_gluon

LOG2E = 1.0 / math.log(2.0)
BLOCK_M = 128  # query rows per CTA: two consumer warpgroups of 64 rows
DIMS = {(192, 128): (128, 64), (128, 128): (128, 0)}  # (d_qk, d_v) -> Q·Kᵀ head-dim tiles
# (block_n, stages) per (d_qk, d_v): smem = Q 128 x d_qk + stages x block_n x (d_qk + d_v), bf16;
# (192, 128) with 128-key tiles and 2 stages is 208 KiB of the 227
TILES = {(192, 128): (128, 2), (128, 128): (128, 2)}
CONSUMER_REGS = 240  # the worker consumer warpgroup; the default one gets the same
LOAD_REGS = 24  # the TMA warp; 128 x (240 + 240 + 24) fits the 64K register file
TMA_ALIGN_BYTES = 16
# The grid: persistent (one CTA per SM walking the work items, the next item's Q and first keys
# loading while the current one finishes) for causal launches of at most this many rounds of
# items per SM, else one CTA per item. Measured on an H100: persistent won only on equal-length
# causal batches with few heads (4 x 4096 tokens, 16 heads, (192, 128): 541 vs 576 us; a tie at
# (128, 128)); it lost with 128 heads (5-8 %: CTAs drift apart over more heads than L2 holds),
# on every non-causal launch, and on a mixed-length causal batch (8 x ~2048 tokens, 16 heads:
# 468.7 vs 420.8 us). Engines prefill mixed lengths, so one CTA per item is the default (0);
# the persistent grid stays available (``persistent=True``) and tested.
PERSISTENT_MAX_ROUNDS = 0
# Otherwise a causal launch gives each CTA two work items: item i and item 2G - 1 - i with
# G = n_items // 2 CTAs (the second round is full, so the kernel walks it backwards and pairs a
# long causal block with a short one, ``gluon_kernel._program``; an odd last item goes to CTA 0
# as a third round). Half the CTAs then pay the start-up (launch, barrier set-up, the first Q
# load, the first softmax beside idle tensor cores), and the second item's Q loads under the
# first one's tail. Measured on an H100 (4 x 4096 tokens, best of three interleaved rounds):
# (192, 128) causal 567 vs 581 us at 16 heads, 4736 vs 4826 at 128; (128, 128) causal 496 vs
# 504. Non-causal launches gained nothing (1014 vs 992 us at 16 heads): one item a CTA.
CAUSAL_ITEMS_PER_CTA = 2


def grid_ctas(n_items: int, causal: bool, persistent: bool, num_sms: int) -> int:
    """CTAs of a forward launch: one per SM (persistent), else one per item, or for causal
    launches ``n_items // CAUSAL_ITEMS_PER_CTA`` (whole rounds; the remainder is walked as a
    short extra round)."""
    if persistent:
        return min(n_items, num_sms)
    per = CAUSAL_ITEMS_PER_CTA if causal else 1
    return max(1, n_items // per)


def use_persistent(total_q: int, n_seqs: int, h_q: int, causal: bool, num_sms: int) -> bool:
    """The grid choice above, from shapes alone (no host synchronisation)."""
    n_items = (total_q // BLOCK_M + n_seqs) * h_q
    return bool(causal) and n_items <= PERSISTENT_MAX_ROUNDS * num_sms


def gluon_forward_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Gluon forward takes these tensors: a Hopper GPU, Triton's Gluon of the
    targeted release, bf16 / fp16, head dims (192, 128) or (128, 128), query heads a multiple of
    the KV heads. Layout is not required (the op copies what TMA cannot address)."""
    if interpreting() or q.device.type != "cuda" or not gluon_available():
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    return (q.dtype in (torch.bfloat16, torch.float16) and k.dtype == q.dtype
            and v.dtype == q.dtype and (q.shape[-1], v.shape[-1]) in DIMS
            and k.shape[-1] == q.shape[-1] and q.shape[1] % k.shape[1] == 0)


def mha_prefill_fwd_gluon(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                          persistent=None):
    """Backend forward: ``out [total_q, h_q, d_v]`` in q's dtype and ``lse [total_q, h_q]``
    float32 with strides ``(1, total_q)`` (as ``launch.mha_prefill_fwd_triton``). The kernel
    takes the row max of the raw scores and scales it: ``softmax_scale`` must be positive.
    ``persistent``: the grid (None: ``use_persistent``)."""
    block_n, stages = TILES[(q.shape[-1], v.shape[-1])]
    if persistent is None:
        persistent = use_persistent(q.shape[0], cu_seqlens_q.shape[0] - 1, q.shape[1], causal,
                                    device_info(q.device).num_sms)
    out, lse = _library.ops.mha_prefill_fwd_gluon(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                  float(softmax_scale), bool(causal), block_n,
                                                  stages, bool(persistent))
    return out, lse.t()


def _packed_2d(t: torch.Tensor) -> torch.Tensor:
    """``[total, heads, d]`` as a 2-D ``[total, heads * d]`` view TMA can address (copied when
    the heads are not packed or a stride / the base is not 16-byte aligned)."""
    total, heads, d = t.shape
    esize = t.element_size()
    if (t.stride(2) != 1 or t.stride(1) != d or (t.stride(0) * esize) % TMA_ALIGN_BYTES
            or t.data_ptr() % TMA_ALIGN_BYTES or t.stride(0) < heads * d):
        t = t.contiguous()
    return t.as_strided((total, heads * d), (t.stride(0), 1))


def mha_prefill_fwd_gluon_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                                 block_n, stages, persistent):
    """One forward launch (the body of ``openmla::mha_prefill_fwd_gluon``): ``out`` and the
    head-major ``lse [h_q, total_q]`` buffer. The grid is ``grid_ctas``: ``persistent``, one
    CTA per SM over the work items (128 query rows of one head each); else one CTA per item, two
    for causal launches."""
    from triton.experimental.gluon import language as gl

    from .gluon_kernel import _mha_fwd_gluon_kernel

    total_q, h_q, d_qk = q.shape
    total_k, h_kv, d_v = v.shape
    da, db = DIMS[(d_qk, d_v)]
    out = torch.empty(total_q, h_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(h_q, total_q, dtype=torch.float32, device=q.device)
    n_seqs = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or n_seqs < 1:
        return out, lse
    if total_k == 0:  # no key anywhere: nothing for TMA to address
        lse_t = lse.t()
        out.zero_()
        lse_t.fill_(float("-inf"))
        return out, lse
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q2, k2, v2 = _packed_2d(q), _packed_2d(k), _packed_2d(v)
    half = BLOCK_M // 2

    qa = tma_descriptor(q2, [half, da], gdt)
    ka = tma_descriptor(k2, [block_n, da], gdt)
    qb = tma_descriptor(q2, [half, db], gdt) if db else qa
    kb = tma_descriptor(k2, [block_n, db], gdt) if db else ka
    n_vblocks = total_q // BLOCK_M + n_seqs  # as kernel.py: covers every sequence
    n_items = n_vblocks * h_q
    ctas = grid_ctas(n_items, causal, persistent, device_info(q.device).num_sms)
    lse_t = lse.t()
    _mha_fwd_gluon_kernel[(ctas,)](
        qa, qb, ka, kb, tma_descriptor(v2, [block_n, d_v], gdt),
        cu_seqlens_q, cu_seqlens_k, out, lse,
        softmax_scale * LOG2E, n_seqs, n_vblocks, n_items, h_q // h_kv,
        out.stride(0), out.stride(1), lse_t.stride(0), lse_t.stride(1),
        D_QK=d_qk, D_V=d_v, DA=da, DB=db, BLOCK_M=BLOCK_M, BLOCK_N=block_n, STAGES=stages,
        CAUSAL=bool(causal), CONSUMER_REGS=CONSUMER_REGS, LOAD_REGS=LOAD_REGS, num_warps=4)
    return out, lse


def compile_sm90(d_qk: int = 192, d_v: int = 128, causal: bool = True, block_n: int | None = None,
                 stages: int | None = None, dtype: str = "bf16"):
    """Compile the kernel for sm_90 without a GPU (``triton.compile`` on a GluonASTSource);
    returns the compiled kernel (``.asm["ptx"]``, ``.metadata.shared``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from .gluon_kernel import _mha_fwd_gluon_kernel as fn

    dflt_n, dflt_stages = TILES[(d_qk, d_v)]
    block_n = block_n or dflt_n
    stages = stages or dflt_stages
    da, db = DIMS[(d_qk, d_v)]
    gdt = gl.bfloat16 if dtype == "bf16" else gl.float16

    def desc(shape):
        layout = nvmma_layout(tuple(shape), gdt)
        return f"tensordesc<{dtype}[{','.join(map(str, shape))}],{layout!r}>"

    half = BLOCK_M // 2
    types = {"qa_desc": desc([half, da]), "qb_desc": desc([half, db or da]),
             "ka_desc": desc([block_n, da]), "kb_desc": desc([block_n, db or da]),
             "v_desc": desc([block_n, d_v]), "cu_q_ptr": "*i32", "cu_k_ptr": "*i32",
             "out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "scale_log2": "fp32"}
    ce = dict(D_QK=d_qk, D_V=d_v, DA=da, DB=db, BLOCK_M=BLOCK_M, BLOCK_N=block_n, STAGES=stages,
              CAUSAL=causal, CONSUMER_REGS=CONSUMER_REGS, LOAD_REGS=LOAD_REGS)
    sig = {n: "constexpr" if n in ce else types.get(n, "i32") for n in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=ce)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
