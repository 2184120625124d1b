"""fastnn as installed from its wheel: version, metadata, contents, OpenMP.

These tests need fastnn installed as a distribution (what .ci/run does);
run from the source tree (PYTHONPATH=.) they skip, saying so.  .ci/run sets
FASTNN_TEST_INSTALLED=1, which turns those skips into failures: there the
tests must see the installed wheel, never the source tree.
"""
import importlib.metadata
import os
import re
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
    modules = [f for f in package if f.startswith("fastnn/_kernels_")
               and (f.endswith(".so") or f.endswith(".pyd"))]
    assert len(modules) == len(fastnn._kernels.SIMD_VARIANTS_BUILT)


def test_openmp_runtime_is_the_vendored_one(dist):
    """The wheel carries LLVM's libomp (fork-safe, old glibc) with its licence,
    the kernels call it, and threadpoolctl sees it, so users can limit
    fastnn's threads like scikit-learn's."""
    if not fastnn.build_info()["openmp"]:
        pytest.skip("serial build")
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="reports the OpenMP runtime")
    runtime = Path(fastnn.build_info()["openmp_runtime"])
    site = PACKAGE_DIR.parent
    assert runtime.name.startswith("libomp"), runtime
    assert runtime.parent in (PACKAGE_DIR / "_openmp", site / "fastnn.libs"), runtime
    licence = [f for f in dist.files
               if "LLVM-OpenMP" in str(f) or str(f) == "fastnn/_openmp/LICENSE.txt"]
    assert licence and all("LLVM Exceptions" in f.read_text() for f in licence)
    runtimes = [Path(lib["filepath"]).resolve() for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "openmp"]
    assert runtime.resolve() in runtimes, runtimes


GLIBC_FLOOR = (2, 28)     # NumPy's, SciPy's and scikit-learn's wheels: RHEL 8, Ubuntu 20.04


def test_wheel_installs_on_glibc_2_28(dist):
    """The wheel's tags and every ELF file in it need no glibc above 2.28."""
    tags = [line.split(":", 1)[1].strip() for line in dist.read_text("WHEEL").splitlines()
            if line.startswith("Tag:")]
    platforms = {p for tag in tags for p in tag.split("-")[-1].split(".")}
    if not any(p.startswith("linux") or p.startswith("manylinux") for p in platforms):
        pytest.skip(f"not a Linux wheel: {platforms}")
    floors = [tuple(map(int, re.match(r"manylinux_(\d+)_(\d+)_", p).groups()))
              for p in platforms if p.startswith("manylinux_")]
    assert floors and min(floors) <= GLIBC_FLOOR, f"wheel tags {tags}"
    needs = {}
    for f in dist.files:
        path = Path(dist.locate_file(f))
        if path.is_file() and path.read_bytes()[:4] == b"\x7fELF":
            versions = {tuple(map(int, m)) for m in
                        re.findall(rb"GLIBC_(\d+)\.(\d+)", path.read_bytes())}
            needs[str(f)] = max(versions, default=(0, 0))
    assert needs, "no compiled files found"
    too_new = {f: v for f, v in needs.items() if v > GLIBC_FLOOR}
    assert not too_new, too_new
