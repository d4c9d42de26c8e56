"""The public functions (on this device: the float32 reference path) against the independent
loop implementations, on tiny shapes with FlashMLA's corner cases: odd page sizes, zero-length
sequences, all-invalid indices, sinks ±inf, NaN-poisoned unused KV, non-contiguous inputs."""
import pytest
import torch

import openmla
from openmla.ops.dense_decode import ref as dense_ref
from openmla.ops.mha_prefill import ref as mha_ref
from openmla.ops.sparse_decode import ref as sparse_ref
from openmla.ops.sparse_prefill import ref as prefill_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import TOLERANCES, assert_close

from shapes import DENSE_DECODE_CPU, MHA_CPU, SPARSE_DECODE_CPU, SPARSE_PREFILL_CPU

BF16 = torch.bfloat16


def _decode_call(case):
    return openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                          tile_scheduler_metadata=openmla.get_mla_metadata()[0])


@pytest.mark.parametrize("shape", DENSE_DECODE_CPU)
@pytest.mark.parametrize("non_contiguous", [False, True])
def test_dense_decode(shape, non_contiguous):
    b, s_q, h_q, h_kv, s_k, pbs, causal, varlen, zero = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, page_block_size=pbs,
                                   causal=causal, varlen=varlen, zero_seqlens=zero,
                                   device="cpu", seed=hash(shape) % 1000,
                                   non_contiguous=non_contiguous)
    out, lse = _decode_call(case)
    ref_out, ref_lse = naive.naive_dense_decode(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out, ref_out.to(BF16), tol["out"])
    assert_close("lse", lse, ref_lse.float(), tol["lse"])
    assert not torch.isnan(out).any()  # NaN in unused pages never leaks
    lonely = torch.isinf(lse).transpose(1, 2)  # [b, s_q, h_q]
    assert bool((out[lonely] == 0).all())


@pytest.mark.parametrize("shape", SPARSE_DECODE_CPU)
def test_sparse_decode(shape):
    d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero = shape
    kw = {}
    if extra is not None:
        kw = dict(extra_topk=extra[0], extra_s_k=extra[1], extra_page_block_size=extra[2],
                  with_extra_topk_length=etl)
    case = gen.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=d_qk, page_block_size=pbs,
                                    with_topk_length=tl, all_invalid=inv, zero_seqlens=zero,
                                    device="cpu", seed=hash(shape) % 1000,
                                    non_contiguous=True, **kw)
    out, lse = _decode_call(case)
    ref_out, ref_lse = naive.naive_sparse_decode(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    assert_close("out", out, ref_out.to(BF16), tol["out"])
    assert_close("lse", lse, ref_lse.float(), tol["lse"])
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("shape", SPARSE_PREFILL_CPU)
def test_sparse_prefill(shape):
    d_qk, s_q, s_kv, h_q, topk, tl, sink, inv = shape
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=tl,
                                     with_attn_sink=sink, all_invalid=inv, device="cpu",
                                     seed=hash(shape) % 1000, non_contiguous=True)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    r_out, r_ml, r_lse = naive.naive_sparse_prefill(**gen.reference_kwargs("sparse_prefill", case))
    tol = TOLERANCES["sparse_prefill"]
    assert_close("out", out.float(), r_out.float(), tol["out"])
    assert_close("max_logits", max_logits, r_ml.float(), tol["max_logits"])
    assert_close("lse", lse, r_lse.float(), tol["lse"])


@pytest.mark.parametrize("shape", MHA_CPU)
def test_mha_forward_backward(shape):
    b, sq, sk, h, h_kv, d, dv, causal, varlen = shape
    case = gen.mha_inputs(b, sq, sk, h, h_kv=h_kv, d=d, dv=dv, causal=causal, varlen=varlen,
                          requires_grad=True, device="cpu", seed=hash(shape) % 1000)
    out, lse = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    q, k, v = case["q"], case["k"], case["v"]
    r_out, r_lse = naive.naive_mha(**gen.reference_kwargs("mha_prefill", case))
    tol = TOLERANCES["mha_prefill"]
    assert_close("out", out, r_out.to(BF16), tol["out"])
    assert_close("lse", lse, r_lse.float(), tol["lse"])
    dout = case["extras"]["grad_out"]
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(r_out, (q, k, v), dout.to(r_out.dtype))
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == BF16 and g.shape == w.shape
        assert_close(name, g, w.to(BF16), tol[name])


def test_mha_packed_variants_match_unpacked():
    total, h, d, dv = 9, 2, 16, 8
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    qkv = (torch.randn(total, h, 2 * d + dv) / 10).to(BF16)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    want, want_lse = openmla.flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, causal=True)
    got, got_lse = openmla.flash_attn_varlen_qkvpacked_func(qkv, cu, 5, d, causal=True)
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)
    got, got_lse = openmla.flash_attn_varlen_kvpacked_func(q, qkv[..., d:], cu, cu, 5, 5, d,
                                                           causal=True)
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)


