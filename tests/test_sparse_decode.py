"""Sparse FP8 decode: the portable Triton split kernel + combine against the independent loop
implementation (CPU: under the Triton interpreter, tiny shapes) for both cache layouts, the
schedule lengths, the launch configuration, schedule reuse through the meta object, batch
invariance, the torch.library registration, and on CUDA FlashMLA-like shapes against the
float32 reference, run-to-run bitwise determinism and torch.compile parity."""
import pytest
import torch

import openmla
from openmla import _library
from openmla.device import DeviceInfo, device_info, interpreting
from openmla.dispatch import select
from openmla.ops.sparse_decode import config as sd_config
from openmla.ops.sparse_decode.config import pick_config
from openmla.ops.sparse_decode.launch import schedule_lengths
from openmla.ops.sparse_decode.ref import sparse_decode_ref
from openmla.testing import generate as gen
from openmla.testing import naive
from openmla.testing.compare import TOLERANCES, assert_close

from shapes import SPARSE_DECODE_GPU

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
INF = float("inf")


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("OPENMLA_BACKEND_SPARSE_DECODE", "triton")


def _case(d_qk, b, s_q, h_q, s_k, topk, pbs, extra=None, topk_length=False,
          extra_topk_length=False, all_invalid=False, zero_seqlens=False, sinks=(),
          zero_lengths=(), lengths=None, seed=0, device=DEV):
    """A generated case; ``extra`` = (extra_topk, extra_s_k, extra_pbs); ``sinks`` overrides the
    first sink values (e.g. +inf, -inf, finite); ``zero_lengths`` sets those requests'
    topk_length to 0 and ``lengths`` (with ``topk_length=False``) gives every request's: fewer
    attended slots than generated, so no NaN-poisoned token gets used."""
    kw = {}
    if extra is not None:
        kw = dict(extra_topk=extra[0], extra_s_k=extra[1], extra_page_block_size=extra[2],
                  with_extra_topk_length=extra_topk_length)
    case = gen.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=d_qk, page_block_size=pbs,
                                    with_topk_length=topk_length, all_invalid=all_invalid,
                                    zero_seqlens=zero_seqlens, device=device, seed=seed,
                                    non_contiguous=True, **kw)
    for i, value in enumerate(sinks):
        case["attn_sink"][i] = value
    if lengths is not None:
        case["topk_length"] = torch.tensor(lengths, dtype=torch.int32, device=device)
    for i in zero_lengths:
        case["topk_length"][i] = 0
    return case


def _meta():
    return openmla.get_mla_metadata()[0]


def _naive(case):
    cpu = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in case.items()
           if k != gen.EXTRAS}
    out, lse = naive.naive_sparse_decode(**gen.reference_kwargs("sparse_decode", cpu))
    return out.to(BF16), lse.float()


def _check(out, lse, want_out, want_lse):
    tol = TOLERANCES["sparse_decode"]
    assert_close("out", out.cpu(), want_out, tol["out"])
    assert_close("lse", lse.cpu(), want_lse, tol["lse"])


def _op_args(case, meta, splits, block_n=64):
    """Positional arguments of ``openmla::sparse_decode`` for a generated case."""
    h_q = case["q"].shape[2]
    return (case["q"], case["k_cache"], case["indices"], meta, splits, case["softmax_scale"], 512,
            case["attn_sink"], case["topk_length"], case["extra_k_cache"],
            case["extra_indices_in_kvcache"], case["extra_topk_length"],
            pick_config(h_q, 1, DeviceInfo("cpu", 0, 0)).block_h, block_n, 8, 1)


def _schedule(case, num_parts):
    idx, e_idx = case["indices"], case["extra_indices_in_kvcache"]
    lengths = schedule_lengths(idx.shape[0], idx.shape[-1], case["topk_length"],
                               None if e_idx is None else e_idx.shape[-1],
                               case["extra_topk_length"], idx.device)
    return _library.ops.decode_schedule(lengths, num_parts)


# ---- configuration and schedule lengths (pure) ------------------------------------------------

def test_pick_config_is_a_pure_function_of_shape_and_device():
    h100 = DeviceInfo("cuda", 90, 132, "H100")
    cfg = pick_config(128, 2, h100)  # V3.2 production: two 64-head tiles per token
    assert (cfg.block_h, cfg.block_n, cfg.num_warps, cfg.num_parts) == (64, 64, 8, 33)
    assert pick_config(64, 1, h100).num_parts == 132
    assert pick_config(16, 1, h100).block_h == 16
    assert pick_config(8, 3, h100).block_h == 16  # tl.dot needs M >= 16
    assert pick_config(1, 1, h100).block_h == 16
    assert pick_config(32, 1, h100).block_h == 32
    assert pick_config(128, 4, DeviceInfo("cuda", 90, 4, "tiny")).num_parts == 1
    assert pick_config(16, 1, DeviceInfo("cpu", 0, 0)).num_parts >= 2


def test_schedule_lengths_follow_spec():
    tl = torch.tensor([0, 1, 64, 65, 100], dtype=torch.int32)
    assert schedule_lengths(5, 100, tl, None, None, "cpu").tolist() == [0, 1, 64, 65, 100]
    assert schedule_lengths(2, 70, None, None, None, "cpu").tolist() == [70, 70]
    etl = torch.tensor([0, 5, 3, 0, 200], dtype=torch.int32)
    # roundup(max(T, 1), 64) + T' ; T' = extra_topk_length or extra_topk
    assert schedule_lengths(5, 100, tl, 200, etl, "cpu").tolist() == [64, 69, 67, 128, 328]
    assert schedule_lengths(5, 100, tl, 30, None, "cpu").tolist() == [94, 94, 94, 158, 158]


