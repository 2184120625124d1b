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
    if loss_name == "poisson":    # counts, many of them 0
        return X, rng.poisson(1.0, (n, SIZES[-1])).astype(dtype), nn.PoissonLoss()
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
@pytest.mark.parametrize("loss_name", ("xent", "xent_probs", "mse", "bce", "poisson"))
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_poisson_step_equals_layer_by_layer_with_sgd(monkeypatch, dtype):
    # SGD takes its step inside the call: still the plain path's numbers
    def run(fuse):
        monkeypatch.setattr(nn, "_FUSE_DENSE_STACKS", fuse)
        model = _model(dtype)
        X, y, loss = _problem("poisson", dtype)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        values = [nn.train_step(model, loss, opt, X, y) for _ in range(3)]
        return values, [p.data.copy() for p in model.parameters()], loss.backward().copy()

    fused, plain = run(True), run(False)
    assert fused[0] == plain[0] and all(np.isfinite(fused[0]))
    for a, b in zip(fused[1], plain[1]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fused[2], plain[2])


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
    ("poisson_negative", ValueError, "y must be non-negative for the Poisson loss"),
    ("poisson_nan", ValueError, "y must be non-negative for the Poisson loss, found nan"),
    ("weight_dtype", ValueError, r"layer 1 \(Dense\) weight.data must be a C-contiguous float32"),
    ("weight_shape_param", ValueError, r"weight.data must .* of shape \(17, 9\)"),
    ("grad_readonly", ValueError, r"layer 2 \(Dense\) weight.grad must .* writeable"),
    ("bias_strided", ValueError, r"layer 0 \(Dense\) bias.data must be a C-contiguous"),
])
def test_bad_input_is_refused_before_any_update(case, error, match):
    model = _model(np.float32)
    X, y, loss = _problem("poisson" if case.startswith("poisson") else "xent", np.float32, n=8)
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
    elif case.startswith("poisson"):
        y = y.copy()
        y[3, 1] = -1.0 if case == "poisson_negative" else np.nan
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


# ---------------------------------------------------------------------------
# the optimiser's step taken inside the same call (dense_stack_step's ``update``)
# ---------------------------------------------------------------------------
def _opt_train(monkeypatch, fuse_update, dtype, bias, cls, kwargs, sizes, batch):
    if not fuse_update:
        monkeypatch.setattr(cls, "_stack_update", lambda self, model: None)
    model = nn.Sequential(*[nn.Dense(a, b, "relu" if i < len(sizes) - 2 else "identity",
                                     bias=bias, dtype=dtype, rng=i)
                            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))])
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3 * batch + 7, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], len(X))
    opt = cls(model.parameters(), **kwargs)
    history = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=batch,
                     rng=0)
    monkeypatch.undo()
    return history, model, opt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", (True, False))
