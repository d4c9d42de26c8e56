"""The ``openmla`` command line on a CPU, in-process: ``check`` passes and names every op, a
wrong op makes it fail, ``info`` lists the backends, ``bench --quick`` writes the long-form CSV
(and plots), and the default demo runs both."""
from __future__ import annotations

import csv
import time

import pytest
import torch

import openmla
from openmla.cli import main
from openmla.dispatch import OPS
from openmla.testing import bench as B

PERTURBATION = 1.01  # 1 % off: inside the element-wise rel. tolerance (2/128) but 10x over
# the cosine bound (scaling by 1.01 gives 1 - 2.02/2.0201 = 5e-5 > 5e-6), so check must look at both


def test_check_passes_and_names_every_op(capsys):
    assert main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("comparison"):]
    for op in OPS:
        assert op in table
    assert "FAIL" not in table
    for what in ("vs reference", "vs naive", "dq vs naive", "dk vs naive", "dv vs naive",
                 "max_logits vs"):
        assert what in table


def _perturb_first_output(fn):
    def wrong(*args, **kwargs):
        out, *rest = fn(*args, **kwargs)
        return (out * PERTURBATION, *rest)
    return wrong


@pytest.mark.parametrize("public,ops", [
    ("flash_mla_with_kvcache", ["dense_decode", "sparse_decode"]),
    ("flash_mla_sparse_fwd", ["sparse_prefill"]),
    ("flash_attn_varlen_func", ["mha_prefill"]),
])
def test_check_fails_when_an_op_is_wrong(monkeypatch, capsys, public, ops):
    monkeypatch.setattr(openmla, public, _perturb_first_output(getattr(openmla, public)))
    assert main(["check", "--device", "cpu", "--ops", *ops]) == 1
    out = capsys.readouterr().out
    table = out[out.index("comparison"):]
    for op in ops:
        failed = [line for line in table.splitlines() if line.startswith(op) and "FAIL" in line]
        assert failed, f"{op}: no failed comparison reported"
    assert "FAILED" in out


def test_check_fails_on_lse(monkeypatch, capsys):
    fn = openmla.flash_mla_sparse_fwd

    def wrong_lse(*args, **kwargs):
        out, max_logits, lse = fn(*args, **kwargs)
        return out, max_logits, lse + 1e-3
    monkeypatch.setattr(openmla, "flash_mla_sparse_fwd", wrong_lse)
    assert main(["check", "--device", "cpu", "--ops", "sparse_prefill"]) == 1
    out = capsys.readouterr().out
    assert any("lse vs" in line and "FAIL" in line for line in out.splitlines())


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in OPS:
        assert op in out
    assert openmla.__version__ in out and torch.__version__ in out


def test_bench_quick_writes_csv_and_plots(tmp_path, capsys):
    csv_path = tmp_path / "results.csv"
    plot_dir = tmp_path / "plots"
    args = ["bench", "--device", "cpu", "--quick", "--csv", str(csv_path)]
    try:
        import matplotlib  # noqa: F401
        args += ["--plot", str(plot_dir)]
    except ImportError:
        plot_dir = None
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "ceilings: copy" in out
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == B.CSV_COLUMNS
    kernels = {r["kernel"] for r in rows}
    assert set(OPS) <= kernels and "ceiling" in kernels
    times = [r for r in rows if r["metric"] == "time" and r["kernel"] in OPS]
    for r in times:
        assert r["provider"] == "openmla" and r["backend"] != "unknown"
        p20, p50, p80 = float(r["p20"]), float(r["p50"]), float(r["p80"])
        assert 0 < p20 <= p50 <= p80
    # throughput follows from the FLOP count and the median time
    for r in rows:
        if r["metric"] == "throughput" and r["kernel"] in OPS:
            t = next(x for x in times if x["kernel"] == r["kernel"] and x["x"] == r["x"])
            assert float(r["p50"]) > 0
            assert float(r["p80"]) >= float(r["p50"]) >= float(r["p20"])
            assert t["p50"]
    if plot_dir is not None:
        assert sorted(p.suffix for p in plot_dir.iterdir()) and all(
            p.suffix == ".png" and p.stat().st_size > 0 for p in plot_dir.iterdir())


