"""FlashMLA API compatibility: exports, call forms of get_mla_metadata, positional order, return
shapes / dtypes / lse layouts, FlashMLASchedMeta reuse checks, and one test per documented
validation error (SPEC §1, §1.7, §1.8)."""
import dataclasses
import inspect

import pytest
import torch

import openmla
import openmla as flash_mla
from openmla.errors import (ArgumentTypeError, ArgumentValueError, SchedMetaError,
                            UnsupportedError)
from openmla.flash_mla_interface import FlashMLASchedMeta
from openmla.kvcache import quantize_kvcache

BF16 = torch.bfloat16


def test_exports():
    assert set(openmla.__all__) == {
        "get_mla_metadata", "flash_mla_with_kvcache", "flash_mla_sparse_fwd",
        "flash_attn_varlen_func", "flash_attn_varlen_qkvpacked_func",
        "flash_attn_varlen_kvpacked_func"}
    for name in openmla.__all__:
        assert callable(getattr(flash_mla, name))


def test_signatures_keep_flash_mla_positional_order():
    params = list(inspect.signature(openmla.flash_mla_with_kvcache).parameters)
    assert params == ["q", "k_cache", "block_table", "cache_seqlens", "head_dim_v",
                      "tile_scheduler_metadata", "num_splits", "softmax_scale", "causal",
                      "is_fp8_kvcache", "indices", "attn_sink", "extra_k_cache",
                      "extra_indices_in_kvcache", "topk_length", "extra_topk_length"]
    assert list(inspect.signature(openmla.flash_mla_sparse_fwd).parameters) == [
        "q", "kv", "indices", "sm_scale", "d_v", "attn_sink", "topk_length"]
    assert list(inspect.signature(openmla.flash_attn_varlen_func).parameters) == [
        "q", "k", "v", "cu_seqlens_qo", "cu_seqlens_kv", "max_seqlen_qo", "max_seqlen_kv",
        "dropout_p", "softmax_scale", "causal", "deterministic", "is_varlen"]
    assert list(inspect.signature(openmla.flash_attn_varlen_qkvpacked_func).parameters) == [
        "qkv", "cu_seqlens", "max_seqlen", "head_dim_qk", "dropout_p", "softmax_scale",
        "causal", "deterministic", "is_varlen"]
    assert list(inspect.signature(openmla.flash_attn_varlen_kvpacked_func).parameters) == [
        "q", "kv", "cu_seqlens_qo", "cu_seqlens_kv", "max_seqlen_qo", "max_seqlen_kv",
        "head_dim_qk", "dropout_p", "softmax_scale", "causal", "deterministic", "is_varlen"]


def test_sched_meta_fields():
    names = [f.name for f in dataclasses.fields(FlashMLASchedMeta)]
    assert names == ["have_initialized", "config", "tile_scheduler_metadata", "num_splits"]
    cfg = [f.name for f in dataclasses.fields(FlashMLASchedMeta.Config)]
    assert cfg == ["b", "s_q", "h_q", "page_block_size", "h_k", "causal", "is_fp8_kvcache",
                   "topk", "extra_page_block_size", "extra_topk"]


@pytest.mark.parametrize("args,kwargs", [
    ((), {}),
    ((torch.ones(2, dtype=torch.int32), 16, 1), {}),
    ((torch.ones(2, dtype=torch.int32), 16, 1, 128, True, 2048), {}),
    ((torch.ones(2, dtype=torch.int32),), {"num_q_tokens_per_head_k": 16, "num_heads_k": 1}),
])
def test_get_mla_metadata_call_forms(args, kwargs):
    meta, none = openmla.get_mla_metadata(*args, **kwargs)
    assert isinstance(meta, FlashMLASchedMeta) and none is None
    assert not meta.have_initialized and meta.config is None


def _dense(b=2, s_q=1, h_q=4, h_kv=1, pbs=16, blocks=3, dtype=BF16):
    q = torch.randn(b, s_q, h_q, 576, dtype=dtype) / 10
    k_cache = torch.randn(b * blocks, pbs, h_kv, 576, dtype=dtype) / 10
    block_table = torch.arange(b * blocks, dtype=torch.int32).view(b, blocks)
    seqlens = torch.full((b,), pbs * blocks - 3, dtype=torch.int32)
    return q, k_cache, block_table, seqlens