# ---- the kernel against the loop implementation (interpreter on CPU) ---------------------------

# (d_qk, b, s_q, h_q, s_k, topk, pbs, extra, topk_length, extra_topk_length, all_invalid,
#  zero_seqlens, sinks, zero_lengths, num_parts)
CPU_CASES = [
    # V32: topk not a multiple of 64, odd page size, sinks +inf / -inf / finite, split requests
    (576, 2, 1, 16, 150, 130, 61, None, False, False, False, False, (INF, -INF, 0.5), (), 7),
    # V32: page size 1, three tokens, topk_length with a zero, 8 heads
    (576, 3, 3, 8, 60, 40, 1, None, True, False, False, False, (INF, -INF), (1,), 3),
    # V32: every index invalid (lonely rows: out 0, lse +inf whatever the sink), split
    (576, 2, 1, 16, 300, 200, 64, None, False, False, True, False, (INF, -INF, 1.0), (), 7),
    # V32 with an extra cache (extra_topk_length given), one head
    (576, 2, 1, 1, 90, 70, 2, (50, 80, 61), True, True, False, False, (), (), 3),
    # MODEL1: page size 2, topk_length incl. 0, extra cache with extra_topk_length, 16 heads
    (512, 2, 1, 16, 120, 100, 2, (40, 80, 64), True, True, False, False, (INF, -INF), (0,), 5),
    # MODEL1: three tokens, extra cache without extra_topk_length, page size 61
    (512, 2, 3, 8, 60, 40, 61, (70, 100, 2), False, False, False, False, (-INF,), (), 3),
    # MODEL1: no extra cache, page size 64, one head, half the requests empty (all -1)
    (512, 3, 1, 1, 150, 96, 64, None, True, False, False, True, (), (), 4),
    # MODEL1: everything invalid in both caches, sink +inf
    (512, 2, 1, 8, 50, 30, 2, (20, 40, 1), False, False, True, False, (INF,), (), 3),
]


@pytest.mark.parametrize("shape", CPU_CASES)
def test_triton_kernel_vs_naive(shape, triton_backend, poisoned_outputs, monkeypatch):
    (d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero, sinks, zero_lengths,
     parts) = shape
    monkeypatch.setattr(sd_config, "INTERPRETER_PARTS", parts)
    case = _case(d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero, sinks,
                 zero_lengths, seed=hash(shape) % 997)
    assert select("sparse_decode", device_info(DEV), {"d_qk": d_qk}).name == "triton"
    meta = openmla.get_mla_metadata()[0]
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=meta)
    assert out.shape == (b, s_q, h_q, 512) and out.dtype == BF16
    assert lse.shape == (b, h_q, s_q) and lse.stride() == (s_q * h_q, 1, h_q)
    assert meta.num_splits.shape == (b + 1,)
    if DEV == "cpu" and parts >= 7:  # these cases are chosen so that the schedule splits
        assert int((meta.num_splits[1:] - meta.num_splits[:-1]).max()) >= 2
    want_parts = parts if DEV == "cpu" else pick_config(h_q, s_q, device_info(DEV)).num_parts
    assert meta.tile_scheduler_metadata.shape[0] == want_parts
    _check(out, lse, *_naive(case))
    # the same meta object again: the stored schedule is reused, the result is identical
    stored = meta.tile_scheduler_metadata
    out2, lse2 = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                tile_scheduler_metadata=meta)
    assert meta.tile_scheduler_metadata is stored
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.parametrize("d_qk,extra,etl", [(576, None, False), (576, (60, 90, 1), False),
                                            (512, (70, 90, 2), True)])
def test_split_requests_are_combined_with_sink(d_qk, extra, etl, poisoned_outputs):
    """A schedule that cuts requests into several pieces: the combine merges them and applies
    the sink (+inf, -inf, finite); one request has topk_length 0."""
    case = _case(d_qk, 3, 2, 16, 400, 260, 61, extra, extra_topk_length=etl,
                 sinks=(INF, -INF, 0.25), lengths=(260, 0, 150), seed=11)
    meta, splits = _schedule(case, 9)
    pieces = (splits[1:] - splits[:-1]).tolist()
    assert max(pieces) >= 2, pieces
    out, lse = _library.ops.sparse_decode(*_op_args(case, meta, splits))
    _check(out, lse.transpose(1, 2), *_naive(case))


@pytest.mark.parametrize("d_qk", [576, 512])
def test_out_of_range_indices_are_invalid(d_qk, triton_backend, poisoned_outputs):
    """Besides -1, any index < 0 or >= num_blocks * pbs is invalid and never dereferenced."""
    case = _case(d_qk, 2, 2, 8, 80, 70, 5, None if d_qk == 576 else (30, 40, 3), sinks=(-INF,),
                 seed=13)
    for key, cache in (("indices", case["k_cache"]), ("extra_indices_in_kvcache",
                                                      case["extra_k_cache"])):
        if cache is None:
            continue
        num_tokens = cache.shape[0] * cache.shape[1]
        idx = case[key]
        idx[0, 0, :3] = torch.tensor([num_tokens, 2**31 - 1, -7], dtype=torch.int32)
        idx[1, 1, :] = num_tokens + 3  # a whole row out of range: lonely unless extra helps
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=_meta())
    _check(out, lse, *_naive(case))


