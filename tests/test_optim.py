"""Optimisers and learning-rate schedules (fastnn.optim).

The updates are checked against a plain float64 NumPy transcription of the
formulas (MATH.md §1, docs/API.md "Optimiser updates") and against
fastnn.reference's sgd_step/adam_step; the schedules against the rules of
scikit-learn's MLP (hand-computed, and replayed on scikit-learn's own runs
when it is installed).
"""
import math
import warnings

import numpy as np
import pytest

import fastnn
from fastnn import _kernels, nn, optim, reference
from fastnn.nn import Parameter

N_STEPS = 5
# float32 runs are compared with the float64 formulas: a few steps of float32
# rounding (Adam divides by sqrt(v), which amplifies it a little)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


# ---------------------------------------------------------------------------
# the formulas, in float64
# ---------------------------------------------------------------------------
def _regularised(theta, g, l2, l1):
    return g + l2 * theta + l1 * np.sign(theta)


def _clip(new, old, l1):
    # L1: a weight that would cross zero stops at zero
    return np.where((l1 > 0) & (new * old < 0), 0.0, new)


class NumpySGD:
    def __init__(self, theta, lr, momentum=0.0, nesterov=False, l2=0.0, l1=0.0):
        self.theta, self.v = theta.astype(np.float64), np.zeros(theta.shape)
        self.lr, self.momentum, self.nesterov, self.l2, self.l1 = lr, momentum, nesterov, l2, l1

    def step(self, grad):
        g = _regularised(self.theta, grad, self.l2, self.l1)
        self.v = self.momentum * self.v - self.lr * g
        update = self.momentum * self.v - self.lr * g if self.nesterov else self.v
        self.theta = _clip(self.theta + update, self.theta, self.l1)


class NumpyAdam:
    def __init__(self, theta, lr, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0, l1=0.0, decay=0.0):
        self.theta = theta.astype(np.float64)
        self.m, self.v, self.t = np.zeros(theta.shape), np.zeros(theta.shape), 0
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.l2, self.l1, self.decay = l2, l1, decay

    def step(self, grad):
        self.t += 1
        theta = self.theta * (1 - self.lr * self.decay)  # decoupled (AdamW) decay first
        g = _regularised(theta, grad, self.l2, self.l1)
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * g * g
        lr_t = self.lr * math.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        self.theta = _clip(theta - lr_t * self.m / (np.sqrt(self.v) + self.eps), theta, self.l1)


# "mixed": parameters of both dtypes in one optimiser (one kernel call per dtype)
DTYPES = [np.float32, np.float64, "mixed"]


def _params(rng, dtype):
    """A weight, a bias, and a weight of more than one update block (16384)."""
    first, second = (np.float32, np.float64) if dtype == "mixed" else (dtype, dtype)
    weight = Parameter(rng.normal(size=(6, 4)).astype(first), "weight", regularize=True)
    bias = Parameter(rng.normal(size=4).astype(second), "bias", regularize=False)
    big = Parameter(rng.normal(size=(130, 131)).astype(second), "big", regularize=True)
    return [weight, bias, big]


def _grads(rng, params):
    return [rng.normal(size=p.shape).astype(p.dtype) for p in params]


SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
    "l2": dict(lr=0.1, momentum=0.5, weight_decay=0.3),
    "l1": dict(lr=0.1, l1=0.2),
    "nesterov_l2_l1": dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1, l1=0.05),
}


