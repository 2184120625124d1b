"""Argument checking of fastnn.functional (docs/API.md): every bad input raises
the documented exception with a message that starts with the argument's name;
inputs are never modified; the dtype promotion rule."""
import copy
import re

import numpy as np
import pytest

from fastnn import functional as F
from fastnn import reference
from conftest import as_layout, assert_close

N, C = 6, 4
Z = np.linspace(-2, 2, N * C).reshape(N, C)
Y = np.array([0, 1, 2, 3, 0, 1])
P = np.full((N, C), 1 / C)
SW = np.linspace(0.5, 1.5, N)
A = np.linspace(-1, 1, N * 3).reshape(N, 3)
W = np.linspace(-1, 1, 3 * 2).reshape(3, 2)
B = np.array([0.1, -0.2])
O = np.tanh(A @ W + B)
G = np.ones((N, 2))
X = A
WL = np.array([0.5, -0.5, 0.25])
T = np.array([0, 1, 1, 0, 1, 0], dtype=float)


def readonly(x):
    x = np.array(x)
    x.flags.writeable = False
    return x


def strided(x):
    return as_layout(x, "strided")


def zeros(shape=(N, C), dtype=np.float64):
    return np.zeros(shape, dtype)


def sgd(param=None, grad=None, velocity=None, **kw):
    param = zeros((5,)) if param is None else param
    grad = np.ones(param.shape) if grad is None else grad
    return F.sgd_step(param, grad, velocity, **{"lr": 0.1, **kw})


def adam(param=None, grad=None, m=None, v=None, **kw):
    param = zeros((5,)) if param is None else param
    grad = np.ones(5) if grad is None else grad
    m = zeros((5,)) if m is None else m
    v = zeros((5,)) if v is None else v
    return F.adam_step(param, grad, m, v, **{"lr": 0.1, "step": 1, **kw})


def case(id, call, exc, name, also=None):
    return pytest.param(call, exc, name, also, id=id)


