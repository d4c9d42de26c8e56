"""Randomised cross-checks: for every op, the Triton backend and the float32 reference agree on
fresh random configurations (shapes, page sizes, features drawn per case), with FlashMLA's
tolerances. Under the interpreter on CPU (CI); on CUDA the same draws run on the GPU."""
import random

import pytest
import torch

import openmla
from openmla.testing import generate as gen
from openmla.testing.compare import TOLERANCES, assert_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CASES = 8 if DEV == "cpu" else 24  # interpreter launches cost ~0.2-1 s each


def _both(monkeypatch, op, call):
    """Run ``call()`` with the reference, then with the Triton backend forced."""
    env = f"OPENMLA_BACKEND_{op.upper()}"
    monkeypatch.setenv(env, "reference")
    want = call()
    monkeypatch.setenv(env, "triton")
    got = call()
    return got, want


def _meta():
    return openmla.get_mla_metadata()[0]


@pytest.mark.parametrize("seed", range(CASES))
def test_dense_decode(seed, monkeypatch):
    rng = random.Random(seed)
    h_kv = rng.choice([1, 1, 2])
    h_q = h_kv * rng.choice([1, 3, 8, 16])
    s_q = rng.choice([1, 2, 3])
    pbs = rng.choice([1, 7, 16, 64, 128])
    case = gen.dense_decode_inputs(rng.randint(1, 4), s_q, h_q, rng.randint(1, 200), h_kv=h_kv,
                                   page_block_size=pbs, causal=rng.random() < 0.5,
                                   varlen=True, zero_seqlens=rng.random() < 0.3, device=DEV,
                                   seed=seed, non_contiguous=rng.random() < 0.5)
    kw = gen.public_kwargs(case)
    (out, lse), (r_out, r_lse) = _both(
        monkeypatch, "dense_decode",
        lambda: openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta()))
    assert_close("out", out, r_out, TOLERANCES["dense_decode"]["out"])
    assert_close("lse", lse, r_lse, TOLERANCES["dense_decode"]["lse"])


@pytest.mark.parametrize("seed", range(CASES))
def test_sparse_decode(seed, monkeypatch):
    rng = random.Random(100 + seed)
    d_qk = rng.choice([576, 512])
    extra = {}
    if rng.random() < 0.5:
        extra = dict(extra_topk=rng.choice([8, 40, 64]), extra_s_k=rng.randint(16, 120),
                     extra_page_block_size=rng.choice([1, 5, 64]),
                     with_extra_topk_length=rng.random() < 0.5)
    case = gen.sparse_decode_inputs(rng.randint(1, 3), rng.choice([1, 2]), rng.choice([1, 4, 16]),
                                    rng.randint(8, 150), rng.choice([8, 24, 70]), d_qk=d_qk,
                                    page_block_size=rng.choice([1, 2, 61, 64]),
                                    with_topk_length=rng.random() < 0.5,
                                    all_invalid=rng.random() < 0.15, device=DEV, seed=seed,
                                    **extra)
    kw = gen.public_kwargs(case)
    (out, lse), (r_out, r_lse) = _both(
        monkeypatch, "sparse_decode",
        lambda: openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta()))
    assert_close("out", out, r_out, TOLERANCES["sparse_decode"]["out"])
    assert_close("lse", lse, r_lse, TOLERANCES["sparse_decode"]["lse"])


@pytest.mark.parametrize("seed", range(CASES))
def test_sparse_prefill(seed, monkeypatch):
    rng = random.Random(200 + seed)
    case = gen.sparse_prefill_inputs(rng.randint(1, 6), rng.randint(1, 120), rng.choice([1, 5, 16]),
                                     rng.choice([1, 9, 64, 100]), d_qk=rng.choice([576, 512]),
                                     with_topk_length=rng.random() < 0.5,
                                     with_attn_sink=rng.random() < 0.5,
                                     all_invalid=rng.random() < 0.2, device=DEV, seed=seed,
                                     non_contiguous=rng.random() < 0.5)
    kw = gen.public_kwargs(case)
    (out, ml, lse), (r_out, r_ml, r_lse) = _both(
        monkeypatch, "sparse_prefill", lambda: openmla.flash_mla_sparse_fwd(**kw))
    tol = TOLERANCES["sparse_prefill"]
    assert_close("out", out.float(), r_out.float(), tol["out"])
    assert_close("max_logits", ml, r_ml, tol["max_logits"])
    assert_close("lse", lse, r_lse, tol["lse"])


@pytest.mark.parametrize("seed", range(CASES))
def test_mha_prefill(seed, monkeypatch):
    rng = random.Random(300 + seed)
    h_kv = rng.choice([1, 2])
    d, dv = rng.choice([(16, 16), (32, 16), (24, 8)])
    case = gen.mha_inputs(rng.randint(1, 3), rng.randint(1, 30), rng.randint(1, 30),
                          h_kv * rng.choice([1, 2]), h_kv=h_kv, d=d, dv=dv,
                          causal=rng.random() < 0.5, varlen=True, requires_grad=True,
                          device=DEV, seed=seed)
    kw = gen.public_kwargs(case)
    dout = case["extras"]["grad_out"]

    def run():
        out, lse = openmla.flash_attn_varlen_func(**kw)
        grads = torch.autograd.grad(out, (kw["q"], kw["k"], kw["v"]), dout)
        return (out, lse) + tuple(grads)

    got, want = _both(monkeypatch, "mha_prefill", run)
    tol = TOLERANCES["mha_prefill"]
    for name, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert_close(name, g, w, tol[name])