def test_quarter_tiles_match(poisoned_outputs):
    """32-slot inner tiles (two per scheduling block) give the same answer as the naive loops,
    across a main / extra boundary and split pieces."""
    case = _case(512, 2, 1, 16, 200, 100, 3, (45, 60, 5), topk_length=True, seed=5,
                 sinks=(0.0,))
    meta, splits = _schedule(case, 5)
    out, lse = _library.ops.sparse_decode(*_op_args(case, meta, splits, block_n=32))
    _check(out, lse.transpose(1, 2), *_naive(case))


@pytest.mark.parametrize("d_qk,extra", [(576, None), (512, (30, 50, 2))])
def test_batch_invariance_without_splits(d_qk, extra):
    """A request's output is bitwise the same alone and inside a larger batch when neither run
    splits it (a one-part schedule; CPU interpreter and CUDA alike). With a split schedule the
    pieces, and so the last bits, depend on the batch, as in FlashMLA."""
    case = _case(d_qk, 3, 2, 16, 150, 100, 61, extra, topk_length=True, sinks=(INF, -INF),
                 seed=3)
    batched = ("q", "indices", "topk_length", "extra_indices_in_kvcache", "extra_topk_length")
    big = _library.ops.sparse_decode(*_op_args(case, *_schedule(case, 1)))
    for i in range(3):
        one = {k: (v[i:i + 1] if k in batched and v is not None else v) for k, v in case.items()}
        alone = _library.ops.sparse_decode(*_op_args(one, *_schedule(one, 1)))
        assert torch.equal(alone[0], big[0][i:i + 1]) and torch.equal(alone[1], big[1][i:i + 1])


def test_misaligned_cache_is_rejected(triton_backend):
    case = _case(576, 1, 1, 16, 40, 16, 4, seed=2)
    cache = case["k_cache"]
    raw = cache.view(torch.uint8)
    store = torch.zeros(raw.shape[0] * raw.stride(0) + 2, dtype=torch.uint8, device=DEV)
    shifted = torch.as_strided(store, raw.shape, raw.stride(), 2)  # base address 2 bytes off
    shifted.copy_(raw)
    kw = gen.public_kwargs(case)
    kw["k_cache"] = shifted.view(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="k_cache: expected a base address"):
        openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())


def test_library_op_passes_opcheck():
    case = _case(512, 2, 1, 16, 60, 40, 2, (20, 30, 4), topk_length=True, seed=7)
    meta, splits = _schedule(case, 3)
    # uint8 views of the caches (accepted like float8_e4m3fn): opcheck compares inputs before and
    # after the call with arithmetic that float8 tensors do not implement on the CPU
    for key in ("k_cache", "extra_k_cache"):
        case[key] = case[key].view(torch.uint8)
    torch.library.opcheck(_library.ops.sparse_decode.default, _op_args(case, meta, splits),
                          test_utils=("test_schema", "test_faketensor"))


# ---- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_backend_choice():
    """On CUDA the kernels run without the interpreter's upcasts: the Gluon kernel on Hopper
    (V3.2 / any d_qk it takes), the portable one elsewhere."""
    from openmla.device import gluon_available

    assert not interpreting()
    info = device_info("cuda")
    hopper = info.is_hopper and gluon_available()
    assert select("sparse_decode", info, {"d_qk": 576}).name == ("gluon" if hopper else "triton")
    assert select("sparse_decode", device_info("cuda"), {"d_qk": 512}).name == "triton"


def _gpu_case(shape, seed=0):
    d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero = shape
    return _case(d_qk, b, s_q, h_q, s_k, topk, pbs, extra, tl, etl, inv, zero, seed=seed,
                 device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SPARSE_DECODE_GPU)
def test_triton_kernel_vs_reference_gpu(shape, triton_backend):
    _assert_public_call_matches_reference(_gpu_case(shape))


def _assert_public_call_matches_reference(case, ref=None):
    """The public call on ``case`` (a fresh schedule) against the float32 reference (``ref``:
    its (out, lse), when already computed); returns the call's (out, lse)."""
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=openmla.get_mla_metadata()[0])
    torch.cuda.synchronize()
    r_out, r_lse = ref or sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    assert_close("out", out, r_out.to(BF16), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])
    return out, lse


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [
    (576, 74, 3, 128, 2046, 2048, 64, None, False, False, False, False),
    (512, 74, 2, 64, 1024, 576, 61, (512, 1024, 2), True, True, False, True),
    (576, 4, 1, 16, 512, 64, 2, None, False, False, True, False),
])
def test_bitwise_deterministic_gpu(shape, triton_backend):
    kw = gen.public_kwargs(_gpu_case(shape, seed=9))
    runs = [openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta()) for _ in range(3)]
    for out, lse in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(lse, runs[0][1])