def _sparse(b=2, s_q=1, h_q=4, topk=8, d_qk=576, pbs=4, blocks=4):
    q = torch.randn(b, s_q, h_q, d_qk, dtype=BF16)
    cache = quantize_kvcache((torch.randn(blocks, pbs, 1, d_qk) / 10).to(BF16))
    idx = torch.randint(0, blocks * pbs, (b, s_q, topk), dtype=torch.int32)
    return q, cache, idx


def test_dense_return_layout_and_positional_legacy_call():
    q, kc, bt, cs = _dense(s_q=2, h_q=4)
    md, ns = openmla.get_mla_metadata(cs, 2 * 4, 1)  # 2025-02 call form
    out, lse = openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, md, ns, None, True)
    assert out.shape == (2, 2, 4, 512) and out.dtype == BF16 and out.is_contiguous()
    assert lse.shape == (2, 4, 2) and lse.dtype == torch.float32 and lse.is_contiguous()
    assert md.have_initialized and md.config.causal is True and md.config.page_block_size == 16


def test_dense_fp16():
    q, kc, bt, cs = _dense(dtype=torch.float16)
    out, lse = openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, openmla.get_mla_metadata()[0])
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_legacy_tensor_metadata_is_accepted_not_interpreted():
    q, kc, bt, cs = _dense()
    ref, ref_lse = openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, openmla.get_mla_metadata()[0])
    junk_md = torch.full((7, 8), 12345, dtype=torch.int32)
    junk_ns = torch.full((3,), -5, dtype=torch.int32)
    out, lse = openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, junk_md, junk_ns)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_sparse_return_layout():
    q, cache, idx = _sparse(s_q=3)
    out, lse = openmla.flash_mla_with_kvcache(q, cache, None, None, 512,
                                              openmla.get_mla_metadata()[0], is_fp8_kvcache=True,
                                              indices=idx)
    assert out.shape == (2, 3, 4, 512) and out.dtype == BF16
    assert lse.shape == (2, 4, 3) and lse.stride() == (12, 1, 4)  # transposed [b, s_q, h_q]


def test_sparse_prefill_and_mha_return_layouts():
    q = torch.randn(5, 4, 576, dtype=BF16)
    kv = torch.randn(9, 1, 576, dtype=BF16)
    idx = torch.randint(0, 9, (5, 1, 3), dtype=torch.int32)
    out, ml, lse = openmla.flash_mla_sparse_fwd(q, kv, idx, 0.5)
    assert out.shape == (5, 4, 512) and out.dtype == BF16
    assert ml.shape == lse.shape == (5, 4) and ml.dtype == lse.dtype == torch.float32
    q = torch.randn(7, 2, 192, dtype=BF16)
    k = torch.randn(9, 2, 192, dtype=BF16)
    v = torch.randn(9, 2, 128, dtype=BF16)
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 9], dtype=torch.int32)
    out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 5)
    assert out.shape == (7, 2, 128) and lse.shape == (7, 2) and lse.stride() == (1, 7)


def test_meta_reuse_checks_name_the_field():
    q, kc, bt, cs = _dense(s_q=2)
    meta, _ = openmla.get_mla_metadata()
    openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, meta, causal=True)
    openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, meta, causal=True)  # same config: fine
    with pytest.raises(SchedMetaError, match="causal"):
        openmla.flash_mla_with_kvcache(q, kc, bt, cs, 512, meta, causal=False)
    with pytest.raises(AssertionError, match="h_q"):  # FlashMLA callers catch AssertionError
        q2 = torch.cat([q, q], dim=2)
        openmla.flash_mla_with_kvcache(q2, kc, bt, cs, 512, meta, causal=True)
    with pytest.raises(SchedMetaError, match="page_block_size"):
        kc2 = kc.view(kc.shape[0] * 2, 8, 1, 576)
        bt2 = torch.arange(12, dtype=torch.int32).view(2, 6)
        openmla.flash_mla_with_kvcache(q, kc2, bt2, cs, 512, meta, causal=True)
    meta2, _ = openmla.get_mla_metadata()
    qs, cache, idx = _sparse()
    openmla.flash_mla_with_kvcache(qs, cache, None, None, 512, meta2, is_fp8_kvcache=True,
                                   indices=idx)
    with pytest.raises(SchedMetaError, match="topk"):
        openmla.flash_mla_with_kvcache(qs, cache, None, None, 512, meta2, is_fp8_kvcache=True,
                                       indices=idx[..., :4].contiguous())


# ---- one test per documented validation error ---------------------------------------------

