"""torch.library registration of the kernel launchers, so that ``torch.compile`` sees each launch
as one opaque op with a fake (meta) implementation.

Direct ``Library.define`` / ``impl`` plus ``register_fake`` costs about 4 µs per eager call,
against about 25 µs for ``torch.library.custom_op``; decode calls are tens of microseconds.
Ops take and return plain tensors; the Python wrappers (``ops/*/launch.py``) keep the rest.
"""
from __future__ import annotations

import torch

NAMESPACE = "openmla"
_lib = torch.library.Library(NAMESPACE, "DEF")  # noqa: TOR901 - direct registration on purpose

_lib.define("decode_schedule(Tensor lengths, int num_parts) -> (Tensor, Tensor)")
_lib.define(
    "dense_decode(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, "
    "Tensor sched_meta, Tensor num_splits, float softmax_scale, bool causal, int head_dim_v, "
    "int block_h, int block_n, int num_warps, int num_stages, bool use_tma) -> (Tensor, Tensor)")
_lib.define(
    "dense_decode_gluon(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, "
    "Tensor sched_meta, Tensor num_splits, float softmax_scale, bool causal, int head_dim_v, "
    "int stages) -> (Tensor, Tensor)")


def _impl(name: str):
    def wrap(fn):
        for key in ("CUDA", "CPU"):
            _lib.impl(name, fn, key)
        return fn
    return wrap


@_impl("decode_schedule")
def _decode_schedule(lengths, num_parts):
    from .ops.schedule.launch import decode_schedule

    return decode_schedule(lengths, num_parts)


@torch.library.register_fake(f"{NAMESPACE}::decode_schedule")
def _decode_schedule_fake(lengths, num_parts):
    from .ops.schedule.ref import META_COLS

    return (lengths.new_empty(num_parts, META_COLS, dtype=torch.int32),
            lengths.new_empty(lengths.shape[0] + 1, dtype=torch.int32))


@_impl("dense_decode")
def _dense_decode(q, k_cache, block_table, cache_seqlens, sched_meta, num_splits, softmax_scale,
                  causal, head_dim_v, block_h, block_n, num_warps, num_stages, use_tma):
    from .ops.dense_decode.launch import dense_decode_kernels

    return dense_decode_kernels(q, k_cache, block_table, cache_seqlens, sched_meta, num_splits,
                                softmax_scale, causal, head_dim_v, block_h, block_n, num_warps,
                                num_stages, use_tma)


@torch.library.register_fake(f"{NAMESPACE}::dense_decode")
def _dense_decode_fake(q, k_cache, block_table, cache_seqlens, sched_meta, num_splits,
                       softmax_scale, causal, head_dim_v, block_h, block_n, num_warps, num_stages,
                       use_tma):
    b, s_q, h_q, _ = q.shape
    return (q.new_empty(b, s_q, h_q, head_dim_v),
            q.new_empty(b, h_q, s_q, dtype=torch.float32))


@_impl("dense_decode_gluon")
def _dense_decode_gluon(q, k_cache, block_table, cache_seqlens, sched_meta, num_splits,
                        softmax_scale, causal, head_dim_v, stages):
    from .ops.dense_decode.launch import dense_decode_gluon_kernels

    return dense_decode_gluon_kernels(q, k_cache, block_table, cache_seqlens, sched_meta,
                                      num_splits, softmax_scale, causal, head_dim_v, stages)


@torch.library.register_fake(f"{NAMESPACE}::dense_decode_gluon")
def _dense_decode_gluon_fake(q, k_cache, block_table, cache_seqlens, sched_meta, num_splits,
                             softmax_scale, causal, head_dim_v, stages):
    b, s_q, h_q, _ = q.shape
    return (q.new_empty(b, s_q, h_q, head_dim_v),
            q.new_empty(b, h_q, s_q, dtype=torch.float32))


ops = torch.ops.openmla


# --- sparse prefill (ops/sparse_prefill) ------------------------------------------------------
_lib.define(
    "sparse_prefill(Tensor q, Tensor kv, Tensor indices, Tensor? attn_sink, Tensor? topk_length, "
    "float sm_scale, int d_v, int block_h, int block_n, int num_warps, int num_stages) "
    "-> (Tensor, Tensor, Tensor)")


@_impl("sparse_prefill")
def _sparse_prefill(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, block_h, block_n,
                    num_warps, num_stages):
    from .ops.sparse_prefill.launch import sparse_prefill_kernel

    return sparse_prefill_kernel(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, block_h,
                                 block_n, num_warps, num_stages)