def test_default_demo_runs_check_then_bench(capsys):
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.index("openmla check") < out.index("openmla bench")
    for op in OPS:
        assert op in out


def test_time_fn_measures_what_it_runs():
    sleep_s = 0.002
    t = B.time_fn(lambda: time.sleep(sleep_s), device="cpu", warmup=1, budget_s=0.05,
                  max_runs=20)
    assert B.MIN_RUNS <= t.runs <= 20
    assert sleep_s * 1e6 <= t.p50 < 20 * sleep_s * 1e6
    assert t.p20 <= t.p50 <= t.p80
    exact = B.time_fn(lambda: None, device="cpu", rep=7)
    assert exact.runs == 7
    with pytest.raises(ValueError, match="min_runs"):
        B.time_fn(lambda: None, device="cpu", min_runs=5, max_runs=2)


def test_run_case_times_providers_in_turn():
    """With rounds, each provider's calls are timed in turn (a, b, a, b, ...), all of a
    provider's calls make its percentiles, and a failing provider gets an error row while the
    others are still timed."""
    order = []

    def fail():
        raise RuntimeError("boom")

    def build(device, providers):
        calls = {"openmla": lambda: order.append("a"), "torch_sdpa": lambda: order.append("b"),
                 "flash_mla": fail}
        return B.Workload(calls, 1000, None)

    case = B.BenchCase("mha_prefill", "x", build)
    rows = B.run_case(case, torch.device("cpu"), ("openmla", "torch_sdpa", "flash_mla"),
                      budget_s=0.01, max_runs=6, rounds=3, log=lambda _: None)
    by = {r.provider: r for r in rows}
    assert by["flash_mla"].timing is None and "boom" in by["flash_mla"].error
    assert by["openmla"].timing.runs == by["torch_sdpa"].timing.runs == 3 * B.MIN_RUNS
    runs = "".join(order[1:])  # the first call of openmla is its untimed first launch
    blocks = [runs[i] for i in range(len(runs)) if i == 0 or runs[i] != runs[i - 1]]
    assert blocks == ["a", "b"] * 3


def test_rows_report_fraction_of_the_bounding_ceiling():
    ceil = B.Ceilings(copy_gbps=1000.0, matmul_tflops=100.0, copy_bytes=1, matmul_n=1,
                      matmul_dtype="bf16")
    timing = B.Timing(1.0, 1.0, 1.0, 3)  # 1 µs
    # 1e8 FLOP and 1e6 bytes per µs: 100 TFLOPS and 1000 GB/s, intensity 100 = ridge
    row = B.BenchRow("dense_decode", "x", "openmla", "reference", timing, int(1e8), int(1e6))
    assert row.tflops(1.0) == pytest.approx(100.0) and row.gbps(1.0) == pytest.approx(1000.0)
    assert row.bound(ceil) == "compute"
    assert row.fraction_of_matmul(ceil) == pytest.approx(1.0)
    mem = B.BenchRow("dense_decode", "x", "openmla", "reference", timing, int(1e7), int(1e6))
    assert mem.bound(ceil) == "memory" and mem.fraction_of_copy(ceil) == pytest.approx(1.0)
    table = B.format_table([row, mem], ceil)
    assert "of matmul" in table and "of copy" in table


def test_graph_column_and_csv_metric(tmp_path):
    """A row with a CUDA-graph timing shows it in the table and writes a graph_time metric."""
    ceil = B.Ceilings(copy_gbps=1000.0, matmul_tflops=100.0, copy_bytes=1 << 20, matmul_n=8,
                      matmul_dtype="bf16")
    timing = B.Timing(2.0, 2.0, 2.0, 3)
    graph = B.Timing(1.25, 1.5, 1.75, 30)
    row = B.BenchRow("dense_decode", "x", "openmla", "gluon", timing, int(1e8), int(1e6),
                     graph=graph)
    plain = B.BenchRow("dense_decode", "y", "openmla", "gluon", timing, int(1e8), int(1e6))
    table = B.format_table([row, plain], ceil)
    assert "graph us" in table and "1.5" in table.splitlines()[2]
    assert table.splitlines()[3].rstrip().endswith("-")
    assert ("graph_time", "us", 1.25, 1.5, 1.75) in B._metric_rows(row, ceil)
    assert all(m[0] != "graph_time" for m in B._metric_rows(plain, ceil))
    assert B.graph_time_fn(lambda: None, device="cpu") is None


