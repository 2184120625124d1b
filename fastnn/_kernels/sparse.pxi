# The dense layer on a sparse (CSR) input X: O = f(X W + b) and its weight
# and bias gradients.  X arrives as scipy's three arrays, values of the
# ``floating`` dtype of W, column indices and row pointers int32 or int64
# (whichever scipy chose: never copied to change it).  These entries check
# the arrays' structure themselves (cheap next to the products): a bad index
# would otherwise read or write outside W or dW.

ctypedef fused csr_index:
    int32_t
    int64_t


cdef enum:
    # Output rows per task of the forward pass: rows are independent, so the
    # split only balances the team (rows differ in their non-zeros).
    SPARSE_ROWS_PER_TASK = 16
    # Bytes of dW per task of the weight gradient: a bucket of features,
    # its rows of dW kept in L2 while the bucket's values scatter into them,
    # each row summed by one task in one fixed order whatever the thread
    # count.  Measured against a transpose of X (one task per 64 features),
    # the TF-IDF batch below, n_out 100 float32: 0.96 / 0.71 ms on 1 / 2
    # threads transposed, 0.96 / 0.58 ms bucketed; the whole 20000-row set
    # 41 / 28 ms against 32-37 / 22 ms (256 KiB-1 MiB buckets alike).
    SPARSE_DW_BUCKET_BYTES = 512 * 1024
    # W rows ahead prefetched by the forward pass, across row ends: a TF-IDF
    # row's features are scattered over a W far larger than L2 (measured,
    # 200 x 50000 rows of 60 non-zeros, W 50000 x 100 float32, one thread:
    # 0.31 ms without, 0.26 with 4 ahead within a row, 0.23 with 8 ahead
    # across rows; 16 ahead, or two non-zeros per pass over O's row, no
    # better)
    SPARSE_PREFETCH_AHEAD = 8


cdef int _csr_check(const floating* data, const csr_index* indices, const csr_index* indptr,
                    Py_ssize_t n, Py_ssize_t nnz, Py_ssize_t n_in) noexcept nogil:
    """0 when the CSR arrays describe an (n, n_in) matrix of ``nnz`` finite
    stored values, else which rule fails (_CSR_ERRORS)."""
    cdef Py_ssize_t i, p
    cdef bint bad = False
    if indptr[0] != 0:
        return 1
    for i in range(n):
        bad |= indptr[i + 1] < indptr[i]
    if bad:
        return 2
    if indptr[n] != nnz:
        return 3
    for p in range(nnz):          # unsigned: a negative index is out of range too
        bad |= <size_t>indices[p] >= <size_t>n_in
    if bad:
        return 4
    for p in range(nnz):          # x - x is 0 for a finite x, NaN for inf and NaN
        bad |= not (data[p] - data[p] == 0)
    if bad:
        return 5
    return 0


_CSR_ERRORS = {
    1: "X.indptr must start at 0",
    2: "X.indptr must be non-decreasing",
    3: "X.indptr must end at the number of stored values (len(X.data) == len(X.indices))",
    4: "X.indices must lie in [0, n_features)",
    5: "X.data must be finite (no NaN or inf)",
}


cdef _check_csr(const floating[::1] data, const csr_index[::1] indices,
                const csr_index[::1] indptr, Py_ssize_t n_in):
    cdef Py_ssize_t n = indptr.shape[0] - 1, nnz = data.shape[0]
    cdef int code
    if n < 1:
        raise ValueError("X.indptr must have n_rows + 1 >= 2 entries")
    if indices.shape[0] != nnz:
        raise ValueError(f"X.indices and X.data must have the same length, got "
                         f"{indices.shape[0]} and {nnz}")
    with nogil:
        code = _csr_check(&data[0] if nnz > 0 else NULL,
                          &indices[0] if nnz > 0 else NULL, &indptr[0], n, nnz, n_in)
    if code != 0:
        raise ValueError(_CSR_ERRORS[code])


def check_csr(const floating[::1] data, const csr_index[::1] indices,
              const csr_index[::1] indptr, Py_ssize_t n_cols):
    """The structural and finiteness checks of the sparse entries alone
    (ValueError): nn.fit runs them once on the whole X before scipy's row
    indexing, which trusts the structure, gathers its batches."""
    _check_csr(data, indices, indptr, n_cols)


