"""Sparse prefill: the portable Triton kernel against the independent loop implementation (CPU:
under the Triton interpreter, tiny shapes), its launch configuration, dispatch and torch.library
registration; on CUDA against the float32 reference at FlashMLA's shapes, run-to-run bitwise
determinism, s_q past 65535, torch.compile parity and CUDA-graph replay."""
import pytest
import torch

import openmla
from openmla import _library
from openmla.device import DeviceInfo, device_info, interpreting
from openmla.dispatch import select
from openmla.ops.sparse_prefill import triton_supports
from openmla.ops.sparse_prefill.config import pick_config
from openmla.ops.sparse_prefill.launch import LOG2E
from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import TOLERANCES, assert_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
INT_MIN, INT_MAX = -2147483648, 2147483647
TOL = TOLERANCES["sparse_prefill"]

# (d_qk, s_q, s_kv, h_q, topk, topk_length, sink, all_invalid, non_contiguous); CPU tier: each
# case one interpreter launch of well under a second
CPU_CASES = [
    (576, 3, 300, 3, 70, True, True, True, True),  # topk crosses a 64-slot chunk, not a multiple
    (512, 2, 200, 16, 64, False, False, False, False),  # d_qk 512: V is the whole vector
    (576, 3, 20, 1, 50, False, True, False, False),  # topk > s_kv: rows padded with invalid values
    (512, 4, 30, 3, 40, True, True, True, True),  # d_qk 512, padding, lengths, lonely rows
    (576, 2, 150, 16, 24, True, False, False, True),
    (576, 2, 60, 72, 20, False, True, False, False),  # two head blocks, the second mostly masked
    (512, 3, 9, 8, 1, True, True, False, True),  # topk 1, 8 heads in a 16-row tile
]
# FlashMLA's sparse-prefill shapes (SPEC §4.4), cut down: (d_qk, s_q, s_kv, h_q, topk, features)
GPU_CASES = [
    (d_qk, s_q, s_kv, h_q, topk, feats)
    for d_qk in (576, 512)
    for h_q in (16, 64, 128)
    for (s_kv, topk) in ((592, 128), (1592, 384), (95, 128), (114, 384), (1840, 200))
    for s_q in (62, 213)
    for feats in (False, True)
] + [  # odd head counts and top-k sizes
    (d_qk, 37, s_kv, h_q, topk, True)
    for d_qk in (576, 512)
    for (h_q, s_kv, topk) in ((1, 40, 1), (3, 300, 65), (8, 100, 130), (32, 2000, 7), (96, 50, 64))
]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND_SPARSE_PREFILL", "triton")


def _poison(case):
    """Garbage where real inputs hold it: KV rows no valid slot references become NaN, and
    the slots past topk_length point at such a row (or hold INT_MAX), so a kernel that reads
    an unreferenced row or a slot past the length returns NaN."""
    kv, idx, lengths = case["kv"], case["indices"], case["topk_length"]
    s_q, _, topk = idx.shape
    s_kv = kv.shape[0]
    slot = torch.arange(topk, device=idx.device)
    listed = slot[None, :] < (lengths[:, None] if lengths is not None else topk)  # [s_q, topk]
    valid = listed & (idx[:, 0] >= 0) & (idx[:, 0] < s_kv)
    referenced = torch.zeros(s_kv, dtype=torch.bool, device=kv.device)
    referenced[idx[:, 0][valid].long()] = True
    kv[~referenced] = float("nan")
    if lengths is not None:
        spare = (~referenced).nonzero()
        garbage = int(spare[0]) if spare.numel() else INT_MAX
        idx[:, 0][~listed] = garbage
    return case


def _check_vs_naive(case, out, max_logits, lse):
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
           for k, v in gen.reference_kwargs("sparse_prefill", case).items()}
    r_out, r_ml, r_lse = naive.naive_sparse_prefill(**cpu)
    # FlashMLA compares the bf16 answer as fp32 against the fp32 reference
    assert_close("out", out.cpu().float(), r_out.float(), TOL["out"])
    assert_close("max_logits", max_logits.cpu(), r_ml.float(), TOL["max_logits"])
    assert_close("lse", lse.cpu(), r_lse.float(), TOL["lse"])


