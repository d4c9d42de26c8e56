"""Benchmark harness: time every op of openmla (and FlashMLA, when importable) at the shapes of
ANCHORS.md, next to the device's own copy and matmul ceilings.

* :func:`measure_ceilings` — a large device-to-device copy (bytes read + written → GB/s) and a
  large bf16 ``torch.matmul`` (→ TFLOPS), medians of timed runs after warm-up.
* :func:`time_fn` — median (and p20 / p80) of a zero-argument call: CUDA events on a GPU (whole
  call, queued back to back, optional L2 flush in between), ``perf_counter`` on a CPU; the number
  of runs follows a time budget so that slow paths (the float32 reference at production shapes)
  finish in seconds.
* :func:`gpu_cases` / :func:`cpu_cases` — one :class:`BenchCase` per (op, configuration); each
  builds its data with :mod:`openmla.testing.generate` and counts FLOPs and bytes with
  :mod:`openmla.testing.flops` (SPEC §5.1), so the figures compare with FlashMLA's.
* :func:`run_benchmarks` → :class:`BenchRow` per (case, provider); :func:`append_csv` writes them in
  long form (one row per metric: kernel, x, provider, backend, metric, unit, p20, p50, p80, gpu,
  versions); :func:`plot_csv` draws PNG bar charts from such a CSV (matplotlib, imported lazily).

Providers: ``openmla`` always; ``flash_mla`` when ``import flash_mla`` works (same data, same call,
a fresh ``get_mla_metadata()[0]`` per decode call for both); ``torch_sdpa`` for dense MHA on CUDA
(FlashMLA has no Hopper MHA; ANCHORS.md compares against SDPA).
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import gc
import importlib
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from . import flops as F
from . import generate as G

# --- harness constants ----------------------------------------------------------------------
GIB = 1 << 30
MIB = 1 << 20
COPY_BYTES_CUDA = GIB  # ANCHORS.md: a 1 GiB device-to-device copy
MATMUL_N_CUDA = 8192  # ANCHORS.md: an 8192^3 bf16 matmul
COPY_BYTES_CPU = 64 * MIB  # a CPU copy / matmul sized to take milliseconds, not seconds
MATMUL_N_CPU = 512
CEILING_RUNS = 30  # timed runs per ceiling
CEILING_WARMUP = 3
L2_FLUSH_BYTES = 256 * MIB  # > 2x the L2 of H100 / H200 (50 MB / 60 MB)
DEFAULT_BUDGET_S = 2.0  # seconds of timed runs per case and provider
QUICK_BUDGET_S = 0.25
DEFAULT_MAX_RUNS = 100
QUICK_MAX_RUNS = 10
MIN_RUNS = 3
ROUNDS = 3  # providers of a case timed in turn, this many rounds (run_case)
DEFAULT_WARMUP = 2
PERCENTILES = (20, 50, 80)
TFLOP = 1e12
GBYTE = 1e9
US_PER_S = 1e6
DEFAULT_CSV = Path("benchmarks") / "results.csv"
CSV_COLUMNS = ("timestamp", "kernel", "x", "provider", "backend", "metric", "unit", "p20", "p50",
               "p80", "gpu", "cuda", "torch", "triton", "version", "commit")
PROVIDERS = ("openmla", "flash_mla", "torch_sdpa")
OPS = ("dense_decode", "sparse_decode", "sparse_prefill", "mha_prefill")
# ops also timed replayed from a CUDA graph (engines capture their decode step in one)
GRAPH_OPS = ("dense_decode", "sparse_decode")
FLASH_MLA_MHA_ARCH = 100  # FlashMLA's dense MHA kernels exist for SM100 (sm_100 family) only


# --- timing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Time per call in microseconds: percentiles over ``runs`` timed calls."""

    p20: float
    p50: float
    p80: float
    runs: int


def check_in_subprocess(code: str, args: Sequence[str] = (), *, timeout: float = 240.0,
                        tail: int = 4000) -> bool:
    """Run ``python -c code args...`` (without TRITON_INTERPRET) under a watchdog, so a kernel
    that hangs or crashes on its first launches cannot take the calling benchmark down; print
    the tail of its output and return whether it exited 0 in time."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    try:
        res = subprocess.run([sys.executable, "-c", code, *args], env=env, timeout=timeout,
                             capture_output=True, text=True)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out[-tail:])
        print(f"the check did not finish in {timeout:g} s (hang?)", flush=True)
        return False
    print(res.stdout[-tail:], res.stderr[-3000:] if res.returncode else "", flush=True)
    if res.returncode:
        print(f"the check failed (exit {res.returncode})", flush=True)
    return res.returncode == 0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0–100) of already sorted values."""
    if not sorted_values:
        raise ValueError("sorted_values: expected at least one value, got none")
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _timing(samples_us: Sequence[float]) -> Timing:
    s = sorted(samples_us)
    p20, p50, p80 = (_percentile(s, q) for q in PERCENTILES)
    return Timing(p20, p50, p80, len(s))


class _L2Flusher:
    """Zeroes a buffer larger than the L2 cache, so each timed call starts with a cold L2."""

    def __init__(self, device: torch.device, nbytes: int = L2_FLUSH_BYTES):
        self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)

    def __call__(self) -> None:
        self.buf.zero_()


def time_fn(fn: Callable[[], Any], *, device: torch.device | str | None = None,
            warmup: int = DEFAULT_WARMUP, rep: int | None = None,
            budget_s: float = DEFAULT_BUDGET_S, min_runs: int = MIN_RUNS,
            max_runs: int = DEFAULT_MAX_RUNS, flush_l2: bool = True) -> Timing:
    """Median / p20 / p80 microseconds per call of ``fn`` (``time_samples``)."""
    return _timing(time_samples(fn, device=device, warmup=warmup, rep=rep, budget_s=budget_s,
                                min_runs=min_runs, max_runs=max_runs, flush_l2=flush_l2))