@pytest.mark.parametrize("cls, kwargs", (
    (optim.SGD, {"lr": 0.1}),
    (optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    (optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (optim.SGD, {"lr": 0.05, "l1": 1e-3}),
    (optim.Adam, {"lr": 0.01}),
    (optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-3,
                  "l1": 1e-4}),
    (optim.AdamW, {"lr": 0.01, "weight_decay": 0.05}),
))
# small layers (every product on one thread) and large ones (dW cut in tiles
# spread over the team, each updating its part of W)
@pytest.mark.parametrize("sizes, batch", (((13, 17, 9, 4), 16), ((300, 256, 40, 10), 64)))
def test_optimiser_step_inside_the_call_equals_step_after_it(monkeypatch, dtype, bias, cls,
                                                             kwargs, sizes, batch):
    calls = []
    owner = next(c for c in cls.__mro__ if "step" in vars(c))     # AdamW: Adam's step
    step = owner.step
    monkeypatch.setattr(owner, "step", lambda self: calls.append(1) or step(self))
    fused = _opt_train(monkeypatch, True, dtype, bias, cls, kwargs, sizes, batch)
    assert calls == []        # the update was taken inside the kernel call
    plain = _opt_train(monkeypatch, False, dtype, bias, cls, kwargs, sizes, batch)
    assert fused[0] == plain[0]
    assert fused[2].steps == plain[2].steps == 8
    for (name, a), (_, b) in zip(fused[1].named_parameters(), plain[1].named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
        np.testing.assert_array_equal(a.grad, b.grad, err_msg=name)
    for prefix, arrays in fused[2]._state_arrays().items():
        for i, (a, b) in enumerate(zip(arrays, plain[2]._state_arrays()[prefix])):
            np.testing.assert_array_equal(a, b, err_msg=f"{prefix}.{i}")


def test_sgd_step_stays_out_of_the_call_when_it_is_not_plain_sgd_over_the_model():
    X, y, loss = _problem("xent", np.float64, n=20)

    class Clipped(optim.SGD):
        def step(self):
            for p in self.params:
                np.clip(p.grad, -0.01, 0.01, out=p.grad)
            super().step()

    model = _model(np.float64)
    before = [p.data.copy() for p in model.parameters()]
    nn.train_step(model, loss, Clipped(model.parameters(), lr=1.0), X, y)
    for p, old in zip(model.parameters(), before):
        assert np.abs(p.data - old).max() <= 0.01 + 1e-15
    # an optimiser over some of the parameters: the others stay as they are
    model = _model(np.float64)
    frozen = [p.data.copy() for p in model[0].parameters()]
    opt = optim.SGD(model[1].parameters() + model[2].parameters(), lr=0.1)
    nn.train_step(model, loss, opt, X, y)
    for p, old in zip(model[0].parameters(), frozen):
        np.testing.assert_array_equal(p.data, old)
    assert opt.steps == 1 and not np.array_equal(model[2].weight.data, _model(np.float64)[2].weight.data)


def test_dense_stack_step_refuses_update_views_that_are_not_the_layers():
    from fastnn import _kernels
    model = _model(np.float64)
    X, y, loss = _problem("xent", np.float64, n=8)
    plan, grad = nn._stack_plan(model, loss, len(X), np.float64)
    views = optim.SGD(model.parameters(), lr=0.1)._stack_update(model)[1]
    adam = optim.Adam(model.parameters(), lr=0.1)._stack_update(model)
    before = [p.data.copy() for p in model.parameters()]

    def run(views, update=None):
        _kernels.dense_stack_step(plan, X, _kernels.Loss.LOSS_XENT, y.astype(np.int64), None,
                                  None, grad, 1 / len(X), 0.0,
                                  update or ("sgd", views, [True] * len(views), 0.1, 0.0, False,
                                             0.0, 0.0))
    with pytest.raises(ValueError, match="update: view 1 is not layer 0's bias"):
        run([views[0], views[2]] + views[2:])
    with pytest.raises(ValueError, match="update: 5 views for the layers' 6 parameters"):
        run(views[:5])
    with pytest.raises(ValueError, match="update: 7 views for the layers' 6 parameters"):
        run(views + views[:1])
    p, _ = views[3]
    with pytest.raises(ValueError, match="update: view 3 is not layer 1's bias, writeable "
                                         r"\(with a velocity of its size\)"):
        run(views[:3] + [(p, np.zeros(3))] + views[4:])
    # Adam needs both of its state arrays, of the parameter's size and dtype
    p, m, v = adam[1][2]
    for bad in ((p, m, None), (p, m[:-1], v), (p, m, v.astype(np.float32)),
                (p, m, np.broadcast_to(v, v.shape))):
        with pytest.raises(ValueError, match=r"update: view 2 is not layer 1's weight, "
                                             r"writeable \(with m and v of its size\)"):
            run(None, adam[:1] + (adam[1][:2] + [bad] + adam[1][3:],) + adam[2:])
    with pytest.raises(ValueError, match="update: 'sgd' or 'adam', got 'rmsprop'"):
        run(None, ("rmsprop",) + adam[1:])
    for p, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, old)
    run(views)
    assert not np.array_equal(model[0].weight.data, before[0])


@pytest.mark.parametrize("layer, item, bad, match", [
    (0, 0, lambda W: W[:12], r"layer 0: W must be a C-contiguous float64 array of shape \(13, 17\)"),
    (1, 0, lambda W: W.astype(np.float32), r"layer 1: W must be .* float64 array of shape "
                                           r"\(17, 9\)$"),
    (1, 1, lambda b: b[:-1], r"layer 1: b must be .* of shape \(9,\)$"),
    (2, 4, lambda O: O.T.copy().T, r"layer 2: O must be a C-contiguous float64 array of shape "
                                  r"\(8, 4\), writeable"),
    (0, 5, lambda D: D[::2], r"layer 0: D must be .* shape \(8, 17\), writeable"),
    (1, 6, lambda dW: dW.copy().view(np.int64), r"layer 1: dW must be .* float64"),
    (2, 7, lambda db: np.zeros(4), None),   # a fresh writeable array is fine
    (2, 7, lambda db: np.broadcast_to(db, (4,)), r"layer 2: db must be .*, writeable"),
])
def test_dense_stack_step_checks_each_layer_array(layer, item, bad, match):
    from fastnn import _kernels
    model = _model(np.float64)
    X, y, loss = _problem("xent", np.float64, n=8)
    plan, grad = nn._stack_plan(model, loss, len(X), np.float64)
    plan = [list(entry) for entry in plan]
    plan[layer][item] = bad(plan[layer][item])
    before = [p.data.copy() for p in model.parameters()]

    def run():
        return _kernels.dense_stack_step([tuple(e) for e in plan], X, _kernels.Loss.LOSS_XENT,
                                         y.astype(np.int64), None, None, grad, 1 / len(X), 0.0)
    if match is None:
        assert np.isfinite(run())
        return
    with pytest.raises(ValueError, match=match):
        run()
    for p, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, old)


