"""Argument checks shared by the Python layers (kernel wrappers, layers,
optimisers, initialisers, estimators): one place for each rule."""
import math
import numbers


def check_real(value, name, low=0.0, high=math.inf, *, low_open=False, high_open=False):
    """``value`` as a float if it is a finite real number in the interval
    [low, high] (ends excluded by ``low_open``/``high_open``), else a
    ValueError naming ``name``.  bool is not a number here."""
    # a plain float (the per-step case: an optimiser's lr) skips the ABC check
    if ((type(value) is not float
         and (not isinstance(value, numbers.Real) or isinstance(value, bool)))
            or not math.isfinite(value) or value < low or value > high
            or (low_open and value == low) or (high_open and value == high)):
        bounds = (("(" if low_open else "[") + f"{low}, {high}"
                  + (")" if high_open or high == math.inf else "]"))
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return float(value)


def check_alpha(alpha):
    """The leaky_relu slope: finite and > 0."""
    return check_real(alpha, "alpha (the leaky_relu slope)", 0.0, low_open=True)
