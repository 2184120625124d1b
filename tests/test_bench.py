"""``fastnn bench``: the command runs, reports every workload, catches a peer
that is fast and wrong, writes its chart, and parses its options.

Runs use the hidden ``--smoke`` option (toy shapes, one repeat: a few
seconds); the timings themselves are not tested, only the report's shape.
"""
import math
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import fastnn
from fastnn import cli
from fastnn.bench import WORKLOADS
from fastnn.bench import workloads as W

SMALL = ["bench", "--smoke", "--threads", "1", "--workloads", "softmax_xent", "--no-fits",
         "--no-ceilings", "--no-scaling", "--no-chart"]


def _tables(text):
    """{heading: [rows as lists of cells]} of the Markdown report."""
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("| ") and heading is not None:
            tables.setdefault(heading, []).append([c.strip() for c in line.strip("|").split("|")])
    return tables


def _table(tables, prefix):
    (rows,) = [rows for heading, rows in tables.items() if heading.startswith(prefix)]
    header, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def _ratio(cell):
    assert cell.endswith("×"), cell
    return float(cell[:-1])


def test_smoke_run_reports_every_workload(tmp_path, capsys):
    report = tmp_path / "report.md"
    code = cli.main(["bench", "--smoke", "--threads", "1,2", "--no-chart",
                     "--output", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "## Problems" not in out
    assert report.read_text() in out + "\n"           # --output holds the printed report
    tables = _tables(out)

    ceilings = _table(tables, "Machine ceilings")
    assert [row["threads"] for row in ceilings] == ["1", "2"]
    assert all(float(row["triad GB/s"]) > 0 for row in ceilings)
    # OpenBLAS's AVX-512 sgemm, from a child process, where the CPU has it
    # (a smoke-sized product on a busy machine may round to 0 GFLOP/s)
    avx512 = [row["sgemm GFLOP/s (OpenBLAS AVX-512)"] for row in ceilings]
    flags = fastnn._kernels.cpu_flags()
    if flags is not None and fastnn._kernels.cpu_supports("x86-64-v4", flags):
        assert all(re.fullmatch(r"\d+", cell) for cell in avx512), avx512
    else:
        assert avx512 == ["—", "—"]
    for workload in WORKLOADS:
        rows = _table(tables, workload + ":")
        shapes = {W.shape_id(s) for s in W.SMOKE_SHAPES[workload]}
        assert {row["shape"] for row in rows} == shapes
        assert len(rows) == 2 * len(shapes)             # one row per thread count
        for row in rows:
            assert row["agrees with reference"] == "yes"
            assert re.fullmatch(r"[\d.]+ (s|ms|µs|ns)", row["fastnn"]), row
            assert _ratio(row["reference/fastnn"]) > 0
            if workload in ("dense", "mlp_epoch"):
                assert row["% of sgemm"].endswith("%")
            # two measures around each multi-thread row, where two cores are usable
            if row["threads"] == "1" or W.thread_counts()[-1] < 2:
                assert row["core round trip (ns)"] == "—"
            else:
                assert re.fullmatch(r"\d+ → \d+", row["core round trip (ns)"]), row
    softmax_n = _table(tables, "Scaling: softmax_xent")
    assert {row["shape"] for row in softmax_n} >= {"16x10", "64x10", "16x1000"}
    batches = _table(tables, "Scaling: mlp_epoch")
    assert {row["shape"].split(",")[0] for row in batches} == {"batch32", "batch64"}
    assert "sklearn" not in batches[0]                  # scaling: fastnn, reference, torch
    assert len(_table(tables, "Thread scaling")) == sum(map(len, W.SMOKE_SHAPES.values()))
    summary = _table(tables, "Summary")
    assert all(math.isfinite(_ratio(row["reference/fastnn"])) for row in summary)


def test_a_wrong_peer_is_reported_and_fails_the_run(monkeypatch, capsys):
    real = W.F

    def off_by_a_bit(z, y, out=None):
        loss, grad = real.softmax_cross_entropy(z, y, out=out)
        grad[0, 0] += 0.01 * np.abs(grad).max()            # fast and wrong
        return loss, grad

    monkeypatch.setattr(W, "F", types.SimpleNamespace(softmax_cross_entropy=off_by_a_bit))
    code = cli.main(SMALL)
    out = capsys.readouterr().out
    assert code == 1
    rows = _table(_tables(out), "softmax_xent:")
    assert all(row["agrees with reference"] == "NO: fastnn" for row in rows)
    problems = out.split("## Problems", 1)[1]
    assert "fastnn" in problems and "differs from the reference" in problems


def test_a_failing_peer_is_reported_and_fails_the_run(monkeypatch, capsys):
    def broken(z, y, out=None):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(W, "F", types.SimpleNamespace(softmax_cross_entropy=broken))
    assert cli.main(SMALL) == 1
    out = capsys.readouterr().out
    assert all(row["fastnn"] == "error" for row in _table(_tables(out), "softmax_xent:"))
    assert "kernel exploded" in out.split("## Problems", 1)[1]


def test_a_missing_optional_peer_is_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(W, "torch", None)
    assert cli.main(SMALL) == 0
    out = capsys.readouterr().out
    assert "torch: PyTorch CPU" in out and "not run: PyTorch is not installed" in out
    assert "torch" not in _table(_tables(out), "softmax_xent:")[0]


def test_chart_is_written(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (optional)")
    chart = tmp_path / "ratios.png"
    args = [a for a in SMALL if a != "--no-chart"] + ["--chart", str(chart)]
    assert cli.main(args) == 0
    assert f"written to {chart}" in capsys.readouterr().out
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_chart_is_skipped_not_fatal(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import fails
    chart = tmp_path / "ratios.png"
    args = [a for a in SMALL if a != "--no-chart"] + ["--chart", str(chart)]
    assert cli.main(args) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not chart.exists()


def test_cli_parses_bench_options():
    args = cli._build_parser().parse_args(["bench", "--quick"])
    assert args.quick and not args.smoke
    assert args.threads is None and args.repeats is None
    assert args.workloads == list(WORKLOADS) and args.chart == "fastnn-bench.png"
    args = cli._build_parser().parse_args(
        ["bench", "--threads", "2,1,2", "--workloads", "dense,softmax_xent", "--repeats", "5"])
    assert args.threads == [1, 2] and args.repeats == 5
    assert args.workloads == ["softmax_xent", "dense"]      # report order


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "positive thread counts"),
    (["--threads", "a,b"], "positive thread counts"),
    (["--workloads", "conv2d"], "unknown workloads"),
    (["--repeats", "0"], "positive integer"),
])
def test_bad_options_exit_2(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_output_exits_2_before_measuring(tmp_path, capsys):
    assert cli.main([*SMALL, "--output", str(tmp_path / "missing" / "r.md")]) == 2
    captured = capsys.readouterr()
    assert "cannot write there" in captured.err and "## softmax_xent" not in captured.out


def test_python_dash_m_fastnn_bench(tmp_path):
    """The console entry, from the package under test (no benchmarks/ needed)."""
    root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "fastnn", *SMALL], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "## softmax_xent" in proc.stdout and "| 16x10 | 1 |" in proc.stdout


def test_stolen_cpu_time_is_read_from_proc_stat(tmp_path):
    from fastnn.bench import report
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 10 1 2 12 0 0\ncpu0 50 2 10 400 5 0 1 6 0 0\n")
    assert report.cpu_times(str(stat)) == (12, 950)
    assert report.stolen_share((12, 950), (62, 1950)) == pytest.approx(0.05)
    assert report.stolen_share(None, (62, 1950)) is None
    assert report.stolen_share((12, 950), (12, 950)) is None
    stat.write_text("intr 1 2 3\n")
    assert report.cpu_times(str(stat)) is None
    assert report.cpu_times(str(tmp_path / "missing")) is None


def test_report_ends_with_the_stolen_cpu_time_where_linux_reports_it(capsys):
    assert cli.main(SMALL) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("Total time")
    if os.path.exists("/proc/stat"):
        assert re.search(r"CPU time stolen by the hypervisor during the run: \d+\.\d%", last)


def test_estimator_fits_against_scikit_learn(capsys):
    pytest.importorskip("sklearn", reason="the fits compare with scikit-learn")
    args = [a for a in SMALL if a != "--no-fits"] + ["--fits", "mlp_lbfgs,mlp_sparse"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    rows = _table(_tables(out), "Estimator fits")
    assert [row["fit"] for row in rows] == ["mlp_lbfgs", "mlp_sparse"]
    for row in rows:
        assert _ratio(row["sklearn/fastnn"]) > 0
        assert re.fullmatch(r"\d+\.\d\d%", row["fastnn accuracy"]), row
        assert row["fastnn peak memory"].endswith("MiB")
    assert "CSR" in rows[1]["data and parameters"]


def test_fits_option_parses():
    parser = fastnn.bench.add_arguments(__import__("argparse").ArgumentParser())
    assert parser.parse_args([]).fits == ["mlp_lbfgs", "mlp_sparse"]
    assert parser.parse_args(["--fits", "mlp_sparse"]).fits == ["mlp_sparse"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--fits", "svm"])


def test_bf16_peers_are_held_to_their_tolerance():
    """fastnn.bf16 and torch.bf16: agreeing results pass, wrong ones fail."""
    shape = W.SMOKE_SHAPES["dense"][0]
    data = W.make_data("dense", shape)
    expected = None     # dense bf16 peers are checked against the bf16 twin
    case = W._dense("fastnn.bf16", data)
    case.run()
    good = [np.array(x) for x in case.result()]
    W.check_agreement("dense", "fastnn.bf16", good, expected, shape)
    bad = [x.copy() for x in good]
    bad[2][0, 0] += 1e-3 * np.abs(bad[2]).max()          # dW off in one element
    with pytest.raises(AssertionError):
        W.check_agreement("dense", "fastnn.bf16", bad, expected, shape)
    bad = [x.copy() for x in good]
    bad[1] *= 0.8                                        # a 20% wrong input gradient
    with pytest.raises(AssertionError, match="away from the bf16 reference"):
        W.check_agreement("dense", "torch.bf16", bad, expected, shape)
    epoch = W.SMOKE_SHAPES["mlp_epoch"][0]
    ref = W.make_case("mlp_epoch", epoch, "reference")
    ref.run()
    ref_loss, ref_updates = ref.result()
    W.check_agreement("mlp_epoch", "fastnn.bf16", (ref_loss * 1.02, ref_updates),
                      (ref_loss, ref_updates), epoch)
    with pytest.raises(AssertionError, match="epoch loss"):
        W.check_agreement("mlp_epoch", "fastnn.bf16", (ref_loss * 1.05, ref_updates),
                          (ref_loss, ref_updates), epoch)
