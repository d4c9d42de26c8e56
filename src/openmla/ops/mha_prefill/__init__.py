"""Dense MHA varlen prefill, forward and backward (SPEC §1.6, §2.5)."""
import torch

from ...device import gluon_available, interpreting, triton_available
from ...dispatch import register
from .ref import mha_prefill_bwd_ref, mha_prefill_fwd_ref

TRITON_MAX_HEAD_DIM = 256  # d_qk and d_v (config.MAX_HEAD_DIM; not imported: no triton here)
TRITON_DTYPES = (torch.bfloat16, torch.float16)


def run_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal):
    """Forward: out in q's dtype, lse ``[total_q, h_q]`` with strides ``(1, total_q)``."""
    out, lse = mha_prefill_fwd_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return out.to(q.dtype), lse.t().contiguous().t()


def run_reference_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                           causal):
    dq, dk, dv = mha_prefill_bwd_ref(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                     softmax_scale, causal)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def run_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal):
    from .launch import mha_prefill_fwd_triton  # imports triton only when a kernel runs

    return mha_prefill_fwd_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)


def run_gluon(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal):
    """The Hopper forward (``gluon_kernel.py``); a call it cannot take (a non-positive scale: the
    kernel scales the row max of the raw scores) goes to the portable forward. Both write the
    same out / lse layout, which either backward reads."""
    from .gluon_launch import gluon_forward_ok, mha_prefill_fwd_gluon

    if softmax_scale > 0 and gluon_forward_ok(q, k, v):
        return mha_prefill_fwd_gluon(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)
    return run_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)


def run_triton_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                        causal):
    from .launch import mha_prefill_bwd_triton

    return mha_prefill_bwd_triton(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                  softmax_scale, causal)


def run_gluon_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                       causal):
    """The Hopper backward (``gluon_bwd_kernel.py``) where it takes the tensors (as the Gluon
    forward: Hopper, bf16 / fp16, head dims (192, 128) or (128, 128)), else the portable one."""
    from .gluon_bwd_launch import gluon_backward_ok, mha_prefill_bwd_gluon

    if gluon_backward_ok(q, k, v):
        return mha_prefill_bwd_gluon(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                     softmax_scale, causal)
    return run_triton_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                               softmax_scale, causal)


GLUON_DIMS = ((192, 128), (128, 128))  # (d_qk, d_v) the Gluon forward is built for


def gluon_supports(info, problem) -> bool:
    """Hopper with Triton's Gluon: the forward and the backward run the Gluon kernels for head
    dims (192, 128) and (128, 128) in bf16 / fp16."""
    if not (info.is_hopper and not interpreting() and gluon_available() and triton_available()):
        return False
    return ((problem.get("d_qk", 0), problem.get("d_v", 0)) in GLUON_DIMS
            and problem.get("dtype", torch.bfloat16) in TRITON_DTYPES)


def triton_supports(info, problem) -> bool:
    """CUDA / ROCm devices, or CPU tensors under the Triton interpreter. Head dims up to 256,
    bf16 / fp16."""
    on_device = info.kind == "cuda" or (info.kind == "cpu" and interpreting())
    if not (on_device and triton_available()):
        return False
    return (problem.get("d_qk", 0) <= TRITON_MAX_HEAD_DIM
            and problem.get("d_v", 0) <= TRITON_MAX_HEAD_DIM
            and problem.get("dtype", torch.bfloat16) in TRITON_DTYPES)


register("mha_prefill", "reference", run_reference, lambda info, problem: True,
         backward=run_reference_backward)
register("mha_prefill", "triton", run_triton, triton_supports, backward=run_triton_backward)
register("mha_prefill", "gluon", run_gluon, gluon_supports, backward=run_gluon_backward)

from . import autograd  # noqa: E402,F401 - registers openmla::flash_attn_varlen and its backward
