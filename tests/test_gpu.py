"""GPU tier (marked ``gpu``, skipped without CUDA): the public functions on CUDA tensors at
FlashMLA's correctness-matrix shapes against the float32 reference, the reference on CUDA
against the same reference on the CPU (it must be device-agnostic), and the small CPU cases on
CUDA against the independent loop implementations."""
import pytest
import torch

import openmla
from openmla.ops.dense_decode.ref import dense_decode_ref
from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
from openmla.ops.sparse_decode.ref import sparse_decode_ref
from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import TOLERANCES, assert_close

from shapes import (DENSE_DECODE_CPU, DENSE_DECODE_GPU, DENSE_DECODE_PROD, DENSE_DECODE_RANGE,
                    MHA_GPU,
                    SPARSE_DECODE_GPU, SPARSE_DECODE_PROD, SPARSE_PREFILL_GPU,
                    SPARSE_PREFILL_PROD)

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
CUDA = "cuda"


def _meta():
    return openmla.get_mla_metadata()[0]


def _dense_case(shape, device=CUDA, seed=0):
    b, s_q, h_q, h_kv, s_k, pbs, causal, varlen, zero = shape
    return gen.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, page_block_size=pbs,
                                   causal=causal, varlen=varlen, zero_seqlens=zero,
                                   device=device, seed=seed, non_contiguous=True)


def _sparse_case(shape, device=CUDA, seed=0):
    d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero = shape
    kw = {}
    if extra is not None:
        kw = dict(extra_topk=extra[0], extra_s_k=extra[1], extra_page_block_size=extra[2],
                  with_extra_topk_length=etl)
    return gen.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=d_qk, page_block_size=pbs,
                                    with_topk_length=tl, all_invalid=inv, zero_seqlens=zero,
                                    device=device, seed=seed, non_contiguous=True, **kw)


def _prefill_case(shape, device=CUDA, seed=0):
    d_qk, s_q, s_kv, h_q, topk, tl, sink, inv = shape
    return gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=tl,
                                     with_attn_sink=sink, all_invalid=inv, device=device,
                                     seed=seed, non_contiguous=True)


def _check_decode(op, case, ref_fn):
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=_meta())
    torch.cuda.synchronize()
    r_out, r_lse = ref_fn(**gen.reference_kwargs(op, case))
    tol = TOLERANCES[op]
    assert_close("out", out, r_out.to(out.dtype), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])


@pytest.mark.parametrize("shape", DENSE_DECODE_GPU + DENSE_DECODE_PROD + DENSE_DECODE_RANGE)
def test_dense_decode_gpu(shape):
    _check_decode("dense_decode", _dense_case(shape), dense_decode_ref)


@pytest.mark.parametrize("shape", SPARSE_DECODE_GPU[::3] + SPARSE_DECODE_PROD)
def test_sparse_decode_gpu(shape):
    _check_decode("sparse_decode", _sparse_case(shape), sparse_decode_ref)


@pytest.mark.parametrize("shape", SPARSE_PREFILL_GPU[::2] + SPARSE_PREFILL_PROD)
def test_sparse_prefill_gpu(shape):
    case = _prefill_case(shape)
    out, ml, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    r_out, r_ml, r_lse = sparse_prefill_ref(**gen.reference_kwargs("sparse_prefill", case))
    tol = TOLERANCES["sparse_prefill"]
    assert_close("out", out.float(), r_out, tol["out"])
    assert_close("max_logits", ml, r_ml, tol["max_logits"])
    assert_close("lse", lse, r_lse, tol["lse"])


@pytest.mark.parametrize("shape", MHA_GPU[::2])
def test_mha_gpu(shape):
    b, sq, sk, h, h_kv, d, dv, causal, varlen = shape
    case = gen.mha_inputs(b, sq, sk, h, h_kv=h_kv, d=d, dv=dv, causal=causal, varlen=varlen,
                          device=CUDA, seed=1)
    out, lse = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    r_out, r_lse = mha_prefill_fwd_ref(**gen.reference_kwargs("mha_prefill", case))
    tol = TOLERANCES["mha_prefill"]
    assert_close("out", out, r_out.to(out.dtype), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])


def _to_cpu(case):
    return {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
            for k, v in case.items() if k != gen.EXTRAS}


@pytest.mark.parametrize("op", ["dense_decode", "sparse_decode", "sparse_prefill"])
def test_reference_is_device_agnostic(op):
    if op == "dense_decode":
        case, fn = _dense_case((4, 2, 16, 2, 300, 16, True, True, True)), dense_decode_ref
    elif op == "sparse_decode":
        case = _sparse_case((512, 4, 2, 16, 300, 64, 61, (32, 200, 5), True, True, False, False))
        fn = sparse_decode_ref
    else:
        case, fn = _prefill_case((576, 8, 300, 16, 128, True, True, True)), sparse_prefill_ref
    on_gpu = fn(**gen.reference_kwargs(op, case))
    on_cpu = fn(**gen.reference_kwargs(op, _to_cpu(case)))
    for name, g, c in zip(("out", "lse", "lse"), on_gpu, on_cpu):
        assert_close(name, g.cpu(), c, TOLERANCES[op][name])


@pytest.mark.parametrize("shape", DENSE_DECODE_CPU)
def test_dense_decode_gpu_vs_naive(shape):
    case = _dense_case(shape)
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=_meta())
    r_out, r_lse = naive.naive_dense_decode(**gen.reference_kwargs("dense_decode", _to_cpu(case)))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out.cpu(), r_out.to(out.dtype), tol["out"])
    assert_close("lse", lse.cpu(), r_lse.float(), tol["lse"])


def test_decode_is_deterministic():
    case = _dense_case((8, 2, 16, 1, 500, 64, True, True, True))
    kw = gen.public_kwargs(case)
    first = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
    second = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_dense_decode_cuda_graph_replay_with_new_seqlens():
    """No host synchronisation on the decode path: a whole call is captured in a CUDA graph and
    replayed after the sequence lengths change in place (a new meta object per step)."""
    case = _dense_case((4, 2, 16, 1, 300, 64, True, False, False))
    kw = gen.public_kwargs(case)
    seqlens = kw["cache_seqlens"]
    static = {k: v for k, v in kw.items()}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture
        openmla.flash_mla_with_kvcache(**static, tile_scheduler_metadata=_meta())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = openmla.flash_mla_with_kvcache(**static, tile_scheduler_metadata=_meta())
    for new in ([300, 1, 0, 250], [17, 299, 64, 2]):
        seqlens.copy_(torch.tensor(new, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        out, lse = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
        assert torch.equal(g_out, out) and torch.equal(g_lse, lse)
