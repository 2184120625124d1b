# The team: the thread count, when a loop runs on it, the fixed row chunks
# that keep every reduction bit-identical at any thread count, and fork.

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
    # Below this many elements (tens of microseconds of work) a loop runs on
    # one thread: a parallel region's fork and barrier cost microseconds on
    # an idle machine, and up to a scheduler time slice on a busy one.
    MIN_PARALLEL_WORK = 1 << 17


cdef int _n_threads = 1


cdef inline bint _threaded(Py_ssize_t work, Py_ssize_t n_parts) noexcept nogil:
    """Whether a loop of ``n_parts`` parts and ``work`` elements runs on the
    team.  Otherwise it runs as a plain loop, outside any parallel region:
    even a one-thread region costs microseconds in libgomp (measured: a
    1-row cross-entropy call took 4.5 us inside one and 1.5 us without, and
    more right after a parallel region, when libgomp parks the idle team).
    Chunking, and so every result, is the same either way."""
    return _n_threads > 1 and n_parts > 1 and work >= MIN_PARALLEL_WORK


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


cdef inline Py_ssize_t _n_chunks(Py_ssize_t n) noexcept nogil:
    return (n + ROWS_PER_CHUNK - 1) // ROWS_PER_CHUNK


cdef inline Py_ssize_t _chunk_stop(Py_ssize_t chunk, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t stop = (chunk + 1) * ROWS_PER_CHUNK
    return stop if stop < n else n


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b
