"""The layer API (fastnn.nn) and fastnn.gradcheck.

Gradients of whole MLPs are checked by central differences (gradcheck, every
activation and loss); single layers against fastnn.reference; buffer reuse
by tracemalloc; the training loop for reproducibility and learning.
"""
import tracemalloc

import numpy as np
import pytest

from conftest import ACTIVATIONS, DTYPES, assert_close, assert_close_accumulated, \
    assert_gradient_matches
import fastnn
from fastnn import _kernels, nn, optim, reference
from fastnn._gradcheck import gradcheck

ACTIVATION_LAYERS = {"identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                     "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}


def _mlp(activation, n_in=5, hidden=(7, 6), n_out=3, *, separate=False, dtype=np.float64,
         seed=0):
    """An MLP with random (not zero) biases.  ``separate``: Dense layers with
    identity activation followed by activation layers, instead of fused ones."""
    rng = np.random.default_rng(seed)
    sizes = (n_in,) + tuple(hidden)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        if separate:
            layers += [nn.Dense(a, b, dtype=dtype, rng=rng), ACTIVATION_LAYERS[activation]()]
        else:
            layers.append(nn.Dense(a, b, activation, alpha=0.1, dtype=dtype, rng=rng))
    layers.append(nn.Dense(sizes[-1], n_out, dtype=dtype, rng=rng))
    model = nn.Sequential(*layers)
    for p in model.parameters():
        if not p.regularize:
            p.data[...] = rng.normal(scale=0.5, size=p.shape)
    return model


def _min_abs_preactivation(model, X):
    """Distance of the hidden pre-activations (the inputs of the
    nonlinearities: every Dense but the last one feeds one) from 0."""
    closest, A = np.inf, X
    last = [layer for layer in model if isinstance(layer, nn.Dense)][-1]
    for layer in model:
        if isinstance(layer, nn.Dense) and layer is not last:
            closest = min(closest, np.abs(A @ layer.weight.data + layer.bias.data).min())
        A = layer.forward(A)
    return closest


def _loss_case(name, n, n_out, rng):
    """(loss, targets) of each kind, for n samples and n_out outputs."""
    if name == "ce_index":
        return nn.SoftmaxCrossEntropy(), rng.integers(0, n_out, n)
    if name == "ce_index_smoothing":
        return nn.SoftmaxCrossEntropy(label_smoothing=0.1), rng.integers(0, n_out, n)
    if name == "ce_probabilities":
        return nn.SoftmaxCrossEntropy(), rng.dirichlet(np.ones(n_out), n)
    if name == "bce":
        return nn.BinaryCrossEntropyWithLogits(), rng.integers(0, 2, (n, n_out)).astype(float)
    if name == "bce_column":  # (N, 1) output, 1-D targets
        return nn.BinaryCrossEntropyWithLogits(), rng.uniform(0, 1, n)
    if name == "mse":
        return nn.MSELoss(), rng.normal(size=(n, n_out))
    if name == "mse_column":
        return nn.MSELoss(), rng.normal(size=n)
    if name == "poisson":
        return nn.PoissonLoss(), rng.poisson(1.0, (n, n_out)).astype(float)
    if name == "poisson_column":
        return nn.PoissonLoss(), rng.poisson(1.0, n)      # integer counts, cast
    raise AssertionError(name)


LOSSES = ("ce_index", "ce_index_smoothing", "ce_probabilities", "bce", "bce_column", "mse",
          "mse_column", "poisson", "poisson_column")


# ---------------------------------------------------------------------------
# gradcheck of whole models
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["fused", "separate-weighted"])
def test_gradcheck_mlp(activation, loss_name, weighted, rng):
    # two variants: fused Dense activations without sample weights, and
    # separate activation layers with sample weights
    n_out = 1 if loss_name.endswith("column") else 3
    model = _mlp(activation, n_out=n_out, separate=weighted, seed=int(rng.integers(1000)))
    X = rng.normal(size=(12, 5))
    loss, y = _loss_case(loss_name, 12, n_out, rng)
    sample_weight = rng.uniform(0.1, 2.0, 12) if weighted else None
    if activation in ("relu", "leaky_relu"):
        # a step h = 1e-6 moves a pre-activation by at most h·|input| < 1e-5:
        # no difference quotient may straddle the kink at 0
        assert _min_abs_preactivation(model, X) > 2e-5, "data too close to the kink"
    result = gradcheck(model, X, y, loss, sample_weight=sample_weight)
    assert result.max_rel_error < 1e-6, result
    assert set(result.errors) == {name for name, _ in model.named_parameters()}


