"""Command line: ``python -m fastnn train`` / ``fastnn train``, ``fastnn info``
and ``fastnn bench`` (in :mod:`fastnn.bench`).

``train`` fits a :class:`fastnn.MLPClassifier` on scikit-learn's bundled
handwritten digits (no download) or on a user's ``.npz``/``.csv`` file,
reports progress, train/test accuracy and throughput, and saves the model
with :func:`fastnn.io.save`.
"""
import argparse
import contextlib
import csv
import inspect
import os
import sys
import time
import warnings
import zipfile

import numpy as np

from ._version import __version__

__all__ = ["main"]


class CLIError(Exception):
    """A user error reported as one line on stderr with exit code 2."""


# ---------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _hidden_sizes(text):
    try:
        sizes = tuple(_positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive layer sizes such as 256,128, got {text!r}") from None
    return sizes


def _number(low, high=None, *, low_inclusive=True):
    """A float type for argparse in [low, high) (or (low, ...) when not low_inclusive)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if low_inclusive else value <= low
        if not np.isfinite(value) or too_low or (high is not None and value >= high):
            bound = f"{'>=' if low_inclusive else '>'} {low}" + (
                f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"expected a number {bound}, got {text!r}")
        return value
    return parse


def _batch_size(text):
    return "auto" if text == "auto" else _positive_int(text)


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="fastnn", description="fastnn: fast CPU neural networks.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train", help="train an MLP classifier and save it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a fastnn.MLPClassifier, report train/test accuracy and "
                    "throughput, and save the model (load it with fastnn.load). Without "
                    "--data it uses scikit-learn's bundled handwritten digits (8x8 images, "
                    "10 classes; no download), pixel values scaled to [0, 1].")
    data = train.add_argument_group("data")
    data.add_argument("--data", metavar="FILE",
                      help="a .npz file with arrays X (samples x features) and y (labels), or "
                           "a .csv file whose last column is the label (a header row is "
                           "allowed); default: scikit-learn's digits")
    data.add_argument("--test-size", type=_number(0.0, 1.0), default=0.25, metavar="FRACTION",
                      help="fraction of the samples held out for testing (stratified split; "
                           "0: train on everything)")
    model = train.add_argument_group("model and training")
    model.add_argument("--hidden", type=_hidden_sizes, default=(256,), metavar="SIZES",
                       help="hidden layer sizes, comma-separated, e.g. 256,128")
    model.add_argument("--activation", default="relu",
                       choices=["identity", "logistic", "tanh", "relu", "leaky_relu"],
                       help="activation of the hidden layers")
    model.add_argument("--epochs", type=_positive_int, default=60,
                       help="maximum number of epochs (training stops earlier when the loss "
                            "improves by less than --tol for 10 epochs)")
    model.add_argument("--batch-size", type=_batch_size, default=64,
                       help="minibatch size, or 'auto' for min(200, n_samples)")
    model.add_argument("--solver", choices=["adam", "sgd"], default="adam", help="optimiser")
    model.add_argument("--lr", type=_number(0.0, low_inclusive=False), default=1e-3,
                       help="initial learning rate")
    model.add_argument("--alpha", type=_number(0.0), default=1e-4,
                       help="L2 penalty (weight decay) strength")
    model.add_argument("--tol", type=_number(0.0), default=1e-4,
                       help="tolerance of the stopping criterion")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the train/test split, the initial weights and shuffling")
    run = train.add_argument_group("run")
    run.add_argument("--threads", type=_positive_int, default=None,
                     help="threads for fastnn's kernels (default: FASTNN_NUM_THREADS, "
                          "OMP_NUM_THREADS or all available cores)")
    run.add_argument("--output", "-o", default="fastnn-model.npz", metavar="PATH",
                     help="where to save the trained model")
    run.add_argument("--quiet", "-q", action="store_true",
                     help="print only the final results (no per-epoch progress)")
    train.set_defaults(handler=_train)

    info = commands.add_parser("info", help="show how fastnn was built and what it runs with",
                               description="Show how fastnn was built (compiler, OpenMP, SIMD) "
                                           "and what it runs with (threads, BLAS).")
    info.set_defaults(handler=_info)

    from . import bench as _bench_options   # light: the options only
    bench = commands.add_parser(
        "bench", help="benchmark fastnn against NumPy, PyTorch and scikit-learn",
        description=_bench_options.DESCRIPTION)
    _bench_options.add_arguments(bench)
    bench.set_defaults(handler=_bench)
    return parser


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise CLIError("the default digits data set comes with scikit-learn, which is not "
                       "installed: pip install 'fastnn[sklearn]', or pass --data FILE.npz or "
                       "--data FILE.csv") from None
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y, "digits (scikit-learn)"


def _load_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CLIError(f"{path}: expected an .npz archive with arrays X and y, "
                           "found a single array")
        with archive:
            missing = [key for key in ("X", "y") if key not in archive.files]
            if missing:
                raise CLIError(f"{path}: no array named {' or '.join(missing)} (found: "
                               f"{', '.join(archive.files) or 'none'})")
            return archive["X"], archive["y"]
    except CLIError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"{path}: cannot read it as an .npz archive ({exc})") from None


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _labels(cells):
    """Integers when every label is an integer, else floats, else strings."""
    if all(_is_number(c) for c in cells):
        values = np.array([float(c) for c in cells])
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values
    return np.array(cells)


def _load_csv(path):
    try:
        with open(path, newline="") as f:
            rows = [(i, [cell.strip() for cell in row]) for i, row in enumerate(csv.reader(f), 1)
                    if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CLIError(f"{path}: cannot read it as a CSV file ({exc})") from None
    if not rows:
        raise CLIError(f"{path}: the file is empty")
    first = rows[0][1]
    # a header row: a non-numeric feature name, or a non-numeric first label
    # above numeric labels
    if (not all(_is_number(c) for c in first[:-1])
            or (not _is_number(first[-1]) and len(rows) > 1
                and all(_is_number(r[-1]) for _, r in rows[1:]))):
        rows = rows[1:]
    if not rows:
        raise CLIError(f"{path}: no data rows after the header")
    n_cols = len(rows[0][1])
    if n_cols < 2:
        raise CLIError(f"{path}: expected at least two columns (features, then the label)")
    X = np.empty((len(rows), n_cols - 1))
    for k, (line, row) in enumerate(rows):
        if len(row) != n_cols:
            raise CLIError(f"{path}, line {line}: expected {n_cols} columns, got {len(row)}")
        try:
            X[k] = [float(c) for c in row[:-1]]
        except ValueError:
            raise CLIError(f"{path}, line {line}: a feature value is not a number") from None
    return X, _labels([row[-1] for _, row in rows])


def _load_data(path):
    if path is None:
        return _load_digits()
    if not os.path.isfile(path):
        raise CLIError(f"--data {path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        X, y = _load_npz(path)
    elif ext == ".csv":
        X, y = _load_csv(path)
    else:
        raise CLIError(f"--data {path}: expected a .npz or .csv file")
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise CLIError(f"{path}: X must be a 2-D numeric array, got a {X.ndim}-D {X.dtype} array")
    if y.ndim != 1 or len(y) != len(X):
        raise CLIError(f"{path}: y must be 1-D with one label per row of X ({len(X)}), "
                       f"got shape {y.shape}")
    if not np.all(np.isfinite(X)):
        raise CLIError(f"{path}: X contains NaN or infinite values")
    return X, y, path


def _stratified_split(y, test_size, seed):
    """Train and test indices: in each class a seeded random ``test_size``
    share goes to the test set, at least one sample stays for training."""
    rng = np.random.default_rng(seed)
    _, codes = np.unique(y, return_inverse=True)
    test = []
    for c in range(codes.max() + 1):
        members = rng.permutation(np.flatnonzero(codes == c))
        test.append(members[:min(round(test_size * len(members)), len(members) - 1)])
    is_test = np.zeros(len(y), bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def _check_output(path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CLIError(f"--output {path}: is a directory")
    if not os.path.isdir(directory):
        raise CLIError(f"--output {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise CLIError(f"--output {path}: directory {directory} is not writable")


def _estimator_class():
    from .estimators import MLPClassifier
    return MLPClassifier


def _make_estimator(args, comm=None):
    cls = _estimator_class()
    params = dict(hidden_layer_sizes=args.hidden, activation=args.activation,
                  solver=args.solver, alpha=args.alpha, batch_size=args.batch_size,
                  learning_rate_init=args.lr, max_iter=args.epochs, tol=args.tol,
                  random_state=args.seed, verbose=not args.quiet)
    if comm is not None:
        params["comm"] = comm
    if args.threads is not None and "n_threads" in inspect.signature(cls).parameters:
        params["n_threads"] = args.threads
    return cls(**params)


@contextlib.contextmanager
def _no_convergence_warning():
    """Running out of epochs is what the user asked for: don't warn about it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if w.category.__name__ != "ConvergenceWarning":
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _mpi_comm():
    """MPI.COMM_WORLD when mpiexec started more than one rank, else None."""
    from . import distributed
    if not distributed.launched_by_mpi():
        return None
    try:
        comm = distributed.world()
    except ImportError as exc:
        raise CLIError(f"started by an MPI launcher, but {exc}") from None
    return comm if comm.Get_size() > 1 else None


def _train(args):
    """Under mpiexec every rank trains (fastnn.distributed); only rank 0
    prints and saves the model, which is the same on every rank."""
    comm = _mpi_comm()
    if comm is None or comm.Get_rank() == 0:
        return _train_rank(args, comm)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return _train_rank(args, comm)


def _train_rank(args, comm):
    from . import _config, distributed, io

    _check_output(args.output)
    X, y, source = _load_data(args.data)
    classes = np.unique(y)
    if len(classes) < 2:
        raise CLIError(f"{source}: the labels hold a single class ({classes[0]!r}); "
                       "a classifier needs at least two")
    if args.test_size > 0:
        train_idx, test_idx = _stratified_split(y, args.test_size, args.seed)
        if len(test_idx) == 0:
            raise CLIError(f"{source}: too few samples for a {args.test_size} test split; "
                           "pass a larger --test-size, or 0 to train on everything")
    else:
        train_idx, test_idx = np.arange(len(y)), np.arange(0)
    X_train, y_train, X_test, y_test = X[train_idx], y[train_idx], X[test_idx], y[test_idx]
    if isinstance(args.batch_size, int):   # a batch can't be larger than the data
        args.batch_size = min(args.batch_size, len(y_train))

    if (comm is not None and args.threads is None
            and not {"FASTNN_NUM_THREADS", "OMP_NUM_THREADS"} & set(os.environ)):
        args.threads = distributed.default_threads(comm)  # don't oversubscribe the cores
    threads = (_config.num_threads(args.threads) if args.threads is not None
               else contextlib.nullcontext())
    with threads:
        model = _make_estimator(args, comm)
        if not args.quiet:
            print(f"fastnn {__version__} {type(model).__name__}: hidden layers {args.hidden}, "
                  f"{args.activation}, {args.solver} lr={args.lr:g}, batch size "
                  f"{args.batch_size}, alpha={args.alpha:g}, up to {args.epochs} epochs, "
                  f"seed {args.seed}, {_config.get_num_threads()} threads"
                  + (f" x {comm.Get_size()} MPI ranks" if comm is not None else ""))
            print(f"data: {source}: {len(y)} samples, {X.shape[1]} features, "
                  f"{len(classes)} classes; {len(y_train)} train / {len(y_test)} test "
                  f"(stratified, seed {args.seed})")
            sys.stdout.flush()
        with _no_convergence_warning(), distributed.abort_on_error(comm):
            start = time.perf_counter()
            model.fit(X_train, y_train)
            fit_time = time.perf_counter() - start
        train_acc = model.score(X_train, y_train)
        test_acc = model.score(X_test, y_test) if len(y_test) else None

    print(f"epochs: {model.n_iter_}, fit time: {fit_time:.2f} s, "
          f"throughput: {model.n_iter_ * len(y_train) / fit_time:,.0f} samples/s")
    print(f"train accuracy: {100 * train_acc:.2f}%")
    if test_acc is not None:
        print(f"test accuracy: {100 * test_acc:.2f}%")
    if not distributed.is_root(comm):
        return 0
    try:
        io.save(model, args.output)
    except OSError as exc:
        print(f"fastnn: error: cannot save the model to {args.output}: {exc}", file=sys.stderr)
        return 1
    print(f"model saved to {args.output}")
    return 0


def _info(args):
    from . import _config

    _config.show_config()
    return 0


def _bench(args):
    from .bench import run
    return run(args)


def main(argv=None):
    """Entry point of ``python -m fastnn`` and the ``fastnn`` script; returns
    the exit code (0 success, 2 bad arguments or data, 1 failure to save)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code
    try:
        return args.handler(args)
    except CLIError as exc:
        print(f"fastnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastnn: interrupted", file=sys.stderr)
        return 130