cdef void _sparse_rows(const floating* data, const csr_index* indices, const csr_index* indptr,
                       const floating* W, const floating* b, floating* O, Py_ssize_t i0,
                       Py_ssize_t i1, Py_ssize_t n_out, int kind,
                       floating alpha) noexcept nogil:
    """O[i] = f(X[i] W + b) for rows [i0, i1): the row's stored values
    times their rows of W summed in storage order (duplicates add up), then
    the bias + activation epilogue of the tiled GEMM while O[i] is in cache."""
    cdef Py_ssize_t i, p, ahead
    cdef Py_ssize_t last = indptr[i1]      # prefetch across rows, up to the task's end
    cdef floating v
    cdef floating* o
    cdef const floating* w
    for i in range(i0, i1):
        o = O + i * n_out
        memset(o, 0, n_out * sizeof(floating))
        for p in range(indptr[i], indptr[i + 1]):
            ahead = p + SPARSE_PREFETCH_AHEAD
            if ahead < last:
                fastnn_prefetch(W + indices[ahead] * n_out, n_out * sizeof(floating))
            v = data[p]
            w = W + indices[p] * n_out
            _axpy(n_out, v, w, o)
        _bias_activation(O, b, i, i + 1, 0, n_out, n_out, kind, alpha)


cdef inline void _axpy(Py_ssize_t n, floating a, const floating* x,
                       floating* y) noexcept nogil:
    """y += a x: one contiguous loop the compiler vectorises for each
    variant's SIMD width (x, a row of W or of delta, never overlaps y)."""
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = y[j] + a * x[j]


