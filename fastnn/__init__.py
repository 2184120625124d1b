"""fastnn: a fast CPU neural-network core.

Typed Cython/OpenMP kernels (``fastnn.functional``), their NumPy twins
(``fastnn.reference``), and a thin training API over them.
"""
from ._version import __version__
from ._config import build_info, get_num_threads, num_threads, set_num_threads, show_config
from . import functional

__all__ = [
    "__version__",
    "build_info",
    "functional",
    "get_num_threads",
    "num_threads",
    "set_num_threads",
    "show_config",
]
