"""torch.library registration of the Gluon forward and backward of dense MHA prefill
(``openmla::mha_prefill_fwd_gluon``, ``openmla::mha_prefill_bwd_gluon``), beside the ops of
``openmla._library``: opaque ops for ``torch.compile``, with fake implementations. Like
``mha_prefill_fwd`` the forward returns lse as the head-major ``[h_q, total_q]`` buffer (no
views); the backward takes the ``[total_q, h_q]`` view and returns ``(dq, dk, dv)``."""
import torch

from ..._library import NAMESPACE, _impl, _lib

_lib.define(
    "mha_prefill_fwd_gluon(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
    "Tensor cu_seqlens_k, float softmax_scale, bool causal, int block_n, int stages, "
    "bool persistent) "
    "-> (Tensor, Tensor)")


@_impl("mha_prefill_fwd_gluon")
def _mha_prefill_fwd_gluon(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, block_n,
                           stages, persistent):
    from .gluon_launch import mha_prefill_fwd_gluon_kernel

    return mha_prefill_fwd_gluon_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                                        causal, block_n, stages, persistent)


@torch.library.register_fake(f"{NAMESPACE}::mha_prefill_fwd_gluon")
def _mha_prefill_fwd_gluon_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                                block_n, stages, persistent):
    total_q, h_q, _ = q.shape
    return (q.new_empty(total_q, h_q, v.shape[-1]),
            q.new_empty(h_q, total_q, dtype=torch.float32))


_lib.define(
    "mha_prefill_bwd_gluon(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor cu_seqlens_q, Tensor cu_seqlens_k, float softmax_scale, bool causal) "
    "-> (Tensor, Tensor, Tensor)")


@_impl("mha_prefill_bwd_gluon")
def _mha_prefill_bwd_gluon(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                           causal):
    from .gluon_bwd_launch import mha_prefill_bwd_gluon_kernel

    return mha_prefill_bwd_gluon_kernel(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                        softmax_scale, causal)


@torch.library.register_fake(f"{NAMESPACE}::mha_prefill_bwd_gluon")
def _mha_prefill_bwd_gluon_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                softmax_scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