def sparse_dense_forward(const floating[::1] data, const csr_index[::1] indices,
                         const csr_index[::1] indptr, const floating[:, ::1] W,
                         const floating[::1] b, floating[:, ::1] out, int kind, double alpha):
    """out = f(X W + b) for the CSR X (data, indices, indptr) of n = len(indptr)
    - 1 rows and W.shape[0] columns.  ValueError when the arrays do not
    describe such a matrix.  Rows split over the team in tasks of
    SPARSE_ROWS_PER_TASK; each row is computed by one thread, so the bits
    never depend on the thread count."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, n_out = W.shape[1], nnz = data.shape[0], t
    _check_csr(data, indices, indptr, W.shape[0])
    if out.shape[0] != n or out.shape[1] != n_out:
        raise ValueError(f"out must have shape ({n}, {n_out})")
    cdef const floating* dp = &data[0] if nnz > 0 else NULL
    cdef const csr_index* ip = &indices[0] if nnz > 0 else NULL
    cdef const csr_index* pp = &indptr[0]
    cdef const floating* wp = &W[0, 0]
    cdef const floating* bp = &b[0] if b is not None else NULL
    cdef floating* op = &out[0, 0]
    cdef Py_ssize_t n_tasks = _cdiv(n, SPARSE_ROWS_PER_TASK)
    if _threaded((nnz + n) * n_out, n_tasks):
        for t in prange(n_tasks, nogil=True, schedule="dynamic", num_threads=_n_threads):
            _sparse_rows(dp, ip, pp, wp, bp, op, t * SPARSE_ROWS_PER_TASK,
                         min((t + 1) * SPARSE_ROWS_PER_TASK, n), n_out, kind, <floating>alpha)
    else:
        with nogil:
            _sparse_rows(dp, ip, pp, wp, bp, op, 0, n, n_out, kind, <floating>alpha)


cdef void _bucket_sort(const floating* data, const csr_index* indices, const csr_index* indptr,
                       Py_ssize_t n, int shift, Py_ssize_t n_buckets, Py_ssize_t* bucket_ptr,
                       Py_ssize_t* fill, csr_index* rows, csr_index* feats,
                       floating* values) noexcept nogil:
    """The stored values of X grouped by bucket of features (feature >>
    shift): bucket t's entries are [bucket_ptr[t], bucket_ptr[t + 1]) of
    (rows, feats, values).  A counting sort, stable: within a bucket the
    entries stay in row order (storage order within a row), the order dW
    sums them in.  Few buckets, so few write streams: cache-friendly."""
    cdef Py_ssize_t i, p, b, q, total = 0
    memset(bucket_ptr, 0, (n_buckets + 1) * sizeof(Py_ssize_t))
    for p in range(indptr[n]):
        bucket_ptr[(indices[p] >> shift) + 1] += 1
    for b in range(n_buckets):
        total = total + bucket_ptr[b + 1]
        bucket_ptr[b + 1] = total
        fill[b] = bucket_ptr[b]
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            b = indices[p] >> shift
            q = fill[b]
            fill[b] = q + 1
            rows[q] = <csr_index>i
            feats[q] = indices[p]
            values[q] = data[p]


cdef void _bucket_dw(const Py_ssize_t* bucket_ptr, const csr_index* rows, const csr_index* feats,
                     const floating* values, const floating* D, floating* dW, Py_ssize_t t,
                     int shift, Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """dW's rows of bucket t (features [t << shift, (t + 1) << shift)):
    zeroed (every element written, a feature no sample holds stays 0), then
    dW[k] += X[i, k] D[i] over the bucket's entries in row order, the rows
    of dW in cache (SPARSE_DW_BUCKET_BYTES), the rows of D prefetched."""
    cdef Py_ssize_t k0 = t << shift, k1 = min(k0 + (<Py_ssize_t>1 << shift), n_in), q
    cdef Py_ssize_t q1 = bucket_ptr[t + 1]
    memset(dW + k0 * n_out, 0, (k1 - k0) * n_out * sizeof(floating))
    for q in range(bucket_ptr[t], q1):
        if q + SPARSE_PREFETCH_AHEAD < q1:
            fastnn_prefetch(D + rows[q + SPARSE_PREFETCH_AHEAD] * n_out, n_out * sizeof(floating))
        _axpy(n_out, values[q], D + rows[q] * n_out, dW + feats[q] * n_out)


def sparse_dense_backward(const floating[::1] data, const csr_index[::1] indices,
                          const csr_index[::1] indptr, const floating[:, ::1] O,
                          const floating[:, ::1] G, floating[:, ::1] delta,
                          floating[:, ::1] dW, floating[::1] db, int kind, double alpha):
    """delta = G * f'(O) and db = its column sums (dense_backward's fused
    pass), then dW = X^T delta for the CSR X (n x dW.shape[0]): X's values
    bucketed by feature range (_bucket_sort), the buckets spread over the
    team, each bucket's rows of dW summed by one thread in row order, so the
    bits never depend on the thread count.  No input gradient.  ``delta``
    may alias ``G``.  ValueError for malformed CSR arrays."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, n_in = dW.shape[0], n_out = dW.shape[1]
    cdef Py_ssize_t nnz = data.shape[0], t
    _check_csr(data, indices, indptr, n_in)
    if (O.shape[0] != n or O.shape[1] != n_out or G.shape[0] != n or G.shape[1] != n_out
            or delta.shape[0] != n or delta.shape[1] != n_out or db.shape[0] != n_out):
        raise ValueError(f"O, G and delta must have shape ({n}, {n_out}), db ({n_out},)")
    # buckets of 2^shift features, as many as fit SPARSE_DW_BUCKET_BYTES of
    # dW: a function of the shape alone
    cdef int shift = 0
    while ((<Py_ssize_t>2 << shift) * n_out * <Py_ssize_t>sizeof(floating)
           <= SPARSE_DW_BUCKET_BYTES and (<Py_ssize_t>1 << shift) < n_in):
        shift += 1
    cdef Py_ssize_t n_buckets = _cdiv(n_in, <Py_ssize_t>1 << shift)
    cdef double* partial = <double*> malloc(_n_chunks(n) * n_out * sizeof(double))
    cdef Py_ssize_t* bucket_ptr = <Py_ssize_t*> malloc(2 * (n_buckets + 1) * sizeof(Py_ssize_t))
    cdef csr_index* rows = <csr_index*> malloc(2 * max(nnz, 1) * sizeof(csr_index))
    cdef floating* values = <floating*> malloc(max(nnz, 1) * sizeof(floating))
    if partial == NULL or bucket_ptr == NULL or rows == NULL or values == NULL:
        _free_all(partial, bucket_ptr, rows, values)
        raise MemoryError()
    cdef csr_index* feats = rows + max(nnz, 1)
    cdef floating* Dp = &delta[0, 0]
    cdef floating* dWp = &dW[0, 0]
    with nogil:
        _delta_bias_grad(&O[0, 0], &G[0, 0], Dp, &db[0], n, n_out, kind, <floating>alpha,
                         partial)
        _bucket_sort(&data[0] if nnz > 0 else NULL, &indices[0] if nnz > 0 else NULL,
                     &indptr[0], n, shift, n_buckets, bucket_ptr, bucket_ptr + n_buckets + 1,
                     rows, feats, values)
    if _threaded((nnz + n_in) * n_out, n_buckets):
        for t in prange(n_buckets, nogil=True, schedule="dynamic", num_threads=_n_threads):
            _bucket_dw(bucket_ptr, rows, feats, values, Dp, dWp, t, shift, n_in, n_out)
    else:
        with nogil:
            for t in range(n_buckets):
                _bucket_dw(bucket_ptr, rows, feats, values, Dp, dWp, t, shift, n_in, n_out)
    _free_all(partial, bucket_ptr, rows, values)


cdef inline void _free_all(void* a, void* b, void* c, void* d) noexcept nogil:
    free(a)
    free(b)
    free(c)
    free(d)
