"""Launch the Hopper Gluon backward of dense MHA varlen prefill (``gluon_bwd_kernel.py``) as one
``openmla::mha_prefill_bwd_gluon`` op: the portable preprocess kernel (D and the base-2 lse), the
Gluon dK / dV / dQ kernel adding dQ into a zeroed fp32 accumulator, and the conversion of that
accumulator to q's dtype.

Like the portable launch: no host synchronisation, grids sized from the shapes alone, rows
outside every sequence are not written; dK / dV are bitwise reproducible, dQ is not (its pieces
are added in the order the CTAs reach them; SPEC §2.5 allows it).
"""
from __future__ import annotations

import math

import torch
import triton

from ... import _library
from .._gluon_host import nvmma_layout, tma_descriptor
from . import gluon_library  # noqa: F401 - registers openmla::mha_prefill_bwd_gluon
from .gluon_launch import DIMS, _packed_2d

LOG2E = 1.0 / math.log(2.0)
BLOCK_M = 64  # query rows per step
BLOCK_N = 128  # keys per CTA: two consumer warpgroups of 64
STAGES = 2  # Q / dO ring
# (192, 128): smem = Q/dO 2 x 40 + K 48 + V 32 + P/dS 16 + dQ staging 48 = 224 KiB of the 227
CONSUMER_REGS = 240
LOAD_REGS = 24
# The schedule per (d_qk, d_v): (lag, sdp_early). lag: the dQ of a step is computed in the next
# step (the consumer warpgroups decoupled by a second dS buffer pair) rather than in its own;
# sdp_early: dP = dO·Vᵀ is issued together with S rather than once P is in shared memory (its
# fp32 tile then lives beside S: with d_qk 192 ptxas serializes the wgmmas). Measured on an
# H100 (benchmarks/mha_gluon_backward.py, 4 x 4096 tokens, 16 heads, backward alone, µs):
# (192, 128) causal lag 2227 / no lag 2061, non-causal 3623 / 3500; (128, 128) causal lag 1754,
# lag + early 1726, no lag + early 1744, non-causal 3142 / 3025 / 3133.
SCHEDULE = {(192, 128): (False, False), (128, 128): (True, True)}


def staging_buffers(pieces: int, lag: bool) -> int:
    """dQ staging buffers of a warpgroup with ``pieces`` pieces: the lagged schedule's second
    dS buffer pair takes the shared memory of all but one."""
    return 1 if lag else pieces


DQ_PIECE = 64  # dQ columns per MMA and per TMA reduce-add


def dq_pieces(d_qk: int) -> tuple[int, int]:
    """How many 64-column dQ pieces consumer warpgroups 0 and 1 compute (192: 2 and 1; 128: 1
    and 1); warpgroup 0 takes the first columns."""
    n = d_qk // DQ_PIECE
    return n - n // 2, n // 2


def _schedule(d_qk: int, d_v: int, lag: bool | None, sdp_early: bool | None) -> tuple[bool, bool]:
    """The (lag, sdp_early) schedule: the measured default of SCHEDULE where not given."""
    dflt_lag, dflt_early = SCHEDULE[(d_qk, d_v)]
    return (dflt_lag if lag is None else bool(lag),
            dflt_early if sdp_early is None else bool(sdp_early))


def _constexprs(d_qk: int, d_v: int, causal: bool, lag: bool, sdp_early: bool) -> dict:
    """The kernel's compile-time arguments."""
    da, db = DIMS[(d_qk, d_v)]
    dq0, dq1 = dq_pieces(d_qk)
    return dict(D_QK=d_qk, D_V=d_v, DA=da, DB=db, PIECES0=dq0, PIECES1=dq1, BLOCK_M=BLOCK_M,
                BLOCK_N=BLOCK_N, STAGES=STAGES, CAUSAL=bool(causal), LAG=lag,
                NBUF0=staging_buffers(dq0, lag), NBUF1=staging_buffers(dq1, lag),
                SDP_EARLY=sdp_early, CONSUMER_REGS=CONSUMER_REGS, LOAD_REGS=LOAD_REGS)


def gluon_backward_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Gluon backward takes these tensors (as ``gluon_forward_ok``: a Hopper GPU,
    bf16 / fp16, head dims (192, 128) or (128, 128), query heads a multiple of the KV heads)."""
    from .gluon_launch import gluon_forward_ok

    return gluon_forward_ok(q, k, v)


def mha_prefill_bwd_gluon(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                          causal):
    """Backend backward: ``(dq, dk, dv)`` in the inputs' dtypes, contiguous; dK / dV sum over
    each KV head's query-head group (as ``launch.mha_prefill_bwd_triton``)."""
    return _library.ops.mha_prefill_bwd_gluon(dout, q, k, v, out, lse, cu_seqlens_q,
                                              cu_seqlens_k, float(softmax_scale), bool(causal))


