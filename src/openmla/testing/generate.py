"""Random inputs for every op, generated the way FlashMLA's tests generate them (SPEC §4.2–§4.5).

Each ``*_inputs`` function returns a ``dict`` whose keys are keyword arguments of the public
call, so ``openmla.<function>(**public_kwargs(case))`` runs it (decode calls also need
``tile_scheduler_metadata=get_mla_metadata()[0]``, created fresh per call — it is not part of the
data). Everything else a caller may want (logical indices, block tables of the sparse caches,
gradients of the output, ...) sits under the key ``"extras"``; :func:`public_kwargs` drops it and
:func:`reference_kwargs` maps a case onto the argument list of the op's float32 reference.

The data is adversarial in the same ways as upstream's: KV tokens that no valid index or
sequence position reaches are NaN, block-table entries past a sequence hold a huge page id, index
rows are padded with invalid values, sinks are ±inf, and with ``non_contiguous=True`` tensors
are slices of larger allocations (every dim +1, last dim +128, last dim still contiguous).

Parameters shared by every generator: ``device`` (default: CUDA if available, else the CPU);
``seed`` seeds a generator on ``device`` for the bulk data and a CPU generator for the few
host-side draws (sequence lengths, per-request masks, scalar shifts); ``generator`` replaces the
device generator (it must live on ``device``; host-side draws still follow ``seed``);
``non_contiguous`` returns the tensors FlashMLA's tests make non-contiguous as such slices, with
the same values as the contiguous version of the same seed. The same seed gives different (equally
distributed) data on a CPU and a GPU: their random streams differ.

Generation is vectorised (no Python loop over tokens or index slots; loops only over chunks of
rows or pages), so the production shapes of ANCHORS.md generate in under a second on an H200.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..kvcache.fp8 import D_V, fp8_format, quantize_kvcache

# --- values FlashMLA's tests use (SPEC §4) -------------------------------------------------
BLOCK_TABLE_POISON = 2147480000  # block-table entries past a sequence (never dereferenced)
INVALID_INDEX = -1  # sparse decode: the only invalid index value
# sparse prefill: out-of-range index values, drawn to pad rows when topk > s_kv (§4.4);
# the entry None stands for s_kv itself.
PREFILL_INVALID_INDICES: tuple[int | None, ...] = (
    -2147483648, -123456, -1, None, 114514, 1919810, 2147480000, 2147483647)
KV_SCALE = 0.1  # randn / 10
DECODE_CLAMP = 1.0  # dense-decode q/kv and sparse-decode q/kv are clamped to ±1
PREFILL_CLAMP = 10.0  # sparse-prefill q/kv are clamped to ±10
PREFILL_SHIFT = 0.1  # sparse prefill adds one U(-0.05, 0.05) shift per tensor
PREFILL_SM_SCALE = 0.5  # upstream: "otherwise dK is too small compared to dV"
SPARSE_DECODE_SCALE_EXP = -0.55  # sm_scale = d_qk ** -0.55
MHA_SCALE_OFFSET = 100  # softmax_scale = (d + 100) ** -0.5
SINK_INF_THRESHOLD = 0.5  # mask ~ N(0,1): > 0.5 -> +inf, < -0.5 -> -inf (~31 % each)
ALL_INVALID_ROW_THRESHOLD = -2.0  # prefill "all invalid": rows with N(0,1) < -2 (~2 %)
SEQLEN_ALIGN_PAGES = 4  # block tables are sized to a multiple of 4 pages (256 tokens at pbs 64)
PREFILL_MIN_TOPK_DRAW = 64  # topk_length = randint(0, max(topk + 1, 64)).clamp_max(topk)
MODEL1_BLOCK_ALIGN = 576  # MODEL1 blocks are padded to a multiple of 576 bytes (SM100 rule)
NONCONTIG_PAD_LAST = 128  # non_contiguous: last dim grows by 128 elements
NONCONTIG_PAD_OTHER = 1  # ... every other dim by 1
# rows x candidates of uniform noise drawn at once when choosing distinct indices
RANDPERM_CHUNK_ELEMS = 1 << 26
QUANT_CHUNK_TOKENS = 1 << 16  # logical KV tokens quantized at once (~150 MB of fp32 temporaries)

EXTRAS = "extras"


# --- small helpers --------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


class _Rng:
    """A device generator for bulk data and a CPU generator for the few host-side draws
    (sequence lengths, masks over requests) that size the tensors."""

    def __init__(self, device: torch.device, seed: int, generator: torch.Generator | None):
        self.device = device
        if generator is not None:
            if torch.device(generator.device).type != device.type:
                raise ValueError(f"generator: expected a generator on {device.type}, "
                                 f"got one on {generator.device}")
            self.dev = generator
        else:
            self.dev = torch.Generator(device=device)
            self.dev.manual_seed(seed)
        self.host = torch.Generator()
        self.host.manual_seed(seed)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.dev, device=self.device, dtype=dtype)

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.rand(tuple(shape), generator=self.dev, device=self.device)

    def randint(self, high: int, shape: Sequence[int]) -> torch.Tensor:
        return torch.randint(0, high, tuple(shape), generator=self.dev, device=self.device,
                             dtype=torch.int32)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.dev, device=self.device, dtype=torch.int64)

    def host_randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.host)

    def host_uniform(self) -> float:
        return float(torch.rand((), generator=self.host))


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def non_contiguous_like(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` that is a slice of a larger allocation (every dim +1, last dim +128), so
    every stride but the last differs from the contiguous one (FlashMLA's ``non_contiguousify``).
    Keeps ``requires_grad`` off; callers set it on the returned leaf."""
    if x.dim() == 0:
        return x.clone()
    big = [n + (NONCONTIG_PAD_LAST if i == x.dim() - 1 else NONCONTIG_PAD_OTHER)
           for i, n in enumerate(x.shape)]
    base = torch.empty(big, dtype=x.dtype, device=x.device)
    if x.dtype.is_floating_point:
        base.fill_(float("nan"))  # the padding is never meant to be read
    view = base[tuple(slice(0, n) for n in x.shape)]
    view.copy_(x.detach())
    return view


