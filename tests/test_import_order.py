"""fastnn loaded in one process with NumPy, SciPy, scikit-learn and PyTorch,
in several import orders: it imports, computes the same results, and
threadpoolctl lists the OpenMP runtime its kernels use (so that users can
limit it)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import fastnn

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
PEERS = [name for name in ("numpy", "scipy", "sklearn", "torch")
         if importlib.util.find_spec(name) is not None]

CHILD = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
import numpy as np, fastnn, fastnn.functional as F
from threadpoolctl import threadpool_info
rng = np.random.default_rng(0)
A = rng.standard_normal((300, 517), dtype=np.float32)
W = rng.standard_normal((517, 203), dtype=np.float32)
O = F.dense_forward(A, W, np.zeros(203, np.float32), "relu")
loss, grad = F.softmax_cross_entropy(O, np.arange(300) % 203)
print(json.dumps({
    "checksum": [float(O.sum(dtype=np.float64)), float(loss), float(grad.sum(dtype=np.float64))],
    "openmp": [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "openmp"],
    "kernels": fastnn.build_info()["simd_variant"],
}))
"""


def _orders():
    """fastnn first, last, and between each peer and the rest."""
    orders = [["fastnn"] + PEERS, PEERS + ["fastnn"]]
    for i, first in enumerate(PEERS):
        rest = PEERS[:i] + PEERS[i + 1:]
        orders.append([first, "fastnn"] + rest[::-1])
    return orders


def _run(order, tmp_path):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, *order], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"import order {order} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.splitlines()[-1])


def test_any_import_order_works_and_agrees(tmp_path):
    results = {" < ".join(order): _run(order, tmp_path) for order in _orders()}
    first = next(iter(results.values()))
    for order, result in results.items():
        # bit-identical: the same kernels on the same data, whatever else is loaded
        assert result["checksum"] == first["checksum"], order
        assert result["kernels"] == first["kernels"], order
        if fastnn.build_info()["openmp"]:
            assert result["openmp"], f"{order}: threadpoolctl sees no OpenMP runtime"


@pytest.mark.skipif(not os.environ.get("FASTNN_TEST_INSTALLED"),
                    reason="the vendored runtime exists only in the installed wheel")
def test_threadpoolctl_reports_fastnn_runtime(tmp_path):
    result = _run(PEERS + ["fastnn"], tmp_path)
    assert any("fastnn" in path for path in result["openmp"]), result["openmp"]
