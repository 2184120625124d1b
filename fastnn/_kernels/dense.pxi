# The dense layer: forward and backward on the tiled GEMM, everything
# around it fused (bias, activation, delta, column sums).

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


cdef void _delta_bias_grad(const floating* O, const floating* G, floating* D, floating* db,
                           Py_ssize_t n, Py_ssize_t n_out, int kind, floating alpha,
                           double* partial) noexcept nogil:
    """D = G * f'(O) (D may be G) and db = the column sums of D, per fixed
    row chunk into ``partial`` (n_chunks x n_out doubles) combined in chunk
    order: the first half of every dense backward pass, sparse included."""
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


cdef void _dense_backward_rows(const floating* A, const floating* W, const floating* O,
                               const floating* G, floating* D, floating* dA, floating* dW,
                               floating* db, Py_ssize_t n, Py_ssize_t n_in, Py_ssize_t n_out,
                               int kind, floating alpha, double* partial,
                               const ParamUpdate* update_w=NULL,
                               const ParamUpdate* update_b=NULL) noexcept nogil:
    """The body of dense_backward (dA may be NULL); ``partial`` holds
    n_chunks x n_out doubles.  With ``update_w`` (and ``update_b`` where
    there is a bias) SGD updates W (b) as soon as dW (db) is known: dA,
    which reads W, comes first."""
    _delta_bias_grad(O, G, D, db, n, n_out, kind, alpha, partial)
    if update_b != NULL:
        _update_apply(update_b, db, 0, n_out)
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
