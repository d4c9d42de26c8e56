"""Dense MHA prefill: the portable Triton kernels (forward, dQ, dK/dV) against the float64
autograd of the naive loop implementation (CPU: under the Triton interpreter, tiny shapes), the
launch configuration, dispatch gating and torch.library registration; on CUDA against the
float32 reference (gradients: FlashAttention's rule against PyTorch in bf16) at
FlashMLA-like shapes, with run-to-run bitwise determinism."""
import pytest
import torch

import openmla
from openmla import _library
from openmla.device import DeviceInfo, device_info
from openmla.dispatch import select
from openmla.ops.mha_prefill import gluon_supports, run_gluon, run_triton, triton_supports
from openmla.ops.mha_prefill.config import (DQ_ATOMIC, DQ_FUSED, DQ_TMA, head_dim_split,
                                           pick_config, value_dim_tile)
from openmla.ops.mha_prefill.ref import mha_prefill_bwd_ref, mha_prefill_fwd_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import (TOLERANCES, assert_close, compare_to_baseline,
                                     mha_backward_baseline, mha_forward_baseline)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16, FP16 = torch.bfloat16, torch.float16
TOL = TOLERANCES["mha_prefill"]
H100 = DeviceInfo("cuda", 90, 132, "H100")

# (seqlens_q, seqlens_k, h_q, h_kv, d_qk, d_v, causal, dtype); CPU tier: 16 x 16 tiles, so
# these cross several query / key blocks, the diagonal and ragged last blocks
CPU_CASES = [
    ((5, 40), (7, 33), 2, 2, 16, 16, True, BF16),
    ((5, 40), (7, 33), 2, 2, 16, 16, False, BF16),
    ((20, 9), (3, 30), 4, 2, 32, 16, True, BF16),  # Sk < Sq: lonely causal rows; GQA
    ((20, 9), (3, 30), 4, 2, 32, 16, False, BF16),
    ((17, 0, 9), (0, 5, 30), 4, 2, 24, 8, True, BF16),  # Sk = 0, Sq = 0; dims not 2^k
    ((33, 16), (33, 48), 4, 1, 32, 32, True, FP16),  # fp16, GQA 4:1, aligned blocks
    ((20, 9), (3, 30), 4, 2, 192, 128, True, BF16),  # DeepSeek's dims: 128 + 64 tiles
    ((12, 31), (12, 31), 2, 2, 128, 128, False, BF16),
]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND_MHA_PREFILL", "triton")


@pytest.fixture(params=["triton", "gluon"])
def kernel_backend(request, monkeypatch):
    """The portable kernels, then the Hopper forward (with the portable backward); the Gluon
    one is skipped where its predicate refuses (off Hopper, under the interpreter)."""
    if request.param == "gluon" and not gluon_supports(device_info(torch.device(DEV)),
                                                        {"d_qk": 192, "d_v": 128, "dtype": BF16}):
        pytest.skip("the Gluon forward needs a Hopper GPU and Triton's Gluon")
    monkeypatch.setenv("OPENMLA_BACKEND_MHA_PREFILL", request.param)
    return request.param


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                        device=DEV)


