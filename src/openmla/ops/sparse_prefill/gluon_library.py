"""torch.library registration of the Hopper sparse-prefill launcher
(``openmla::sparse_prefill_gluon``), as ``openmla/_library.py`` registers the others: one opaque
op with a fake implementation."""
from __future__ import annotations

import torch

from ..._library import NAMESPACE, _impl, _lib

_lib.define(
    "sparse_prefill_gluon(Tensor q, Tensor kv, Tensor indices, Tensor? attn_sink, "
    "Tensor? topk_length, float sm_scale, int d_v, int stages, int load_warps, int grid_ctas, "
    "bool evict_last) -> (Tensor, Tensor, Tensor)")


@_impl("sparse_prefill_gluon")
def _sparse_prefill_gluon(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, stages,
                          load_warps, grid_ctas, evict_last):
    from .gluon_launch import sparse_prefill_gluon_kernel

    return sparse_prefill_gluon_kernel(q, kv, indices, attn_sink, topk_length, sm_scale, d_v,
                                       stages, load_warps, grid_ctas, evict_last)


@torch.library.register_fake(f"{NAMESPACE}::sparse_prefill_gluon")
def _sparse_prefill_gluon_fake(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, stages,
                               load_warps, grid_ctas, evict_last):
    s_q, h_q, _ = q.shape
    return (q.new_empty(s_q, h_q, d_v),
            q.new_empty(s_q, h_q, dtype=torch.float32),
            q.new_empty(s_q, h_q, dtype=torch.float32))


ops = getattr(torch.ops, NAMESPACE)