@pytest.mark.gpu
def test_torch_compile_fullgraph_parity_gpu(triton_backend):
    case = _gpu_case((512, 8, 2, 64, 1024, 576, 61, (512, 1024, 2), True, True, False, False))
    kw = gen.public_kwargs(case)

    def step(q, k_cache, indices, attn_sink, topk_length, extra_k_cache, extra_indices,
             extra_topk_length):
        meta, _ = openmla.get_mla_metadata()
        return openmla.flash_mla_with_kvcache(
            q, k_cache, None, None, 512, meta, softmax_scale=kw["softmax_scale"],
            is_fp8_kvcache=True, indices=indices, attn_sink=attn_sink, extra_k_cache=extra_k_cache,
            extra_indices_in_kvcache=extra_indices, topk_length=topk_length,
            extra_topk_length=extra_topk_length)

    args = (kw["q"], kw["k_cache"], kw["indices"], kw["attn_sink"], kw["topk_length"],
            kw["extra_k_cache"], kw["extra_indices_in_kvcache"], kw["extra_topk_length"])
    want = step(*args)
    got = torch.compile(step, fullgraph=True)(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---- Hopper fast path (Gluon) -------------------------------------------------------------------

def _gluon_usable() -> bool:
    from openmla.device import gluon_available

    return (torch.cuda.is_available() and device_info("cuda").is_hopper and not interpreting()
            and gluon_available())


@pytest.fixture
def gluon_backend(monkeypatch):
    if not _gluon_usable():
        pytest.skip("the Gluon sparse-decode kernel needs a Hopper GPU and Triton 3.6's Gluon")
    monkeypatch.setenv("OPENMLA_BACKEND_SPARSE_DECODE", "gluon")


def test_gluon_backend_gating(monkeypatch):
    """The Gluon backend runs by default on Hopper for the V3.2 layout without an extra cache;
    never off Hopper, on a CPU, or for MODEL1 / an extra cache (the portable kernel's)."""
    from openmla.device import gluon_available
    from openmla.ops.sparse_decode import gluon_supports

    h100 = DeviceInfo("cuda", 90, 132, "H100")
    monkeypatch.delenv("OPENMLA_BACKEND_SPARSE_DECODE", raising=False)
    monkeypatch.delenv("OPENMLA_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert gluon_supports(h100, {"d_qk": 576, "has_extra": False}) == gluon_available()
    assert not gluon_supports(h100, {"d_qk": 512, "has_extra": False})
    assert not gluon_supports(h100, {"d_qk": 576, "has_extra": True})
    assert select("sparse_decode", h100, {"d_qk": 512}).name == "triton"
    assert not gluon_supports(DeviceInfo("cuda", 80, 108, "A100"), {"d_qk": 576})
    assert not gluon_supports(DeviceInfo("cpu", 0, 0), {"d_qk": 576})


def test_gluon_op_fake_shapes():
    """The op's fake implementation (torch.compile tracing) gives the launcher's shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(3, 2, 16, 576, dtype=BF16)
        out, lse = torch.ops.openmla.sparse_decode_gluon(
            q, torch.empty(4, 64, 1, 656, dtype=torch.uint8), torch.empty(3, 2, 64, dtype=torch.int32),
            torch.empty(5, 8, dtype=torch.int32), torch.empty(4, dtype=torch.int32), 0.1, 512, None,
            None, 2)
    assert out.shape == (3, 2, 16, 512) and out.dtype == BF16
    assert lse.shape == (3, 2, 16) and lse.dtype == torch.float32


_COMPILE_PROGRAM = r"""
import re, sys
from openmla.ops.sparse_decode.gluon_launch import compile_sm90
from openmla.testing.sm90 import ptxas_report
k = compile_sm90(block_h=int(sys.argv[1]), ring=sys.argv[2] == "ring", head_blocks=int(sys.argv[3]),
                 paired=sys.argv[2] == "pair", raw=sys.argv[2] == "raw")
ptx = k.asm["ptx"]
rep = ptxas_report(ptx)
print("wgmma", len(re.findall(r"wgmma\.mma_async", ptx)))
print("spill", rep.spill_stores)
print("smem", k.metadata.shared)
print("cp_async_16", len(re.findall(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10", ptx)))
print("cp_async_arrive", ptx.count("cp.async.mbarrier.arrive.noinc"))
print("prefetch", ptx.count("prefetch.global.L2"))
print("bulk_to_peer", ptx.count("cp.async.bulk.shared::cluster.shared::cta"))
print("arrive_peer", ptx.count("mbarrier.arrive.shared::cluster.b64"))
print("cluster_barrier", ptx.count("barrier.cluster.arrive"))
print("wait_group", ptx.count("cp.async.wait_group"))
"""

# ptxas spills a few loop scalars (no tensor data) of the warp-specialized partitions; a bound,
# not zero, until the register split is retuned on the GPU (see gluon_launch.GLUON_PV_REGS)
MAX_SCALAR_SPILL_BYTES = 128
MAX_SMEM_BYTES = 232448  # Hopper: 227 KiB of dynamic shared memory per block


def _compile_report(block_h=64, kernel="split", head_blocks=1):
    """wgmma count, ptxas spill bytes and shared memory of the split kernel for sm_90, compiled
    in a fresh interpreter (no GPU, no interpreter mode); ``block_h`` 16: the swapped-product
    kernel, or with ``kernel="ring"`` the cp.async ring kernel."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    from openmla.device import GLUON_TRITON, gluon_available

    if not gluon_available():
        pytest.skip(f"the Gluon kernel is written for Triton {GLUON_TRITON[0]}.{GLUON_TRITON[1]}")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("TRITON_INTERPRET", None)  # compiled in a fresh interpreter, outside the interpreter
    res = subprocess.run([sys.executable, "-c", _COMPILE_PROGRAM, str(block_h), kernel,
                          str(head_blocks)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return dict(line.split() for line in res.stdout.splitlines() if line.strip())


@pytest.mark.parametrize("block_h", [64, 16])
def test_gluon_kernel_compiles_for_sm90(block_h):
    """The Gluon kernels compile for sm_90 (no GPU needed): wgmma for all their products (the
    swapped one: 36 for Sᵀ and 16 a warpgroup for Oᵀ a tile, plus the 64-row kernel's 44 being
    absent), within Hopper's shared memory, at most a few bytes of scalar spills."""
    got = _compile_report(block_h)
    assert int(got["wgmma"]) == (44 if block_h == 64 else 36 + 2 * 16), got
    assert 0 <= int(got["spill"]) <= MAX_SCALAR_SPILL_BYTES, got
    assert int(got["smem"]) <= MAX_SMEM_BYTES, got


def test_prefetch_from_head_block0_compiles_for_sm90():
    """With two head blocks a token (h_q = 128) the 64-row kernel's producer still asks L2 for
    the next tile's rows (from head block 0 only, a run-time branch), with the same products and
    no more spills than the kernel at one head block."""
    one, two = _compile_report(64), _compile_report(64, head_blocks=2)
    assert int(two["prefetch"]) > 0 and int(two["prefetch"]) == int(one["prefetch"]), (one, two)
    assert int(two["wgmma"]) == 44, two
    assert 0 <= int(two["spill"]) <= MAX_SCALAR_SPILL_BYTES, two


def test_pair_kernel_compiles_for_sm90():
    """With two head blocks a token (h_q > 64) the two CTAs of a cluster share the key tiles:
    per tile each producer copies its half into the peer (8 NoPE/RoPE-half blocks of the two key
    halves, the RoPE half and the flags: 10 bulk copies), both consumer warpgroups release the
    peer's stage (2 remote arrives), every partition meets the peer once at the start; the same
    products, the L2 prefetch of its own rows, no more than a few bytes of scalar spills."""
    got = _compile_report(64, "pair", head_blocks=2)
    assert int(got["wgmma"]) == 44, got
    assert (int(got["bulk_to_peer"]), int(got["arrive_peer"]),
            int(got["cluster_barrier"])) == (10, 2, 3), got
    assert int(got["prefetch"]) > 0, got
    assert 0 <= int(got["spill"]) <= MAX_SCALAR_SPILL_BYTES, got
    assert int(got["smem"]) <= MAX_SMEM_BYTES, got


def test_ring_kernel_compiles_for_sm90():
    """The ring kernel (h_q <= 16) compiles for sm_90: the swapped product's wgmmas, the NoPE and
    RoPE rows by 16-byte cp.async (8 pieces a thread a half tile, 2 a half tile's RoPE), the
    copies' completion through the slot barrier, within shared memory, no more than a few bytes
    of scalar spills."""
    got = _compile_report(16, "ring")
    assert int(got["wgmma"]) == 36 + 2 * 16, got
    assert int(got["cp_async_16"]) == 8 + 2 * 2, got
    assert int(got["cp_async_arrive"]) == 1, got
    assert 0 <= int(got["spill"]) <= MAX_SCALAR_SPILL_BYTES, got
    assert int(got["smem"]) <= MAX_SMEM_BYTES, got


def test_raw_kernel_compiles_for_sm90():
    """The raw-stage kernel (h_q <= 16, the default there) compiles for sm_90: 36 wgmma for Sᵀ a
    tile (4 for the RoPE part, 2 × 4 for each of the four NoPE groups with K from registers) and
    32 for Oᵀ (V from registers), the NoPE and RoPE rows by 16-byte cp.async (16 + 4 pieces a
    thread a tile), the copies' completion through the stage barrier, the issuer waiting for its
    own copies (the scale maxima a tile later, and the last tile's), within shared memory, no
    spills."""
    got = _compile_report(16, "raw")
    assert int(got["wgmma"]) == 36 + 32, got
    assert int(got["cp_async_16"]) == 16 + 4, got
    assert int(got["cp_async_arrive"]) == 1, got
    assert int(got["wait_group"]) == 2, got
    assert int(got["spill"]) == 0, got
    assert int(got["smem"]) <= MAX_SMEM_BYTES, got


def test_small_h_kernel_choice(monkeypatch):
    """At most 16 heads run the raw-stage kernel by default, OPENMLA_SPARSE_RAW=0 the ring
    kernel (OPENMLA_SPARSE_RING=0 then the swapped kernel); more heads neither."""
    from openmla.ops.sparse_decode import gluon_launch as GL

    monkeypatch.delenv("OPENMLA_SPARSE_RAW", raising=False)
    monkeypatch.delenv("OPENMLA_SPARSE_RING", raising=False)
    monkeypatch.delenv("OPENMLA_SPARSE_GLUON_SMALL_H", raising=False)
    assert GL.raw(16) and GL.raw(1) and not GL.raw(17) and not GL.ring(16)
    monkeypatch.setenv("OPENMLA_SPARSE_RAW", "0")
    assert not GL.raw(16) and GL.ring(16)
    monkeypatch.setenv("OPENMLA_SPARSE_RING", "0")
    assert not GL.raw(16) and not GL.ring(16) and GL.small_h(16)


# (b, s_q, h_q, s_k, topk, pbs, topk_length, all_invalid)
GLUON_GPU_CASES = [
    (b, s_q, h_q, s_k, topk, pbs, tl, False)
    for h_q in (16, 64, 128)
    for s_q in (1, 2)
    for (b, s_k, topk, pbs, tl) in ((4, 512, 64, 2, False), (5, 1024, 576, 61, True),
                                    (3, 2046, 2048, 64, False), (6, 300, 100, 64, True))
] + [(4, 1, 16, 512, 64, 2, False, True), (3, 2, 128, 1000, 200, 64, True, True),
       # the swapped-product kernel below 16 heads (N = 16 with padding rows)
       (4, 1, 8, 1024, 576, 61, True, False), (3, 2, 12, 2046, 2048, 64, False, False),
       (5, 3, 3, 300, 100, 64, True, False), (2, 1, 4, 512, 64, 2, False, True)]


def _gluon_case(shape, seed=0):
    b, s_q, h_q, s_k, topk, pbs, tl, inv = shape
    return _case(576, b, s_q, h_q, s_k, topk, pbs, None, tl, False, inv, False,
                 sinks=(INF, -INF, 0.5), seed=seed, device="cuda")


@pytest.mark.gpu
def test_gluon_is_selected_when_forced_gpu(gluon_backend):
    assert select("sparse_decode", device_info("cuda"), {"d_qk": 576}).name == "gluon"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GLUON_GPU_CASES)
def test_gluon_kernel_vs_reference_gpu(shape, gluon_backend, poisoned_outputs):
    """Against the float32 reference: unreferenced cache tokens are NaN, -1 and out-of-range
    padding, topk_length (incl. 0), sinks +inf / -inf / finite, split and whole requests, h_q
    below one 64-head tile, topk not a multiple of 64, all-invalid rows (out 0, lse +inf)."""
    case = _gluon_case(shape, seed=sum(shape[:6]))
    if shape[6]:
        case["topk_length"][0] = 0
    if shape[4] >= 3:  # a few out-of-range indices besides the -1 padding
        num_tokens = case["k_cache"].shape[0] * case["k_cache"].shape[1]
        case["indices"][0, 0, :3] = torch.tensor([num_tokens, 2**31 - 1, -7], dtype=torch.int32)
    meta = _meta()
    out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                              tile_scheduler_metadata=meta)
    torch.cuda.synchronize()
    r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    assert lse.shape == r_lse.shape and lse.stride() == (shape[1] * shape[2], 1, shape[2])
    assert_close("out", out, r_out.to(BF16), tol["out"])
    assert_close("lse", lse, r_lse, tol["lse"])
    # the stored schedule is reused by the next call; the result is identical
    out2, lse2 = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                tile_scheduler_metadata=meta)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(5, 1024, 576, 61, True), (3, 2046, 2048, 64, False)])
def test_gluon_64_row_kernel_at_16_heads_gpu(shape, gluon_backend, poisoned_outputs,
                                             monkeypatch):
    """OPENMLA_SPARSE_GLUON_SMALL_H=0 keeps 16 heads on the 64-row kernel; it matches too."""
    monkeypatch.setenv("OPENMLA_SPARSE_GLUON_SMALL_H", "0")
    b, s_k, topk, pbs, tl = shape
    _assert_public_call_matches_reference(_gluon_case((b, 2, 16, s_k, topk, pbs, tl, False),
                                                      seed=3))


def _assert_variants_equal(shape, env, monkeypatch, seed):
    """The public call with ``env`` at 1 (a default kernel) and at 0 (its alternative) on a
    fresh case (``topk_length`` 0 for the first request where the shape asks for lengths):
    bitwise equal outputs, both within the reference's tolerances."""
    case = _gluon_case(shape, seed=seed)
    if shape[6]:
        case["topk_length"][0] = 0
    runs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv(env, flag)
        runs[flag] = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                    tile_scheduler_metadata=_meta())
    torch.cuda.synchronize()
    assert torch.equal(runs["1"][0], runs["0"][0]) and torch.equal(runs["1"][1], runs["0"][1])
    r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    tol = TOLERANCES["sparse_decode"]
    assert_close("out", runs["1"][0], r_out.to(BF16), tol["out"])
    assert_close("lse", runs["1"][1], r_lse, tol["lse"])


# h_q <= 16 cases of the kernel-variant tests: (b, s_q, h_q, s_k, topk, page size, topk_length,
# all-invalid)
SMALL_H_SHAPES = [(4, 1, 16, 512, 64, 2, False, False),
                  (5, 2, 8, 1024, 576, 61, True, False),
                  (3, 3, 4, 2046, 2048, 64, False, False),
                  (6, 1, 12, 300, 100, 64, True, False),
                  (2, 1, 16, 300, 130, 64, False, True),
                  (74, 2, 16, 4000, 1000, 69, True, False)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SMALL_H_SHAPES)
def test_ring_kernel_equals_swapped_kernel_gpu(shape, gluon_backend, poisoned_outputs,
                                               monkeypatch):
    """At h_q <= 16 the ring kernel (OPENMLA_SPARSE_RAW=0) and the register-gather swapped
    kernel (OPENMLA_SPARSE_RING=0) run the same consumers on the same bf16 keys: bitwise equal
    outputs, and both match the reference."""
    monkeypatch.setenv("OPENMLA_SPARSE_RAW", "0")
    _assert_variants_equal(shape, "OPENMLA_SPARSE_RING", monkeypatch, seed=sum(shape[:6]) + 1)


def _raw_and_ring_outputs(case, ref, monkeypatch):
    """The public call at h_q <= 16 with the raw-stage kernel (OPENMLA_SPARSE_RAW "1") and the
    ring kernel ("0"), each checked against the reference ``ref``; their outputs by flag."""
    outs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("OPENMLA_SPARSE_RAW", flag)
        outs[flag], _ = _assert_public_call_matches_reference(case, ref)
    return outs


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SMALL_H_SHAPES + [(128, 1, 16, 32768, 2048, 64, False, False)])
def test_raw_kernel_and_ring_kernel_match_reference_gpu(shape, gluon_backend, poisoned_outputs,
                                                        monkeypatch):
    """At h_q <= 16 the raw-stage kernel (the default: f16 products of the exact fp8 values,
    the scales on the products) and the ring kernel (OPENMLA_SPARSE_RAW=0: bf16 keys rounded as
    the reference rounds them) both match the reference on the same case, and the raw-stage
    kernel's largest error is no larger than the ring kernel's by more than one bf16 step."""
    case = _gluon_case(shape, seed=sum(shape[:6]) + 4)
    if shape[6]:
        case["topk_length"][0] = 0
    ref = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    r_out = ref[0]
    outs = _raw_and_ring_outputs(case, ref, monkeypatch)
    errs = {flag: (out.float() - r_out.float()).abs().max().item() for flag, out in outs.items()}
    step = r_out.float().abs().max().item() * 2.0 ** -8
    assert errs["1"] <= errs["0"] + step, errs