@torch.library.register_fake(f"{NAMESPACE}::sparse_prefill")
def _sparse_prefill_fake(q, kv, indices, attn_sink, topk_length, sm_scale, d_v, block_h, block_n,
                         num_warps, num_stages):
    s_q, h_q, _ = q.shape
    return (q.new_empty(s_q, h_q, d_v),
            q.new_empty(s_q, h_q, dtype=torch.float32),
            q.new_empty(s_q, h_q, dtype=torch.float32))


# --- sparse decode (ops/sparse_decode) --------------------------------------------------------
# lse comes back as a contiguous [b, s_q, h_q] buffer; the Python wrapper returns its
# [b, h_q, s_q] transposed view (FlashMLA's layout), so the op itself returns no views.
_lib.define(
    "sparse_decode(Tensor q, Tensor k_cache, Tensor indices, Tensor sched_meta, "
    "Tensor num_splits, float softmax_scale, int head_dim_v, Tensor? attn_sink, "
    "Tensor? topk_length, Tensor? extra_k_cache, Tensor? extra_indices_in_kvcache, "
    "Tensor? extra_topk_length, int block_h, int block_n, int num_warps, int num_stages) "
    "-> (Tensor, Tensor)")


@_impl("sparse_decode")
def _sparse_decode(q, k_cache, indices, sched_meta, num_splits, softmax_scale, head_dim_v,
                   attn_sink, topk_length, extra_k_cache, extra_indices_in_kvcache,
                   extra_topk_length, block_h, block_n, num_warps, num_stages):
    from .ops.sparse_decode.launch import sparse_decode_kernels

    return sparse_decode_kernels(q, k_cache, indices, sched_meta, num_splits, softmax_scale,
                                 head_dim_v, attn_sink, topk_length, extra_k_cache,
                                 extra_indices_in_kvcache, extra_topk_length, block_h, block_n,
                                 num_warps, num_stages)


@torch.library.register_fake(f"{NAMESPACE}::sparse_decode")
def _sparse_decode_fake(q, k_cache, indices, sched_meta, num_splits, softmax_scale, head_dim_v,
                        attn_sink, topk_length, extra_k_cache, extra_indices_in_kvcache,
                        extra_topk_length, block_h, block_n, num_warps, num_stages):
    b, s_q, h_q, _ = q.shape
    return (q.new_empty(b, s_q, h_q, head_dim_v, dtype=torch.bfloat16),
            q.new_empty(b, s_q, h_q, dtype=torch.float32))


# --- dense MHA prefill (ops/mha_prefill) -----------------------------------------------------
# The forward returns lse as its head-major [h_q, total_q] buffer; the Python wrapper returns
# the [total_q, h_q] transposed view (strides (1, total_q)), so the ops return no views.
_lib.define(
    "mha_prefill_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
    "float softmax_scale, bool causal, int block_m, int block_n, int num_warps, "
    "int num_stages) -> (Tensor, Tensor)")
_lib.define(
    "mha_prefill_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
    "Tensor cu_seqlens_q, Tensor cu_seqlens_k, float softmax_scale, bool causal, "
    "int dq_block_m, int dq_block_n, int dkdv_block_m, int dkdv_block_n, int num_warps, "
    "int dq_num_stages, int dkdv_num_stages) -> (Tensor, Tensor, Tensor)")


@_impl("mha_prefill_fwd")
def _mha_prefill_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, block_m,
                     block_n, num_warps, num_stages):
    from .ops.mha_prefill.launch import mha_prefill_fwd_kernel

    return mha_prefill_fwd_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                                  block_m, block_n, num_warps, num_stages)


@torch.library.register_fake(f"{NAMESPACE}::mha_prefill_fwd")
def _mha_prefill_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, block_m,
                          block_n, num_warps, num_stages):
    total_q, h_q, _ = q.shape
    return (q.new_empty(total_q, h_q, v.shape[-1]),
            q.new_empty(h_q, total_q, dtype=torch.float32))


@_impl("mha_prefill_bwd")
def _mha_prefill_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                     dq_block_m, dq_block_n, dkdv_block_m, dkdv_block_n, num_warps, dq_num_stages,
                     dkdv_num_stages):
    from .ops.mha_prefill.launch import mha_prefill_bwd_kernel

    return mha_prefill_bwd_kernel(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                  softmax_scale, causal, dq_block_m, dq_block_n, dkdv_block_m,
                                  dkdv_block_n, num_warps, dq_num_stages, dkdv_num_stages)


@torch.library.register_fake(f"{NAMESPACE}::mha_prefill_bwd")
def _mha_prefill_bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, softmax_scale,
                          causal, dq_block_m, dq_block_n, dkdv_block_m, dkdv_block_n, num_warps,
                          dq_num_stages, dkdv_num_stages):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
