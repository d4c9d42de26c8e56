"""Dense decode kernels: the device schedule, the launch configuration, and the portable Triton
kernel + combine against the independent loop implementation (CPU: under the Triton
interpreter, tiny shapes), its torch.library registration, and on CUDA its dispatch, CUDA-graph
replay, run-to-run bitwise determinism and torch.compile parity."""
import contextlib
import math
import os

import pytest
import torch

import openmla
from openmla import _library
from openmla.device import DeviceInfo, device_info, interpreting
from openmla.dispatch import select
from openmla.ops.dense_decode import launch as dd_launch
from openmla.ops.dense_decode.config import pick_config
from openmla.ops.schedule.launch import decode_schedule
from openmla.ops.schedule.ref import BLOCK_N, REQUEST_OVERHEAD, schedule_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import TOLERANCES, assert_close

from shapes import DENSE_DECODE_CPU

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND_DENSE_DECODE", "triton")


@pytest.mark.parametrize("b,parts", [(1, 1), (3, 7), (5, 132), (128, 33), (128, 128), (129, 132),
                                    (300, 132), (700, 17), (40, 1000)])
def test_schedule_kernel_matches_reference(b, parts):
    lengths = torch.randint(0, 9000, (b,), dtype=torch.int32, device=DEV)
    lengths[::3] = 0
    meta, num_splits = decode_schedule(lengths, parts)
    want_meta, want_splits = schedule_ref(lengths.cpu(), parts)
    assert torch.equal(meta.cpu(), want_meta) and torch.equal(num_splits.cpu(), want_splits)


@pytest.mark.parametrize("seed", range(5))
def test_schedule_covers_every_block_exactly_once(seed):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 40, (1,), generator=g))
    parts = int(torch.randint(1, 50, (1,), generator=g))
    lengths = torch.randint(0, 3000, (b,), generator=g, dtype=torch.int32)
    meta, num_splits = schedule_ref(lengths, parts)
    n_sched = [max(math.ceil(int(x) / BLOCK_N), 1) for x in lengths]
    seen = [[0] * n for n in n_sched]
    pieces = [0] * b
    for p in range(parts):
        begin, end, pos, payload = (int(v) for v in meta[p, :4])
        for r in range(begin, end + 1):
            lo = max(p * payload - pos - REQUEST_OVERHEAD, 0)
            hi = min((p + 1) * payload - pos - REQUEST_OVERHEAD, n_sched[r])
            assert lo < hi, "a part lists a request it has no block of"
            for k in range(lo, hi):
                seen[r][k] += 1
            pieces[r] += 1
            pos += REQUEST_OVERHEAD + n_sched[r]
    assert all(c == 1 for row in seen for c in row)
    assert num_splits.tolist() == [0] + list(torch.tensor(pieces).cumsum(0).tolist())
    assert int(num_splits[-1]) <= b + parts  # sizes the accumulators


def test_pick_config_is_a_pure_function_of_shape_and_device():
    h100 = DeviceInfo("cuda", 90, 132, "H100")
    cfg = pick_config(rows=256, h_kv=1, info=h100)  # s_q 2, h_q 128
    assert (cfg.block_h, cfg.num_warps, cfg.num_parts, cfg.use_tma) == (64, 8, 33, True)
    assert not pick_config(rows=256, h_kv=1, info=h100, page_size=16).use_tma
    assert not pick_config(rows=256, h_kv=2, info=h100).use_tma
    assert not pick_config(rows=256, h_kv=1, info=DeviceInfo("cuda", 80, 108, "A100")).use_tma
    cfg = pick_config(rows=16, h_kv=1, info=h100)  # memory-bound h_q 16
    assert (cfg.block_h, cfg.num_parts, cfg.use_tma) == (16, 132, False)
    assert pick_config(rows=3, h_kv=2, info=h100).block_h == 16  # tl.dot needs M >= 16
    assert pick_config(rows=16, h_kv=1, info=DeviceInfo("cpu", 0, 0)).num_parts >= 2