@pytest.mark.gpu
@pytest.mark.parametrize("group,factor", [(1, 2.0**-17), (2, 2.0**-17), (3, 2.0**-9),
                                          (0, 2.0**-12)])
def test_raw_kernel_with_groups_scaled_apart_gpu(group, factor, gluon_backend, poisoned_outputs,
                                                 monkeypatch):
    """One 128-dim scale group of every token scaled far below the others (the raw-stage kernel
    normalises each group's Pᵀ by that group's own largest scale in the tile; a mix-up of the
    groups overflowed Pᵀ to inf): both kernels at h_q <= 16 match the reference, with no inf /
    NaN. (A group scaled 2^12 above the others is left out: there the reference's rounding of
    those keys to bf16 is the larger error, and the raw-stage kernel, which keeps them exact,
    differs from it on near-cancelling outputs; RESULTS.md, tenth session.)"""
    case = _gluon_case((8, 1, 16, 1024, 512, 64, False, False), seed=21)
    scales = case["k_cache"].view(torch.uint8)[..., 512:528].view(torch.float32)
    scales[..., group] *= factor
    ref = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
    for flag, out in _raw_and_ring_outputs(case, ref, monkeypatch).items():
        assert torch.isfinite(out).all(), flag


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4, 1, 128, 512, 64, 2, False, False),
                                   (5, 2, 128, 1024, 576, 61, True, False),
                                   (3, 3, 96, 2046, 2048, 64, False, False),
                                   (6, 1, 100, 300, 100, 64, True, False),
                                   (2, 1, 128, 300, 130, 64, False, True),
                                   (74, 2, 128, 4000, 1000, 69, True, False)])