def _meta():
    return openmla.get_mla_metadata()[0]


def _call_dense(**over):
    q, kc, bt, cs = _dense()
    args = dict(q=q, k_cache=kc, block_table=bt, cache_seqlens=cs, head_dim_v=512,
                tile_scheduler_metadata=_meta())
    args.update(over)
    return openmla.flash_mla_with_kvcache(**args)


def _call_sparse(**over):
    q, cache, idx = _sparse()
    args = dict(q=q, k_cache=cache, block_table=None, cache_seqlens=None, head_dim_v=512,
                tile_scheduler_metadata=_meta(), is_fp8_kvcache=True, indices=idx)
    args.update(over)
    return openmla.flash_mla_with_kvcache(**args)


q0, kc0, bt0, cs0 = _dense()
qs0, cache0, idx0 = _sparse()
DENSE_ERRORS = [
    ({"tile_scheduler_metadata": "meta"}, TypeError, "tile_scheduler_metadata"),
    ({"num_splits": torch.zeros(3, dtype=torch.int32)}, AssertionError, "num_splits"),
    ({"head_dim_v": 576}, ValueError, "head_dim_v: expected 512, got 576"),
    ({"q": q0.float()}, TypeError, "q: expected dtype bfloat16 or float16"),
    ({"q": q0[0]}, ValueError, "q: expected a 4-D tensor"),
    ({"q": q0[..., :128]}, ValueError, "q: expected head dim 576 or 512, got 128"),
    ({"q": torch.randn(2, 1, 576, 4, dtype=BF16).transpose(-1, -2)}, ValueError,
     "q: expected the last dim to be contiguous"),
    ({"q": q0[:0]}, ValueError, "q: expected b, s_q, h_q > 0"),
    ({"k_cache": kc0.half()}, TypeError, "k_cache: expected dtype bfloat16"),
    ({"k_cache": kc0[..., :512]}, ValueError, "k_cache: expected last dim 576"),
    ({"k_cache": torch.randn(6, 16, 3, 576, dtype=BF16)}, ValueError, "h_kv"),
    ({"block_table": bt0.long()}, TypeError, "block_table: expected dtype int32"),
    ({"block_table": bt0[:1]}, ValueError, "block_table: expected shape [2, *]"),
    ({"block_table": None}, ValueError, "block_table"),
    ({"cache_seqlens": cs0.long()}, TypeError, "cache_seqlens: expected dtype int32"),
    ({"cache_seqlens": cs0[:1]}, ValueError, "cache_seqlens: expected shape [2]"),
    ({"cache_seqlens": None}, ValueError, "cache_seqlens"),
    ({"softmax_scale": "x"}, TypeError, "softmax_scale: expected a float"),
    ({"softmax_scale": float("nan")}, ValueError, "softmax_scale: expected a finite float"),
    ({"causal": 1}, TypeError, "causal: expected a bool"),
    ({"is_fp8_kvcache": True}, NotImplementedError, "is_fp8_kvcache"),
    ({"attn_sink": torch.zeros(4)}, ValueError, "attn_sink: expected None in dense decode"),
    ({"topk_length": torch.zeros(2, dtype=torch.int32)}, ValueError, "topk_length: expected None"),
    ({"extra_k_cache": cache0}, ValueError, "extra_k_cache: expected None"),
    ({"extra_indices_in_kvcache": idx0}, ValueError, "extra_indices_in_kvcache: expected None"),
    ({"extra_topk_length": torch.zeros(2, dtype=torch.int32)}, ValueError,
     "extra_topk_length: expected None"),
]


@pytest.mark.parametrize("over,exc,msg", DENSE_ERRORS, ids=[m for _, _, m in DENSE_ERRORS])
def test_dense_validation(over, exc, msg):
    with pytest.raises(exc) as info:
        _call_dense(**over)
    assert msg in str(info.value)
    assert isinstance(info.value, openmla.errors.OpenMLAError)


