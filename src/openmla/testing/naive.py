"""Naive, loop-based attention references written directly from SPEC.md §2.

These functions are the *independent* implementation that openmla's vectorised
float32 references (``openmla.ops.*.ref``) are checked against, so they deliberately
share no code with the rest of the package: they parse FP8 cache bytes themselves,
walk page tables one key at a time and compute every softmax row in float64.
They are slow (Python loops over batch / token / head) and meant for tiny shapes only.

Conventions shared by every function here:

* Scores and softmax statistics are computed in float64 from the inputs upcast to
  float64 (dequantized FP8 tokens are upcast from their exact bf16 values).
* Outputs are float64 tensors on the device of ``q`` (``naive_dequant_token`` returns
  float32 on the cache's device; its values are exactly representable in bf16).
* ``lse`` is the natural-log log-sum-exp of the scaled scores of the valid keys and
  never includes an attention sink.
* Lonely rows (no valid key) follow SPEC §2 / §2.6: decode and sparse prefill give
  ``out = 0``, ``lse = +inf`` (and ``max_logits = -inf``); dense MHA gives ``out = 0``,
  ``lse = -inf``.
* Only keys that are valid are ever read, so NaN/Inf stored in unused cache rows,
  unreferenced tokens or garbage block-table / index entries cannot leak.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

# --- FP8 cache layouts (SPEC §2.4) -------------------------------------------------
D_ROPE = 64  # RoPE dims kept in bf16 in both FP8 formats

# V32 "656-byte" format, d_qk = 576 (SPEC §2.4.1)
V32_D_QK = 576
V32_D_NOPE = 512
V32_TILE = 128  # NoPE elements covered by one fp32 scale
V32_NUM_SCALES = V32_D_NOPE // V32_TILE  # 4
V32_SCALE_BYTES = 4  # fp32
V32_NOPE_OFFSET = 0
V32_SCALE_OFFSET = V32_D_NOPE  # 512
V32_ROPE_OFFSET = V32_SCALE_OFFSET + V32_NUM_SCALES * V32_SCALE_BYTES  # 528
V32_BYTES_PER_TOKEN = V32_ROPE_OFFSET + D_ROPE * 2  # 656

# MODEL1 "584-byte" format, d_qk = 512, block-interleaved (SPEC §2.4.2)
MODEL1_D_QK = 512
MODEL1_D_NOPE = 448
MODEL1_TILE = 64  # NoPE elements covered by one UE8M0 scale
MODEL1_NUM_SCALES = MODEL1_D_NOPE // MODEL1_TILE  # 7
MODEL1_DATA_BYTES = MODEL1_D_NOPE + D_ROPE * 2  # 576: fp8 NoPE + bf16 RoPE, per token
MODEL1_SCALE_ROW_BYTES = 8  # 7 scale bytes + 1 pad byte, per token
MODEL1_BYTES_PER_TOKEN = MODEL1_DATA_BYTES + MODEL1_SCALE_ROW_BYTES  # 584

UE8M0_BIAS = 127  # UE8M0 byte e encodes 2^(e - 127)
UE8M0_NAN = 255  # the one NaN encoding of float8_e8m0fnu

_FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.int8, torch.uint8)

IntSeq = Union[torch.Tensor, Sequence[int]]


# --- small helpers ------------------------------------------------------------------
def _int_list(x: IntSeq, name: str) -> list[int]:
    """Python ints from a 1-D tensor or a sequence of ints."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(x.shape)}")
        return [int(v) for v in x.tolist()]
    return [int(v) for v in x]


def _softmax_row(
    scores: torch.Tensor,  # [n] float64, n >= 1
    values: torch.Tensor,  # [n, d_v] float64
) -> tuple[torch.Tensor, float, float]:
    """Return (out [d_v], lse, max score) of one non-empty attention row, all float64."""
    m = float(scores.max())
    weights = torch.exp(scores - m)  # [n]
    denom = float(weights.sum())
    lse = m + math.log(denom)
    out = (weights[:, None] * values).sum(dim=0) / denom  # [d_v]
    return out, lse, m


def _sink_factor(sink: float, lse: float) -> float:
    """SPEC §2 sink rule: out is multiplied by 1 / (1 + e^(sink - lse))."""
    if sink == -math.inf:
        return 1.0
    if sink == math.inf:
        return 0.0
    z = sink - lse
    if z > 700.0:  # e^z overflows float64; the factor is 0 to double precision
        return 0.0
    return 1.0 / (1.0 + math.exp(z))