def test_pair_kernel_equals_single_kernel_gpu(shape, gluon_backend, poisoned_outputs,
                                              monkeypatch):
    """At 65-128 heads the CTA pair (the default: each CTA of a cluster gathers and dequantizes
    half of every key tile and copies it into the peer) and two independent CTAs that each
    gather the whole tile (OPENMLA_SPARSE_PAIR=0) give bitwise equal outputs, and both match
    the reference."""
    _assert_variants_equal(shape, "OPENMLA_SPARSE_PAIR", monkeypatch, seed=sum(shape[:6]) + 2)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(128, 1, 16, 300, 130, 64, False, True),
                                   (3, 2, 128, 1024, 576, 61, False, False),
                                   (74, 1, 64, 2046, 2048, 64, False, True),
                                   (200, 1, 16, 300, 100, 64, False, False),
                                   (5, 1, 12, 4000, 1000, 69, False, True)])
def test_fixed_schedule_equals_scheduled_call_gpu(shape, gluon_backend, poisoned_outputs,
                                                  monkeypatch):
    """Without topk_length the kept schedule (the default; the combine left out when every
    request is whole, as at b=128 on 132 SMs) and a schedule made on the device every call
    (OPENMLA_SPARSE_FIXED_SCHEDULE=0) give bitwise equal outputs, and both match the
    reference; requests split over parts (b=3, b=5, b=200) still go through the combine."""
    from openmla.ops.sparse_decode import gluon_launch as GL

    monkeypatch.setattr(GL, "_FIXED_SCHEDULES", {})
    combines = []
    real_combine = GL.decode_combine
    monkeypatch.setattr(GL, "decode_combine",
                        lambda *a, **k: (combines.append(1), real_combine(*a, **k))[1])
    _assert_variants_equal(shape, "OPENMLA_SPARSE_FIXED_SCHEDULE", monkeypatch,
                           seed=sum(shape[:6]) + 3)
    assert len(GL._FIXED_SCHEDULES) == 1
    (_, _, split), = GL._FIXED_SCHEDULES.values()
    b, s_q, h_q = shape[:3]
    parts = GL.num_parts_for(h_q, s_q, device_info("cuda").num_sms, b)
    assert split == (not (parts == b or (b > parts and b % parts == 0))), (parts, split)
    # the kept schedule's call combined only if it split; the scheduled call always combines
    assert len(combines) == (2 if split else 1), combines


