"""Launch the portable dense MHA prefill kernels: pick the configuration, then one
``openmla::mha_prefill_fwd`` / ``openmla::mha_prefill_bwd`` op (allocate → grid → kernels).
No host synchronisation and no max_seqlen: grids are sized from the tensor shapes alone (see
kernel.py), so a call can be captured in a CUDA graph.

Rows outside every sequence (``cu_seqlens[-1] < total``) are not written: their out / lse /
gradients are unspecified, as in FlashAttention's varlen kernels.
"""
from __future__ import annotations

import math

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from ... import _library
from ...device import device_info, interpreting
from .config import DQ_TMA, MAX_HEAD_DIM, head_dim_split, pick_config, value_dim_tile
from .kernel import (_mha_bwd_dkdv_kernel, _mha_bwd_dq_kernel, _mha_bwd_preprocess_kernel,
                     _mha_fwd_kernel)

LOG2E = 1.0 / math.log(2.0)
DTYPES = (torch.bfloat16, torch.float16)
PRE_BLOCK = 64  # rows per program of the backward preprocess kernel


def mha_prefill_fwd_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal):
    """Backend forward (arguments validated by ``flash_attn_varlen_func``): ``out [total_q, h_q,
    d_v]`` in q's dtype and ``lse [total_q, h_q]`` float32 with strides ``(1, total_q)``."""
    cfg = pick_config(q.shape[-1], v.shape[-1], device_info(q.device))
    out, lse = _library.ops.mha_prefill_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                            float(softmax_scale), bool(causal), cfg.block_m,
                                            cfg.block_n, cfg.num_warps, cfg.num_stages)
    return out, lse.t()


def mha_prefill_bwd_triton(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                           causal):
    """Backend backward: ``(dq, dk, dv)`` in the inputs' dtypes, contiguous; dK/dV sum over
    each KV head's query-head group."""
    cfg = pick_config(q.shape[-1], v.shape[-1], device_info(q.device))
    return _library.ops.mha_prefill_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                        float(softmax_scale), bool(causal), cfg.dq_block_m,
                                        cfg.dq_block_n, cfg.dkdv_block_m, cfg.dkdv_block_n,
                                        cfg.bwd_num_warps, cfg.dq_num_stages,
                                        cfg.dkdv_num_stages)


def _check(q, k, v):
    if q.dtype not in DTYPES:
        raise TypeError(f"q: expected dtype bfloat16 or float16, got {q.dtype}")
    for name, d in (("q", q.shape[-1]), ("v", v.shape[-1])):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise NotImplementedError(
                f"{name}: expected head dim 1..{MAX_HEAD_DIM} for the Triton kernel, got {d}; "
                f"the reference backend (OPENMLA_BACKEND_MHA_PREFILL=reference) takes any")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: expected a contiguous last dim, got strides {t.stride()}")


def _dims(q, v):
    block_da, block_db = head_dim_split(q.shape[-1])
    return dict(D_QK=q.shape[-1], D_V=v.shape[-1], BLOCK_DA=block_da, BLOCK_DB=block_db,
                BLOCK_DV=value_dim_tile(v.shape[-1]))