def _numpy_sgd(theta, regularize, lr, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
    # biases (regularize=False) are exempt from both penalties
    return NumpySGD(theta, lr, momentum, nesterov, weight_decay if regularize else 0.0,
                    l1 if regularize else 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", sorted(SGD_CONFIGS))
def test_sgd_matches_the_formulas_and_the_reference(config, dtype, rng):
    kw = SGD_CONFIGS[config]
    params = _params(rng, dtype)
    expected = [_numpy_sgd(p.data, p.regularize, **kw) for p in params]
    ref = [p.data.copy() for p in params]
    ref_v = [np.zeros_like(p.data) for p in params]
    opt = optim.SGD(params, **kw)
    for step in range(1, N_STEPS + 1):
        for p, g, e, r, rv in zip(params, _grads(rng, params), expected, ref, ref_v):
            p.grad[...] = g
            e.step(g.astype(np.float64))
            reg = p.regularize
            reference.sgd_step(r, g, rv, lr=kw["lr"], momentum=kw.get("momentum", 0.0),
                               nesterov=kw.get("nesterov", False),
                               l2=kw.get("weight_decay", 0.0) if reg else 0.0,
                               l1=kw.get("l1", 0.0) if reg else 0.0)
        opt.step()
        assert opt.steps == step
        for p, e, r in zip(params, expected, ref):
            assert p.data.dtype == r.dtype
            where = f"{p.name} step {step}"
            np.testing.assert_allclose(p.data, e.theta, **TOL[p.dtype.type], err_msg=where)
            np.testing.assert_allclose(p.data, r, **TOL[p.dtype.type], err_msg=where)


ADAM_CONFIGS = {
    "adam": (optim.Adam, dict(lr=0.01)),
    "adam_betas_eps": (optim.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    "adam_l2_coupled": (optim.Adam, dict(lr=0.01, weight_decay=0.5)),
    "adam_l1": (optim.Adam, dict(lr=0.05, l1=0.3)),
    "adamw": (optim.AdamW, dict(lr=0.01)),  # default weight_decay 0.01
    "adamw_decoupled": (optim.AdamW, dict(lr=0.02, weight_decay=0.5, l1=0.1)),
}


def _numpy_adam(cls, theta, regularize, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=None,
                l1=0.0):
    if weight_decay is None:
        weight_decay = 0.01 if cls is optim.AdamW else 0.0
    wd = weight_decay if regularize else 0.0
    decoupled = cls is optim.AdamW
    return NumpyAdam(theta, lr, *betas, eps, l2=0.0 if decoupled else wd,
                     l1=l1 if regularize else 0.0, decay=wd if decoupled else 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", sorted(ADAM_CONFIGS))
def test_adam_matches_the_formulas_and_the_reference(config, dtype, rng):
    cls, kw = ADAM_CONFIGS[config]
    params = _params(rng, dtype)
    expected = [_numpy_adam(cls, p.data, p.regularize, **kw) for p in params]
    ref = [(p.data.copy(), np.zeros_like(p.data), np.zeros_like(p.data)) for p in params]
    opt = cls(params, **kw)
    wd, l1 = opt.weight_decay, opt.l1
    for step in range(1, N_STEPS + 1):
        for p, g, e, (r, rm, rv) in zip(params, _grads(rng, params), expected, ref):
            p.grad[...] = g
            e.step(g.astype(np.float64))
            reg = p.regularize
            reference.adam_step(r, g, rm, rv, lr=kw["lr"], step=step, beta1=opt.beta1,
                                beta2=opt.beta2, eps=opt.eps,
                                l2=wd if reg and cls is optim.Adam else 0.0,
                                l1=l1 if reg else 0.0,
                                weight_decay=wd if reg and cls is optim.AdamW else 0.0)
        opt.step()
        assert opt.steps == step
        for p, e, (r, _, _) in zip(params, expected, ref):
            where = f"{p.name} step {step}"
            np.testing.assert_allclose(p.data, e.theta, **TOL[p.dtype.type], err_msg=where)
            np.testing.assert_allclose(p.data, r, **TOL[p.dtype.type], err_msg=where)


def _zero_grad_step(opt, params):
    for p in params:
        p.grad[...] = 0
    before = [p.data.copy() for p in params]
    opt.step()
    return before


def test_l2_coupled_vs_decoupled_and_biases_exempt():
    # With a zero loss gradient only the penalty acts.
    theta = np.array([[0.5, -2.0, 8.0]])
    lr, wd = 0.01, 0.1

    # SGD, coupled: theta <- theta - lr wd theta
    params = [Parameter(theta.copy(), "w"), Parameter(theta[0].copy(), "b", regularize=False)]
    before = _zero_grad_step(optim.SGD(params, lr=lr, weight_decay=wd), params)
    np.testing.assert_allclose(params[0].data, before[0] * (1 - lr * wd), rtol=1e-15)
    assert np.array_equal(params[1].data, before[1])  # bias untouched

    # AdamW, decoupled: the same multiplicative shrink, proportional to theta
    params = [Parameter(theta.copy(), "w"), Parameter(theta[0].copy(), "b", regularize=False)]
    before = _zero_grad_step(optim.AdamW(params, lr=lr, weight_decay=wd), params)
    np.testing.assert_allclose(params[0].data, before[0] * (1 - lr * wd), rtol=1e-15)
    assert np.array_equal(params[1].data, before[1])

    # Adam, coupled: the penalty goes through the moment normalisation, so the
    # first step is lr·sign(theta) (up to eps) whatever the size of theta
    params = [Parameter(theta.copy(), "w"), Parameter(theta[0].copy(), "b", regularize=False)]
    before = _zero_grad_step(optim.Adam(params, lr=lr, weight_decay=wd), params)
    np.testing.assert_allclose(before[0] - params[0].data, lr * np.sign(theta), rtol=1e-4)
    assert np.array_equal(params[1].data, before[1])


OPTIMIZERS = {
    "sgd": lambda ps, **kw: optim.SGD(ps, **kw),
    "sgd_momentum": lambda ps, **kw: optim.SGD(ps, momentum=0.9, **kw),
    "sgd_nesterov": lambda ps, **kw: optim.SGD(ps, momentum=0.9, nesterov=True, **kw),
    "adam": lambda ps, **kw: optim.Adam(ps, **kw),
    "adamw": lambda ps, **kw: optim.AdamW(ps, **kw),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l1_clips_at_zero_instead_of_flipping_sign(name, dtype, rng):
    n = 2000
    theta = rng.uniform(-0.05, 0.05, size=(n, 1)).astype(dtype)
    params = [Parameter(theta.copy(), "w")]
    opt = OPTIMIZERS[name](params, lr=0.05, l1=1.0)
    zeros = 0
    for _ in range(N_STEPS):
        before = params[0].data.copy()
        # large gradients push many weights across zero
        params[0].grad[...] = rng.normal(scale=2.0, size=(n, 1))
        opt.step()
        after = params[0].data
        assert np.all(after * before >= 0), "a weight changed sign under L1"
        zeros += np.count_nonzero((after == 0) & (before != 0))
    assert zeros > n // 10  # the clip really happened, many times


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_lr_zero_leaves_weights_unchanged(name, rng):
    params = _params(rng, np.float64)
    start = [p.data.copy() for p in params]
    opt = OPTIMIZERS[name](params, lr=0.0, weight_decay=0.5, l1=0.5)
    for _ in range(3):
        for p, g in zip(params, _grads(rng, params)):
            p.grad[...] = g
        opt.step()
    for p, s in zip(params, start):
        assert np.array_equal(p.data, s)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip(name, rng):
    params_a = _params(rng, np.float32)
    params_b = [Parameter(p.data.copy(), p.name, p.regularize) for p in params_a]
    opt_a = OPTIMIZERS[name](params_a, lr=0.01, weight_decay=0.1)
    grads = [_grads(rng, params_a) for _ in range(5)]

    def run(opt, params, gs):
        for g_list in gs:
            for p, g in zip(params, g_list):
                p.grad[...] = g
            opt.step()

    run(opt_a, params_a, grads[:3])
    state = opt_a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())  # savable with np.savez
    saved = {key: value.copy() for key, value in state.items()}
    # a fresh optimiser with other hyperparameters takes everything from the state
    for pa, pb in zip(params_a, params_b):
        pb.data[...] = pa.data
    opt_b = OPTIMIZERS[name](params_b, lr=0.5)
    opt_b.load_state_dict(state)
    assert opt_b.steps == 3 and opt_b.lr == opt_a.lr and opt_b.weight_decay == 0.1
    run(opt_a, params_a, grads[3:])
    run(opt_b, params_b, grads[3:])
    for pa, pb in zip(params_a, params_b):
        assert np.array_equal(pa.data, pb.data)
    # the saved state holds copies: the later steps did not change it
    for key, value in state.items():
        assert np.array_equal(value, saved[key]), key


def test_state_dict_errors(rng):
    params = _params(rng, np.float64)
    opt = optim.Adam(params)
    state = opt.state_dict()
    with pytest.raises(KeyError, match="m.1"):
        optim.Adam(params).load_state_dict({k: v for k, v in state.items() if k != "m.1"})
    bad = dict(state, **{"v.0": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(params).load_state_dict(bad)


def test_sgd_state_without_momentum_round_trips(rng):
    params = _params(rng, np.float64)
    plain = optim.SGD(params, lr=0.2)
    plain.step()
    other = optim.SGD(params, lr=0.01, momentum=0.9)
    other.load_state_dict(plain.state_dict())
    assert other.momentum == 0.0 and other.velocities is None and other.lr == 0.2


def test_zero_grad(rng):
    params = _params(rng, np.float32)
    for p, g in zip(params, _grads(rng, params)):
        p.grad[...] = g
    optim.SGD(params).zero_grad()
    assert all(not p.grad.any() for p in params)


@pytest.mark.parametrize("call,error", [
    (lambda ps: optim.SGD([]), ValueError),
    (lambda ps: optim.SGD([ps[0].data]), TypeError),
    (lambda ps: optim.SGD([ps[0], ps[0]]), ValueError),
    (lambda ps: optim.SGD(ps, lr=-0.1), ValueError),
    (lambda ps: optim.SGD(ps, lr=float("nan")), ValueError),
    (lambda ps: optim.SGD(ps, momentum=1.5), ValueError),
    (lambda ps: optim.SGD(ps, weight_decay=-1.0), ValueError),
    (lambda ps: optim.SGD(ps, l1=-1.0), ValueError),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), ValueError),
    (lambda ps: optim.Adam(ps, betas=0.9), ValueError),
    (lambda ps: optim.Adam(ps, eps=-1e-8), ValueError),
    (lambda ps: optim.AdamW(ps, weight_decay=float("inf")), ValueError),
    (lambda ps: optim.StepLR(ps, 2), TypeError),  # a schedule needs an optimiser
    (lambda ps: optim.StepLR(optim.SGD(ps), 0), ValueError),
    (lambda ps: optim.ExponentialLR(optim.SGD(ps), gamma=-0.5), ValueError),
    (lambda ps: optim.InverseScalingLR(optim.SGD(ps), power_t=-1), ValueError),
    (lambda ps: optim.AdaptiveLR(optim.SGD(ps), n_iter_no_change=0), ValueError),
    (lambda ps: optim.AdaptiveLR(optim.SGD(ps), factor=1.0), ValueError),
    (lambda ps: optim.AdaptiveLR(optim.SGD(ps)).epoch_end(None), ValueError),
])
def test_bad_arguments(call, error, rng):
    with pytest.raises(error):
        call(_params(rng, np.float64))


def test_lr_setter_validates(rng):
    opt = optim.Adam(_params(rng, np.float64))
    opt.lr = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError):
        opt.lr = -1.0


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------
def _optimizer(lr=0.1):
    return optim.SGD([Parameter(np.zeros(3), "w")], lr=lr)


def _run_epochs(schedule, losses, batches=(32, 32, 36)):
    """Drive a schedule as fit() does; the lr after each epoch, and the epoch
    (1-based) at which it first asked to stop (None if never)."""
    lrs, stopped_at = [], None
    for epoch, loss in enumerate(losses, 1):
        for n in batches:
            lr_before = schedule.lr
            schedule.batch_end(n)
            assert schedule.lr == lr_before  # the rate only changes between epochs
        if schedule.epoch_end(loss) and stopped_at is None:
            stopped_at = epoch
        lrs.append(schedule.lr)
    return lrs, stopped_at


def test_constant_lr():
    schedule = optim.ConstantLR(_optimizer(0.3))
    lrs, stop = _run_epochs(schedule, [1.0, 2.0, 3.0, 3.0, 3.0])
    assert lrs == [0.3] * 5 and stop is None and schedule.epoch == 5


def test_inverse_scaling_lr():
    # scikit-learn: lr = lr0 / (t + 1)^power_t, t = samples seen (100 per epoch here)
    schedule = optim.InverseScalingLR(_optimizer(), power_t=0.5, lr0=0.2)
    lrs, stop = _run_epochs(schedule, [1.0] * 4)
    assert stop is None and schedule.samples_seen == 400
    np.testing.assert_allclose(lrs, [0.2 / math.sqrt(100 * k + 1) for k in range(1, 5)], rtol=1e-15)
    schedule = optim.InverseScalingLR(_optimizer(0.5), power_t=0.25)
    lrs, _ = _run_epochs(schedule, [1.0] * 2, batches=(10,))
    np.testing.assert_allclose(lrs, [0.5 / 11 ** 0.25, 0.5 / 21 ** 0.25], rtol=1e-15)


def test_step_and_exponential_lr():
    lrs, _ = _run_epochs(optim.StepLR(_optimizer(0.8), step_size=2, gamma=0.5), [1.0] * 5)
    np.testing.assert_allclose(lrs, [0.8, 0.4, 0.4, 0.2, 0.2], rtol=1e-15)
    lrs, _ = _run_epochs(optim.ExponentialLR(_optimizer(0.8), gamma=0.9), [1.0] * 4)
    np.testing.assert_allclose(lrs, [0.8 * 0.9 ** k for k in range(1, 5)], rtol=1e-15)


def test_adaptive_lr_follows_sklearn_rule():
    # scikit-learn's rule, by hand, with n_iter_no_change=2, tol=1e-4:
    # an epoch counts as "no improvement" when loss > best - tol; after
    # n_iter_no_change + 1 = 3 such epochs in a row lr is divided by 5.
    losses = [1.0, 0.9, 0.95, 0.9, 0.89995, 0.5, 0.6, 0.6, 0.6, 0.4]
    # counts:  0    0    1     2    3 -> /5  0    1    2    3 -> /5  0
    # (0.89995 improves on 0.9, but by less than tol: still "no improvement")
    expected = [0.1] * 4 + [0.02] * 4 + [0.004] * 2
    schedule = optim.AdaptiveLR(_optimizer(0.1), tol=1e-4, n_iter_no_change=2)
    lrs, stop = _run_epochs(schedule, losses)
    np.testing.assert_allclose(lrs, expected, rtol=1e-15)
    assert stop is None and schedule.best_loss == 0.4 and schedule.no_improvement_count == 0


def test_adaptive_lr_stops_below_min_lr():
    # constant loss, n_iter_no_change=1: every second epoch triggers.
    # 1e-5 -> 2e-6 (epoch 3) -> 4e-7 (epoch 5); at epoch 7 lr <= 1e-6: stop
    schedule = optim.AdaptiveLR(_optimizer(1e-5), n_iter_no_change=1, min_lr=1e-6)
    lrs, stop = _run_epochs(schedule, [1.0] * 8)
    np.testing.assert_allclose(lrs, [1e-5] * 2 + [2e-6] * 2 + [4e-7] * 4, rtol=1e-12)
    assert stop == 7


@pytest.mark.parametrize("tol,n_iter_no_change", [(0.05, 2), (1e-3, 1), (0.01, 3)])
def test_adaptive_lr_replays_sklearn_runs(tol, n_iter_no_change):
    """Feed scikit-learn's own loss curve to AdaptiveLR: it must stop at the
    same epoch and end with the same learning rate."""
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is an optional test dependency")
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(60, 5, random_state=0)
    clf = MLPClassifier((5,), solver="sgd", learning_rate="adaptive", learning_rate_init=0.1,
                        tol=tol, n_iter_no_change=n_iter_no_change, max_iter=300,
                        batch_size=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sklearn.exceptions.ConvergenceWarning)
        clf.fit(X, y)
    assert clf.n_iter_ < 300, "scikit-learn should stop on its adaptive rule"
    schedule = optim.AdaptiveLR(_optimizer(0.1), tol=tol, n_iter_no_change=n_iter_no_change)
    lrs, stop = _run_epochs(schedule, clf.loss_curve_)
    assert stop == clf.n_iter_ == len(clf.loss_curve_)
    assert lrs[-1] == pytest.approx(clf._optimizer.learning_rate, rel=1e-12)


def test_inverse_scaling_matches_sklearn():
    pytest.importorskip("sklearn", reason="scikit-learn is an optional test dependency")
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    ours = optim.InverseScalingLR(_optimizer(0.1), power_t=0.4)
    theirs = SGDOptimizer([np.zeros(3)], learning_rate_init=0.1, lr_schedule="invscaling",
                          power_t=0.4)
    seen = 0
    for _ in range(4):
        for n in (32, 32, 36):
            ours.batch_end(n)
        seen += 100
        ours.epoch_end(1.0)
        theirs.iteration_ends(seen)  # scikit-learn passes t_, the samples seen
        assert ours.lr == pytest.approx(theirs.learning_rate, rel=1e-15)


@pytest.mark.parametrize("make", [
    lambda opt: optim.AdaptiveLR(opt, n_iter_no_change=1),
    lambda opt: optim.InverseScalingLR(opt, power_t=0.3),
    lambda opt: optim.StepLR(opt, step_size=2, gamma=0.3),
    lambda opt: optim.ExponentialLR(opt, gamma=0.7),
])
def test_schedule_state_dict_round_trip(make):
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.85, 0.85, 0.85]
    a = make(_optimizer(0.1))
    _run_epochs(a, losses[:4])
    opt_b = _optimizer(0.1)
    b = make(opt_b)
    b.load_state_dict(a.state_dict())
    opt_b.lr = a.lr  # the rate itself lives in the optimiser's state
    assert _run_epochs(a, losses[4:]) == _run_epochs(b, losses[4:])


def test_schedule_in_fit_sets_lr_and_stops_training(rng):
    X = rng.normal(size=(40, 3))
    y = rng.integers(0, 2, 40)
    model = nn.Sequential(nn.Dense(3, 2, dtype=np.float64, rng=0))
    opt = optim.SGD(model.parameters(), lr=1e-5)
    # a tolerance no epoch can beat: every epoch is "no improvement"
    schedule = optim.AdaptiveLR(opt, tol=10.0, n_iter_no_change=1, min_lr=1e-6)
    history = nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=50, batch_size=16,
                     rng=0, callbacks=[schedule])
    assert len(history) == 7 and opt.lr == pytest.approx(4e-7)
    # InverseScalingLR sees every batch through batch_end
    schedule = optim.InverseScalingLR(opt, lr0=0.1)
    nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=16, rng=0,
           callbacks=[schedule])
    assert schedule.samples_seen == 80 and opt.lr == pytest.approx(0.1 / math.sqrt(81))


