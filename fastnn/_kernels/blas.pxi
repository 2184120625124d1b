# BLAS: which one the kernels call, and keeping its threads out of fastnn's team.

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


cdef inline int _blas_single_begin() noexcept nogil:
    return _blas_threads_local(1) if _blas_threads_local != NULL else 0


cdef inline void _blas_single_end(int previous) noexcept nogil:
    if _blas_threads_local != NULL:
        _blas_threads_local(previous)