# ---------------------------------------------------------------------------
# fit's epoch in one compiled call (dense_stack_epoch)
# ---------------------------------------------------------------------------
class _BatchHook:
    """A callback with a batch hook: fit then steps through train_step."""

    def batch_end(self, n_samples):
        pass

    def epoch_end(self, loss):
        return False


def _fit(monkeypatch, loss_name, dtype, shuffle, stepwise, compute_dtype=None, momentum=0.0,
         make_opt=None):
    """fit for two epochs of 150 samples in batches of 32 (the last of 22),
    through the compiled epoch or, with ``stepwise``, train_step by
    train_step; returns what fit leaves behind and how many epoch calls."""
    calls = []
    epoch = nn._kernels.dense_stack_epoch
    monkeypatch.setattr(nn._kernels, "dense_stack_epoch",
                        lambda *a: calls.append(1) or epoch(*a))
    model = _model(dtype)
    model.compute_dtype = compute_dtype
    X, y, loss = _problem(loss_name, dtype)
    opt = (make_opt or (lambda p: optim.SGD(p, lr=0.05, momentum=momentum)))(model.parameters())
    history = nn.fit(model, loss, opt, X, y, epochs=2, batch_size=32, shuffle=shuffle, rng=4,
                     callbacks=[_BatchHook()] if stepwise else None)
    monkeypatch.undo()
    state = [p.data.copy() for p in model.parameters()] + [p.grad.copy()
                                                           for p in model.parameters()]
    state += [np.array(layer._input) for layer in model.layers]
    state += [np.array(layer._output) for layer in model.layers] + [np.array(loss._grad)]
    return history, state, opt.steps, len(calls)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_name", ("xent", "xent_probs", "mse", "bce"))
@pytest.mark.parametrize("shuffle", (True, False))
def test_compiled_epoch_equals_fit_step_by_step(monkeypatch, dtype, loss_name, shuffle):
    compiled = _fit(monkeypatch, loss_name, dtype, shuffle, stepwise=False, momentum=0.9)
    stepwise = _fit(monkeypatch, loss_name, dtype, shuffle, stepwise=True, momentum=0.9)
    assert compiled[3] == 2 and stepwise[3] == 0       # one call an epoch; none
    assert compiled[0] == stepwise[0]
    assert compiled[2] == stepwise[2] == 10
    for i, (a, b) in enumerate(zip(compiled[1], stepwise[1])):
        assert a.shape == b.shape, i
        np.testing.assert_array_equal(a, b, err_msg=str(i))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_opt", (
    lambda p: optim.Adam(p, lr=0.01, weight_decay=1e-3),
    lambda p: optim.AdamW(p, lr=0.01, l1=1e-4),
), ids=("Adam", "AdamW"))
def test_compiled_epoch_with_adam_equals_fit_step_by_step(monkeypatch, dtype, make_opt):
    # Adam's step size changes from step to step inside the call
    compiled = _fit(monkeypatch, "xent", dtype, True, False, make_opt=make_opt)
    stepwise = _fit(monkeypatch, "xent", dtype, True, True, make_opt=make_opt)
    assert compiled[3] == 2 and compiled[0] == stepwise[0]
    assert compiled[2] == stepwise[2] == 10
    for i, (a, b) in enumerate(zip(compiled[1], stepwise[1])):
        np.testing.assert_array_equal(a, b, err_msg=str(i))


def test_compiled_epoch_in_bf16_equals_fit_step_by_step(monkeypatch):
    compiled = _fit(monkeypatch, "xent", np.float32, True, False, compute_dtype="bfloat16")
    stepwise = _fit(monkeypatch, "xent", np.float32, True, True, compute_dtype="bfloat16")
    assert compiled[3] == 2 and compiled[0] == stepwise[0]
    for a, b in zip(compiled[1], stepwise[1]):
        np.testing.assert_array_equal(a, b)


def test_compiled_epoch_refuses_a_bad_order_before_training():
    model = _model(np.float64)
    X, y, loss = _problem("xent", np.float64)
    order = np.arange(len(X))
    order[40] = len(X)
    before = [p.data.copy() for p in model.parameters()]
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(IndexError, match="order"):
        nn.fit(model, loss, opt, X, y, epochs=1, batch_size=16, order=order)
    with pytest.raises(ValueError, match="class"):
        nn.fit(model, loss, opt, X, np.full(len(X), SIZES[-1]), epochs=1, batch_size=16)
    for p, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.data, old)
    assert opt.steps == 0


def test_compiled_epoch_stops_between_steps_on_a_signal():
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    model = _model(np.float32)
    X, y, loss = _problem("xent", np.float32, n=200000)   # epochs of about a second
    opt = optim.SGD(model.parameters(), lr=0.01)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            nn.fit(model, loss, opt, X, y, epochs=2, batch_size=1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 0 < opt.steps < len(X)     # inside the first epoch, the batches done counted
    assert all(np.isfinite(p.data).all() for p in model.parameters())
