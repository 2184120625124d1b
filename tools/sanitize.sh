#!/usr/bin/env bash
# Build fastnn's extension with sanitizers / Cython's runtime checks in a
# scratch copy of the tree and run the kernel tests against it.
#
#   tools/sanitize.sh            # both runs: ASan+UBSan, then Cython debug
#   tools/sanitize.sh asan       # only the ASan+UBSan run
#   tools/sanitize.sh debug      # only the Cython boundscheck/wraparound run
#
# The main tree's in-place build is never touched.  FASTNN_HYPOTHESIS_EXAMPLES
# (default here 100: the instrumented build is several times slower) sets the
# examples per property test; extra arguments after the mode go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:-all}"
shift || true
export FASTNN_HYPOTHESIS_EXAMPLES="${FASTNN_HYPOTHESIS_EXAMPLES:-100}"
PY="${PYTHON:-python}"
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/fastnn-sanitize.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

TESTS=()
for t in tests/test_functional.py tests/test_properties.py tests/test_gemm.py tests/test_exp.py \
         tests/test_threads.py \
         tests/test_nn.py tests/test_fused_step.py; do
    [[ -f "$ROOT/$t" ]] && TESTS+=("$t")
done

# A fresh copy of the sources: no compiled module, and no generated C file,
# because cythonize reuses a C file newer than its .pyx whatever the
# directives, so a copied _kernels.c would silently drop the debug checks.
copy_tree() {
    local dest="$1"
    mkdir -p "$dest"
    (cd "$ROOT" && tar cf - --exclude=.git --exclude=build --exclude='*.so' \
        --exclude='fastnn/_kernels.c' --exclude=__pycache__ --exclude=.hypothesis \
        --exclude=.pytest_cache fastnn csrc tests setup.py pyproject.toml) \
        | (cd "$dest" && tar xf -)
}

build() {  # build <dir> <env assignments...>
    local dir="$1"; shift
    echo "== building in $dir with: $*"
    (cd "$dir" && env "$@" "$PY" setup.py build_ext --inplace -q >build.log 2>&1) || {
        tail -40 "$dir/build.log"; return 1; }
    grep -E "^BUILD_CONFIG" "$dir/fastnn/_build_config.py" | cut -c1-400
}

run_tests() {  # run_tests <dir> <env assignments...>
    local dir="$1"; shift
    (cd "$dir" && env PYTHONPATH="$dir" "$@" "$PY" -m pytest "${TESTS[@]}" -q -x \
        -p no:cacheprovider "${EXTRA_ARGS[@]}")
}

EXTRA_ARGS=("$@")
status=0

if [[ "$MODE" == all || "$MODE" == asan ]]; then
    dir="$SCRATCH/asan"
    copy_tree "$dir"
    build "$dir" FASTNN_SANITIZE=1
    libasan="$(gcc -print-file-name=libasan.so)"
    # The interpreter is not instrumented, so the ASan runtime must be the
    # first library loaded (LD_PRELOAD).  Leak detection is off: CPython
    # keeps interned objects alive at exit, which LSan reports as leaks.
    echo "== ASan+UBSan run (LD_PRELOAD=$libasan)"
    run_tests "$dir" LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 || status=1
fi

if [[ "$MODE" == all || "$MODE" == debug ]]; then
    dir="$SCRATCH/debug"
    copy_tree "$dir"
    build "$dir" FASTNN_CYTHON_DEBUG=1
    grep -q "__Pyx_RaiseBufferIndexError" "$dir/fastnn/_kernels.c" \
        || { echo "debug build has no bounds checks"; exit 1; }
    echo "== Cython debug run (boundscheck, wraparound, initializedcheck)"
    run_tests "$dir" || status=1
fi

if [[ $status -eq 0 ]]; then echo "sanitize: CLEAN"; else echo "sanitize: FAILED"; fi
exit $status
