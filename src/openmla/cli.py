"""``openmla`` command line: ``info``, ``check``, ``bench``; with no subcommand, a short demo
(``check`` at small shapes, then a quick ``bench``) on the current device.

* ``openmla info`` — versions, the device, and which backend each op uses there.
* ``openmla check [--device D]`` — every op at small shapes through the public functions, each
  output compared against the float32 reference and against the independent naive loops of
  :mod:`openmla.testing.naive`, with FlashMLA's tolerances (SPEC §4.1); exit status 1 on any
  failure.
* ``openmla bench [--device D] [--ops ...] [--csv PATH] [--plot DIR] [--quick]`` — the harness of
  :mod:`openmla.testing.bench` (FlashMLA's benchmark shapes on a GPU, tiny shapes on a CPU).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

CHECK_SEED = 0
MAX_SEED_TRIES = 64  # seeds tried to draw a case with a required feature (e.g. a zero length)
POISON_BYTES = 64 << 20  # NaN written into the CUDA caching allocator before each launch
DETAIL_WIDTH = 90


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(arg: str | None) -> torch.device:
    dev = _default_device() if arg is None else torch.device(arg)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device: {arg} requested but torch sees no CUDA device")
    return dev


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return "not available"


# --- info -----------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    import openmla
    from openmla import dispatch
    from openmla.device import device_info

    dev = _device(args.device)
    info = device_info(dev)
    print(f"openmla  {openmla.__version__}")
    print(f"python   {platform.python_version()}")
    print(f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'}"
          f"{', HIP ' + torch.version.hip if torch.version.hip else ''})")
    print(f"triton   {_version('triton')}")
    print(f"flash_mla {_version('flash_mla')}")
    print(f"device   {dev} — {info.name}")
    if info.kind == "cuda":
        print(f"compute capability {info.arch // 10}.{info.arch % 10}, {info.num_sms} SMs")
    else:
        print("no compute capability / SMs (not a CUDA device)")
    print("backends (most preferred first):")
    for op in dispatch.OPS:
        names = dispatch.available(op, info)
        forced = dispatch.forced_backend(op)
        note = f"  [forced: {forced}]" if forced else ""
        print(f"  {op:<15} {', '.join(names) if names else '(none)'}{note}")
    return 0


# --- check ----------------------------------------------------------------------------------
@dataclass
class CheckResult:
    op: str
    case: str
    what: str  # e.g. "out vs reference"
    ok: bool
    detail: str = ""


def _poison_allocator(device: torch.device) -> None:
    """Fill memory the CUDA caching allocator will hand out next with NaN, so an output element
    a kernel forgets to write shows up as NaN (FlashMLA's tests do the same)."""
    if device.type == "cuda":
        buf = torch.empty(POISON_BYTES // 4, dtype=torch.float32, device=device)
        buf.fill_(float("nan"))
        del buf


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return x


def _compare(results: list[CheckResult], op: str, case: str, what: str, ans: torch.Tensor,
             ref: torch.Tensor, tol_key: str) -> None:
    from openmla.testing.compare import TOLERANCES, compare

    why = compare(ans, ref.to(ans.device), TOLERANCES[op][tol_key])
    results.append(CheckResult(op, case, what, why is None, why or ""))


def _run_case(results: list[CheckResult], op: str, case: str,
              body: Callable[[list[CheckResult]], None]) -> None:
    """Run one case; an exception becomes a failed row instead of ending the check."""
    try:
        body(results)
    except Exception as exc:  # noqa: BLE001 - report every failure in the table
        results.append(CheckResult(op, case, "run", False, f"{type(exc).__name__}: {exc}"))


def _first_seed(make: Callable[[int], dict[str, Any]],
                accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first case (seeds CHECK_SEED, CHECK_SEED + 1, ...) that has a wanted feature."""
    for seed in range(CHECK_SEED, CHECK_SEED + MAX_SEED_TRIES):
        case = make(seed)
        if accept(case):
            return case
    raise RuntimeError(f"no seed in {MAX_SEED_TRIES} tries produced the wanted case")


def _decode_case(res: list[CheckResult], op: str, name: str, case: dict[str, Any],
                 reference: Callable[..., Any], naive: Callable[..., Any],
                 device: torch.device) -> None:
    """One decode case through the public call (poisoned allocator, fresh metadata) against the
    float32 reference and the naive loops; outputs compared in the output dtype, as FlashMLA
    compares decode outputs (bf16 against a bf16-rounded reference)."""
    import openmla
    from openmla.testing import generate as G

    pub = G.public_kwargs(case)
    _poison_allocator(device)
    meta = openmla.get_mla_metadata()[0]
    out, lse = openmla.flash_mla_with_kvcache(tile_scheduler_metadata=meta, **pub)
    rk = G.reference_kwargs(op, case)
    ref_out, ref_lse = reference(**rk)
    nv_out, nv_lse = naive(**{k: _to_cpu(v) for k, v in rk.items()})
    for label, o, l in (("reference", ref_out, ref_lse), ("naive", nv_out, nv_lse)):
        _compare(res, op, name, f"out vs {label}", out, o.to(out.dtype), "out")
        _compare(res, op, name, f"lse vs {label}", lse, l, "lse")


def _check_dense_decode(results: list[CheckResult], device: torch.device) -> None:
    from openmla.ops.dense_decode.ref import dense_decode_ref
    from openmla.testing import generate as G
    from openmla.testing.naive import naive_dense_decode

    specs = [
        ("b=2 s_q=1 h_q=4 s_k=100 varlen", dict(b=2, s_q=1, h_q=4, s_k=100, varlen=True), None),
        ("b=3 s_q=2 h_q=4 h_kv=2 s_k=80 pbs=32 causal zero-len noncontig",
         dict(b=3, s_q=2, h_q=4, s_k=80, h_kv=2, page_block_size=32, causal=True, varlen=True,
              zero_seqlens=True, non_contiguous=True),
         lambda c: 0 in c[G.EXTRAS]["seqlens"] and max(c[G.EXTRAS]["seqlens"]) > 0),
        ("b=2 s_q=2 h_q=2 s_k=70 pbs=16 fp16 causal",
         dict(b=2, s_q=2, h_q=2, s_k=70, page_block_size=16, causal=True, dtype=torch.float16),
         None),
    ]
    for name, kwargs, accept in specs:
        def body(res: list[CheckResult], kwargs: dict = kwargs, accept: Any = accept,
                 name: str = name) -> None:
            case = _first_seed(lambda s: G.dense_decode_inputs(device=device, seed=s, **kwargs),
                               accept or (lambda c: True))
            _decode_case(res, "dense_decode", name, case, dense_decode_ref, naive_dense_decode,
                         device)
        _run_case(results, "dense_decode", name, body)


def _check_sparse_decode(results: list[CheckResult], device: torch.device) -> None:
    from openmla.ops.sparse_decode.ref import sparse_decode_ref
    from openmla.testing import generate as G
    from openmla.testing.naive import naive_sparse_decode

    specs = [
        ("V32 b=2 s_q=2 h_q=64 topk=64 s_k=96 pbs=61 sink noncontig",
         dict(b=2, s_q=2, h_q=64, s_k=96, topk=64, d_qk=576, page_block_size=61,
              non_contiguous=True)),
        ("MODEL1 b=2 s_q=1 h_q=64 topk=64 pbs=64 +extra topk=64 pbs=2 lengths sink",
         dict(b=2, s_q=1, h_q=64, s_k=128, topk=64, d_qk=512, with_topk_length=True,
              extra_topk=64, extra_s_k=96, extra_page_block_size=2,
              with_extra_topk_length=True)),
        ("V32 b=2 s_q=1 h_q=64 topk=64 all-invalid sink",
         dict(b=2, s_q=1, h_q=64, s_k=128, topk=64, d_qk=576, all_invalid=True)),
        ("V32 b=3 s_q=3 h_q=64 topk=64 s_k=80 pbs=53 zero-len sink",
         dict(b=3, s_q=3, h_q=64, s_k=80, topk=64, d_qk=576, page_block_size=53,
              zero_seqlens=True)),
    ]
    for name, kwargs in specs:
        def body(res: list[CheckResult], kwargs: dict = kwargs, name: str = name) -> None:
            case = G.sparse_decode_inputs(device=device, seed=CHECK_SEED, **kwargs)
            _decode_case(res, "sparse_decode", name, case, sparse_decode_ref,
                         naive_sparse_decode, device)
        _run_case(results, "sparse_decode", name, body)


def _check_sparse_prefill(results: list[CheckResult], device: torch.device) -> None:
    import openmla
    from openmla.ops.sparse_prefill.ref import sparse_prefill_ref
    from openmla.testing import generate as G
    from openmla.testing.naive import naive_sparse_prefill

    specs = [
        ("s_q=6 s_kv=48 h_q=64 topk=64 d_qk=576 invalid-pad all-invalid-rows sink lengths "
         "noncontig",
         dict(s_q=6, s_kv=48, h_q=64, topk=64, d_qk=576, all_invalid=True,
              invalid_row_fraction=0.34, with_topk_length=True, with_attn_sink=True,
              non_contiguous=True)),
        ("s_q=4 s_kv=96 h_q=64 topk=64 d_qk=512 sink",
         dict(s_q=4, s_kv=96, h_q=64, topk=64, d_qk=512, with_attn_sink=True)),
    ]
    for name, kwargs in specs:
        def body(res: list[CheckResult], kwargs: dict = kwargs, name: str = name) -> None:
            case = G.sparse_prefill_inputs(device=device, seed=CHECK_SEED, **kwargs)
            pub = G.public_kwargs(case)
            _poison_allocator(device)
            out, max_logits, lse = openmla.flash_mla_sparse_fwd(**pub)
            rk = G.reference_kwargs("sparse_prefill", case)
            ref = sparse_prefill_ref(**rk)
            nv = naive_sparse_prefill(**{k: _to_cpu(v) for k, v in rk.items()})
            for label, (o, m, l) in (("reference", ref), ("naive", nv)):
                # FlashMLA compares the bf16 answer as fp32 against the fp32 reference
                _compare(res, "sparse_prefill", name, f"out vs {label}", out.float(),
                         o.float(), "out")
                _compare(res, "sparse_prefill", name, f"max_logits vs {label}", max_logits, m,
                         "max_logits")
                _compare(res, "sparse_prefill", name, f"lse vs {label}", lse, l, "lse")
        _run_case(results, "sparse_prefill", name, body)


def _check_mha(results: list[CheckResult], device: torch.device) -> None:
    import openmla
    from openmla.ops.mha_prefill.ref import mha_prefill_fwd_ref
    from openmla.testing import generate as G
    from openmla.testing.naive import naive_mha

    fwd_name = "b=2 s~40/56 varlen h=4 h_kv=2 d=192/128 causal fwd"

    def fwd(res: list[CheckResult]) -> None:
        case = G.mha_inputs(2, 40, 56, 4, h_kv=2, d=192, dv=128, causal=True, varlen=True,
                            device=device, seed=CHECK_SEED)
        pub = G.public_kwargs(case)
        _poison_allocator(device)
        out, lse = openmla.flash_attn_varlen_func(**pub)
        rk = G.reference_kwargs("mha_prefill", case)
        ref_out, ref_lse = mha_prefill_fwd_ref(**rk)
        nv_out, nv_lse = naive_mha(**{k: _to_cpu(v) for k, v in rk.items()})
        for label, o, l in (("reference", ref_out, ref_lse), ("naive", nv_out, nv_lse)):
            _compare(res, "mha_prefill", fwd_name, f"out vs {label}", out.float(), o.float(),
                     "out")
            _compare(res, "mha_prefill", fwd_name, f"lse vs {label}", lse, l, "lse")

    bwd_name = "b=2 s~32/48 varlen h=2 d=128/128 causal fwd+bwd"

    def bwd(res: list[CheckResult]) -> None:
        case = G.mha_inputs(2, 32, 48, 2, d=128, dv=128, causal=True, varlen=True,
                            requires_grad=True, device=device, seed=CHECK_SEED + 1)
        pub = G.public_kwargs(case)
        grad_out = case[G.EXTRAS]["grad_out"]
        _poison_allocator(device)
        out, _lse = openmla.flash_attn_varlen_func(**pub)
        grads = torch.autograd.grad(out, (pub["q"], pub["k"], pub["v"]), grad_out)
        rk = G.reference_kwargs("mha_prefill", case)
        # float64 leaves on the CPU: the naive autograd gives exact gradients
        leaves = [rk[k].detach().cpu().double().requires_grad_(True) for k in ("q", "k", "v")]
        nv_out, _ = naive_mha(*leaves, _to_cpu(rk["cu_seqlens_q"]), _to_cpu(rk["cu_seqlens_k"]),
                              rk["softmax_scale"], rk["causal"])
        nv_grads = torch.autograd.grad(nv_out, leaves, grad_out.cpu().double())
        _compare(res, "mha_prefill", bwd_name, "out vs naive", out.float(), nv_out, "out")
        for key, g, ng in zip(("dq", "dk", "dv"), grads, nv_grads):
            _compare(res, "mha_prefill", bwd_name, f"{key} vs naive", g.float(), ng, key)

    _run_case(results, "mha_prefill", fwd_name, fwd)
    _run_case(results, "mha_prefill", bwd_name, bwd)


CHECKS: dict[str, Callable[[list[CheckResult], torch.device], None]] = {
    "dense_decode": _check_dense_decode,
    "sparse_decode": _check_sparse_decode,
    "sparse_prefill": _check_sparse_prefill,
    "mha_prefill": _check_mha,
}


def run_check(device: torch.device, ops: Sequence[str] | None = None) -> list[CheckResult]:
    """Every check of ``ops`` (default all) on ``device``; one result per comparison."""
    results: list[CheckResult] = []
    for op in (ops or CHECKS):
        start = len(results)
        t0 = time.perf_counter()
        CHECKS[op](results, device)
        n_ok = sum(r.ok for r in results[start:])
        print(f"  {op:<15} {n_ok}/{len(results) - start} comparisons passed "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return results


def format_check_table(results: Sequence[CheckResult]) -> str:
    w_case = max([len(r.case) for r in results] + [4])
    header = f"{'op':<15} {'case':<{w_case}} {'comparison':<24} result"
    lines = [header, "-" * len(header)]
    for r in results:
        status = "PASS" if r.ok else "FAIL"
        line = f"{r.op:<15} {r.case:<{w_case}} {r.what:<24} {status}"
        if not r.ok:
            line += f"  {r.detail[:DETAIL_WIDTH]}"
        lines.append(line)
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    dev = _device(args.device)
    print(f"checking every op on {dev} against the float32 reference and the naive loops "
          f"(FlashMLA's tolerances)")
    t0 = time.perf_counter()
    results = run_check(dev, args.ops)
    print()
    print(format_check_table(results))
    failed = [r for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)}/{len(results)} passed in "
          f"{time.perf_counter() - t0:.1f} s" + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


# --- bench ----------------------------------------------------------------------------------
def _bench_status(rows: Sequence[Any]) -> int:
    """1 when nothing ran or an openmla row failed (another provider failing is information
    about that provider, not an error of this run)."""
    failed = [r for r in rows if r.provider == "openmla" and r.timing is None]
    return 1 if failed or not rows else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from openmla.testing.bench import PlotUnavailableError, bench_main

    dev = _device(args.device)
    try:
        report = bench_main(dev, ops=args.ops, quick=args.quick, csv_path=args.csv,
                            plot_dir=args.plot)
    except PlotUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return _bench_status(report.rows)


def cmd_default(args: argparse.Namespace) -> int:
    """The demo: check at small shapes, then a quick bench (no CSV) on the current device."""
    from openmla.testing.bench import bench_main

    dev = _device(args.device)
    print(f"== openmla check ({dev}) ==")
    status = cmd_check(argparse.Namespace(device=args.device, ops=None))
    print(f"\n== openmla bench --quick ({dev}) ==")
    report = bench_main(dev, quick=True, csv_path=None)
    return status or _bench_status(report.rows)


# --- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from openmla.testing.bench import DEFAULT_CSV, OPS

    parser = argparse.ArgumentParser(
        prog="openmla",
        description="FlashMLA-compatible MLA attention: device info, correctness check, "
                    "benchmarks. Without a subcommand: check, then a quick benchmark.")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.set_defaults(func=cmd_default)
    sub = parser.add_subparsers(dest="command")

    p_info = sub.add_parser("info", help="versions, device and the backend of each op")
    p_info.add_argument("--device", default=argparse.SUPPRESS, help="torch device")
    p_info.set_defaults(func=cmd_info)

    p_check = sub.add_parser("check", help="compare every op with the reference and the naive "
                                           "loops at small shapes")
    p_check.add_argument("--device", default=argparse.SUPPRESS, help="torch device")
    p_check.add_argument("--ops", nargs="+", choices=OPS, default=None,
                         help="ops to check (default: all)")
    p_check.set_defaults(func=cmd_check)

    p_bench = sub.add_parser("bench", help="time every op (FlashMLA's benchmark shapes on a GPU)")
    p_bench.add_argument("--device", default=argparse.SUPPRESS, help="torch device")
    p_bench.add_argument("--ops", nargs="+", choices=OPS, default=None,
                         help="ops to benchmark (default: all)")
    p_bench.add_argument("--csv", default=str(DEFAULT_CSV),
                         help=f"CSV to append results to (default: {DEFAULT_CSV})")
    p_bench.add_argument("--plot", default=None, metavar="DIR",
                         help="draw PNG bar charts from the CSV into DIR (needs matplotlib)")
    p_bench.add_argument("--quick", action="store_true",
                         help="short time budget per case")
    p_bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``openmla`` / ``python -m openmla``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
