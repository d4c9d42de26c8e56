"""torch.library registration of the Hopper (Gluon) sparse-decode launcher,
``openmla::sparse_decode_gluon``: one opaque op (split kernel + combine, the combine left out
with ``combine=False`` when the schedule keeps every request whole) with a fake
implementation, so ``torch.compile`` traces the Gluon backend as it does the portable one."""
from __future__ import annotations

import torch

from ..._library import NAMESPACE, _impl, _lib

# lse comes back as a contiguous [b, s_q, h_q] buffer (the wrapper returns its transposed view)
_lib.define(
    "sparse_decode_gluon(Tensor q, Tensor k_cache, Tensor indices, Tensor sched_meta, "
    "Tensor num_splits, float softmax_scale, int head_dim_v, Tensor? attn_sink, "
    "Tensor? topk_length, int stages, bool combine=True) -> (Tensor, Tensor)")


@_impl("sparse_decode_gluon")
def _sparse_decode_gluon(q, k_cache, indices, sched_meta, num_splits, softmax_scale, head_dim_v,
                         attn_sink, topk_length, stages, combine=True):
    from .gluon_launch import sparse_decode_gluon_kernels

    return sparse_decode_gluon_kernels(q, k_cache, indices, sched_meta, num_splits,
                                       softmax_scale, head_dim_v, attn_sink, topk_length, stages,
                                       combine=combine)


@torch.library.register_fake(f"{NAMESPACE}::sparse_decode_gluon")
def _sparse_decode_gluon_fake(q, k_cache, indices, sched_meta, num_splits, softmax_scale,
                              head_dim_v, attn_sink, topk_length, stages, combine=True):
    b, s_q, h_q, _ = q.shape
    return (q.new_empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16),
            q.new_empty(b, s_q, h_q, dtype=torch.float32))