SPARSE_ERRORS = [
    ({"causal": True}, ValueError, "causal: expected False in sparse decode"),
    ({"is_fp8_kvcache": False}, NotImplementedError, "is_fp8_kvcache: expected True"),
    ({"q": qs0.half()}, TypeError, "q: expected dtype bfloat16"),
    ({"q": qs0[..., :448]}, ValueError, "q: expected head dim 576 (V3.2) or 512 (MODEL1)"),
    ({"k_cache": cache0.view(torch.uint8).view(torch.bfloat16)}, TypeError,
     "k_cache: expected dtype float8_e4m3fn or int8 or uint8"),
    ({"k_cache": cache0[..., :584]}, ValueError, "k_cache: expected 656 bytes per token"),
    ({"k_cache": cache0.expand(4, 4, 2, 656)}, ValueError, "k_cache: expected h_kv (dim 2) = 1"),
    ({"k_cache": cache0[:, ::2]}, ValueError, "k_cache: expected stride(1) = 656"),
    ({"indices": idx0.long()}, TypeError, "indices: expected dtype int32"),
    ({"indices": idx0[:, :, :0]}, ValueError, "indices: expected topk (dim 2) >= 1"),
    ({"indices": idx0[:1]}, ValueError, "indices: expected shape [2, 1, *]"),
    ({"attn_sink": torch.zeros(3)}, ValueError, "attn_sink: expected shape [4]"),
    ({"attn_sink": torch.zeros(4, dtype=BF16)}, TypeError, "attn_sink: expected dtype float32"),
    ({"topk_length": torch.zeros(2)}, TypeError, "topk_length: expected dtype int32"),
    ({"topk_length": torch.zeros(3, dtype=torch.int32)}, ValueError,
     "topk_length: expected shape [2]"),
    ({"extra_indices_in_kvcache": idx0}, ValueError,
     "extra_indices_in_kvcache: expected None without extra_k_cache"),
    ({"extra_topk_length": torch.zeros(2, dtype=torch.int32)}, ValueError,
     "extra_topk_length: expected None without extra_k_cache"),
    ({"extra_k_cache": cache0}, ValueError, "extra_indices_in_kvcache: expected a tensor"),
    ({"extra_k_cache": cache0[..., :584], "extra_indices_in_kvcache": idx0}, ValueError,
     "extra_k_cache: expected 656 bytes per token"),
    ({"extra_k_cache": cache0, "extra_indices_in_kvcache": idx0.long()}, TypeError,
     "extra_indices_in_kvcache: expected dtype int32"),
]


@pytest.mark.parametrize("over,exc,msg", SPARSE_ERRORS, ids=[m for _, _, m in SPARSE_ERRORS])
def test_sparse_decode_validation(over, exc, msg):
    with pytest.raises(exc) as info:
        _call_sparse(**over)
    assert msg in str(info.value)


def _call_prefill(**over):
    args = dict(q=torch.randn(5, 4, 576, dtype=BF16), kv=torch.randn(9, 1, 576, dtype=BF16),
                indices=torch.zeros(5, 1, 3, dtype=torch.int32), sm_scale=0.5)
    args.update(over)
    return openmla.flash_mla_sparse_fwd(**args)


PREFILL_ERRORS = [
    ({"q": torch.randn(5, 4, 576)}, TypeError, "q: expected dtype bfloat16"),
    ({"q": torch.randn(5, 4, 192, dtype=BF16)}, ValueError, "q: expected head dim 576 or 512"),
    ({"kv": torch.randn(9, 2, 576, dtype=BF16)}, ValueError, "kv: expected shape [*, 1, 576]"),
    ({"kv": torch.randn(9, 1, 576)}, TypeError, "kv: expected dtype bfloat16"),
    ({"indices": torch.zeros(4, 1, 3, dtype=torch.int32)}, ValueError,
     "indices: expected shape [5, 1, *]"),
    ({"indices": torch.zeros(5, 1, 3, dtype=torch.int64)}, TypeError,
     "indices: expected dtype int32"),
    ({"sm_scale": None}, TypeError, "sm_scale: expected a float, got None"),
    ({"d_v": 576}, ValueError, "d_v: expected 512"),
    ({"attn_sink": torch.zeros(5)}, ValueError, "attn_sink: expected shape [4]"),
    ({"topk_length": torch.zeros(4, dtype=torch.int32)}, ValueError,
     "topk_length: expected shape [5]"),
]


@pytest.mark.parametrize("over,exc,msg", PREFILL_ERRORS, ids=[m for _, _, m in PREFILL_ERRORS])
def test_sparse_prefill_validation(over, exc, msg):
    with pytest.raises(exc) as info:
        _call_prefill(**over)
    assert msg in str(info.value)