def test_mha_is_varlen_false_uses_equal_lengths():
    q = (torch.randn(8, 2, 16) / 10).to(BF16)
    k = (torch.randn(8, 2, 16) / 10).to(BF16)
    v = (torch.randn(8, 2, 16) / 10).to(BF16)
    junk = torch.tensor([0, 1, 8], dtype=torch.int32)  # offsets are ignored when not varlen
    got, _ = openmla.flash_attn_varlen_func(q, k, v, junk, junk, 4, 4, causal=True,
                                            is_varlen=False)
    cu = torch.tensor([0, 4, 8], dtype=torch.int32)
    want, _ = naive.naive_mha(q, k, v, cu, cu, 16 ** -0.5, True)
    assert_close("out", got, want.to(BF16), TOLERANCES["mha_prefill"]["out"])


def test_mha_empty_sequence_gives_minus_inf_lse():
    q = torch.randn(3, 1, 16, dtype=BF16)
    k = torch.randn(2, 1, 16, dtype=BF16)
    cu_q = torch.tensor([0, 3], dtype=torch.int32)
    cu_k = torch.tensor([0, 0], dtype=torch.int32)
    out, lse = openmla.flash_attn_varlen_func(q, k[:0], k[:0], cu_q, cu_k, 3, 0)
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isneginf(lse).all())


def test_sink_plus_inf_zeroes_output_and_lse_excludes_sink():
    case = gen.sparse_prefill_inputs(4, 20, 3, 8, device="cpu", seed=3)
    kw = gen.public_kwargs(case)
    base_out, base_ml, base_lse = openmla.flash_mla_sparse_fwd(**kw)
    kw["attn_sink"] = torch.full((3,), float("inf"))
    out, ml, lse = openmla.flash_mla_sparse_fwd(**kw)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, base_lse) and torch.equal(ml, base_ml)
    kw["attn_sink"] = torch.full((3,), float("-inf"))
    out, _, _ = openmla.flash_mla_sparse_fwd(**kw)
    assert torch.equal(out, base_out)
    # a finite sink scales by 1 / (1 + e^(sink - lse))
    kw["attn_sink"] = torch.zeros(3)
    out, _, _ = openmla.flash_mla_sparse_fwd(**kw)
    factor = 1 / (1 + torch.exp(-base_lse))
    assert_close("out", out.float(), (base_out.float() * factor[..., None]),
                 TOLERANCES["sparse_prefill"]["out"])


def test_sparse_decode_all_invalid_and_zero_topk_length_are_lonely():
    case = gen.sparse_decode_inputs(2, 2, 4, 40, 8, device="cpu", seed=5)
    kw = gen.public_kwargs(case)
    kw["indices"] = torch.full_like(kw["indices"], -1)
    out, lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isposinf(lse).all())
    kw = gen.public_kwargs(case)
    kw["topk_length"] = torch.zeros(2, dtype=torch.int32)
    kw["attn_sink"] = torch.zeros(4)
    out, lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    assert torch.equal(out, torch.zeros_like(out)) and bool(torch.isposinf(lse).all())


def test_dense_decode_never_reads_garbage_block_table_entries():
    case = gen.dense_decode_inputs(2, 1, 2, 30, page_block_size=8, device="cpu", seed=7)
    kw = gen.public_kwargs(case)
    base, base_lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    bt = kw["block_table"].clone()
    used = -(-int(kw["cache_seqlens"].max()) // 8)
    bt[:, used:] = -7  # negative garbage would index from the end if it were read
    kw["block_table"] = bt
    out, lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    assert torch.equal(out, base) and torch.equal(lse, base_lse)


def _tiny_budget(monkeypatch, elems=4096):
    for mod in (dense_ref, sparse_ref, prefill_ref, mha_ref):
        monkeypatch.setattr(mod, "REF_BUDGET_ELEMS", elems)


def test_reference_chunking_does_not_change_results(monkeypatch):
    """The references walk keys / queries in chunks sized by a memory budget; many small chunks
    must give the same answer as one."""
    dcase = gen.dense_decode_inputs(2, 2, 4, 50, page_block_size=4, causal=True, varlen=True,
                                    device="cpu", seed=11)
    scase = gen.sparse_decode_inputs(2, 1, 4, 60, 32, d_qk=512, page_block_size=3,
                                     extra_topk=16, extra_s_k=40, extra_page_block_size=5,
                                     with_topk_length=True, device="cpu", seed=12)
    pcase = gen.sparse_prefill_inputs(6, 40, 4, 24, with_topk_length=True, device="cpu", seed=13)
    mcase = gen.mha_inputs(2, 6, 9, 2, d=16, dv=8, varlen=True, device="cpu", seed=14)
    runs = []
    for budget in (None, 600):
        if budget is not None:
            _tiny_budget(monkeypatch, budget)
        runs.append([
            dense_ref.dense_decode_ref(**gen.reference_kwargs("dense_decode", dcase)),
            sparse_ref.sparse_decode_ref(**gen.reference_kwargs("sparse_decode", scase)),
            prefill_ref.sparse_prefill_ref(**gen.reference_kwargs("sparse_prefill", pcase)),
            mha_ref.mha_prefill_fwd_ref(**gen.reference_kwargs("mha_prefill", mcase)),
        ])
    for whole, chunked in zip(*runs):
        for a, b in zip(whole, chunked):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