def test_gradcheck_result_and_restored_state(rng):
    model = nn.Sequential(nn.Dense(4, 5, "tanh", dtype=np.float64, rng=1), nn.Dropout(0.5, rng=2),
                          nn.Dense(5, 2, dtype=np.float64, rng=3))
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 2, 6)
    model[2].eval()  # mixed modes: each is restored
    before = model.state_dict()
    result = gradcheck(model, X, y, nn.SoftmaxCrossEntropy())
    # Dropout is the identity in eval mode, which gradcheck uses
    assert [m.training for m in (model, *model)] == [True, True, True, False]
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())
    assert result.max_rel_error == max(result.errors.values()) < 1e-6
    assert result.parameter in result.errors
    assert len(result.index) == (1 if result.parameter.endswith("bias") else 2)
    for name, p in model.named_parameters():
        assert result.analytic[name].shape == result.numeric[name].shape == p.shape
    # the analytic gradient is the backward pass of the eval-mode model
    model.eval()
    loss = nn.SoftmaxCrossEntropy()
    loss.forward(model.forward(X), y)
    model.backward(loss.backward())
    for name, p in model.named_parameters():
        assert np.array_equal(result.analytic[name], p.grad)


class _WrongBackward(nn.Dense):
    """A Dense layer whose backward is off in one weight element."""

    def backward(self, grad, **kw):
        d_input = super().backward(grad, **kw)
        self.weight.grad[2, 1] += 1e-3 * np.abs(self.weight.grad).max()
        return d_input


def test_gradcheck_finds_a_wrong_gradient(rng):
    model = nn.Sequential(nn.Dense(3, 4, "sigmoid", dtype=np.float64, rng=0),
                          _WrongBackward(4, 3, dtype=np.float64, rng=1))
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    result = gradcheck(model, X, y, nn.SoftmaxCrossEntropy())
    assert result.parameter == "1.weight" and result.index == (2, 1)
    assert 1e-4 < result.max_rel_error < 1e-3
    assert result.errors["0.weight"] < 1e-6


def test_gradcheck_arguments(rng):
    X, y = rng.normal(size=(4, 3)), rng.integers(0, 2, 4)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(nn.Dense(3, 2, rng=0), X, y, nn.SoftmaxCrossEntropy())  # float32 model
    with pytest.raises(ValueError, match="no parameters"):
        gradcheck(nn.Sequential(nn.ReLU()), X, y, nn.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="eps"):
        gradcheck(nn.Dense(3, 2, dtype=np.float64, rng=0), X, y, nn.SoftmaxCrossEntropy(), eps=0)


def test_gradcheck_is_exported():
    import fastnn
    assert fastnn.gradcheck is gradcheck


# ---------------------------------------------------------------------------
# layers against the reference kernels
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_backward_match_reference(activation, dtype, rng):
    layer = nn.Dense(13, 7, activation, alpha=0.2, dtype=dtype, rng=rng)
    layer.bias.data[...] = rng.normal(size=7)
    W, b = layer.weight.data, layer.bias.data
    X = rng.normal(size=(9, 13)).astype(dtype)
    G = rng.normal(size=(9, 7)).astype(dtype)
    G_copy = G.copy()

    O = layer.forward(X)
    O_ref = reference.dense_forward(X, W, b, activation, alpha=0.2)
    bound = np.abs(X) @ np.abs(W) + np.abs(b)
    assert_close_accumulated(O, O_ref, bound, 13, dtype)

    dX = layer.backward(G)
    assert np.array_equal(G, G_copy)  # the caller's gradient is not modified
    dX_ref, dW_ref, db_ref = reference.dense_backward(X, W, O, G, activation, alpha=0.2)
    delta = np.abs(G)  # |f'| <= 1 for every activation
    assert_close_accumulated(layer.weight.grad, dW_ref, np.abs(X).T @ delta, 9, dtype)
    assert_close_accumulated(layer.bias.grad, db_ref, delta.sum(axis=0), 9, dtype)
    assert_close_accumulated(dX, dX_ref, delta @ np.abs(W).T, 7, dtype)
    assert layer.backward(G, need_input_grad=False) is None


