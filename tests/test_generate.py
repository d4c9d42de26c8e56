"""The data generators produce what SPEC §4.2–§4.5 describes: NaN exactly in unused KV, poisoned
block-table tails, distinct physical indices with -1 padding, out-of-range prefill padding,
non-contiguous layouts, length tensors in range. Checked with independent per-element loops at
tiny shapes."""
from __future__ import annotations

import math

import pytest
import torch

from openmla.kvcache.fp8 import dequantize_kvcache
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.ops.sparse_decode.ref import sparse_decode_ref
from openmla.testing import generate as G
from openmla.testing.naive import naive_dense_decode, naive_sparse_decode

DEV = torch.device("cpu")


def _contiguous_strides(shape):
    return torch.empty(shape).stride()


# --- dense decode -----------------------------------------------------------------------------
@pytest.mark.parametrize("pbs", [64, 16])
def test_dense_decode_poisoning(pbs):
    b, s_q, h_q, h_kv, s_k = 5, 2, 4, 2, 150
    case = G.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, page_block_size=pbs, varlen=True,
                                 zero_seqlens=True, device=DEV, seed=3)
    k, bt, lens = case["k_cache"], case["block_table"], case["cache_seqlens"].tolist()
    clean = case[G.EXTRAS]["block_table_clean"]
    num_pages = k.shape[0]
    assert sorted(clean.flatten().tolist()) == list(range(num_pages))  # a permutation
    assert bt.dtype == torch.int32 and case["cache_seqlens"].dtype == torch.int32
    used_pages = set()
    for i, L in enumerate(lens):
        assert L == 0 or L >= s_q
        n_used = math.ceil(L / pbs)
        for j in range(bt.shape[1]):
            if j < n_used:
                page = int(bt[i, j])
                assert page == int(clean[i, j])
                used_pages.add(page)
                for r in range(pbs):
                    finite = bool(torch.isfinite(k[page, r]).all())
                    nan = bool(torch.isnan(k[page, r]).all())
                    assert finite if j * pbs + r < L else nan, (i, j, r)
            else:
                assert int(bt[i, j]) == G.BLOCK_TABLE_POISON
    for page in set(range(num_pages)) - used_pages:
        assert bool(torch.isnan(k[page]).all())
    finite = k[torch.isfinite(k)]
    assert finite.abs().max() <= G.DECODE_CLAMP
    assert case["q"].abs().max() <= G.DECODE_CLAMP
    assert case["softmax_scale"] == pytest.approx(576 ** -0.5)


def test_dense_decode_zero_and_fixed_lengths():
    seen_zero = False
    for seed in range(8):
        case = G.dense_decode_inputs(8, 1, 2, 64, zero_seqlens=True, device=DEV, seed=seed)
        lens = case["cache_seqlens"].tolist()
        assert set(lens) <= {0, 64}
        seen_zero |= 0 in lens
    assert seen_zero
    fixed = G.dense_decode_inputs(3, 1, 2, 100, device=DEV)
    assert fixed["cache_seqlens"].tolist() == [100, 100, 100]


def test_dense_decode_non_contiguous_same_values():
    a = G.dense_decode_inputs(3, 2, 4, 90, varlen=True, device=DEV, seed=7)
    b = G.dense_decode_inputs(3, 2, 4, 90, varlen=True, device=DEV, seed=7, non_contiguous=True)
    for key in ("q", "k_cache", "block_table"):
        x, y = a[key], b[key]
        assert y.stride(-1) == 1 and not y.is_contiguous()
        assert y.stride() != _contiguous_strides(y.shape)
        assert torch.equal(torch.nan_to_num(x.float(), nan=7.0),
                           torch.nan_to_num(y.float(), nan=7.0))


def test_dense_decode_kwargs_run_reference_and_naive():
    case = G.dense_decode_inputs(2, 2, 2, 70, page_block_size=32, causal=True, varlen=True,
                                 device=DEV, seed=1)
    rk = G.reference_kwargs("dense_decode", case)
    out, lse = dense_decode_ref(**rk)
    n_out, n_lse = naive_dense_decode(**rk)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), n_out.double(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), n_lse.double(), atol=1e-5, rtol=1e-5)