def _inputs(lens_q, lens_k, h_q, h_kv, d, dv, dtype, non_contiguous=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        x = (torch.randn(*shape, generator=g) / 10).to(dtype).to(DEV)
        if non_contiguous:  # every stride but the last differs from the contiguous one
            x = gen.non_contiguous_like(x)
        return x.requires_grad_()

    total_q, total_k = sum(lens_q), sum(lens_k)
    q, k, v = leaf(total_q, h_q, d), leaf(total_k, h_kv, d), leaf(total_k, h_kv, dv)
    dout = (torch.randn(total_q, h_q, dv, generator=g) / 10).to(dtype).to(DEV)
    return q, k, v, _cu(lens_q), _cu(lens_k), dout


def _check_fwd_bwd(q, k, v, cu_q, cu_k, dout, scale, causal, out, lse, grads=True):
    """out / lse and (grads) dq / dk / dv against autograd through the float64 naive MHA."""
    dtype = q.dtype
    assert out.dtype == dtype and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.stride() == (1, q.shape[0])
    r_out, r_lse = naive.naive_mha(q, k, v, cu_q, cu_k, scale, causal)
    assert_close("out", out, r_out.to(dtype), TOL["out"])
    assert_close("lse", lse, r_lse.float(), TOL["lse"])
    if not grads:
        return
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(r_out, (q, k, v), dout.to(r_out.dtype))
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and g.shape == w.shape
        assert_close(name, g, w.to(dtype), TOL[name])


def test_compare_to_baseline_rules():
    """FlashAttention's gradient rule: max error within twice the PyTorch baseline's (+ floor),
    then the cosine bound, which a reference that is zero but for rounding (within the floor)
    does not get; a wrong direction above the floor fails."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 8, generator=g, dtype=torch.float64)
    base = ref + 1e-3 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    assert compare_to_baseline(ref + 1e-3, ref, base, 7e-6) is None
    assert compare_to_baseline(ref + 0.5, ref, base, 7e-6) is not None  # max error
    noise = 1e-7 * torch.randn(64, 8, generator=g, dtype=torch.float64)
    # the answer's max error is within the bound (the baseline is as far off): only the cosine
    # bound could tell them apart, and only above the floor does it
    assert compare_to_baseline(-noise, noise, -noise, 7e-6) is None
    assert "cosine" in compare_to_baseline(-noise, noise, -noise, 7e-6, floor=0.0)


def test_head_dim_tiles_and_config_are_pure_functions():
    assert head_dim_split(192) == (128, 64) and head_dim_split(128) == (128, 0)
    assert head_dim_split(100) == (64, 64) and head_dim_split(8) == (16, 0)
    assert head_dim_split(24) == (16, 16) and head_dim_split(256) == (256, 0)
    assert value_dim_tile(128) == 128 and value_dim_tile(8) == 16 and value_dim_tile(72) == 128
    for d, dv in ((192, 128), (128, 128)):  # the H100 sweep's best (config.py)
        cfg = pick_config(d, dv, H100)
        assert (cfg.block_m, cfg.num_warps, cfg.num_stages) == (128, 8, 3)
        assert (cfg.dq_block_m, cfg.dq_block_n) == (128, 64)
        assert (cfg.dkdv_block_m, cfg.dkdv_block_n, cfg.dkdv_num_stages) == (32, 128, 1)
    assert pick_config(192, 128, H100).block_n == 64 and pick_config(128, 128, H100).block_n == 128
    cpu = pick_config(192, 128, DeviceInfo("cpu", 0, 0))
    assert cpu.block_m == cpu.block_n == cpu.dkdv_block_n == 16
    assert (cpu.dq_block_m, cpu.dq_block_n) == (DQ_FUSED, DQ_ATOMIC)


def test_triton_dispatch_gating(monkeypatch):
    """CUDA: the Triton kernels by default (head dims up to 256, bf16 / fp16; the reference
    otherwise), the Gluon forward first on Hopper at (192, 128) and (128, 128) when Triton's
    Gluon is there and not interpreting; CPU: only under the interpreter."""
    cpu = DeviceInfo("cpu", 0, 0)
    problem = {"d_qk": 192, "d_v": 128, "dtype": BF16}
    monkeypatch.delenv("OPENMLA_BACKEND_MHA_PREFILL", raising=False)
    monkeypatch.delenv("OPENMLA_BACKEND", raising=False)
    assert triton_supports(H100, problem) and not triton_supports(H100, {**problem, "d_qk": 320})
    hopper_first = "gluon" if gluon_supports(H100, problem) else "triton"
    assert select("mha_prefill", H100, problem).name == hopper_first
    assert select("mha_prefill", H100, {**problem, "d_qk": 128}).name == hopper_first
    assert select("mha_prefill", H100, {**problem, "d_qk": 64, "d_v": 64}).name == "triton"
    assert not gluon_supports(H100, {**problem, "dtype": torch.float32})
    assert not gluon_supports(DeviceInfo("cuda", 80, 108, "A100"), problem)
    assert select("mha_prefill", H100, {**problem, "d_qk": 320}).name == "reference"
    assert not triton_supports(H100, {**problem, "dtype": torch.float32})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_supports(cpu, problem)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select("mha_prefill", cpu, problem).name == "triton"


@pytest.mark.parametrize("shape", CPU_CASES)
def test_triton_forward_backward_vs_naive(shape, triton_backend, poisoned_outputs):
    lens_q, lens_k, h_q, h_kv, d, dv, causal, dtype = shape
    q, k, v, cu_q, cu_k, dout = _inputs(lens_q, lens_k, h_q, h_kv, d, dv, dtype,
                                        seed=hash(shape) % 997)
    problem = {"d_qk": d, "d_v": dv, "dtype": dtype}
    assert select("mha_prefill", device_info(DEV), problem).name == "triton"
    scale = (d + 100) ** -0.5
    out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                              softmax_scale=scale, causal=causal)
    _check_fwd_bwd(q, k, v, cu_q, cu_k, dout, scale, causal, out, lse)
    if causal and any(sk < sq for sq, sk in zip(lens_q, lens_k)):
        lonely = torch.isneginf(lse)
        assert bool(lonely.any()) and bool((out[lonely] == 0).all())


def test_empty_keys_give_zero_output_minus_inf_lse_and_zero_grads(triton_backend,
                                                                   poisoned_outputs):
    q, k, v, cu_q, cu_k, dout = _inputs((3, 4), (0, 0), 2, 1, 16, 16, BF16, seed=3)
    out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 0, causal=True)
    assert bool((out == 0).all()) and bool(torch.isneginf(lse).all())
    (dq,) = torch.autograd.grad(out, (q,), dout)
    assert bool((dq == 0).all())


def test_non_contiguous_inputs(triton_backend, poisoned_outputs):
    q, k, v, cu_q, cu_k, dout = _inputs((9, 23), (14, 23), 4, 2, 32, 16, BF16,
                                        non_contiguous=True, seed=4)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 23, 23, causal=True)
    _check_fwd_bwd(q, k, v, cu_q, cu_k, dout, None, True, out, lse)


def test_packed_variants(triton_backend, poisoned_outputs):
    """qkv / kv packed along the head dim: strided slices of one tensor, through autograd."""
    d, dv, lens = 32, 16, (7, 20)
    cu = _cu(lens)
    qkv = (torch.randn(sum(lens), 2, 2 * d + dv) / 10).to(BF16).to(DEV).requires_grad_()
    out, lse = openmla.flash_attn_varlen_qkvpacked_func(qkv, cu, 20, d, causal=True)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    dout = (torch.randn_like(out.float()) / 10).to(BF16)
    _check_fwd_bwd(q, k, v, cu, cu, dout, None, True, out, lse, grads=False)
    (g_packed,) = torch.autograd.grad(out, (qkv,), dout)
    r_out, _ = naive.naive_mha(q, k, v, cu, cu, None, True)
    (want,) = torch.autograd.grad(r_out, (qkv,), dout.double())
    for name, sl in (("dq", slice(0, d)), ("dk", slice(d, 2 * d)), ("dv", slice(2 * d, None))):
        assert_close(name, g_packed[..., sl], want[..., sl].to(BF16), TOL[name])

    q2, _, _, cu_q, cu_k, dout2 = _inputs((5, 11), (9, 14), 4, 2, d, dv, BF16, seed=5)
    kv = (torch.randn(23, 2, d + dv) / 10).to(BF16).to(DEV).requires_grad_()
    out, lse = openmla.flash_attn_varlen_kvpacked_func(q2, kv, cu_q, cu_k, 11, 14, d)
    k2, v2 = kv[..., :d], kv[..., d:]
    _check_fwd_bwd(q2, k2, v2, cu_q, cu_k, dout2, None, False, out, lse, grads=False)
    got = torch.autograd.grad(out, (q2, kv), dout2)
    r_out, _ = naive.naive_mha(q2, k2, v2, cu_q, cu_k, None, False)
    want = torch.autograd.grad(r_out, (q2, kv), dout2.double())
    assert_close("dq", got[0], want[0].to(BF16), TOL["dq"])
    assert_close("dk", got[1][..., :d], want[1][..., :d].to(BF16), TOL["dk"])
    assert_close("dv", got[1][..., d:], want[1][..., d:].to(BF16), TOL["dv"])


def test_run_twice_is_bitwise_identical(triton_backend):
    q, k, v, cu_q, cu_k, dout = _inputs((20, 33), (9, 40), 4, 2, 32, 16, BF16, seed=6)
    runs = []
    for _ in range(2):
        out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 33, 40, causal=True)
        runs.append((out, lse, *torch.autograd.grad(out, (q, k, v), dout)))
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), *runs):
        assert torch.equal(a, b), name


def test_library_ops_pass_opcheck():
    q, k, v, cu_q, cu_k, dout = _inputs((5, 9), (7, 9), 4, 2, 24, 16, BF16, seed=7)
    q, k, v = q.detach(), k.detach(), v.detach()
    for causal in (False, True):
        args = (q, k, v, cu_q, cu_k, 0.3, causal, 16, 16, 4, 1)
        torch.library.opcheck(_library.ops.mha_prefill_fwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))
        out, lse = _library.ops.mha_prefill_fwd(*args)
        args = (dout, q, k, v, out, lse.t(), cu_q, cu_k, 0.3, causal, 16, 16, 16, 16, 4, 1, 1)
        torch.library.opcheck(_library.ops.mha_prefill_bwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))


def _compile_case(monkeypatch):
    """Inputs for the public-op tests; on CPU the reference backend (the interpreter is slow)."""
    if DEV == "cpu":
        monkeypatch.setenv("OPENMLA_BACKEND_MHA_PREFILL", "reference")
    q, k, v, cu_q, cu_k, dout = _inputs((5, 40), (7, 33), 4, 2, 32, 16, BF16, seed=12)
    if DEV == "cuda":  # the Gluon kernels' head dims where they run
        q, k, v, cu_q, cu_k, dout = _inputs((5, 140), (7, 133), 4, 2, 192, 128, BF16, seed=12)
    return q, k, v, cu_q, cu_k, dout


def test_public_op_autograd_and_opcheck(monkeypatch):
    """flash_attn_varlen_func is one torch.library op (openmla::flash_attn_varlen) whose backward
    is registered with register_autograd: opcheck's schema, fake-tensor, autograd-registration
    and AOT-dispatch tests pass for it and its backward op, and lse carries no gradient."""
    q, k, v, cu_q, cu_k, dout = _compile_case(monkeypatch)
    out, lse = openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 140, 140, causal=True)
    assert out.requires_grad and not lse.requires_grad and lse.stride() == (1, q.shape[0])
    name = select("mha_prefill", device_info(q.device),
                  {"d_qk": q.shape[-1], "d_v": v.shape[-1], "dtype": BF16}).name
    args = (q.detach(), k.detach(), v.detach(), cu_q, cu_k, 0.2, True, name)
    torch.library.opcheck(torch.ops.openmla.flash_attn_varlen.default, args)
    o, lse_hm = torch.ops.openmla.flash_attn_varlen(*args)
    # the Gluon backward's dQ comes from reduce-adds in CTA order (not bitwise reproducible),
    # which opcheck's repeated runs would compare exactly
    utils = ("test_schema", "test_faketensor") if name == "gluon" else None
    torch.library.opcheck(torch.ops.openmla.flash_attn_varlen_backward.default,
                          (dout, *args[:3], o, lse_hm, *args[3:]),
                          **({"test_utils": utils} if utils else {}))


def test_torch_compile_fullgraph_parity(monkeypatch):
    """The public function compiled with fullgraph=True: out, lse and the gradients autograd
    takes through the compiled graph are bitwise those of eager calls (dq within the op's
    tolerance where it comes from reduce-adds in CTA order: the Gluon backward)."""
    q, k, v, cu_q, cu_k, dout = _compile_case(monkeypatch)

    def fwd(q, k, v):
        return openmla.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 140, 140, causal=True)

    want = fwd(q, k, v)
    want_g = torch.autograd.grad(want[0], (q, k, v), dout)
    got = torch.compile(fwd, fullgraph=True)(q, k, v)
    got_g = torch.autograd.grad(got[0], (q, k, v), dout)
    assert got[1].stride() == want[1].stride()
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), (*got, *got_g), (*want, *want_g)):
        if name == "dq" and DEV == "cuda":
            assert_close(name, a, b, TOL[name])
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("dq_blocks", [(16, 16), (DQ_FUSED, DQ_ATOMIC)])
def test_backward_dq_paths_vs_naive(dq_blocks):
    """The op with dQ by its own kernel and with dQ added by atomics from the dK/dV kernel."""
    lens_q, lens_k = (20, 9, 33), (3, 30, 40)
    q, k, v, cu_q, cu_k, dout = _inputs(lens_q, lens_k, 4, 2, 24, 16, BF16, seed=8)
    scale = 0.3
    r_out, _ = naive.naive_mha(q, k, v, cu_q, cu_k, scale, True)
    want = torch.autograd.grad(r_out, (q, k, v), dout.to(r_out.dtype))
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = _library.ops.mha_prefill_fwd(q, k, v, cu_q, cu_k, scale, True, 16, 16, 4, 1)
    got = _library.ops.mha_prefill_bwd(dout, q, k, v, out, lse.t(), cu_q, cu_k, scale, True,
                                       *dq_blocks, 16, 16, 4, 1, 1)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(name, g, w.to(BF16), TOL[name])


# --- GPU tier ----------------------------------------------------------------------------
GPU_CASES = [
    (sq, sk, h, h_kv, d, dv, causal, varlen)
    for (sq, sk) in ((512, 512), (700, 1000))
    for (h, h_kv) in ((16, 16), (32, 4))
    for (d, dv) in ((128, 128), (192, 128))
    for causal in (False, True)
    for varlen in (False, True)
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_CASES)
def test_kernels_vs_reference_gpu(shape, kernel_backend, poisoned_outputs):
    sq, sk, h, h_kv, d, dv, causal, varlen = shape
    case = gen.mha_inputs(2, sq, sk, h, h_kv=h_kv, d=d, dv=dv, causal=causal, varlen=varlen,
                          requires_grad=True, device="cuda", seed=hash(shape) % 997)
    _check_public_call(case)


def _check_public_call(case):
    """``flash_attn_varlen_func`` on ``case``: out / lse against the float32 reference at the
    op's tolerance, dq / dk / dv (in q's dtype) by FlashAttention's rule against PyTorch in the
    inputs' dtype."""
    out, lse = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    assert out.dtype == case["q"].dtype
    rk = gen.reference_kwargs("mha_prefill", case)
    r_out, r_lse = mha_prefill_fwd_ref(**rk)
    assert_close("out", out, r_out.to(out.dtype), TOL["out"])
    assert_close("lse", lse, r_lse, TOL["lse"])
    dout = case["extras"]["grad_out"]
    got = torch.autograd.grad(out, (case["q"], case["k"], case["v"]), dout)
    want = mha_prefill_bwd_ref(dout, case["q"], case["k"], case["v"], r_out, r_lse,
                               rk["cu_seqlens_q"], rk["cu_seqlens_k"], rk["softmax_scale"],
                               case["causal"])
    base = mha_backward_baseline(case["q"], case["k"], case["v"], rk["cu_seqlens_q"],
                                 rk["cu_seqlens_k"], rk["softmax_scale"], case["causal"], dout)
    for name, g, w, pt in zip(("dq", "dk", "dv"), got, want, base):
        assert g.dtype == case["q"].dtype
        why = compare_to_baseline(g, w, pt, TOL[name].cos_diff_tol)
        assert why is None, f"{name}: {why}"


