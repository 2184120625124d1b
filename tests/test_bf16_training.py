"""compute_dtype="bfloat16" in training: the layer API (nn.Dense,
nn.Sequential, train_step, fit), the compiled stack step and the estimators,
on every bf16 path this machine runs (test_bf16.py tests the products).

The stack step runs the same bf16 kernels in the same order as the layers
one by one, so the two agree bit for bit; each step is held to a NumPy step
on the reference twins within the bf16 product tolerance; the accuracy of
bf16 training is compared with float32's (the digits MLP within 1 point,
the WORKLOADS mlp_epoch loss after 4 epochs within 3%).
"""
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import _kernels, nn, optim
from fastnn import reference as R
from fastnn.bench import workloads as W
from test_bf16 import THREAD_COUNTS, bf16_bound, path  # noqa: F401 (path: the fixture)

BF16 = "bfloat16"


def _mlp(sizes, compute_dtype=BF16, seed=0, activation="relu"):
    last = len(sizes) - 2
    return nn.Sequential(*[nn.Dense(a, b, "identity" if i == last else activation, rng=seed + i,
                                    compute_dtype=compute_dtype)
                           for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))])


def _data(rng, n, d, c):
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, c, n)


def _params(model):
    return [p.data.copy() for p in model.parameters()]


# ---------------------------------------------------------------------------
# the layer API
# ---------------------------------------------------------------------------
def test_dense_runs_the_bf16_kernels(path, rng):
    layer = nn.Dense(37, 19, "tanh", rng=1, compute_dtype=BF16)
    X = rng.standard_normal((33, 37)).astype(np.float32)
    out = layer.forward(X)
    expected = np.tanh(R.matmul_bf16(X, layer.weight.data).astype(np.float64))
    assert np.all(np.abs(out - expected) <= bf16_bound(X, layer.weight.data) + 1e-6)
    G = rng.standard_normal(out.shape).astype(np.float32)
    dX = layer.backward(G)
    delta = G * (1 - out.astype(np.float64) ** 2)
    assert np.allclose(layer.weight.grad, R.matmul_bf16(X.T, delta.astype(np.float32)),
                       rtol=0, atol=float(bf16_bound(X.T, np.abs(delta).astype(np.float32)).max()
                                          + 1e-4))
    assert np.allclose(dX, R.matmul_bf16(delta.astype(np.float32), layer.weight.data.T),
                       rtol=0, atol=1e-4 + float(bf16_bound(np.abs(delta).astype(np.float32),
                                                            layer.weight.data.T).max()))
    assert np.allclose(layer.bias.grad, delta.sum(0), rtol=1e-5, atol=1e-5)


def test_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="compute_dtype"):
        nn.Dense(3, 2, compute_dtype="float16")
    with pytest.raises(ValueError, match="needs dtype=float32"):
        nn.Dense(3, 2, dtype=np.float64, compute_dtype=BF16)
    layer = nn.Dense(3, 2)
    with pytest.raises(ValueError, match="compute_dtype"):
        layer.compute_dtype = "half"
    assert layer.compute_dtype is None and "compute_dtype" not in repr(layer)
    layer.compute_dtype = BF16
    assert "compute_dtype='bfloat16'" in repr(layer)


def test_sequential_compute_dtype():
    model = nn.Sequential(nn.Dense(4, 3), nn.ReLU(), nn.Dense(3, 2))
    assert model.compute_dtype is None
    model.compute_dtype = BF16
    assert model.compute_dtype == BF16 and model[2].compute_dtype == BF16
    model[0].compute_dtype = None
    with pytest.raises(ValueError, match="different compute dtypes"):
        model.compute_dtype
    mixed = nn.Sequential(nn.Dense(4, 3), nn.Dense(3, 2, dtype=np.float64))
    with pytest.raises(ValueError, match="needs dtype=float32"):
        mixed.compute_dtype = BF16
    assert mixed[0].compute_dtype is None     # nothing changed by the refused setting
    assert nn.Sequential(nn.ReLU()).compute_dtype is None


@pytest.mark.parametrize("opt_name", ["sgd", "sgd_momentum", "adam", "none"])
@pytest.mark.parametrize("n", [1, 17, 130])
def test_stack_step_is_the_layer_by_layer_step(path, rng, opt_name, n, monkeypatch):
    """The fused stack step (SGD applied per dW tile included) gives the bits
    of the layers one by one."""
    sizes = (45, 67, 33, 10)
    X, y = _data(rng, n, sizes[0], sizes[-1])
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(nn, "_FUSE_DENSE_STACKS", fuse)
        model, loss = _mlp(sizes), nn.SoftmaxCrossEntropy()
        opt = {"sgd": lambda p: optim.SGD(p, lr=0.1),
               "sgd_momentum": lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
               "adam": lambda p: optim.Adam(p, lr=1e-3),
               "none": lambda p: None}[opt_name](model.parameters())
        values = []
        for _ in range(3):
            if opt is None:
                values.append(nn.forward_backward(model, loss, X, y))
            else:
                values.append(nn.train_step(model, loss, opt, X, y))
        results.append((values, _params(model), [p.grad.copy() for p in model.parameters()]))
    (v1, p1, g1), (v2, p2, g2) = results
    assert v1 == v2
    for a, b in zip(p1 + g1, p2 + g2):
        np.testing.assert_array_equal(a, b)