def test_dense_without_bias(rng):
    layer = nn.Dense(4, 3, "tanh", bias=False, dtype=np.float64, rng=0)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    X = rng.normal(size=(5, 4))
    O = layer.forward(X)
    assert_close(O, reference.dense_forward(X, layer.weight.data, None, "tanh"), rtol=1e-12)
    layer.backward(np.ones((5, 3)))
    dW = reference.dense_backward(X, layer.weight.data, O, np.ones((5, 3)), "tanh")[1]
    assert_close(layer.weight.grad, dW, rtol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_layers_match_reference(activation, dtype, rng):
    layer = ACTIVATION_LAYERS[activation]()
    alpha = getattr(layer, "alpha", 0.01)
    Z = rng.normal(size=(6, 5)).astype(dtype)
    G = rng.normal(size=(6, 5)).astype(dtype)
    O = layer.forward(Z)
    assert_close(O, reference.activation_forward(Z, activation, alpha=alpha), dtype)
    assert_close(layer.backward(G), reference.activation_backward(O, G, activation, alpha=alpha),
                 dtype)


def test_buffers_reused_in_training_fresh_in_eval(rng):
    model = _mlp("relu", dtype=np.float32)
    X = rng.normal(size=(8, 5)).astype(np.float32)
    first = model.forward(X)
    assert model.forward(X) is first  # training: the same buffer, overwritten
    kept = model.forward(X[:3])  # another batch size has its own buffer
    assert kept is not first and model.forward(X[:3]) is kept
    model.eval()
    a = model.forward(X)
    b = model.forward(X)
    assert a is not b and np.array_equal(a, b) and np.array_equal(a, first)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_inverted_scaling(dtype):
    p = 0.3
    layer = nn.Dropout(p, rng=0)
    X = np.ones((400, 500), dtype)
    O = layer.forward(X)
    assert O.dtype == dtype
    # kept entries are scaled by 1/(1-p), the others are 0
    kept = O != 0
    assert np.allclose(O[kept], 1 / (1 - p), rtol=1e-6)
    # drop rate p and mean preserved: 200 000 entries, std of the mean
    # sqrt(p/(1-p)/n) ~ 0.0015; 5 sigma
    assert abs(1 - kept.mean() - p) < 0.005
    assert abs(O.mean(dtype=np.float64) - 1.0) < 0.0075


def test_dropout_mask_reused_by_backward_and_reproducible(rng):
    X = rng.normal(size=(50, 40))
    G = rng.normal(size=(50, 40))
    layer = nn.Dropout(0.5, rng=123)
    O = layer.forward(X).copy()
    mask = (O != 0) * 2.0
    assert np.array_equal(O, X * mask)
    assert np.array_equal(layer.backward(G), G * mask)
    assert not np.array_equal(layer.forward(X), O)  # a new mask on each forward
    # same seed, same masks
    again = nn.Dropout(0.5, rng=123)
    assert np.array_equal(again.forward(X), O)
    assert np.array_equal(nn.Dropout(0.5, rng=np.random.default_rng(123)).forward(X), O)


def test_dropout_off_in_eval_and_with_p0(rng):
    X = rng.normal(size=(10, 4))
    G = rng.normal(size=(10, 4))
    for layer in (nn.Dropout(0.7, rng=0).eval(), nn.Dropout(0.0, rng=0)):
        assert layer.forward(X) is X
        assert layer.backward(G) is G


# ---------------------------------------------------------------------------
# Sequential and parameters
# ---------------------------------------------------------------------------
def test_sequential_parameter_names_and_container():
    inner = nn.Sequential(nn.Dense(4, 4, rng=0), nn.Tanh())
    model = nn.Sequential(nn.Dense(3, 4, "relu", rng=0), nn.Dropout(0.1), inner,
                          nn.Dense(4, 2, bias=False, rng=0))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight"]
    assert [p.regularize for p in model.parameters()] == [True, False, True, False, True]
    assert len(model) == 4 and model[2] is inner and list(model)[1] is model[1]
    assert [n for n, _ in model[2:].named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight"]
    model.eval()
    assert not any(layer.training for layer in (model[0], model[1], inner[0], inner[1]))


def test_sequential_input_gradient(rng):
    # an output nonlinearity: its backward would overwrite G if it were allowed to
    model = nn.Sequential(*_mlp("tanh", separate=True), nn.Sigmoid())
    X = rng.normal(size=(4, 5))
    G = rng.normal(size=(4, 3))
    model.forward(X)
    assert model.backward(G) is None  # the input gradient is not computed by default
    G_copy = G.copy()
    dX = model.backward(G, need_input_grad=True).copy()
    assert np.array_equal(G, G_copy)  # the caller's gradient is left alone
    assert_gradient_matches(dX, lambda x: float(np.sum(model.forward(x) * G)), X)


def test_state_dict_round_trip(tmp_path, rng):
    model = _mlp("relu", dtype=np.float32, seed=1)
    state = model.state_dict()
    assert list(state) == [name for name, _ in model.named_parameters()]
    assert not any(np.shares_memory(state[n], p.data) for n, p in model.named_parameters())
    # savable and loadable without pickle
    np.savez(tmp_path / "model.npz", **state)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as f:
        loaded = dict(f)
    other = _mlp("relu", dtype=np.float32, seed=2)
    X = rng.normal(size=(6, 5)).astype(np.float32)
    assert not np.array_equal(other.forward(X), model.forward(X))
    other.load_state_dict(loaded)
    assert np.array_equal(other.forward(X), model.forward(X))
    # float64 values are cast to the parameter dtype, in place
    weight = other[0].weight.data
    other.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    assert other[0].weight.data is weight and weight.dtype == np.float32

    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({k: v for k, v in state.items() if k != "1.bias"})
    with pytest.raises(KeyError, match="unexpected"):
        other.load_state_dict(dict(state, extra=np.zeros(3)))
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(dict(state, **{"0.weight": np.zeros((7, 5))}))


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", LOSSES)
def test_losses_match_reference(loss_name, rng):
    n_out = 1 if loss_name.endswith("column") else 4
    loss, y = _loss_case(loss_name, 10, n_out, rng)
    out = rng.normal(size=(10, n_out))
    w = rng.uniform(0.5, 1.5, 10)
    if isinstance(loss, nn.SoftmaxCrossEntropy):
        ref = reference.softmax_cross_entropy(out, y, sample_weight=w,
                                              label_smoothing=loss.label_smoothing)
    elif isinstance(loss, nn.BinaryCrossEntropyWithLogits):
        ref = reference.binary_cross_entropy_with_logits(out, y.reshape(10, n_out), sample_weight=w)
    elif isinstance(loss, nn.PoissonLoss):
        ref = reference.poisson_loss(out, y.reshape(10, n_out), sample_weight=w)
    else:
        ref = reference.mse_loss(out, y.reshape(10, n_out), sample_weight=w)
    value = loss(out, y, w)
    assert isinstance(value, float) and value == pytest.approx(ref[0], rel=1e-12)
    assert_close(loss.backward(), ref[1])


def test_loss_errors():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.MSELoss().backward()
    with pytest.raises(ValueError):
        nn.SoftmaxCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="target"):
        nn.SoftmaxCrossEntropy().forward(np.zeros((3, 2)), np.array([0, 1, 2]))  # class 2 of 2
    with pytest.raises(ValueError):
        nn.MSELoss().forward(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="^y must be non-negative"):
        nn.PoissonLoss().forward(np.zeros((3, 2)), -np.ones((3, 2)))
    with pytest.raises(ValueError, match="^y must have shape"):
        nn.PoissonLoss().forward(np.zeros((3, 2)), np.zeros((3, 3)))


# ---------------------------------------------------------------------------
# error cases of the layers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [nn.Dense(3, 2), nn.ReLU(), nn.Sigmoid(), nn.Dropout(0.5),
                                   nn.LeakyReLU(0.2)], ids=repr)
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((4, 2), np.float32))


