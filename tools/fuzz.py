#!/usr/bin/env python
"""Crash-isolation fuzzer of fastnn's public API.

    python tools/fuzz.py --calls 100000 --seed 0      # fuzz, report, exit 1 on any finding
    python tools/fuzz.py --seed 0 --replay 1234       # rerun call 1234 in this process

A parent process runs the calls in a child process.  Each call picks a
function of ``fastnn.functional`` or an object of ``fastnn.nn`` (layers,
losses, a training step) and feeds it random arguments: shapes (including
empty and mismatched ones), dtypes (float32/64, integers, bool, float16,
complex, object), layouts (C, F, strided, read-only), values (+-0,
subnormals, +-1e30, +-inf, NaN), keyword arguments (valid and invalid) and
non-array junk.  The documented exceptions (TypeError, ValueError; and
RuntimeError for a layer's backward before its forward) are expected; any
other exception type is recorded with its repr.  A child that dies (signal,
non-zero exit) or stops making progress is a crash: it is reported with the
seed and the call number, and fuzzing resumes after that call.  Call i
draws everything from ``numpy.random.default_rng([seed, i])``, so every
finding replays alone.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

EXPECTED = (TypeError, ValueError)
HANG_SECONDS = 120

# ---------------------------------------------------------------------------
# random arguments
# ---------------------------------------------------------------------------
DTYPES = [np.float32, np.float64] * 5 + [np.int64, np.int32, np.uint8, np.bool_, np.float16,
                                         np.complex64, object]
LAYOUTS = ["C"] * 4 + ["F", "strided", "readonly"]
SPECIALS = [0.0, -0.0, 1e-45, -1e-45, 5e-324, 1e-310, 1e30, -1e30, np.inf, -np.inf, np.nan]
JUNK = [None, 1.5, "abc", [[1, 2], [3]], object(), np.float64(2.0), (), [], b"xx", 1j]
NAMES = ["identity", "sigmoid", "tanh", "relu", "leaky_relu"] * 3 + ["softplus", None, 3, ""]


class Gen:
    """Random arguments of one call."""

    def __init__(self, rng):
        self.rng = rng

    def pick(self, options):
        return options[self.rng.integers(len(options))]

    def chance(self, p):
        return self.rng.random() < p

    def dim(self):
        return 0 if self.chance(0.04) else int(self.rng.integers(1, 40))

    def shape(self, shape):
        """Usually ``shape``; sometimes a random one (wrong ndim or sizes)."""
        if self.chance(0.08):
            return tuple(int(d) for d in self.rng.integers(0, 6, self.rng.integers(0, 4)))
        return shape

    def array(self, shape, unit=False):
        if self.chance(0.03):
            return self.pick(JUNK)
        shape = self.shape(shape)
        dtype = self.pick(DTYPES)
        rng = self.rng
        if dtype is np.bool_:
            x = rng.random(shape) < 0.5
        elif np.dtype(dtype).kind in "iu":
            x = rng.integers(-3 if self.chance(0.2) else 0, 5, shape)
        else:
            x = rng.random(shape) if unit else rng.standard_normal(shape) * self.pick([1, 1, 30])
            if self.chance(0.3):
                mask = rng.random(shape) < self.pick([0.05, 0.5, 1.0])
                x[mask] = rng.choice(SPECIALS, int(mask.sum()))
        with np.errstate(all="ignore"):
            x = np.asarray(x).astype(dtype)
        return self.layout(x)

    def layout(self, x):
        kind = self.pick(LAYOUTS)
        if kind == "F":
            return np.asfortranarray(x)
        if kind == "strided" and x.ndim:
            buf = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
            buf[..., ::2] = x
            return buf[..., ::2]
        if kind == "readonly":
            x = x.copy()
            x.flags.writeable = False
        return x

    def out(self, shape):
        """None mostly; else a buffer of a random dtype, layout or shape."""
        if self.chance(0.6):
            return None
        return self.layout(np.full(self.shape(shape), np.nan, self.pick([np.float32, np.float64,
                                                                          np.float64, np.int64])))

    def scalar(self, valid):
        return self.pick(valid) if self.chance(0.95) else self.pick(
            [-1.0, np.nan, np.inf, "x", None, True, 1j, 10**30, -0.0, [1.0]])

    def sample_weight(self, n):
        return None if self.chance(0.6) else self.array((n,), unit=True)

    def sparse(self, shape):
        """A scipy.sparse matrix or array of ``shape`` (sometimes another
        one), any format and value dtype, int32 or int64 indices, sometimes
        with a corrupted structure (the kernels must refuse it); or, now and
        then, a dense array (which the sparse functions refuse)."""
        import scipy.sparse as sp

        x = self.array(shape)
        if self.chance(0.1):
            return x
        try:
            X = self.pick([sp.csr_matrix, sp.csr_array, sp.csc_matrix, sp.coo_matrix])(
                np.where(self.rng.random(np.shape(x)) < 0.7, 0, x))
        except Exception:   # noqa: BLE001 - junk that scipy refuses: pass it on as is
            return x
        if X.format != "csr" or X.nnz == 0:
            return X
        index = self.pick([np.int32, np.int64])
        X.indices, X.indptr = X.indices.astype(index), X.indptr.astype(index)
        if self.chance(0.2):
            which = self.pick(["indices", "indptr"])
            arr = getattr(X, which)
            arr[self.rng.integers(len(arr))] = self.pick([-1, 10 ** 6, X.shape[-1], -(2 ** 31),
                                                         len(X.data) + 1])
        return X

    def labels(self, n, c):
        if self.chance(0.5):
            return self.array((n, c), unit=True)
        t = self.rng.integers(-1 if self.chance(0.1) else 0, c + (1 if self.chance(0.1) else 0),
                              n)
        return self.layout(t.astype(self.pick([np.int64, np.int32, np.uint8, np.float64,
                                               np.float32, np.float16])))


# ---------------------------------------------------------------------------
# the calls: each takes a Gen and returns (description, thunk) or runs itself
# ---------------------------------------------------------------------------
def _functional_calls(F):
    def softmax(g):
        n, c = g.dim(), g.dim()
        fn = g.pick([F.softmax, F.log_softmax])
        return fn, (g.array((n, c)),), dict(out=g.out((n, c)))

    def activation_forward(g):
        shape = g.pick([(g.dim(),), (g.dim(), g.dim()), (2, g.dim(), 3)])
        z = g.array(shape)
        out = z if g.chance(0.2) else g.out(shape)
        return F.activation_forward, (z, g.pick(NAMES)), dict(alpha=g.scalar([0.01, 0.3]),
                                                              out=out)

    def activation_backward(g):
        shape = (g.dim(), g.dim())
        grad = g.array(shape)
        out = grad if g.chance(0.2) else g.out(shape)
        return F.activation_backward, (g.array(shape), grad, g.pick(NAMES)), dict(
            alpha=g.scalar([0.01, 0.3]), out=out)

    def losses(g):
        n, c = g.dim(), g.dim()
        kw = dict(sample_weight=g.sample_weight(n),
                  reduction=g.scalar(["mean", "sum", "none"]), out=g.out((n, c)))
        which = g.pick(["xent", "bce", "mse", "poisson"])
        if which == "xent":
            kw["label_smoothing"] = g.scalar([0.0, 0.0, 0.1])
            return F.softmax_cross_entropy, (g.array((n, c)), g.labels(n, c)), kw
        shape = g.pick([(n,), (n, c)])
        kw["out"] = g.out(shape)
        fn = {"bce": F.binary_cross_entropy_with_logits, "mse": F.mse_loss,
              "poisson": F.poisson_loss}[which]
        # unit targets for Poisson too: mostly valid (>= 0), then special values
        return fn, (g.array(shape), g.array(shape, unit=which in ("bce", "poisson"))), kw

    def dense_forward(g):
        n, i, o = g.dim(), g.dim(), g.dim()
        b = None if g.chance(0.3) else g.array((o,))
        return F.dense_forward, (g.array((n, i)), g.array((i, o)), b, g.pick(NAMES)), dict(
            alpha=g.scalar([0.01]), out=g.out((n, o)))

    def dense_backward(g):
        n, i, o = g.dim(), g.dim(), g.dim()
        out = None
        if g.chance(0.3):
            out = (None if g.chance(0.3) else g.out((n, i)), g.out((i, o)), g.out((o,)))
            if g.chance(0.1):
                out = out[:2]
        return F.dense_backward, (g.array((n, i)), g.array((i, o)), g.array((n, o)),
                                  g.array((n, o)), g.pick(NAMES)), dict(
            alpha=g.scalar([0.01]), need_input_grad=g.pick([True, False, 0, "yes"]), out=out,
            overwrite_grad_out=g.chance(0.3))

    def sparse_dense(g):
        n, i, o = g.dim(), g.dim(), g.dim()
        X = g.sparse((n, i))
        W, b = g.array((i, o)), None if g.chance(0.3) else g.array((o,))
        if g.chance(0.5):
            return F.sparse_dense_forward, (X, W, b, g.pick(NAMES)), dict(
                alpha=g.scalar([0.01]), out=g.out((n, o)))
        out = None if g.chance(0.6) else (g.out((i, o)), g.out((o,)))
        return F.sparse_dense_backward, (X, W, g.array((n, o)), g.array((n, o)),
                                         g.pick(NAMES)), dict(
            alpha=g.scalar([0.01]), out=out, overwrite_grad_out=g.chance(0.3))

    def logistic(g):
        n, d = g.dim(), g.dim()
        return F.logistic_loss_grad, (g.array((n, d)), g.array((d,)), g.scalar([0.0, 1.5, -2]),
                                      g.array((n,), unit=True)), dict(
            sample_weight=g.sample_weight(n), out=g.out((d,)))

    def state(g, shape):
        return np.zeros(shape, g.pick([np.float32, np.float64])) if g.chance(0.7) else \
            g.array(shape)

    def sgd(g):
        shape = g.pick([(g.dim(),), (g.dim(), g.dim())])
        velocity = None if g.chance(0.4) else state(g, shape)
        return F.sgd_step, (state(g, shape), g.array(shape), velocity), dict(
            lr=g.scalar([0.0, 0.01, 1.0]), momentum=g.scalar([0.0, 0.9]),
            nesterov=g.chance(0.5), l2=g.scalar([0.0, 1e-4]), l1=g.scalar([0.0, 1e-4]))

    def adam(g):
        shape = g.pick([(g.dim(),), (g.dim(), g.dim())])
        return F.adam_step, (state(g, shape), g.array(shape), state(g, shape), state(g, shape)), \
            dict(lr=g.scalar([1e-3]), step=g.scalar([1, 2, 100]), beta1=g.scalar([0.9, 0.0]),
                 beta2=g.scalar([0.999]), eps=g.scalar([1e-8]), l2=g.scalar([0.0, 1e-4]),
                 l1=g.scalar([0.0, 1e-4]), weight_decay=g.scalar([0.0, 0.01]))

    return [softmax, activation_forward, activation_backward, losses, losses, dense_forward,
            dense_backward, sparse_dense, logistic, sgd, adam]


def _nn_calls(nn, optim):
    """Sequences on fastnn.nn objects; each returns the list of steps run."""
    def layer(g):
        n_in = g.scalar([g.dim(), g.dim(), 3]) if g.chance(0.9) else g.dim()
        kind = g.pick(["dense", "dense", "relu", "sigmoid", "tanh", "leaky", "identity",
                       "dropout"])
        if kind == "dense":
            return nn.Dense(n_in, g.scalar([g.dim(), 4]), g.pick(NAMES),
                            alpha=g.scalar([0.01]), bias=g.chance(0.7),
                            dtype=g.scalar([np.float32, np.float64, "float32"]), rng=0), n_in
        if kind == "dropout":
            return nn.Dropout(g.scalar([0.0, 0.5]), rng=0), n_in
        if kind == "leaky":
            return nn.LeakyReLU(g.scalar([0.01])), n_in
        return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                "identity": nn.Identity}[kind](), n_in

    def layer_pass(g):
        mod, n_in = layer(g)
        n = g.dim()
        width = n_in if isinstance(n_in, int) else 3
        steps = []
        if g.chance(0.9):
            steps.append(("forward", lambda: mod.forward(g.array((n, width)))))
        out_width = getattr(mod, "n_out", width)
        steps.append(("backward", lambda: mod.backward(
            g.array((n, out_width if isinstance(out_width, int) else 3)),
            need_input_grad=g.chance(0.7), overwrite_grad=g.chance(0.3))))
        return steps

    def loss_pass(g):
        n, c = g.dim(), g.dim()
        loss = g.pick([nn.SoftmaxCrossEntropy, nn.BinaryCrossEntropyWithLogits, nn.MSELoss,
                       nn.PoissonLoss])()
        target = g.labels(n, c) if isinstance(loss, nn.SoftmaxCrossEntropy) else \
            g.array(g.pick([(n, c), (n,)]), unit=True)
        steps = []
        if g.chance(0.9):
            steps.append(("forward", lambda: loss.forward(g.array((n, c)), target,
                                                          g.sample_weight(n))))
        steps.append(("backward", loss.backward))
        return steps

    def training(g):
        n, d, k = g.dim(), int(g.rng.integers(1, 8)), int(g.rng.integers(1, 5))
        dtype = g.pick([np.float32, np.float64])
        model = nn.Sequential(nn.Dense(d, 8, g.pick(NAMES[:5]), dtype=dtype, rng=1),
                              nn.Dropout(0.1, rng=2), nn.Dense(8, k, dtype=dtype, rng=3))
        loss = g.pick([nn.SoftmaxCrossEntropy, nn.MSELoss])()
        opt = g.pick([optim.SGD, optim.Adam])(model.parameters(), lr=g.scalar([0.01]))
        y = g.labels(n, k) if isinstance(loss, nn.SoftmaxCrossEntropy) else g.array((n, k))
        X = g.array((n, d))
        return [("train_step", lambda: nn.train_step(model, loss, opt, X, y))
                for _ in range(2)]

    return [layer_pass, layer_pass, loss_pass, training]


def _describe(value):
    if isinstance(value, np.ndarray):
        flags = "" if value.flags.c_contiguous else " non-C"
        flags += "" if value.flags.writeable else " readonly"
        return f"array{value.shape}:{value.dtype}{flags}"
    if isinstance(value, (tuple, list)) and len(value) <= 4:
        return type(value)(_describe(v) for v in value)
    return repr(value)[:40]


class Fuzzer:
    def __init__(self, seed):
        import fastnn
        from fastnn import functional, nn, optim

        self.seed = seed
        self.fastnn = fastnn
        self.functional_calls = _functional_calls(functional)
        self.nn_calls = _nn_calls(nn, optim)

    def call(self, i):
        """Run call ``i``; returns None or a finding (dict) for an unexpected exception."""
        g = Gen(np.random.default_rng([self.seed, i]))
        if g.chance(0.75):
            make = g.pick(self.functional_calls)
            try:
                fn, args, kwargs = make(g)
            except EXPECTED:
                return None
            what = f"{fn.__name__}{_describe(args)} {_describe(kwargs)}"
            steps = [(what, lambda: fn(*args, **kwargs))]
            allowed = EXPECTED
        else:
            make = g.pick(self.nn_calls)
            what = make.__name__
            try:
                steps = make(g)
            except EXPECTED:
                return None  # the constructor refused its arguments
            allowed = EXPECTED + (RuntimeError,)  # backward before forward
        for name, step in steps:
            try:
                step()
            except allowed:
                pass
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is for
                return {"call": i, "what": f"{what}: {name}"[:400], "exception": repr(exc)[:400]}
        return None


# ---------------------------------------------------------------------------
# child and parent
# ---------------------------------------------------------------------------
def run_child(seed, start, stop, progress):
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    fuzzer = Fuzzer(seed)
    fd = os.open(progress, os.O_WRONLY)
    for i in range(start, stop):
        os.pwrite(fd, b"%12d\n" % i, 0)  # the call in progress, read after a crash
        finding = fuzzer.call(i)
        if finding:
            print(json.dumps(finding), flush=True)
    os.pwrite(fd, b"%12d\n" % stop, 0)


def _read_progress(path):
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_parent(seed, calls, hang_seconds):
    crashes, unexpected = [], []
    start, t0 = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        progress, output = Path(tmp) / "progress", Path(tmp) / "out"
        while start < calls:
            progress.write_text(f"{start:12d}\n")
            with open(output, "w") as out, open(Path(tmp) / "err", "w") as err:
                proc = subprocess.Popen([sys.executable, __file__, "--child", "--seed", str(seed),
                                         "--start", str(start), "--stop", str(calls),
                                         "--progress", str(progress)], stdout=out, stderr=err)
                last, last_change, hung = start, time.monotonic(), False
                while proc.poll() is None:
                    time.sleep(0.2)
                    now = _read_progress(progress)
                    if now != last:
                        last, last_change = now, time.monotonic()
                    elif time.monotonic() - last_change > hang_seconds:
                        proc.kill()
                        proc.wait()
                        hung = True
            for line in output.read_text().splitlines():
                if line.startswith("{"):
                    unexpected.append(json.loads(line))
            if proc.returncode == 0:
                break
            at = _read_progress(progress)
            at = start if at is None else at
            code = proc.returncode
            how = ("hang" if hung else f"signal {signal.Signals(-code).name}" if code < 0
                   else f"exit code {code}")
            crashes.append({"call": at, "how": how,
                            "stderr": (Path(tmp) / "err").read_text()[-2000:]})
            start = at + 1
    return crashes, unexpected, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=int, help="run this call number in-process")
    parser.add_argument("--hang-seconds", type=float, default=HANG_SECONDS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--progress", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_child(args.seed, args.start, args.stop, args.progress)
        return 0
    if args.replay is not None:
        np.seterr(all="ignore")
        finding = Fuzzer(args.seed).call(args.replay)
        print(f"call {args.replay} (seed {args.seed}):", json.dumps(finding) if finding
              else "only documented exceptions or success")
        return 1 if finding else 0

    crashes, unexpected, seconds = run_parent(args.seed, args.calls, args.hang_seconds)
    print(f"fuzz: seed {args.seed}, {args.calls} calls in {seconds:.1f} s; "
          f"{len(crashes)} crashes, {len(unexpected)} unexpected exceptions")
    for c in crashes:
        print(f"CRASH at call {c['call']} ({c['how']}); replay: python tools/fuzz.py "
              f"--seed {args.seed} --replay {c['call']}\n{c['stderr']}")
    for u in unexpected[:50]:
        print(f"UNEXPECTED at call {u['call']}: {u['exception']} in {u['what']}; replay: "
              f"python tools/fuzz.py --seed {args.seed} --replay {u['call']}")
    return 1 if crashes or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
