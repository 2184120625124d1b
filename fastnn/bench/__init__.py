"""``python -m fastnn bench``: fastnn against its peers on the standard workloads.

    python -m fastnn bench [--quick] [--threads 1,2] [--workloads softmax_xent,dense,...]
                           [--fits mlp_lbfgs,mlp_sparse | --no-fits] [--repeats N]
                           [--output report.md] [--chart fastnn-bench.png]

Runs the workloads of WORKLOADS.md (``softmax_xent``, ``dense``,
``mlp_epoch``, ``logreg_gd``) with fastnn, its NumPy reference, PyTorch and
scikit-learn (optional peers, skipped with the reason when not installed),
whole estimator fits against scikit-learn's (``mlp_lbfgs``: lbfgs on
digits; ``mlp_sparse``: a sparse TF-IDF-like matrix; see
:mod:`fastnn.bench.fits`),
measures the machine's ceilings (sgemm through the BLAS fastnn calls, memory
bandwidth) and prints Markdown tables: times, peer/fastnn ratios (> 1: fastnn
is faster), the share of the sgemm ceiling or of the memory floor, scaling
with N, batch size and threads.  Every peer's output is checked against the
reference: a mismatch or a failing peer is listed and the exit status is 1.

``--quick`` (about a minute on two cores) keeps the small shapes, times one
tenth of an ``mlp_epoch`` epoch and of the ``logreg_gd`` iterations (the
labels say so), a 2048³ sgemm and 3 repeats.  The hidden option ``--smoke``
runs toy shapes with one repeat, for the test suite only (its numbers mean
nothing).

This module only defines the options, so that building the ``fastnn``
command line stays cheap; :mod:`fastnn.bench.report` does the work and
:mod:`fastnn.bench.workloads` defines the workloads.
"""
import argparse

__all__ = ["add_arguments", "run", "main"]

DESCRIPTION = ("Time fastnn, its NumPy reference, PyTorch and scikit-learn (when installed) "
               "on the standard workloads and print Markdown tables: times, peer/fastnn "
               "ratios (> 1: fastnn faster), the machine's sgemm and bandwidth ceilings, "
               "scaling. Exit status 1 when a peer's output disagrees with the reference.")

# the workloads of WORKLOADS.md, in report order (the keys of workloads.SHAPES)
WORKLOADS = ("softmax_xent", "dense", "mlp_epoch", "logreg_gd")
# whole estimator fits against scikit-learn (fastnn.bench.fits)
FITS = ("mlp_lbfgs", "mlp_sparse")


def _thread_list(text):
    try:
        threads = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        threads = []
    if not threads or threads[0] < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive thread counts such as 1,2, got {text!r}")
    return threads


def _names(choices, what):
    def parse(text):
        names = [w.strip() for w in text.split(",") if w.strip()]
        unknown = sorted(set(names) - set(choices))
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {unknown or text!r}; choose from {', '.join(choices)}")
        return [w for w in choices if w in names]
    return parse


_workload_list = _names(WORKLOADS, "workloads")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser):
    """The options of ``fastnn bench`` (shared by the CLI and :func:`main`)."""
    parser.add_argument("--quick", action="store_true",
                        help="a one-minute run: small shapes, 1/10 of an mlp_epoch epoch and "
                             "of the logreg_gd iterations, 3 repeats (also: "
                             "FASTNN_BENCH_QUICK=1)")
    parser.add_argument("--threads", type=_thread_list, default=None, metavar="LIST",
                        help="comma-separated thread counts (default: 1 and all usable cores)")
    parser.add_argument("--workloads", type=_workload_list, default=list(WORKLOADS),
                        metavar="LIST", help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    parser.add_argument("--fits", type=_names(FITS, "fits"), default=list(FITS), metavar="LIST",
                        help=f"estimator fits against scikit-learn, a subset of "
                             f"{', '.join(FITS)} (default: both)")
    parser.add_argument("--no-fits", action="store_true",
                        help="skip the estimator fits against scikit-learn")
    parser.add_argument("--repeats", type=_positive_int, default=None, metavar="N",
                        help="timed repeats per peer, the median is reported "
                             "(default 7, --quick 3)")
    parser.add_argument("--output", "-o", default=None, metavar="PATH",
                        help="also write the Markdown report to PATH")
    parser.add_argument("--chart", default="fastnn-bench.png", metavar="PATH",
                        help="PNG chart of the peer/fastnn ratios (needs matplotlib; "
                             "default: %(default)s)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the chart")
    parser.add_argument("--no-ceilings", action="store_true",
                        help="skip the sgemm and bandwidth measurements")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip the scaling tables (time against N and batch size)")
    # toy shapes and one repeat: for tests/test_bench.py only
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    return parser


def run(args):
    """Run the benchmark described by parsed ``args``; returns the exit status."""
    from .report import run as run_report
    return run_report(args)


def main(argv=None):
    """The command without the ``fastnn`` CLI around it (``benchmarks/report.py``);
    returns the exit status."""
    parser = add_arguments(argparse.ArgumentParser(prog="fastnn bench",
                                                   description=DESCRIPTION))
    return run(parser.parse_args(argv))

