# Losses: each chunk function handles the rows of one chunk and returns the
# chunk's weighted loss sum (in double); the driver adds chunks in order.
# Softmax cross-entropy (with its one-call entry point), BCE, MSE and Poisson.

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


cdef double _poisson_chunk(const floating* Z, const floating* Y, const floating* sw, floating* G,
                           floating* L, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t k_out,
                           double scale) noexcept nogil:
    """Poisson deviance/2 on the log link, as scikit-learn's MLP poisson loss:
    exp(z) - y z + xlogy(y, y) - y; gradient exp(z) - y."""
    cdef double total = 0, row_loss
    cdef Py_ssize_t i, k, j
    cdef floating z, y, e, w, ws
    for i in range(start, stop):
        w = sw[i] if sw != NULL else 1
        ws = <floating>(w * scale)
        row_loss = 0
        for k in range(k_out):
            j = i * k_out + k
            z = Z[j]
            y = Y[j]
            e = _exp(z)             # inf for large z: an infinite loss, not an error
            row_loss += e
            if y != 0:              # xlogy(0, 0) = 0, and 0 * (-inf) must not poison the loss
                # in double: y log y and y z nearly cancel where exp(z) ~ y
                row_loss += <double>y * (log(<double>y) - <double>z - 1)
            G[j] = (e - y) * ws
        if L != NULL:
            L[i] = <floating>(w * row_loss)
        total += w * row_loss
    return total


def pointwise_loss(int which, const floating[:, ::1] z, const floating[:, ::1] t,
                   const floating[::1] sample_weight, floating[:, ::1] grad,
                   floating[::1] losses, double scale):
    """which = LOSS_BCE (0): binary cross-entropy with logits; LOSS_MSE (1):
    squared error; LOSS_POISSON (3): Poisson on the log link."""
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
    if which == LOSS_POISSON:
        return _poisson_chunk(Z, T, sw, G, L, start, stop, c, scale)
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