def test_pick_config_is_a_pure_function_of_shape_and_device():
    h100 = DeviceInfo("cuda", 90, 132, "H100")
    for h_q, block_h in ((1, 16), (3, 16), (16, 16), (17, 32), (32, 32), (64, 64), (128, 64)):
        cfg = pick_config(h_q, 576, 2048, h100)
        assert (cfg.block_h, cfg.block_n, cfg.num_warps) == (block_h, 64, 8)
    assert pick_config(128, 512, 512, DeviceInfo("cpu", 0, 0)).block_h == 64


def test_triton_is_selected_where_it_runs(monkeypatch):
    cpu, h100 = DeviceInfo("cpu", 0, 0), DeviceInfo("cuda", 90, 132, "H100")
    assert triton_supports(h100, {"d_qk": 576}) and triton_supports(h100, {"d_qk": 512})
    assert not triton_supports(h100, {"d_qk": 192})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_supports(cpu, {"d_qk": 576})  # no interpreter: the reference runs
    assert select("sparse_prefill", cpu, {"d_qk": 576}).name == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select("sparse_prefill", cpu, {"d_qk": 576}).name == "triton"


@pytest.mark.parametrize("shape", CPU_CASES)
def test_triton_kernel_vs_naive(shape, triton_backend, poisoned_outputs):
    d_qk, s_q, s_kv, h_q, topk, tl, sink, inv, noncontig = shape
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=tl,
                                     with_attn_sink=sink, all_invalid=inv,
                                     invalid_row_fraction=0.34 if inv else None, device=DEV,
                                     seed=hash(shape) % 997, non_contiguous=noncontig)
    _poison(case)
    assert select("sparse_prefill", device_info(DEV), {"d_qk": d_qk}).name == "triton"
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    assert out.shape == (s_q, h_q, 512) and out.dtype == BF16 and out.is_contiguous()
    assert max_logits.shape == lse.shape == (s_q, h_q)
    _check_vs_naive(case, out, max_logits, lse)


