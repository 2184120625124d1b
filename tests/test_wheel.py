"""fastnn as installed from its wheel: version, metadata, contents, OpenMP.

These tests need fastnn installed as a distribution (what .ci/run does);
run from the source tree (PYTHONPATH=.) they skip, saying so.  .ci/run sets
FASTNN_TEST_INSTALLED=1, which turns those skips into failures: there the
tests must see the installed wheel, never the source tree.
"""
import importlib.metadata
import os
from pathlib import Path

import pytest

import fastnn

PACKAGE_DIR = Path(fastnn.__file__).resolve().parent


@pytest.fixture(scope="module")
def dist():
    try:
        dist = importlib.metadata.distribution("fastnn")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    skip = pytest.fail if os.environ.get("FASTNN_TEST_INSTALLED") else pytest.skip
    if dist is None or dist.read_text("RECORD") is None:   # none, or a source tree's egg-info
        skip("fastnn is imported from a source tree, not installed as a distribution")
    if Path(dist.locate_file("fastnn/__init__.py")).resolve() != PACKAGE_DIR / "__init__.py":
        skip(f"the installed fastnn distribution is not the imported package "
             f"{PACKAGE_DIR} (source tree on the path, or an editable install)")
    return dist


def test_version_matches_metadata(dist):
    assert fastnn.__version__ == dist.version


def test_metadata_is_complete(dist):
    meta = dist.metadata
    for field in ("Summary", "Requires-Python", "License-Expression", "Description-Content-Type"):
        assert meta.get(field), f"metadata lacks {field}"
    assert meta["Description-Content-Type"].startswith("text/markdown")
    assert "pip install" in meta.get_payload()              # the README is the description
    assert meta.get_all("Classifier") and meta.get_all("Project-URL")
    assert any(req.startswith("numpy") for req in dist.requires)


def test_installed_files_are_what_users_need(dist):
    files = [str(f) for f in dist.files]
    package = [f for f in files if f.startswith("fastnn/")]
    # No sources of the compiled part, no build leftovers, no tests.
    leftovers = [f for f in package if f.endswith((".c", ".pyx", ".pxd", ".h", ".o"))]
    assert not leftovers
    assert not [f for f in files if f.startswith(("tests/", "build/", "csrc/"))]
    modules = [f for f in package if f.endswith(".so") or f.endswith(".pyd")]
    assert len(modules) == len(fastnn._kernels.SIMD_VARIANTS_BUILT)


def test_openmp_runtime_is_the_vendored_one(dist):
    """A repaired wheel carries its own libgomp under a unique name
    (fastnn.libs/libgomp-<hash>.so), and threadpoolctl sees it, so users can
    limit fastnn's threads like scikit-learn's."""
    libs = PACKAGE_DIR.parent / "fastnn.libs"
    if not libs.is_dir():
        pytest.skip("not a repaired (auditwheel) wheel: no fastnn.libs")
    if not fastnn.build_info()["openmp"]:
        pytest.skip("serial build")
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="reports the OpenMP runtime")
    vendored = {p.name for p in libs.glob("libgomp-*.so*")}
    assert vendored, sorted(p.name for p in libs.iterdir())
    runtimes = [Path(lib["filepath"]) for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "openmp"]
    assert any(path.name in vendored for path in runtimes), runtimes