@pytest.mark.parametrize("shape", DENSE_DECODE_CPU)
def test_triton_kernel_vs_naive(shape, triton_backend, poisoned_outputs, monkeypatch):
    b, s_q, h_q, h_kv, s_k, pbs, causal, varlen, zero = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, page_block_size=pbs,
                                   causal=causal, varlen=varlen, zero_seqlens=zero, device=DEV,
                                   seed=hash(shape) % 997, non_contiguous=True)
    assert select("dense_decode", device_info(DEV), {"d": 576}).name == "triton"
    tma_calls = []
    real_tma = dd_launch._launch_tma
    monkeypatch.setattr(dd_launch, "_launch_tma", lambda *a: tma_calls.append(1) or real_tma(*a))
    meta = openmla.get_mla_metadata()[0]
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=meta)
    assert meta.tile_scheduler_metadata is not None and meta.num_splits.shape == (b + 1,)
    # the descriptor kernel runs exactly when it is configured and the tensors allow it
    cfg = pick_config(s_q * h_q // h_kv, h_kv, device_info(DEV), pbs)
    assert bool(tma_calls) == cfg.use_tma
    cpu_case = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()
                if k != gen.EXTRAS}
    r_out, r_lse = naive.naive_dense_decode(**gen.reference_kwargs("dense_decode", cpu_case))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out.cpu(), r_out.to(BF16), tol["out"])
    assert_close("lse", lse.cpu(), r_lse.float(), tol["lse"])
    # the same meta object again: the stored schedule is reused, the result is identical
    stored = meta.tile_scheduler_metadata
    out2, lse2 = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                tile_scheduler_metadata=meta)
    assert meta.tile_scheduler_metadata is stored
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_fp16_cache(triton_backend):
    case = gen.dense_decode_inputs(2, 2, 4, 70, page_block_size=16, causal=True,
                                   dtype=torch.float16, device=DEV, seed=3)
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    assert out.dtype == torch.float16
    cpu_case = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()
                if k != gen.EXTRAS}
    r_out, r_lse = naive.naive_dense_decode(**gen.reference_kwargs("dense_decode", cpu_case))
    assert_close("out", out.cpu(), r_out.half(), TOLERANCES["dense_decode"]["out"])
    assert_close("lse", lse.cpu(), r_lse.float(), TOLERANCES["dense_decode"]["lse"])


def test_library_ops_pass_opcheck():
    case = gen.dense_decode_inputs(2, 2, 4, 40, page_block_size=16, causal=True, device=DEV,
                                   seed=5)
    lengths = case["cache_seqlens"]
    torch.library.opcheck(_library.ops.decode_schedule.default, (lengths, 3))
    meta, splits = _library.ops.decode_schedule(lengths, 3)
    args = (case["q"], case["k_cache"], case["block_table"], lengths, meta, splits,
            case["softmax_scale"], True, 512, 16, 64, 4, 2, True)
    torch.library.opcheck(_library.ops.dense_decode.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_cuda_uses_triton_without_upcast():
    assert not interpreting()
    assert select("dense_decode", device_info("cuda"), {"d": 576}).name == "triton"


@pytest.mark.gpu
def test_bitwise_deterministic_and_batch_invariant_schedule_reuse():
    case = gen.dense_decode_inputs(74, 2, 64, 3000, h_kv=2, causal=True, varlen=True,
                                   zero_seqlens=True, device="cuda", seed=9)
    kw = gen.public_kwargs(case)
    runs = [openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=openmla.get_mla_metadata()[0])
            for _ in range(3)]
    for out, lse in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(lse, runs[0][1])


@pytest.mark.gpu
def test_torch_compile_fullgraph_parity():
    case = gen.dense_decode_inputs(8, 2, 16, 700, causal=True, varlen=True, device="cuda", seed=2)
    kw = gen.public_kwargs(case)

    def step(q, k_cache, block_table, cache_seqlens):
        meta, _ = openmla.get_mla_metadata()
        return openmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta,
                                              causal=True)

    want = step(kw["q"], kw["k_cache"], kw["block_table"], kw["cache_seqlens"])
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(kw["q"], kw["k_cache"], kw["block_table"], kw["cache_seqlens"])
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("use_tma,page_size", [(False, 16), (True, 64)])
def test_half_tiles_match(use_tma, page_size, poisoned_outputs):
    """32-key inner tiles (two per scheduling block) give the same answer as the naive loops."""
    case = gen.dense_decode_inputs(3, 2, 8, 150, page_block_size=page_size, causal=True,
                                   varlen=True, zero_seqlens=True, device=DEV, seed=21)
    lengths = case["cache_seqlens"]
    meta, splits = _library.ops.decode_schedule(lengths, 3)
    out, lse = _library.ops.dense_decode(case["q"], case["k_cache"], case["block_table"], lengths,
                                         meta, splits, case["softmax_scale"], True, 512, 16, 32,
                                         4, 2, use_tma)
    cpu_case = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()
                if k != gen.EXTRAS}
    r_out, r_lse = naive.naive_dense_decode(**gen.reference_kwargs("dense_decode", cpu_case))
    assert_close("out", out.cpu(), r_out.to(BF16), TOLERANCES["dense_decode"]["out"])
    assert_close("lse", lse.cpu(), r_lse.float(), TOLERANCES["dense_decode"]["lse"])