@pytest.mark.gpu
@pytest.mark.parametrize("dq_blocks", [(64, 64), (DQ_FUSED, DQ_ATOMIC), (DQ_FUSED, DQ_TMA)])
@pytest.mark.parametrize("d", [128, 192])
def test_backward_dq_paths_gpu(dq_blocks, d, triton_backend):
    """Each way of producing dQ (own kernel, pointer atomics, TMA reduce-adds) against the
    float32 reference, through the op with the H100 tiles."""
    case = gen.mha_inputs(2, 700, 1000, 16, h_kv=16, d=d, dv=128, causal=True, varlen=True,
                          requires_grad=True, device="cuda", seed=11)
    rk = gen.reference_kwargs("mha_prefill", case)
    q, k, v = (case[n].detach() for n in ("q", "k", "v"))
    scale, cu_q, cu_k = rk["softmax_scale"], rk["cu_seqlens_q"], rk["cu_seqlens_k"]
    dout = case["extras"]["grad_out"]
    r_out, r_lse = mha_prefill_fwd_ref(**rk)
    want = mha_prefill_bwd_ref(dout, q, k, v, r_out, r_lse, cu_q, cu_k, scale, True)
    got = _library.ops.mha_prefill_bwd(dout, q, k, v, r_out.to(q.dtype), r_lse, cu_q, cu_k,
                                       scale, True, *dq_blocks, 32, 128, 8, 2, 1)
    base = mha_backward_baseline(q, k, v, cu_q, cu_k, scale, True, dout)
    for name, g, w, pt in zip(("dq", "dk", "dv"), got, want, base):
        why = compare_to_baseline(g, w, pt, TOL[name].cos_diff_tol)
        assert why is None, f"{name}: {why}"