def test_mha_varlen_case_runs_and_counts_real_lengths():
    """The mixed-length MHA bench case builds, runs openmla, and counts the FLOPs of the real
    (unpadded) lengths; SDPA's padded call is only added on CUDA."""
    import torch

    case = B._mha_varlen_case(3, 16, 2, 32, 16, causal=True, backward=True)
    dev = torch.device("cpu")
    work = case.build(dev, ("openmla", "torch_sdpa"))
    assert set(work.calls) == {"openmla"}
    grads = work.calls["openmla"]()
    assert len(grads) == 3 and all(bool(torch.isfinite(g).all()) for g in grads)
    assert work.flops > 0 and work.bytes is None
    assert "varlen" in case.config and "fwd+bwd" in case.config


def test_bench_leaves_flash_mla_out_of_sparse_decode_shapes_it_cannot_take():
    """FlashMLA's Hopper sparse-decode kernels take 64 or 128 heads and no extra cache; the
    bench times it only there (it crashed the process at h_q=16)."""
    from openmla.testing.bench import flash_mla_sparse_decode_takes

    assert flash_mla_sparse_decode_takes(64, None) and flash_mla_sparse_decode_takes(128, None)
    assert not flash_mla_sparse_decode_takes(16, None)
    assert not flash_mla_sparse_decode_takes(32, None)
    assert not flash_mla_sparse_decode_takes(128, 1024)


def test_round_row_and_table(capsys):
    """An A/B row keeps min / median / max of the round medians and the median's fraction of
    the matmul ceiling; the table prints one line a row."""
    from openmla.testing.bench import print_round_table, round_row

    row = round_row("b=1", "v", [30.0, 10.0, 20.0], 8e12, 400.0)
    assert row[:3] == ("b=1", "v", (10.0, 20.0, 30.0))
    assert row[3] == pytest.approx(8e12 / 20e-6 / 1e12 / 400.0)
    print_round_table([row, round_row("b=2", "w", [5.0], 1e12, 400.0)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 3 and lines[1].startswith("b=1") and lines[2].startswith("b=2")


def test_bench_pads_heads_for_flash_mla_sparse_prefill(monkeypatch):
    """The h_q=16 sparse-prefill row times FlashMLA on the same data with q and the sinks
    zero-padded to 64 heads (it takes multiples of 64); openmla runs the 16 heads natively, and
    the row's FLOPs are those of the 16 real heads."""
    import types

    from openmla.testing import bench as B

    seen = {}

    def fake_fwd(**kw):
        seen.update(kw)
        return None

    monkeypatch.setattr(B, "_flash_mla_module",
                        lambda: types.SimpleNamespace(flash_mla_sparse_fwd=fake_fwd))
    case = B._sparse_prefill_case(4, 64, 16, 32, d_qk=576, pad_flash_mla_to=64)
    assert "padded to 64 heads" in case.config
    work = case.build(torch.device("cpu"), ("openmla", "flash_mla"))
    work.calls["flash_mla"]()
    q, sink = seen["q"], seen["attn_sink"]
    assert q.shape[1] == 64 and sink.shape == (64,)
    assert bool((q[:, 16:] == 0).all()) and bool((sink[16:] == 0).all())
    same = B.G.sparse_prefill_inputs(4, 64, 16, 32, d_qk=576, with_attn_sink=True,
                                     device="cpu")
    assert torch.equal(q[:, :16], same["q"]) and torch.equal(sink[:16], same["attn_sink"])
    unpadded = B._sparse_prefill_case(4, 64, 16, 32, d_qk=576).build(torch.device("cpu"),
                                                                     ("openmla",))
    assert work.flops == unpadded.flops
    out = work.calls["openmla"]()
    assert out[0].shape[1] == 16
