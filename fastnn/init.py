"""Weight initialisers.

Every function returns a new array of the requested ``shape`` and ``dtype``
(float32 by default, float64 allowed).  Fan-based initialisers read the
fans from a weight shape ``(n_in, n_out)`` (fastnn's layout: ``W`` maps
``n_in`` inputs to ``n_out`` outputs).  ``rng`` is a
``numpy.random.Generator``, an int seed, a ``numpy.random.SeedSequence`` or
``None`` (fresh OS entropy); the same seed gives the same array.  Values are
drawn in float64 and then rounded to ``dtype``, so a float32 and a float64
array drawn from the same seed agree to float32 precision.

Biases are initialised at 0 (``zeros``), as MATH.md §1 prescribes.

Formulas (fan_in = n_in, fan_out = n_out):

============================  ==========================================
``normal(shape, std)``        N(0, std²)
``uniform(shape, a)``         U(-a, a)
``xavier_uniform``            U(-b, b), b = gain·sqrt(6 / (fan_in + fan_out))
``xavier_normal``             N(0, s²), s = gain·sqrt(2 / (fan_in + fan_out))
``he_uniform``                U(-b, b), b = gain·sqrt(3 / fan_in)
``he_normal``                 N(0, s²), s = gain / sqrt(fan_in)
``sklearn_uniform``           U(-b, b), b = sqrt(f / (fan_in + fan_out)),
                              f = 2 for sigmoid, else 6 (scikit-learn's MLP)
============================  ==========================================

``he_*`` use the Kaiming gain of the activation (``calculate_gain``):
sqrt(2) for relu, sqrt(2 / (1 + alpha²)) for leaky_relu.
"""
import math
import numbers

import numpy as np

from ._checks import check_real

__all__ = [
    "INITIALIZERS",
    "as_generator",
    "calculate_gain",
    "get",
    "he_normal",
    "he_uniform",
    "normal",
    "sklearn_uniform",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_generator(rng):
    """``rng`` as a ``numpy.random.Generator`` (a Generator is returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
        if isinstance(rng, numbers.Integral) and (isinstance(rng, bool) or rng < 0):
            raise ValueError(f"rng must be a non-negative int seed, got {rng!r}")
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, "
                    f"got {type(rng).__name__}")


def _check_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _check_shape(shape):
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    # int() would silently truncate a float dimension such as 2.5
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape must have positive dimensions, got {shape}")
    return shape


def _fans(shape):
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be a weight shape (n_in, n_out) to derive the fans, "
                         f"got {shape}")
    return shape, shape[0], shape[1]


def _uniform(shape, bound, rng, dtype):
    dtype = _check_dtype(dtype)
    return as_generator(rng).uniform(-bound, bound, shape).astype(dtype, copy=False)


def _normal(shape, std, rng, dtype):
    dtype = _check_dtype(dtype)
    return as_generator(rng).normal(0.0, std, shape).astype(dtype, copy=False)


def calculate_gain(activation="identity", alpha=0.01):
    """The recommended scaling gain of an activation (PyTorch's values):
    identity/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2/(1+alpha²))."""
    if activation in ("identity", "sigmoid"):
        return 1.0
    if activation == "tanh":
        return 5.0 / 3.0
    if activation == "relu":
        return math.sqrt(2.0)
    if activation == "leaky_relu":
        alpha = check_real(alpha, "alpha", 0.0, low_open=True)
        return math.sqrt(2.0 / (1.0 + alpha * alpha))
    raise ValueError(f"activation must be one of identity, sigmoid, tanh, relu, leaky_relu, "
                     f"got {activation!r}")


def zeros(shape, rng=None, dtype=np.float32):
    """All zeros (the bias initialiser). ``rng`` is accepted and ignored."""
    return np.zeros(_check_shape(shape), _check_dtype(dtype))


def normal(shape, std=0.01, rng=None, dtype=np.float32):
    """N(0, std²) entries."""
    return _normal(_check_shape(shape), check_real(std, "std", 0.0, low_open=True), rng, dtype)


def uniform(shape, a=0.05, rng=None, dtype=np.float32):
    """U(-a, a) entries."""
    return _uniform(_check_shape(shape), check_real(a, "a", 0.0, low_open=True), rng, dtype)


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    """Glorot/Xavier uniform: U(-b, b) with b = gain·sqrt(6 / (fan_in + fan_out))."""
    shape, fan_in, fan_out = _fans(shape)
    bound = check_real(gain, "gain", 0.0, low_open=True) * math.sqrt(6.0 / (fan_in + fan_out))
    return _uniform(shape, bound, rng, dtype)


def xavier_normal(shape, gain=1.0, rng=None, dtype=np.float32):
    """Glorot/Xavier normal: N(0, s²) with s = gain·sqrt(2 / (fan_in + fan_out))."""
    shape, fan_in, fan_out = _fans(shape)
    std = check_real(gain, "gain", 0.0, low_open=True) * math.sqrt(2.0 / (fan_in + fan_out))
    return _normal(shape, std, rng, dtype)


def he_uniform(shape, activation="relu", alpha=0.01, rng=None, dtype=np.float32):
    """Kaiming/He uniform (fan_in mode): U(-b, b), b = gain·sqrt(3 / fan_in)."""
    shape, fan_in, _ = _fans(shape)
    bound = calculate_gain(activation, alpha) * math.sqrt(3.0 / fan_in)
    return _uniform(shape, bound, rng, dtype)


def he_normal(shape, activation="relu", alpha=0.01, rng=None, dtype=np.float32):
    """Kaiming/He normal (fan_in mode): N(0, s²), s = gain / sqrt(fan_in)."""
    shape, fan_in, _ = _fans(shape)
    std = calculate_gain(activation, alpha) / math.sqrt(fan_in)
    return _normal(shape, std, rng, dtype)


def sklearn_uniform(shape, activation="relu", rng=None, dtype=np.float32):
    """scikit-learn MLP's weight initialisation: U(-b, b) with
    b = sqrt(f / (fan_in + fan_out)), f = 2 for sigmoid ('logistic'), else 6."""
    shape, fan_in, fan_out = _fans(shape)
    factor = 2.0 if activation == "sigmoid" else 6.0
    return _uniform(shape, math.sqrt(factor / (fan_in + fan_out)), rng, dtype)


#: Initialisers selectable by name in ``fastnn.nn.Dense(init=...)``.
INITIALIZERS = {
    "zeros": zeros,
    "normal": normal,
    "uniform": uniform,
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "sklearn_uniform": sklearn_uniform,
}

# initialisers whose scale depends on the layer's activation
_ACTIVATION_AWARE = {he_uniform, he_normal, sklearn_uniform}


def get(init, activation="identity", alpha=0.01):
    """A weight initialiser ``f(shape, rng, dtype) -> ndarray`` from a name in
    ``INITIALIZERS`` or a callable with that signature.  The activation-aware
    ones (``he_*``, ``sklearn_uniform``) are bound to ``activation``."""
    if callable(init):
        return init
    try:
        fn = INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(f"init must be a callable or one of {sorted(INITIALIZERS)}, "
                         f"got {init!r}") from None
    if fn is sklearn_uniform:
        return lambda shape, rng=None, dtype=np.float32: fn(shape, activation, rng, dtype)
    if fn in _ACTIVATION_AWARE:
        # He gain for activations without one (identity/sigmoid/tanh) is their own gain
        return lambda shape, rng=None, dtype=np.float32: fn(shape, activation, alpha, rng, dtype)
    return fn