def time_samples(fn: Callable[[], Any], *, device: torch.device | str | None = None,
                 warmup: int = DEFAULT_WARMUP, rep: int | None = None,
                 budget_s: float = DEFAULT_BUDGET_S, min_runs: int = MIN_RUNS,
                 max_runs: int = DEFAULT_MAX_RUNS, flush_l2: bool = True) -> list[float]:
    """Microseconds of each timed call of ``fn``.

    ``warmup`` untimed calls first (fewer when they exceed the budget; they also estimate the
    cost of a call); then ``rep`` timed
    calls, or — when ``rep`` is None — as many as fit in ``budget_s`` seconds, clamped to
    ``[min_runs, max_runs]``. On CUDA every call is bracketed by CUDA events and the calls are
    queued back to back (an L2 flush between them when ``flush_l2``), with one synchronisation
    at the end; elsewhere ``time.perf_counter`` times each call.
    """
    if min_runs < 1 or max_runs < min_runs:
        raise ValueError(f"min_runs / max_runs: expected 1 <= min_runs <= max_runs, got "
                         f"{min_runs} / {max_runs}")
    if budget_s <= 0:
        raise ValueError(f"budget_s: expected a positive number of seconds, got {budget_s}")
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    sync()
    t0 = time.perf_counter()
    done = 0
    while done < max(warmup, 1):
        fn()
        sync()
        done += 1
        if time.perf_counter() - t0 > budget_s:  # a slow path: one warm-up call is enough
            break
    per_call = (time.perf_counter() - t0) / done
    if rep is not None:
        n = max(1, int(rep))
    else:
        n = int(budget_s / per_call) if per_call > 0 else max_runs
        n = min(max(n, min_runs), max_runs)

    if not cuda:
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * US_PER_S)
        return samples

    flusher = _L2Flusher(dev) if flush_l2 else None
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(n)]
    for start, end in events:
        if flusher is not None:
            flusher()
        start.record()
        fn()
        end.record()
    sync()
    return [start.elapsed_time(end) * 1e3 for start, end in events]  # ms -> µs