GLUON_SHAPES = [  # (b, s_q, h_q, s_k, page_block_size, causal, varlen, zero_seqlens)
    (2, 1, 64, 200, 64, False, False, False),
    (5, 2, 64, 1000, 64, True, True, True),
    (74, 1, 128, 1500, 64, False, True, True),
    (16, 4, 64, 3000, 128, True, True, False),
    (9, 3, 128, 777, 256, True, True, True),
    (128, 2, 128, 4096, 64, True, True, False),
    (3, 1, 16, 700, 64, False, True, True),  # fewer than 64 query rows: one padded tile
    (1, 1, 8, 300, 64, False, False, False),  # Q has fewer rows than one tile
    (7, 2, 24, 900, 64, True, True, False),  # 48 rows, tiles straddle requests' Q rows
    (40, 1, 32, 5000, 128, False, True, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GLUON_SHAPES)
def test_gluon_kernel_vs_reference(shape, monkeypatch):
    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel targets Hopper (sm90)")
    monkeypatch.setenv("OPENMLA_BACKEND_DENSE_DECODE", "gluon")
    b, s_q, h_q, s_k, pbs, causal, varlen, zero = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, page_block_size=pbs, causal=causal,
                                   varlen=varlen, zero_seqlens=zero, device="cuda",
                                   seed=hash(shape) % 997)
    torch.cuda.empty_cache()
    filler = torch.full((1 << 28,), float("nan"), device="cuda")  # NaN in recycled memory
    del filler
    _assert_public_call_matches_reference(case)


def _assert_public_call_matches_reference(case, outputs=None):
    """The public call (one schedule, outputs allocated inside ``outputs``) against the float32
    reference, and bitwise equal when run again."""
    from openmla.ops.dense_decode.ref import dense_decode_ref

    meta = openmla.get_mla_metadata()[0]
    with outputs or contextlib.nullcontext():
        out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                  tile_scheduler_metadata=meta)
    r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out, r_out.to(out.dtype), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])
    again = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                           tile_scheduler_metadata=meta)
    assert torch.equal(again[0], out) and torch.equal(again[1], lse)  # bitwise run to run


@pytest.mark.gpu
def test_unaligned_cache_base_is_served(poisoned_outputs):
    """A cache whose base is 2 bytes off the 16 the copy engine needs: the Hopper path hands
    the call to the portable pointer kernel (inside the op), same answer as the reference."""
    from openmla.ops.dense_decode.ref import dense_decode_ref

    case = gen.dense_decode_inputs(3, 2, 64, 300, causal=True, varlen=True, device="cuda",
                                   seed=5)
    k = case["k_cache"]
    buf = torch.empty(k.numel() + 1, dtype=k.dtype, device=k.device)
    shifted = buf[1:].view(k.shape)
    shifted.copy_(k)
    assert shifted.data_ptr() % 16 != 0
    case["k_cache"] = shifted
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    r_out, r_lse = dense_decode_ref(**gen.reference_kwargs("dense_decode", case))
    tol = TOLERANCES["dense_decode"]
    assert_close("out", out, r_out.to(out.dtype), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])


def test_gluon_part_count_divides_the_batch_when_close_to_one_cta_per_sm():
    """Memory-bound launches (one row tile): whole requests per part when such a count is
    within WHOLE_REQUEST_MIN_FRACTION of the SMs; otherwise, and for several row tiles, one CTA
    per SM."""
    from openmla.ops.dense_decode.launch import gluon_num_parts

    assert gluon_num_parts(128, 1, 132) == 128  # b=128: one request a part
    assert gluon_num_parts(64, 1, 132) == 128  # two equal parts a request
    assert gluon_num_parts(256, 1, 132) == 128  # two requests a part
    assert gluon_num_parts(100, 1, 132) == 132  # 100 parts would leave too many SMs idle
    assert gluon_num_parts(200, 1, 132) == 132  # 100 parts (two requests each): too few
    assert gluon_num_parts(128, 4, 132) == 33  # compute-bound: one CTA per SM
    assert gluon_num_parts(1, 1, 132) == 132


# --- swapped-product kernel for s_q·h_q <= 32 (the default there) -------------------------
SMALL_H_COMPILE = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from openmla.ops.dense_decode.gluon_kernel import _dense_decode_gluon_kernel as fn
from openmla.ops.dense_decode.launch import GLUON_LOAD_REGS, SMALL_H_PV_REGS
from openmla.testing.sm90 import ptxas_report
def desc(shape):
    layout = gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
    return f"tensordesc<bf16[{','.join(map(str, shape))}],{layout!r}>"