def test_wrong_shapes():
    layer = nn.Dense(3, 2)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        layer.forward(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        layer.forward(np.zeros(3, np.float32))
    layer.forward(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.zeros((4, 3), np.float32))
    relu = nn.ReLU()
    relu.forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        relu.backward(np.zeros((3, 4)))
    model = nn.Sequential(nn.Dense(3, 4), nn.Dense(5, 2))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        model.forward(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("call,error", [
    (lambda: nn.Dense(0, 2), ValueError),
    (lambda: nn.Dense(3, 2.0), ValueError),
    (lambda: nn.Dense(3, 2, "softmax"), ValueError),
    (lambda: nn.Dense(3, 2, "leaky_relu", alpha=-0.1), ValueError),
    (lambda: nn.Dense(3, 2, dtype=np.int32), TypeError),
    (lambda: nn.Dense(3, 2, init="nope"), ValueError),
    (lambda: nn.LeakyReLU(0.0), ValueError),
    (lambda: nn.Dropout(1.0), ValueError),
    (lambda: nn.Dropout(-0.1), ValueError),
    (lambda: nn.Sequential(nn.ReLU(), np.tanh), TypeError),
    (lambda: nn.Parameter([1.0, 2.0]), TypeError),
    (lambda: nn.Parameter(np.zeros(3, np.int64)), TypeError),
    (lambda: nn.Parameter(np.zeros(0)), ValueError),
])
def test_bad_constructor_arguments(call, error):
    with pytest.raises(error):
        call()


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _classifier(dtype=np.float32, seed=0, dropout=0.2):
    return nn.Sequential(nn.Dense(20, 64, "relu", dtype=dtype, rng=seed),
                         nn.Dropout(dropout, rng=seed + 1),
                         nn.Dense(64, 10, dtype=dtype, rng=seed + 2))


def _traced_steps(step, n_steps):
    """Net growth and peak (above the start) of traced memory over n_steps calls."""
    started = not tracemalloc.is_tracing()  # leave a tracing started by someone else running
    if started:
        tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(n_steps):
            step()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return end - start, peak - start


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda ps: optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
], ids=["sgd_momentum", "adam"])
def test_train_step_allocates_nothing_after_warm_up(make_optimizer, rng):
    model = _classifier()
    loss = nn.SoftmaxCrossEntropy()
    opt = make_optimizer(model.parameters())
    X = rng.normal(size=(128, 20)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    # the smallest per-batch array (the logits' gradient) is 128*10*4 = 5 KiB:
    # a peak below that proves no batch-sized array was allocated, even briefly
    limit = 4096

    def step():
        nn.train_step(model, loss, opt, X, y)

    for _ in range(3):
        step()
    growth, peak = _traced_steps(step, 50)
    assert growth < limit and peak < limit, (growth, peak)
    growth10, peak10 = _traced_steps(step, 10)
    assert peak <= peak10 + 1024  # the peak does not grow with the number of steps

    # control: in eval mode the layers allocate fresh arrays, and the probe sees them
    model.eval()
    step()
    _, peak_eval = _traced_steps(step, 5)
    assert peak_eval > 3 * limit


def _blobs(rng, n=200):
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return X, y


def test_fit_is_reproducible_bit_for_bit(rng):
    X, y = rng.normal(size=(100, 20)), rng.integers(0, 10, 100)

    def run(fit_seed):
        model = _classifier(seed=3)
        opt = optim.Adam(model.parameters(), lr=1e-2)
        history = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=3, batch_size=32,
                         rng=fit_seed)
        return history, model.state_dict()

    h1, s1 = run(7)
    h2, s2 = run(7)
    assert h1 == h2 and all(np.array_equal(s1[k], s2[k]) for k in s1)
    h3, s3 = run(8)
    assert h3 != h1 and not np.array_equal(s3["0.weight"], s1["0.weight"])