BAD_INPUTS = [
    # dtypes of the primary array
    case("z-complex", lambda: F.activation_forward(Z.astype(complex), "relu"), TypeError, "z"),
    case("z-object", lambda: F.activation_forward(Z.astype(object), "relu"), TypeError, "z"),
    case("z-float16", lambda: F.activation_forward(Z.astype(np.float16), "relu"), TypeError, "z"),
    case("z-str", lambda: F.activation_forward(np.array(["1", "2"]), "relu"), TypeError, "z"),
    case("z-longdouble", lambda: F.activation_forward(Z.astype(np.longdouble), "relu"),
         TypeError, "z"),
    case("z-empty", lambda: F.activation_forward(zeros((0,)), "relu"), ValueError, "z"),
    # activation names and the leaky slope
    case("activation-unknown", lambda: F.activation_forward(Z, "softplus"), ValueError,
         "activation", "leaky_relu"),
    case("activation-None", lambda: F.activation_forward(Z, None), ValueError, "activation"),
    case("activation-case", lambda: F.activation_forward(Z, "ReLU"), ValueError, "activation"),
    case("alpha-zero", lambda: F.activation_forward(Z, "leaky_relu", alpha=0), ValueError, "alpha"),
    case("alpha-negative", lambda: F.activation_forward(Z, "relu", alpha=-0.1), ValueError,
         "alpha"),
    case("alpha-nan", lambda: F.activation_forward(Z, "tanh", alpha=np.nan), ValueError, "alpha"),
    case("alpha-inf", lambda: F.activation_backward(Z, Z, "leaky_relu", alpha=np.inf),
         ValueError, "alpha"),
    case("alpha-str", lambda: F.activation_forward(Z, "leaky_relu", alpha="0.1"), ValueError,
         "alpha"),
    case("backward-name", lambda: F.activation_backward(Z, Z, "gelu"), ValueError, "activation"),
    case("backward-o-float16", lambda: F.activation_backward(Z.astype(np.float16), Z, "tanh"),
         TypeError, "o"),
    case("backward-grad-complex", lambda: F.activation_backward(Z, Z.astype(complex), "tanh"),
         TypeError, "grad_out"),
    case("backward-grad-shape", lambda: F.activation_backward(Z, Z[:, :3], "tanh"), ValueError,
         "grad_out", "(6, 4)"),
    case("backward-grad-ndim", lambda: F.activation_backward(Z, Z.ravel(), "tanh"), ValueError,
         "grad_out"),
    case("backward-empty", lambda: F.activation_backward(zeros((0, 3)), zeros((0, 3)), "tanh"),
         ValueError, "o"),
    # softmax
    case("softmax-1d", lambda: F.softmax(Z[0]), ValueError, "x", "2-D"),
    case("softmax-3d", lambda: F.softmax(Z[None]), ValueError, "x", "2-D"),
    case("log-softmax-1d", lambda: F.log_softmax(Z[0]), ValueError, "x"),
    case("softmax-complex", lambda: F.softmax(Z.astype(np.complex64)), TypeError, "x"),
    case("softmax-float16", lambda: F.log_softmax(Z.astype(np.float16)), TypeError, "x"),
    case("softmax-empty-rows", lambda: F.softmax(zeros((0, C))), ValueError, "x"),
    case("softmax-empty-cols", lambda: F.log_softmax(zeros((N, 0))), ValueError, "x"),
    # softmax cross-entropy: logits
    case("xent-logits-1d", lambda: F.softmax_cross_entropy(Z[0], Y[:1]), ValueError, "logits"),
    case("xent-logits-complex", lambda: F.softmax_cross_entropy(Z.astype(complex), Y),
         TypeError, "logits"),
    case("xent-logits-object", lambda: F.softmax_cross_entropy(Z.astype(object), Y),
         TypeError, "logits"),
    case("xent-empty-batch", lambda: F.softmax_cross_entropy(zeros((0, C)), Y[:0]),
         ValueError, "logits"),
    case("xent-no-classes", lambda: F.softmax_cross_entropy(zeros((N, 0)), Y), ValueError,
         "logits"),
    # ... class-index targets
    case("label-too-big", lambda: F.softmax_cross_entropy(Z, np.where(Y == 3, C, Y)),
         ValueError, "target", "[0, 4)"),
    case("label-negative", lambda: F.softmax_cross_entropy(Z, np.where(Y == 3, -1, Y)),
         ValueError, "target", "-1"),
    case("label-huge-uint64", lambda: F.softmax_cross_entropy(Z, np.full(N, 2**63, np.uint64)),
         ValueError, "target"),
    case("label-float-fraction", lambda: F.softmax_cross_entropy(Z, Y + 0.5), ValueError,
         "target"),
    case("label-float-nan", lambda: F.softmax_cross_entropy(Z, np.where(Y == 3, np.nan, Y)),
         ValueError, "target"),
    case("label-length", lambda: F.softmax_cross_entropy(Z, Y[:-1]), ValueError, "target",
         "(6,)"),
    case("label-empty", lambda: F.softmax_cross_entropy(Z, Y[:0]), ValueError, "target"),
    case("label-complex", lambda: F.softmax_cross_entropy(Z, Y.astype(complex)), TypeError,
         "target"),
    case("label-str", lambda: F.softmax_cross_entropy(Z, Y.astype(str)), TypeError, "target"),
    # ... probability targets
    case("target-prob-shape", lambda: F.softmax_cross_entropy(Z, zeros((N, C + 1))),
         ValueError, "target", "(6, 4)"),
    case("target-3d", lambda: F.softmax_cross_entropy(Z, P[None]), ValueError, "target"),
    case("target-prob-float16", lambda: F.softmax_cross_entropy(Z, P.astype(np.float16)),
         TypeError, "target"),
    # ... sample weights, reduction, label smoothing
    case("weights-negative", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW - 1),
         ValueError, "sample_weight"),
    case("weights-nan", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW * np.nan),
         ValueError, "sample_weight"),
    case("weights-inf", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW * np.inf),
         ValueError, "sample_weight"),
    case("weights-shape", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW[:-1]),
         ValueError, "sample_weight", "(6,)"),
    case("weights-2d", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW[:, None]),
         ValueError, "sample_weight"),
    case("weights-complex", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW + 0j),
         TypeError, "sample_weight"),
    case("weights-all-zero-mean", lambda: F.softmax_cross_entropy(Z, Y, sample_weight=SW * 0),
         ValueError, "sample_weight"),
    case("reduction-unknown", lambda: F.softmax_cross_entropy(Z, Y, reduction="avg"),
         ValueError, "reduction"),
    case("reduction-None", lambda: F.softmax_cross_entropy(Z, Y, reduction=None), ValueError,
         "reduction"),
    case("reduction-case", lambda: F.mse_loss(Z, Z, reduction="Mean"), ValueError, "reduction"),
    case("smoothing-negative", lambda: F.softmax_cross_entropy(Z, Y, label_smoothing=-0.1),
         ValueError, "label_smoothing"),
    case("smoothing-one", lambda: F.softmax_cross_entropy(Z, Y, label_smoothing=1.0),
         ValueError, "label_smoothing"),
    case("smoothing-nan", lambda: F.softmax_cross_entropy(Z, Y, label_smoothing=np.nan),
         ValueError, "label_smoothing"),
    # binary cross-entropy and mse
    case("bce-3d", lambda: F.binary_cross_entropy_with_logits(Z[None], Z[None]), ValueError, "z"),
    case("bce-complex", lambda: F.binary_cross_entropy_with_logits(Z + 0j, Z), TypeError, "z"),
    case("bce-t-shape", lambda: F.binary_cross_entropy_with_logits(Z, Z[:, :2]), ValueError,
         "t", "(6, 4)"),
    case("bce-t-ndim", lambda: F.binary_cross_entropy_with_logits(Z[:, 0], Z), ValueError, "t"),
    case("bce-t-object", lambda: F.binary_cross_entropy_with_logits(Z, Z.astype(object)),
         TypeError, "t"),
    case("bce-empty", lambda: F.binary_cross_entropy_with_logits(zeros((0,)), zeros((0,))),
         ValueError, "z"),
    case("bce-weights", lambda: F.binary_cross_entropy_with_logits(Z, Z, sample_weight=-SW),
         ValueError, "sample_weight"),
    case("bce-reduction", lambda: F.binary_cross_entropy_with_logits(Z, Z, reduction="max"),
         ValueError, "reduction"),
    case("mse-float16", lambda: F.mse_loss(Z.astype(np.float16), Z), TypeError, "o"),
    case("mse-y-shape", lambda: F.mse_loss(Z, Z.T), ValueError, "y", "(6, 4)"),
    case("mse-empty", lambda: F.mse_loss(zeros((N, 0)), zeros((N, 0))), ValueError, "o"),
    case("mse-weights-shape", lambda: F.mse_loss(Z, Z, sample_weight=SW[:3]), ValueError,
         "sample_weight"),
    # poisson: y >= 0 (NaN is not), the shape checks of the other pointwise losses
    case("poisson-y-negative", lambda: F.poisson_loss(Z, P - 0.5), ValueError, "y",
         "non-negative"),
    case("poisson-y-tiny-negative", lambda: F.poisson_loss(Z, np.full((N, C), -1e-300)),
         ValueError, "y", "-1e-300"),
    case("poisson-y-nan", lambda: F.poisson_loss(Z, np.where(Z > 1, np.nan, 1.0)), ValueError,
         "y", "nan"),
    case("poisson-y-negative-int", lambda: F.poisson_loss(Z, -np.ones((N, C), int)), ValueError,
         "y"),
    case("poisson-y-shape", lambda: F.poisson_loss(Z, P.T), ValueError, "y", "(6, 4)"),
    case("poisson-y-1d-for-2d", lambda: F.poisson_loss(Z, P[:, 0]), ValueError, "y"),
    case("poisson-3d", lambda: F.poisson_loss(Z[None], P[None]), ValueError, "z"),
    case("poisson-float16", lambda: F.poisson_loss(Z.astype(np.float16), P), TypeError, "z"),
    case("poisson-complex", lambda: F.poisson_loss(Z + 0j, P), TypeError, "z"),
    case("poisson-y-object", lambda: F.poisson_loss(Z, P.astype(object)), TypeError, "y"),
    case("poisson-y-str", lambda: F.poisson_loss(Z, np.full((N, C), "1")), TypeError, "y"),
    case("poisson-empty", lambda: F.poisson_loss(zeros((N, 0)), zeros((N, 0))), ValueError, "z"),
    case("poisson-weights-shape", lambda: F.poisson_loss(Z, P, sample_weight=SW[:3]), ValueError,
         "sample_weight"),
    case("poisson-weights-negative", lambda: F.poisson_loss(Z, P, sample_weight=-SW), ValueError,
         "sample_weight"),
    case("poisson-reduction", lambda: F.poisson_loss(Z, P, reduction="avg"), ValueError,
         "reduction"),
    # dense layer
    case("dense-W-1d", lambda: F.dense_forward(A, W[:, 0], None), ValueError, "W"),
    case("dense-W-complex", lambda: F.dense_forward(A, W + 0j, B), TypeError, "W"),
    case("dense-W-float16", lambda: F.dense_forward(A, W.astype(np.float16), B), TypeError, "W"),
    case("dense-A-shape", lambda: F.dense_forward(A[:, :2], W, B), ValueError, "A", "(N, 3)"),
    case("dense-A-1d", lambda: F.dense_forward(A[0], W, B), ValueError, "A"),
    case("dense-A-complex", lambda: F.dense_forward(A + 0j, W, B), TypeError, "A"),
    case("dense-b-shape", lambda: F.dense_forward(A, W, np.zeros(3)), ValueError, "b", "(2,)"),
    case("dense-b-2d", lambda: F.dense_forward(A, W, B[None]), ValueError, "b"),
    case("dense-b-object", lambda: F.dense_forward(A, W, B.astype(object)), TypeError, "b"),
    case("dense-activation", lambda: F.dense_forward(A, W, B, "swish"), ValueError, "activation"),
    case("dense-alpha", lambda: F.dense_forward(A, W, B, "leaky_relu", alpha=0.0), ValueError,
         "alpha"),
    case("dense-empty-batch", lambda: F.dense_forward(zeros((0, 3)), W, B), ValueError, "A"),
    case("dense-empty-W", lambda: F.dense_forward(A, zeros((3, 0)), None), ValueError, "W"),
    case("backward-O-shape", lambda: F.dense_backward(A, W, O.T, G), ValueError, "O", "(6, 2)"),
    case("backward-G-shape", lambda: F.dense_backward(A, W, O, G[:3]), ValueError, "grad_out",
         "(6, 2)"),
    case("backward-G-complex", lambda: F.dense_backward(A, W, O, G + 0j), TypeError, "grad_out"),
    case("backward-A-shape", lambda: F.dense_backward(A.T, W, O, G), ValueError, "A"),
    case("backward-activation", lambda: F.dense_backward(A, W, O, G, "elu"), ValueError,
         "activation"),
    case("backward-empty-batch",
         lambda: F.dense_backward(zeros((0, 3)), W, zeros((0, 2)), zeros((0, 2))),
         ValueError, "A"),
    case("backward-out-not-tuple", lambda: F.dense_backward(A, W, O, G, out=zeros((3, 2))),
         TypeError, "out"),
    case("backward-out-pair", lambda: F.dense_backward(A, W, O, G, out=(None, zeros((3, 2)))),
         TypeError, "out"),
    case("backward-out-dW-shape",
         lambda: F.dense_backward(A, W, O, G, out=(None, zeros((2, 3)), zeros(2))),
         ValueError, "out[1] (dW)", "(3, 2)"),
    case("backward-out-db-dtype",
         lambda: F.dense_backward(A, W, O, G, out=(None, zeros((3, 2)), zeros(2, np.float32))),
         TypeError, "out[2] (db)", "float64"),
    case("backward-out-dA-readonly",
         lambda: F.dense_backward(A, W, O, G, out=(readonly(A), zeros((3, 2)), zeros(2))),
         ValueError, "out[0] (dA)"),
    case("backward-out-dA-strided",
         lambda: F.dense_backward(A, W, O, G, out=(strided(A), zeros((3, 2)), zeros(2))),
         ValueError, "out[0] (dA)"),
    case("overwrite-readonly",
         lambda: F.dense_backward(A, W, O, readonly(G), overwrite_grad_out=True),
         ValueError, "grad_out"),
    case("overwrite-strided",
         lambda: F.dense_backward(A, W, O, strided(G), overwrite_grad_out=True),
         ValueError, "grad_out"),
    case("overwrite-dtype",
         lambda: F.dense_backward(A, W, O, G.astype(np.float32), overwrite_grad_out=True),
         TypeError, "grad_out"),
    case("overwrite-list",
         lambda: F.dense_backward(A, W, O, G.tolist(), overwrite_grad_out=True),
         TypeError, "grad_out"),
    # logistic regression
    case("logistic-X-1d", lambda: F.logistic_loss_grad(X[0], WL, 0.0, T[:1]), ValueError, "X"),
    case("logistic-X-complex", lambda: F.logistic_loss_grad(X + 0j, WL, 0.0, T), TypeError, "X"),
    case("logistic-X-empty", lambda: F.logistic_loss_grad(zeros((0, 3)), WL, 0.0, T[:0]),
         ValueError, "X"),
    case("logistic-w-shape", lambda: F.logistic_loss_grad(X, WL[:2], 0.0, T), ValueError, "w",
         "(3,)"),
    case("logistic-t-shape", lambda: F.logistic_loss_grad(X, WL, 0.0, T[:4]), ValueError, "t",
         "(6,)"),
    case("logistic-b-array", lambda: F.logistic_loss_grad(X, WL, np.zeros(1), T), TypeError, "b"),
    case("logistic-b-str", lambda: F.logistic_loss_grad(X, WL, "0", T), TypeError, "b"),
    case("logistic-weights", lambda: F.logistic_loss_grad(X, WL, 0.0, T, sample_weight=-SW),
         ValueError, "sample_weight"),
    # optimisers
    case("sgd-param-list", lambda: sgd(param=[0.0, 1.0], grad=[1.0, 1.0]), TypeError, "param"),
    case("sgd-param-int", lambda: sgd(param=np.zeros(5, int)), TypeError, "param"),
    case("sgd-param-float16", lambda: sgd(param=np.zeros(5, np.float16)), TypeError, "param"),
    case("sgd-param-readonly", lambda: sgd(param=readonly(np.zeros(5))), ValueError, "param"),
    case("sgd-param-strided", lambda: sgd(param=strided(np.zeros(5))), ValueError, "param"),
    case("sgd-param-empty", lambda: sgd(param=np.zeros(0)), ValueError, "param"),
    case("sgd-grad-shape", lambda: sgd(grad=np.ones(4)), ValueError, "grad", "(5,)"),
    case("sgd-grad-complex", lambda: sgd(grad=np.ones(5, complex)), TypeError, "grad"),
    case("sgd-velocity-shape", lambda: sgd(velocity=np.zeros(4), momentum=0.9), ValueError,
         "velocity"),
    case("sgd-velocity-dtype", lambda: sgd(velocity=np.zeros(5, np.float32), momentum=0.9),
         TypeError, "velocity"),
    case("sgd-velocity-readonly", lambda: sgd(velocity=readonly(np.zeros(5)), momentum=0.9),
         ValueError, "velocity"),
    case("sgd-velocity-missing", lambda: sgd(momentum=0.9), ValueError, "velocity"),
    case("sgd-lr-negative", lambda: sgd(lr=-0.1), ValueError, "lr"),
    case("sgd-lr-nan", lambda: sgd(lr=np.nan), ValueError, "lr"),
    case("sgd-momentum", lambda: sgd(velocity=np.zeros(5), momentum=1.5), ValueError,
         "momentum"),
    case("sgd-l1", lambda: sgd(l1=-1.0), ValueError, "l1"),
    case("sgd-l2", lambda: sgd(l2=np.inf), ValueError, "l2"),
    case("adam-m-shape", lambda: adam(m=np.zeros(4)), ValueError, "m"),
    case("adam-v-dtype", lambda: adam(v=np.zeros(5, np.float32)), TypeError, "v"),
    case("adam-v-list", lambda: adam(v=[0.0] * 5), TypeError, "v"),
    case("adam-m-readonly", lambda: adam(m=readonly(np.zeros(5))), ValueError, "m"),
    case("adam-grad-shape", lambda: adam(grad=np.ones((5, 1))), ValueError, "grad"),
    case("adam-step-zero", lambda: adam(step=0), ValueError, "step"),
    case("adam-step-float", lambda: adam(step=1.5), ValueError, "step"),
    case("adam-step-bool", lambda: adam(step=True), ValueError, "step"),
    case("adam-beta1", lambda: adam(beta1=1.0), ValueError, "beta1"),
    case("adam-beta2", lambda: adam(beta2=-0.1), ValueError, "beta2"),
    case("adam-eps", lambda: adam(eps=-1e-8), ValueError, "eps"),
    case("adam-lr", lambda: adam(lr=np.inf), ValueError, "lr"),
    case("adam-weight-decay", lambda: adam(weight_decay=-0.01), ValueError, "weight_decay"),
    case("adam-l1", lambda: adam(l1=np.nan), ValueError, "l1"),
]


