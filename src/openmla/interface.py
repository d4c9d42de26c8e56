"""FlashMLA's public API (SPEC §1): docstrings, argument checks, dispatch to a backend.

Names, signatures, positional order, defaults, return shapes, dtypes and layouts follow FlashMLA,
so ``import openmla as flash_mla`` works. Each function checks its arguments (errors name the
argument, what was expected and what was given), then hands the call to the backend that
``openmla.dispatch`` selects: a Hopper fast path, the portable Triton kernel, or the float32
reference that runs on any device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import _validate as V
from .device import device_info
from .dispatch import select
from .errors import ArgumentTypeError, ArgumentValueError, SchedMetaError, UnsupportedError
from .kvcache.fp8 import FP8_CACHE_DTYPES, FP8_FORMATS

D_V = 512  # latent value width of every MLA path
DECODE_DTYPES = (torch.bfloat16, torch.float16)
MLA_D_QK = (576, 512)  # 576: DeepSeek V3/V3.2 (512 NoPE + 64 RoPE); 512: MODEL1
INT32 = (torch.int32,)


@dataclass
class FlashMLASchedMeta:
    """Scheduling state of ``flash_mla_with_kvcache``, filled in by its first call.

    One object may be reused by calls of the same decode step (every layer) while shapes and the
    values of ``cache_seqlens`` / ``topk_length`` / ``extra_topk_length`` stay the same; create a
    new one (``get_mla_metadata()``) per step.
    """

    @dataclass
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]
        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False
    config: Optional[Config] = None
    tile_scheduler_metadata: Optional[torch.Tensor] = None  # int32 [num_sm_parts, 8]
    num_splits: Optional[torch.Tensor] = None  # int32 [b + 1]


def get_mla_metadata(*args, **kwargs) -> Tuple[FlashMLASchedMeta, None]:
    """Returns a fresh ``(FlashMLASchedMeta(), None)``.

    Every argument is accepted and ignored, so that all of FlashMLA's call forms keep working:
    ``get_mla_metadata()``, ``get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)`` and
    ``get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv, h_q, is_fp8_kvcache, topk)``.
    The schedule is computed on the device by the first ``flash_mla_with_kvcache`` call that
    receives the object.
    """
    return FlashMLASchedMeta(), None


def _check_sched(meta: FlashMLASchedMeta, cfg: FlashMLASchedMeta.Config) -> None:
    if not meta.have_initialized or meta.config is None:
        meta.config = cfg
        meta.have_initialized = True
        return
    for field in dataclasses.fields(cfg):
        old, new = getattr(meta.config, field.name), getattr(cfg, field.name)
        if old != new:
            raise SchedMetaError(
                f"tile_scheduler_metadata: this FlashMLASchedMeta was initialised with "
                f"{field.name}={old!r} but this call has {field.name}={new!r}; create a new one "
                f"with get_mla_metadata() for each configuration and decode step")


def _resolve_sched(tile_scheduler_metadata, num_splits) -> Optional[FlashMLASchedMeta]:
    """The meta object, or None for FlashMLA's legacy tensor pair (accepted, not interpreted)."""
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise SchedMetaError(
                f"num_splits: expected None when tile_scheduler_metadata is a FlashMLASchedMeta, "
                f"got {type(num_splits).__name__}")
        return tile_scheduler_metadata
    if isinstance(tile_scheduler_metadata, torch.Tensor):
        # Legacy (2025-02..2025-09) schedule tensors: layouts differ across FlashMLA versions,
        # so they are not interpreted; openmla schedules the call itself (SPEC §1.8).
        if num_splits is not None and not isinstance(num_splits, torch.Tensor):
            raise ArgumentTypeError(
                f"num_splits: expected a torch.Tensor or None with legacy tensor metadata, "
                f"got {type(num_splits).__name__}")
        return None
    raise ArgumentTypeError(
        f"tile_scheduler_metadata: expected a FlashMLASchedMeta from get_mla_metadata(), got "
        f"{type(tile_scheduler_metadata).__name__}")


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor],
    head_dim_v: int,
    tile_scheduler_metadata: FlashMLASchedMeta,
    num_splits: None = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MLA decode over a paged KV cache: dense (``indices`` None) or sparse over an FP8 cache.

    Dense: ``q [b, s_q, h_q, d_qk]`` bf16/fp16 (d_qk 576, or 512), ``k_cache
    [num_blocks, page_block_size, h_kv, d_qk]`` same dtype (any page size, h_q % h_kv == 0),
    ``block_table [b, max_blocks]`` int32, ``cache_seqlens [b]`` int32 (0 allowed); key j of
    request i is ``k_cache[block_table[i, j // page_block_size], j % page_block_size]``, its value
    the first ``head_dim_v`` (512) dims. ``causal`` (s_q > 1) is bottom-right aligned.

    Sparse (``indices [b, s_q, topk]`` int32 physical indices ``page * pbs + offset``, -1
    invalid): ``q`` bf16 with d_qk 576 (V3.2 FP8 layout, 656 bytes/token) or 512 (MODEL1, 584),
    ``k_cache [num_blocks, pbs, 1, bytes]`` float8_e4m3fn/int8/uint8, ``is_fp8_kvcache=True``,
    optional ``attn_sink [h_q]`` float32, ``topk_length [b]`` int32, and a second cache
    ``extra_k_cache`` with ``extra_indices_in_kvcache [b, s_q, extra_topk]`` and
    ``extra_topk_length [b]``.

    ``softmax_scale`` defaults to ``d_qk ** -0.5``. ``tile_scheduler_metadata`` is the object
    from ``get_mla_metadata()`` (FlashMLA's legacy tensor pair is accepted and ignored).

    Returns ``out [b, s_q, h_q, 512]`` (q's dtype; bf16 for sparse) and ``softmax_lse
    [b, h_q, s_q]`` float32 in natural log, +inf for rows with nothing to attend (out 0 there).

    Example::

        meta, _ = openmla.get_mla_metadata()
        out, lse = openmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                                  meta, causal=True)
    """
    sched = _resolve_sched(tile_scheduler_metadata, num_splits)
    V.flag("causal", causal)
    V.flag("is_fp8_kvcache", is_fp8_kvcache)
    softmax_scale = V.scale("softmax_scale", softmax_scale)
    V.integer("head_dim_v", head_dim_v, allowed=(D_V,))
    sparse = indices is not None
    if sparse:
        problem = _check_sparse_decode(q, k_cache, indices, is_fp8_kvcache, causal, attn_sink,
                                       topk_length, extra_k_cache, extra_indices_in_kvcache,
                                       extra_topk_length)
        op = "sparse_decode"
    else:
        problem = _check_dense_decode(q, k_cache, block_table, cache_seqlens, is_fp8_kvcache,
                                      attn_sink, extra_k_cache, extra_indices_in_kvcache,
                                      topk_length, extra_topk_length)
        op = "dense_decode"
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    if sched is not None:
        _check_sched(sched, FlashMLASchedMeta.Config(
            q.shape[0], q.shape[1], q.shape[2], k_cache.shape[1], k_cache.shape[2], causal,
            is_fp8_kvcache, indices.shape[-1] if sparse else None,
            extra_k_cache.shape[1] if extra_k_cache is not None else None,
            extra_indices_in_kvcache.shape[-1] if extra_indices_in_kvcache is not None else None))
    backend = select(op, device_info(q.device), problem)
    if sparse:
        return backend.run(q, k_cache, indices, softmax_scale, head_dim_v, attn_sink,
                           topk_length, extra_k_cache, extra_indices_in_kvcache,
                           extra_topk_length, sched)
    return backend.run(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                       head_dim_v, sched)


def _check_dense_decode(q, k_cache, block_table, cache_seqlens, is_fp8_kvcache, attn_sink,
                        extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length):
    dense = "in dense decode (indices is None)"
    for name, value in (("attn_sink", attn_sink), ("extra_k_cache", extra_k_cache),
                        ("extra_indices_in_kvcache", extra_indices_in_kvcache),
                        ("topk_length", topk_length), ("extra_topk_length", extra_topk_length)):
        V.must_be_none(name, value, dense)
    if is_fp8_kvcache:
        raise UnsupportedError(
            "is_fp8_kvcache: dense decode (indices is None) over an FP8 cache is not supported; "
            "pass indices for sparse decode or a bf16/fp16 k_cache with is_fp8_kvcache=False")
    V.tensor("q", q, ndim=4, dtypes=DECODE_DTYPES, last_dim_contiguous=True)
    b, s_q, h_q, d = q.shape
    dev = q.device
    if b == 0 or s_q == 0 or h_q == 0:
        raise ArgumentValueError(f"q: expected b, s_q, h_q > 0, got shape {list(q.shape)}")
    if d not in MLA_D_QK:
        raise ArgumentValueError(f"q: expected head dim 576 or 512, got {d}")
    V.tensor("k_cache", k_cache, ndim=4, dtypes=(q.dtype,), device=dev, last_dim_contiguous=True,
             why="same dtype as q")
    num_blocks, pbs, h_kv, dk = k_cache.shape
    if dk != d:
        raise ArgumentValueError(f"k_cache: expected last dim {d} (q's head dim), got {dk}")
    if pbs < 1:
        raise ArgumentValueError(f"k_cache: expected page_block_size (dim 1) >= 1, got {pbs}")
    if h_kv < 1 or h_q % h_kv != 0:
        raise ArgumentValueError(
            f"k_cache: expected h_kv (dim 2) >= 1 dividing h_q={h_q}, got {h_kv}")
    if block_table is None or cache_seqlens is None:
        name = "block_table" if block_table is None else "cache_seqlens"
        raise ArgumentValueError(f"{name}: expected a tensor in dense decode, got None")
    V.tensor("block_table", block_table, ndim=2, dtypes=INT32, device=dev, shape=(b, None),
             last_dim_contiguous=True)
    V.tensor("cache_seqlens", cache_seqlens, dtypes=INT32, device=dev, shape=(b,))
    if V.debug_enabled():
        V.nonnegative_values("cache_seqlens", cache_seqlens, block_table.shape[1] * pbs,
                             "block_table.shape[1] * page_block_size")
        _debug_block_table(block_table, cache_seqlens, pbs, num_blocks)
    return {"b": b, "s_q": s_q, "h_q": h_q, "h_kv": h_kv, "d": d, "page_block_size": pbs,
            "dtype": q.dtype}


def _debug_block_table(block_table, cache_seqlens, pbs, num_blocks):
    used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] < (
        (cache_seqlens.long() + pbs - 1) // pbs)[:, None]
    pages = block_table[used]
    if pages.numel() and (int(pages.min()) < 0 or int(pages.max()) >= num_blocks):
        raise ArgumentValueError(
            f"block_table: expected used entries in [0, {num_blocks}), got values in "
            f"[{int(pages.min())}, {int(pages.max())}]")


def _check_fp8_cache(name, cache, d_qk, dev):
    fmt = FP8_FORMATS[d_qk]
    V.tensor(name, cache, ndim=4, dtypes=FP8_CACHE_DTYPES, device=dev, last_dim_contiguous=True,
             why="FP8 KV cache bytes")
    if cache.shape[2] != 1:
        raise ArgumentValueError(f"{name}: expected h_kv (dim 2) = 1 in sparse decode, "
                                 f"got {cache.shape[2]}")
    if cache.shape[3] != fmt.bytes_per_token:
        raise ArgumentValueError(
            f"{name}: expected {fmt.bytes_per_token} bytes per token (the {fmt.name} FP8 layout "
            f"for d_qk {d_qk}), got {cache.shape[3]}")
    if cache.shape[1] < 1:
        raise ArgumentValueError(f"{name}: expected page_block_size (dim 1) >= 1, "
                                 f"got {cache.shape[1]}")
    if cache.shape[1] > 1 and cache.stride(1) != fmt.bytes_per_token:
        raise ArgumentValueError(
            f"{name}: expected stride(1) = {fmt.bytes_per_token} (tokens of a block packed), "
            f"got {cache.stride(1)}")
    if cache.shape[0] > 1 and cache.stride(0) < cache.shape[1] * fmt.bytes_per_token:
        raise ArgumentValueError(
            f"{name}: expected stride(0) >= page_block_size * {fmt.bytes_per_token}, "
            f"got {cache.stride(0)}")


def _check_sparse_decode(q, k_cache, indices, is_fp8_kvcache, causal, attn_sink, topk_length,
                         extra_k_cache, extra_indices_in_kvcache, extra_topk_length):
    if causal:
        raise ArgumentValueError("causal: expected False in sparse decode (indices given), "
                                 "got True")
    if not is_fp8_kvcache:
        raise UnsupportedError(
            "is_fp8_kvcache: expected True in sparse decode (indices given): sparse decode reads "
            "the FP8 KV cache, got False")
    V.tensor("q", q, ndim=4, dtypes=(torch.bfloat16,), last_dim_contiguous=True)
    b, s_q, h_q, d_qk = q.shape
    dev = q.device
    if b == 0 or s_q == 0 or h_q == 0:
        raise ArgumentValueError(f"q: expected b, s_q, h_q > 0, got shape {list(q.shape)}")
    if d_qk not in MLA_D_QK:
        raise ArgumentValueError(f"q: expected head dim 576 (V3.2) or 512 (MODEL1), got {d_qk}")
    _check_fp8_cache("k_cache", k_cache, d_qk, dev)
    V.tensor("indices", indices, ndim=3, dtypes=INT32, device=dev, shape=(b, s_q, None),
             last_dim_contiguous=True)
    if indices.shape[-1] < 1:
        raise ArgumentValueError(f"indices: expected topk (dim 2) >= 1, got {indices.shape[-1]}")
    V.optional_tensor("attn_sink", attn_sink, dtypes=(torch.float32,), device=dev, shape=(h_q,))
    V.optional_tensor("topk_length", topk_length, dtypes=INT32, device=dev, shape=(b,))
    if extra_k_cache is None:
        V.must_be_none("extra_indices_in_kvcache", extra_indices_in_kvcache,
                       "without extra_k_cache")
        V.must_be_none("extra_topk_length", extra_topk_length, "without extra_k_cache")
    else:
        if extra_indices_in_kvcache is None:
            raise ArgumentValueError("extra_indices_in_kvcache: expected a tensor with "
                                     "extra_k_cache, got None")
        _check_fp8_cache("extra_k_cache", extra_k_cache, d_qk, dev)
        V.tensor("extra_indices_in_kvcache", extra_indices_in_kvcache, ndim=3, dtypes=INT32,
                 device=dev, shape=(b, s_q, None), last_dim_contiguous=True)
        if extra_indices_in_kvcache.shape[-1] < 1:
            raise ArgumentValueError("extra_indices_in_kvcache: expected extra_topk (dim 2) >= 1, "
                                     f"got {extra_indices_in_kvcache.shape[-1]}")
        V.optional_tensor("extra_topk_length", extra_topk_length, dtypes=INT32, device=dev,
                          shape=(b,))
    if V.debug_enabled():
        if topk_length is not None:
            V.nonnegative_values("topk_length", topk_length, indices.shape[-1], "topk")
        if extra_topk_length is not None:
            V.nonnegative_values("extra_topk_length", extra_topk_length,
                                 extra_indices_in_kvcache.shape[-1], "extra_topk")
    return {"b": b, "s_q": s_q, "h_q": h_q, "d_qk": d_qk, "topk": indices.shape[-1],
            "page_block_size": k_cache.shape[1], "has_sink": attn_sink is not None,
            "has_topk_length": topk_length is not None, "has_extra": extra_k_cache is not None}


def flash_mla_sparse_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse MLA prefill: each query token attends the KV rows its indices list.

    ``q [s_q, h_q, d_qk]`` bf16 (d_qk 576 or 512), ``kv [s_kv, 1, d_qk]`` bf16, ``indices
    [s_q, 1, topk]`` int32 (invalid: < 0 or >= s_kv), ``sm_scale`` (required), ``d_v`` 512,
    optional ``attn_sink [h_q]`` float32 and ``topk_length [s_q]`` int32 (per query token).
    V is the first 512 dims of kv (all of them for d_qk 512).

    Returns ``out [s_q, h_q, 512]`` bf16, ``max_logits [s_q, h_q]`` and ``lse [s_q, h_q]``
    float32 in natural log; a query with no valid index gets out 0, max_logits -inf, lse +inf.

    Example::

        out, max_logits, lse = openmla.flash_mla_sparse_fwd(q, kv, indices, sm_scale=0.5)
    """
    V.tensor("q", q, ndim=3, dtypes=(torch.bfloat16,), last_dim_contiguous=True)
    s_q, h_q, d_qk = q.shape
    dev = q.device
    if h_q == 0:
        raise ArgumentValueError(f"q: expected h_q > 0, got shape {list(q.shape)}")
    if d_qk not in MLA_D_QK:
        raise ArgumentValueError(f"q: expected head dim 576 or 512, got {d_qk}")
    V.tensor("kv", kv, ndim=3, dtypes=(torch.bfloat16,), device=dev, shape=(None, 1, d_qk),
             last_dim_contiguous=True, why="h_kv must be 1; head dim as q's")
    V.tensor("indices", indices, ndim=3, dtypes=INT32, device=dev, shape=(s_q, 1, None),
             last_dim_contiguous=True)
    if indices.shape[-1] < 1:
        raise ArgumentValueError(f"indices: expected topk (dim 2) >= 1, got {indices.shape[-1]}")
    sm_scale = V.scale("sm_scale", sm_scale, required=True)
    V.integer("d_v", d_v, allowed=(D_V,))
    V.optional_tensor("attn_sink", attn_sink, dtypes=(torch.float32,), device=dev, shape=(h_q,))
    V.optional_tensor("topk_length", topk_length, dtypes=INT32, device=dev, shape=(s_q,))
    problem = {"s_q": s_q, "h_q": h_q, "d_qk": d_qk, "topk": indices.shape[-1],
               "has_sink": attn_sink is not None, "has_topk_length": topk_length is not None}
    backend = select("sparse_prefill", device_info(dev), problem)
    return backend.run(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)


MHA_DTYPES = (torch.bfloat16, torch.float16)


def _equal_length_cu(total: int, b: int, name: str, device: torch.device) -> torch.Tensor:
    if b <= 0 or total % b != 0:
        raise ArgumentValueError(
            f"{name}: with is_varlen=False every sequence has total/b tokens; expected a total "
            f"divisible by b={b}, got {total}")
    return torch.arange(b + 1, dtype=torch.int32, device=device) * (total // b)


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_qo: torch.Tensor,
    cu_seqlens_kv: torch.Tensor,
    max_seqlen_qo: int,
    max_seqlen_kv: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense MHA prefill over packed variable-length sequences, with autograd.

    ``q [total_q, h_q, d_qk]``, ``k [total_k, h_kv, d_qk]``, ``v [total_k, h_kv, d_v]`` bf16 (or
    fp16), ``cu_seqlens_qo`` / ``cu_seqlens_kv`` int32 ``[b + 1]`` prefix sums from 0;
    ``max_seqlen_*`` at least the longest sequence. Query head h reads KV head
    ``h // (h_q / h_kv)``. ``causal`` is bottom-right aligned. ``is_varlen=False``: every sequence
    has ``total / b`` tokens. ``dropout_p`` must be 0.

    Returns ``out [total_q, h_q, d_v]`` (q's dtype) and ``lse [total_q, h_q]`` float32 natural
    log with strides ``(1, total_q)``; rows with no key get out 0 and lse -inf. Gradients flow
    to q, k and v (GQA included); none through lse.

    Example::

        out, lse = openmla.flash_attn_varlen_func(q, k, v, cu, cu, 4096, 4096, causal=True)
    """
    V.tensor("q", q, ndim=3, dtypes=MHA_DTYPES, last_dim_contiguous=True)
    total_q, h_q, d_qk = q.shape
    dev = q.device
    V.tensor("k", k, ndim=3, dtypes=(q.dtype,), device=dev, last_dim_contiguous=True,
             why="same dtype as q")
    V.tensor("v", v, ndim=3, dtypes=(q.dtype,), device=dev, last_dim_contiguous=True,
             why="same dtype as q")
    total_k, h_kv, dk = k.shape
    if dk != d_qk:
        raise ArgumentValueError(f"k: expected head dim {d_qk} (q's), got {dk}")
    if v.shape[0] != total_k or v.shape[1] != h_kv:
        raise ArgumentValueError(
            f"v: expected shape [{total_k}, {h_kv}, d_v] (k's tokens and heads), "
            f"got {list(v.shape)}")
    if h_q == 0 or h_kv == 0 or h_q % h_kv != 0:
        raise ArgumentValueError(f"k: expected h_kv (dim 1) >= 1 dividing h_q={h_q}, got {h_kv}")
    V.tensor("cu_seqlens_qo", cu_seqlens_qo, ndim=1, dtypes=INT32, device=dev)
    b = cu_seqlens_qo.shape[0] - 1
    if b < 1:
        raise ArgumentValueError(f"cu_seqlens_qo: expected [b + 1] with b >= 1, "
                                 f"got shape {list(cu_seqlens_qo.shape)}")
    V.tensor("cu_seqlens_kv", cu_seqlens_kv, dtypes=INT32, device=dev, shape=(b + 1,),
             why="same length as cu_seqlens_qo")
    V.integer("max_seqlen_qo", max_seqlen_qo, minimum=0)
    V.integer("max_seqlen_kv", max_seqlen_kv, minimum=0)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise ArgumentTypeError(f"dropout_p: expected a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise UnsupportedError(f"dropout_p: expected 0.0 (dropout is not supported), "
                               f"got {dropout_p}")
    softmax_scale = V.scale("softmax_scale", softmax_scale)
    V.flag("causal", causal)
    V.flag("deterministic", deterministic)  # every openmla backend is deterministic
    V.flag("is_varlen", is_varlen)
    if softmax_scale is None:
        softmax_scale = d_qk ** -0.5
    if not is_varlen:
        cu_seqlens_qo = _equal_length_cu(total_q, b, "q", dev)
        cu_seqlens_kv = _equal_length_cu(total_k, b, "k", dev)
    elif V.debug_enabled():
        _debug_cu_seqlens("cu_seqlens_qo", cu_seqlens_qo, total_q, max_seqlen_qo)
        _debug_cu_seqlens("cu_seqlens_kv", cu_seqlens_kv, total_k, max_seqlen_kv)
    problem = {"b": b, "h_q": h_q, "h_kv": h_kv, "d_qk": d_qk, "d_v": v.shape[-1],
               "causal": causal, "dtype": q.dtype, "max_seqlen_qo": max_seqlen_qo,
               "max_seqlen_kv": max_seqlen_kv}
    backend = select("mha_prefill", device_info(dev), problem)
    # one op with autograd (ops/mha_prefill/autograd.py); lse is its [h_q, total_q] buffer
    out, lse = torch.ops.openmla.flash_attn_varlen(q, k, v, cu_seqlens_qo, cu_seqlens_kv,
                                                   softmax_scale, causal, backend.name)
    return out, lse.t()


def _debug_cu_seqlens(name: str, cu: torch.Tensor, total: int, max_seqlen: int) -> None:
    lens = cu[1:].long() - cu[:-1].long()
    if int(cu[0]) != 0 or int(cu[-1]) > total or (lens.numel() and int(lens.min()) < 0):
        raise ArgumentValueError(f"{name}: expected non-decreasing prefix sums from 0 to at most "
                                 f"{total}, got {cu.tolist()}")
    if lens.numel() and int(lens.max()) > max_seqlen:
        raise ArgumentValueError(f"{name}: longest sequence {int(lens.max())} exceeds the "
                                 f"max_seqlen {max_seqlen} given")


def _split_last(name: str, packed: torch.Tensor, sizes: Tuple[int, ...]) -> Tuple[torch.Tensor, ...]:
    V.tensor(name, packed, ndim=3, dtypes=MHA_DTYPES, last_dim_contiguous=True)
    if packed.shape[-1] != sum(sizes) or min(sizes) < 1:
        raise ArgumentValueError(
            f"{name}: expected last dim {' + '.join(map(str, sizes))} = {sum(sizes)} "
            f"(packed along the head dim), got {packed.shape[-1]}")
    return tuple(torch.split(packed, sizes, dim=-1))


def flash_attn_varlen_qkvpacked_func(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    head_dim_qk: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``flash_attn_varlen_func`` on ``qkv [total, h, 2 * head_dim_qk + d_v]`` packed along the
    last dim (q, k, v in that order); the same sequences for queries and keys."""
    V.integer("head_dim_qk", head_dim_qk, minimum=1)
    if isinstance(qkv, torch.Tensor) and qkv.dim() == 3:
        d_v = qkv.shape[-1] - 2 * head_dim_qk
        q, k, v = _split_last("qkv", qkv, (head_dim_qk, head_dim_qk, d_v))
    else:
        V.tensor("qkv", qkv, ndim=3)
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, deterministic, is_varlen)


def flash_attn_varlen_kvpacked_func(
    q: torch.Tensor,
    kv: torch.Tensor,
    cu_seqlens_qo: torch.Tensor,
    cu_seqlens_kv: torch.Tensor,
    max_seqlen_qo: int,
    max_seqlen_kv: int,
    head_dim_qk: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    deterministic: bool = False,
    is_varlen: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``flash_attn_varlen_func`` with ``kv [total_k, h_kv, head_dim_qk + d_v]`` packed along
    the last dim (k, then v)."""
    V.integer("head_dim_qk", head_dim_qk, minimum=1)
    if isinstance(kv, torch.Tensor) and kv.dim() == 3:
        k, v = _split_last("kv", kv, (head_dim_qk, kv.shape[-1] - head_dim_qk))
    else:
        V.tensor("kv", kv, ndim=3)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_qo, cu_seqlens_kv, max_seqlen_qo,
                                  max_seqlen_kv, dropout_p, softmax_scale, causal, deterministic,
                                  is_varlen)