def test_fit_learns_a_separable_problem(rng):
    X, y = _blobs(rng)
    model = nn.Sequential(nn.Dense(2, 16, "relu", rng=0), nn.Dense(16, 2, rng=1))
    opt = optim.Adam(model.parameters(), lr=0.05)
    history = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=20, batch_size=32, rng=0)
    assert len(history) == 20 and history[-1] < 0.25 * history[0]
    X_test, y_test = _blobs(rng)
    accuracy = np.mean(model.eval().forward(X_test).argmax(axis=1) == y_test)
    assert accuracy >= 0.97


def test_fit_without_shuffle_is_train_step_in_order(rng):
    X, y, w = rng.normal(size=(50, 4)), rng.normal(size=(50, 2)), rng.uniform(0.5, 2.0, 50)

    def make():
        model = nn.Sequential(nn.Dense(4, 3, "tanh", dtype=np.float64, rng=0),
                              nn.Dense(3, 2, dtype=np.float64, rng=1))
        return model, optim.SGD(model.parameters(), lr=0.1, momentum=0.5)

    model, opt = make()
    history = nn.fit(model, nn.MSELoss(), opt, X, y, epochs=2, batch_size=20, shuffle=False,
                     sample_weight=w)
    manual, manual_opt = make()
    loss = nn.MSELoss()
    for _ in range(2):
        total = 0.0
        for s in range(0, 50, 20):
            value = nn.train_step(manual, loss, manual_opt, X[s:s + 20], y[s:s + 20], w[s:s + 20])
            total += value * w[s:s + 20].sum()
        expected = total / w.sum()
    assert history[-1] == pytest.approx(expected, rel=1e-12)
    for a, b in zip(model.parameters(), manual.parameters()):
        assert np.array_equal(a.data, b.data)