def test_dense_decode_errors_name_the_argument():
    with pytest.raises(ValueError, match="h_q"):
        G.dense_decode_inputs(1, 1, 3, 10, h_kv=2, device=DEV)
    with pytest.raises(ValueError, match="dtype"):
        G.dense_decode_inputs(1, 1, 2, 10, dtype=torch.float32, device=DEV)
    with pytest.raises(ValueError, match="page_block_size"):
        G.dense_decode_inputs(1, 1, 2, 10, page_block_size=0, device=DEV)


# --- sparse decode ----------------------------------------------------------------------------
def _check_scope(cache, indices, length, scope, s_q, pbs, d_qk):
    logical = scope["logical_indices"]
    bt = scope["block_table"]
    lens = scope["cache_seqlens"].tolist()
    b, _, topk = indices.shape
    assert indices.dtype == torch.int32
    referenced = set()
    for i in range(b):
        T = topk if length is None else int(length[i])
        assert 0 <= T <= topk
        for t in range(s_q):
            row = indices[i, t].tolist()
            valid = [p for p in row if p != G.INVALID_INDEX]
            assert len(valid) == len(set(valid))  # distinct
            assert len(valid) == min(topk, lens[i])  # -1 pads short sequences
            assert row.count(G.INVALID_INDEX) == max(topk - lens[i], 0)
            for k, p in enumerate(row):
                a = int(logical[i, t, k])
                if p == G.INVALID_INDEX:
                    assert a == G.INVALID_INDEX
                    continue
                assert 0 <= a < lens[i]
                page, off = divmod(p, pbs)  # physical = page * pbs + offset
                assert int(bt[i, a // pbs]) == page and a % pbs == off
                if k < T:
                    referenced.add(p)
    deq = dequantize_kvcache(cache, d_qk)  # [num_pages, pbs, 1, d_qk]
    flat = deq.view(-1, d_qk)
    for p in range(flat.shape[0]):
        has_nan = bool(torch.isnan(flat[p]).any())
        assert has_nan == (p not in referenced), p
    assert torch.equal(scope["referenced"].nonzero().flatten(),
                       torch.tensor(sorted(referenced), dtype=torch.int64))


@pytest.mark.parametrize("d_qk,pbs", [(576, 61), (512, 2)])
def test_sparse_decode_indices_and_poisoning(d_qk, pbs):
    b, s_q, topk = 3, 2, 64
    case = G.sparse_decode_inputs(b, s_q, 64, 60, topk, d_qk=d_qk, page_block_size=pbs,
                                  with_topk_length=(d_qk == 512), device=DEV, seed=2)
    ex = case[G.EXTRAS]["main"]
    assert min(ex["cache_seqlens"].tolist()) < topk  # some rows need -1 padding
    _check_scope(case["k_cache"], case["indices"], case["topk_length"], ex, s_q, pbs, d_qk)
    cache = case["k_cache"]
    assert cache.dtype == torch.float8_e4m3fn
    assert cache.shape[1:] == (pbs, 1, 656 if d_qk == 576 else 584)
    assert cache.stride(0) == G.padded_block_stride(d_qk, pbs)
    assert cache.stride(0) > pbs * cache.shape[-1] or d_qk == 512
    if d_qk == 576:
        assert cache.stride(0) == (pbs + 1) * 656
    else:
        assert cache.stride(0) % G.MODEL1_BLOCK_ALIGN == 0
    assert case["softmax_scale"] == pytest.approx(d_qk ** -0.55)
    assert case["q"].abs().max() <= 1.0 and case["q"].dtype == torch.bfloat16
    assert case["is_fp8_kvcache"] is True and case["causal"] is False
    assert case["head_dim_v"] == 512


def test_sparse_decode_extra_cache_and_lengths():
    b, s_q = 4, 1
    case = G.sparse_decode_inputs(b, s_q, 64, 100, 64, d_qk=512, with_topk_length=True,
                                  extra_topk=128, extra_s_k=150, extra_page_block_size=2,
                                  with_extra_topk_length=True, device=DEV, seed=5)
    assert case["extra_k_cache"].shape[1] == 2
    assert case["extra_indices_in_kvcache"].shape == (b, s_q, 128)
    for key, top in (("topk_length", 64), ("extra_topk_length", 128)):
        v = case[key]
        assert v.dtype == torch.int32 and v.shape == (b,)
        assert int(v.min()) >= 0 and int(v.max()) <= top
    _check_scope(case["extra_k_cache"], case["extra_indices_in_kvcache"],
                 case["extra_topk_length"], case[G.EXTRAS]["extra"], s_q, 2, 512)
    rk = G.reference_kwargs("sparse_decode", case)
    out, lse = sparse_decode_ref(**rk)
    n_out, n_lse = naive_sparse_decode(**rk)
    torch.testing.assert_close(out.double(), n_out.double(), atol=1e-5, rtol=1e-4)


def test_sparse_decode_topk_length_uniform_range():
    values = []
    for seed in range(6):
        c = G.sparse_decode_inputs(32, 1, 64, 40, 8, d_qk=512, with_topk_length=True,
                                   device=DEV, seed=seed)
        values += c["topk_length"].tolist()
    assert min(values) == 0 and max(values) == 8  # both ends of [0, topk] are drawn
    assert set(values) == set(range(9))


def test_sparse_decode_all_invalid_and_sink():
    case = G.sparse_decode_inputs(2, 3, 128, 50, 64, all_invalid=True, device=DEV, seed=0)
    assert bool((case["indices"] == -1).all())
    assert bool(torch.isnan(dequantize_kvcache(case["k_cache"])).any(-1).all())
    sink = case["attn_sink"]
    assert sink.dtype == torch.float32 and sink.shape == (128,)
    n_pos, n_neg = int(torch.isposinf(sink).sum()), int(torch.isneginf(sink).sum())
    n_fin = int(torch.isfinite(sink).sum())
    # ~31 % +inf, ~31 % -inf, ~38 % finite; bounds that fail with negligible probability
    for n in (n_pos, n_neg, n_fin):
        assert 16 <= n <= 80
    no_sink = G.sparse_decode_inputs(1, 1, 64, 50, 64, with_attn_sink=False, device=DEV)
    assert no_sink["attn_sink"] is None


def test_sparse_decode_non_contiguous():
    c = G.sparse_decode_inputs(2, 2, 64, 90, 64, non_contiguous=True, device=DEV, seed=4)
    for key in ("q", "indices"):
        x = c[key]
        assert x.stride(-1) == 1 and x.stride() != _contiguous_strides(x.shape)
    ref = G.sparse_decode_inputs(2, 2, 64, 90, 64, device=DEV, seed=4)
    assert torch.equal(c["indices"], ref["indices"]) and torch.equal(c["q"], ref["q"])


def test_sparse_decode_errors():
    with pytest.raises(ValueError, match="d_qk"):
        G.sparse_decode_inputs(1, 1, 64, 10, 64, d_qk=128, device=DEV)
    with pytest.raises(ValueError, match="extra_topk"):
        G.sparse_decode_inputs(1, 1, 64, 10, 64, d_qk=512, with_extra_topk_length=True,
                               device=DEV)


# --- sparse prefill ---------------------------------------------------------------------------
def test_sparse_prefill_indices():
    s_q, s_kv, topk = 20, 40, 64
    case = G.sparse_prefill_inputs(s_q, s_kv, 64, topk, with_topk_length=True, device=DEV,
                                   seed=1, non_contiguous=True)
    idx = case["indices"]
    assert idx.shape == (s_q, 1, topk) and idx.dtype == torch.int32 and idx.stride(-1) == 1
    assert not idx.is_contiguous()
    candidates = {s_kv if v is None else v for v in G.PREFILL_INVALID_INDICES}
    assert set(case[G.EXTRAS]["invalid_values"]) == candidates
    pad_values = set()
    for t in range(s_q):
        row = idx[t, 0].tolist()
        valid = [p for p in row if 0 <= p < s_kv]
        assert sorted(valid) == list(range(s_kv))  # every position once
        pads = [p for p in row if not 0 <= p < s_kv]
        assert len(pads) == topk - s_kv and set(pads) <= candidates
        pad_values |= set(pads)
    assert len(pad_values) > 1  # drawn from the list, not one value
    tl = case["topk_length"]
    assert tl.shape == (s_q,) and int(tl.min()) >= 0 and int(tl.max()) <= topk
    assert case["sm_scale"] == G.PREFILL_SM_SCALE and case["d_v"] == 512
    for key in ("q", "kv"):
        x = case[key]
        assert x.dtype == torch.bfloat16 and x.abs().max() <= G.PREFILL_CLAMP
        assert x.stride(-1) == 1 and not x.is_contiguous()
    assert case["kv"].shape == (s_kv, 1, 576)


def test_sparse_prefill_distinct_without_padding_and_all_invalid_rows():
    s_q, s_kv, topk = 30, 300, 64
    case = G.sparse_prefill_inputs(s_q, s_kv, 64, topk, all_invalid=True,
                                   invalid_row_fraction=0.5, with_attn_sink=True, device=DEV,
                                   seed=3)
    idx = case["indices"][:, 0]
    candidates = set(case[G.EXTRAS]["invalid_values"])
    n_invalid_rows = 0
    for t in range(s_q):
        row = idx[t].tolist()
        if all(p in candidates for p in row):
            assert len(set(row)) == 1  # one invalid value fills the row
            n_invalid_rows += 1
        else:
            assert len(set(row)) == topk and all(0 <= p < s_kv for p in row)
    assert 0 < n_invalid_rows < s_q
    assert case["attn_sink"].shape == (64,)
    with pytest.raises(ValueError, match="invalid_row_fraction"):
        G.sparse_prefill_inputs(2, 10, 64, 8, all_invalid=True, invalid_row_fraction=1.5,
                                device=DEV)


# --- MHA ----------------------------------------------------------------------------------------
def test_mha_inputs():
    case = G.mha_inputs(4, 50, 60, 4, h_kv=2, d=192, dv=128, varlen=True, requires_grad=True,
                        device=DEV, seed=2, non_contiguous=True)
    sq, sk = case[G.EXTRAS]["seqlens_q"], case[G.EXTRAS]["seqlens_k"]
    assert all(q >= 1 for q in sq) and all(k >= q for q, k in zip(sq, sk))
    assert len(set(sq)) > 1  # varlen
    cu_q, cu_k = case["cu_seqlens_qo"].tolist(), case["cu_seqlens_kv"].tolist()
    assert cu_q == [sum(sq[:i]) for i in range(5)] and cu_k == [sum(sk[:i]) for i in range(5)]
    assert case["cu_seqlens_qo"].dtype == torch.int32
    assert case["max_seqlen_qo"] == max(sq) and case["max_seqlen_kv"] == max(sk)
    q, k, v = case["q"], case["k"], case["v"]
    assert q.shape == (sum(sq), 4, 192) and k.shape == (sum(sk), 2, 192)
    assert v.shape == (sum(sk), 2, 128)
    for x in (q, k, v):
        assert x.is_leaf and x.requires_grad and x.stride(-1) == 1 and not x.is_contiguous()
    assert case["softmax_scale"] == pytest.approx((192 + 100) ** -0.5)
    assert case[G.EXTRAS]["grad_out"].shape == (sum(sq), 4, 128)
    fixed = G.mha_inputs(2, 16, 16, 2, device=DEV)
    assert fixed["cu_seqlens_qo"].tolist() == [0, 16, 32]
    assert not fixed["q"].requires_grad


def test_reference_kwargs_unknown_op():
    with pytest.raises(ValueError, match="op"):
        G.reference_kwargs("nope", {})
