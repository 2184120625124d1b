# Minibatch gathering: rows of X picked by shuffled indices.

cdef enum:
    # Elements from which a gather of rows is split over the team (measured,
    # 784 floats a row, two threads against one: 22 against 24 us at 128
    # rows, 72 against 106 us at 512; at 32 rows no gain, 7.5 against 7.1)
    MIN_PARALLEL_GATHER = 1 << 15


def gather_rows(const floating[:, ::1] X, const int64_t[::1] index, floating[:, ::1] out):
    """out[i] = X[index[i]]: a minibatch gathered from shuffled sample
    indices.  The rows lie scattered through memory, so the copy waits on
    memory: it is split over the team from a few dozen rows on (two cores
    keep twice the misses in flight), and each row prefetches the one two
    ahead.  IndexError when an index lies outside [0, len(X))."""
    cdef Py_ssize_t n = index.shape[0], d = X.shape[1]
    if out.shape[0] != n or out.shape[1] != d:
        raise ValueError(f"out must have shape ({n}, {d}), got ({out.shape[0]}, {out.shape[1]})")
    if n == 0:
        return
    if fastnn_count_outside(&index[0], n, X.shape[0]) != 0:
        raise IndexError(f"index must lie in [0, {X.shape[0]})")
    with nogil:
        _gather_batch(&X[0, 0], &index[0], &out[0, 0], n, d)


cdef void _gather_batch(const floating* X, const int64_t* rows, floating* out, Py_ssize_t m,
                        Py_ssize_t d) noexcept nogil:
    """gather_rows after its checks (also fit's compiled epoch, whose rows
    are checked once)."""
    cdef Py_ssize_t i
    if _n_threads > 1 and m * d >= MIN_PARALLEL_GATHER:
        for i in prange(m, schedule="static", num_threads=_n_threads):
            _copy_row(X, rows, out, i, m, d)
    else:
        for i in range(m):
            _copy_row(X, rows, out, i, m, d)


cdef inline void _copy_row(const floating* X, const int64_t* rows, floating* out, Py_ssize_t i,
                           Py_ssize_t n, Py_ssize_t d) noexcept nogil:
    if i + 2 < n:
        fastnn_prefetch(X + rows[i + 2] * d, d * sizeof(floating))
    memcpy(out + i * d, X + rows[i] * d, d * sizeof(floating))