def round_row(label: str, name: str, round_medians: Sequence[float], flop: float,
              matmul_tflops: float) -> tuple:
    """A row of an A/B table of variants timed in alternating rounds: ``(label, name, (min,
    median, max) of the round medians in µs, fraction of the matmul ceiling at the median)``."""
    t = sorted(round_medians)
    q = (t[0], t[len(t) // 2], t[-1])
    return label, name, q, flop / (q[1] * 1e-6) / TFLOP / matmul_tflops


def print_round_table(rows: Sequence[tuple], label_width: int = 38, name_width: int = 12) -> None:
    """The rows of ``round_row`` as a table (printed last by the A/B scripts)."""
    print(f"\n{'shape':{label_width}} {'variant':{name_width}} "
          f"{'min / median / max of round medians, us':>28} frac-matmul")
    for label, name, q, fr in rows:
        print(f"{label:{label_width}} {name:{name_width}} {' '.join(f'{x:8.1f}' for x in q):>28} "
              f"{fr:.3f}")


def graph_time_fn(fn: Callable[[], Any], *, device: torch.device | str, reps: int = 30,
                  flush_l2: bool = True) -> Timing | None:
    """Median / p20 / p80 microseconds of ``fn`` captured once in a CUDA graph and replayed
    ``reps`` times (L2 flushed before each replay): the GPU time of the call without its host
    work, which is what an engine that captures its decode step pays. None off CUDA."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        fn()
        fn()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize(dev)
    flusher = _L2Flusher(dev) if flush_l2 else None
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        if flusher is not None:
            flusher()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(dev)
    del graph
    return _timing([start.elapsed_time(end) * 1e3 for start, end in events])


# --- ceilings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ceilings:
    """What this device reaches on plain torch work, measured in the same run."""

    copy_gbps: float  # device-to-device copy, bytes read + written per second / 1e9
    matmul_tflops: float  # large matmul (bf16 on CUDA, float32 on CPU)
    copy_bytes: int
    matmul_n: int
    matmul_dtype: str

    @property
    def ridge_flop_per_byte(self) -> float:
        """Arithmetic intensity above which an op is compute-bound on this device."""
        return self.matmul_tflops * TFLOP / (self.copy_gbps * GBYTE)


def measure_ceilings(device: torch.device | str | None = None, *, copy_bytes: int | None = None,
                     matmul_n: int | None = None) -> Ceilings:
    """Copy bandwidth and matmul throughput of ``device`` (medians of ``CEILING_RUNS`` runs).

    Defaults: on CUDA a 1 GiB copy and an 8192³ bf16 matmul (as ANCHORS.md); on a CPU a 64 MiB
    copy and a 512³ float32 matmul (CPU bf16 GEMMs are not representative and 8192³ takes
    minutes), so the CPU figures only give the fractions a scale.
    """
    dev = torch.device(device) if device is not None else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    cuda = dev.type == "cuda"
    nbytes = copy_bytes or (COPY_BYTES_CUDA if cuda else COPY_BYTES_CPU)
    n = matmul_n or (MATMUL_N_CUDA if cuda else MATMUL_N_CPU)
    dtype = torch.bfloat16 if cuda else torch.float32

    src = torch.empty(nbytes, dtype=torch.uint8, device=dev).fill_(1)
    dst = torch.empty_like(src)
    t_copy = time_fn(lambda: dst.copy_(src), device=dev, warmup=CEILING_WARMUP,
                     rep=CEILING_RUNS, flush_l2=False)
    copy_gbps = 2 * nbytes / (t_copy.p50 / US_PER_S) / GBYTE  # read + write
    del src, dst

    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    t_mm = time_fn(lambda: torch.matmul(a, b), device=dev, warmup=CEILING_WARMUP,
                   rep=CEILING_RUNS, flush_l2=False)
    mm_tflops = 2 * n ** 3 / (t_mm.p50 / US_PER_S) / TFLOP
    del a, b
    _free(dev)
    return Ceilings(copy_gbps, mm_tflops, nbytes, n, str(dtype).replace("torch.", ""))


# --- environment ----------------------------------------------------------------------------
def _module_version(name: str) -> str:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return "n/a"


def git_commit(path: str | os.PathLike | None = None) -> str:
    """Short sha of the checkout that holds openmla's sources, or ``"unknown"``; the environment
    variable ``OPENMLA_COMMIT`` overrides it (for copies of the tree without ``.git``)."""
    override = os.environ.get("OPENMLA_COMMIT", "").strip()
    if override:
        return override
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and sha else "unknown"


@dataclass(frozen=True)
class Environment:
    gpu: str
    cuda: str
    torch: str
    triton: str
    version: str
    commit: str
    python: str
    date: str

    def header_lines(self, ceilings: Ceilings | None) -> list[str]:
        lines = [f"device  {self.gpu}", f"cuda    {self.cuda}", f"torch   {self.torch}",
                 f"triton  {self.triton}", f"openmla {self.version} (commit {self.commit})",
                 f"python  {self.python}", f"date    {self.date}"]
        if ceilings is not None:
            lines.append(f"ceilings: copy {ceilings.copy_gbps:.0f} GB/s "
                         f"({ceilings.copy_bytes / MIB:.0f} MiB, read+write), matmul "
                         f"{ceilings.matmul_tflops:.2f} TFLOPS ({ceilings.matmul_n}^3 "
                         f"{ceilings.matmul_dtype})")
        return lines


def environment(device: torch.device) -> Environment:
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return Environment(
        gpu=gpu, cuda=str(torch.version.cuda or "none"), torch=torch.__version__,
        triton=_module_version("triton"), version=_module_version("openmla"),
        commit=git_commit(), python=platform.python_version(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"))


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --- cases ----------------------------------------------------------------------------------
@dataclass
class Workload:
    """Data of one case, ready to run: a zero-argument call per provider plus the work done."""

    calls: dict[str, Callable[[], Any]]
    flops: int
    bytes: int | None  # None when the op's byte count is not meaningful here


@dataclass(frozen=True)
class BenchCase:
    op: str
    config: str
    build: Callable[[torch.device, Sequence[str]], Workload]  # (device, providers) -> workload


def _flash_mla_module() -> Any | None:
    """FlashMLA's package when it imports here, else None."""
    try:
        return importlib.import_module("flash_mla")
    except Exception:  # noqa: BLE001 - missing package or missing CUDA build alike
        return None


def _provider_modules(providers: Sequence[str]) -> dict[str, Any]:
    import openmla

    mods: dict[str, Any] = {}
    if "openmla" in providers:
        mods["openmla"] = openmla
    if "flash_mla" in providers:
        fm = _flash_mla_module()
        if fm is not None:
            mods["flash_mla"] = fm
    return mods


def _decode_call(mod: Any, kwargs: dict[str, Any]) -> Callable[[], Any]:
    def call() -> Any:
        meta = mod.get_mla_metadata()[0]  # a fresh schedule per call, as a decode step makes
        return mod.flash_mla_with_kvcache(tile_scheduler_metadata=meta, **kwargs)
    return call


def _dense_decode_case(b: int, s_q: int, h_q: int, s_k: int, causal: bool,
                       page_block_size: int = 64, h_kv: int = 1,
                       varlen: bool = False) -> BenchCase:
    config = (f"b={b} s_q={s_q} h_q={h_q} h_kv={h_kv} s_k={s_k}{'~varlen' if varlen else ''} "
              f"pbs={page_block_size}" + (" causal" if causal else ""))

    def build(device: torch.device, providers: Sequence[str]) -> Workload:
        case = G.dense_decode_inputs(b, s_q, h_q, s_k, h_kv=h_kv, causal=causal,
                                     page_block_size=page_block_size, varlen=varlen,
                                     device=device)
        kw = G.public_kwargs(case)
        seqlens = case[G.EXTRAS]["seqlens"]
        d, dv = kw["q"].shape[-1], kw["head_dim_v"]
        calls = {name: _decode_call(mod, kw) for name, mod in _provider_modules(providers).items()}
        return Workload(calls, F.dense_decode_flops(b, s_q, h_q, d, dv, seqlens),
                        F.dense_decode_bytes(b, s_q, h_q, h_kv, d, dv, seqlens,
                                             kw["q"].element_size()))
    return BenchCase("dense_decode", config, build)


def flash_mla_sparse_decode_takes(h_q: int, extra_topk: int | None) -> bool:
    """Whether the bench times FlashMLA on a sparse-decode case: its Hopper kernels take 64 or
    128 heads and no extra cache (elsewhere it crashed the process instead of raising, H200
    2026-11-22, h_q=16), so other shapes are timed for openmla only."""
    return h_q in (64, 128) and extra_topk is None


def _sparse_decode_case(b: int, s_q: int, h_q: int, s_k: int, topk: int, d_qk: int = 576,
                        page_block_size: int = 64, extra_topk: int | None = None,
                        extra_s_k: int | None = None,
                        extra_page_block_size: int | None = None) -> BenchCase:
    layout = "V32" if d_qk == 576 else "MODEL1"
    config = f"{layout} b={b} s_q={s_q} h_q={h_q} topk={topk} s_k={s_k} pbs={page_block_size}"
    if extra_topk is not None:
        config += f" +extra topk={extra_topk} s_k={extra_s_k} pbs={extra_page_block_size}"

    def build(device: torch.device, providers: Sequence[str]) -> Workload:
        case = G.sparse_decode_inputs(b, s_q, h_q, s_k, topk, d_qk=d_qk,
                                      page_block_size=page_block_size, varlen=True,
                                      with_attn_sink=True, extra_topk=extra_topk,
                                      extra_s_k=extra_s_k,
                                      extra_page_block_size=extra_page_block_size,
                                      device=device)
        kw = G.public_kwargs(case)
        dv = kw["head_dim_v"]
        n_att = F.sparse_decode_attended(b, s_q, topk, extra_topk=extra_topk)
        listed = topk + (extra_topk or 0)  # ANCHORS.md: every listed slot reads one token
        mods = _provider_modules(providers)
        if not flash_mla_sparse_decode_takes(h_q, extra_topk):
            mods.pop("flash_mla", None)
        calls = {name: _decode_call(mod, kw) for name, mod in mods.items()}
        return Workload(calls, F.sparse_decode_flops(h_q, d_qk, dv, n_att),
                        F.sparse_decode_bytes_topk(b, s_q, h_q, d_qk, dv, listed))
    return BenchCase("sparse_decode", config, build)


def _sparse_prefill_case(s_q: int, s_kv: int, h_q: int, topk: int, d_qk: int = 576,
                         with_attn_sink: bool = True,
                         pad_flash_mla_to: int | None = None) -> BenchCase:
    """``pad_flash_mla_to``: FlashMLA takes multiples of 64 heads, so it is timed on the same
    data with ``q`` (and the sinks) zero-padded to that many heads, as an engine would call it;
    the row's FLOPs stay those of the ``h_q`` real heads."""
    config = f"s_q={s_q} s_kv={s_kv} h_q={h_q} topk={topk} d_qk={d_qk}" + (
        " sink" if with_attn_sink else "")
    if pad_flash_mla_to is not None:
        config += f" (flash_mla: padded to {pad_flash_mla_to} heads)"

    def build(device: torch.device, providers: Sequence[str]) -> Workload:
        case = G.sparse_prefill_inputs(s_q, s_kv, h_q, topk, d_qk=d_qk,
                                       with_attn_sink=with_attn_sink, device=device)
        kw = G.public_kwargs(case)
        idx = kw["indices"]
        n_valid = int(((idx >= 0) & (idx < s_kv)).sum())
        calls = {}
        for name, mod in _provider_modules(providers).items():
            args = kw
            if name == "flash_mla" and pad_flash_mla_to is not None:
                args = _pad_heads(kw, pad_flash_mla_to)
            calls[name] = lambda mod=mod, args=args: mod.flash_mla_sparse_fwd(**args)
        return Workload(calls, F.sparse_prefill_flops(s_q, h_q, d_qk, kw["d_v"], topk=topk),
                        F.sparse_prefill_bytes(n_valid, s_q, h_q, d_qk, kw["d_v"]))
    return BenchCase("sparse_prefill", config, build)


def _pad_heads(kw: dict[str, Any], heads: int) -> dict[str, Any]:
    """Sparse-prefill arguments with ``q`` and ``attn_sink`` zero-padded to ``heads`` heads."""
    q = kw["q"]
    q_pad = q.new_zeros(q.shape[0], heads, q.shape[2])
    q_pad[:, :q.shape[1]] = q
    out = dict(kw, q=q_pad)
    if kw.get("attn_sink") is not None:
        sink = kw["attn_sink"]
        out["attn_sink"] = torch.cat([sink, sink.new_zeros(heads - sink.shape[0])])
    return out


def _mha_config(shape: str, h: int, d: int, dv: int, causal: bool, backward: bool) -> str:
    return (f"{shape} h={h} d={d}/{dv}" + (" causal" if causal else "")
            + (" fwd+bwd" if backward else " fwd"))


def _mha_flop(kw: dict[str, Any], h: int, d: int, dv: int, causal: bool,
              backward: bool) -> int:
    """Useful FLOPs of the real lengths in ``kw`` (forward, plus backward when asked)."""
    cu_q, cu_k = kw["cu_seqlens_qo"].tolist(), kw["cu_seqlens_kv"].tolist()
    flop = F.mha_flops(cu_q, cu_k, h, d, dv, causal)
    if backward:
        flop += F.mha_flops(cu_q, cu_k, h, d, dv, causal, backward=True)
    return flop


def _varlen_call(mod: Any, kw: dict[str, Any], backward: bool,
                 grad_out: torch.Tensor) -> Callable[[], Any]:
    """``mod.flash_attn_varlen_func`` on ``kw``, with the backward when asked."""
    def call() -> Any:
        out, _lse = mod.flash_attn_varlen_func(**kw)
        if backward:
            return torch.autograd.grad(out, (kw["q"], kw["k"], kw["v"]), grad_out)
        return out
    return call


def _sdpa_call(kw: dict[str, Any], b: int, backward: bool,
               grad_out: torch.Tensor) -> Callable[[], Any] | None:
    """torch SDPA on the same data, for equal-length sequences and h_q == h_kv only."""
    q, k, v = kw["q"], kw["k"], kw["v"]
    total_q, h, d = q.shape
    if total_q % b or k.shape[0] % b or k.shape[1] != h or k.shape[0] != total_q:
        return None
    s = total_q // b

    def heads_first(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, s, x.shape[1], x.shape[2]).transpose(1, 2)  # [b, h, s, dim]

    def call() -> Any:
        out = torch.nn.functional.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), is_causal=kw["causal"],
            scale=kw["softmax_scale"])
        if backward:
            return torch.autograd.grad(out, (q, k, v), heads_first(grad_out))
        return out
    return call


