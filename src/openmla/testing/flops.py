"""FLOP and byte accounting for every op, exactly as SPEC.md §5.1 counts them.

Use these to turn a measured time into TFLOPS and GB/s that compare with FlashMLA's
published and measured figures (ANCHORS.md). All functions are pure: lengths may be
python ints, sequences of ints or 1-D torch tensors (read once on the host), and the
results are python ints.

Summary of SPEC §5.1 (L = cache_seqlens, N = attended (query, key) pairs):

* dense decode:   FLOP  = 2·s_q·Σ L·h_q·(d + dv)
                  bytes = (Σ L·h_kv·d + b·s_q·h_q·d + b·s_q·h_q·dv)·elem_size
* sparse decode:  FLOP  = 2·h_q·N_att·(d_qk + d_v)
                  bytes = 2·b·s_q·h_q·d_qk + N_unique·tok + 2·b·s_q·h_q·d_v
                  (tok = 656 for d_qk 576, 576 for d_qk 512)
* sparse prefill: FLOP  = 2·(s_q·topk or Σ topk_length)·h_q·(d_qk + d_v)
                  bytes = N_valid·d_qk·2 + s_q·h_q·(d_qk + d_v)·2
* dense MHA:      FLOP  = 2·N·h·(d + dv) forward, 2·N·h·(3d + 2dv) backward
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

IntOrSeq = Union[int, Sequence[int], torch.Tensor]

BF16_BYTES = 2  # q, out and (dense) KV elements are bf16/fp16
# Bytes read per FP8 cache token in SPEC §5.1's sparse-decode count, keyed by d_qk.
# V32 (576): the whole 656-byte token. MODEL1 (512): 448 fp8 + 128 rope bytes = 576;
# upstream's count leaves the 8-byte scale row out.
SPARSE_DECODE_TOKEN_BYTES = {576: 656, 512: 576}

MHA_FWD_D_FACTOR, MHA_FWD_DV_FACTOR = 1, 1  # fwd: 2·N·h·(1·d + 1·dv)
MHA_BWD_D_FACTOR, MHA_BWD_DV_FACTOR = 3, 2  # bwd: 2·N·h·(3·d + 2·dv)


# --- helpers ----------------------------------------------------------------------------
def _ints(x: IntOrSeq, name: str) -> list[int]:
    """A list of python ints from a sequence or a 1-D tensor (an int gives [x])."""
    if isinstance(x, torch.Tensor):
        if x.dim() > 1:
            raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(x.shape)}")
        return [int(v) for v in x.reshape(-1).tolist()]
    if isinstance(x, int):
        return [x]
    return [int(v) for v in x]


def _lengths(x: IntOrSeq, b: int, name: str) -> list[int]:
    """Per-request lengths: an int broadcasts to all b requests, else exactly b values >= 0."""
    values = [int(x)] * b if isinstance(x, int) else _ints(x, name)
    if len(values) != b:
        raise ValueError(f"{name}: expected {b} values (one per request), got {len(values)}")
    if any(v < 0 for v in values):
        raise ValueError(f"{name}: expected values >= 0, got {values}")
    return values


def _token_bytes(d_qk: int) -> int:
    if d_qk not in SPARSE_DECODE_TOKEN_BYTES:
        raise ValueError(
            f"d_qk: expected one of {sorted(SPARSE_DECODE_TOKEN_BYTES)} (FP8 cache formats), "
            f"got {d_qk}"
        )
    return SPARSE_DECODE_TOKEN_BYTES[d_qk]


# --- dense decode -------------------------------------------------------------------------
def dense_decode_flops(b: int, s_q: int, h_q: int, d: int, dv: int, seqlens: IntOrSeq) -> int:
    """SPEC §5.1 dense decode: ``FLOP = 2·s_q·Σ L·h_q·(d + dv)`` (causal masking ignored).

    Equals the test's ``b·h_q·s_q·(2·d·L̄ + 2·L̄·dv)`` with ``L̄`` the mean of ``seqlens``.
    ``seqlens`` is ``[b]`` (an int means every request has that length).
    """
    total_len = sum(_lengths(seqlens, b, "seqlens"))
    return 2 * s_q * total_len * h_q * (d + dv)


def dense_decode_bytes(
    b: int,
    s_q: int,
    h_q: int,
    h_kv: int,
    d: int,
    dv: int,
    seqlens: IntOrSeq,
    elem_size: int = BF16_BYTES,
) -> int:
    """SPEC §5.1 dense decode: ``bytes = (Σ L·h_kv·d + b·s_q·h_q·d + b·s_q·h_q·dv)·elem_size``.

    KV read once per KV head, plus q read and out written. Equals the test's
    ``b·(s_q·h_q·d·2 + L̄·h_kv·d·2 + s_q·h_q·dv·2)`` for ``elem_size = 2``.
    """
    total_len = sum(_lengths(seqlens, b, "seqlens"))
    return (total_len * h_kv * d + b * s_q * h_q * d + b * s_q * h_q * dv) * elem_size


# --- sparse decode --------------------------------------------------------------------------
def sparse_decode_attended(
    b: int,
    s_q: int,
    topk: int,
    topk_length: Optional[IntOrSeq] = None,
    extra_topk: Optional[int] = None,
    extra_topk_length: Optional[IntOrSeq] = None,
) -> int:
    """SPEC §5.1 ``N_att``: ``b·s_q·topk`` or ``s_q·Σ topk_length`` (per-request ``[b]``
    lengths), plus the same for the extra cache when ``extra_topk`` or
    ``extra_topk_length`` is given. Invalid (-1) indices are counted: FLOPs are the
    work a kernel does for every listed slot."""
    if topk_length is None:
        n_att = b * s_q * topk
    else:
        lengths = _lengths(topk_length, b, "topk_length")
        if any(v > topk for v in lengths):
            raise ValueError(f"topk_length: expected values <= topk={topk}, got {lengths}")
        n_att = s_q * sum(lengths)
    if extra_topk_length is not None:
        extra_lengths = _lengths(extra_topk_length, b, "extra_topk_length")
        if extra_topk is not None and any(v > extra_topk for v in extra_lengths):
            raise ValueError(
                f"extra_topk_length: expected values <= extra_topk={extra_topk}, "
                f"got {extra_lengths}"
            )
        n_att += s_q * sum(extra_lengths)
    elif extra_topk is not None:
        n_att += b * s_q * extra_topk
    return n_att


def sparse_decode_flops(h_q: int, d_qk: int, d_v: int, n_attended: int) -> int:
    """SPEC §5.1 sparse decode: ``FLOP = 2·h_q·N_att·(d_qk + d_v)``
    (``N_att`` from ``sparse_decode_attended``)."""
    return 2 * h_q * n_attended * (d_qk + d_v)


def count_unique_indices(
    indices: torch.Tensor,
    topk_length: Optional[IntOrSeq] = None,
    masked_as_minus_one: bool = True,
) -> int:
    """SPEC §5.1 ``N_unique`` of one index tensor ``[b, s_q, topk]``.

    Distinct values over the whole tensor, -1 counted as a value. With ``topk_length``
    (``[b]``), the positions ``k >= topk_length[i]`` are length-masked, so their garbage
    values are never counted. ``masked_as_minus_one=True`` masks the way upstream's
    ``count_flop_and_mem_vol_for_decode`` does (masked slots become -1, so masking adds
    -1 to the set when it was not there already); ``False`` drops masked slots entirely.
    The two differ by at most one token. Call once per cache and add the results (main
    and extra caches hold different tokens).
    """
    if indices.dim() != 3:
        raise ValueError(f"indices: expected 3-D [b, s_q, topk], got shape {tuple(indices.shape)}")
    b, _, topk = indices.shape
    flat = indices.detach().to("cpu", torch.int64)  # [b, s_q, topk]
    if topk_length is not None:
        lengths = torch.tensor(_lengths(topk_length, b, "topk_length"), dtype=torch.int64)
        positions = torch.arange(topk, dtype=torch.int64)  # [topk]
        masked = (positions[None, None, :] >= lengths[:, None, None]).expand_as(flat)
        if masked_as_minus_one:
            flat = torch.where(masked, torch.full_like(flat, -1), flat)  # [b, s_q, topk]
        else:
            flat = flat[~masked]  # [n_kept]
    return int(torch.unique(flat).numel())


def sparse_decode_bytes(
    b: int, s_q: int, h_q: int, d_qk: int, d_v: int, n_unique_tokens: int
) -> int:
    """SPEC §5.1 sparse decode:
    ``bytes = 2·b·s_q·h_q·d_qk + N_unique·tok + 2·b·s_q·h_q·d_v``, ``tok`` = 656 bytes for
    d_qk 576 (V32), 576 for d_qk 512 (MODEL1). ``N_unique`` from ``count_unique_indices``."""
    tok = _token_bytes(d_qk)
    q_bytes = BF16_BYTES * b * s_q * h_q * d_qk
    out_bytes = BF16_BYTES * b * s_q * h_q * d_v
    return q_bytes + n_unique_tokens * tok + out_bytes


def sparse_decode_bytes_topk(b: int, s_q: int, h_q: int, d_qk: int, d_v: int, topk: int) -> int:
    """ANCHORS.md's sparse-decode count: every ``(b, s_q, topk)`` slot reads one token,
    i.e. ``sparse_decode_bytes`` with ``N_unique = b·s_q·topk``
    ("topk × 656 per query token + q + out")."""
    return sparse_decode_bytes(b, s_q, h_q, d_qk, d_v, b * s_q * topk)


# --- sparse prefill ---------------------------------------------------------------------------
def sparse_prefill_flops(
    s_q: int,
    h_q: int,
    d_qk: int,
    d_v: int,
    topk: Optional[int] = None,
    topk_length: Optional[IntOrSeq] = None,
) -> int:
    """SPEC §5.1 sparse prefill: ``FLOP = 2·(s_q·topk or Σ topk_length)·h_q·(d_qk + d_v)``
    (``topk_length`` is per query token, ``[s_q]``; it takes precedence over ``topk``)."""
    if topk_length is not None:
        total = sum(_lengths(topk_length, s_q, "topk_length"))
    elif topk is not None:
        total = s_q * topk
    else:
        raise ValueError("topk / topk_length: expected at least one, got neither")
    return 2 * total * h_q * (d_qk + d_v)


def count_valid_prefill_indices(
    indices: torch.Tensor, s_kv: int, topk_length: Optional[IntOrSeq] = None
) -> int:
    """SPEC §5.1 ``N_valid`` for sparse prefill: entries of ``indices [s_q, h_kv, topk]``
    with ``0 <= p < s_kv`` at positions ``k < topk_length[t]`` (when given)."""
    if indices.dim() != 3:
        raise ValueError(
            f"indices: expected 3-D [s_q, h_kv, topk], got shape {tuple(indices.shape)}"
        )
    s_q, _, topk = indices.shape
    idx = indices.detach().to("cpu", torch.int64)  # [s_q, h_kv, topk]
    valid = (idx >= 0) & (idx < s_kv)  # [s_q, h_kv, topk]
    if topk_length is not None:
        lengths = torch.tensor(_lengths(topk_length, s_q, "topk_length"), dtype=torch.int64)
        positions = torch.arange(topk, dtype=torch.int64)  # [topk]
        valid &= positions[None, None, :] < lengths[:, None, None]
    return int(valid.sum())


def sparse_prefill_bytes(n_valid_indices: int, s_q: int, h_q: int, d_qk: int, d_v: int) -> int:
    """SPEC §5.1 sparse prefill: ``bytes = N_valid·d_qk·2 + s_q·h_q·(d_qk + d_v)·2``
    (``N_valid`` from ``count_valid_prefill_indices``)."""
    return n_valid_indices * d_qk * BF16_BYTES + s_q * h_q * (d_qk + d_v) * BF16_BYTES


# --- dense MHA ----------------------------------------------------------------------------
def _triangle(n: int) -> int:
    """1 + 2 + ... + n (0 for n <= 0)."""
    return n * (n + 1) // 2 if n > 0 else 0


def _seq_pairs(sq: int, sk: int, causal: bool) -> int:
    """Unmasked (i, j) pairs of one sequence: 0 <= j < Sk and, if causal, j <= i + Sk - Sq.

    Causal row i sees ``clamp(i + Sk - Sq + 1, 0, Sk)`` keys; over i in [0, Sq) that count
    runs through ``Sk - Sq + 1 .. Sk`` (never above Sk), so the sum of its positive part
    is ``T(Sk) - T(max(Sk - Sq, 0))`` with ``T(n) = n(n + 1)/2``.
    """
    if sq <= 0 or sk <= 0:
        return 0
    if not causal:
        return sq * sk
    return _triangle(sk) - _triangle(max(sk - sq, 0))


def mha_pairs(cu_seqlens_q: IntOrSeq, cu_seqlens_k: IntOrSeq, causal: bool) -> int:
    """SPEC §5.1 ``N = Σ_seq #unmasked (i, j) pairs`` with bottom-right causal masking,
    in closed form per sequence (sequences may be 128K long)."""
    cu_q = _ints(cu_seqlens_q, "cu_seqlens_q")
    cu_k = _ints(cu_seqlens_k, "cu_seqlens_k")
    if len(cu_q) != len(cu_k):
        raise ValueError(
            f"cu_seqlens_k: expected {len(cu_q)} entries (as cu_seqlens_q), got {len(cu_k)}"
        )
    total = 0
    for n in range(len(cu_q) - 1):
        sq, sk = cu_q[n + 1] - cu_q[n], cu_k[n + 1] - cu_k[n]
        if sq < 0 or sk < 0:
            raise ValueError(
                f"cu_seqlens_q / cu_seqlens_k: expected non-decreasing, sequence {n} has "
                f"Sq={sq}, Sk={sk}"
            )
        total += _seq_pairs(sq, sk, causal)
    return total


def mha_flops(
    cu_seqlens_q: IntOrSeq,
    cu_seqlens_k: IntOrSeq,
    h: int,
    d: int,
    dv: int,
    causal: bool,
    backward: bool = False,
) -> int:
    """SPEC §5.1 dense MHA: forward ``2·N·h·(d + dv)``, backward ``2·N·h·(3d + 2dv)``
    with ``N = mha_pairs(cu_seqlens_q, cu_seqlens_k, causal)``."""
    n_pairs = mha_pairs(cu_seqlens_q, cu_seqlens_k, causal)
    if backward:
        return 2 * n_pairs * h * (MHA_BWD_D_FACTOR * d + MHA_BWD_DV_FACTOR * dv)
    return 2 * n_pairs * h * (MHA_FWD_D_FACTOR * d + MHA_FWD_DV_FACTOR * dv)