@pytest.mark.gpu
@pytest.mark.parametrize("b", [128, 3])
def test_fixed_schedule_under_graph_capture_gpu(b, gluon_backend, poisoned_outputs,
                                                monkeypatch):
    """A CUDA graph captured before the shape's schedule is kept (the call schedules on the
    device inside the graph) and one captured after (the graph holds the kept schedule)
    replay to the eager result."""
    from openmla.ops.sparse_decode import gluon_launch as GL

    monkeypatch.setattr(GL, "_FIXED_SCHEDULES", {})
    kw = gen.public_kwargs(_gluon_case((b, 1, 16, 2046, 1000, 64, False, True), seed=11))
    monkeypatch.setenv("OPENMLA_SPARSE_FIXED_SCHEDULE", "0")  # compile outside the capture
    openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
    monkeypatch.delenv("OPENMLA_SPARSE_FIXED_SCHEDULE")
    assert not GL._FIXED_SCHEDULES
    results = []
    for _ in range(2):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.cuda.graph(graph, stream=side):
            got = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
        graph.replay()
        torch.cuda.synchronize()
        results.append((got[0].clone(), got[1].clone()))
        assert len(GL._FIXED_SCHEDULES) == len(results) - 1  # first capture: nothing kept
        want = openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
        torch.cuda.synchronize()
        assert len(GL._FIXED_SCHEDULES) == 1
        assert torch.equal(results[-1][0], want[0]) and torch.equal(results[-1][1], want[1])