def _mha_case(b: int, seqlen: int, h: int, d: int, dv: int, causal: bool,
              backward: bool) -> BenchCase:
    config = _mha_config(f"{b}x{seqlen}", h, d, dv, causal, backward)

    def build(device: torch.device, providers: Sequence[str]) -> Workload:
        case = G.mha_inputs(b, seqlen, seqlen, h, d=d, dv=dv, causal=causal, varlen=False,
                            requires_grad=backward, device=device)
        kw = G.public_kwargs(case)
        grad_out = case[G.EXTRAS]["grad_out"]
        mods = _provider_modules(providers)
        if "flash_mla" in mods and not (device.type == "cuda"
                                        and _arch(device) // 10 == FLASH_MLA_MHA_ARCH // 10):
            del mods["flash_mla"]  # FlashMLA's MHA kernels exist for SM100 only
        calls = {name: _varlen_call(mod, kw, backward, grad_out) for name, mod in mods.items()}
        if "torch_sdpa" in providers and device.type == "cuda":
            sdpa = _sdpa_call(kw, b, backward, grad_out)
            if sdpa is not None:
                calls["torch_sdpa"] = sdpa
        return Workload(calls, _mha_flop(kw, h, d, dv, causal, backward), None)
    return BenchCase("mha_prefill", config, build)


def _mha_varlen_case(b: int, mean: int, h: int, d: int, dv: int, causal: bool,
                     backward: bool) -> BenchCase:
    """A batch of mixed lengths (N(mean, mean/2) query tokens, keys at least as many). torch
    SDPA cannot take it without padding: its row times SDPA on every sequence padded to the
    longest (random data of that padded shape, timing only), and both rows count the useful
    FLOPs of the real lengths, so SDPA's TFLOPS show what the padding costs it."""
    config = _mha_config(f"varlen {b}x~{mean}", h, d, dv, causal, backward)

    def build(device: torch.device, providers: Sequence[str]) -> Workload:
        case = G.mha_inputs(b, mean, mean, h, d=d, dv=dv, causal=causal, varlen=True,
                            requires_grad=backward, device=device)
        kw = G.public_kwargs(case)
        grad_out = case[G.EXTRAS]["grad_out"]
        calls: dict[str, Callable[[], Any]] = {}
        if "openmla" in providers:
            import openmla

            calls["openmla"] = _varlen_call(openmla, kw, backward, grad_out)
        cu_q, cu_k = kw["cu_seqlens_qo"].tolist(), kw["cu_seqlens_kv"].tolist()
        if "torch_sdpa" in providers and device.type == "cuda":
            longest = max(max(b_ - a_ for a_, b_ in zip(cu_q[:-1], cu_q[1:])),
                          max(b_ - a_ for a_, b_ in zip(cu_k[:-1], cu_k[1:])))

            def padded(dim: int) -> torch.Tensor:
                x = torch.randn(b, h, longest, dim, device=device, dtype=kw["q"].dtype) / 10
                return x.requires_grad_(backward)
            pq, pk, pv = padded(d), padded(d), padded(dv)
            pgrad = torch.randn(b, h, longest, dv, device=device, dtype=kw["q"].dtype) / 10

            def sdpa() -> Any:
                out = torch.nn.functional.scaled_dot_product_attention(
                    pq, pk, pv, is_causal=causal, scale=kw["softmax_scale"])
                if backward:
                    return torch.autograd.grad(out, (pq, pk, pv), pgrad)
                return out
            calls["torch_sdpa"] = sdpa
        return Workload(calls, _mha_flop(kw, h, d, dv, causal, backward), None)
    return BenchCase("mha_prefill", config, build)


def _arch(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def gpu_cases() -> list[BenchCase]:
    """The production shapes of ANCHORS.md (FlashMLA's figures exist for the MLA rows)."""
    dense_s_k, b = 8192, 128
    cases = [_dense_decode_case(b, 1, h_q, dense_s_k, causal=False) for h_q in (16, 64, 128)]
    cases.append(_dense_decode_case(b, 2, 128, dense_s_k, causal=True))
    # issue-3 report shapes: short context, wide-spread varlen (mean 4096), page size 16
    cases.append(_dense_decode_case(b, 1, 128, 1024, causal=False))
    cases.append(_dense_decode_case(b, 1, 128, 4096, causal=False, varlen=True))
    cases.append(_dense_decode_case(b, 1, 16, dense_s_k, causal=False, page_block_size=16))
    cases.append(_dense_decode_case(b, 2, 128, dense_s_k, causal=True, page_block_size=16))
    v32_s_k, v32_topk = 32768, 2048
    cases += [_sparse_decode_case(b, s_q, 128, v32_s_k, v32_topk) for s_q in (1, 2)]
    cases.append(_sparse_decode_case(b, 1, 64, v32_s_k, v32_topk))
    # tensor-parallel shards (FlashMLA pads these to 64 heads): h_q = 16 natively
    cases.append(_sparse_decode_case(b, 1, 16, v32_s_k, v32_topk))
    # MODEL1 (upstream's perf configs: main topk at pbs 256 plus an extra cache at pbs 64)
    m1_s_k, m1_topk, m1_extra_topk = 16384, 512, 1024
    cases += [_sparse_decode_case(b, 1, h_q, m1_s_k, m1_topk, d_qk=512, page_block_size=256,
                                  extra_topk=m1_extra_topk, extra_s_k=m1_s_k,
                                  extra_page_block_size=64) for h_q in (64, 128)]
    p_s_q, p_s_kv, p_topk = 4096, 32768, 2048
    cases += [_sparse_prefill_case(p_s_q, p_s_kv, h_q, p_topk, d_qk=576) for h_q in (128, 64)]
    cases.append(_sparse_prefill_case(p_s_q, p_s_kv, 128, p_topk, d_qk=512))
    # a tensor-parallel shard: 16 heads natively, FlashMLA on the same data padded to 64
    cases.append(_sparse_prefill_case(p_s_q, p_s_kv, 16, p_topk, d_qk=576, pad_flash_mla_to=64))
    mha_b, mha_s = 4, 4096
    # issue 6's bars: (192, 128), causal and not, 16 and 128 heads, forward and forward+backward
    cases += [_mha_case(mha_b, mha_s, h, 192, 128, causal=causal, backward=bwd)
              for causal in (True, False) for bwd in (False, True) for h in (16, 128)]
    # issue-6 report shapes: (128, 128) and a mixed-length batch (SDPA padded)
    cases += [_mha_case(mha_b, mha_s, 16, 128, 128, causal=True, backward=bwd)
              for bwd in (False, True)]
    cases += [_mha_varlen_case(8, 2048, 16, 192, 128, causal=True, backward=bwd)
              for bwd in (False, True)]
    return cases


def cpu_cases() -> list[BenchCase]:
    """Tiny shapes of every op, for a CPU (the float32 reference path) in a few seconds."""
    return [
        _dense_decode_case(2, 1, 16, 256, causal=False),
        _dense_decode_case(2, 2, 16, 256, causal=True),
        _sparse_decode_case(2, 1, 64, 512, 64),
        _sparse_decode_case(2, 1, 64, 256, 64, d_qk=512, extra_topk=64, extra_s_k=256,
                            extra_page_block_size=64),
        _sparse_prefill_case(16, 256, 64, 64, d_qk=576),
        _mha_case(2, 128, 2, 192, 128, causal=True, backward=False),
        _mha_case(2, 128, 2, 192, 128, causal=True, backward=True),
    ]


# --- running ---------------------------------------------------------------------------------
@dataclass
class BenchRow:
    op: str
    config: str
    provider: str
    backend: str
    timing: Timing | None  # None when the provider could not run the case
    flops: int
    bytes: int | None
    error: str = ""
    graph: Timing | None = None  # decode ops on CUDA: the call replayed from a CUDA graph

    def tflops(self, t_us: float) -> float:
        return self.flops / (t_us / US_PER_S) / TFLOP

    def gbps(self, t_us: float) -> float | None:
        return None if self.bytes is None else self.bytes / (t_us / US_PER_S) / GBYTE

    def bound(self, ceilings: Ceilings) -> str:
        """"memory" or "compute": which ceiling this op's arithmetic intensity meets first."""
        if self.bytes is None or self.bytes == 0:
            return "compute"
        return "compute" if self.flops / self.bytes >= ceilings.ridge_flop_per_byte else "memory"

    def fraction_of_copy(self, ceilings: Ceilings) -> float | None:
        if self.timing is None:
            return None
        g = self.gbps(self.timing.p50)
        return None if g is None else g / ceilings.copy_gbps

    def fraction_of_matmul(self, ceilings: Ceilings) -> float | None:
        if self.timing is None:
            return None
        return self.tflops(self.timing.p50) / ceilings.matmul_tflops


@contextlib.contextmanager
def _record_backend(op: str) -> Iterator[list[str]]:
    """Records which backend ``openmla.dispatch.select`` hands the public function during the
    block, by wrapping the ``select`` that ``openmla.interface`` calls."""
    names: list[str] = []
    try:
        from .. import interface
    except Exception:  # noqa: BLE001
        yield names
        return
    original = getattr(interface, "select", None)
    if original is None:
        yield names
        return

    def recording(op_name: str, info: Any, problem: Any) -> Any:
        backend = original(op_name, info, problem)
        if op_name == op:
            names.append(backend.name)
        return backend

    interface.select = recording
    try:
        yield names
    finally:
        interface.select = original


def _preferred_backend(op: str, device: torch.device) -> str:
    """The backend dispatch would choose for ``op`` here, without a call (fallback)."""
    from .. import dispatch
    from ..device import device_info

    forced = dispatch.forced_backend(op)
    if forced is not None:
        return forced
    names = dispatch.available(op, device_info(device))
    return names[0] if names else "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: BenchCase, device: torch.device, providers: Sequence[str], *,
             budget_s: float, max_runs: int, rounds: int | None = None,
             log: Callable[[str], None] = print) -> list[BenchRow]:
    """Build one case's data, time each provider, free the data.

    On CUDA with several providers the providers are timed in turn, ``rounds`` rounds (default
    ``ROUNDS``) of ``budget_s / rounds`` each, and each provider's percentiles are taken over all
    its calls: GPU clocks drift as the card heats, and timing one provider after the other would
    hand the drift to whichever runs second."""
    rows: list[BenchRow] = []
    try:
        work = case.build(device, providers)
    except Exception as exc:  # noqa: BLE001 - report and go on with the next case
        log(f"  {case.op} [{case.config}]: could not build inputs: {exc}")
        _free(device)
        return [BenchRow(case.op, case.config, p, "-", None, 0, None,
                         f"{type(exc).__name__}: {exc}") for p in providers if p == "openmla"]
    if rounds is None:
        rounds = ROUNDS if device.type == "cuda" and len(work.calls) > 1 else 1
    backends: dict[str, str] = {}
    samples: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for provider, call in work.calls.items():
        backends[provider] = provider if provider != "openmla" else "unknown"
        try:
            if provider == "openmla":
                with _record_backend(case.op) as seen:
                    call()  # first call: compiles kernels, tells which backend runs
                    _sync(device)
                backends[provider] = seen[-1] if seen else _preferred_backend(case.op, device)
            samples[provider] = []
        except Exception as exc:  # noqa: BLE001
            errors[provider] = f"{type(exc).__name__}: {exc}"
    per_round = max(MIN_RUNS, math.ceil(max_runs / rounds))
    for _ in range(rounds):
        for provider, call in work.calls.items():
            if provider in errors:
                continue
            try:
                samples[provider] += time_samples(call, device=device,
                                                  budget_s=budget_s / rounds,
                                                  max_runs=per_round)
            except Exception as exc:  # noqa: BLE001
                errors[provider] = f"{type(exc).__name__}: {exc}"
    for provider, call in work.calls.items():
        backend = backends[provider]
        if provider in errors:
            row = BenchRow(case.op, case.config, provider, backend, None, work.flops,
                           work.bytes, errors[provider])
            log(f"  {case.op:<15} {case.config:<70} {provider:<10} failed: {row.error}")
            rows.append(row)
            continue
        timing = _timing(samples[provider])
        graph = None
        if case.op in GRAPH_OPS and device.type == "cuda":
            try:
                graph = graph_time_fn(call, device=device)
            except Exception as exc:  # noqa: BLE001 - a provider that cannot be captured
                log(f"  {case.op} [{case.config}] {provider}: no CUDA-graph timing: {exc}")
        row = BenchRow(case.op, case.config, provider, backend, timing, work.flops,
                       work.bytes, graph=graph)
        log(f"  {case.op:<15} {case.config:<70} {provider:<10} {backend:<10} "
            f"{timing.p50:12.1f} us  {row.tflops(timing.p50):8.2f} TFLOPS"
            + (f"  (graph {graph.p50:.1f} us)" if graph is not None else ""))
        rows.append(row)
    del work
    _free(device)
    return rows


def run_benchmarks(device: torch.device, *, ops: Iterable[str] | None = None, quick: bool = False,
                   providers: Sequence[str] = PROVIDERS,
                   cases: Sequence[BenchCase] | None = None,
                   log: Callable[[str], None] = print) -> list[BenchRow]:
    """Every case for ``device`` (GPU shapes on CUDA, tiny shapes elsewhere) whose op is in
    ``ops``; ``quick`` shortens the time budget per case."""
    wanted = set(OPS if ops is None else ops)
    unknown = wanted - set(OPS)
    if unknown:
        raise ValueError(f"ops: expected names from {OPS}, got {sorted(unknown)}")
    if cases is None:
        cases = gpu_cases() if device.type == "cuda" else cpu_cases()
    budget = QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S
    max_runs = QUICK_MAX_RUNS if quick else DEFAULT_MAX_RUNS
    rows: list[BenchRow] = []
    for case in cases:
        if case.op in wanted:
            rows += run_case(case, device, providers, budget_s=budget, max_runs=max_runs, log=log)
    return rows


# --- reporting ------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(rows: Sequence[BenchRow], ceilings: Ceilings) -> str:
    """A plain-text table: µs, TFLOPS, GB/s and the fraction of the ceiling that bounds the op
    (copy for memory-bound rows, matmul for compute-bound rows)."""
    w = max([len(r.config) for r in rows] + [len("config")])
    header = (f"{'op':<15} {'config':<{w}} {'provider':<10} {'backend':<10} {'us':>10} "
              f"{'TFLOPS':>8} {'GB/s':>8} {'fraction of ceiling':>24} {'graph us':>10}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.timing is None:
            lines.append(f"{r.op:<15} {r.config:<{w}} {r.provider:<10} {r.backend:<10} "
                         f"failed: {r.error[:80]}")
            continue
        t = r.timing.p50
        if r.bound(ceilings) == "memory":
            frac = f"{_fmt(r.fraction_of_copy(ceilings), '.2f')} of copy"
        else:
            frac = f"{_fmt(r.fraction_of_matmul(ceilings), '.2f')} of matmul"
        lines.append(f"{r.op:<15} {r.config:<{w}} {r.provider:<10} {r.backend:<10} "
                     f"{t:10.1f} {_fmt(r.tflops(t), '.2f'):>8} {_fmt(r.gbps(t), '.0f'):>8} "
                     f"{frac:>24} {_fmt(r.graph.p50 if r.graph else None, '10.1f'):>10}")
    return "\n".join(lines)


def _metric_rows(r: BenchRow, ceilings: Ceilings) -> list[tuple[str, str, float, float, float]]:
    """(metric, unit, p20, p50, p80) of one result: faster time = higher throughput, so the
    throughput percentiles come from the mirrored time percentiles."""
    t = r.timing
    if t is None:
        return []
    out = [("time", "us", t.p20, t.p50, t.p80),
           ("throughput", "TFLOPS", r.tflops(t.p80), r.tflops(t.p50), r.tflops(t.p20))]
    if r.bytes is not None:
        out.append(("bandwidth", "GB/s", r.gbps(t.p80), r.gbps(t.p50), r.gbps(t.p20)))
        c = ceilings.copy_gbps
        out.append(("fraction_of_copy", "ratio", r.gbps(t.p80) / c, r.gbps(t.p50) / c,
                    r.gbps(t.p20) / c))
    m = ceilings.matmul_tflops
    out.append(("fraction_of_matmul", "ratio", r.tflops(t.p80) / m, r.tflops(t.p50) / m,
                r.tflops(t.p20) / m))
    if r.graph is not None:
        out.append(("graph_time", "us", r.graph.p20, r.graph.p50, r.graph.p80))
    return out  # type: ignore[return-value]


def append_csv(path: str | os.PathLike, rows: Sequence[BenchRow], ceilings: Ceilings,
               env: Environment) -> int:
    """Append results in long form (one line per metric, header written for a new file); the
    ceilings go in as kernel ``ceiling``. Returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    stamp = env.date
    common = {"gpu": env.gpu, "cuda": env.cuda, "torch": env.torch, "triton": env.triton,
              "version": env.version, "commit": env.commit, "timestamp": stamp}
    lines: list[dict[str, Any]] = [
        dict(common, kernel="ceiling", x=f"copy {ceilings.copy_bytes // MIB} MiB",
             provider="torch", backend="torch", metric="bandwidth", unit="GB/s",
             p20="", p50=ceilings.copy_gbps, p80=""),
        dict(common, kernel="ceiling", x=f"matmul {ceilings.matmul_n}^3 {ceilings.matmul_dtype}",
             provider="torch", backend="torch", metric="throughput", unit="TFLOPS",
             p20="", p50=ceilings.matmul_tflops, p80=""),
    ]
    for r in rows:
        if r.timing is None:
            continue
        for metric, unit, p20, p50, p80 in _metric_rows(r, ceilings):
            lines.append(dict(common, kernel=r.op, x=r.config, provider=r.provider,
                              backend=r.backend, metric=metric, unit=unit, p20=p20, p50=p50,
                              p80=p80))
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(lines)
    return len(lines)


class PlotUnavailableError(RuntimeError):
    """Plots were asked for but matplotlib cannot be imported."""


PLOT_LABEL_WIDTH = 22  # characters per line of an x tick label
PLOT_METRICS = (("time", "us", "µs per call (lower is better)"),
                ("throughput", "TFLOPS", "TFLOPS (higher is better)"))


def plot_csv(csv_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """PNG bar charts from a results CSV: per kernel and metric (time, TFLOPS), one group of bars
    per configuration, one bar per provider, from the latest run of each (gpu, kernel, x,
    provider). Returns the files written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailableError("--plot needs matplotlib: pip install 'openmla[bench]' "
                           "(or pip install matplotlib)") from exc
    with Path(csv_path).open(newline="") as fh:
        records = list(csv.DictReader(fh))
    if not records:
        raise ValueError(f"csv_path: expected benchmark rows in {csv_path}, found none")
    latest: dict[tuple[str, ...], dict[str, str]] = {}
    for rec in records:
        key = (rec["gpu"], rec["kernel"], rec["x"], rec["provider"], rec["metric"])
        if key not in latest or rec["timestamp"] >= latest[key]["timestamp"]:
            latest[key] = rec
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    gpus = sorted({k[0] for k in latest})
    for gpu in gpus:
        kernels = sorted({k[1] for k in latest if k[0] == gpu and k[1] != "ceiling"})
        for kernel in kernels:
            for metric, unit, label in PLOT_METRICS:
                recs = [v for k, v in latest.items()
                        if k[0] == gpu and k[1] == kernel and k[4] == metric]
                if not recs:
                    continue
                configs = sorted({r["x"] for r in recs})
                providers = sorted({r["provider"] for r in recs})
                width = 0.8 / len(providers)
                fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(configs)), 4.5))
                for i, prov in enumerate(providers):
                    vals = []
                    for cfg in configs:
                        match = [r for r in recs if r["x"] == cfg and r["provider"] == prov]
                        vals.append(float(match[0]["p50"]) if match else 0.0)
                    xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(configs))]
                    ax.bar(xs, vals, width, label=prov)
                ax.set_xticks(range(len(configs)))
                ax.set_xticklabels([textwrap.fill(c, PLOT_LABEL_WIDTH) for c in configs],
                                   fontsize=7)
                ax.set_ylabel(f"{unit}")
                ax.set_title(f"{kernel} — {label}\n{gpu}", fontsize=9)
                ax.legend(fontsize=8)
                fig.tight_layout()
                safe_gpu = "".join(ch if ch.isalnum() else "_" for ch in gpu)[:40]
                path = out / f"{kernel}_{metric}_{safe_gpu}.png"
                fig.savefig(path, dpi=120)
                plt.close(fig)
                written.append(path)
    return written