h = int(sys.argv[2])
types = {"q_desc": desc([h, 256]), "qr_desc": desc([h, 64]), "k_desc": desc([64, 256]),
         "kr_desc": desc([64, 64]), "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
         "meta_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
         "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "scale_log2": "fp32",
         "progress_ptr": "*i32"}
ce = dict(PAGE_SIZE=64, D_HALF=256, D_ROPE=64, BLOCK_H=h, BLOCK_N=64, SCHED_N=64, OVERHEAD=5,
          META_COLS=8, CAUSAL=sys.argv[1] == "1", STAGES=2, PV_REGS=SMALL_H_PV_REGS, SWAP=True,
          LOAD_REGS=GLUON_LOAD_REGS, TRACE=False, LOAD_WARPS=1)
sig = {n: "constexpr" if n in ce else types.get(n, "i32") for n in fn.arg_names}
k = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=ce),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = k.asm["ptx"]
rep = ptxas_report(ptx)
print(json.dumps({"shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
                  "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)), "smem": k.metadata.shared,
                  "spill": rep.spill_stores}))
"""


@pytest.mark.parametrize("causal,n_rows", [(False, 16), (True, 16), (True, 32)])
def test_gluon_small_h_kernel_compiles_for_sm90(causal, n_rows):
    """The swapped-product kernel compiles for sm_90 without a GPU: every product is
    m64n{rows}k16 (Sᵀ 36 a key tile, Oᵀ 16 a warpgroup), within the H100's shared memory,
    spills of at most 32 bytes (measured 8 / 16 bytes at 16 rows, all in the 24-register loader,
    and 24 at 32 rows; the default kernel spills 220-268 bytes)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", SMALL_H_COMPILE, "1" if causal else "0",
                          str(n_rows)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["shapes"] == [f"m64n{n_rows}k16"] and rep["wgmma"] == 36 + 2 * 16, rep
    assert 0 < rep["smem"] <= 232448 and rep["spill"] <= 32, rep


SMALL_H_SHAPES = [  # (b, s_q, h_q, s_k, causal, varlen, zero_seqlens)
    (4, 1, 16, 700, False, False, False),
    (3, 2, 8, 300, True, True, False),
    (74, 1, 16, 1500, False, True, True),
    (2, 1, 8, 64, False, False, False),
    (128, 1, 16, 8192, False, False, False),
    (5, 4, 4, 2000, True, True, False),
    (6, 1, 32, 900, False, True, False),  # 32 rows: N = 32
    (4, 2, 12, 1300, True, True, True),  # 24 rows, causal, zero lengths
]


@pytest.mark.gpu
@pytest.mark.parametrize("flag,shape", [("1", s) for s in SMALL_H_SHAPES]
                         + [("0", SMALL_H_SHAPES[1]), ("0", SMALL_H_SHAPES[2])])
def test_gluon_small_h_kernel_vs_reference(flag, shape, monkeypatch):
    """At s_q·h_q <= 32 the swapped-product kernel (the default there; flag "1") and the 64-row
    kernel (OPENMLA_DENSE_GLUON_SMALL_H=0) through the public call against the float32
    reference, outputs NaN-filled before launch, bitwise run to run."""
    from openmla.testing.compare import nan_filled_outputs

    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel targets Hopper (sm90)")
    monkeypatch.setenv("OPENMLA_BACKEND_DENSE_DECODE", "gluon")
    monkeypatch.setenv("OPENMLA_DENSE_GLUON_SMALL_H", flag)
    b, s_q, h_q, s_k, causal, varlen, zero = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, varlen=varlen,
                                   zero_seqlens=zero, device="cuda", seed=hash(shape) % 997)
    _assert_public_call_matches_reference(case, nan_filled_outputs())