@pytest.mark.parametrize("make", [optim.SGD, lambda ps: optim.SGD(ps, momentum=0.9), optim.Adam])
def test_checked_arrays_are_checked_again_when_replaced(make):
    # the optimisers keep their checked flat views across steps: a replaced
    # or frozen array must be checked again, not written through a stale view
    p = nn.Parameter(np.ones((3, 2), np.float32), "w")
    opt = make([p])
    p.grad[...] = 1
    opt.step()
    p.data = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        opt.step()
    p.data = np.ones((3, 2), np.float32)
    opt.step()
    assert (p.data < 1).all()           # the new array was updated
    p.data.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        opt.step()


def test_same_writeable_arrays():
    # the per-step test behind those caches
    a, b = np.zeros(3), np.zeros(3)
    same = _kernels.same_writeable_arrays
    assert same([a, None, b], [a, None, b])
    assert not same([a, b], [a, b.copy()])          # another object, equal values
    assert not same([a, b], [a])
    assert not same([a, None], [a, b])
    b.flags.writeable = False
    assert not same([a, b], [a, b])
    assert not same(["x"], ["x"])                   # not an array


# ---------------------------------------------------------------------------
# the MLP estimators' penalty (one kernel for the compiled epoch and Python)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [[(1,)], [(3, 5), (5,)], [(784, 256), (256, 128), (128, 10)],
                                   [(16384,), (16385,), (31, 33)]])
@pytest.mark.parametrize("alpha, l1", [(1e-4, 0.0), (0.0, 1e-3), (0.3, 0.02), (0.0, 0.0)])
def test_penalty_matches_the_reference_for_any_thread_count(dtype, sizes, alpha, l1, rng):
    weights = [rng.standard_normal(shape).astype(dtype) for shape in sizes]
    weights[0].flat[0] = -3.0       # a sign to take off for the L1 sum
    expected = reference.penalty(weights, alpha, l1)
    values = set()
    for n in (1, 2, 3, 8):
        with fastnn.num_threads(n):
            values.add(_kernels.penalty(weights, alpha, l1))
    assert len(values) == 1
    np.testing.assert_allclose(values.pop(), expected, rtol=1e-12, atol=0)


def test_penalty_refuses_arrays_it_cannot_read(rng):
    w = rng.standard_normal((4, 6))
    assert _kernels.penalty([], 0.1, 0.0) == 0.0
    for bad in (w[:, ::2], w.astype(np.float32), [[1.0]], np.empty((0, 3))):
        with pytest.raises(ValueError, match=r"weights\[1\] must be a non-empty C-contiguous"):
            _kernels.penalty([w, bad], 0.1, 0.0)
