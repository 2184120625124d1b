"""The standard workloads of WORKLOADS.md, shared by ``python -m fastnn
bench`` (:mod:`fastnn.bench.report`) and the pytest benchmarks in the source
tree's ``benchmarks/``.

Every (workload, shape, implementation) becomes a ``Case``: ``run()`` is the
timed work, ``reset()`` (untimed) restores the starting state so that every
repeat does the same work, ``result()`` returns what is compared with the
NumPy reference (``check_agreement``), so a peer can never be fast and wrong.
All peers of one workload and shape run on the same arrays (``make_data``).

PyTorch and scikit-learn are optional peers: ``implementations`` lists only
those that are installed.  Neither is a dependency of fastnn.
"""
import contextlib
import functools
import os
import warnings
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

import fastnn
import fastnn.functional as F
import fastnn.reference as R
from fastnn import nn, optim
from fastnn.bench import WORKLOADS

try:
    import torch
except ImportError:  # optional peer
    torch = None
try:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SklearnMLP
except ImportError:  # optional peer
    SklearnMLP = None

SEED = 0
DTYPE = np.float32
QUICK = os.environ.get("FASTNN_BENCH_QUICK", "") not in ("", "0")

MLP_SAMPLES, MLP_FEATURES, MLP_HIDDEN, MLP_CLASSES = 60000, 784, (256, 128), 10
MLP_LR = 0.05
LOGREG_ITERS, LOGREG_LR = 100, 0.1


class Epoch(NamedTuple):
    """mlp_epoch: the minibatch size, and the samples of the "epoch" (all
    60000 in the standard workload; fewer, labelled, in the quick run)."""
    batch: int
    samples: int = MLP_SAMPLES


class GD(NamedTuple):
    """logreg_gd: N x D data and the number of gradient-descent iterations."""
    n: int
    d: int
    iters: int = LOGREG_ITERS


