"""Gradient check of a model: backpropagation against central differences.

``gradcheck(model, X, y, loss)`` differentiates the batch loss
``loss.forward(model.forward(X), y, sample_weight)`` with respect to every
element of every parameter of ``model`` twice, by backpropagation and by
central differences in float64 (MATH.md §6), and reports the largest
relative error and where it occurs.
"""
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GradcheckResult", "gradcheck"]

_TINY = np.finfo(np.float64).tiny


@dataclass
class GradcheckResult:
    """Outcome of :func:`gradcheck`.

    ``max_rel_error``: the largest relative error of a parameter (defined
    in :func:`gradcheck`), found in parameter ``parameter`` (its qualified
    name, as in ``model.named_parameters()``), whose largest elementwise
    difference is at ``index``; ``errors``: the relative error of each
    parameter, by name; ``analytic`` and ``numeric``:
    the two gradients, by name (float64 arrays shaped like the parameters).
    """

    max_rel_error: float
    parameter: str
    index: tuple
    errors: dict
    analytic: dict = field(repr=False)
    numeric: dict = field(repr=False)


def _relative_error(analytic, numeric):
    """Normwise relative error of one parameter's gradient, and the index of
    its largest elementwise difference."""
    diff = np.abs(analytic - numeric)
    diff[np.isnan(diff)] = np.inf  # a NaN gradient is the worst error, not a silent pass
    flat_index = int(np.argmax(diff))
    largest = float(diff.flat[flat_index])
    scale = float(np.max(np.abs(analytic)) + np.max(np.abs(numeric)))
    error = largest / max(scale, _TINY) if np.isfinite(largest) else np.inf
    return error, tuple(int(i) for i in np.unravel_index(flat_index, diff.shape))


def _modules(model):
    """The model and, recursively, the layers of its containers."""
    yield model
    for layer in getattr(model, "layers", ()):
        yield from _modules(layer)


def gradcheck(model, X, y, loss, *, eps=1e-6, sample_weight=None):
    """Compare the backpropagated gradient of every parameter element of
    ``model`` (a ``fastnn.nn.Module``) with central differences.

    The model's parameters must be float64 (build the layers with
    ``dtype=np.float64``); a float32 model raises ``TypeError`` (its
    rounding would swamp any finite difference).  The model is run in
    evaluation mode, so that the loss is a deterministic function of the
    parameters (Dropout is the identity); the previous modes (of the model
    and of each layer) and the parameter values are restored when the function returns.

    Numerical derivative of element θ: (L(θ + h) − L(θ − h)) / (2h), with
    the step h = ``eps``·max(1, |θ|) (the denominator uses the difference of
    the two perturbed values actually stored, which removes the rounding of
    h itself).  Costs two forward passes per parameter element: meant for
    small models and batches.

    Relative error of a parameter P, with a its backpropagated and n its
    numerical gradient (normwise, over the elements of P)::

        max_i |a_i − n_i| / max(max_i |a_i| + max_i |n_i|, tiny)

    (tiny: the smallest normal float64, so two zero gradients give 0).  It
    lies in [0, 1] (infinite when a gradient is NaN).  Why normwise rather
    than elementwise: the difference quotient carries a rounding noise of
    about ulp(L)/h ≈ 1e-10·|L| on every element, so an element whose
    gradient happens to nearly cancel (|a| ~ 1e-5, which any MLP has) would
    show an elementwise relative error of 1e-5 that says nothing about
    backpropagation; measured against the scale of the whole parameter's
    gradient the noise stays near 1e-9, while a wrong element still shows up
    at the size of its own error.
    ``index`` is where |a_i − n_i| is largest in the worst parameter; the
    full gradients are in the result for elementwise inspection.

    Returns a :class:`GradcheckResult`.
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
    named = model.named_parameters()
    if not named:
        raise ValueError("gradcheck: the model has no parameters")
    for name, p in named:
        if p.data.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 parameters (build the model with "
                            f"dtype=np.float64); parameter {name!r} is {p.data.dtype}")
    X = np.array(X, dtype=np.float64)  # a private copy: nothing can change it under us

    def batch_loss():
        return loss.forward(model.forward(X), y, sample_weight)

    modes = [(m, m.training) for m in _modules(model)]  # layers may differ from the model
    saved = [p.data.copy() for _, p in named]
    model.eval()
    try:
        batch_loss()
        model.backward(loss.backward(), need_input_grad=False)
        analytic = {name: p.grad.astype(np.float64, copy=True) for name, p in named}
        numeric = {}
        for name, p in named:
            grad = np.empty(p.data.shape, np.float64)
            flat = p.data.reshape(-1)  # a view: Parameter data is C-contiguous
            for i in range(flat.size):
                theta = flat[i]
                h = eps * max(1.0, abs(theta))
                flat[i] = theta + h
                plus = batch_loss()
                step = flat[i]
                flat[i] = theta - h
                minus = batch_loss()
                step -= flat[i]
                flat[i] = theta
                grad.flat[i] = (plus - minus) / step
            numeric[name] = grad
    finally:
        for (_, p), data in zip(named, saved):
            np.copyto(p.data, data)
        for m, mode in modes:
            m.training = mode

    errors, worst = {}, (-1.0, "", ())
    for name, _ in named:
        error, index = _relative_error(analytic[name], numeric[name])
        errors[name] = error
        if error > worst[0]:
            worst = (error, name, index)
    return GradcheckResult(*worst, errors, analytic, numeric)