def test_stack_step_against_the_reference_step(path, rng):
    """One SGD step of a 2-layer MLP against NumPy on the bf16 twins."""
    sizes = (70, 40, 5)
    X, y = _data(rng, 50, sizes[0], sizes[-1])
    model, loss = _mlp(sizes), nn.SoftmaxCrossEntropy()
    W1, b1, W2, b2 = _params(model)
    opt = optim.SGD(model.parameters(), lr=0.5)
    value = nn.train_step(model, loss, opt, X, y)
    H = np.maximum(R.matmul_bf16(X, W1) + b1, 0)
    Z = R.matmul_bf16(H, W2) + b2
    ref_loss, G = R.softmax_cross_entropy(Z, y)
    dW2, db2 = R.matmul_bf16(H.T, G), G.sum(0)
    dH = R.matmul_bf16(G, W2.T) * (H > 0)
    dW1, db1 = R.matmul_bf16(X.T, dH), dH.sum(0)
    assert value == pytest.approx(ref_loss, rel=1e-5)
    for p, w, g in zip(model.parameters(), (W1, b1, W2, b2), (dW1, db1, dW2, db2)):
        np.testing.assert_allclose(p.grad, g, rtol=2e-2, atol=2e-4)
        np.testing.assert_allclose(p.data, w - 0.5 * p.grad, rtol=1e-6, atol=1e-7)


