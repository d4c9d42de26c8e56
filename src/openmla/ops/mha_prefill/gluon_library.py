"""torch.library registration of the Gluon forward of dense MHA prefill
(``openmla::mha_prefill_fwd_gluon``), beside the ops of ``openmla._library``: one opaque op for
``torch.compile``, with a fake implementation. Like ``mha_prefill_fwd`` it returns lse as the
head-major ``[h_q, total_q]`` buffer (no views)."""
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