def mha_prefill_bwd_gluon_kernel(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                 softmax_scale, causal, lag=None, sdp_early=None):
    """The backward launches (the body of ``openmla::mha_prefill_bwd_gluon``): ``(dq, dk, dv)``
    in the inputs' dtypes; ``lse`` is the forward's ``[total_q, h_q]`` view."""
    from triton.experimental.gluon import language as gl

    from .gluon_bwd_kernel import _mha_bwd_gluon_kernel
    from .launch import bwd_preprocess

    total_q, h_q, d_qk = q.shape
    total_k, h_kv, d_v = v.shape
    lag, sdp_early = _schedule(d_qk, d_v, lag, sdp_early)
    da, db = DIMS[(d_qk, d_v)]
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    n_seqs = cu_seqlens_q.shape[0] - 1
    if n_seqs < 1 or total_k == 0 or total_q == 0:
        dk.zero_()
        dv.zero_()
        return torch.zeros_like(q), dk, dv
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    if out.stride(-1) != 1:
        out = out.contiguous()
    delta, lse2 = bwd_preprocess(out, dout, lse)
    dq_acc = torch.zeros(total_q, h_q * d_qk, dtype=torch.float32, device=q.device)
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q2, k2, v2, do2 = _packed_2d(q), _packed_2d(k), _packed_2d(v), _packed_2d(dout)
    half = BLOCK_N // 2
    qa = tma_descriptor(q2, [BLOCK_M, da], gdt)
    ka = tma_descriptor(k2, [half, da], gdt)
    qb = tma_descriptor(q2, [BLOCK_M, db], gdt) if db else qa
    kb = tma_descriptor(k2, [half, db], gdt) if db else ka
    n_vblocks = total_k // BLOCK_N + n_seqs  # as the portable dK/dV kernel
    _mha_bwd_gluon_kernel[(n_vblocks * h_kv,)](
        qa, qb, ka, kb, tma_descriptor(v2, [half, d_v], gdt),
        tma_descriptor(do2, [BLOCK_M, d_v], gdt),
        tma_descriptor(dq_acc, [BLOCK_M, DQ_PIECE], gl.float32),
        cu_seqlens_q, cu_seqlens_k, lse2, delta, dk, dv,
        softmax_scale * LOG2E, softmax_scale, n_seqs, n_vblocks, h_q // h_kv, total_q,
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        **_constexprs(d_qk, d_v, causal, lag, sdp_early), num_warps=4)
    return dq_acc.view(q.shape).to(q.dtype), dk, dv


def compile_sm90(d_qk: int = 192, d_v: int = 128, causal: bool = True, dtype: str = "bf16",
                 lag: bool | None = None, sdp_early: bool | None = None):
    """Compile the kernel for sm_90 without a GPU (``triton.compile`` on a GluonASTSource);
    returns the compiled kernel (``.asm["ptx"]``, ``.metadata.shared``)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from .gluon_bwd_kernel import _mha_bwd_gluon_kernel as fn

    lag, sdp_early = _schedule(d_qk, d_v, lag, sdp_early)
    da, db = DIMS[(d_qk, d_v)]
    gdt = gl.bfloat16 if dtype == "bf16" else gl.float16

    def desc(shape, dt=dtype, g=gdt):
        layout = nvmma_layout(tuple(shape), g)
        return f"tensordesc<{dt}[{','.join(map(str, shape))}],{layout!r}>"

    half = BLOCK_N // 2
    types = {"qa_desc": desc([BLOCK_M, da]), "qb_desc": desc([BLOCK_M, db or da]),
             "ka_desc": desc([half, da]), "kb_desc": desc([half, db or da]),
             "v_desc": desc([half, d_v]), "do_desc": desc([BLOCK_M, d_v]),
             "dq_desc": desc([BLOCK_M, DQ_PIECE], "fp32", gl.float32),
             "cu_q_ptr": "*i32", "cu_k_ptr": "*i32", "lse2_ptr": "*fp32", "delta_ptr": "*fp32",
             "dk_ptr": f"*{dtype}", "dv_ptr": f"*{dtype}", "scale_log2": "fp32",
             "softmax_scale": "fp32"}
    ce = _constexprs(d_qk, d_v, causal, lag, sdp_early)
    sig = {n: "constexpr" if n in ce else types.get(n, "i32") for n in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=ce)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