def _maybe_noncontig(x: torch.Tensor, non_contiguous: bool) -> torch.Tensor:
    return non_contiguous_like(x) if non_contiguous else x


def public_kwargs(case: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the public call (the case without its ``"extras"``)."""
    return {k: v for k, v in case.items() if k != EXTRAS}


def reference_kwargs(op: str, case: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``op``'s float32 reference (and of the naive loop version) for a
    case made by this module's generator of that op."""
    if op == "dense_decode":
        keys = ("q", "k_cache", "block_table", "cache_seqlens", "softmax_scale", "causal",
                "head_dim_v")
        return {k: case[k] for k in keys}
    if op == "sparse_decode":
        out = {k: case[k] for k in ("q", "k_cache", "indices", "head_dim_v", "attn_sink",
                                    "topk_length", "extra_k_cache", "extra_indices_in_kvcache",
                                    "extra_topk_length")}
        out["sm_scale"] = case["softmax_scale"]
        return out
    if op == "sparse_prefill":
        return {k: case[k] for k in ("q", "kv", "indices", "sm_scale", "d_v", "attn_sink",
                                     "topk_length")}
    if op == "mha_prefill":
        return {"q": case["q"], "k": case["k"], "v": case["v"],
                "cu_seqlens_q": case["cu_seqlens_qo"], "cu_seqlens_k": case["cu_seqlens_kv"],
                "softmax_scale": case["softmax_scale"], "causal": case["causal"]}
    raise ValueError(f"op: expected one of dense_decode, sparse_decode, sparse_prefill, "
                     f"mha_prefill, got {op!r}")


def _attn_sink(h_q: int, rng: _Rng) -> torch.Tensor:
    """``[h_q]`` float32 sink logits: N(0,1), with ~31 % set to +inf and ~31 % to -inf."""
    sink = rng.randn((h_q,))
    mask = rng.randn((h_q,))
    sink = torch.where(mask > SINK_INF_THRESHOLD, torch.full_like(sink, float("inf")), sink)
    return torch.where(mask < -SINK_INF_THRESHOLD, torch.full_like(sink, float("-inf")), sink)


def _varlen_seqlens(b: int, mean: int, minimum: int, varlen: bool, zero_half: bool,
                   rng: _Rng) -> torch.Tensor:
    """Host int64 ``[b]`` sequence lengths: ``mean`` each, or ``max(N(mean, mean/2), minimum)``
    truncated to int when ``varlen``; with ``zero_half`` about half are set to 0."""
    lens = torch.full((b,), float(mean), dtype=torch.float64)
    if varlen:
        lens = (rng.host_randn((b,)).double() * (mean / 2) + mean).clamp(min=minimum)
    lens = lens.to(torch.int64)  # truncation, as assigning a float into an int tensor does
    if zero_half:
        lens[rng.host_randn((b,)) > 0] = 0
    return lens


def _distinct_indices(ranges: torch.Tensor, width: int, rng: _Rng,
                     padding: torch.Tensor | int = INVALID_INDEX) -> torch.Tensor:
    """``[rows, width]`` int32: row r holds distinct random values in ``[0, ranges[r])`` in random
    order; when ``ranges[r] < width`` the remaining slots hold ``padding`` (an int, or an int32
    tensor of candidates from which each slot draws one at random).

    Vectorised as upstream's ``_randperm_batch``: uniform noise per candidate, positions outside
    the range pushed to -inf, then ``topk``; rows are processed in chunks to bound memory."""
    rows = ranges.numel()
    ranges = ranges.to(device=rng.device, dtype=torch.int64)
    span = max(int(ranges.max()) if rows else 0, width)
    out = torch.empty(rows, width, dtype=torch.int32, device=rng.device)
    chunk = max(1, RANDPERM_CHUNK_ELEMS // max(span, 1))
    cand = torch.arange(span, device=rng.device)
    for r0 in range(0, rows, chunk):
        r1 = min(rows, r0 + chunk)
        noise = rng.rand((r1 - r0, span))  # [c, span]
        inside = cand[None, :] < ranges[r0:r1, None]
        noise = torch.where(inside, noise, torch.full_like(noise, float("-inf")))
        out[r0:r1] = noise.topk(width, dim=-1, sorted=True).indices.to(torch.int32)
    pad_mask = out.to(torch.int64) >= ranges[:, None]  # [rows, width]
    if isinstance(padding, torch.Tensor):
        choice = rng.randint(padding.numel(), (rows, width)).to(torch.int64)
        fill = padding.to(rng.device)[choice]
    else:
        fill = torch.full_like(out, int(padding))
    return torch.where(pad_mask, fill, out)


def _paged_layout(seqlens: torch.Tensor, pbs: int, rng: _Rng) -> tuple[torch.Tensor, int]:
    """A random permutation of ``b * pages_per_seq`` pages as an int32 block table ``[b,
    pages_per_seq]`` (per sequence sized to a multiple of 4 pages over the longest sequence)."""
    b = seqlens.numel()
    align = SEQLEN_ALIGN_PAGES * pbs
    pages_per_seq = max(_cdiv(int(seqlens.max()) if b else 0, align), 1) * SEQLEN_ALIGN_PAGES
    perm = rng.randperm(b * pages_per_seq).to(torch.int32)
    return perm.view(b, pages_per_seq), pages_per_seq


def _token_in_sequence(block_table: torch.Tensor, seqlens: torch.Tensor, pbs: int) -> torch.Tensor:
    """``[num_pages, pbs]`` bool: whether each cache row lies inside its owner's sequence
    (every page of a block table made by ``_paged_layout`` has exactly one owner)."""
    b, per_seq = block_table.shape
    dev = block_table.device
    pages = block_table.reshape(-1).to(torch.int64)  # [b * per_seq]
    start = torch.empty(b * per_seq, dtype=torch.int64, device=dev)
    start[pages] = (torch.arange(per_seq, device=dev) * pbs).repeat(b)
    length = torch.empty(b * per_seq, dtype=torch.int64, device=dev)
    length[pages] = seqlens.to(device=dev, dtype=torch.int64).repeat_interleave(per_seq)
    return start[:, None] + torch.arange(pbs, device=dev)[None, :] < length[:, None]


def _poison_block_table_tail(block_table: torch.Tensor, seqlens: torch.Tensor,
                             pbs: int) -> torch.Tensor:
    used = (seqlens.to(block_table.device) + pbs - 1) // pbs  # [b]
    col = torch.arange(block_table.shape[1], device=block_table.device)
    tail = col[None, :] >= used[:, None]
    return torch.where(tail, torch.full_like(block_table, BLOCK_TABLE_POISON), block_table)


def padded_block_stride(d_qk: int, pbs: int) -> int:
    """Bytes between FP8 cache blocks as FlashMLA's tests lay them out: V32 one spare token per
    block (``(pbs + 1) * 656``), MODEL1 rounded up to a multiple of 576 bytes."""
    fmt = fp8_format(d_qk)
    if fmt.block_interleaved:
        return _cdiv(pbs * fmt.bytes_per_token, MODEL1_BLOCK_ALIGN) * MODEL1_BLOCK_ALIGN
    return (pbs + 1) * fmt.bytes_per_token


# --- dense decode (§4.2) --------------------------------------------------------------------
def dense_decode_inputs(b: int, s_q: int, h_q: int, s_k: int, *, h_kv: int = 1, d: int = 576,
                        dv: int = 512, page_block_size: int = 64, causal: bool = False,
                        varlen: bool = False, zero_seqlens: bool = False,
                        dtype: torch.dtype = torch.bfloat16,
                        device: torch.device | str | None = None, seed: int = 0,
                        generator: torch.Generator | None = None,
                        non_contiguous: bool = False) -> dict[str, Any]:
    """Inputs of ``flash_mla_with_kvcache`` in dense mode.

    ``q [b, s_q, h_q, d]`` and ``k_cache [num_pages, pbs, h_kv, d]`` are ``randn/10`` clamped to
    ±1 in ``dtype``; ``cache_seqlens`` int32 ``[b]`` is ``s_k`` or (``varlen``)
    ``max(N(s_k, s_k/2), s_q)``, with ~half zeroed when ``zero_seqlens``; ``block_table`` int32
    ``[b, pages_per_seq]`` is a random permutation of all pages, entries past each sequence set
    to ``BLOCK_TABLE_POISON``; cache rows past each sequence (and whole unused pages) are NaN.
    ``softmax_scale`` is the default ``d ** -0.5``. Extras: ``seqlens`` (host int64 list),
    ``block_table_clean`` (before poisoning).
    """
    for name, v in (("b", b), ("s_q", s_q), ("h_q", h_q), ("h_kv", h_kv), ("d", d), ("dv", dv),
                    ("page_block_size", page_block_size)):
        _positive(name, v)
    _positive("s_k", s_k, minimum=0)
    if h_q % h_kv:
        raise ValueError(f"h_q: expected a multiple of h_kv={h_kv}, got {h_q}")
    if dv > d:
        raise ValueError(f"dv: expected at most d={d}, got {dv}")
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype: expected torch.bfloat16 or torch.float16, got {dtype}")
    dev = _resolve_device(device)
    rng = _Rng(dev, seed, generator)
    pbs = page_block_size

    seqlens = _varlen_seqlens(b, s_k, s_q, varlen, zero_seqlens, rng)  # host int64 [b]
    block_table, _ = _paged_layout(seqlens, pbs, rng)
    num_pages = block_table.numel()
    q = (rng.randn((b, s_q, h_q, d), dtype) * KV_SCALE).clamp_(-DECODE_CLAMP, DECODE_CLAMP)
    k_cache = (rng.randn((num_pages, pbs, h_kv, d), dtype) * KV_SCALE)
    k_cache.clamp_(-DECODE_CLAMP, DECODE_CLAMP)
    cache_seqlens = seqlens.to(device=dev, dtype=torch.int32)
    in_seq = _token_in_sequence(block_table, cache_seqlens, pbs)  # [num_pages, pbs]
    k_cache.masked_fill_(~in_seq[:, :, None, None], float("nan"))
    poisoned = _poison_block_table_tail(block_table, cache_seqlens, pbs)
    return {
        "q": _maybe_noncontig(q, non_contiguous),
        "k_cache": _maybe_noncontig(k_cache, non_contiguous),
        "block_table": _maybe_noncontig(poisoned, non_contiguous),
        "cache_seqlens": cache_seqlens,
        "head_dim_v": dv,
        "softmax_scale": d ** -0.5,
        "causal": causal,
        EXTRAS: {"seqlens": seqlens.tolist(), "block_table_clean": block_table},
    }


# --- sparse decode (§4.3) -------------------------------------------------------------------
def _sparse_decode_scope(b: int, s_q: int, s_k: int, topk: int, pbs: int, d_qk: int,
                         varlen: bool, zero_seqlens: bool, all_invalid: bool,
                         with_topk_length: bool, rng: _Rng) -> dict[str, Any]:
    """One FP8 cache with its physical index tensor (main or extra cache of a decode call)."""
    seqlens = _varlen_seqlens(b, s_k, s_q, varlen, zero_seqlens, rng)  # host [b]
    block_table, _ = _paged_layout(seqlens, pbs, rng)
    num_tokens = block_table.numel() * pbs
    cache_seqlens = seqlens.to(device=rng.device, dtype=torch.int32)
    if all_invalid:
        logical = torch.full((b, s_q, topk), INVALID_INDEX, dtype=torch.int32, device=rng.device)
    else:
        ranges = cache_seqlens.to(torch.int64).repeat_interleave(s_q)  # [b * s_q]
        logical = _distinct_indices(ranges, topk, rng).view(b, s_q, topk)
    # physical p = block_table[i, a // pbs] * pbs + a % pbs; -1 stays -1
    valid = logical >= 0
    a = torch.where(valid, logical, torch.zeros_like(logical)).to(torch.int64)
    page = torch.gather(block_table.to(torch.int64), 1, (a // pbs).view(b, -1)).view_as(a)
    physical = torch.where(valid, page * pbs + a % pbs,
                           torch.full_like(a, INVALID_INDEX)).to(torch.int32)

    topk_length = rng.randint(topk + 1, (b,)) if with_topk_length else None
    used_slots = physical >= 0
    if topk_length is not None:
        slot = torch.arange(topk, device=rng.device)
        used_slots = used_slots & (slot[None, None, :] < topk_length.to(torch.int64)[:, None, None])
    referenced = torch.zeros(num_tokens, dtype=torch.bool, device=rng.device)
    referenced[physical.to(torch.int64)[used_slots]] = True

    cache = _random_fp8_cache(block_table.numel(), pbs, d_qk, referenced, rng)
    return {"cache": cache, "indices": physical, "topk_length": topk_length,
            "logical_indices": logical, "block_table": block_table,
            "cache_seqlens": cache_seqlens, "referenced": referenced}


def _random_fp8_cache(num_pages: int, pbs: int, d_qk: int, referenced: torch.Tensor,
                      rng: _Rng) -> torch.Tensor:
    """FP8 cache ``[num_pages, pbs, 1, bytes_per_token]`` (padded block stride) of logical tokens
    ``randn/10`` clamped to ±1, NaN where ``referenced`` is False. Quantized a few pages at a
    time so the float32 temporaries of quantization stay small at production sizes."""
    fmt = fp8_format(d_qk)
    stride = padded_block_stride(d_qk, pbs)
    store = torch.zeros(num_pages, stride, dtype=torch.uint8, device=rng.device)
    cache = torch.as_strided(store, (num_pages, pbs, 1, fmt.bytes_per_token),
                             (stride, fmt.bytes_per_token, fmt.bytes_per_token, 1))
    cache = cache.view(torch.float8_e4m3fn)
    pages_per_chunk = max(1, QUANT_CHUNK_TOKENS // pbs)
    for p0 in range(0, num_pages, pages_per_chunk):
        p1 = min(num_pages, p0 + pages_per_chunk)
        kv = rng.randn(((p1 - p0) * pbs, d_qk), torch.bfloat16) * KV_SCALE  # [tokens, d_qk]
        kv.clamp_(-DECODE_CLAMP, DECODE_CLAMP)
        kv.masked_fill_(~referenced[p0 * pbs:p1 * pbs, None], float("nan"))  # before quant
        part = quantize_kvcache(kv.view(p1 - p0, pbs, 1, d_qk), block_stride=stride)
        cache.view(torch.uint8)[p0:p1].copy_(part.view(torch.uint8))
    return cache


def sparse_decode_inputs(b: int, s_q: int, h_q: int, s_k: int, topk: int, *, d_qk: int = 576,
                         page_block_size: int = 64, varlen: bool = True,
                         zero_seqlens: bool = False, all_invalid: bool = False,
                         with_topk_length: bool = False, with_attn_sink: bool = True,
                         extra_topk: int | None = None, extra_s_k: int | None = None,
                         extra_page_block_size: int | None = None,
                         with_extra_topk_length: bool = False,
                         device: torch.device | str | None = None, seed: int = 0,
                         generator: torch.Generator | None = None,
                         non_contiguous: bool = False) -> dict[str, Any]:
    """Inputs of ``flash_mla_with_kvcache`` in sparse FP8 mode (V32 for d_qk 576, MODEL1 512).

    ``q [b, s_q, h_q, d_qk]`` bf16 is ``randn`` clamped to ±1. Per cache the logical KV is
    ``randn/10`` clamped to ±1 (bf16), every token not referenced by a valid index inside
    ``topk_length`` is NaN, and the result is quantized with ``quantize_kvcache`` into padded
    blocks (:func:`padded_block_stride`). ``indices [b, s_q, topk]`` int32 are distinct logical
    positions in ``[0, cache_seqlens[i])`` (-1 padded; all -1 when ``all_invalid``) mapped
    through a random block table to physical ``page * pbs + offset``. ``topk_length`` int32
    ``[b]`` is uniform in ``[0, topk]``; ``attn_sink`` float32 ``[h_q]`` has ~1/3 +inf and ~1/3
    -inf; ``softmax_scale = d_qk ** -0.55``. With ``extra_topk`` an extra cache (``extra_s_k``
    default ``2 * extra_topk``, pbs default ``page_block_size``) is generated the same way.
    Extras: per cache (``"main"``, ``"extra"``) its ``logical_indices``, ``block_table``,
    ``cache_seqlens`` and ``referenced`` (bool per physical token).
    """
    for name, v in (("b", b), ("s_q", s_q), ("h_q", h_q), ("topk", topk),
                    ("page_block_size", page_block_size)):
        _positive(name, v)
    _positive("s_k", s_k, minimum=0)
    fp8_format(d_qk)  # validates d_qk
    if extra_topk is None and (extra_s_k is not None or extra_page_block_size is not None
                               or with_extra_topk_length):
        raise ValueError("extra_topk: expected an int when extra_s_k, extra_page_block_size or "
                         "with_extra_topk_length is given, got None")
    dev = _resolve_device(device)
    rng = _Rng(dev, seed, generator)

    q = rng.randn((b, s_q, h_q, d_qk), torch.bfloat16).clamp_(-DECODE_CLAMP, DECODE_CLAMP)
    sink = _attn_sink(h_q, rng) if with_attn_sink else None
    main = _sparse_decode_scope(b, s_q, s_k, topk, page_block_size, d_qk, varlen, zero_seqlens,
                                all_invalid, with_topk_length, rng)
    extra = None
    if extra_topk is not None:
        _positive("extra_topk", extra_topk)
        e_s_k = 2 * extra_topk if extra_s_k is None else _positive("extra_s_k", extra_s_k, 0)
        e_pbs = page_block_size if extra_page_block_size is None else _positive(
            "extra_page_block_size", extra_page_block_size)
        extra = _sparse_decode_scope(b, s_q, e_s_k, extra_topk, e_pbs, d_qk, varlen,
                                     zero_seqlens, all_invalid, with_extra_topk_length, rng)
    return {
        "q": _maybe_noncontig(q, non_contiguous),
        "k_cache": main["cache"],
        "block_table": None,
        "cache_seqlens": None,
        "head_dim_v": D_V,  # 512 for both layouts
        "softmax_scale": d_qk ** SPARSE_DECODE_SCALE_EXP,
        "causal": False,
        "is_fp8_kvcache": True,
        "indices": _maybe_noncontig(main["indices"], non_contiguous),
        "attn_sink": sink,
        "extra_k_cache": None if extra is None else extra["cache"],
        "extra_indices_in_kvcache": None if extra is None else _maybe_noncontig(
            extra["indices"], non_contiguous),
        "topk_length": main["topk_length"],
        "extra_topk_length": None if extra is None else extra["topk_length"],
        EXTRAS: {"main": _scope_extras(main), "extra": None if extra is None
                 else _scope_extras(extra)},
    }


def _scope_extras(scope: dict[str, Any]) -> dict[str, Any]:
    return {k: scope[k] for k in ("logical_indices", "block_table", "cache_seqlens",
                                  "referenced")}


# --- sparse prefill (§4.4) ------------------------------------------------------------------
def sparse_prefill_inputs(s_q: int, s_kv: int, h_q: int, topk: int, *, d_qk: int = 576,
                          d_v: int = 512, all_invalid: bool = False,
                          with_topk_length: bool = False, with_attn_sink: bool = False,
                          invalid_row_fraction: float | None = None,
                          device: torch.device | str | None = None, seed: int = 0,
                          generator: torch.Generator | None = None,
                          non_contiguous: bool = False) -> dict[str, Any]:
    """Inputs of ``flash_mla_sparse_fwd``.

    ``q [s_q, h_q, d_qk]`` and ``kv [s_kv, 1, d_qk]`` bf16 are ``randn/10`` plus one
    ``U(-0.05, 0.05)`` shift each, clamped to ±10; ``indices [s_q, 1, topk]`` int32 are distinct
    positions in ``[0, s_kv)``, padded when ``topk > s_kv`` with values drawn from
    ``PREFILL_INVALID_INDICES``; ``all_invalid`` overwrites rows with one such value: ~2 % of them
    as upstream (N(0,1) < -2), or each with probability ``invalid_row_fraction`` when given;
    ``topk_length [s_q]`` int32 is ``randint(0, max(topk + 1, 64))`` clamped to topk;
    ``sm_scale = 0.5``. Extras: ``invalid_values`` (the padding candidates used).
    """
    for name, v in (("s_q", s_q), ("h_q", h_q), ("topk", topk), ("d_qk", d_qk), ("d_v", d_v)):
        _positive(name, v)
    _positive("s_kv", s_kv, minimum=0)
    dev = _resolve_device(device)
    rng = _Rng(dev, seed, generator)

    def activations(shape: tuple[int, ...]) -> torch.Tensor:
        shift = (rng.host_uniform() - 0.5) * PREFILL_SHIFT
        x = rng.randn(shape, torch.bfloat16) * KV_SCALE + shift
        return x.clamp_(-PREFILL_CLAMP, PREFILL_CLAMP)

    q = activations((s_q, h_q, d_qk))
    kv = activations((s_kv, 1, d_qk))
    invalid = torch.tensor([s_kv if v is None else v for v in PREFILL_INVALID_INDICES],
                           dtype=torch.int32)
    ranges = torch.full((s_q,), s_kv, dtype=torch.int64)
    indices = _distinct_indices(ranges, topk, rng, padding=invalid).view(s_q, 1, topk)
    if invalid_row_fraction is not None and not 0.0 <= invalid_row_fraction <= 1.0:
        raise ValueError(f"invalid_row_fraction: expected a probability in [0, 1], "
                         f"got {invalid_row_fraction}")
    if all_invalid:
        if invalid_row_fraction is None:
            rows = rng.randn((s_q,)) < ALL_INVALID_ROW_THRESHOLD
        else:
            rows = rng.rand((s_q,)) < invalid_row_fraction
        value = int(invalid[int(torch.randint(0, invalid.numel(), (), generator=rng.host))])
        indices = torch.where(rows[:, None, None], torch.full_like(indices, value), indices)
    topk_length = None
    if with_topk_length:
        topk_length = rng.randint(max(topk + 1, PREFILL_MIN_TOPK_DRAW), (s_q,)).clamp_max_(topk)
    sink = _attn_sink(h_q, rng) if with_attn_sink else None
    return {
        "q": _maybe_noncontig(q, non_contiguous),
        "kv": _maybe_noncontig(kv, non_contiguous),
        "indices": _maybe_noncontig(indices, non_contiguous),
        "sm_scale": PREFILL_SM_SCALE,
        "d_v": d_v,
        "attn_sink": sink,
        "topk_length": topk_length,
        EXTRAS: {"invalid_values": invalid.tolist()},
    }


# --- dense MHA prefill (§4.5) ---------------------------------------------------------------
def mha_inputs(b: int, mean_sq: int, mean_sk: int, h: int, *, h_kv: int | None = None,
               d: int = 192, dv: int = 128, causal: bool = True, varlen: bool = False,
               requires_grad: bool = False, dtype: torch.dtype = torch.bfloat16,
               device: torch.device | str | None = None, seed: int = 0,
               generator: torch.Generator | None = None,
               non_contiguous: bool = False) -> dict[str, Any]:
    """Inputs of ``flash_attn_varlen_func``.

    Sequence lengths are ``mean_sq`` / ``mean_sk`` or (``varlen``) ``seqlen_q = max(N(μq, μq/2),
    1)``, ``seqlen_k = max(N(μk, μk/2), seqlen_q)``; ``q [total_q, h, d]``, ``k [total_k, h_kv,
    d]``, ``v [total_k, h_kv, dv]`` are ``randn/10`` (leaf tensors, ``requires_grad`` as asked);
    ``cu_seqlens_qo/kv`` int32 ``[b+1]``; ``softmax_scale = (d + 100) ** -0.5``.
    Extras: ``grad_out [total_q, h, dv]`` (randn/10), ``seqlens_q``, ``seqlens_k`` (host lists).
    """
    h_kv = h if h_kv is None else h_kv
    for name, v in (("b", b), ("mean_sq", mean_sq), ("mean_sk", mean_sk), ("h", h),
                    ("h_kv", h_kv), ("d", d), ("dv", dv)):
        _positive(name, v)
    if h % h_kv:
        raise ValueError(f"h: expected a multiple of h_kv={h_kv}, got {h}")
    dev = _resolve_device(device)
    rng = _Rng(dev, seed, generator)

    seqlens_q = _varlen_seqlens(b, mean_sq, 1, varlen, False, rng)  # host int64 [b]
    seqlens_k = torch.full((b,), mean_sk, dtype=torch.int64)
    if varlen:
        draw = (rng.host_randn((b,)).double() * (mean_sk / 2) + mean_sk).to(torch.int64)
        seqlens_k = torch.maximum(draw, seqlens_q)
    total_q, total_k = int(seqlens_q.sum()), int(seqlens_k.sum())

    def zero_prefixed_cumsum(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.new_zeros(1), x.cumsum(0)]).to(device=dev, dtype=torch.int32)

    def leaf(shape: tuple[int, ...]) -> torch.Tensor:
        x = _maybe_noncontig(rng.randn(shape, dtype) * KV_SCALE, non_contiguous)
        return x.requires_grad_(requires_grad)

    q, k, v = leaf((total_q, h, d)), leaf((total_k, h_kv, d)), leaf((total_k, h_kv, dv))
    grad_out = rng.randn((total_q, h, dv), dtype) * KV_SCALE
    return {
        "q": q, "k": k, "v": v,
        "cu_seqlens_qo": zero_prefixed_cumsum(seqlens_q),
        "cu_seqlens_kv": zero_prefixed_cumsum(seqlens_k),
        "max_seqlen_qo": int(seqlens_q.max()),
        "max_seqlen_kv": int(seqlens_k.max()),
        "softmax_scale": (d + MHA_SCALE_OFFSET) ** -0.5,
        "causal": causal,
        EXTRAS: {"grad_out": grad_out, "seqlens_q": seqlens_q.tolist(),
                 "seqlens_k": seqlens_k.tolist()},
    }

