"""train_step's one-call path for stacks of dense layers (_kernels.dense_stack_step).

It must give exactly the numbers of the layer-by-layer path (same kernels,
same order), leave the layers and the loss in the same state, and refuse bad
input as clearly.
"""
import numpy as np
import pytest

from fastnn import nn, optim

from conftest import DTYPES

SIZES = (13, 17, 9, 4)


def _model(dtype, bias=True, activations=("relu", "tanh", "identity")):
    return nn.Sequential(*[nn.Dense(a, b, act, bias=bias, dtype=dtype, rng=i)
                           for i, (a, b, act) in enumerate(zip(SIZES[:-1], SIZES[1:], activations))])


def _problem(loss_name, dtype, n=150):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, SIZES[0])).astype(dtype)
    if loss_name == "xent":
        return X, rng.integers(0, SIZES[-1], n), nn.SoftmaxCrossEntropy(label_smoothing=0.1)
    if loss_name == "xent_probs":
        p = rng.uniform(size=(n, SIZES[-1]))
        return X, (p / p.sum(1, keepdims=True)).astype(dtype), nn.SoftmaxCrossEntropy()
    y = rng.uniform(size=(n, SIZES[-1])).astype(dtype)
    return X, y, nn.MSELoss() if loss_name == "mse" else nn.BinaryCrossEntropyWithLogits()


def _train(fuse, monkeypatch, loss_name, dtype, bias=True, weighted=False, **kwargs):
    monkeypatch.setattr(nn, "_FUSE_DENSE_STACKS", fuse)
    model = _model(dtype, bias, **kwargs)
    X, y, loss = _problem(loss_name, dtype)
    w = np.random.default_rng(3).uniform(0, 2, len(X)) if weighted else None
    opt = optim.Adam(model.parameters(), lr=0.01)
    # batch 64 over 150 samples: a smaller last batch every epoch
    history = nn.fit(model, loss, opt, X, y, epochs=3, batch_size=64, rng=0, sample_weight=w)
    return history, model, loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_name", ("xent", "xent_probs", "mse", "bce"))
@pytest.mark.parametrize("bias, weighted", ((True, False), (False, True)))
def test_fused_step_equals_layer_by_layer(monkeypatch, loss_name, dtype, bias, weighted):
    fused = _train(True, monkeypatch, loss_name, dtype, bias, weighted)
    plain = _train(False, monkeypatch, loss_name, dtype, bias, weighted)
    assert fused[0] == plain[0]
    for (name, a), (_, b) in zip(fused[1].named_parameters(), plain[1].named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
        np.testing.assert_array_equal(a.grad, b.grad, err_msg=name)
    # the layers' outputs and the loss gradient are left as the plain path leaves them
    for a, b in zip(fused[1], plain[1]):
        np.testing.assert_array_equal(a._output, b._output)
    np.testing.assert_array_equal(fused[2].backward(), plain[2].backward())


def test_fused_step_single_layer_and_other_activations(monkeypatch):
    for activations in (("sigmoid", "leaky_relu", "relu"),):
        fused = _train(True, monkeypatch, "xent", np.float64, activations=activations)
        plain = _train(False, monkeypatch, "xent", np.float64, activations=activations)
        assert fused[0] == plain[0]
    monkeypatch.setattr(nn, "_FUSE_DENSE_STACKS", True)
    model = nn.Sequential(nn.Dense(3, 2, dtype=np.float64, rng=0))
    X = np.arange(12.0).reshape(4, 3) / 10
    value = nn.train_step(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
                          X, np.array([0, 1, 1, 0]))
    assert np.isfinite(value)


def test_the_fused_path_is_taken(monkeypatch):
    # a stack of Dense layers never calls the layers' own forward
    model = _model(np.float32)
    X, y, loss = _problem("xent", np.float32)

    def fail(*args, **kwargs):
        raise AssertionError("layer-by-layer forward called")
    monkeypatch.setattr(nn.Dense, "forward", fail)
    nn.train_step(model, loss, optim.SGD(model.parameters(), lr=0.1), X, y)


def test_forward_backward_leaves_the_update_out(monkeypatch):
    model = _model(np.float64)
    X, y, loss = _problem("xent", np.float64)
    before = [p.data.copy() for p in model.parameters()]
    value = nn.forward_backward(model, loss, X, y)
    monkeypatch.setattr(nn, "_FUSE_DENSE_STACKS", False)
    plain = _model(np.float64)
    assert value == nn.forward_backward(plain, loss, X, y)
    for p, q, old in zip(model.parameters(), plain.parameters(), before):
        np.testing.assert_array_equal(p.data, old)
        np.testing.assert_array_equal(p.grad, q.grad)


def test_non_dense_stacks_take_the_layer_path(monkeypatch):
    calls = []
    original = nn.Dense.forward
    monkeypatch.setattr(nn.Dense, "forward", lambda self, X: calls.append(1) or original(self, X))
    model = nn.Sequential(nn.Dense(5, 4, rng=0), nn.ReLU(), nn.Dense(4, 2, rng=1))
    nn.train_step(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1),
                  np.ones((3, 5), np.float32), np.array([0, 1, 0]))
    assert len(calls) == 2


@pytest.mark.parametrize("case, error, match", [
    ("X_shape", ValueError, r"expects X of shape \(N, 13\)"),
    ("X_empty", ValueError, "must not be empty"),
    ("label_range", ValueError, r"must lie in \[0, 4\)"),
    ("target_shape", ValueError, "target must have shape"),
    ("weight_shape", ValueError, "sample_weight must have shape"),
    ("weight_dtype", ValueError, r"layer 1 \(Dense\) weight.data must be a C-contiguous float32"),
    ("weight_shape_param", ValueError, r"weight.data must .* of shape \(17, 9\)"),
    ("grad_readonly", ValueError, r"layer 2 \(Dense\) weight.grad must .* writeable"),
    ("bias_strided", ValueError, r"layer 0 \(Dense\) bias.data must be a C-contiguous"),
])
def test_bad_input_is_refused_before_any_update(case, error, match):
    model = _model(np.float32)
    X, y, loss = _problem("xent", np.float32, n=8)
    # one good step first: the checked arrays are cached, and must be checked
    # again when a parameter's array is replaced
    nn.train_step(model, loss, optim.SGD(model.parameters(), lr=0.1), X, y)
    w = None
    if case == "X_shape":
        X = X[:, :5]
    elif case == "X_empty":
        X, y = X[:0], y[:0]
    elif case == "label_range":
        y = y.copy()
        y[3] = 4
    elif case == "target_shape":
        y = y[:5]
    elif case == "weight_shape":
        w = np.ones(3)
    elif case == "weight_dtype":
        model[1].weight.data = model[1].weight.data.astype(np.float64)
    elif case == "weight_shape_param":
        model[1].weight.data = np.zeros((17, 8), np.float32)
    elif case == "grad_readonly":
        model[2].weight.grad.flags.writeable = False
    elif case == "bias_strided":
        model[0].bias.data = np.zeros(34, np.float32)[::2]
    before = [p.data.copy() for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        nn.train_step(model, loss, opt, X, y, sample_weight=w)
    for p, old in zip(model.parameters(), before):
        if p.data.shape == old.shape and p.data.dtype == old.dtype:
            np.testing.assert_array_equal(p.data, old)
