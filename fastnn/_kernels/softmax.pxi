# Numerically stable softmax and log-softmax, row by row.

cdef enum:
    # Rows of at least this many classes are exponentiated one row at a time
    # (the row stays in L1 between passes); shorter rows a whole chunk at a
    # time, so that the exp loop is long enough to vectorise well.
    ROW_LOOP_CLASSES = 32


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