@pytest.mark.parametrize("call, exc, name, also", BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(call, exc, name, also):
    # The message starts with the argument's name (not just mentions it).
    with pytest.raises(exc, match=rf"^{re.escape(name)}(?!\w)") as info:
        call()
    if also is not None:
        assert also in str(info.value)


# ---------------------------------------------------------------------------
# out= buffers
# ---------------------------------------------------------------------------
# name -> (call with an out buffer, the expected shape of out)
OUT_CALLS = {
    "activation_forward": (lambda out: F.activation_forward(Z, "tanh", out=out), Z.shape),
    "activation_backward": (lambda out: F.activation_backward(Z, Z, "tanh", out=out), Z.shape),
    "softmax": (lambda out: F.softmax(Z, out=out), Z.shape),
    "log_softmax": (lambda out: F.log_softmax(Z, out=out), Z.shape),
    "softmax_cross_entropy": (lambda out: F.softmax_cross_entropy(Z, Y, out=out), Z.shape),
    "bce": (lambda out: F.binary_cross_entropy_with_logits(Z, P, out=out), Z.shape),
    "mse_loss": (lambda out: F.mse_loss(Z, P, out=out), Z.shape),
    "poisson_loss": (lambda out: F.poisson_loss(Z, P, out=out), Z.shape),
    "dense_forward": (lambda out: F.dense_forward(A, W, B, out=out), (N, 2)),
    "logistic_loss_grad": (lambda out: F.logistic_loss_grad(X, WL, 0.0, T, out=out), (3,)),
}


def _bad_outs(shape):
    """(buffer, exception) pairs that every out= must refuse."""
    wrong = shape[:-1] + (shape[-1] + 1,)
    bad = [
        (np.zeros(wrong), ValueError),
        (np.zeros(shape + (1,)), ValueError),
        (np.zeros(shape, np.float32), TypeError),
        (np.zeros(shape, np.int64), TypeError),
        (readonly(np.zeros(shape)), ValueError),
        (strided(np.zeros(shape)), ValueError),
        (np.zeros(shape).tolist(), TypeError),
    ]
    if len(shape) == 2:
        bad.append((np.zeros(shape, order="F"), ValueError))
    return bad


@pytest.mark.parametrize("func", sorted(OUT_CALLS))
def test_bad_out_buffers(func):
    call, shape = OUT_CALLS[func]
    for buffer, exc in _bad_outs(shape):
        with pytest.raises(exc, match=r"^out(?!\w)"):
            call(buffer)
    # and a good one is used
    good = np.full(shape, np.nan)
    result = call(good)
    returned = result if isinstance(result, np.ndarray) else result[1]
    assert returned is good and not np.isnan(good).any()


def test_out_must_not_overlap_the_input():
    buffer = np.zeros(N * C + C)
    x = buffer[:N * C].reshape(N, C)
    x[...] = Z
    with pytest.raises(ValueError, match="^out"):
        F.softmax(x, out=buffer[C:].reshape(N, C))
    with pytest.raises(ValueError, match="^out"):
        F.softmax_cross_entropy(x, Y, out=x)   # the loss is not an in-place kernel
    storage = np.zeros(N * C + N)                 # out over the labels' bytes
    labels = storage[N * C - N // 2:][:N].view(np.int64)
    labels[:] = Y
    with pytest.raises(ValueError, match="^out"):
        F.softmax_cross_entropy(Z, labels, out=storage[:N * C].reshape(N, C))


def test_all_zero_weights_are_fine_with_sum():
    loss, grad = F.softmax_cross_entropy(Z, Y, sample_weight=np.zeros(N), reduction="sum")
    assert loss == 0 and not grad.any()


# ---------------------------------------------------------------------------
# inputs are never modified
# ---------------------------------------------------------------------------
CALLS = {
    "activation_forward": (lambda M, a: M.activation_forward(a["z"], "sigmoid"), dict(z=Z)),
    "activation_backward": (lambda M, a: M.activation_backward(a["o"], a["g"], "tanh"),
                            dict(o=np.tanh(Z), g=Z)),
    "softmax": (lambda M, a: M.softmax(a["x"]), dict(x=Z)),
    "log_softmax": (lambda M, a: M.log_softmax(a["x"]), dict(x=Z)),
    "xent_index": (lambda M, a: M.softmax_cross_entropy(a["z"], a["y"], sample_weight=a["w"],
                                                        label_smoothing=0.1),
                   dict(z=Z, y=Y, w=SW)),
    "xent_prob": (lambda M, a: M.softmax_cross_entropy(a["z"], a["p"], reduction="none"),
                  dict(z=Z, p=P)),
    "bce": (lambda M, a: M.binary_cross_entropy_with_logits(a["z"], a["t"], sample_weight=a["w"]),
            dict(z=Z, t=P, w=SW)),
    "mse": (lambda M, a: M.mse_loss(a["o"], a["y"], reduction="sum"), dict(o=Z, y=P)),
    "poisson": (lambda M, a: M.poisson_loss(a["z"], a["y"], sample_weight=a["w"],
                                            reduction="none"), dict(z=Z, y=P, w=SW)),
    "dense_forward": (lambda M, a: M.dense_forward(a["A"], a["W"], a["b"], "relu"),
                      dict(A=A, W=W, b=B)),
    "dense_backward": (lambda M, a: M.dense_backward(a["A"], a["W"], a["O"], a["G"], "tanh"),
                       dict(A=A, W=W, O=O, G=G)),
    "logistic": (lambda M, a: M.logistic_loss_grad(a["X"], a["w"], 0.5, a["t"],
                                                   sample_weight=a["sw"]),
                 dict(X=X, w=WL, t=T, sw=SW)),
    "sgd_grad": (lambda M, a: M.sgd_step(np.ones(6), a["g"], lr=0.1, l1=0.1), dict(g=SW)),
    "adam_grad": (lambda M, a: M.adam_step(np.ones(6), a["g"], np.zeros(6), np.zeros(6),
                                           lr=0.1, step=1), dict(g=SW)),
}


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("func", sorted(CALLS))
def test_inputs_are_never_modified(impl, func, dtype):
    call, arrays = CALLS[func]
    # already of the compute dtype and C-contiguous: a kernel could write into them
    arrays = {k: (v.astype(dtype) if v.dtype.kind == "f" else v.copy()) for k, v in arrays.items()}
    if func.startswith(("sgd", "adam")):
        arrays = {k: v.astype(np.float64) for k, v in arrays.items()}
    saved = copy.deepcopy(arrays)
    call(impl, arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


# ---------------------------------------------------------------------------
# empty batches: both implementations refuse them
# ---------------------------------------------------------------------------
EMPTY_CALLS = {
    "activation": lambda M: M.activation_forward(zeros((0, 3)), "relu"),
    "softmax": lambda M: M.softmax(zeros((0, C))),
    "log_softmax": lambda M: M.log_softmax(zeros((N, 0))),
    "xent": lambda M: M.softmax_cross_entropy(zeros((0, C)), Y[:0], reduction="sum"),
    "bce": lambda M: M.binary_cross_entropy_with_logits(zeros((0,)), zeros((0,)),
                                                         reduction="none"),
    "mse": lambda M: M.mse_loss(zeros((0, 2)), zeros((0, 2)), reduction="sum"),
    "poisson": lambda M: M.poisson_loss(zeros((0,)), zeros((0,)), reduction="none"),
    "dense_W": lambda M: M.dense_forward(zeros((N, 0)), zeros((0, 2)), None),
    "dense_A": lambda M: M.dense_forward(zeros((0, 3)), W, B),
    "dense_backward": lambda M: M.dense_backward(zeros((0, 3)), W, zeros((0, 2)), zeros((0, 2))),
    "logistic": lambda M: M.logistic_loss_grad(zeros((0, 3)), WL, 0.0, T[:0]),
}


@pytest.mark.parametrize("func", sorted(EMPTY_CALLS))
def test_empty_batches_raise(impl, func):
    with pytest.raises(ValueError, match="must not be empty"):
        EMPTY_CALLS[func](impl)


# ---------------------------------------------------------------------------
# dtype promotion (docs/API.md): the primary array decides
# ---------------------------------------------------------------------------
f32, f64 = np.float32, np.float64
PROMOTIONS = {
    # name: (call, primary dtype -> expected result dtype)
    "activation-int": (lambda M: M.activation_forward(np.arange(-3, 3), "relu"), f64),
    "activation-bool": (lambda M: M.activation_forward(np.array([True, False]), "sigmoid"), f64),
    "backward-f32-o-f64-grad": (lambda M: M.activation_backward(
        np.tanh(Z).astype(f32), Z, "tanh"), f32),
    "backward-int-o-f32-grad": (lambda M: M.activation_backward(
        np.arange(4), Z[0].astype(f32), "relu"), f64),
    "softmax-int": (lambda M: M.softmax(np.arange(12).reshape(3, 4)), f64),
    "softmax-f32": (lambda M: M.softmax(Z.astype(f32)), f32),
    "xent-int-logits": (lambda M: M.softmax_cross_entropy(Y.reshape(3, 2), Y[:3] % 2)[1], f64),
    "xent-f32-logits-f64-probs": (lambda M: M.softmax_cross_entropy(
        Z.astype(f32), P, sample_weight=SW, reduction="none")[1], f32),
    "xent-none-losses-f32": (lambda M: M.softmax_cross_entropy(
        Z.astype(f32), Y, reduction="none")[0], f32),
    "bce-f32-z-bool-t": (lambda M: M.binary_cross_entropy_with_logits(
        Z.astype(f32), Z > 0)[1], f32),
    "mse-f32-o-int-y": (lambda M: M.mse_loss(Z.astype(f32), np.ones((N, C), int))[1], f32),
    "mse-int-o": (lambda M: M.mse_loss(np.arange(5), np.ones(5, f32))[1], f64),
    "poisson-f32-z-int-y": (lambda M: M.poisson_loss(Z.astype(f32), np.ones((N, C), int))[1], f32),
    "poisson-int-z-f32-y": (lambda M: M.poisson_loss(np.arange(5), np.ones(5, f32))[1], f64),
    "poisson-f32-z-bool-y-none": (lambda M: M.poisson_loss(Z.astype(f32), Z > 0,
                                                           reduction="none")[0], f32),
    "dense-f64-A-f32-W": (lambda M: M.dense_forward(A, W.astype(f32), B), f32),
    "dense-f32-A-f64-W": (lambda M: M.dense_forward(A.astype(f32), W, B.astype(f32)), f64),
    "dense-int-A-f32-W": (lambda M: M.dense_forward(np.arange(6).reshape(2, 3),
                                                    W.astype(f32), None), f32),
    "dense-backward-f32-W": (lambda M: M.dense_backward(A, W.astype(f32), O, G)[1], f32),
    "logistic-f32-X": (lambda M: M.logistic_loss_grad(X.astype(f32), WL, 0.0, T)[1], f32),
    "logistic-int-X": (lambda M: M.logistic_loss_grad(np.ones((N, 3), int), WL, 0.0, T)[1], f64),
}


@pytest.mark.parametrize("name", sorted(PROMOTIONS))
def test_dtype_promotion(name):
    call, expected = PROMOTIONS[name]
    got, ref = call(F), call(reference)
    assert got.dtype == expected and ref.dtype == expected
    assert_close(got, ref, expected)


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_scalar_losses_are_python_floats(impl, reduction):
    for loss, _ in (impl.softmax_cross_entropy(Z.astype(f32), Y, reduction=reduction),
                    impl.binary_cross_entropy_with_logits(Z.astype(f32), P, reduction=reduction),
                    impl.mse_loss(Z.astype(f32), P, reduction=reduction),
                    impl.poisson_loss(Z.astype(f32), P, reduction=reduction)):
        assert type(loss) is float


def test_poisson_target_checks_in_both_implementations(impl):
    # the oracle refuses what the kernel's wrapper refuses (y < 0, NaN); 0 and inf are targets
    for bad in (P - 0.5, np.where(Z > 1, np.nan, P)):
        with pytest.raises(ValueError, match="^y must be non-negative"):
            impl.poisson_loss(Z, bad)
    losses, grad = impl.poisson_loss(Z, np.zeros((N, C)), reduction="none")
    assert_close(losses, np.exp(Z).sum(axis=1))
    y = np.ones((N, C))
    y[0, 0] = np.inf
    losses, _ = impl.poisson_loss(Z, y, reduction="none")
    assert not np.isfinite(losses[0]) and np.isfinite(losses[1:]).all()


def test_promoted_out_buffer_must_have_the_compute_dtype():
    with pytest.raises(TypeError, match="^out"):
        F.softmax(np.arange(6).reshape(2, 3), out=np.zeros((2, 3), f32))
    with pytest.raises(TypeError, match="^out"):
        F.dense_forward(A, W.astype(f32), B, out=np.zeros((N, 2)))
    assert F.dense_forward(A, W.astype(f32), B, out=np.zeros((N, 2), f32)).dtype == f32


def test_optimisers_cast_grad_to_the_param_dtype(impl):
    param = np.ones(4, f32)
    impl.sgd_step(param, np.arange(4.0), lr=0.5)
    assert param.dtype == f32
    np.testing.assert_array_equal(param, np.array([1.0, 0.5, 0.0, -0.5], f32))
