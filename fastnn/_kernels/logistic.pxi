# Logistic regression: z = X w + b, r = sigmoid(z) - t, g += r x in one sweep.

cdef double _logistic_chunk(const floating* X, const floating* w, double b, const floating* T,
                            const floating* sw, floating* gw, double* gb, Py_ssize_t start,
                            Py_ssize_t stop, Py_ssize_t d, Py_ssize_t n_next) noexcept nogil:
    """Rows [start, stop): gw[0:d] = sum_i w_i r_i x_i, gb[0] = sum_i w_i r_i;
    returns sum_i w_i l_i, while the chunk stays in cache; the n_next rows
    that follow are prefetched during its gradient pass.  float32:
    fastnn_logistic_block_f (csrc/fastnn_logistic.h: on AVX-512 one pass of
    sixteen rows at a time, the exp and log1p vectorised in float32, the
    loss summed in double).  float64: the logits four rows at a time
    (fastnn_matvec_d), libm's exp and log1p per row, the gradient four rows
    per pass over gw (fastnn_vecmat_d)."""
    cdef double z[ROWS_PER_CHUNK]
    cdef double r[ROWS_PER_CHUNK]
    cdef Py_ssize_t n = stop - start, i
    cdef double total = 0, r_sum = 0, q, wi, t, zi, ei
    X += start * d
    T += start
    if sw != NULL:
        sw += start
    if floating is float:
        return fastnn_logistic_block_f(X, d, w, b, T, sw, n, gw, gb, X + n * d, n_next)
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
            r_sum += r[i]
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