def test_fit_with_shuffle_is_train_step_on_the_shuffled_rows(rng):
    # the batches that fit gathers (X and soft targets by the compiled row
    # copy, weights by np.take) are the rows of its shuffled order
    X, y, w = rng.normal(size=(70, 5)), rng.dirichlet(np.ones(3), 70), rng.uniform(0.5, 2.0, 70)

    def make():
        model = nn.Sequential(nn.Dense(5, 4, "relu", dtype=np.float64, rng=0),
                              nn.Dense(4, 3, dtype=np.float64, rng=1))
        return model, optim.SGD(model.parameters(), lr=0.1)

    model, opt = make()
    nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=32, rng=5,
           sample_weight=w)
    manual, manual_opt = make()
    order, shuffler = np.arange(70), np.random.default_rng(5)
    for _ in range(2):
        shuffler.shuffle(order)
        for s in range(0, 70, 32):
            rows = order[s:s + 32]
            nn.train_step(manual, nn.SoftmaxCrossEntropy(), manual_opt, X[rows], y[rows], w[rows])
    for a, b in zip(model.parameters(), manual.parameters()):
        assert np.array_equal(a.data, b.data)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", (1, 2))
def test_gather_rows(rng, dtype, threads):
    X = rng.normal(size=(3000, 37)).astype(dtype)
    for n in (0, 1, 7, 1000, 3000):             # from one thread's share to the team's
        idx = rng.integers(0, 3000, n)
        out = np.full((n, 37), np.nan, dtype)
        with fastnn.num_threads(threads):
            _kernels.gather_rows(X, idx, out)
        np.testing.assert_array_equal(out, X[idx])
    out = np.empty((2, 37), dtype)
    for bad in ([0, 3000], [-1, 0]):
        with pytest.raises(IndexError, match="index"):
            _kernels.gather_rows(X, np.array(bad), out)
    with pytest.raises(ValueError, match="out must have shape"):
        _kernels.gather_rows(X, np.arange(3), out)


def test_fit_callbacks_and_mode(rng):
    X, y = _blobs(rng, 40)
    model = nn.Sequential(nn.Dense(2, 3, rng=0), nn.Dense(3, 2, rng=1)).eval()
    seen = []
    history = nn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), X, y,
                     epochs=10, batch_size=8, rng=0,
                     callbacks=[lambda epoch, value: seen.append((epoch, value)) or epoch == 2])
    assert len(history) == 3 and seen == list(enumerate(history))
    assert not model.training  # the previous mode is restored


@pytest.mark.parametrize("kwargs,error", [
    (dict(y=np.zeros(9, np.int64)), ValueError),
    (dict(epochs=0), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(sample_weight=np.ones(5)), ValueError),
    (dict(X=np.zeros((0, 2))), ValueError),
    (dict(callbacks=[42]), TypeError),
])
def test_fit_bad_arguments(kwargs, error):
    model = nn.Sequential(nn.Dense(2, 2, rng=0))
    args = dict(X=np.zeros((10, 2)), y=np.zeros(10, np.int64), epochs=1, batch_size=4)
    args.update(kwargs)
    X, y = args.pop("X"), args.pop("y")
    with pytest.raises(error):
        nn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters()), X, y, **args)
