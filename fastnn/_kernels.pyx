# cython: language_level=3
"""fastnn's compiled kernels.

Contract (see docs/API.md): every function here receives *valid* input from
``fastnn.functional`` -- C-contiguous memoryviews of one float dtype, correct
shapes, no empty dimensions -- and never raises.  (dense_stack_step, called
by fastnn.nn with checked arrays, also checks that its layers' shapes chain,
as a second line of defence.)  The exceptions are the one-call entry points
of the training loop's calls (xent_mean_labels, dense_forward_plain,
dense_backward_plain): they take the arguments as given, accept only those
usable as is, and return None for anything else, which the general checks
of ``fastnn.functional`` then convert or reject.  One body serves float32 and
float64 through the ``floating`` fused type.  Loops over rows run under
``prange`` with the GIL released; reductions over rows are computed per
fixed-size chunk of rows and the chunk results are combined serially in chunk
order, so every result is bit-identical whatever the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport (exp, expf, log, logf, log1p, log1pf, tanh, tanhf, sqrt, sqrtf, fabs,
                        fabsf, frexp, M_LN2)
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)
from scipy.linalg.cython_blas cimport sgemm, dgemm
cimport numpy as cnp

cnp.import_array()

cdef extern from "fastnn_omp.h" nogil:
    int FASTNN_HAVE_OPENMP
    int FASTNN_OPENMP_VERSION
    int omp_get_num_threads()
    int omp_get_max_threads()
    double fastnn_team_round_trip(long long iterations, double budget)

cdef enum:
    # Rows per reduction chunk.  Fixed, never derived from the thread count:
    # the determinism of every row reduction rests on it.
    ROWS_PER_CHUNK = 128
    # Rows of at least this many classes are exponentiated one row at a time
    # (the row stays in L1 between passes); shorter rows a whole chunk at a
    # time, so that the exp loop is long enough to vectorise well.
    ROW_LOOP_CLASSES = 32
    # Below this many elements (tens of microseconds of work) a loop runs on
    # one thread: a parallel region's fork and barrier cost microseconds on
    # an idle machine, and up to a scheduler time slice on a busy one.
    MIN_PARALLEL_WORK = 1 << 17
    # Elements from which a gather of rows is split over the team (measured,
    # 784 floats a row, two threads against one: 22 against 24 us at 128
    # rows, 72 against 106 us at 512; at 32 rows no gain, 7.5 against 7.1)
    MIN_PARALLEL_GATHER = 1 << 15
    # Multiply-adds (about 8 us of single-core GEMM) below which a product
    # is not split across the team, for the same reason (measured: at batch
    # 32 the 256 x 128 products of the mlp_epoch network gain from two threads).
    MIN_PARALLEL_GEMM = 1 << 19
    # Larger products are cut into a fixed grid of output tiles of at most
    # this many rows and columns, each one single-threaded BLAS call, spread
    # over the team; tiles are halved further (down to GEMM_MIN_TILE_SIDE)
    # until there are GEMM_MIN_TILES, so that the small products of a
    # training step (128 x 256 outputs) still keep two cores busy.  Sizes
    # chosen by measurement on the mlp_epoch products at two threads (fewer,
    # larger BLAS calls beat finer balance: 512 x 256 and 2 tiles took the
    # epoch's GEMMs from 2.2-2.4 s to 1.8-1.9 s over batch 32, 128 and 512).
    # The grid depends on the shape only, never on the thread count, so
    # every element is computed by the same call whatever the number of
    # threads (OpenBLAS's own threading is not bit-reproducible across
    # thread counts, and its rounding of an element depends on where it
    # falls in the call's tiling).
    GEMM_TILE_ROWS = 512
    GEMM_TILE_COLS = 256
    GEMM_MIN_TILES = 2
    GEMM_MIN_TILE_SIDE = 32
    # fastnn's AVX-512 GEMM takes the float32 products (tiles) with at least
    # this many rows and columns: it packs B, which smaller ones do not
    # repay (measured against single-threaded OpenBLAS on its AVX2 kernels,
    # when it packed A too: 1.2-1.8x faster above, 0.4-0.9x below on 1-16
    # rows).  Any
    # number of terms: with 4-24 (a classifier layer's delta times W^T, or a
    # small batch's dW) it measured 1.2-2.1x faster too, with 1 the same.
    OWN_GEMM_MIN_SIDE = 32

# Loss codes: pointwise_loss's ``which`` (functional.py passes 0 and 1) and
# dense_stack_step's ``loss``.
cpdef enum Loss:
    LOSS_BCE = 0
    LOSS_MSE = 1
    LOSS_XENT = 2

# Activation codes shared with functional.py (ACTIVATIONS maps names to them).
cpdef enum Activation:
    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4

cdef int _n_threads = 1


cdef inline bint _threaded(Py_ssize_t work, Py_ssize_t n_parts) noexcept nogil:
    """Whether a loop of ``n_parts`` parts and ``work`` elements runs on the
    team.  Otherwise it runs as a plain loop, outside any parallel region:
    even a one-thread region costs microseconds in libgomp (measured: a
    1-row cross-entropy call took 4.5 us inside one and 1.5 us without, and
    more right after a parallel region, when libgomp parks the idle team).  Chunking, and so every
    result, is the same either way."""
    return _n_threads > 1 and n_parts > 1 and work >= MIN_PARALLEL_WORK

# Every BLAS call fastnn makes runs on one thread, inside fastnn's own OpenMP
# team (one call per thread on its block), so that the two runtimes never
# compete for the cores.  How depends on how OpenBLAS was built:
#  - with OpenMP: openblas_set_num_threads_local(1) -> previous around each
#    call, in the thread making it (a thread-local count there);
#  - with pthreads (NumPy's and SciPy's wheels): that function sets the
#    library's global count instead, so calls from the team would race on it
#    (measured: NumPy's matmul left on one thread after a two-thread fastnn
#    layer).  The calling thread sets the global count to 1 around each
#    product instead, and the last of concurrent products restores it
#    (a counter under a lock), so NumPy's setting is back when fastnn returns.
# Neither (another BLAS): BLAS is called from the calling thread only, with
# its own threading.
ctypedef int (*blas_threads_local_t)(int) noexcept nogil
ctypedef int (*blas_get_threads_t)() noexcept nogil
ctypedef void (*blas_set_threads_t)(int) noexcept nogil
cdef blas_threads_local_t _blas_threads_local = NULL
cdef blas_get_threads_t _blas_get_threads = NULL
cdef blas_set_threads_t _blas_set_threads = NULL
cdef PyThread_type_lock _blas_lock = PyThread_allocate_lock()
cdef int _blas_users = 0           # fastnn products running (pthreads OpenBLAS)
cdef int _blas_saved_threads = 0   # the global count they found

# The GEMMs of a BLAS with 64-bit integers (the Fortran interface of NumPy's
# own OpenBLAS, for one), [float, double]; NULL: SciPy's cython_blas.
ctypedef void (*gemm64_t)(const char*, const char*, const int64_t*, const int64_t*,
                          const int64_t*, const void*, const void*, const int64_t*, const void*,
                          const int64_t*, const void*, void*, const int64_t*) noexcept nogil
cdef gemm64_t _gemm64[2]


def set_blas(size_t sgemm64, size_t dgemm64, size_t threads_local, size_t get_threads,
             size_t set_threads):
    """Install the BLAS the kernels call: the addresses of its 64-bit-integer
    sgemm and dgemm (both 0: SciPy's cython_blas), and its thread control:
    openblas_set_num_threads_local for an OpenMP build, or
    openblas_get_num_threads and openblas_set_num_threads for a pthreads
    build (0: none)."""
    global _blas_threads_local, _blas_get_threads, _blas_set_threads
    if (sgemm64 == 0) != (dgemm64 == 0) or (get_threads == 0) != (set_threads == 0):
        raise ValueError("sgemm64 and dgemm64, get_threads and set_threads: both or neither")
    if threads_local != 0 and set_threads != 0:
        raise ValueError("one thread control: threads_local or get/set_threads")
    if _blas_users != 0:
        raise RuntimeError("the BLAS cannot be changed while fastnn products run")
    _gemm64[0], _gemm64[1] = <gemm64_t>sgemm64, <gemm64_t>dgemm64
    _blas_threads_local = <blas_threads_local_t>threads_local
    _blas_get_threads = <blas_get_threads_t>get_threads
    _blas_set_threads = <blas_set_threads_t>set_threads


def blas_in_use():
    """(64-bit-integer GEMMs installed, thread control: "thread-local",
    "global" or None)."""
    control = ("thread-local" if _blas_threads_local != NULL
               else "global" if _blas_set_threads != NULL else None)
    return _gemm64[0] != NULL, control


cdef inline bint _blas_thread_control() noexcept nogil:
    return _blas_threads_local != NULL or _blas_set_threads != NULL


cdef void _blas_product_begin() noexcept nogil:
    """Before a product's BLAS calls, in the calling thread (pthreads build)."""
    global _blas_users, _blas_saved_threads
    if _blas_set_threads == NULL:
        return
    PyThread_acquire_lock(_blas_lock, WAIT_LOCK)
    if _blas_users == 0:
        _blas_saved_threads = _blas_get_threads()
        if _blas_saved_threads != 1:
            _blas_set_threads(1)
    _blas_users += 1
    PyThread_release_lock(_blas_lock)


cdef void _blas_product_end() noexcept nogil:
    global _blas_users
    if _blas_set_threads == NULL:
        return
    PyThread_acquire_lock(_blas_lock, WAIT_LOCK)
    _blas_users -= 1
    if _blas_users == 0 and _blas_saved_threads != 1:
        _blas_set_threads(_blas_saved_threads)
    PyThread_release_lock(_blas_lock)


# Fork.  LLVM's libomp (what the wheel ships) starts a fresh team in a forked
# child; GNU libgomp (a source build against the compiler's runtime) does not:
# its child waits forever for the parent's threads (GCC bug 60035), and nor
# does libomp with KMP_INIT_AT_FORK=FALSE.  There (_config.py sets the
# policy) a forked child runs every kernel on one thread (set_threads then
# keeps 1), which never asks the runtime for a team.
# Either way the child gets a fresh lock and no products in flight: a thread
# of the parent may have held them when another forked.
ctypedef void (*fork_handler_t)() noexcept nogil
cdef extern from "<pthread.h>" nogil:
    int pthread_atfork(fork_handler_t prepare, fork_handler_t parent, fork_handler_t child)
cdef extern from "pythread.h" nogil:
    # a semaphore's initialisation, no GIL needed (Cython declares it with)
    PyThread_type_lock _new_lock "PyThread_allocate_lock" ()

cdef bint _serial_after_fork = False   # the runtime cannot start a team in a forked child
cdef bint _forked_serial = False       # this process is such a child


cdef void _after_fork_in_child() noexcept nogil:
    global _n_threads, _forked_serial, _blas_lock, _blas_users
    if _serial_after_fork:
        _n_threads = 1
        _forked_serial = True
    _blas_lock = _new_lock()
    if _blas_users != 0:     # give the BLAS the count the products found
        _blas_users = 0
        if _blas_set_threads != NULL and _blas_saved_threads != 1:
            _blas_set_threads(_blas_saved_threads)


pthread_atfork(NULL, NULL, _after_fork_in_child)


def set_fork_policy(bint serial_after_fork):
    """Whether a forked child must run on one thread (its runtime cannot fork)."""
    global _serial_after_fork
    _serial_after_fork = serial_after_fork


def forked_serial():
    """Whether this process is a forked child held to one thread."""
    return _forked_serial


def set_threads(int n):
    """Set the OpenMP team size of every kernel (validated by the caller);
    one in a child held to one thread."""
    global _n_threads
    _n_threads = 1 if _forked_serial else n


def get_threads():
    return _n_threads


def openmp_info():
    """(built with OpenMP, _OPENMP version macro, omp_get_max_threads())."""
    return bool(FASTNN_HAVE_OPENMP), FASTNN_OPENMP_VERSION, omp_get_max_threads()


def openmp_symbol_address():
    """Address of omp_get_max_threads as this module resolved it: tells which
    OpenMP runtime the kernels really use when several are loaded."""
    return <size_t><void*>omp_get_max_threads


def team_round_trip(long long iterations, double budget):
    """Mean seconds of a round trip of a cache line between the two threads
    of an OpenMP team of two (csrc/fastnn_omp.h), after as many untimed
    round trips, stopping after ``budget`` seconds; None without OpenMP or
    a team of two, or when the budget ran out before any was timed."""
    if iterations < 1 or not budget > 0:
        raise ValueError("iterations and budget must be positive")
    cdef double seconds
    with nogil:
        seconds = fastnn_team_round_trip(iterations, budget)
    return seconds if seconds > 0 else None


def openmp_team_size(int n=0):
    """Number of threads a parallel region really starts when asked for ``n``
    (by default the kernels' current count, what their regions ask for).

    Proves that the build is parallel: a prange compiled without OpenMP runs
    serially and this returns 1.
    """
    cdef int size = 1
    if n <= 0:
        n = _n_threads
    cdef int* shared_size = &size       # written through a pointer: shared, not private
    with nogil, parallel(num_threads=n):
        shared_size[0] = omp_get_num_threads()
    return size


# ---------------------------------------------------------------------------
# scalar helpers: one name per operation, the fused type picks the libm call
# ---------------------------------------------------------------------------
cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _sigmoid(floating z) noexcept nogil:
    # Stable in both tails: exp only ever sees a non-positive argument.
    cdef floating e
    if z >= 0:
        return 1 / (1 + _exp(-z))
    e = _exp(z)
    return e / (1 + e)


cdef inline floating _activate(floating z, int kind, floating alpha) noexcept nogil:
    if kind == SIGMOID:
        return _sigmoid(z)
    if kind == TANH:
        if floating is float:
            return tanhf(z)
        else:
            return tanh(z)
    if kind == RELU:
        return 0 if z < 0 else z            # NaN propagates
    if kind == LEAKY_RELU:
        return alpha * z if z < 0 else z
    return z


cdef inline floating _derivative(floating o, int kind, floating alpha) noexcept nogil:
    """f'(z) written in terms of the output o = f(z) (MATH.md section 2)."""
    if kind == SIGMOID:
        return o * (1 - o)
    if kind == TANH:
        return 1 - o * o
    if kind == RELU:
        return 1 if o > 0 else 0             # convention: 0 at z = 0
    if kind == LEAKY_RELU:
        return 1 if o >= 0 else alpha        # alpha > 0: sign(o) == sign(z)
    return 1


cdef inline Py_ssize_t _n_chunks(Py_ssize_t n) noexcept nogil:
    return (n + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK


cdef inline Py_ssize_t _chunk_stop(Py_ssize_t chunk, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t stop = (chunk + 1) * ROWS_PER_CHUNK
    return stop if stop < n else n


# ---------------------------------------------------------------------------
# elementwise activations
# ---------------------------------------------------------------------------
cdef void _activation_forward_range(const floating* z, floating* out, Py_ssize_t start,
                                    Py_ssize_t stop, int kind, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if kind == RELU:                          # hot case: keep the loop branch-free
        for i in range(start, stop):
            out[i] = 0 if z[i] < 0 else z[i]
    else:
        for i in range(start, stop):
            out[i] = _activate(z[i], kind, alpha)


cdef void _activation_backward_range(const floating* o, const floating* g, floating* out,
                                     Py_ssize_t start, Py_ssize_t stop, int kind,
                                     floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if kind == RELU:
        for i in range(start, stop):
            out[i] = g[i] if o[i] > 0 else 0
    else:
        for i in range(start, stop):
            out[i] = g[i] * _derivative(o[i], kind, alpha)


def activation_forward(const floating[::1] z, floating[::1] out, int kind, double alpha):
    """out = f(z) elementwise; ``out`` may alias ``z``."""
    cdef Py_ssize_t n = z.shape[0], block = 16384, n_blocks = (n + block - 1) // block, b
    cdef const floating* zp = &z[0]
    cdef floating* op = &out[0]
    if _threaded(n, n_blocks):
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _activation_forward_range(zp, op, b * block, min((b + 1) * block, n), kind,
                                      <floating>alpha)
    else:
        with nogil:
            _activation_forward_range(zp, op, 0, n, kind, <floating>alpha)


def activation_backward(const floating[::1] o, const floating[::1] g, floating[::1] out,
                        int kind, double alpha):
    """out = g * f'(o) elementwise; ``out`` may alias ``g``."""
    cdef Py_ssize_t n = o.shape[0], block = 16384, n_blocks = (n + block - 1) // block, b
    cdef const floating* op = &o[0]
    cdef const floating* gp = &g[0]
    cdef floating* outp = &out[0]
    if _threaded(n, n_blocks):
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _activation_backward_range(op, gp, outp, b * block, min((b + 1) * block, n), kind,
                                       <floating>alpha)
    else:
        with nogil:
            _activation_backward_range(op, gp, outp, 0, n, kind, <floating>alpha)


# ---------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------
cdef extern from "fastnn_simd.h" nogil:
    const char* fastnn_simd_variant()
    void fastnn_prefetch(const void* p, Py_ssize_t n_bytes)
    float fastnn_exp_shifted_sum_f(const float* z, float* e, Py_ssize_t c, float m)
    double fastnn_exp_shifted_sum_d(const double* z, double* e, Py_ssize_t c, double m)
    float fastnn_max_f(const float* z, Py_ssize_t c)
    double fastnn_max_d(const double* z, Py_ssize_t c)
    void fastnn_exp_inplace_f(float* x, Py_ssize_t n)
    void fastnn_exp_f(const float* x, float* out, Py_ssize_t n)
    void fastnn_exp_inplace_d(double* x, Py_ssize_t n)
    Py_ssize_t fastnn_count_outside(const int64_t* x, Py_ssize_t n, int64_t c)
    void fastnn_matvec_f(const float* X, Py_ssize_t d, const float* w, double b, Py_ssize_t n,
                         float* z)
    void fastnn_matvec_d(const double* X, Py_ssize_t d, const double* w, double b, Py_ssize_t n,
                         double* z)
    void fastnn_vecmat_f(const float* X, Py_ssize_t d, const float* r, Py_ssize_t n, float* g,
                         const float* ahead, Py_ssize_t n_ahead)
    void fastnn_vecmat_d(const double* X, Py_ssize_t d, const double* r, Py_ssize_t n,
                         double* g, const double* ahead, Py_ssize_t n_ahead)
    enum: FASTNN_XENT_SMALL
    double fastnn_xent_labels_small_f(const float* Z, const int64_t* labels, const float* sw,
                                      float* G, float* L, Py_ssize_t n, Py_ssize_t c,
                                      double scale, double smoothing)
    double fastnn_logistic_rows_f(const float* z, const float* t, const float* sw, float* r,
                                  float* e, Py_ssize_t n)


cdef inline floating _row_max(const floating* z, Py_ssize_t c) noexcept nogil:
    if floating is float:
        return fastnn_max_f(z, c)
    else:
        return fastnn_max_d(z, c)


cdef inline floating _exp_shifted(const floating* z, floating* e, Py_ssize_t c,
                                  floating m) noexcept nogil:
    """e = exp(z - m) (``e`` may be NULL); returns the sum.  NaN in z, m = +inf
    or m = -inf (an all -inf row) make the sum NaN, which is how the NaN-row
    policy arises without a branch."""
    if floating is float:
        return fastnn_exp_shifted_sum_f(z, e, c, m)
    else:
        return fastnn_exp_shifted_sum_d(z, e, c, m)


cdef inline void _exp_inplace(floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastnn_exp_inplace_f(x, n)
    else:
        fastnn_exp_inplace_d(x, n)


cdef void _exp_rows(const floating* Z, floating* E, floating* M, floating* S, Py_ssize_t start,
                    Py_ssize_t stop, Py_ssize_t c) noexcept nogil:
    """Rows [start, stop) of E = exp(Z - m), m the row max, with M[i - start] = m
    and S[i - start] = the row sum of E.  Rows of fewer than ROW_LOOP_CLASSES
    are shifted row by row, then exponentiated in one pass over the block."""
    cdef Py_ssize_t i, k
    cdef floating m, s
    cdef const floating* z
    cdef floating* e
    for i in range(start, stop):
        z = Z + i * c
        m = M[i - start] = _row_max(z, c)
        if c >= ROW_LOOP_CLASSES:
            # the next row while this one computes: the hardware prefetcher
            # stops at page boundaries, which long rows keep crossing
            if i + 1 < stop:
                fastnn_prefetch(z + c, c * sizeof(floating))
            S[i - start] = _exp_shifted(z, E + i * c, c, m)
        else:
            e = E + i * c
            for k in range(c):
                e[k] = z[k] - m
    if c >= ROW_LOOP_CLASSES:
        return
    _exp_inplace(E + start * c, (stop - start) * c)
    for i in range(start, stop):
        e = E + i * c
        s = 0
        for k in range(c):
            s = s + e[k]
        S[i - start] = s


cdef void _softmax_row(const floating* z, floating* out, Py_ssize_t c, bint take_log) noexcept nogil:
    """One row; ``out`` may alias ``z`` (each pass reads z[k] before writing out[k])."""
    cdef floating m = _row_max(z, c), s = 0, inv, log_s
    cdef Py_ssize_t k
    if take_log:
        s = _exp_shifted(z, <floating*>NULL, c, m)
        log_s = _log(s)
        for k in range(c):
            # (z - m) - log s, never z - (m + log s): the rounding of
            # m + log s costs up to ulp(m), 1e-3 in float32 at |m| = 1e4.
            out[k] = (z[k] - m) - log_s
    else:
        s = _exp_shifted(z, out, c, m)
        inv = 1 / s
        for k in range(c):
            out[k] = out[k] * inv


def softmax(const floating[:, ::1] x, floating[:, ::1] out, bint take_log):
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], i
    cdef const floating* xp = &x[0, 0]
    cdef floating* op = &out[0, 0]
    if _threaded(n * c, n):
        for i in prange(n, nogil=True, schedule="static", num_threads=_n_threads):
            _softmax_row(xp + i * c, op + i * c, c, take_log)
    else:
        with nogil:
            for i in range(n):
                _softmax_row(xp + i * c, op + i * c, c, take_log)


# ---------------------------------------------------------------------------
# losses: each chunk function handles the rows of one chunk and returns the
# chunk's weighted loss sum (in double); the driver adds chunks in order.
# ---------------------------------------------------------------------------
cdef inline floating _smoothed(floating y, double smoothing, Py_ssize_t c) noexcept nogil:
    if smoothing == 0:
        return y
    return <floating>((1 - smoothing) * y + smoothing / c)


cdef double _xent_chunk(const floating* Z, const int64_t* labels, const floating* T,
                        const floating* sw, floating* G, floating* L, Py_ssize_t start,
                        Py_ssize_t stop, Py_ssize_t c, double scale,
                        double smoothing) noexcept nogil:
    """Fused softmax cross-entropy for rows [start, stop).

    Targets are class indices (``labels``) or probability rows (``T``); the
    smoothed target row is (1 - smoothing) y + smoothing / C.  The exp of
    the shifted rows goes to the gradient rows (_exp_rows), then one pass per
    row scales them and subtracts the target, accumulating sum_k y_k (z_k - m).
    float32 rows of a few classes with class indices go eight rows at a time,
    sixteen on AVX-512 (fastnn_xent_labels_small_f).
    """
    cdef double total = 0, loss, y_dot_z, y_sum, z_sum
    cdef const floating* z
    cdef floating* g
    cdef floating m, s, w, inv, y, off
    cdef floating row_max[ROWS_PER_CHUNK]
    cdef floating row_sum[ROWS_PER_CHUNK]
    cdef Py_ssize_t i, k, label
    # unweighted class indices, no per-sample losses: every row adds log s - y.z
    cdef bint product_of_sums = T == NULL and sw == NULL and L == NULL
    cdef double s_product = 1
    cdef int exponent
    cdef Py_ssize_t s_exponent = 0
    if floating is float:
        if T == NULL and c < FASTNN_XENT_SMALL:
            return fastnn_xent_labels_small_f(Z + start * c, labels + start,
                                              sw + start if sw != NULL else NULL,
                                              G + start * c, L + start if L != NULL else NULL,
                                              stop - start, c, scale, smoothing)
    _exp_rows(Z, G, row_max, row_sum, start, stop, c)
    for i in range(start, stop):
        z = Z + i * c
        g = G + i * c
        m = row_max[i - start]
        s = row_sum[i - start]
        w = sw[i] if sw != NULL else 1
        inv = <floating>(w * scale) / s
        y_dot_z = 0
        if T == NULL:
            label = labels[i]
            off = <floating>(smoothing / c)
            for k in range(c):
                g[k] = g[k] * inv - <floating>(w * scale) * off
            g[label] -= <floating>(w * scale * (1 - smoothing))
            y_sum = 1
            # shifted by the row max, as the loss below: (m + log s) - z
            # would lose log s to the rounding of m at large |m|
            y_dot_z = (1 - smoothing) * (<double>z[label] - m)
            if smoothing != 0:
                z_sum = 0
                for k in range(c):
                    z_sum += <double>z[k] - m
                y_dot_z += smoothing / c * z_sum
        else:
            # soft targets: grad = p * sum(y) - y  (MATH.md section 4)
            y_sum = 0
            for k in range(c):
                y = _smoothed(T[i * c + k], smoothing, c)
                y_sum += y
                if y != 0:                     # 0 * (-inf) must not poison the loss
                    y_dot_z += y * (<double>z[k] - m)
            inv = inv * <floating>y_sum
            for k in range(c):
                g[k] = g[k] * inv - <floating>(w * scale) * _smoothed(T[i * c + k], smoothing, c)
        if product_of_sums:
            # sum_i log s_i as the log of a product: one log per chunk, not
            # per row (a dozen classes cost less than one libm log)
            s_product *= s
            if (i - start) % 16 == 15:      # s <= C: 16 factors cannot overflow
                s_product = frexp(s_product, &exponent)
                s_exponent += exponent
            total -= y_dot_z
            continue
        loss = log(<double>s) * y_sum - y_dot_z
        if L != NULL:
            L[i] = <floating>(w * loss)
        total += w * loss
    if product_of_sums:
        total += log(s_product) + s_exponent * M_LN2
    return total


def gather_rows(const floating[:, ::1] X, const int64_t[::1] index, floating[:, ::1] out):
    """out[i] = X[index[i]]: a minibatch gathered from shuffled sample
    indices.  The rows lie scattered through memory, so the copy waits on
    memory: it is split over the team from a few dozen rows on (two cores
    keep twice the misses in flight), and each row prefetches the one two
    ahead.  IndexError when an index lies outside [0, len(X))."""
    cdef Py_ssize_t n = index.shape[0], d = X.shape[1], i
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError(f"out must have shape ({n}, {d}), got ({out.shape[0]}, {out.shape[1]})")
    if n == 0:
        return
    if fastnn_count_outside(&index[0], n, X.shape[0]) != 0:
        raise IndexError(f"index must lie in [0, {X.shape[0]})")
    cdef const floating* src = &X[0, 0]
    cdef floating* dst = &out[0, 0]
    cdef const int64_t* rows = &index[0]
    if _n_threads > 1 and n * d >= MIN_PARALLEL_GATHER:
        for i in prange(n, nogil=True, schedule="static", num_threads=_n_threads):
            _copy_row(src, rows, dst, i, n, d)
    else:
        with nogil:
            for i in range(n):
                _copy_row(src, rows, dst, i, n, d)


cdef inline void _copy_row(const floating* X, const int64_t* rows, floating* out, Py_ssize_t i,
                           Py_ssize_t n, Py_ssize_t d) noexcept nogil:
    if i + 2 < n:
        fastnn_prefetch(X + rows[i + 2] * d, d * sizeof(floating))
    memcpy(out + i * d, X + rows[i] * d, d * sizeof(floating))


def same_writeable_arrays(list cached, list current):
    """Whether ``current`` holds the very objects of ``cached``, in order,
    each (None entries skipped) a writeable array: the per-step test that
    lets the optimisers and the stack step reuse the views they checked
    once, in a C loop (a Python one over ``ndarray.flags`` took 3-5 us a
    step for an MLP's six parameters)."""
    cdef Py_ssize_t i, n = len(current)
    if len(cached) != n:
        return False
    for i in range(n):
        x = current[i]
        if x is not cached[i]:
            return False
        if x is not None and not (isinstance(x, cnp.ndarray)
                                  and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x)):
            return False
    return True


def count_outside(const int64_t[::1] labels, int64_t n_classes):
    """How many labels lie outside [0, n_classes): the range check of the
    class indices, one vectorised pass in place of a min and a max."""
    return fastnn_count_outside(&labels[0], labels.shape[0], n_classes)


def softmax_cross_entropy(const floating[:, ::1] logits, const int64_t[::1] labels,
                          const floating[:, ::1] target, const floating[::1] sample_weight,
                          floating[:, ::1] grad, floating[::1] losses, double scale,
                          double smoothing):
    """Returns sum_i w_i l_i; writes grad (scaled by ``scale``) and optionally
    the per-sample weighted losses.  Exactly one of labels/target is given."""
    cdef Py_ssize_t n = logits.shape[0], c = logits.shape[1]
    cdef double* partial = <double*> malloc(_n_chunks(n) * sizeof(double))
    cdef double total
    if partial == NULL:
        raise MemoryError()
    with nogil:
        total = _loss_rows(LOSS_XENT, &logits[0, 0],
                           &labels[0] if labels is not None else NULL,
                           &target[0, 0] if target is not None else NULL,
                           &sample_weight[0] if sample_weight is not None else NULL,
                           &grad[0, 0], &losses[0] if losses is not None else NULL,
                           n, c, scale, smoothing, partial)
    free(partial)
    return total


cdef double _bce_chunk(const floating* Z, const floating* T, const floating* sw, floating* G,
                       floating* L, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t k_out,
                       double scale) noexcept nogil:
    """Binary cross-entropy with logits: max(z,0) - t z + log1p(exp(-|z|))."""
    cdef double total = 0, row_loss
    cdef Py_ssize_t i, k, j
    cdef floating z, t, w, ws
    for i in range(start, stop):
        w = sw[i] if sw != NULL else 1
        ws = <floating>(w * scale)
        row_loss = 0
        for k in range(k_out):
            j = i * k_out + k
            z = Z[j]
            t = T[j]
            row_loss += (z if z > 0 else 0) - t * z + _log1p(_exp(-_fabs(z)))
            G[j] = (_sigmoid(z) - t) * ws
        if L != NULL:
            L[i] = <floating>(w * row_loss)
        total += w * row_loss
    return total


cdef double _mse_chunk(const floating* O, const floating* Y, const floating* sw, floating* G,
                       floating* L, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t k_out,
                       double scale) noexcept nogil:
    """Squared error with the 1/2 convention; gradient o - y."""
    cdef double total = 0, row_loss
    cdef Py_ssize_t i, k, j
    cdef floating d, w, ws
    for i in range(start, stop):
        w = sw[i] if sw != NULL else 1
        ws = <floating>(w * scale)
        row_loss = 0
        for k in range(k_out):
            j = i * k_out + k
            d = O[j] - Y[j]
            row_loss += <double>d * d
            G[j] = d * ws
        row_loss *= 0.5
        if L != NULL:
            L[i] = <floating>(w * row_loss)
        total += w * row_loss
    return total


def pointwise_loss(int which, const floating[:, ::1] z, const floating[:, ::1] t,
                   const floating[::1] sample_weight, floating[:, ::1] grad,
                   floating[::1] losses, double scale):
    """which = LOSS_BCE (0): binary cross-entropy with logits; LOSS_MSE (1): squared error."""
    cdef Py_ssize_t n = z.shape[0], k_out = z.shape[1]
    cdef double* partial = <double*> malloc(_n_chunks(n) * sizeof(double))
    cdef double total
    if partial == NULL:
        raise MemoryError()
    with nogil:
        total = _loss_rows(which, &z[0, 0], NULL, &t[0, 0],
                           &sample_weight[0] if sample_weight is not None else NULL,
                           &grad[0, 0], &losses[0] if losses is not None else NULL,
                           n, k_out, scale, 0, partial)
    free(partial)
    return total


cdef inline double _loss_chunk(int which, const floating* Z, const int64_t* labels,
                              const floating* T, const floating* sw, floating* G, floating* L,
                              Py_ssize_t ch, Py_ssize_t n, Py_ssize_t c, double scale,
                              double smoothing) noexcept nogil:
    """The loss ``which`` of chunk ``ch`` of the n rows (see _loss_rows)."""
    cdef Py_ssize_t start = ch * ROWS_PER_CHUNK, stop = _chunk_stop(ch, n)
    if which == LOSS_XENT:
        return _xent_chunk(Z, labels, T, sw, G, L, start, stop, c, scale, smoothing)
    if which == LOSS_BCE:
        return _bce_chunk(Z, T, sw, G, L, start, stop, c, scale)
    return _mse_chunk(Z, T, sw, G, L, start, stop, c, scale)


cdef double _loss_rows(int which, const floating* Z, const int64_t* labels, const floating* T,
                       const floating* sw, floating* G, floating* L, Py_ssize_t n, Py_ssize_t c,
                       double scale, double smoothing, double* partial) noexcept nogil:
    """The loss ``which`` of n rows of c outputs: the gradient into G (and the
    per-sample losses into L unless NULL); returns the weighted loss sum.
    ``partial`` holds one double per chunk of rows."""
    cdef Py_ssize_t n_chunks = _n_chunks(n), ch
    cdef double total = 0
    if _threaded(n * c, n_chunks):
        for ch in prange(n_chunks, schedule="static", num_threads=_n_threads):
            partial[ch] = _loss_chunk(which, Z, labels, T, sw, G, L, ch, n, c, scale, smoothing)
    else:
        for ch in range(n_chunks):
            partial[ch] = _loss_chunk(which, Z, labels, T, sw, G, L, ch, n, c, scale, smoothing)
    for ch in range(n_chunks):
        total += partial[ch]
    return total


# ---------------------------------------------------------------------------
# one-call entry points: a training loop's calls, checked and computed in one
# compiled call (the cross-entropy here, the dense layer's below)
# ---------------------------------------------------------------------------
cdef inline bint _plain(object x, int type_num, int ndim):
    """``x`` is an exact ndarray of this dtype (native byte order) and rank,
    C-contiguous, aligned and not empty: usable as is."""
    cdef cnp.ndarray a
    if type(x) is not cnp.ndarray:
        return False
    a = <cnp.ndarray> x
    return (cnp.PyArray_TYPE(a) == type_num and cnp.PyArray_NDIM(a) == ndim
            and cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_SIZE(a) > 0)


cdef inline int _float_dtype(object x, int ndim):
    """NPY_FLOAT32 or NPY_FLOAT64 when ``x`` is _plain as one of them, else -1."""
    if _plain(x, cnp.NPY_FLOAT32, ndim):
        return cnp.NPY_FLOAT32
    if _plain(x, cnp.NPY_FLOAT64, ndim):
        return cnp.NPY_FLOAT64
    return -1


cdef inline bint _plain_shape(object x, int dtype, Py_ssize_t d0, Py_ssize_t d1):
    """_plain with shape (d0, d1), or (d0,) when d1 < 0."""
    if not _plain(x, dtype, 1 if d1 < 0 else 2):
        return False
    return (cnp.PyArray_DIM(<cnp.ndarray> x, 0) == d0
            and (d1 < 0 or cnp.PyArray_DIM(<cnp.ndarray> x, 1) == d1))


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether two contiguous arrays share any byte."""
    cdef char* pa = <char*> cnp.PyArray_DATA(a)
    cdef char* pb = <char*> cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef object _out_buffer(object out, int dtype, Py_ssize_t d0, Py_ssize_t d1, tuple inputs):
    """A new (d0, d1) array ((d0,) when d1 < 0) when ``out`` is None; ``out``
    itself when it is _plain of that shape, writeable and overlaps none of
    ``inputs`` (None entries skipped); None otherwise (decline)."""
    cdef cnp.npy_intp dims[2]
    if out is None:
        dims[0], dims[1] = d0, d1
        return cnp.PyArray_EMPTY(1 if d1 < 0 else 2, dims, dtype, 0)
    if not _plain_shape(out, dtype, d0, d1) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> out):
        return None
    for x in inputs:
        if x is not None and _overlap(<cnp.ndarray> out, <cnp.ndarray> x):
            return None
    return out


cdef inline void* _data(object x):
    """The data pointer of a checked array, NULL for None."""
    return cnp.PyArray_DATA(<cnp.ndarray> x) if x is not None else NULL


def xent_mean_labels(logits, labels, out):
    """softmax_cross_entropy(logits, labels, out=out) with the mean reduction,
    no weights and no smoothing, for arguments that need no conversion:
    float32/float64 logits and int64 labels usable as is (_plain), labels in
    range, ``out`` None or a matching, writeable, non-overlapping buffer.
    Returns (loss, grad), or None for anything else: fastnn.functional then
    takes its general path, which converts or raises.  The result is the
    general path's, bit for bit (the same _loss_rows).  Exists because the
    general path's checks cost a few microseconds, more than the kernel at
    training-loop sizes (128 x 10: about 2 us)."""
    cdef int dtype = _float_dtype(logits, 2)
    cdef cnp.ndarray z, y, g
    cdef Py_ssize_t n, c
    cdef double total, one_chunk
    cdef double* partial = &one_chunk
    if dtype < 0:
        return None
    z = <cnp.ndarray> logits
    n, c = cnp.PyArray_DIM(z, 0), cnp.PyArray_DIM(z, 1)
    if not _plain_shape(labels, cnp.NPY_INT64, n, -1):
        return None
    y = <cnp.ndarray> labels
    if fastnn_count_outside(<int64_t*> cnp.PyArray_DATA(y), n, c):
        return None
    g = _out_buffer(out, dtype, n, c, (z, y))
    if g is None:
        return None
    if _n_chunks(n) > 1:
        partial = <double*> malloc(_n_chunks(n) * sizeof(double))
        if partial == NULL:
            raise MemoryError()
    with nogil:
        if dtype == cnp.NPY_FLOAT32:
            total = _loss_rows(LOSS_XENT, <float*> cnp.PyArray_DATA(z),
                               <int64_t*> cnp.PyArray_DATA(y), NULL, NULL,
                               <float*> cnp.PyArray_DATA(g), NULL, n, c, 1.0 / n, 0, partial)
        else:
            total = _loss_rows(LOSS_XENT, <double*> cnp.PyArray_DATA(z),
                               <int64_t*> cnp.PyArray_DATA(y), NULL, NULL,
                               <double*> cnp.PyArray_DATA(g), NULL, n, c, 1.0 / n, 0, partial)
    if partial != &one_chunk:
        free(partial)
    return total * (1.0 / n), g


# ---------------------------------------------------------------------------
# dense layer: GEMM on fastnn's own kernels or BLAS, everything around it fused
# ---------------------------------------------------------------------------
cdef inline void _gemm(char transa, char transb, int m, int n, int k, floating alpha,
                       const floating* a, int lda, const floating* b, int ldb, floating beta,
                       floating* c, int ldc) noexcept nogil:
    """Column-major GEMM (Fortran BLAS); callers pass row-major operands
    swapped, since a row-major C = A B is the column-major C^T = B^T A^T."""
    cdef int64_t m64 = m, n64 = n, k64 = k, lda64 = lda, ldb64 = ldb, ldc64 = ldc
    cdef gemm64_t gemm64 = _gemm64[0] if floating is float else _gemm64[1]
    if gemm64 != NULL:
        gemm64(&transa, &transb, &m64, &n64, &k64, &alpha, a, &lda64, b, &ldb64, &beta, c,
               &ldc64)
    elif floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &alpha, <float*>a, &lda, <float*>b, &ldb,
              &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &alpha, <double*>a, &lda, <double*>b, &ldb,
              &beta, c, &ldc)


cdef void _bias_activation(floating* O, const floating* b, Py_ssize_t i0, Py_ssize_t i1,
                           Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t ldo, int kind,
                           floating alpha) noexcept nogil:
    """O[i0:i1, j0:j1] = f(O + b) for one output tile."""
    cdef Py_ssize_t i, j
    cdef floating* o
    for i in range(i0, i1):
        o = O + i * ldo
        if b != NULL:
            for j in range(j0, j1):
                o[j] = o[j] + b[j]
        if kind != IDENTITY:
            _activation_forward_range(o, o, j0, j1, kind, alpha)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline int _blas_single_begin() noexcept nogil:
    return _blas_threads_local(1) if _blas_threads_local != NULL else 0


cdef inline void _blas_single_end(int previous) noexcept nogil:
    if _blas_threads_local != NULL:
        _blas_threads_local(previous)


cdef struct TileGrid:
    Py_ssize_t m, n, row_tiles, col_tiles, tile_rows, tile_cols


cdef struct SgdUpdate:
    # One parameter's SGD update (csrc/fastnn_update.h): applied block by
    # block by sgd_step, or by dense_stack_step where it computes the
    # gradient, while that is still in cache.
    void* p             # the parameter (float* or double*, flat)
    void* v             # its velocity, NULL without momentum
    double lr, momentum, l2, l1   # l2, l1 zero for a parameter not regularised
    bint nesterov


cdef inline void _sgd_apply(const SgdUpdate* u, const floating* g, Py_ssize_t at,
                            Py_ssize_t n) noexcept nogil:
    """u's update of elements [at, at + n) of its parameter, given their
    gradient ``g`` (the gradient's element ``at`` onwards)."""
    if floating is float:
        fastnn_sgd_f(<float*>u.p + at, g, <float*>u.v + at if u.v != NULL else NULL, n,
                     <float>u.lr, <float>u.momentum, u.nesterov, <float>u.l2, <float>u.l1)
    else:
        fastnn_sgd_d(<double*>u.p + at, g, <double*>u.v + at if u.v != NULL else NULL, n,
                     u.lr, u.momentum, u.nesterov, u.l2, u.l1)


cdef inline TileGrid _tile_grid(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The output tiling of an (m, n) = (m, k)(k, n) product: a single tile
    below MIN_PARALLEL_GEMM, else near-equal tiles of at most GEMM_TILE_ROWS
    x GEMM_TILE_COLS, the longer side halved while there are fewer than
    GEMM_MIN_TILES.  A function of the shape alone (see GEMM_TILE_ROWS)."""
    cdef TileGrid g
    g.m, g.n = m, n
    g.row_tiles = g.col_tiles = 1
    if _blas_thread_control() and m * n * k >= MIN_PARALLEL_GEMM:
        g.row_tiles = _cdiv(m, GEMM_TILE_ROWS)
        g.col_tiles = _cdiv(n, GEMM_TILE_COLS)
        while g.row_tiles * g.col_tiles < GEMM_MIN_TILES:
            if n // g.col_tiles >= max(m // g.row_tiles, 2 * GEMM_MIN_TILE_SIDE):
                g.col_tiles *= 2
            elif m // g.row_tiles >= 2 * GEMM_MIN_TILE_SIDE:
                g.row_tiles *= 2
            else:
                break
    g.tile_rows = _cdiv(m, g.row_tiles)
    g.tile_cols = _cdiv(n, g.col_tiles)
    return g


cdef extern from "fastnn_gemm.h" nogil:
    int FASTNN_HAVE_GEMM_F
    int fastnn_gemm_f(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb, float* C,
                      Py_ssize_t ldc)

# fastnn's AVX-512 GEMM (x86-64-v4 variant only) for the float32 products it
# takes; off: BLAS (for comparisons and tests).
cdef bint _own_gemm = FASTNN_HAVE_GEMM_F


def own_gemm(on=None):
    """Whether float32 products run on fastnn's AVX-512 GEMM (compiled into
    the x86-64-v4 variant only) rather than BLAS; ``on`` sets it.  Returns the
    previous setting."""
    global _own_gemm
    previous = bool(_own_gemm)
    if on is not None:
        if on and not FASTNN_HAVE_GEMM_F:
            raise ValueError("fastnn's GEMM is not compiled into the "
                             f"{fastnn_simd_variant().decode()} variant")
        _own_gemm = bool(on)     # either is right for a product already running
    return previous


cdef inline int _own_product(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, const floating* A, Py_ssize_t lda,
                             const floating* B, Py_ssize_t ldb, floating* C,
                             Py_ssize_t ldc) noexcept nogil:
    """C = op(A) op(B) on fastnn's own float32 GEMMs where they were measured
    to beat BLAS: fastnn_narrow_f for at most FASTNN_NARROW_F columns (dW-type
    products, op(A) = A^T, from 1 column, forward products from 9), else
    fastnn_gemm_f on AVX-512 from OWN_GEMM_MIN_SIDE rows and columns.  Returns 0
    when done, else -1 and BLAS computes it."""
    if floating is float:
        if not trans_b and n <= FASTNN_NARROW_F and (trans_a or 2 * n > FASTNN_NARROW_F):
            return fastnn_narrow_f(trans_a, m, n, k, A, lda, B, ldb, C, ldc)
        if _own_gemm and min(m, n) >= OWN_GEMM_MIN_SIDE:
            return fastnn_gemm_f(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc)
    return -1


cdef void _gemm_tile(const TileGrid* g, Py_ssize_t t, bint trans_a, bint trans_b,
                     Py_ssize_t k, const floating* A, Py_ssize_t lda, const floating* B,
                     Py_ssize_t ldb, floating* C, Py_ssize_t ldc, const floating* bias,
                     int kind, floating alpha, const SgdUpdate* update) noexcept nogil:
    """Tile ``t`` of the row-major C = op(A) op(B) on one of fastnn's GEMMs
    (_own_product) or single-threaded BLAS, then, while the tile is in
    cache, the bias + activation epilogue (when ``bias`` or ``kind`` asks
    for it) or, C being a gradient, the SGD ``update`` of its parameter.
    BLAS gets it as the column-major C^T = op(B)^T op(A)^T."""
    cdef Py_ssize_t i0 = (t // g.col_tiles) * g.tile_rows, j0 = (t % g.col_tiles) * g.tile_cols
    cdef Py_ssize_t i1 = min(i0 + g.tile_rows, g.m), j1 = min(j0 + g.tile_cols, g.n)
    cdef const floating* a = A + (i0 if trans_a else i0 * lda)
    cdef const floating* b = B + (j0 * ldb if trans_b else j0)
    cdef Py_ssize_t i
    cdef int previous
    if i1 <= i0 or j1 <= j0:
        return
    if _own_product(trans_a, trans_b, i1 - i0, j1 - j0, k, a, lda, b, ldb,
                       C + i0 * ldc + j0, ldc) != 0:
        previous = _blas_single_begin()
        _gemm(c'T' if trans_b else c'N', c'T' if trans_a else c'N', <int>(j1 - j0),
              <int>(i1 - i0), <int>k, 1, b, <int>ldb, a, <int>lda, 0, C + i0 * ldc + j0,
              <int>ldc)
        _blas_single_end(previous)
    if bias != NULL or kind != IDENTITY:
        _bias_activation(C, bias, i0, i1, j0, j1, ldc, kind, alpha)
    if update != NULL:
        for i in range(i0, i1):
            _sgd_apply(update, C + i * ldc + j0, i * ldc + j0, j1 - j0)


cdef void _gemm_tiled(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                      floating* C, Py_ssize_t ldc, const floating* bias, int kind,
                      floating alpha, const SgdUpdate* update=NULL) noexcept nogil:
    """Row-major C (m, n) = op(A) op(B) [+ bias, activation] [then the
    ``update`` of the parameter C is the gradient of], its tiles spread over
    the team (dynamically: any thread may take any tile, the result is the
    same), each on single-threaded BLAS."""
    cdef TileGrid g = _tile_grid(m, n, k)
    cdef Py_ssize_t n_tiles = g.row_tiles * g.col_tiles, t
    _blas_product_begin()
    if _n_threads > 1 and n_tiles > 1:    # the grid already has one tile below the threshold
        for t in prange(n_tiles, schedule="dynamic", num_threads=_n_threads):
            _gemm_tile(&g, t, trans_a, trans_b, k, A, lda, B, ldb, C, ldc, bias, kind, alpha,
                       update)
    else:
        for t in range(n_tiles):
            _gemm_tile(&g, t, trans_a, trans_b, k, A, lda, B, ldb, C, ldc, bias, kind, alpha,
                       update)
    _blas_product_end()


def product(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] out,
            bint trans_a, bint trans_b):
    """out = op(A) op(B), op a transpose where asked: the products of the
    dense kernels on their own (tiles, threads, fastnn's GEMMs or BLAS), for
    tests and measurements."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
    if (A.shape[1] if trans_a else A.shape[0]) != m or \
            (B.shape[1] if trans_b else B.shape[0]) != k or \
            (B.shape[0] if trans_b else B.shape[1]) != n:
        raise ValueError(f"A {A.shape[0], A.shape[1]}, B {B.shape[0], B.shape[1]} and out "
                         f"{m, n} do not chain (trans_a={trans_a}, trans_b={trans_b})")
    if m == 0 or n == 0:
        return
    if k == 0:
        out[:, :] = 0
        return
    with nogil:
        _gemm_tiled(trans_a, trans_b, m, n, k, &A[0, 0], A.shape[1], &B[0, 0], B.shape[1],
                    &out[0, 0], n, NULL, IDENTITY, 0)


def dense_forward(const floating[:, ::1] A, const floating[:, ::1] W, const floating[::1] b,
                  floating[:, ::1] out, int kind, double alpha):
    """out = f(A W + b): the tiled GEMM (fastnn's or BLAS, _gemm_tile) with
    the bias + activation epilogue fused per output tile."""
    cdef Py_ssize_t n = A.shape[0], n_in = A.shape[1], n_out = W.shape[1]
    cdef const floating* bp = &b[0] if b is not None else NULL
    with nogil:
        _gemm_tiled(False, False, n, n_out, n_in, &A[0, 0], n_in, &W[0, 0], n_out,
                    &out[0, 0], n_out, bp, kind, <floating>alpha)


cdef void _delta_colsum_chunk(const floating* O, const floating* G, floating* D, double* colsum,
                              Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n_out, int kind,
                              floating alpha) noexcept nogil:
    """D = G * f'(O) for rows [start, stop), and colsum = their column sums."""
    cdef Py_ssize_t i, j
    memset(colsum, 0, n_out * sizeof(double))
    for i in range(start, stop):
        if kind != IDENTITY:
            _activation_backward_range(O + i * n_out, G + i * n_out, D + i * n_out, 0, n_out,
                                       kind, alpha)
        elif D != G:
            for j in range(n_out):
                D[i * n_out + j] = G[i * n_out + j]
        for j in range(n_out):
            colsum[j] += D[i * n_out + j]


def dense_backward(const floating[:, ::1] A, const floating[:, ::1] W, const floating[:, ::1] O,
                   const floating[:, ::1] G, floating[:, ::1] delta, floating[:, ::1] dA,
                   floating[:, ::1] dW, floating[::1] db, int kind, double alpha):
    """delta = G * f'(O) fused with db = column sums of delta; then
    dW = A^T delta and (when dA is given) dA = delta W^T, tiled like
    dense_forward.  ``delta`` may alias ``G``."""
    cdef Py_ssize_t n = A.shape[0], n_out = W.shape[1]
    cdef double* partial = <double*> malloc(_n_chunks(n) * n_out * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    with nogil:
        _dense_backward_rows(&A[0, 0], &W[0, 0], &O[0, 0], &G[0, 0], &delta[0, 0],
                             &dA[0, 0] if dA is not None else NULL, &dW[0, 0], &db[0],
                             n, A.shape[1], n_out, kind, <floating>alpha, partial)
    free(partial)


cdef int _plain_layer(object A, object W, Py_ssize_t* n, Py_ssize_t* n_in,
                      Py_ssize_t* n_out):
    """The dtype of a layer's weights W (n_in x n_out) and input A (n x n_in)
    when both are usable as is (_plain, one dtype, matching), else -1."""
    cdef int dtype = _float_dtype(W, 2)
    if dtype < 0:
        return -1
    n_in[0], n_out[0] = cnp.PyArray_DIM(<cnp.ndarray> W, 0), cnp.PyArray_DIM(<cnp.ndarray> W, 1)
    if not _plain(A, dtype, 2) or cnp.PyArray_DIM(<cnp.ndarray> A, 1) != n_in[0]:
        return -1
    n[0] = cnp.PyArray_DIM(<cnp.ndarray> A, 0)
    return dtype


def dense_forward_plain(A, W, b, out, int kind, double alpha):
    """dense_forward for arguments usable as is, as xent_mean_labels: W
    float32/float64, A, b and ``out`` (None: a new one) of its dtype and the
    right shapes, ``out`` writeable and overlapping no input.  Returns out,
    or None to decline (fastnn.functional's general path then converts or
    raises).  Skips checks that cost more than a small layer's GEMM."""
    cdef Py_ssize_t n, n_in, n_out
    cdef int dtype = _plain_layer(A, W, &n, &n_in, &n_out)
    if dtype < 0:
        return None
    if b is not None and not _plain_shape(b, dtype, n_out, -1):
        return None
    out = _out_buffer(out, dtype, n, n_out, (A, W, b))
    if out is None:
        return None
    cdef void* pa = _data(A)
    cdef void* pw = _data(W)
    cdef void* pb = _data(b)
    cdef void* po = _data(out)
    with nogil:
        if dtype == cnp.NPY_FLOAT32:
            _gemm_tiled(False, False, n, n_out, n_in, <float*> pa, n_in, <float*> pw, n_out,
                        <float*> po, n_out, <float*> pb, kind, <float> alpha)
        else:
            _gemm_tiled(False, False, n, n_out, n_in, <double*> pa, n_in, <double*> pw, n_out,
                        <double*> po, n_out, <double*> pb, kind, alpha)
    return out


def dense_backward_plain(A, W, O, grad_out, out, bint need_input_grad, bint overwrite_grad_out,
                         int kind, double alpha):
    """dense_backward for arguments usable as is, as dense_forward_plain
    (``out``: None or a (dA, dW, db) tuple or list of buffers or Nones;
    ``grad_out`` receives delta when ``overwrite_grad_out``).  Returns
    (dA, dW, db), or None to decline."""
    cdef Py_ssize_t n, n_in, n_out
    cdef double* partial
    cdef int dtype = _plain_layer(A, W, &n, &n_in, &n_out)
    if dtype < 0:
        return None
    if not _plain_shape(O, dtype, n, n_out):
        return None
    if overwrite_grad_out:
        delta = _out_buffer(grad_out, dtype, n, n_out, (A, W, O))
    elif _plain_shape(grad_out, dtype, n, n_out):
        delta = _out_buffer(None, dtype, n, n_out, ())
    else:
        return None
    if delta is None:
        return None
    dA_out = dW_out = db_out = None
    if out is not None:
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            return None
        dA_out, dW_out, db_out = out
    inputs = (A, W, O, grad_out)
    dW = _out_buffer(dW_out, dtype, n_in, n_out, inputs)
    db = None if dW is None else _out_buffer(db_out, dtype, n_out, -1, inputs + (dW,))
    if db is None:
        return None
    dA = None
    if need_input_grad:
        dA = _out_buffer(dA_out, dtype, n, n_in, inputs + (dW, db))
        if dA is None:
            return None
    partial = <double*> malloc(_n_chunks(n) * n_out * sizeof(double))
    if partial == NULL:
        raise MemoryError()
    cdef void* p[8]
    p[:] = [_data(A), _data(W), _data(O), _data(grad_out), _data(delta), _data(dA), _data(dW),
            _data(db)]
    with nogil:
        if dtype == cnp.NPY_FLOAT32:
            _dense_backward_rows(<float*> p[0], <float*> p[1], <float*> p[2], <float*> p[3],
                                 <float*> p[4], <float*> p[5], <float*> p[6], <float*> p[7],
                                 n, n_in, n_out, kind, <float> alpha, partial)
        else:
            _dense_backward_rows(<double*> p[0], <double*> p[1], <double*> p[2], <double*> p[3],
                                 <double*> p[4], <double*> p[5], <double*> p[6], <double*> p[7],
                                 n, n_in, n_out, kind, alpha, partial)
    free(partial)
    return dA, dW, db


cdef void _dense_backward_rows(const floating* A, const floating* W, const floating* O,
                               const floating* G, floating* D, floating* dA, floating* dW,
                               floating* db, Py_ssize_t n, Py_ssize_t n_in, Py_ssize_t n_out,
                               int kind, floating alpha, double* partial,
                               const SgdUpdate* update_w=NULL,
                               const SgdUpdate* update_b=NULL) noexcept nogil:
    """The body of dense_backward (dA may be NULL); ``partial`` holds
    n_chunks x n_out doubles.  With ``update_w`` (and ``update_b`` where
    there is a bias) SGD updates W (b) as soon as dW (db) is known: dA,
    which reads W, comes first."""
    cdef Py_ssize_t n_chunks = _n_chunks(n), ch, j
    cdef double s
    if _threaded(n * n_out, n_chunks):
        for ch in prange(n_chunks, schedule="static", num_threads=_n_threads):
            _delta_colsum_chunk(O, G, D, partial + ch * n_out, ch * ROWS_PER_CHUNK,
                                _chunk_stop(ch, n), n_out, kind, alpha)
    else:
        for ch in range(n_chunks):
            _delta_colsum_chunk(O, G, D, partial + ch * n_out, ch * ROWS_PER_CHUNK,
                                _chunk_stop(ch, n), n_out, kind, alpha)
    for j in range(n_out):
        s = 0
        for ch in range(n_chunks):
            s = s + partial[ch * n_out + j]
        db[j] = <floating>s
    if update_b != NULL:
        _sgd_apply(update_b, db, 0, n_out)
    if dA == NULL or update_w != NULL:      # dW alone, or after dA (which reads W)
        if dA != NULL:
            _gemm_tiled(False, True, n, n_in, n_out, D, n_out, W, n_out, dA, n_in, NULL,
                        IDENTITY, 0)
        _gemm_tiled(True, False, n_in, n_out, n, A, n_in, D, n_out, dW, n_out, NULL, IDENTITY, 0,
                    update_w)
        return
    # dA and dW independent: the tiles of both spread over the team in one
    # parallel region, one fork and barrier fewer (measured at 32x784x256 on
    # two threads: 97 -> 92 us; the same from 128 rows on)
    cdef TileGrid ga = _tile_grid(n, n_in, n_out), gw = _tile_grid(n_in, n_out, n)
    cdef Py_ssize_t a_tiles = ga.row_tiles * ga.col_tiles, t
    cdef Py_ssize_t n_tiles = a_tiles + gw.row_tiles * gw.col_tiles
    _blas_product_begin()
    if _n_threads > 1 and n_tiles > 2:      # one of them large enough to split (_tile_grid)
        for t in prange(n_tiles, schedule="dynamic", num_threads=_n_threads):
            _backward_tile(t, a_tiles, &ga, &gw, A, W, D, dA, dW, n, n_in, n_out)
    else:
        for t in range(n_tiles):
            _backward_tile(t, a_tiles, &ga, &gw, A, W, D, dA, dW, n, n_in, n_out)
    _blas_product_end()


cdef inline void _backward_tile(Py_ssize_t t, Py_ssize_t a_tiles, const TileGrid* ga,
                                const TileGrid* gw, const floating* A, const floating* W,
                                const floating* D, floating* dA, floating* dW, Py_ssize_t n,
                                Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """Tile t of dense_backward's two products, dA = D W^T's tiles first,
    then dW = A^T D's."""
    if t < a_tiles:
        _gemm_tile(ga, t, False, True, n_out, D, n_out, W, n_out, dA, n_in, NULL, IDENTITY, 0,
                   NULL)
    else:
        _gemm_tile(gw, t - a_tiles, True, False, n, A, n_in, D, n_out, dW, n_out, NULL,
                   IDENTITY, 0, NULL)


# ---------------------------------------------------------------------------
# a whole training step of a stack of dense layers, in one call
# ---------------------------------------------------------------------------
cdef struct DenseLayer:
    # raw pointers of one layer's arrays (float* or double*, as the step's dtype)
    const void* W
    const void* b
    void* O
    void* D
    void* dW
    void* db
    Py_ssize_t n_in, n_out
    int kind
    double alpha
    SgdUpdate update_w, update_b    # with an optimiser: the SGD of W and of b


def dense_stack_step(list layers, const floating[:, ::1] X, int loss,
                     const int64_t[::1] labels, const floating[:, ::1] target,
                     const floating[::1] sample_weight, floating[:, ::1] loss_grad,
                     double scale, double smoothing, tuple sgd=None):
    """Forward, loss and backward of a stack of dense layers without
    returning to Python in between: the same kernels, in the same order, as
    dense_forward / softmax_cross_entropy or pointwise_loss / dense_backward
    layer by layer, so the results are identical.

    ``layers``: one tuple (W, b or None, kind, alpha, O, D, dW, db) per layer,
    first to last, O and D (the outputs and deltas) of shape (N, n_out).  The
    loss gradient goes to ``loss_grad``; each layer's input gradient straight
    into the D of the layer below (none for the first layer).  Returns the
    weighted loss sum.  The layers' arrays are checked here (_stack_array),
    X, the targets and loss_grad by their memoryviews.

    ``sgd``: None, or an SGD step to take on the way, as sgd_step's
    arguments (views, regularize, lr, momentum, nesterov, l2, l1), views
    holding (parameter array, velocity or None) for each layer's W
    then its b, first layer to last (_stack_sgd checks them): each parameter
    is updated as soon as its gradient is known, while that is in cache
    (the same arithmetic as sgd_step, so the same numbers); the gradients
    are written all the same."""
    cdef Py_ssize_t n = X.shape[0], n_layers = len(layers), l, width = 1, n_in = X.shape[1]
    cdef DenseLayer* plan
    cdef double* partial
    cdef double total
    cdef const floating* A
    cdef Py_ssize_t n_out
    cdef int dtype = cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64
    if n_layers == 0:
        raise ValueError("layers must not be empty")
    plan = <DenseLayer*> malloc(n_layers * sizeof(DenseLayer))
    if plan == NULL:
        raise MemoryError()
    try:
        # raw pointers, not memoryviews: acquiring eight buffers a layer cost
        # microseconds a step
        for l in range(n_layers):
            W, b, kind, alpha, O, D, dW, db = layers[l]
            n_out = (cnp.PyArray_DIM(<cnp.ndarray> W, 1) if isinstance(W, cnp.ndarray)
                     and cnp.PyArray_NDIM(<cnp.ndarray> W) == 2 else 0)
            plan[l].W = _stack_array(W, dtype, n_in, n_out, False, l, "W")
            plan[l].b = _stack_array(b, dtype, n_out, -1, False, l, "b") if b is not None else NULL
            plan[l].O = _stack_array(O, dtype, n, n_out, True, l, "O")
            plan[l].D = _stack_array(D, dtype, n, n_out, True, l, "D")
            plan[l].dW = _stack_array(dW, dtype, n_in, n_out, True, l, "dW")
            plan[l].db = _stack_array(db, dtype, n_out, -1, True, l, "db")
            plan[l].n_in, plan[l].n_out = n_in, n_out
            plan[l].kind, plan[l].alpha = kind, alpha
            n_in = n_out
            width = max(width, n_in)
        if loss_grad.shape[0] != n or loss_grad.shape[1] != n_in:
            raise ValueError("loss_grad must have the shape of the last layer's output")
        if (labels is not None and labels.shape[0] != n) or \
                (target is not None and (target.shape[0] != n or target.shape[1] != n_in)) or \
                (sample_weight is not None and sample_weight.shape[0] != n):
            raise ValueError("targets and weights must have one row per sample")
        if sgd is not None:
            _stack_sgd(plan, n_layers, sgd)
        partial = <double*> malloc(_n_chunks(n) * width * sizeof(double))
        if partial == NULL:
            raise MemoryError()
        with nogil:
            A = &X[0, 0]
            for l in range(n_layers):
                _gemm_tiled(False, False, n, plan[l].n_out, plan[l].n_in, A, plan[l].n_in,
                            <const floating*>plan[l].W, plan[l].n_out, <floating*>plan[l].O,
                            plan[l].n_out, <const floating*>plan[l].b, plan[l].kind,
                            <floating>plan[l].alpha)
                A = <const floating*>plan[l].O
            l = n_layers - 1
            total = _loss_rows(loss, <const floating*>plan[l].O,
                               &labels[0] if labels is not None else NULL,
                               &target[0, 0] if target is not None else NULL,
                               &sample_weight[0] if sample_weight is not None else NULL,
                               &loss_grad[0, 0], NULL, n, plan[l].n_out, scale, smoothing,
                               partial)
            A = &loss_grad[0, 0]        # the gradient arriving at the current layer
            for l in range(n_layers - 1, -1, -1):
                _dense_backward_rows(<const floating*>plan[l - 1].O if l > 0 else &X[0, 0],
                                     <const floating*>plan[l].W, <const floating*>plan[l].O, A,
                                     <floating*>plan[l].D,
                                     <floating*>plan[l - 1].D if l > 0 else NULL,
                                     <floating*>plan[l].dW, <floating*>plan[l].db, n,
                                     plan[l].n_in, plan[l].n_out, plan[l].kind,
                                     <floating>plan[l].alpha, partial,
                                     &plan[l].update_w if sgd is not None else NULL,
                                     &plan[l].update_b if sgd is not None
                                     and plan[l].update_b.p != NULL else NULL)
                if l > 0:
                    A = <const floating*>plan[l - 1].D
        free(partial)
    finally:
        free(plan)
    return total


cdef void* _stack_array(object x, int dtype, Py_ssize_t d0, Py_ssize_t d1, bint written,
                        Py_ssize_t l, str name) except NULL:
    """The data of one of dense_stack_step's per-layer arrays after checking
    it: _plain of shape (d0, d1) ((d0,) when d1 < 0), writeable where the
    step writes to it."""
    if not _plain_shape(x, dtype, d0, d1) or (written and
                                              not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x)):
        shape = f"({d0},)" if d1 < 0 else f"({d0}, {d1})"
        raise ValueError(f"layer {l}: {name} must be a C-contiguous "
                         f"{'float32' if dtype == cnp.NPY_FLOAT32 else 'float64'} array of "
                         f"shape {shape}{', writeable' if written else ''}")
    return cnp.PyArray_DATA(<cnp.ndarray> x)


cdef int _stack_sgd(DenseLayer* plan, Py_ssize_t n_layers, tuple sgd) except -1:
    """Fills each layer's update_w and update_b from dense_stack_step's
    ``sgd``, after checking that its views are the layers' parameters, in
    order (the same memory, writeable, velocities of the same size)."""
    views, regularize, lr, momentum, nesterov, l2, l1 = sgd
    cdef Py_ssize_t l, k = 0, size
    cdef SgdUpdate* u
    cdef const void* param
    cdef int which
    for l in range(n_layers):
        k += 1 + (plan[l].b != NULL)
    if len(views) != k or len(regularize) != k:
        raise ValueError(f"sgd: {len(views)} views for the layers' {k} parameters")
    k = 0
    for l in range(n_layers):
        for which in range(2):      # W, then b
            u = &plan[l].update_w if which == 0 else &plan[l].update_b
            param = plan[l].W if which == 0 else plan[l].b
            size = plan[l].n_in * plan[l].n_out if which == 0 else plan[l].n_out
            u.p = NULL      # a layer without bias: no update of its db
            if param == NULL:
                continue
            p, v = views[k]
            if not (isinstance(p, cnp.ndarray) and _data(p) == param
                    and cnp.PyArray_SIZE(<cnp.ndarray> p) == size
                    and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> p)
                    and (v is None or (isinstance(v, cnp.ndarray) and v.dtype == p.dtype
                                       and cnp.PyArray_SIZE(<cnp.ndarray> v) == size
                                       and cnp.PyArray_ISCARRAY(<cnp.ndarray> v)))):
                raise ValueError(f"sgd: view {k} is not layer {l}'s "
                                 f"{('weight', 'bias')[which]}, writeable "
                                 "(with a velocity of its size)")
            u.p, u.v = _data(p), _data(v)
            u.lr, u.momentum, u.nesterov = lr, momentum, nesterov
            u.l2 = l2 if regularize[k] else 0
            u.l1 = l1 if regularize[k] else 0
            k += 1
    return 0


# ---------------------------------------------------------------------------
# logistic regression: z = X w + b, r = sigmoid(z) - t, g += r x in one sweep
# ---------------------------------------------------------------------------
cdef double _logistic_chunk(const floating* X, const floating* w, double b, const floating* T,
                            const floating* sw, floating* gw, double* gb, Py_ssize_t start,
                            Py_ssize_t stop, Py_ssize_t d, Py_ssize_t n_next) noexcept nogil:
    """Rows [start, stop): gw[0:d] = sum_i w_i r_i x_i, gb[0] = sum_i w_i r_i;
    returns sum_i w_i l_i.  Three passes over the chunk, which stays in
    cache: the logits z_i, then r_i and the loss, then gw (one chunk's sum in
    the data's dtype; the chunks are added in double).  The first and last
    run four rows at a time (fastnn_matvec/vecmat), the last prefetching the
    n_next rows that follow; float32's middle pass is vectorised over the
    rows (fastnn_logistic_rows_f)."""
    cdef floating z[ROWS_PER_CHUNK]
    cdef floating r[ROWS_PER_CHUNK]
    cdef floating e[ROWS_PER_CHUNK]
    cdef Py_ssize_t n = stop - start, i
    cdef double total = 0, r_sum = 0, q, wi, t, zi, ei
    X += start * d
    T += start
    if sw != NULL:
        sw += start
    if floating is float:
        fastnn_matvec_f(X, d, w, b, n, z)
        total = fastnn_logistic_rows_f(z, T, sw, r, e, n)
    else:
        fastnn_matvec_d(X, d, w, b, n, z)
        for i in range(n):
            zi = z[i]
            t = T[i]
            wi = sw[i] if sw != NULL else 1
            ei = exp(-fabs(zi))                 # shared by the loss and the sigmoid
            total += wi * ((zi if zi > 0 else 0) - t * zi + log1p(ei))
            q = ei / (1 + ei)                   # sigmoid(-|z|): sigmoid - t below
            r[i] = wi * ((1 - t) - q if zi >= 0 else q - t)   # without cancellation
    for i in range(n):
        r_sum += r[i]
    if floating is float:
        fastnn_vecmat_f(X, d, r, n, gw, X + n * d, n_next)
    else:
        fastnn_vecmat_d(X, d, r, n, gw, X + n * d, n_next)
    gb[0] = r_sum
    return total


cdef inline void _logistic_chunk_at(Py_ssize_t ch, const floating* X, const floating* w, double b,
                                    const floating* t, const floating* sw, floating* chunk_gw,
                                    double* partial, Py_ssize_t n, Py_ssize_t d) noexcept nogil:
    """Chunk ``ch`` of logistic_loss_grad: its gradient into row ch of
    chunk_gw, [grad_b, loss] into partial[2 ch : 2 ch + 2]."""
    partial[2 * ch + 1] = _logistic_chunk(X, w, b, t, sw, chunk_gw + ch * d, partial + 2 * ch,
                                          ch * ROWS_PER_CHUNK, _chunk_stop(ch, n), d,
                                          _chunk_stop(ch + 1, n) - _chunk_stop(ch, n))


def logistic_loss_grad(const floating[:, ::1] X, const floating[::1] w, double b,
                       const floating[::1] t, const floating[::1] sample_weight,
                       floating[::1] grad_w, double scale):
    """Returns (weighted loss sum, grad_b scaled); writes grad_w scaled."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t n_chunks = _n_chunks(n), ch, j
    cdef const floating* wp = &sample_weight[0] if sample_weight is not None else NULL
    # per chunk: its gradient sum (d values) and [gb, loss] in double
    cdef floating* chunk_gw = <floating*> malloc(n_chunks * d * sizeof(floating))
    cdef double* partial = <double*> malloc((n_chunks * 2 + d) * sizeof(double))
    cdef double* gw_sum = partial + n_chunks * 2
    cdef double loss_sum = 0, grad_b = 0
    if chunk_gw == NULL or partial == NULL:
        free(chunk_gw)
        free(partial)
        raise MemoryError()
    with nogil:
        if _threaded(n * d, n_chunks):
            for ch in prange(n_chunks, schedule="static", num_threads=_n_threads):
                _logistic_chunk_at(ch, &X[0, 0], &w[0], b, &t[0], wp, chunk_gw, partial, n, d)
        else:
            for ch in range(n_chunks):
                _logistic_chunk_at(ch, &X[0, 0], &w[0], b, &t[0], wp, chunk_gw, partial, n, d)
        # chunk by chunk (in order, as every reduction here), each a contiguous row
        memset(gw_sum, 0, d * sizeof(double))
        for ch in range(n_chunks):
            for j in range(d):
                gw_sum[j] += chunk_gw[ch * d + j]
        for j in range(d):
            grad_w[j] = <floating>(gw_sum[j] * scale)
        for ch in range(n_chunks):
            grad_b = grad_b + partial[2 * ch]
            loss_sum = loss_sum + partial[2 * ch + 1]
    free(chunk_gw)
    free(partial)
    return loss_sum, grad_b * scale


# ---------------------------------------------------------------------------
# optimiser updates: one fused pass over each parameter array
# ---------------------------------------------------------------------------
cdef extern from "fastnn_narrow.h" nogil:
    int FASTNN_NARROW_F
    int fastnn_narrow_f(int trans_a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A,
                        Py_ssize_t lda, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)


cdef extern from "fastnn_update.h" nogil:
    void fastnn_sgd_f(float* p, const float* g, float* v, Py_ssize_t n, float lr, float mu,
                      int nesterov, float l2, float l1)
    void fastnn_sgd_d(double* p, const double* g, double* v, Py_ssize_t n, double lr,
                      double mu, int nesterov, double l2, double l1)
    void fastnn_adam_f(float* p, const float* g, float* m, float* v, Py_ssize_t n, float lr_t,
                       float b1, float b2, float c1, float c2, float eps, float l2, float l1,
                       float keep)
    void fastnn_adam_d(double* p, const double* g, double* m, double* v, Py_ssize_t n,
                       double lr_t, double b1, double b2, double c1, double c2, double eps,
                       double l2, double l1, double keep)


cdef enum:
    # Parameters per block of an optimiser update (the unit spread over the team).
    UPDATE_BLOCK = 16384


cdef struct UpdateBlock:
    # up to UPDATE_BLOCK consecutive elements of one parameter and its state
    void* p
    const void* g
    void* s1            # SGD: velocity (NULL: no momentum); Adam: m
    void* s2            # Adam: v
    Py_ssize_t n
    bint regularize     # whether l2 and l1 apply to this parameter


cdef UpdateBlock* _update_blocks(list views, list regularize, floating* dtype_tag,
                                 Py_ssize_t* n_blocks) except NULL:
    """Every parameter's update cut into blocks: ``views`` holds (p, g, s1[,
    s2]) flat arrays of one dtype per parameter (s1 may be None).  The caller
    frees the array; its pointers live as long as the arrays in ``views``."""
    cdef Py_ssize_t count = 0, i, lo, n
    cdef floating[::1] p, s1, s2
    cdef const floating[::1] g
    for entry in views:
        count += _cdiv(len(entry[0]), UPDATE_BLOCK)
    cdef UpdateBlock* blocks = <UpdateBlock*> malloc((count + 1) * sizeof(UpdateBlock))
    if blocks == NULL:
        raise MemoryError()
    count = 0
    try:
        for i in range(len(views)):
            entry = views[i]
            p, g, s1 = entry[0], entry[1], entry[2]
            s2 = entry[3] if len(entry) > 3 else None
            n = p.shape[0]
            if g.shape[0] != n or (s1 is not None and s1.shape[0] != n) or \
                    (s2 is not None and s2.shape[0] != n):
                raise ValueError(f"parameter {i}: the arrays' sizes differ")
            for lo in range(0, n, UPDATE_BLOCK):
                blocks[count].p = &p[lo]
                blocks[count].g = &g[lo]
                blocks[count].s1 = &s1[lo] if s1 is not None else NULL
                blocks[count].s2 = &s2[lo] if s2 is not None else NULL
                blocks[count].n = min(UPDATE_BLOCK, n - lo)
                blocks[count].regularize = regularize[i]
                count += 1
    except BaseException:
        free(blocks)
        raise
    n_blocks[0] = count
    return blocks


cdef UpdateBlock* _all_blocks(list views, list regularize, bint single, Py_ssize_t* n_blocks,
                             Py_ssize_t* total) except NULL:
    """_update_blocks for the dtype of ``views`` (float32 when ``single``);
    ``total`` receives the number of elements, for _threaded."""
    cdef UpdateBlock* blocks = (
        _update_blocks(views, regularize, <float*>NULL, n_blocks) if single
        else _update_blocks(views, regularize, <double*>NULL, n_blocks))
    cdef Py_ssize_t blk
    total[0] = 0
    for blk in range(n_blocks[0]):
        total[0] += blocks[blk].n
    return blocks


def sgd_step(list views, list regularize, double lr, double momentum, bint nesterov,
             double l2, double l1):
    """One SGD update, in place, of each parameter (p, g, velocity or None) in
    ``views``, flat arrays of one dtype; l2 and l1 apply where regularize[i].
    All parameters' blocks are spread over the team in one parallel region
    (csrc/fastnn_update.h)."""
    cdef Py_ssize_t n_blocks, blk, total
    cdef bint single = views[0][0].dtype.itemsize == 4
    cdef UpdateBlock* blocks = _all_blocks(views, regularize, single, &n_blocks, &total)
    if _threaded(total, n_blocks):
        for blk in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _sgd_block(&blocks[blk], single, lr, momentum, nesterov, l2, l1)
    else:
        with nogil:
            for blk in range(n_blocks):
                _sgd_block(&blocks[blk], single, lr, momentum, nesterov, l2, l1)
    free(blocks)


cdef inline void _sgd_block(const UpdateBlock* b, bint single, double lr, double momentum,
                            bint nesterov, double l2, double l1) noexcept nogil:
    cdef SgdUpdate u
    u.p, u.v, u.lr, u.momentum, u.nesterov = b.p, b.s1, lr, momentum, nesterov
    u.l2 = l2 if b.regularize else 0
    u.l1 = l1 if b.regularize else 0
    if single:
        _sgd_apply(&u, <const float*>b.g, 0, b.n)
    else:
        _sgd_apply(&u, <const double*>b.g, 0, b.n)


def adam_step(list views, list regularize, double lr_t, double beta1, double beta2,
              double eps, double l2, double l1, double decay):
    """One Adam update, in place, of each parameter (p, g, m, v) in ``views``,
    as sgd_step.  ``lr_t`` is the bias-corrected step size; ``decay`` = lr *
    weight_decay (decoupled, AdamW), applied before the gradient step; l2,
    l1 and decay apply where regularize[i]."""
    cdef Py_ssize_t n_blocks, blk, total
    cdef bint single = views[0][0].dtype.itemsize == 4
    # 1 - beta in double, then rounded: 1 - <float>0.999 is off by 1.3e-5 relative.
    cdef double c1 = 1 - beta1, c2 = 1 - beta2, keep = 1 - decay
    cdef UpdateBlock* blocks = _all_blocks(views, regularize, single, &n_blocks, &total)
    if _threaded(total, n_blocks):
        for blk in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _adam_block(&blocks[blk], single, lr_t, beta1, beta2, c1, c2, eps, l2, l1, keep)
    else:
        with nogil:
            for blk in range(n_blocks):
                _adam_block(&blocks[blk], single, lr_t, beta1, beta2, c1, c2, eps, l2, l1, keep)
    free(blocks)


cdef inline void _adam_block(const UpdateBlock* b, bint single, double lr_t, double beta1,
                             double beta2, double c1, double c2, double eps, double l2,
                             double l1, double keep) noexcept nogil:
    if single:
        fastnn_adam_f(<float*>b.p, <const float*>b.g, <float*>b.s1, <float*>b.s2, b.n,
                      <float>lr_t, <float>beta1, <float>beta2, <float>c1, <float>c2,
                      <float>eps, <float>l2 if b.regularize else 0,
                      <float>l1 if b.regularize else 0, <float>keep if b.regularize else 1)
    else:
        fastnn_adam_d(<double*>b.p, <const double*>b.g, <double*>b.s1, <double*>b.s2, b.n,
                      lr_t, beta1, beta2, c1, c2, eps, l2 if b.regularize else 0,
                      l1 if b.regularize else 0, keep if b.regularize else 1)


def simd_variant():
    """The variant of the vectorised loops chosen for this CPU."""
    return fastnn_simd_variant().decode()


cdef _check_exp_out(const float[::1] x, float[::1] out):
    if out.shape[0] < x.shape[0]:
        raise ValueError(f"out must hold at least len(x) = {x.shape[0]} elements, "
                         f"got {out.shape[0]}")


def exp_f32(const float[::1] x, float[::1] out):
    """out = exp(x) through the full-range form of the kernels' vectorised,
    CPU-dispatched float32 exp; exposed for its accuracy test."""
    _check_exp_out(x, out)
    if x.shape[0] > 0:
        fastnn_exp_f(&x[0], &out[0], x.shape[0])


def exp_shifted_f32(const float[::1] x, float[::1] out, float m):
    """out = exp(x - m) for m >= max(x), and returns its sum: the exp loop of
    the softmax kernels itself, exposed for its accuracy test."""
    _check_exp_out(x, out)
    if x.shape[0] == 0:
        return 0.0
    return fastnn_exp_shifted_sum_f(&x[0], &out[0], x.shape[0], m)