SEESAW_COMPILE = r"""
import json, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from openmla.ops.dense_decode.gluon_seesaw_kernel import _dense_decode_seesaw_kernel as fn
from openmla.ops.dense_decode.launch import GLUON_LOAD_REGS, SEESAW_PEER_REGS
from openmla.testing.sm90 import ptxas_report
def desc(shape):
    layout = gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
    return f"tensordesc<bf16[{','.join(map(str, shape))}],{layout!r}>"
types = {"q_desc": desc([64, 256]), "qr_desc": desc([64, 64]), "k_desc": desc([64, 256]),
         "kr_desc": desc([64, 64]), "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
         "meta_ptr": "*i32", "num_splits_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
         "o_acc_ptr": "*fp32", "lse_acc_ptr": "*fp32", "k_ptr": "*bf16", "scale_log2": "fp32"}
ce = dict(PAGE_SIZE=64, D_HALF=256, D_ROPE=64, BLOCK_H=64, BLOCK_N=64, SCHED_N=64, OVERHEAD=5,
          META_COLS=8, CAUSAL=sys.argv[1] == "1", PEER_REGS=SEESAW_PEER_REGS,
          LOAD_REGS=GLUON_LOAD_REGS)
sig = {n: "constexpr" if n in ce else types.get(n, "i32") for n in fn.arg_names}
k = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=ce),
                   target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = k.asm["ptx"]
rep = ptxas_report(ptx)
print(json.dumps({"shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
                  "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)), "smem": k.metadata.shared,
                  "spill": rep.spill_stores,
                  "prefetch": len(re.findall(r"prefetch\.global\.L2", ptx))}))
"""


@pytest.mark.parametrize("causal", [False, True])
def test_gluon_seesaw_kernel_compiles_for_sm90(causal):
    """The seesaw kernel compiles for sm_90 without a GPU: a pair of key tiles is 2 x 36
    m64n64k16 score products and 4 x 4 m64n256k16 P·V products, within the H100's shared
    memory (Q, two key tiles, P1: 231,936 bytes measured), with the L2 prefetch in the loader
    and spills of at most 192 bytes (measured 44 non-causal, 164 causal)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", SEESAW_COMPILE, "1" if causal else "0"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads(res.stdout.strip().splitlines()[-1])
    assert rep["shapes"] == ["m64n256k16", "m64n64k16"] and rep["wgmma"] == 2 * 36 + 4 * 4, rep
    assert 0 < rep["smem"] <= 232448 and rep["spill"] <= 192 and rep["prefetch"] >= 2, rep


def test_seesaw_dispatch_rule(monkeypatch):
    """More than one 64-row tile a request takes the seesaw kernel; the variable forces it."""
    monkeypatch.delenv(dd_launch.SEESAW_ENV, raising=False)
    assert [dd_launch.use_seesaw(r) for r in (33, 64, 65, 128, 256)] == [
        False, False, True, True, True]
    monkeypatch.setenv(dd_launch.SEESAW_ENV, "0")
    assert not dd_launch.use_seesaw(256)
    monkeypatch.setenv(dd_launch.SEESAW_ENV, "1")
    assert dd_launch.use_seesaw(64)


SEESAW_SHAPES = [  # (b, s_q, h_q, s_k, causal, varlen, zero_seqlens, dtype)
    (1, 1, 128, 65, False, False, False, BF16),  # two tiles: one pair, B1 all masked
    (7, 2, 128, 777, True, False, False, BF16),  # odd tile counts
    (74, 1, 128, 1500, False, True, True, BF16),
    (4, 4, 64, 2000, True, True, False, BF16),
    (2, 1, 128, 16384, False, False, False, BF16),
    (6, 2, 128, 900, True, True, True, torch.float16),
    (5, 1, 64, 129, False, True, True, BF16),  # one row tile, forced
    (16, 1, 48, 3000, False, True, False, BF16),  # 48 rows, forced
]


@pytest.mark.gpu
@pytest.mark.parametrize("flag,shape", [("1", s) for s in SEESAW_SHAPES]
                         + [("0", SEESAW_SHAPES[1]), ("0", SEESAW_SHAPES[3]),
                            ("0", SEESAW_SHAPES[5])])
def test_gluon_seesaw_kernel_vs_reference(flag, shape, monkeypatch):
    """The seesaw kernel (flag "1"; the default above 64 rows) and the default 64-row kernel
    (OPENMLA_DENSE_SEESAW=0) through the public call against the float32 reference, outputs
    NaN-filled before launch, bitwise run to run."""
    from openmla.testing.compare import nan_filled_outputs

    if not device_info("cuda").is_hopper:
        pytest.skip("the Gluon kernel targets Hopper (sm90)")
    monkeypatch.setenv("OPENMLA_BACKEND_DENSE_DECODE", "gluon")
    monkeypatch.setenv(dd_launch.SEESAW_ENV, flag)
    b, s_q, h_q, s_k, causal, varlen, zero, dtype = shape
    case = gen.dense_decode_inputs(b, s_q, h_q, s_k, causal=causal, varlen=varlen,
                                   zero_seqlens=zero, dtype=dtype, device="cuda",
                                   seed=hash(shape[:7]) % 997)
    _assert_public_call_matches_reference(case, nan_filled_outputs())
