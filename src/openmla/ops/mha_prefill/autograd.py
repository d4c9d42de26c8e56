"""The public MHA prefill as torch.library ops with autograd: ``openmla::flash_attn_varlen``
(forward) and ``openmla::flash_attn_varlen_backward``, tied by ``torch.library.register_autograd``
so that ``torch.compile`` sees one opaque op each way (with fake implementations) and autograd
needs no Python ``autograd.Function``.

Both take the name of the backend the interface selected (``dispatch.select``) and run that
backend's forward / backward pair. The forward returns lse as the head-major ``[h_q, total_q]``
buffer; ``interface.flash_attn_varlen_func`` returns its ``[total_q, h_q]`` transposed view.
lse is not differentiable (as in FlashMLA).
"""
import torch

from ..._library import NAMESPACE, _impl, _lib
from ...dispatch import backend_named

_lib.define(
    "flash_attn_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
    "float softmax_scale, bool causal, str backend) -> (Tensor, Tensor)")
_lib.define(
    "flash_attn_varlen_backward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, "
    "Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, float softmax_scale, bool causal, "
    "str backend) -> (Tensor, Tensor, Tensor)")


@_impl("flash_attn_varlen")
def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, backend):
    out, lse = backend_named("mha_prefill", backend).run(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                         softmax_scale, causal)
    return out, lse.t()  # the head-major buffer the backends' [total_q, h_q] lse views


@torch.library.register_fake(f"{NAMESPACE}::flash_attn_varlen")
def _flash_attn_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                            backend):
    total_q, h_q, _ = q.shape
    return (q.new_empty(total_q, h_q, v.shape[-1]),
            q.new_empty(h_q, total_q, dtype=torch.float32))


@_impl("flash_attn_varlen_backward")
def _flash_attn_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                softmax_scale, causal, backend):
    return backend_named("mha_prefill", backend).backward(
        dout, q, k, v, out, lse.t(), cu_seqlens_q, cu_seqlens_k, softmax_scale, causal)


@torch.library.register_fake(f"{NAMESPACE}::flash_attn_varlen_backward")
def _flash_attn_varlen_backward_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                     softmax_scale, causal, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.softmax_scale, ctx.causal, ctx.backend = softmax_scale, causal, backend
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dq, dk, dv = torch.ops.openmla.flash_attn_varlen_backward(
        dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, ctx.softmax_scale, ctx.causal,
        ctx.backend)
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd(f"{NAMESPACE}::flash_attn_varlen", _backward,
                                setup_context=_setup_context)