# (N, C) / (N, in, out) / Epoch / GD, as in WORKLOADS.md
SHAPES = {
    "softmax_xent": [(128, 10), (1024, 1000), (65536, 10), (8192, 1000)],
    "dense": [(32, 784, 256), (128, 784, 256), (128, 256, 10), (1024, 1024, 1024),
              (4096, 512, 512)],
    "mlp_epoch": [Epoch(32), Epoch(128), Epoch(512)],
    "logreg_gd": [GD(100000, 128)],
}
# quick: the small shapes, one tenth of an mlp_epoch epoch and of the logreg
# iterations (labelled as such by shape_id: never passed off as the full work)
QUICK_SHAPES = {
    "softmax_xent": [(128, 10), (1024, 1000), (8192, 1000)],
    "dense": [(128, 784, 256), (128, 256, 10)],
    "mlp_epoch": [Epoch(128, MLP_SAMPLES // 10)],
    "logreg_gd": [GD(100000, 128, LOGREG_ITERS // 10)],
}
# smoke: toy sizes that run in a second, for the test suite (tests/test_bench.py)
SMOKE_SHAPES = {
    "softmax_xent": [(16, 10), (32, 1000)],
    "dense": [(8, 16, 12)],
    "mlp_epoch": [Epoch(32, 256)],
    "logreg_gd": [GD(512, 16, 5)],
}
assert tuple(SHAPES) == WORKLOADS == tuple(QUICK_SHAPES) == tuple(SMOKE_SHAPES)


def shape_id(shape):
    """A short label of a shape; one that is less than the standard work says so."""
    if isinstance(shape, Epoch):
        label = f"batch{shape.batch}"
        if shape.samples != MLP_SAMPLES:
            label += f", {shape.samples} samples ({shape.samples / MLP_SAMPLES:.2g} epoch)"
        return label
    if isinstance(shape, GD):
        label = f"{shape.n}x{shape.d}"
        if shape.iters != LOGREG_ITERS:
            label += f", {shape.iters} iterations"
        return label
    return "x".join(map(str, shape))


def thread_counts():
    """1 and all the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return sorted({1, cores})


@contextlib.contextmanager
def threads(n):
    """Give every peer the same budget of ``n`` threads: fastnn's, PyTorch's
    and the BLAS/OpenMP pools of NumPy and SciPy (used by the reference and
    scikit-learn)."""
    previous_torch = torch.get_num_threads() if torch is not None else None
    with fastnn.num_threads(n), threadpool_limits(n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield n
        finally:
            if torch is not None:
                torch.set_num_threads(previous_torch)


def gflop(workload, shape):
    """Floating-point work of one call (dense: 6·N·in·out; mlp_epoch: its
    matrix products), or None."""
    if workload == "dense":
        n, n_in, n_out = shape
        return 6e-9 * n * n_in * n_out
    if workload == "mlp_epoch":
        # forward A W and backward A^T Δ for every layer, Δ W^T for all but the
        # first (no gradient w.r.t. the input)
        sizes = (MLP_FEATURES, *MLP_HIDDEN, MLP_CLASSES)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        per_sample = sum(6 * a * b for a, b in pairs) - 2 * pairs[0][0] * pairs[0][1]
        return 1e-9 * per_sample * shape.samples
    return None


def _fastnn_estimator():
    """fastnn.MLPClassifier when the estimators module exists (it is written
    in parallel with these benchmarks), else None."""
    try:
        return getattr(fastnn, "MLPClassifier", None)
    except ImportError:
        return None


PEERS = {
    "softmax_xent": ("fastnn", "reference", "torch"),
    "dense": ("fastnn", "reference", "torch", "fastnn.bf16", "torch.bf16"),
    "mlp_epoch": ("fastnn", "reference", "torch", "sklearn", "fastnn.MLPClassifier",
                  "fastnn.bf16", "torch.bf16"),
    "logreg_gd": ("fastnn", "reference", "torch"),
}


def missing_reason(impl):
    """Why peer ``impl`` cannot run here, or None when it can."""
    if impl in ("torch", "torch.bf16") and torch is None:
        return "PyTorch is not installed (optional peer: pip install torch)"
    if impl == "sklearn" and SklearnMLP is None:
        return "scikit-learn is not installed (optional peer: pip install scikit-learn)"
    if impl == "fastnn.MLPClassifier" and _fastnn_estimator() is None:
        return "fastnn.MLPClassifier is not available in this build"
    return None


def implementations(workload):
    """Names of the peers available for ``workload``, fastnn first."""
    return [impl for impl in PEERS[workload] if missing_reason(impl) is None]


class Case:
    def __init__(self, run, result, reset=None):
        # reset must return None: pytest-benchmark's pedantic setup= reads a
        # returned value as the arguments of the timed call
        self.run = run
        self.result = result
        self.reset = reset or (lambda: None)


# ---------------------------------------------------------------------------
# data, generated once per shape and shared by all peers
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def make_data(workload, shape):
    rng = np.random.default_rng(SEED)
    if workload == "softmax_xent":
        n, c = shape
        logits = rng.standard_normal((n, c), dtype=DTYPE) * DTYPE(3)
        labels = rng.integers(0, c, n, dtype=np.int64)
        return {"logits": logits, "labels": labels}
    if workload == "dense":
        n, n_in, n_out = shape
        X = rng.standard_normal((n, n_in), dtype=DTYPE)
        W = (rng.standard_normal((n_in, n_out), dtype=DTYPE) / np.sqrt(n_in)).astype(DTYPE)
        b = rng.standard_normal(n_out, dtype=DTYPE) * DTYPE(0.1)
        dY = rng.standard_normal((n, n_out), dtype=DTYPE)
        # A pre-activation within rounding of 0 could be on either side of the
        # ReLU kink in two correct implementations; zero the incoming gradient
        # there so that the outputs of all peers agree to rounding.
        Z = X.astype(np.float64) @ W + b
        dY[np.abs(Z) < 1e-4 * Z.std()] = 0
        return {"X": X, "W": W, "b": b, "dY": dY}
    if workload == "mlp_epoch":
        return _mlp_data(shape.samples)
    if workload == "logreg_gd":
        n, d = shape.n, shape.d
        X = rng.standard_normal((n, d), dtype=DTYPE)
        w_true = rng.standard_normal(d) / np.sqrt(d)
        t = (X @ w_true + 0.5 * rng.standard_normal(n) > 0).astype(DTYPE)
        return {"X": X, "t": t}
    raise ValueError(f"unknown workload {workload!r}")


@functools.lru_cache(maxsize=1)
def _mlp_data(samples):
    """``samples`` x 784 (60000 in the standard workload) Gaussian inputs labelled by a fixed random teacher network
    (784-64-10, tanh), the initial weights of the student 784-256-128-10
    (scikit-learn's initialisation, biases 0) and the shuffled sample order
    that fastnn.nn.fit draws with rng=SEED, so that the fastnn, reference and
    torch peers do exactly the same epoch."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((samples, MLP_FEATURES), dtype=DTYPE)
    T1 = rng.standard_normal((MLP_FEATURES, 64)) / np.sqrt(MLP_FEATURES)
    T2 = rng.standard_normal((64, MLP_CLASSES)) * 2 / np.sqrt(64)
    y = np.argmax(np.tanh(X @ T1) @ T2, axis=1).astype(np.int64)
    model = _fastnn_mlp()
    order = np.arange(samples)
    np.random.default_rng(SEED).shuffle(order)
    return {"X": X, "y": y, "init": model.state_dict(), "order": order}


def _fastnn_mlp():
    sizes = (MLP_FEATURES, *MLP_HIDDEN, MLP_CLASSES)
    layers = [nn.Dense(a, b, "relu" if i < len(sizes) - 2 else "identity", rng=SEED + i)
              for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------
# softmax_xent: mean loss and its gradient w.r.t. the logits
# ---------------------------------------------------------------------------
def _softmax_xent(impl, data):
    z, y = data["logits"], data["labels"]
    state = {}
    if impl in ("fastnn", "reference"):
        mod = F if impl == "fastnn" else R
        # fastnn writes the gradient into a reused buffer, as its loss layer does
        grad = np.empty_like(z) if impl == "fastnn" else None

        def run():
            state["out"] = mod.softmax_cross_entropy(z, y, out=grad)
        return Case(run, lambda: state["out"])
    if impl == "torch":
        zt = torch.from_numpy(z).requires_grad_(True)
        yt = torch.from_numpy(y)

        def run():
            zt.grad = None
            loss = torch.nn.functional.cross_entropy(zt, yt)
            loss.backward()
            state["loss"] = loss
        return Case(run, lambda: (state["loss"].item(), zt.grad.numpy()))
    raise KeyError(impl)


# ---------------------------------------------------------------------------
# dense: Y = relu(X W + b), then dX, dW, db from dY
# ---------------------------------------------------------------------------
def _dense(impl, data):
    X, W, b, dY = data["X"], data["W"], data["b"], data["dY"]
    state = {}
    if impl in ("fastnn", "fastnn.bf16"):
        # reused output buffers, as fastnn.nn.Dense uses the kernels
        Y = np.empty((X.shape[0], W.shape[1]), DTYPE)
        bufs = (np.empty_like(X), np.empty_like(W), np.empty_like(b))
        compute = "bfloat16" if impl == "fastnn.bf16" else None

        def run():
            F.dense_forward(X, W, b, "relu", out=Y, compute_dtype=compute)
            state["grads"] = F.dense_backward(X, W, Y, dY, "relu", out=bufs,
                                              compute_dtype=compute)
        return Case(run, lambda: (Y, *state["grads"]))
    if impl in ("reference", "reference.bf16"):     # the latter: the bf16 peers' check
        compute = "bfloat16" if impl == "reference.bf16" else None

        def run():
            state["Y"] = Y = R.dense_forward(X, W, b, "relu", compute_dtype=compute)
            state["grads"] = R.dense_backward(X, W, Y, dY, "relu", compute_dtype=compute)
        return Case(run, lambda: (state["Y"], *state["grads"]))
    if impl in ("torch", "torch.bf16"):
        Xt = torch.from_numpy(X).requires_grad_(True)
        Wt = torch.from_numpy(np.ascontiguousarray(W.T)).requires_grad_(True)  # (out, in)
        bt = torch.from_numpy(b).requires_grad_(True)
        dYt = torch.from_numpy(dY)
        autocast = _autocast(impl)

        def run():
            Xt.grad = Wt.grad = bt.grad = None
            with autocast():
                Yt = torch.relu(torch.nn.functional.linear(Xt, Wt, bt))
            Yt.float().backward(dYt)
            state["Y"] = Yt.float()
        return Case(run, lambda: (state["Y"].detach().numpy(), Xt.grad.numpy(),
                                  Wt.grad.numpy().T, bt.grad.numpy()))
    raise KeyError(impl)


# ---------------------------------------------------------------------------
# mlp_epoch: one epoch of minibatch SGD, MLP 784-256-128-10
# ---------------------------------------------------------------------------
def _mlp_epoch(impl, data, batch):
    X, y, init, order = data["X"], data["y"], data["init"], data["order"]
    state = {}
    if impl in ("fastnn", "fastnn.bf16"):
        model = _fastnn_mlp()
        if impl == "fastnn.bf16":
            model.compute_dtype = "bfloat16"
        loss = nn.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=MLP_LR, momentum=0.0)

        def run():
            state["loss"] = nn.fit(model, loss, opt, X, y, epochs=1, batch_size=batch,
                                   shuffle=True, rng=SEED)[0]
        return Case(run, lambda: (state["loss"], _updates(model.state_dict(), init)),
                    lambda: model.load_state_dict(init))
    if impl == "reference":
        params = {k: v.copy() for k, v in init.items()}

        def run():
            state["loss"] = numpy_epoch(params, X, y, order, batch, MLP_LR)
        def reset():
            for k, v in init.items():
                np.copyto(params[k], v)
        return Case(run, lambda: (state["loss"], _updates(params, init)), reset)
    if impl in ("torch", "torch.bf16"):
        return _torch_epoch(X, y, init, order, batch, _autocast(impl))
    if impl in ("sklearn", "fastnn.MLPClassifier"):
        cls = SklearnMLP if impl == "sklearn" else _fastnn_estimator()
        clf = cls(hidden_layer_sizes=MLP_HIDDEN, activation="relu", solver="sgd",
                  learning_rate_init=MLP_LR, momentum=0.0, alpha=0.0, batch_size=batch,
                  max_iter=1, shuffle=True, random_state=SEED)

        def run():
            with warnings.catch_warnings():  # max_iter=1 always "fails to converge"
                warnings.simplefilter("ignore", ConvergenceWarning if SklearnMLP else Warning)
                clf.fit(X, y)
        # own initialisation and shuffle: compared by its epoch loss only
        return Case(run, lambda: (clf.loss_curve_[0], None))
    raise KeyError(impl)


def _updates(params, init):
    """What the epoch changed in each parameter, in a fixed order."""
    return [params[k] - init[k] for k in sorted(init)]


def numpy_epoch(params, X, y, order, batch, lr):
    """One SGD epoch of the MLP in careful NumPy: minibatches gathered into
    reused buffers, products written in place, no per-step allocation beyond
    NumPy's temporaries.  Returns the mean training loss of the epoch."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in
                              ("0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"))
    n = X.shape[0]
    batch = min(batch, n)
    xb = np.empty((batch, X.shape[1]), X.dtype)
    H1 = np.empty((batch, W1.shape[1]), X.dtype)
    H2 = np.empty((batch, W2.shape[1]), X.dtype)
    Z3 = np.empty((batch, W3.shape[1]), X.dtype)
    D2, D1 = np.empty_like(H2), np.empty_like(H1)
    dW1, dW2, dW3 = np.empty_like(W1), np.empty_like(W2), np.empty_like(W3)
    rows = np.arange(batch)
    total = 0.0
    for start in range(0, n, batch):
        idx = order[start:start + batch]
        m = idx.shape[0]
        x = np.take(X, idx, axis=0, out=xb[:m])
        t = y[idx]
        r = rows[:m]
        h1 = np.matmul(x, W1, out=H1[:m])
        h1 += b1
        np.maximum(h1, 0, out=h1)
        h2 = np.matmul(h1, W2, out=H2[:m])
        h2 += b2
        np.maximum(h2, 0, out=h2)
        z = np.matmul(h2, W3, out=Z3[:m])
        z += b3
        # softmax cross-entropy, stable: loss = log(sum exp(z - max)) - (z - max)[t]
        z -= z.max(axis=1, keepdims=True)
        z_t = z[r, t]
        np.exp(z, out=z)
        s = z.sum(axis=1, keepdims=True)
        total += float(np.sum(np.log(s[:, 0]) - z_t, dtype=np.float64))
        z /= s
        z[r, t] -= 1
        z /= m                                   # d3 = (p - onehot) / m
        d2 = np.matmul(z, W3.T, out=D2[:m])
        d2 *= h2 > 0
        d1 = np.matmul(d2, W2.T, out=D1[:m])
        d1 *= h1 > 0
        np.matmul(h2.T, z, out=dW3)
        np.matmul(h1.T, d2, out=dW2)
        np.matmul(x.T, d1, out=dW1)
        for W, dW in ((W1, dW1), (W2, dW2), (W3, dW3)):
            dW *= lr
            W -= dW
        b3 -= lr * z.sum(axis=0)
        b2 -= lr * d2.sum(axis=0)
        b1 -= lr * d1.sum(axis=0)
    return total / n


def _autocast(impl):
    """torch.bf16: PyTorch's bf16 mixed precision (autocast, float32 master
    weights), the idiomatic way to train in bf16 on a CPU."""
    if impl == "torch.bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _torch_epoch(X, y, init, order, batch, autocast=contextlib.nullcontext):
    """nn.Sequential + optim.SGD, the idiomatic PyTorch loop, on the same
    initial weights and sample order as the fastnn and reference peers."""
    tnn = torch.nn
    model = tnn.Sequential(tnn.Linear(MLP_FEATURES, MLP_HIDDEN[0]), tnn.ReLU(),
                           tnn.Linear(*MLP_HIDDEN), tnn.ReLU(),
                           tnn.Linear(MLP_HIDDEN[1], MLP_CLASSES))
    linears = [model[0], model[2], model[4]]
    opt = torch.optim.SGD(model.parameters(), lr=MLP_LR, momentum=0.0)
    Xt, yt, order_t = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(order)
    n = X.shape[0]
    state = {}

    def reset():
        with torch.no_grad():
            for i, lin in enumerate(linears):
                lin.weight.copy_(torch.from_numpy(init[f"{i}.weight"].T))
                lin.bias.copy_(torch.from_numpy(init[f"{i}.bias"]))

    def run():
        total = 0.0
        for start in range(0, n, batch):
            idx = order_t[start:start + batch]
            xb, yb = Xt[idx], yt[idx]
            opt.zero_grad()
            with autocast():
                logits = model(xb)
            loss = torch.nn.functional.cross_entropy(logits.float(), yb)
            loss.backward()
            opt.step()
            total += loss.item() * idx.shape[0]
        state["loss"] = total / n

    def result():
        weights = {}
        for i, lin in enumerate(linears):
            weights[f"{i}.weight"] = lin.weight.detach().numpy().T
            weights[f"{i}.bias"] = lin.bias.detach().numpy()
        return state["loss"], _updates(weights, init)
    return Case(run, result, reset)


# ---------------------------------------------------------------------------
# logreg_gd: binary logistic regression, full-batch gradient descent
# ---------------------------------------------------------------------------
def _logreg(impl, data, iters):
    X, t = data["X"], data["t"]
    d = X.shape[1]
    state = {}
    if impl in ("fastnn", "reference"):
        mod = F if impl == "fastnn" else R
        w = np.zeros(d, DTYPE)
        grad = np.empty(d, DTYPE) if impl == "fastnn" else None

        def run():
            w[:] = 0
            b = 0.0
            for _ in range(iters):
                loss, gw, gb = mod.logistic_loss_grad(X, w, b, t, out=grad)
                w[:] -= DTYPE(LOGREG_LR) * gw
                b -= LOGREG_LR * gb
            state["out"] = (loss, w, b)
        return Case(run, lambda: state["out"])
    if impl == "torch":
        Xt, tt = torch.from_numpy(X), torch.from_numpy(t)

        def run():
            w = torch.zeros(d, requires_grad=True)
            b = torch.zeros((), requires_grad=True)
            for _ in range(iters):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, tt)
                loss.backward()
                with torch.no_grad():
                    w -= LOGREG_LR * w.grad
                    b -= LOGREG_LR * b.grad
                w.grad = b.grad = None
            state["out"] = (loss.item(), w.detach().numpy(), b.item())
        return Case(run, lambda: state["out"])
    raise KeyError(impl)


def make_case(workload, shape, impl):
    data = make_data(workload, shape)
    if workload == "softmax_xent":
        return _softmax_xent(impl, data)
    if workload == "dense":
        return _dense(impl, data)
    if workload == "mlp_epoch":
        return _mlp_epoch(impl, data, shape.batch)
    if workload == "logreg_gd":
        return _logreg(impl, data, shape.iters)
    raise ValueError(f"unknown workload {workload!r}")


# ---------------------------------------------------------------------------
# agreement with the reference
# ---------------------------------------------------------------------------
# float32 throughout: relative tolerances that the accumulated rounding of
# each workload stays well inside, and far below any real error
_TOL = {"softmax_xent": 1e-4, "dense": 1e-4, "mlp_epoch": 1e-3, "logreg_gd": 1e-3}
# One float32 SGD epoch amplifies rounding through the ReLU kinks: correct
# peers (fastnn, NumPy, PyTorch) end with parameter updates ~3% apart at batch
# 128 (469 steps) and up to 24% at batch 32 (1875 steps), measured; a missing
# or wrong update is ~100% off.  The epoch loss (rtol above) is the tight check.
_MLP_UPDATE_RTOL = 0.5
# bf16 peers.  dense, against the bf16 twin: fastnn multiplies the same
# bf16-rounded operands and differs in the order of the float32 sums only
# (measured: 1e-6 of the scale); PyTorch's autocast also rounds the bias and
# its outputs to bf16, which moves ReLU kinks: 3-16% elementwise, 2-4%
# norm-wise (measured), held norm-wise to 1/8.  mlp_epoch: the epoch loss
# within 3% of float32's (the accuracy goal of compute_dtype="bfloat16"); the
# updates (rounding amplified through the ReLU kinks, as above) within a
# bound a missing update breaks.
_BF16_TOL = {"dense": 2 ** -12, "mlp_epoch": 0.03}
_TORCH_BF16_NORM_RTOL = 0.125
_MLP_BF16_UPDATE_RTOL = 0.7
# peers with their own initialisation and sample order (sklearn and the
# estimator) reach a comparable, not identical, loss after one epoch
_MLP_OWN_INIT_RTOL = 0.1


def check_agreement(workload, impl, result, expected, shape=None):
    """Raise AssertionError when ``result`` (of ``impl``) and ``expected``
    (of the reference) disagree beyond float32 rounding.  The bf16 peers of
    dense are held to the reference's bf16 twin at ``shape`` instead (a ReLU
    kink moved by bf16 rounding changes a gradient by more than rounding),
    those of mlp_epoch to the float32 epoch within the bf16 accuracy goal."""
    bf16 = impl.endswith(".bf16")
    rtol = _BF16_TOL[workload] if bf16 else _TOL[workload]
    if bf16 and workload == "dense":
        expected = _bf16_reference(shape)
        if impl == "torch.bf16":    # norm-wise: its bf16 bias moves ReLU kinks
            for i, (got, want) in enumerate(zip(_flatten(result), _flatten(expected))):
                got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
                err = np.linalg.norm(got - want) / np.linalg.norm(want)
                assert err <= _TORCH_BF16_NORM_RTOL, (
                    f"dense {impl}: output {i} is {err:.1%} away from the bf16 reference's")
            return
    if workload == "mlp_epoch" and impl in ("sklearn", "fastnn.MLPClassifier"):
        loss, ref_loss = result[0], expected[0]
        assert np.isfinite(loss) and abs(loss - ref_loss) <= _MLP_OWN_INIT_RTOL * ref_loss, (
            f"{impl}: epoch loss {loss:.4f}, reference {ref_loss:.4f}")
        return
    if workload == "mlp_epoch":
        (loss, updates), (ref_loss, ref_updates) = result, expected
        assert abs(loss - ref_loss) <= rtol * ref_loss, (
            f"{impl}: epoch loss {loss:.6f}, reference {ref_loss:.6f}")
        for i, (got, want) in enumerate(zip(updates, ref_updates, strict=True)):
            err = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert err <= (_MLP_BF16_UPDATE_RTOL if bf16 else _MLP_UPDATE_RTOL), (
                f"{impl}: update of parameter {i} is {err:.1%} away from the reference's")
        return
    for i, (got, want) in enumerate(zip(_flatten(result), _flatten(expected), strict=True)):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        np.testing.assert_allclose(
            got, want, rtol=rtol, atol=rtol * scale,
            err_msg=f"{workload} {impl}: output {i} differs from the reference")


@functools.lru_cache(maxsize=2)
def _bf16_reference(shape):
    case = make_case("dense", shape, "reference.bf16")
    case.run()
    return case.result()


def _flatten(items):
    out = []
    for item in items if isinstance(items, (tuple, list)) else [items]:
        if isinstance(item, (tuple, list)):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out