# --- entry point used by the CLI --------------------------------------------------------------
@dataclass
class BenchReport:
    env: Environment
    ceilings: Ceilings
    rows: list[BenchRow] = field(default_factory=list)


def bench_main(device: torch.device, *, ops: Iterable[str] | None = None, quick: bool = False,
               csv_path: str | os.PathLike | None = DEFAULT_CSV,
               plot_dir: str | os.PathLike | None = None,
               log: Callable[[str], None] = print) -> BenchReport:
    """Header, ceilings, every case with progress lines, the final table, CSV and plots."""
    env = environment(device)
    if device.type != "cuda":
        log("no CUDA device: benchmarking the small CPU configuration (float32 reference path); "
            "figures say nothing about GPU performance")
    log("measuring ceilings ...")
    ceilings = measure_ceilings(device)
    for line in env.header_lines(ceilings):
        log(line)
    log(f"flash_mla: {'importable' if _flash_mla_module() is not None else 'not installed'}")
    rows = run_benchmarks(device, ops=ops, quick=quick, log=log)
    log("")
    log(format_table(rows, ceilings))
    if csv_path is not None:
        n = append_csv(csv_path, rows, ceilings, env)
        log(f"appended {n} lines to {csv_path}")
    if plot_dir is not None:
        if csv_path is None:
            raise ValueError("plot_dir: plots are drawn from the CSV; expected a csv_path, "
                             "got None")
        for p in plot_csv(csv_path, plot_dir):
            log(f"wrote {p}")
    return BenchReport(env, ceilings, rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `python -m openmla bench`")