def _call_mha(**over):
    args = dict(q=torch.randn(7, 4, 128, dtype=BF16), k=torch.randn(9, 2, 128, dtype=BF16),
                v=torch.randn(9, 2, 128, dtype=BF16),
                cu_seqlens_qo=torch.tensor([0, 3, 7], dtype=torch.int32),
                cu_seqlens_kv=torch.tensor([0, 4, 9], dtype=torch.int32),
                max_seqlen_qo=4, max_seqlen_kv=5)
    args.update(over)
    return openmla.flash_attn_varlen_func(**args)


MHA_ERRORS = [
    ({"q": torch.randn(7, 4, 128)}, TypeError, "q: expected dtype bfloat16 or float16"),
    ({"k": torch.randn(9, 2, 128, dtype=torch.float16)}, TypeError, "k: expected dtype bfloat16"),
    ({"k": torch.randn(9, 2, 64, dtype=BF16)}, ValueError, "k: expected head dim 128"),
    ({"k": torch.randn(9, 3, 128, dtype=BF16), "v": torch.randn(9, 3, 128, dtype=BF16)},
     ValueError, "h_kv (dim 1) >= 1 dividing h_q=4"),
    ({"v": torch.randn(8, 2, 128, dtype=BF16)}, ValueError, "v: expected shape [9, 2, d_v]"),
    ({"cu_seqlens_qo": torch.tensor([0, 3, 7])}, TypeError, "cu_seqlens_qo: expected dtype int32"),
    ({"cu_seqlens_qo": torch.tensor([0], dtype=torch.int32)}, ValueError,
     "cu_seqlens_qo: expected [b + 1] with b >= 1"),
    ({"cu_seqlens_kv": torch.tensor([0, 9], dtype=torch.int32)}, ValueError,
     "cu_seqlens_kv: expected shape [3]"),
    ({"max_seqlen_qo": 4.0}, TypeError, "max_seqlen_qo: expected an int"),
    ({"dropout_p": 0.1}, NotImplementedError, "dropout_p: expected 0.0"),
    ({"is_varlen": False}, ValueError, "divisible by b=2"),
]


@pytest.mark.parametrize("over,exc,msg", MHA_ERRORS, ids=[m for _, _, m in MHA_ERRORS])
def test_mha_validation(over, exc, msg):
    with pytest.raises(exc) as info:
        _call_mha(**over)
    assert msg in str(info.value)


def test_packed_validation():
    with pytest.raises(ValueError, match="qkv: expected last dim"):
        openmla.flash_attn_varlen_qkvpacked_func(
            torch.randn(7, 2, 100, dtype=BF16), torch.tensor([0, 7], dtype=torch.int32), 7, 64)
    with pytest.raises(ValueError, match="kv: expected last dim"):
        openmla.flash_attn_varlen_kvpacked_func(
            torch.randn(7, 2, 64, dtype=BF16), torch.randn(7, 2, 64, dtype=BF16),
            torch.tensor([0, 7], dtype=torch.int32), torch.tensor([0, 7], dtype=torch.int32),
            7, 7, 64)


def test_errors_derive_from_flash_mla_classes():
    assert issubclass(ArgumentValueError, RuntimeError) and issubclass(ArgumentValueError, ValueError)
    assert issubclass(ArgumentTypeError, RuntimeError) and issubclass(ArgumentTypeError, TypeError)
    assert issubclass(UnsupportedError, RuntimeError)
    assert issubclass(SchedMetaError, AssertionError)


def test_debug_mode_checks_data(monkeypatch):
    monkeypatch.setenv("OPENMLA_DEBUG", "1")
    q, kc, bt, cs = _dense()
    with pytest.raises(ValueError, match="cache_seqlens: expected values <= 48"):
        openmla.flash_mla_with_kvcache(q, kc, bt, cs + 100, 512, _meta())
    bad = bt.clone()
    bad[0, 0] = 999
    with pytest.raises(ValueError, match="block_table: expected used entries"):
        openmla.flash_mla_with_kvcache(q, kc, bad, cs, 512, _meta())
    qs, cache, idx = _sparse()
    with pytest.raises(ValueError, match="topk_length: expected values <= 8"):
        openmla.flash_mla_with_kvcache(qs, cache, None, None, 512, _meta(), is_fp8_kvcache=True,
                                       indices=idx, topk_length=torch.full((2,), 9, dtype=torch.int32))


def test_forced_backend_env(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND", "bogus")
    with pytest.raises(NotImplementedError, match="OPENMLA_BACKEND"):
        _call_dense()
    monkeypatch.setenv("OPENMLA_BACKEND", "reference")
    _call_dense()