@pytest.mark.parametrize("d_qk", [576, 512])
def test_invalid_values_lonely_rows_and_infinite_sinks(d_qk, triton_backend, poisoned_outputs):
    """Every kind of invalid index, rows with none valid (by value and by topk_length 0), and
    sinks +inf / -inf / finite: lonely rows give out 0, max_logits -inf, lse +inf whatever the
    sink; a +inf sink zeroes the output and leaves lse finite."""
    s_q, s_kv, h_q, topk = 4, 12, 3, 9
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, device=DEV, seed=d_qk)
    idx = torch.tensor([[INT_MIN, 3, INT_MAX, s_kv, -1, 5, 114514, s_kv - 1, 0],
                        [s_kv, -1, INT_MIN, INT_MAX, s_kv + 1, -123456, s_kv, -1, INT_MAX],
                        [7, 2, 9, 4, 1, 10, 6, 11, 8],
                        [0, 1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.int32, device=DEV)
    case["indices"] = idx.view(s_q, 1, topk)
    case["topk_length"] = torch.tensor([9, 9, 5, 0], dtype=torch.int32, device=DEV)
    case["attn_sink"] = torch.tensor([float("inf"), float("-inf"), 0.3], device=DEV)
    _poison(case)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_naive(case, out, max_logits, lse)
    for row in (1, 3):
        assert bool((out[row] == 0).all())
        assert bool(torch.isneginf(max_logits[row]).all() and torch.isposinf(lse[row]).all())
    assert bool((out[0, 0] == 0).all()) and bool(torch.isfinite(lse[0]).all())


def test_no_kv_rows_and_no_queries(triton_backend, poisoned_outputs):
    q = torch.randn(2, 3, 576, dtype=BF16, device=DEV)
    kv = torch.empty(0, 1, 576, dtype=BF16, device=DEV)
    idx = torch.tensor([[[0, -1, 5]], [[INT_MAX, 1, 0]]], dtype=torch.int32, device=DEV)
    sink = torch.tensor([1.0, float("inf"), float("-inf")], device=DEV)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(q, kv, idx, 0.5, attn_sink=sink)
    assert bool((out == 0).all())
    assert bool(torch.isneginf(max_logits).all() and torch.isposinf(lse).all())
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(q[:0], kv, idx[:0], 0.5)
    assert out.shape == (0, 3, 512) and lse.shape == max_logits.shape == (0, 3)


def test_library_op_passes_opcheck():
    case = gen.sparse_prefill_inputs(2, 30, 3, 20, with_topk_length=True, with_attn_sink=True,
                                     device=DEV, seed=5)
    for sink, lengths in ((case["attn_sink"], case["topk_length"]), (None, None)):
        args = (case["q"], case["kv"], case["indices"], sink, lengths, case["sm_scale"], 512,
                16, 64, 8, 2)
        torch.library.opcheck(_library.ops.sparse_prefill.default, args,
                              test_utils=("test_schema", "test_faketensor"))


# --- GPU tier -------------------------------------------------------------------------------
def _gpu_case(d_qk, s_q, s_kv, h_q, topk, feats, seed=0):
    return gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_topk_length=feats,
                                     with_attn_sink=feats, all_invalid=feats, device="cuda",
                                     seed=seed, non_contiguous=True)


def _check_vs_ref(case, out, max_logits, lse):
    r_out, r_ml, r_lse = sparse_prefill_ref(**gen.reference_kwargs("sparse_prefill", case))
    assert_close("out", out.float(), r_out, TOL["out"])
    assert_close("max_logits", max_logits, r_ml, TOL["max_logits"])
    assert_close("lse", lse, r_lse, TOL["lse"])


@pytest.mark.gpu
def test_cuda_backend_choice():
    """On CUDA the kernels run without the interpreter's upcasts: the Gluon kernel on Hopper
    (V3.2 / any d_qk it takes), the portable one elsewhere."""
    from openmla.device import gluon_available

    assert not interpreting()
    info = device_info("cuda")
    hopper = info.is_hopper and gluon_available()
    assert select("sparse_prefill", info, {"d_qk": 576}).name == ("gluon" if hopper else "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_CASES)
def test_triton_kernel_vs_reference_gpu(shape, triton_backend, poisoned_outputs):
    case = _poison(_gpu_case(*shape, seed=hash(shape) % 997))
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("s_q,s_kv,topk", [(1, 128, 128), (4096, 2048, 2048), (1024, 32, 2048)])
def test_all_invalid_rows_and_topk_far_beyond_s_kv_gpu(s_q, s_kv, topk, triton_backend):
    case = gen.sparse_prefill_inputs(s_q, s_kv, 64, topk, all_invalid=True,
                                     invalid_row_fraction=0.3, with_attn_sink=True,
                                     device="cuda", seed=3)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)


@pytest.mark.gpu
def test_queries_past_65535_gpu(triton_backend):
    """s_q 70000 (FlashMLA only runs it): the last rows are checked against the reference."""
    case = gen.sparse_prefill_inputs(70000, 256, 64, 256, with_attn_sink=True, device="cuda",
                                     seed=4)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    tail = dict(case, q=case["q"][-300:], indices=case["indices"][-300:])
    _check_vs_ref(tail, out[-300:], max_logits[-300:], lse[-300:])


@pytest.mark.gpu
@pytest.mark.parametrize("d_qk,h_q", [(576, 128), (512, 64), (576, 16)])
def test_bitwise_deterministic_gpu(d_qk, h_q, triton_backend):
    case = _gpu_case(d_qk, 213, 1592, h_q, 384, True, seed=9)
    kw = gen.public_kwargs(case)
    runs = [openmla.flash_mla_sparse_fwd(**kw) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.gpu
def test_torch_compile_fullgraph_parity_gpu(triton_backend):
    case = _gpu_case(576, 62, 592, 64, 128, True, seed=2)
    kw = gen.public_kwargs(case)

    def step(q, kv, indices, attn_sink, topk_length):
        return openmla.flash_mla_sparse_fwd(q, kv, indices, 0.5, attn_sink=attn_sink,
                                            topk_length=topk_length)

    args = (kw["q"], kw["kv"], kw["indices"], kw["attn_sink"], kw["topk_length"])
    want = step(*args)
    got = torch.compile(step, fullgraph=True)(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.gpu
def test_cuda_graph_replay_gpu(triton_backend):
    case = _gpu_case(512, 62, 1592, 128, 384, True, seed=6)
    kw = gen.public_kwargs(case)
    want = openmla.flash_mla_sparse_fwd(**kw)  # also compiles the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = openmla.flash_mla_sparse_fwd(**kw)
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# --- Hopper (Gluon) backend -----------------------------------------------------------------
@pytest.fixture
def gluon_backend(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND_SPARSE_PREFILL", "gluon")


def test_gluon_backend_gating(monkeypatch):
    """The predicate takes Hopper with Gluon available (both d_qk), never another device, another
    d_qk, or the interpreter."""
    from openmla.device import gluon_available
    from openmla.ops.sparse_prefill import gluon_supports

    h100, a100 = DeviceInfo("cuda", 90, 132, "H100"), DeviceInfo("cuda", 80, 108, "A100")
    monkeypatch.delenv("OPENMLA_BACKEND_SPARSE_PREFILL", raising=False)
    monkeypatch.delenv("OPENMLA_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert gluon_supports(h100, {"d_qk": 576}) == gluon_available()
    assert select("sparse_prefill", h100, {"d_qk": 576}).name == (
        "gluon" if gluon_available() else "triton")
    assert not gluon_supports(a100, {"d_qk": 576})
    assert not gluon_supports(h100, {"d_qk": 192})
    assert gluon_supports(h100, {"d_qk": 512}) == gluon_available()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not gluon_supports(h100, {"d_qk": 576})


def test_gluon_library_op_fake():
    """The op's fake implementation gives FlashMLA's output shapes (torch.compile tracing)."""
    from openmla.ops.sparse_prefill.gluon_library import ops

    q = torch.empty(3, 72, 576, dtype=BF16, device="meta")
    kv = torch.empty(10, 1, 576, dtype=BF16, device="meta")
    idx = torch.empty(3, 1, 64, dtype=torch.int32, device="meta")
    out, ml, lse = ops.sparse_prefill_gluon(q, kv, idx, None, None, 0.1, 512, 2, 4, 0, False)
    assert out.shape == (3, 72, 512) and out.dtype == BF16
    assert ml.shape == lse.shape == (3, 72) and lse.dtype == torch.float32


# Compiled for sm_90 in a fresh interpreter without TRITON_INTERPRET; prints ptxas's register
# and spill report, the shared memory and the wgmma count.
_SM90_COMPILE = r"""
import json, re, sys
import triton
from openmla.testing.sm90 import ptxas_report, with_constexpr_defaults
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from openmla.ops.sparse_prefill import gluon_launch as L

PTRS = {"q_ptr": "*bf16", "kv_ptr": "*bf16", "indices_ptr": "*i32", "topk_length_ptr": "*i32",
        "sink_ptr": "*fp32", "out_ptr": "*bf16", "max_logits_ptr": "*fp32", "lse_ptr": "*fp32"}
ALIGNED = ("stride_qt", "stride_qh", "stride_kvs", "stride_it", "stride_ot", "stride_oh")


def compile_sm90(fn, ce):
    sig, attrs = {}, {}
    ce = with_constexpr_defaults(fn, ce)
    for i, n in enumerate(fn.arg_names):
        if n in ce:
            sig[n] = "constexpr"
        elif n in PTRS:
            sig[n] = PTRS[n]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "fp32" if n == "scale_log2" else "i32"
            if n in ALIGNED:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=ce, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
"""
GLUON_COMPILE = _SM90_COMPILE + r"""
from openmla.ops.sparse_prefill.gluon_kernel import _sparse_prefill_gluon_kernel as fn

d_qk = int(sys.argv[1])
ce = dict(D_HALF=256, D_ROPE=d_qk - 512, BLOCK_H=L.BLOCK_H, BLOCK_N=L.BLOCK_N, STAGES=L.STAGES,
          HAS_TOPK_LEN=True, HAS_SINK=True, PV_REGS=L.PV_REGS, LOAD_REGS=L.LOAD_REGS,
          LOAD_WARPS=L.LOAD_WARPS, EVICT_LAST=False, D_SOFT=L.SOFT_COLS)
k = compile_sm90(fn, ce)
ptx = k.asm["ptx"]
rep = ptxas_report(ptx)
print("wgmma", len(re.findall(r"wgmma\.mma_async", ptx)))
print("cp.async", len(re.findall(r"cp\.async\.cg\.shared\.global", ptx)))
print("spill", rep.spill_stores)
print("smem", k.metadata.shared)
"""


@pytest.mark.parametrize("d_qk", [576, 512])
def test_gluon_kernel_compiles_for_sm90(d_qk):
    """Offline sm_90 compile (no GPU): wgmma for both products (the output split 128 / 384
    between the softmax and PV warpgroups), cp.async gathers, no register spill, shared memory
    within the 227 KiB an H100 / H200 CTA may use."""
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
    res = subprocess.run([sys.executable, "-c", GLUON_COMPILE, str(d_qk)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = dict(line.split() for line in res.stdout.splitlines() if line.strip())
    # S (36 or 32 k-steps), the softmax warpgroup's P·V on 128 columns (4), the PV warpgroup's
    # on 256 + 128 (8)
    assert int(report["wgmma"]) == (48 if d_qk == 576 else 44), report
    assert int(report["cp.async"]) > 0, report
    assert report["spill"] == "0", report
    assert int(report["smem"]) <= 227 * 1024, report


GLUON_GPU_CASES = [  # (d_qk, s_q, s_kv, h_q, topk, features)
    (d_qk, s_q, s_kv, h_q, topk, feats)
    for d_qk in (576, 512)
    for h_q in (64, 128)
    for (s_q, s_kv, topk) in ((62, 592, 128), (213, 1592, 384), (37, 95, 128), (50, 1840, 200))
    for feats in (False, True)
] + [(d_qk, 37, 300, h_q, topk, True)
     for d_qk in (576, 512) for (h_q, topk) in ((3, 65), (72, 130), (16, 7))]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GLUON_GPU_CASES)
def test_gluon_kernel_vs_reference_gpu(shape, gluon_backend, poisoned_outputs):
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    from openmla.ops.sparse_prefill.gluon_launch import gluon_ok

    case = _poison(_gpu_case(*shape, seed=hash(shape) % 997))
    assert select("sparse_prefill", device_info("cuda"), {"d_qk": shape[0]}).name == "gluon"
    assert gluon_ok(case["q"], case["kv"])  # the Gluon kernel runs, not the fallback
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)


@pytest.mark.gpu
@pytest.mark.parametrize("d_qk", [576, 512])
def test_gluon_invalid_values_lonely_rows_and_infinite_sinks_gpu(d_qk, gluon_backend,
                                                                 poisoned_outputs):
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    s_q, s_kv, h_q, topk = 4, 12, 64, 9
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, device="cuda", seed=d_qk)
    idx = torch.tensor([[INT_MIN, 3, INT_MAX, s_kv, -1, 5, 114514, s_kv - 1, 0],
                        [s_kv, -1, INT_MIN, INT_MAX, s_kv + 1, -123456, s_kv, -1, INT_MAX],
                        [7, 2, 9, 4, 1, 10, 6, 11, 8],
                        [0, 1, 2, 3, 4, 5, 6, 7, 8]], dtype=torch.int32, device="cuda")
    case["indices"] = idx.view(s_q, 1, topk)
    case["topk_length"] = torch.tensor([9, 9, 5, 0], dtype=torch.int32, device="cuda")
    sink = torch.randn(h_q, device="cuda")
    sink[0], sink[1] = float("inf"), float("-inf")
    case["attn_sink"] = sink
    _poison(case)
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)
    for row in (1, 3):
        assert bool((out[row] == 0).all())
        assert bool(torch.isneginf(max_logits[row]).all() and torch.isposinf(lse[row]).all())
    assert bool((out[0, 0] == 0).all()) and bool(torch.isfinite(lse[0]).all())


@pytest.mark.gpu
@pytest.mark.parametrize("grid_ctas,evict_last", [(0, False), (-1, False), (7, True)])
def test_gluon_launch_variants_gpu(grid_ctas, evict_last, poisoned_outputs):
    """Persistent grid (one CTA per SM), one CTA per work item, and a small grid where each CTA
    walks many items (Q and key rings cycle across items) — all against the reference."""
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    from openmla.ops.sparse_prefill.gluon_launch import sparse_prefill_gluon_kernel

    case = _poison(_gpu_case(576, 213, 1592, 128, 384, True, seed=11))
    out, max_logits, lse = sparse_prefill_gluon_kernel(
        case["q"], case["kv"], case["indices"], case["attn_sink"], case["topk_length"],
        case["sm_scale"], 512, 2, 4, grid_ctas, evict_last)
    _check_vs_ref(case, out, max_logits, lse)


def _rising_scores_case(d_qk, seed):
    """Scores whose row maxima rise across an item's key tiles, by less than 2^8 (base 2) from
    one tile to the next in some rows and by more in others, so the Gluon kernel's lazy
    references stay in some rows, warps and tiles and move in others. One coordinate carries
    the rise (the last RoPE one at d_qk 576, so V is untouched; the first at d_qk 512, where V
    is the whole row and its output column is then an average of positive values): the keys of
    tile t hold about 1.6^t there and the query rows 0.1 to 4, every value in every 16-head
    group (a warp's rows), so in each warp some references move and some never do."""
    s_q, s_kv, h_q, topk = 6, 4096, 128, 640
    case = gen.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk, with_attn_sink=True,
                                     device="cuda", seed=seed)
    g = torch.Generator(device="cuda").manual_seed(seed)
    idx = torch.randperm(s_kv, generator=g, device="cuda")[:s_q * topk].view(s_q, topk)
    col = d_qk - 1 if d_qk == 576 else 0
    tile = (torch.arange(topk, device="cuda") // 64).repeat(s_q)
    jitter = 1 + 0.2 * torch.rand(s_q * topk, generator=g, device="cuda")
    kv = case["kv"].float()
    kv[idx.flatten().long(), 0, col] = 1.6 ** tile.float() * jitter
    case["kv"] = kv.to(BF16)
    case["indices"] = idx.to(torch.int32).view(s_q, 1, topk).contiguous()
    q = case["q"].float()
    q[:, :, col] = torch.linspace(0.1, 4.0, 16, device="cuda").repeat(h_q // 16)
    case["q"] = q.to(BF16)
    return case


@pytest.mark.gpu
@pytest.mark.parametrize("d_qk", [576, 512])
def test_gluon_lazy_rescale_gpu(d_qk, gluon_backend, poisoned_outputs):
    """The lazy reference maxima: row maxima rising tile after tile (some rows past the
    2^8 threshold, some not) against the reference; max_logits is the true maximum."""
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    case = _rising_scores_case(d_qk, seed=d_qk)
    # the case does what it says: per (token, head), the base-2 maximum of each 64-key tile
    # against the running maximum of the tiles before it
    q, kv, idx = case["q"].float(), case["kv"][:, 0].float(), case["indices"][:, 0].long()
    sc = torch.einsum("qhd,qkd->qhk", q, kv[idx]) * case["sm_scale"] * LOG2E
    tile_max = sc.view(*sc.shape[:2], -1, 64).amax(-1)
    rise = tile_max[..., 1:] - tile_max.cummax(-1).values[..., :-1]
    assert bool((rise > 8).any()) and bool((rise < 8).any())  # some references move, some stay
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)


@pytest.mark.gpu
def test_gluon_bitwise_deterministic_gpu(gluon_backend):
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    case = _gpu_case(576, 213, 1592, 128, 384, True, seed=9)
    kw = gen.public_kwargs(case)
    runs = [openmla.flash_mla_sparse_fwd(**kw) for _ in range(3)]
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


SEESAW_COMPILE = _SM90_COMPILE + r"""
from openmla.ops.sparse_prefill.gluon_seesaw_kernel import _sparse_prefill_seesaw_kernel as fn

ce = dict(D_HALF=256, D_ROPE=64, BLOCK_H=L.BLOCK_H, BLOCK_N=L.BLOCK_N, HAS_TOPK_LEN=True,
          HAS_SINK=True, PEER_REGS=L.SEESAW_PEER_REGS, LOAD_REGS=L.SEESAW_LOAD_REGS,
          LOAD_WARPS=L.LOAD_WARPS, EVICT_LAST=False)
k = compile_sm90(fn, ce)
ptx = k.asm["ptx"]
print(json.dumps({"shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
                  "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)), "smem": k.metadata.shared,
                  "spill": ptxas_report(ptx).spill_stores,
                  "cp.async": len(re.findall(r"cp\.async\.cg\.shared\.global", ptx))}))
"""


def test_gluon_seesaw_kernel_compiles_for_sm90():
    """The seesaw kernel compiles for sm_90 without a GPU: a pair of key tiles is 2 x 36
    m64n64k16 score products and 4 x 4 m64n256k16 P·V products, cp.async gathers, no spill
    at 216 / 216 / 80 registers, within the H100's shared memory (231,904 bytes measured)."""
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
    res = subprocess.run([sys.executable, "-c", SEESAW_COMPILE], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["shapes"] == ["m64n256k16", "m64n64k16"] and rep["wgmma"] == 2 * 36 + 4 * 4, rep
    assert rep["spill"] == 0 and rep["cp.async"] > 0 and 0 < rep["smem"] <= 232448, rep


def test_seesaw_dispatch_rule(monkeypatch):
    """The seesaw kernel runs only when the variable asks for it, and only at d_qk 576."""
    from openmla.ops.sparse_prefill import gluon_launch as L

    monkeypatch.delenv(L.SEESAW_ENV, raising=False)
    assert not L.use_seesaw(576) and not L.use_seesaw(512)
    monkeypatch.setenv(L.SEESAW_ENV, "1")
    assert L.use_seesaw(576) and not L.use_seesaw(512)
    monkeypatch.setenv(L.SEESAW_ENV, "0")
    assert not L.use_seesaw(576)


@pytest.mark.gpu
@pytest.mark.parametrize("flag,shape", [
    ("1", (576, 62, 592, 128, 128, True)), ("1", (576, 213, 1592, 128, 384, False)),
    ("1", (576, 37, 300, 72, 130, True)), ("0", (576, 50, 1840, 64, 200, True)),
    ("0", (576, 37, 300, 16, 7, True))])
def test_gluon_seesaw_forced_vs_reference_gpu(flag, shape, gluon_backend, poisoned_outputs,
                                             monkeypatch):
    """The seesaw kernel forced on at two head blocks a token (flag "1"; the default kernel's
    shapes) and off at one (flag "0"), against the reference with NaN-poisoned outputs."""
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel is Hopper-only")
    from openmla.ops.sparse_prefill import gluon_launch as L

    monkeypatch.setenv(L.SEESAW_ENV, flag)
    case = _poison(_gpu_case(*shape, seed=hash(shape) % 991))
    out, max_logits, lse = openmla.flash_mla_sparse_fwd(**gen.public_kwargs(case))
    _check_vs_ref(case, out, max_logits, lse)