@pytest.mark.gpu
def test_failed_pair_launch_falls_back_gpu(gluon_backend, poisoned_outputs, monkeypatch):
    """A device that cannot launch the CTA pair gets a warning once and the independent CTAs'
    (bitwise equal) result."""
    from openmla.ops.sparse_decode import gluon_launch as GL

    case = _gluon_case((4, 1, 128, 512, 64, 2, False, False), seed=5)
    want = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                          tile_scheduler_metadata=_meta())

    def refuse(*a, **k):
        raise RuntimeError("Triton Error [CUDA]: cluster misconfiguration")

    monkeypatch.setattr(GL, "launch_pair", refuse)
    monkeypatch.setattr(GL, "_PAIRS_FAILED", [])
    with pytest.warns(RuntimeWarning, match="independent CTAs"):
        got = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                             tile_scheduler_metadata=_meta())
    assert GL._PAIRS_FAILED and not GL.pair(2)
    torch.cuda.synchronize()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
def test_raw_kernel_with_tiles_scaled_apart_gpu(gluon_backend, poisoned_outputs):
    """Key tiles whose scales lie 2^17 apart (every odd token's four scales scaled down, each
    request's indices ordered even tokens first, so the tiles hold one class but for one):
    the raw-stage kernel normalises a tile's Pᵀ_g by that tile's own scale maxima, which the
    issuer reduces a stage at a time; a maximum from another tile or stage would overflow Pᵀ_g
    (f16) to inf. Matches the reference, with no inf / NaN."""
    case = _gluon_case((8, 2, 16, 2048, 512, 64, False, False), seed=23)
    scales = case["k_cache"].view(torch.uint8)[..., 512:528].view(torch.float32)
    pages, pbs = scales.shape[:2]
    odd = (torch.arange(pages * pbs, device=scales.device) % 2 == 1).view(pages, pbs)
    scales[odd] = scales[odd] * 2.0 ** -17
    idx = case["indices"]
    order = torch.sort((idx % 2).to(torch.int32), dim=-1, stable=True).indices
    case["indices"] = torch.gather(idx, -1, order).contiguous()
    assert (case["indices"][..., 0] % 2 == 0).all() and (case["indices"][..., -1] % 2 == 1).all()
    out, _ = _assert_public_call_matches_reference(case)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.parametrize("h_q", [128, 16])
def test_gluon_bitwise_deterministic_gpu(gluon_backend, h_q):
    kw = gen.public_kwargs(_gluon_case((74, 2, h_q, 2046, 2048, 64, True, False), seed=9))
    runs = [openmla.flash_mla_with_kvcache(**kw, tile_scheduler_metadata=_meta())
            for _ in range(3)]
    for out, lse in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(lse, runs[0][1])


@pytest.mark.gpu
def test_model1_and_extra_run_the_portable_kernel_gpu(monkeypatch):
    """Calls the Gluon kernel does not take (MODEL1 layout, extra cache) run the portable kernel
    by default and match the reference; forcing the Gluon backend on them is refused with an
    error that names the backend and the call."""
    from openmla.dispatch import UnsupportedError

    monkeypatch.delenv("OPENMLA_BACKEND_SPARSE_DECODE", raising=False)
    for d_qk, extra in ((512, None), (576, (64, 128, 2))):
        case = _case(d_qk, 3, 1, 16, 300, 128, 61, extra, seed=4, device="cuda")
        out, lse = openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                                  tile_scheduler_metadata=_meta())
        r_out, r_lse = sparse_decode_ref(**gen.reference_kwargs("sparse_decode", case))
        tol = TOLERANCES["sparse_decode"]
        assert_close("out", out, r_out.to(BF16), tol["out"])
        assert_close("lse", lse, r_lse, tol["lse"])
        monkeypatch.setenv("OPENMLA_BACKEND_SPARSE_DECODE", "gluon")
        with pytest.raises(UnsupportedError, match="gluon"):
            openmla.flash_mla_with_kvcache(**gen.public_kwargs(case),
                                           tile_scheduler_metadata=_meta())
        monkeypatch.delenv("OPENMLA_BACKEND_SPARSE_DECODE")


def test_gluon_part_count_rounds_to_whole_requests():
    """(head tiles × s_q × parts) CTAs fill the SMs once, the part count rounded down by at most
    5% to whole requests a part (b=128 on 132 SMs: 128, 64, 32)."""
    from openmla.ops.sparse_decode.gluon_launch import num_parts_for

    assert num_parts_for(64, 1, 132) == 132
    assert num_parts_for(16, 1, 132, 128) == 128
    assert num_parts_for(128, 1, 132, 128) == 64
    assert num_parts_for(128, 2, 132, 128) == 32
    assert num_parts_for(64, 1, 132, 100) == 132
    assert num_parts_for(64, 1, 132, 1) == 132