def mha_prefill_fwd_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, block_m,
                           block_n, num_warps, num_stages):
    """One forward launch (the body of ``openmla::mha_prefill_fwd``): ``out`` and the
    head-major ``lse [h_q, total_q]`` buffer."""
    _check(q, k, v)
    total_q, h_q, _ = q.shape
    h_kv, d_v = k.shape[1], v.shape[-1]
    out = torch.empty(total_q, h_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(h_q, total_q, dtype=torch.float32, device=q.device)
    n_seqs = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or n_seqs < 1:
        return out, lse
    n_vblocks = total_q // block_m + n_seqs  # see kernel.py: covers every sequence
    lse_t = lse.t()
    _mha_fwd_kernel[(n_vblocks * h_q,)](
        q, k, v, cu_seqlens_q, cu_seqlens_k, out, lse,
        softmax_scale * LOG2E, n_seqs, n_vblocks, h_q // h_kv,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse_t.stride(0), lse_t.stride(1),
        **_dims(q, v), BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal,
        UPCAST_DOT=interpreting(), ROUND_OUT=interpreting() and q.dtype == torch.bfloat16,
        num_warps=num_warps, num_stages=num_stages)
    return out, lse


def bwd_preprocess(out, dout, lse):
    """The backward's preprocess kernel (both backwards run it): ``D = rowsum(dO∘O)`` and the
    base-2 lse (``+inf`` for rows without keys), each a ``[h_q, total_q]`` float32 buffer."""
    total_q, h_q, d_v = out.shape
    delta = torch.empty(h_q, total_q, dtype=torch.float32, device=out.device)
    lse2 = torch.empty(h_q, total_q, dtype=torch.float32, device=out.device)
    if total_q > 0:
        _mha_bwd_preprocess_kernel[(triton.cdiv(total_q, PRE_BLOCK), h_q)](
            out, dout, lse, delta, lse2, total_q, out.stride(0), out.stride(1),
            dout.stride(0), dout.stride(1), lse.stride(0), lse.stride(1),
            D_V=d_v, BLOCK_DV=value_dim_tile(d_v), BLOCK_M=PRE_BLOCK, num_warps=4)
    return delta, lse2


DQ_FALLBACK = (128, 64, 2)  # dQ kernel tiles and stages when a fused request cannot fuse


def _dq_mode(q, dq_block_m, dq_block_n):
    """How dQ is produced (see config.MhaPrefillConfig): 0 its own kernel; 1 pointer atomics
    into an fp32 accumulator from the dK/dV kernel; 2 TMA reduce-adds (Hopper+, exact tiles)."""
    if dq_block_m > 0:
        return 0
    block_da, block_db = head_dim_split(q.shape[-1])
    on_gpu = not interpreting() and q.device.type == "cuda"
    tma = (dq_block_n == DQ_TMA and on_gpu
           and torch.cuda.get_device_capability(q.device)[0] >= 9
           and block_db > 0 and block_da + block_db == q.shape[-1] and q.shape[0] > 0)
    if tma:
        return 2
    # On an H100 (Triton 3.6) the fused dK/dV kernel read shared memory out of bounds with
    # pointer atomics (compute-sanitizer), and with one head-dim tile (d_qk 128) in either mode:
    # on GPUs those requests take the dQ kernel instead; only the two-tile TMA path fuses
    return 0 if on_gpu else 1


def mha_prefill_bwd_kernel(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                           causal, dq_block_m, dq_block_n, dkdv_block_m, dkdv_block_n, num_warps,
                           dq_num_stages, dkdv_num_stages):
    """The backward launches (the body of ``openmla::mha_prefill_bwd``): a preprocess kernel
    writes D = rowsum(dO∘O) and the base-2 lse per row; then either the dQ kernel and the
    dK/dV kernel (``dq_block_m > 0``), or the dK/dV kernel alone adding dQ into a zeroed fp32
    accumulator by atomics (``dq_block_m == 0``; ``dq_block_n`` 2: TMA reduce-adds, 1: pointer
    atomics), converted to q's dtype at the end."""
    _check(q, k, v)
    total_q, h_q, d_qk = q.shape
    total_k, h_kv, _ = k.shape
    if dout.stride(-1) != 1:  # autograd may hand over an expanded gradient
        dout = dout.contiguous()
    if out.stride(-1) != 1:
        out = out.contiguous()
    mode = _dq_mode(q, dq_block_m, dq_block_n)
    if mode == 0 and dq_block_m == 0:  # a fused request handed to the dQ kernel
        dq_block_m, dq_block_n, dq_num_stages = DQ_FALLBACK
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    n_seqs = cu_seqlens_q.shape[0] - 1
    if mode == 0 or n_seqs < 1:
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dq_acc = dq
    else:
        dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    if n_seqs < 1 or (total_q == 0 and total_k == 0):
        return (dq if mode == 0 or n_seqs < 1 else dq_acc.to(q.dtype)), dk, dv
    dims = _dims(q, v)
    interp = interpreting()
    delta, lse2 = bwd_preprocess(out, dout, lse)
    common = dict(**dims, CAUSAL=causal, UPCAST_DOT=interp,
                  ROUND_OUT=interp and q.dtype == torch.bfloat16, num_warps=num_warps)
    scale_log2 = softmax_scale * LOG2E
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    if mode == 0 and total_q > 0:
        n_vblocks = total_q // dq_block_m + n_seqs
        _mha_bwd_dq_kernel[(n_vblocks * h_q,)](
            q, k, v, dout, lse2, delta, cu_seqlens_q, cu_seqlens_k, dq,
            softmax_scale, scale_log2, n_seqs, n_vblocks, h_q // h_kv, total_q, *strides,
            dout.stride(0), dout.stride(1), dq.stride(0), dq.stride(1),
            BLOCK_M=dq_block_m, BLOCK_N=dq_block_n, num_stages=dq_num_stages, **common)
    desc_a = desc_b = None
    if mode == 2:
        flat = dq_acc.view(total_q, h_q * d_qk)
        desc_a = TensorDescriptor.from_tensor(flat, [dkdv_block_m, dims["BLOCK_DA"]])
        if dims["BLOCK_DB"] > 0:
            desc_b = TensorDescriptor.from_tensor(flat, [dkdv_block_m, dims["BLOCK_DB"]])
    if total_k > 0:
        n_vblocks = total_k // dkdv_block_n + n_seqs
        _mha_bwd_dkdv_kernel[(n_vblocks * h_kv,)](
            q, k, v, dout, lse2, delta, cu_seqlens_q, cu_seqlens_k, dk, dv, dq_acc,
            desc_a, desc_b, softmax_scale, scale_log2, n_seqs, n_vblocks, h_q // h_kv, total_q,
            *strides, dout.stride(0), dout.stride(1), dk.stride(0), dk.stride(1),
            dv.stride(0), dv.stride(1), dq_acc.stride(0), dq_acc.stride(1),
            BLOCK_M=dkdv_block_m, BLOCK_N=dkdv_block_n, num_stages=dkdv_num_stages,
            DQ_MODE=mode, **common)
    return (dq if mode == 0 else dq_acc.to(q.dtype)), dk, dv