# --- dense decode (SPEC §2.1) ----------------------------------------------------------
def naive_dense_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: IntSeq,
    softmax_scale: float,
    causal: bool,
    head_dim_v: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense paged MLA decode, one (batch, token, head) row at a time (SPEC §2.1).

    Args:
        q: ``[b, s_q, h_q, d]``, any float dtype.
        k_cache: ``[num_blocks, pbs, h_kv, d]`` paged cache, any page block size pbs.
            Key ``j`` of request ``i`` for KV head ``g`` is
            ``k_cache[block_table[i, j // pbs], j % pbs, g]``; K is the whole vector,
            V its first ``head_dim_v`` entries.
        block_table: ``[b, max_blocks_per_seq]`` integer page table. Only entries at
            positions ``< ceil(L_i / pbs)`` are read.
        cache_seqlens: ``[b]`` context lengths ``L_i >= 0``.
        softmax_scale: multiplier of ``<q, k>``.
        causal: bottom-right aligned causal mask (token t sees keys ``j <= L - s_q + t``);
            only applied when ``s_q > 1``.
        head_dim_v: V width (first ``head_dim_v`` dims of each key).

    Returns:
        ``out [b, s_q, h_q, head_dim_v]`` float64 and ``lse [b, h_q, s_q]`` float64
        (natural log, ``+inf`` and ``out = 0`` for rows without a valid key).
    """
    if q.dim() != 4:
        raise ValueError(f"q: expected 4-D [b, s_q, h_q, d], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4:
        raise ValueError(
            f"k_cache: expected 4-D [num_blocks, pbs, h_kv, d], got shape {tuple(k_cache.shape)}"
        )
    b, s_q, h_q, d = q.shape
    num_blocks, pbs, h_kv, d_k = k_cache.shape
    if d_k != d:
        raise ValueError(f"k_cache: expected head dim {d} (q's), got {d_k}")
    if h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"k_cache: expected h_kv dividing h_q={h_q}, got h_kv={h_kv}")
    if not 0 < head_dim_v <= d:
        raise ValueError(f"head_dim_v: expected 1..{d}, got {head_dim_v}")
    if block_table.dim() != 2 or block_table.shape[0] != b:
        raise ValueError(
            f"block_table: expected shape [{b}, max_blocks], got {tuple(block_table.shape)}"
        )
    seqlens = _int_list(cache_seqlens, "cache_seqlens")
    if len(seqlens) != b:
        raise ValueError(f"cache_seqlens: expected {b} values, got {len(seqlens)}")

    heads_per_kv = h_q // h_kv
    apply_causal = causal and s_q > 1
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64, device=q.device)

    for i in range(b):
        seqlen = seqlens[i]
        if seqlen < 0:
            raise ValueError(f"cache_seqlens: expected values >= 0, got {seqlen} at {i}")
        if seqlen == 0:
            continue  # every row lonely
        num_pages = (seqlen + pbs - 1) // pbs
        if num_pages > block_table.shape[1]:
            raise ValueError(
                f"block_table: request {i} needs {num_pages} pages for {seqlen} keys, "
                f"got only {block_table.shape[1]} columns"
            )
        # Gather the L keys of request i, one key at a time.
        keys = []
        for j in range(seqlen):
            page = int(block_table[i, j // pbs])
            if not 0 <= page < num_blocks:
                raise ValueError(
                    f"block_table: entry [{i}, {j // pbs}] = {page} is not a page in "
                    f"[0, {num_blocks})"
                )
            keys.append(k_cache[page, j % pbs])  # [h_kv, d]
        keys_i = torch.stack(keys).to(torch.float64)  # [L, h_kv, d]

        for t in range(s_q):
            # Number of visible keys: all L, or L - (s_q - 1 - t) under causal masking.
            n_visible = seqlen - (s_q - 1 - t) if apply_causal else seqlen
            if n_visible <= 0:
                continue  # lonely row: out 0, lse +inf
            for h in range(h_q):
                g = h // heads_per_kv
                k_rows = keys_i[:n_visible, g, :]  # [n, d]
                v_rows = k_rows[:, :head_dim_v]  # [n, dv]
                q_row = q[i, t, h].to(torch.float64)  # [d]
                scores = softmax_scale * (k_rows @ q_row)  # [n]
                o, row_lse, _ = _softmax_row(scores, v_rows)
                out[i, t, h] = o
                lse[i, h, t] = row_lse
    return out, lse


# --- FP8 token decoding (SPEC §2.4) --------------------------------------------------
def _raw_bytes(k_cache: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Copy ``length`` bytes of k_cache's storage starting ``start`` bytes after the
    tensor's first element; returns a fresh contiguous uint8 tensor [length]."""
    raw = k_cache.view(torch.uint8)  # same element size, same storage
    window = torch.as_strided(raw, (length,), (1,), raw.storage_offset() + start)
    return window.clone()


def _ue8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """UE8M0 bytes (uint8) -> float32 powers of two 2^(e - 127); 255 -> NaN."""
    e64 = e.to(torch.float64)
    scale = torch.exp2(e64 - UE8M0_BIAS)
    scale = torch.where(e == UE8M0_NAN, torch.full_like(scale, math.nan), scale)
    return scale.to(torch.float32)


def _cache_format(k_cache: torch.Tensor, d_qk: int) -> int:
    """Validate an FP8 cache tensor for ``d_qk``; return its bytes per view row B."""
    if d_qk == V32_D_QK:
        row_bytes = V32_BYTES_PER_TOKEN
    elif d_qk == MODEL1_D_QK:
        row_bytes = MODEL1_BYTES_PER_TOKEN
    else:
        raise ValueError(f"d_qk: expected {V32_D_QK} (V32) or {MODEL1_D_QK} (MODEL1), got {d_qk}")
    if k_cache.dtype not in _FP8_CACHE_DTYPES:
        raise ValueError(
            f"k_cache: expected dtype float8_e4m3fn, int8 or uint8, got {k_cache.dtype}"
        )
    if k_cache.dim() != 4 or k_cache.shape[2] != 1 or k_cache.shape[3] != row_bytes:
        raise ValueError(
            f"k_cache: expected shape [num_blocks, pbs, 1, {row_bytes}] for d_qk={d_qk}, "
            f"got {tuple(k_cache.shape)}"
        )
    if k_cache.stride(3) != 1 or k_cache.stride(1) != row_bytes:
        raise ValueError(
            f"k_cache: expected strides (any, {row_bytes}, any, 1), got {k_cache.stride()}"
        )
    return row_bytes


def naive_dequant_token(k_cache: torch.Tensor, p: int, d_qk: int) -> torch.Tensor:
    """Decode physical token ``p`` of an FP8 paged cache by parsing its bytes.

    ``p = page · pbs + offset``; the page starts ``(p // pbs) · k_cache.stride(0)`` bytes
    after the first element (the block stride may exceed ``pbs · B``).

    * d_qk 576, V32 (SPEC §2.4.1): token bytes at ``(p % pbs) · 656`` inside the page:
      512 fp8 NoPE, 4 fp32 scales (one per 128 elements), 64 bf16 RoPE.
      NoPE value = ``bf16(float(fp8) · scale)`` (fp32 product, as the reference dequant).
    * d_qk 512, MODEL1 (SPEC §2.4.2): token r's 448 fp8 NoPE + 64 bf16 RoPE at ``r · 576``,
      its 7 UE8M0 scales (one per 64 elements) at ``pbs · 576 + r · 8``.
      NoPE value = ``bf16(q) · bf16(2^(e - 127))`` in bf16.

    Args:
        k_cache: ``[num_blocks, pbs, 1, B]`` float8_e4m3fn / int8 / uint8, B = 656 or 584,
            ``stride(1) == B``, ``stride(3) == 1``, any ``stride(0)``.
        p: physical token index in ``[0, num_blocks · pbs)``.
        d_qk: 576 (V32) or 512 (MODEL1).

    Returns:
        float32 tensor ``[d_qk]`` on k_cache's device: dequantized NoPE then RoPE.
    """
    _cache_format(k_cache, d_qk)
    num_blocks, pbs = k_cache.shape[0], k_cache.shape[1]
    p = int(p)
    if not 0 <= p < num_blocks * pbs:
        raise ValueError(f"p: expected a physical index in [0, {num_blocks * pbs}), got {p}")
    page, row = divmod(p, pbs)
    page_start = page * k_cache.stride(0)  # bytes (elements are one byte)

    if d_qk == V32_D_QK:
        tok = _raw_bytes(k_cache, page_start + row * V32_BYTES_PER_TOKEN, V32_BYTES_PER_TOKEN)
        nope_fp8 = tok[V32_NOPE_OFFSET:V32_SCALE_OFFSET].view(torch.float8_e4m3fn)  # [512]
        scales = tok[V32_SCALE_OFFSET:V32_ROPE_OFFSET].clone().view(torch.float32)  # [4]
        rope = tok[V32_ROPE_OFFSET:V32_BYTES_PER_TOKEN].clone().view(torch.bfloat16)  # [64]
        scale_per_elem = scales.repeat_interleave(V32_TILE)  # [512]
        nope = (nope_fp8.to(torch.float32) * scale_per_elem).to(torch.bfloat16)  # [512]
    else:
        data_start = page_start + row * MODEL1_DATA_BYTES
        scale_start = page_start + pbs * MODEL1_DATA_BYTES + row * MODEL1_SCALE_ROW_BYTES
        data = _raw_bytes(k_cache, data_start, MODEL1_DATA_BYTES)  # [576]
        scale_bytes = _raw_bytes(k_cache, scale_start, MODEL1_NUM_SCALES)  # [7]
        nope_fp8 = data[:MODEL1_D_NOPE].view(torch.float8_e4m3fn)  # [448]
        rope = data[MODEL1_D_NOPE:MODEL1_DATA_BYTES].clone().view(torch.bfloat16)  # [64]
        scales = _ue8m0_to_float(scale_bytes).to(torch.bfloat16)  # [7]
        scale_per_elem = scales.repeat_interleave(MODEL1_TILE)  # [448]
        nope = nope_fp8.to(torch.bfloat16) * scale_per_elem  # [448] bf16 multiply
    return torch.cat([nope.to(torch.float32), rope.to(torch.float32)])  # [d_qk]


# --- sparse decode (SPEC §2.2) -------------------------------------------------------
def _gather_sparse_tokens(
    cache: torch.Tensor,
    index_row: torch.Tensor,  # [topk] integer
    length: int,
    d_qk: int,
    memo: dict[int, torch.Tensor],
) -> list[torch.Tensor]:
    """Dequantized vectors (float64 [d_qk]) of the valid indices among the first
    ``length`` positions; one entry per valid position (duplicates kept)."""
    capacity = cache.shape[0] * cache.shape[1]
    vectors = []
    for k in range(min(length, index_row.shape[0])):
        p = int(index_row[k])
        if p < 0 or p >= capacity:  # -1 (and any out-of-range value) is invalid
            continue
        if p not in memo:
            memo[p] = naive_dequant_token(cache, p, d_qk).to(torch.float64)
        vectors.append(memo[p])
    return vectors


def naive_sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    head_dim_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[IntSeq] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[IntSeq] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse FP8 MLA decode, one (batch, token, head) row at a time (SPEC §2.2).

    Args:
        q: ``[b, s_q, h_q, d_qk]``, d_qk 576 (V32) or 512 (MODEL1).
        k_cache: FP8 cache ``[num_blocks, pbs, 1, B]`` (see ``naive_dequant_token``).
        indices: ``[b, s_q, topk]`` physical token indices; a value ``< 0`` or
            ``>= num_blocks · pbs`` is invalid (SPEC allows this superset of "-1").
        sm_scale: multiplier of ``<q, k>``.
        head_dim_v: V width, the first ``head_dim_v`` dims of each dequantized token.
        attn_sink: optional ``[h_q]`` sink logits (±inf allowed); scales out only.
        topk_length: optional ``[b]``; positions ``>= topk_length[i]`` are ignored.
        extra_k_cache, extra_indices_in_kvcache, extra_topk_length: optional second
            cache with its own pbs, indices ``[b, s_q, extra_topk]`` and lengths ``[b]``;
            its tokens are appended to the attended set.

    Returns:
        ``out [b, s_q, h_q, head_dim_v]`` float64 and ``lse [b, h_q, s_q]`` float64
        (natural log, sink excluded; lonely rows: out 0, lse +inf).
    """
    if q.dim() != 4:
        raise ValueError(f"q: expected 4-D [b, s_q, h_q, d_qk], got shape {tuple(q.shape)}")
    b, s_q, h_q, d_qk = q.shape
    _cache_format(k_cache, d_qk)
    if indices.dim() != 3 or tuple(indices.shape[:2]) != (b, s_q):
        raise ValueError(
            f"indices: expected shape [{b}, {s_q}, topk], got {tuple(indices.shape)}"
        )
    if not 0 < head_dim_v <= d_qk:
        raise ValueError(f"head_dim_v: expected 1..{d_qk}, got {head_dim_v}")
    if attn_sink is not None and tuple(attn_sink.shape) != (h_q,):
        raise ValueError(f"attn_sink: expected shape [{h_q}], got {tuple(attn_sink.shape)}")
    if (extra_k_cache is None) != (extra_indices_in_kvcache is None):
        given = "extra_k_cache" if extra_k_cache is not None else "extra_indices_in_kvcache"
        raise ValueError(
            f"extra_k_cache / extra_indices_in_kvcache: expected both or neither, got only {given}"
        )
    if extra_topk_length is not None and extra_k_cache is None:
        raise ValueError("extra_topk_length: expected None without extra_k_cache, got a value")
    if extra_k_cache is not None:
        _cache_format(extra_k_cache, d_qk)
        if extra_indices_in_kvcache.dim() != 3 or tuple(extra_indices_in_kvcache.shape[:2]) != (
            b,
            s_q,
        ):
            raise ValueError(
                f"extra_indices_in_kvcache: expected shape [{b}, {s_q}, extra_topk], "
                f"got {tuple(extra_indices_in_kvcache.shape)}"
            )

    topk = indices.shape[2]
    lengths = _int_list(topk_length, "topk_length") if topk_length is not None else [topk] * b
    if len(lengths) != b:
        raise ValueError(f"topk_length: expected {b} values, got {len(lengths)}")
    extra_lengths: list[int] = []
    if extra_k_cache is not None:
        extra_topk = extra_indices_in_kvcache.shape[2]
        extra_lengths = (
            _int_list(extra_topk_length, "extra_topk_length")
            if extra_topk_length is not None
            else [extra_topk] * b
        )
        if len(extra_lengths) != b:
            raise ValueError(f"extra_topk_length: expected {b} values, got {len(extra_lengths)}")
    sinks = (
        [float(s) for s in attn_sink.tolist()] if attn_sink is not None else [-math.inf] * h_q
    )

    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64, device=q.device)
    memo_main: dict[int, torch.Tensor] = {}
    memo_extra: dict[int, torch.Tensor] = {}
    for i in range(b):
        for t in range(s_q):
            vectors = _gather_sparse_tokens(k_cache, indices[i, t], lengths[i], d_qk, memo_main)
            if extra_k_cache is not None:
                vectors += _gather_sparse_tokens(
                    extra_k_cache, extra_indices_in_kvcache[i, t], extra_lengths[i], d_qk,
                    memo_extra,
                )
            if not vectors:
                continue  # lonely row: out 0, lse +inf, sink irrelevant
            keys = torch.stack(vectors).to(q.device)  # [n, d_qk]
            values = keys[:, :head_dim_v]  # [n, dv]
            for h in range(h_q):
                q_row = q[i, t, h].to(torch.float64)  # [d_qk]
                scores = sm_scale * (keys @ q_row)  # [n]
                o, row_lse, _ = _softmax_row(scores, values)
                out[i, t, h] = o * _sink_factor(sinks[h], row_lse)
                lse[i, h, t] = row_lse
    return out, lse


# --- sparse prefill (SPEC §2.3) ----------------------------------------------------------
def naive_sparse_prefill(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[IntSeq] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse MLA prefill, one (query token, head) row at a time (SPEC §2.3).

    Args:
        q: ``[s_q, h_q, d_qk]``.
        kv: ``[s_kv, 1, d_qk]``; K is the whole vector, V its first ``d_v`` dims.
        indices: ``[s_q, 1, topk]``; index p is valid iff ``0 <= p < s_kv`` and its
            position is ``< topk_length[t]`` (when given).
        sm_scale: multiplier of ``<q, k>``.
        d_v: V width.
        attn_sink: optional ``[h_q]`` sink logits (±inf allowed); scales out only.
        topk_length: optional ``[s_q]`` per query token.

    Returns:
        ``out [s_q, h_q, d_v]``, ``max_logits [s_q, h_q]``, ``lse [s_q, h_q]``, all float64
        (natural-log units; lonely rows: out 0, max_logits -inf, lse +inf).
    """
    if q.dim() != 3:
        raise ValueError(f"q: expected 3-D [s_q, h_q, d_qk], got shape {tuple(q.shape)}")
    s_q, h_q, d_qk = q.shape
    if kv.dim() != 3 or kv.shape[1] != 1 or kv.shape[2] != d_qk:
        raise ValueError(f"kv: expected shape [s_kv, 1, {d_qk}], got {tuple(kv.shape)}")
    if indices.dim() != 3 or indices.shape[0] != s_q or indices.shape[1] != 1:
        raise ValueError(f"indices: expected shape [{s_q}, 1, topk], got {tuple(indices.shape)}")
    if not 0 < d_v <= d_qk:
        raise ValueError(f"d_v: expected 1..{d_qk}, got {d_v}")
    if attn_sink is not None and tuple(attn_sink.shape) != (h_q,):
        raise ValueError(f"attn_sink: expected shape [{h_q}], got {tuple(attn_sink.shape)}")
    s_kv = kv.shape[0]
    topk = indices.shape[2]
    lengths = _int_list(topk_length, "topk_length") if topk_length is not None else [topk] * s_q
    if len(lengths) != s_q:
        raise ValueError(f"topk_length: expected {s_q} values, got {len(lengths)}")
    sinks = (
        [float(s) for s in attn_sink.tolist()] if attn_sink is not None else [-math.inf] * h_q
    )

    out = torch.zeros(s_q, h_q, d_v, dtype=torch.float64, device=q.device)
    max_logits = torch.full((s_q, h_q), -math.inf, dtype=torch.float64, device=q.device)
    lse = torch.full((s_q, h_q), math.inf, dtype=torch.float64, device=q.device)
    for t in range(s_q):
        rows = []
        for k in range(min(lengths[t], topk)):
            p = int(indices[t, 0, k])
            if 0 <= p < s_kv:
                rows.append(kv[p, 0])  # [d_qk]
        if not rows:
            continue  # lonely row
        keys = torch.stack(rows).to(torch.float64)  # [n, d_qk]
        values = keys[:, :d_v]  # [n, d_v]
        for h in range(h_q):
            q_row = q[t, h].to(torch.float64)  # [d_qk]
            scores = sm_scale * (keys @ q_row)  # [n]
            o, row_lse, row_max = _softmax_row(scores, values)
            out[t, h] = o * _sink_factor(sinks[h], row_lse)
            lse[t, h] = row_lse
            max_logits[t, h] = row_max
    return out, max_logits, lse


# --- dense MHA prefill (SPEC §2.5), differentiable --------------------------------------
def naive_mha(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: IntSeq,
    cu_seqlens_k: IntSeq,
    softmax_scale: Optional[float],
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen dense attention with GQA, differentiable w.r.t. q, k, v (SPEC §2.5).

    Sequence n uses rows ``[cu_q[n], cu_q[n+1])`` of q and ``[cu_k[n], cu_k[n+1])`` of
    k / v. Key j is visible to local query i iff ``j < Sk`` and, if causal,
    ``j <= i + Sk - Sq`` (bottom-right aligned). Query head h uses KV head
    ``h // (h_q / h_kv)``. Rows with no visible key (Sk = 0, or causal with Sk < Sq)
    give out 0 and lse -inf, with zero (never NaN) gradients.

    Built only from out-of-place differentiable torch ops in float64, so
    ``torch.autograd`` through it gives the exact attention gradients.

    Args:
        q: ``[total_q, h_q, d_qk]``; k: ``[total_k, h_kv, d_qk]``; v: ``[total_k, h_kv, d_v]``.
        cu_seqlens_q, cu_seqlens_k: ``[b + 1]`` prefix sums starting at 0;
            ``cu_seqlens_q[-1]`` must equal total_q.
        softmax_scale: multiplier of ``<q, k>``; None means ``d_qk ** -0.5``.
        causal: bottom-right aligned causal mask.

    Returns:
        ``out [total_q, h_q, d_v]`` and ``lse [total_q, h_q]``, float64 on q's device.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"q, k, v: expected 3-D tensors, got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    total_q, h_q, d_qk = q.shape
    total_k, h_kv, d_k = k.shape
    if d_k != d_qk:
        raise ValueError(f"k: expected head dim {d_qk} (q's), got {d_k}")
    if tuple(v.shape[:2]) != (total_k, h_kv):
        raise ValueError(f"v: expected shape [{total_k}, {h_kv}, d_v], got {tuple(v.shape)}")
    if h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"k: expected h_kv dividing h_q={h_q}, got h_kv={h_kv}")
    d_v = v.shape[2]
    cu_q = _int_list(cu_seqlens_q, "cu_seqlens_q")
    cu_k = _int_list(cu_seqlens_k, "cu_seqlens_k")
    if len(cu_q) != len(cu_k) or len(cu_q) < 1:
        raise ValueError(
            f"cu_seqlens_k: expected {len(cu_q)} entries (as cu_seqlens_q), got {len(cu_k)}"
        )
    for name, cu, total in (("cu_seqlens_q", cu_q, total_q), ("cu_seqlens_k", cu_k, total_k)):
        if cu[0] != 0 or any(b_ < a_ for a_, b_ in zip(cu, cu[1:])):
            raise ValueError(f"{name}: expected non-decreasing prefix sums from 0, got {cu}")
        if cu[-1] > total:
            raise ValueError(f"{name}: expected last entry <= {total}, got {cu[-1]}")
    if cu_q[-1] != total_q:
        raise ValueError(f"cu_seqlens_q: expected last entry {total_q} (q rows), got {cu_q[-1]}")
    scale = d_qk**-0.5 if softmax_scale is None else float(softmax_scale)

    heads_per_kv = h_q // h_kv
    head_map = torch.arange(h_q, device=q.device) // heads_per_kv  # [h_q] kv head of head h
    q64, k64, v64 = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)

    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    for n in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[n], cu_q[n + 1], cu_k[n], cu_k[n + 1]
        sq, sk = q1 - q0, k1 - k0
        if sq == 0:
            continue
        if sk == 0:
            outs.append(torch.zeros(sq, h_q, d_v, dtype=torch.float64, device=q.device))
            lses.append(torch.full((sq, h_q), -math.inf, dtype=torch.float64, device=q.device))
            continue
        qs = q64[q0:q1]  # [Sq, h_q, d]
        ks = k64[k0:k1].index_select(1, head_map)  # [Sk, h_q, d]
        vs = v64[k0:k1].index_select(1, head_map)  # [Sk, h_q, dv]
        scores = scale * torch.einsum("ihd,jhd->hij", qs, ks)  # [h_q, Sq, Sk]

        i_idx = torch.arange(sq, device=q.device)[:, None]  # [Sq, 1]
        j_idx = torch.arange(sk, device=q.device)[None, :]  # [1, Sk]
        valid = j_idx < sk  # [1, Sk], broadcast below
        if causal:
            valid = valid & (j_idx <= i_idx + (sk - sq))  # [Sq, Sk]
        valid = valid.expand(sq, sk)  # [Sq, Sk]

        neg_inf = torch.full_like(scores, -math.inf)
        masked = torch.where(valid, scores, neg_inf)  # [h_q, Sq, Sk]
        row_max = masked.amax(dim=-1, keepdim=True).detach()  # [h_q, Sq, 1]
        has_key = valid.any(dim=-1)[None, :, None]  # [1, Sq, 1]
        row_max = torch.where(has_key, row_max, torch.zeros_like(row_max))
        # exp(-inf) = 0 with zero derivative, so masked scores get no gradient.
        weights = torch.exp(masked - row_max)  # [h_q, Sq, Sk]
        denom = weights.sum(dim=-1, keepdim=True)  # [h_q, Sq, 1], 0 for lonely rows
        safe_denom = torch.where(has_key, denom, torch.ones_like(denom))
        out_s = torch.einsum("hij,jhd->ihd", weights / safe_denom, vs)  # [Sq, h_q, dv]
        lse_s = torch.where(
            has_key, torch.log(safe_denom) + row_max, torch.full_like(denom, -math.inf)
        )  # [h_q, Sq, 1]
        outs.append(out_s)
        lses.append(lse_s[..., 0].transpose(0, 1))  # [Sq, h_q]

    if not outs:
        return (
            torch.zeros(total_q, h_q, d_v, dtype=torch.float64, device=q.device),
            torch.full((total_q, h_q), -math.inf, dtype=torch.float64, device=q.device),
        )
    return torch.cat(outs), torch.cat(lses)