@pytest.mark.gpu
@pytest.mark.parametrize("d", [128, 192])
def test_bitwise_deterministic_gpu(d, kernel_backend):
    case = gen.mha_inputs(2, 1000, 1000, 32, h_kv=4, d=d, dv=128, causal=True, varlen=True,
                          requires_grad=True, device="cuda", seed=9)
    dout = case["extras"]["grad_out"]
    runs = []
    for _ in range(5):
        out, lse = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
        runs.append((out, lse, *torch.autograd.grad(out, (case["q"], case["k"], case["v"]),
                                                    dout)))
    for run in runs[1:]:  # dQ may come from atomics: SPEC §2.5 leaves it nondeterministic
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), run, runs[0]):
            if name != "dq":
                assert torch.equal(a, b), name


# --- Hopper Gluon forward (ops/mha_prefill/gluon_kernel.py; the default forward on Hopper) ----
SM90_SMEM_LIMIT = 232448  # bytes of shared memory a CTA may use on an H100 (227 KiB)

# Compiled for sm_90 in a fresh interpreter without TRITON_INTERPRET (the test session may run
# Triton in its interpreter); prints wgmma count, shared memory and ptxas registers / spills.
GLUON_COMPILE = r"""
import json, re, sys
from openmla.ops.mha_prefill import gluon_bwd_launch, gluon_launch
from openmla.testing.sm90 import ptxas_report
d_qk, d_v, causal = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
kernel = sys.argv[4] if len(sys.argv) > 4 else "fwd"
compile_sm90 = (gluon_bwd_launch if kernel == "bwd" else gluon_launch).compile_sm90
kw = {"lag": sys.argv[5] == "1"} if len(sys.argv) > 5 else {}
k = compile_sm90(d_qk, d_v, causal, **kw)
ptx = k.asm["ptx"]
rep = ptxas_report(ptx)
print(json.dumps({"wgmma": len(re.findall(r"wgmma\.mma_async", ptx)), "smem": k.metadata.shared,
                  "spill": rep.spill_stores, "regs": rep.registers,
                  "serialized": "serialized" in rep.text,
                  "reduce": len(re.findall(r"cp\.reduce\.async\.bulk\.tensor", ptx)),
                  "setmaxnreg": sorted({int(x) for x in re.findall(r"setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+)", ptx)})}))
"""


