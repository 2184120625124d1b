"""fastnn: a fast CPU neural-network core.

Typed Cython/OpenMP kernels (``fastnn.functional``), their NumPy twins
(``fastnn.reference``), a thin layer API (``fastnn.nn``, ``fastnn.optim``,
``fastnn.init``) and scikit-learn-compatible estimators over them.
"""
import importlib

from ._version import __version__
from ._config import build_info, get_num_threads, num_threads, set_num_threads, show_config
from . import functional, init, nn, optim

# Names loaded on first use, so that ``import fastnn`` stays light (the
# estimators import scikit-learn when it is installed).
_LAZY = {
    "MLPClassifier": "estimators",
    "MLPRegressor": "estimators",
    "LogisticRegression": "estimators",
    "NotFittedError": "estimators",
    "save": "io",
    "load": "io",
    "gradcheck": "_gradcheck",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "build_info",
    "functional",
    "get_num_threads",
    "init",
    "nn",
    "num_threads",
    "optim",
    "set_num_threads",
    "show_config",
    *_LAZY,
]