def test_stack_step_same_bits_at_any_thread_count(path, rng):
    sizes = (300, 200, 130, 10)
    X, y = _data(rng, 257, sizes[0], sizes[-1])
    results = []
    for threads in THREAD_COUNTS:
        with fastnn.num_threads(threads):
            model = _mlp(sizes)
            opt = optim.SGD(model.parameters(), lr=0.05)
            for _ in range(2):
                nn.train_step(model, nn.SoftmaxCrossEntropy(), opt, X, y)
            results.append(_params(model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_changing_compute_dtype_between_steps(rng):
    """The stack step's cached plan follows a compute_dtype set between
    steps: the step after switching is the one a fresh bf16 model takes."""
    sizes = (50, 30, 4)
    X, y = _data(rng, 64, sizes[0], sizes[-1])
    model, fresh = _mlp(sizes, None), _mlp(sizes, BF16)
    loss, fresh_loss = nn.SoftmaxCrossEntropy(), nn.SoftmaxCrossEntropy()
    nn.forward_backward(model, loss, X, y)
    model.compute_dtype = BF16
    assert nn.forward_backward(model, loss, X, y) == nn.forward_backward(fresh, fresh_loss, X, y)
    for a, b in zip(model.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)
    model.compute_dtype = None
    nn.forward_backward(model, loss, X, y)
    float32 = _mlp(sizes, None)
    nn.forward_backward(float32, nn.SoftmaxCrossEntropy(), X, y)
    for a, b in zip(model.parameters(), float32.parameters()):
        np.testing.assert_array_equal(a.grad, b.grad)


def test_float64_layers_refuse_bf16_in_the_kernel(rng):
    """The compiled step itself refuses a bf16 flag on float64 arrays."""
    W = np.zeros((3, 2))
    layer = (W, None, 0, 0.0, np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((3, 2)),
             np.zeros(2), True)
    with pytest.raises(ValueError, match="bf16 products need float32"):
        _kernels.dense_stack_step([layer], np.zeros((4, 3)), 0, np.zeros(4, np.int64), None,
                                  None, np.zeros((4, 2)), 0.25, 0.0)


def test_fit_with_a_sparse_first_layer(rng):
    """A scipy.sparse X runs its first layer in float32 (there is no bf16
    sparse product) and the others in bf16, layer by layer."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X = scipy_sparse.random(200, 60, density=0.1, format="csr", dtype=np.float32,
                            random_state=0)
    y = rng.integers(0, 3, 200)
    model = _mlp((60, 20, 3))
    history = nn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
                     X, y, epochs=3, batch_size=32, rng=0)
    assert np.isfinite(history).all() and history[-1] < history[0]


# ---------------------------------------------------------------------------
# training accuracy against float32
# ---------------------------------------------------------------------------
def test_mlp_epoch_loss_within_3_percent_of_float32(path):
    """The WORKLOADS.md mlp_epoch (60000 x 784, 784-256-128-10, SGD lr 0.05,
    batch 128): the mean loss of the 4th epoch in bf16 within 3% of float32's."""
    data = W.make_data("mlp_epoch", W.SHAPES["mlp_epoch"][1])
    X, y, init = data["X"], data["y"], data["init"]
    last = {}
    for compute_dtype in (None, BF16):
        model = W._fastnn_mlp()
        model.load_state_dict(init)
        model.compute_dtype = compute_dtype
        history = nn.fit(model, nn.SoftmaxCrossEntropy(),
                         optim.SGD(model.parameters(), lr=W.MLP_LR), X, y, epochs=4,
                         batch_size=128, rng=W.SEED)
        last[compute_dtype] = history[-1]
    assert last[BF16] == pytest.approx(last[None], rel=0.03), last


def _digits_split():
    """(X_train, y_train, X_test, y_test) of scikit-learn's digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = datasets.load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = model_selection.train_test_split(X / 16, y, random_state=0)
    return Xtr, ytr, Xte, yte


def _scores(make, X, y, X_test, y_test):
    """{compute_dtype: test score} of make(compute_dtype) fitted in float32 and bf16."""
    scores = {}
    for compute_dtype in (None, BF16):
        est = make(compute_dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # ConvergenceWarning at max_iter
            est.fit(X, y)
        scores[compute_dtype] = est.score(X_test, y_test)
    return scores


def test_digits_mlp_accuracy_within_one_point(path):
    scores = _scores(lambda cd: fastnn.MLPClassifier((128,), random_state=0, max_iter=60,
                                                     compute_dtype=cd), *_digits_split())
    assert scores[BF16] >= scores[None] - 0.01, scores


@pytest.mark.parametrize("solver", ["gd", "sgd"])
@pytest.mark.parametrize("binary", [True, False])
def test_logistic_regression_accuracy_within_one_point(path, solver, binary):
    Xtr, ytr, Xte, yte = _digits_split()
    if binary:
        ytr, yte = ytr > 4, yte > 4
    scores = _scores(lambda cd: fastnn.LogisticRegression(
        solver=solver, dtype=np.float32, max_iter=200, compute_dtype=cd, random_state=0),
        Xtr, ytr, Xte, yte)
    assert scores[BF16] >= scores[None] - 0.01, scores


def test_regressor_trains_in_bf16(path, rng):
    X = rng.standard_normal((400, 12)).astype(np.float32)
    y = np.sin(X[:, 0]) + X[:, 1] ** 2
    scores = _scores(lambda cd: fastnn.MLPRegressor(hidden_layer_sizes=(32,), random_state=0,
                                                    max_iter=150, compute_dtype=cd), X, y, X, y)
    assert scores[BF16] >= scores[None] - 0.02, scores


# ---------------------------------------------------------------------------
# estimators: parameters, prediction, save/load
# ---------------------------------------------------------------------------
def test_estimator_predictions_use_the_bf16_products(rng):
    X = rng.standard_normal((60, 70)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = fastnn.MLPClassifier((20,), max_iter=5, random_state=0,
                                   compute_dtype=BF16).fit(X, y)
    H = np.maximum(R.matmul_bf16(X, clf.coefs_[0]) + clf.intercepts_[0], 0)
    Z = R.matmul_bf16(H, clf.coefs_[1]) + clf.intercepts_[1]
    np.testing.assert_allclose(clf.predict_proba(X), R.softmax(Z), rtol=1e-4, atol=1e-5)


def test_estimator_parameter_errors():
    X, y = np.zeros((10, 3), np.float32), np.arange(10) % 2
    for est in (fastnn.MLPClassifier(compute_dtype="fp16"),
                fastnn.LogisticRegression(dtype=np.float32, compute_dtype="fp16")):
        with pytest.raises(ValueError, match="compute_dtype must be None or 'bfloat16'"):
            est.fit(X, y)
    for est in (fastnn.MLPClassifier(dtype=np.float64, compute_dtype=BF16),
                fastnn.MLPClassifier(dtype=None, compute_dtype=BF16),   # float64 X
                fastnn.LogisticRegression(compute_dtype=BF16)):          # float64 default
        with pytest.raises(ValueError, match="needs float32 weights"):
            est.fit(X.astype(np.float64), y)
    with pytest.raises(ValueError, match="stochastic solver"):
        fastnn.MLPClassifier(solver="lbfgs", compute_dtype=BF16).fit(X, y)
    # dtype=None with float32 X is float32: accepted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastnn.MLPClassifier((4,), dtype=None, max_iter=2, compute_dtype=BF16).fit(X, y)


def test_save_load_keeps_compute_dtype(tmp_path, rng):
    X = rng.standard_normal((80, 9)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for est in (fastnn.MLPClassifier((8,), max_iter=3, random_state=0, compute_dtype=BF16),
                    fastnn.MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                                        compute_dtype=BF16),
                    fastnn.LogisticRegression(dtype=np.float32, compute_dtype=BF16)):
            target = y.astype(np.float32) if isinstance(est, fastnn.MLPRegressor) else y
            est.fit(X, target)
            est.save(tmp_path / "m.npz")
            loaded = fastnn.load(tmp_path / "m.npz")
            assert loaded.compute_dtype == BF16
            np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
            if hasattr(est, "partial_fit"):     # continues training in bf16
                loaded.partial_fit(X, target)
                assert loaded._trainer.network.compute_dtype == BF16