def _sm90_compile_report(*args: str) -> dict:
    """GLUON_COMPILE's report for ``args`` (d_qk d_v causal [fwd|bwd [lag]]), compiled in a fresh
    interpreter without TRITON_INTERPRET; skips where Gluon of the targeted Triton is missing."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", GLUON_COMPILE, *args], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dims,causal", [((192, 128), True), ((192, 128), False),
                                         ((128, 128), True)])
def test_gluon_forward_compiles_for_sm90(dims, causal):
    """The Gluon forward compiles for sm_90 without a GPU: wgmma, shared memory within the
    H100 limit; spills are reported (ptxas) and must be zero."""
    rep = _sm90_compile_report(str(dims[0]), str(dims[1]), "1" if causal else "0")
    print(f"gluon mha forward {dims} causal={causal}: {rep}")
    assert rep["wgmma"] > 0, rep
    assert 0 < rep["smem"] <= SM90_SMEM_LIMIT, rep
    assert rep["spill"] == 0, rep


BWD_SPILL_LIMIT = 128  # bytes: d_qk 192 leaves the consumers a few registers short (72-88 B)


@pytest.mark.parametrize("dims,causal,lag", [((192, 128), True, None), ((192, 128), False, None),
                                             ((192, 128), True, True), ((128, 128), True, None),
                                             ((128, 128), True, False)])
def test_gluon_backward_compiles_for_sm90(dims, causal, lag):
    """The Gluon backward compiles for sm_90 without a GPU (default schedule, and the other
    one): wgmma not serialized by ptxas, dQ by TMA reduce-adds, shared memory within the H100
    limit, at most a few spilled registers."""
    args = [str(dims[0]), str(dims[1]), "1" if causal else "0", "bwd"]
    rep = _sm90_compile_report(*args, *([] if lag is None else ["1" if lag else "0"]))
    print(f"gluon mha backward {dims} causal={causal} lag={lag}: {rep}")
    assert rep["wgmma"] > 0 and not rep["serialized"], rep
    assert rep["reduce"] > 0, rep
    assert 0 < rep["smem"] <= SM90_SMEM_LIMIT, rep
    assert 0 <= rep["spill"] <= BWD_SPILL_LIMIT, rep


def test_gluon_grid_choice_is_a_pure_function_of_shapes(monkeypatch):
    """One CTA per item by default; with PERSISTENT_MAX_ROUNDS > 0, the persistent grid for
    causal launches of at most that many items per SM."""
    from openmla.ops.mha_prefill import gluon_launch
    from openmla.ops.mha_prefill.gluon_launch import use_persistent

    for causal in (True, False):
        assert not use_persistent(4 * 4096, 4, 16, causal, 132)
    monkeypatch.setattr(gluon_launch, "PERSISTENT_MAX_ROUNDS", 32)
    assert use_persistent(4 * 4096, 4, 16, True, 132)  # 2112 items: 16 rounds
    assert not use_persistent(4 * 4096, 4, 128, True, 132)  # 128 rounds
    assert not use_persistent(4 * 4096, 4, 16, False, 132)
    items = 32 * 132
    assert use_persistent((items - 1) * 128, 1, 1, True, 132)
    assert not use_persistent(items * 128, 1, 1, True, 132)
    # the grid: causal launches two items a CTA (whole rounds), non-causal one, persistent one
    # CTA per SM
    assert gluon_launch.grid_ctas(2112, True, False, 132) == 1056
    assert gluon_launch.grid_ctas(9, True, False, 132) == 4
    assert gluon_launch.grid_ctas(1, True, False, 132) == 1
    assert gluon_launch.grid_ctas(2112, False, False, 132) == 2112
    assert gluon_launch.grid_ctas(2112, True, True, 132) == 132
    assert gluon_launch.grid_ctas(5, False, True, 132) == 5


def test_gluon_forward_op_fake_and_gating():
    """The op's fake gives the forward's shapes; where the Gluon forward cannot run (here: the
    interpreter, no Hopper GPU) the backend's forward is the portable one, bit for bit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from openmla.ops.mha_prefill import gluon_launch

    with FakeTensorMode():
        q = torch.empty(37, 8, 192, dtype=BF16)
        k = torch.empty(50, 2, 192, dtype=BF16)
        v = torch.empty(50, 2, 128, dtype=BF16)
        cu = torch.empty(3, dtype=torch.int32)
        out, lse = _library.ops.mha_prefill_fwd_gluon(q, k, v, cu, cu, 0.1, True, 128, 2, True)
        assert out.shape == (37, 8, 128) and out.dtype == BF16
        assert lse.shape == (8, 37) and lse.dtype == torch.float32
    if DEV == "cpu":
        q, k, v, cu_q, cu_k, _ = _inputs((5, 9), (7, 9), 4, 2, 24, 16, BF16, seed=3)
        assert not gluon_launch.gluon_forward_ok(q, k, v)
        want = run_triton(q, k, v, cu_q, cu_k, 0.2, True)
        got = run_gluon(q, k, v, cu_q, cu_k, 0.2, True)
        for a, b in zip(got, want):
            assert torch.equal(a, b) and a.stride() == b.stride()


def test_gluon_backward_op_fake_and_gating():
    """The backward op's fake gives the gradients' shapes; where the Gluon backward cannot run
    (here: the interpreter, no Hopper GPU) the gluon backend's backward is the portable one, bit
    for bit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from openmla.ops.mha_prefill import run_gluon_backward, run_triton_backward
    from openmla.ops.mha_prefill.gluon_bwd_launch import gluon_backward_ok

    with FakeTensorMode():
        q = torch.empty(37, 8, 192, dtype=BF16)
        k = torch.empty(50, 2, 192, dtype=BF16)
        v = torch.empty(50, 2, 128, dtype=BF16)
        out = torch.empty(37, 8, 128, dtype=BF16)
        lse = torch.empty(8, 37, dtype=torch.float32).t()
        cu = torch.empty(3, dtype=torch.int32)
        dq, dk, dv = _library.ops.mha_prefill_bwd_gluon(out, q, k, v, out, lse, cu, cu, 0.1, True)
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
        assert dq.dtype == dk.dtype == dv.dtype == BF16
    if DEV == "cpu":
        q, k, v, cu_q, cu_k, dout = _inputs((5, 9), (7, 9), 4, 2, 24, 16, BF16, seed=4)
        assert not gluon_backward_ok(q, k, v)
        out, lse = run_triton(q, k, v, cu_q, cu_k, 0.2, True)
        want = run_triton_backward(dout, q, k, v, out, lse, cu_q, cu_k, 0.2, True)
        got = run_gluon_backward(dout, q, k, v, out, lse, cu_q, cu_k, 0.2, True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


# (lens_q, lens_k, h_q, h_kv, causal); unit-variance inputs: sharp softmax rows whose P·V terms
# cancel, the hardest case for a bf16 P
GLUON_CASES = [
    *[((n,), (n,), 4, 4, c) for n in (1, 63, 113, 1023, 4097) for c in (True, False)],
    ((0, 300, 1, 0, 777, 129), (5, 300, 0, 0, 900, 129), 8, 4, True),  # zero lengths, varlen
    ((0, 300, 1, 0, 777, 129), (5, 300, 0, 0, 900, 129), 8, 4, False),
    ((700, 33), (300, 20), 8, 1, True),  # s_k < s_q: lonely causal rows; GQA 8
    ((300, 129), (1000, 500), 16, 2, True),  # s_k > s_q
    ((1000,), (1000,), 16, 16, True),
    ((100, 50), (120, 60), 3, 1, True),  # 9 work items: two a CTA plus an odd one
    # more work items than SMs: a persistent CTA walks several items (ring, Q and tail phases)
    ((1000, 3000, 17, 0, 2048), (1000, 3000, 17, 0, 2048), 16, 4, True),
    ((1000, 3000, 17, 0, 2048), (900, 3100, 40, 5, 2000), 16, 4, False),
]


def _gluon_case(lens_q, lens_k, h_q, h_kv, d, dv, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(BF16).cuda()  # noqa: E731
    q = mk(sum(lens_q), h_q, d)
    k, v = mk(sum(lens_k), h_kv, d), mk(sum(lens_k), h_kv, dv)
    return q, k, v, _cu(lens_q), _cu(lens_k)


@pytest.mark.gpu
@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "default-grid"])
@pytest.mark.parametrize("dims", [(192, 128), (128, 128)])
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_forward_vs_reference_gpu(case, dims, persistent, poisoned_outputs):
    """The kernel alone on unit-variance data. lse to the float32 reference at the op's
    tolerance; out by FlashAttention's rule (max error at most twice that of PyTorch with P in
    bf16, plus the cosine bound): on such data bf16 rounding of P alone moves single elements
    past the element-wise bound, in any bf16 kernel (the portable forward included)."""
    from openmla.ops.mha_prefill.gluon_launch import gluon_forward_ok, mha_prefill_fwd_gluon

    lens_q, lens_k, h_q, h_kv, causal = case
    q, k, v, cu_q, cu_k = _gluon_case(lens_q, lens_k, h_q, h_kv, *dims, seed=len(lens_q) + h_q)
    if not gluon_forward_ok(q, k, v):
        pytest.skip("needs a Hopper GPU and Triton's Gluon")
    scale = dims[0] ** -0.5
    out, lse = mha_prefill_fwd_gluon(q, k, v, cu_q, cu_k, scale, causal, persistent=persistent)
    assert out.dtype == BF16 and out.shape == (q.shape[0], h_q, dims[1]) and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.stride() == (1, q.shape[0])
    r_out, r_lse = mha_prefill_fwd_ref(q, k, v, cu_q, cu_k, scale, causal)
    base = mha_forward_baseline(q, k, v, cu_q, cu_k, scale, causal)
    why = compare_to_baseline(out, r_out, base, TOL["out"].cos_diff_tol)
    assert why is None, f"out: {why}"
    assert_close("lse", lse, r_lse, TOL["lse"])
    lonely = torch.isinf(r_lse)
    assert torch.equal(torch.isinf(lse), lonely) and (out[lonely] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("lag", [None, "other"], ids=["default", "other-schedule"])
@pytest.mark.parametrize("dims", [(192, 128), (128, 128)])
@pytest.mark.parametrize("case", GLUON_CASES)
def test_gluon_backward_vs_reference_gpu(case, dims, lag, poisoned_outputs):
    """The Gluon backward alone (both dQ schedules) on the float32 reference's out / lse:
    dq, dk, dv by FlashAttention's rule against PyTorch in bf16 (compare_to_baseline), NaN-filled
    output buffers, dK / dV bitwise equal run to run."""
    from openmla.ops.mha_prefill.gluon_bwd_launch import (SCHEDULE, gluon_backward_ok,
                                                          mha_prefill_bwd_gluon_kernel)

    lens_q, lens_k, h_q, h_kv, causal = case
    q, k, v, cu_q, cu_k = _gluon_case(lens_q, lens_k, h_q, h_kv, *dims, seed=len(lens_q) + h_q)
    if not gluon_backward_ok(q, k, v):
        pytest.skip("needs a Hopper GPU and Triton's Gluon")
    g = torch.Generator().manual_seed(h_q)
    dout = torch.randn(q.shape[0], h_q, dims[1], generator=g).to(BF16).cuda()
    lag_flag = None if lag is None else not SCHEDULE[dims][0]
    scale = dims[0] ** -0.5
    r_out, r_lse = mha_prefill_fwd_ref(q, k, v, cu_q, cu_k, scale, causal)
    want = mha_prefill_bwd_ref(dout, q, k, v, r_out, r_lse, cu_q, cu_k, scale, causal)
    base = mha_backward_baseline(q, k, v, cu_q, cu_k, scale, causal, dout)
    runs = [mha_prefill_bwd_gluon_kernel(dout, q, k, v, r_out.to(BF16), r_lse, cu_q, cu_k,
                                         scale, causal, lag=lag_flag) for _ in range(2)]
    for name, got, w, b in zip(("dq", "dk", "dv"), runs[0], want, base):
        assert got.dtype == BF16 and got.shape == w.shape
        if got.numel():
            why = compare_to_baseline(got, w, b, TOL[name].cos_diff_tol)
            assert why is None, f"{name}: {why}"
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])


@pytest.mark.gpu
@pytest.mark.parametrize("d", [128, 192])
def test_gluon_forward_through_autograd_gpu(d, monkeypatch):
    """The default backend on Hopper through the public function: the Gluon forward's out / lse
    feed the portable backward; results match those of the portable path."""
    from openmla.ops.mha_prefill.gluon_launch import gluon_forward_ok

    case = gen.mha_inputs(2, 700, 1000, 16, h_kv=4, d=d, dv=128, causal=True, varlen=True,
                          requires_grad=True, device="cuda", seed=5)
    if not gluon_forward_ok(case["q"], case["k"], case["v"]):
        pytest.skip("needs a Hopper GPU and Triton's Gluon")
    monkeypatch.delenv("OPENMLA_BACKEND", raising=False)
    monkeypatch.setenv("OPENMLA_BACKEND_MHA_PREFILL", "triton")
    dout = case["extras"]["grad_out"]
    base = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    g_base = torch.autograd.grad(base[0], (case["q"], case["k"], case["v"]), dout)
    monkeypatch.delenv("OPENMLA_BACKEND_MHA_PREFILL")
    problem = {"d_qk": d, "d_v": 128, "dtype": BF16}
    assert select("mha_prefill", device_info(case["q"].device), problem).name == "gluon"
    got = openmla.flash_attn_varlen_func(**gen.public_kwargs(case))
    assert got[1].stride() == base[1].stride()
    assert_close("out", got[0], base[0], TOL["out"])
    assert_close("lse", got[1], base[1], TOL["lse"])
    g_got = torch.autograd.grad(got[0], (case["q"], case["k"], case["v"]), dout)
    for name, a, b in zip(("dq", "dk", "dv"), g_got, g_base):
        assert_close(name, a, b, TOL[name])


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dims", [(192, 128), (128, 128)])
def test_fp16_default_backend_gpu(dims, causal, monkeypatch, poisoned_outputs):
    """fp16 through the public function with the default backend (the Gluon forward and
    backward on Hopper): varlen lengths and GQA 2, out / lse against the
    float32 reference, gradients by FlashAttention's rule against PyTorch in fp16."""
    d, dv = dims
    case = gen.mha_inputs(3, 300, 400, 8, h_kv=4, d=d, dv=dv, causal=causal, varlen=True,
                          requires_grad=True, dtype=FP16, device="cuda", seed=11)
    monkeypatch.delenv("OPENMLA_BACKEND", raising=False)
    monkeypatch.delenv("OPENMLA_BACKEND_MHA_PREFILL", raising=False)
    problem = {"d_qk": d, "d_v": dv, "dtype": FP16}
    if select("mha_prefill", device_info(case["q"].device), problem).name != "gluon":
        pytest.skip("the Gluon kernels need a Hopper GPU and Triton's Gluon")
    _check_public_call(case)
