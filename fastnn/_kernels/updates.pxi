# Optimiser updates: one fused pass over each parameter array.

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
    void fastnn_norms_f(const float* x, Py_ssize_t n, double* sq, double* ab)
    void fastnn_norms_d(const double* x, Py_ssize_t n, double* sq, double* ab)


cdef enum:
    # Parameters per block of an optimiser update (the unit spread over the team).
    UPDATE_BLOCK = 16384


cdef struct UpdateBlock:
    # up to UPDATE_BLOCK consecutive elements of one parameter (u, whose
    # size is the block's) and its gradient
    ParamUpdate u
    const void* g


cdef inline void _update_apply(const ParamUpdate* u, const floating* g, Py_ssize_t at,
                               Py_ssize_t n) noexcept nogil:
    """u's update (SGD, or Adam where u.s2 is set) of elements [at, at + n)
    of its parameter, given their gradient ``g`` (the gradient's element
    ``at`` onwards)."""
    if floating is float:
        if u.s2 != NULL:
            fastnn_adam_f(<float*>u.p + at, g, <float*>u.s1 + at, <float*>u.s2 + at, n,
                          <float>u.lr, <float>u.momentum, <float>u.beta2, <float>u.c1,
                          <float>u.c2, <float>u.eps, <float>u.l2, <float>u.l1, <float>u.keep)
        else:
            fastnn_sgd_f(<float*>u.p + at, g, <float*>u.s1 + at if u.s1 != NULL else NULL, n,
                         <float>u.lr, <float>u.momentum, u.nesterov, <float>u.l2, <float>u.l1)
    else:
        if u.s2 != NULL:
            fastnn_adam_d(<double*>u.p + at, g, <double*>u.s1 + at, <double*>u.s2 + at, n,
                          u.lr, u.momentum, u.beta2, u.c1, u.c2, u.eps, u.l2, u.l1, u.keep)
        else:
            fastnn_sgd_d(<double*>u.p + at, g, <double*>u.s1 + at if u.s1 != NULL else NULL,
                         n, u.lr, u.momentum, u.nesterov, u.l2, u.l1)


cdef void _sgd_rule(ParamUpdate* u, double lr, double momentum, bint nesterov, double l2,
                    double l1) noexcept nogil:
    """u's hyperparameters for SGD (u.regularize set: whether l2, l1 apply)."""
    u.s2 = NULL
    u.lr, u.momentum, u.nesterov = lr, momentum, nesterov
    u.l2 = l2 if u.regularize else 0
    u.l1 = l1 if u.regularize else 0


cdef void _adam_rule(ParamUpdate* u, double lr_t, double beta1, double beta2, double eps,
                     double l2, double l1, double decay) noexcept nogil:
    """u's hyperparameters for Adam's step of size lr_t, ``decay`` = lr *
    weight_decay decoupled (AdamW, applied before the gradient step), l2,
    l1 and decay where u.regularize."""
    u.lr, u.momentum, u.beta2, u.eps = lr_t, beta1, beta2, eps
    # 1 - beta in double, then rounded: 1 - <float>0.999 is off by 1.3e-5 relative
    u.c1, u.c2 = 1 - beta1, 1 - beta2
    u.keep = 1 - decay if u.regularize else 1
    u.l2 = l2 if u.regularize else 0
    u.l1 = l1 if u.regularize else 0
    u.nesterov = False


cdef inline double _adam_lr(double lr, double beta1, double beta2, Py_ssize_t step) noexcept nogil:
    """Adam's bias-corrected step size at step ``step`` (1 for the first), as
    fastnn.functional._adam_update computes it in Python (pow, as float ** int)."""
    return lr * sqrt(1 - pow(beta2, <double>step)) / (1 - pow(beta1, <double>step))


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
                blocks[count].u.p = &p[lo]
                blocks[count].g = &g[lo]
                blocks[count].u.s1 = &s1[lo] if s1 is not None else NULL
                blocks[count].u.s2 = &s2[lo] if s2 is not None else NULL
                blocks[count].u.size = min(UPDATE_BLOCK, n - lo)
                blocks[count].u.regularize = regularize[i]
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
        total[0] += blocks[blk].u.size
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
    for blk in range(n_blocks):
        _sgd_rule(&blocks[blk].u, lr, momentum, nesterov, l2, l1)
    _apply_blocks(blocks, n_blocks, total, single)
    free(blocks)


def adam_step(list views, list regularize, double lr_t, double beta1, double beta2,
              double eps, double l2, double l1, double decay):
    """One Adam update, in place, of each parameter (p, g, m, v) in ``views``,
    as sgd_step.  ``lr_t`` is the bias-corrected step size; ``decay`` = lr *
    weight_decay (decoupled, AdamW), applied before the gradient step; l2,
    l1 and decay apply where regularize[i]."""
    cdef Py_ssize_t n_blocks, blk, total
    cdef bint single = views[0][0].dtype.itemsize == 4
    cdef UpdateBlock* blocks = _all_blocks(views, regularize, single, &n_blocks, &total)
    for blk in range(n_blocks):
        _adam_rule(&blocks[blk].u, lr_t, beta1, beta2, eps, l2, l1, decay)
    _apply_blocks(blocks, n_blocks, total, single)
    free(blocks)


cdef void _apply_blocks(const UpdateBlock* blocks, Py_ssize_t n_blocks, Py_ssize_t total,
                        bint single) noexcept nogil:
    """Every block's update, the blocks spread over the team."""
    cdef Py_ssize_t blk
    if _threaded(total, n_blocks):
        for blk in prange(n_blocks, schedule="static", num_threads=_n_threads):
            _apply_block(&blocks[blk], single)
    else:
        for blk in range(n_blocks):
            _apply_block(&blocks[blk], single)


cdef inline void _apply_block(const UpdateBlock* b, bint single) noexcept nogil:
    if single:
        _update_apply(&b.u, <const float*>b.g, 0, b.u.size)
    else:
        _update_apply(&b.u, <const double*>b.g, 0, b.u.size)


# scikit-learn's MLP penalty, alpha/2 ||W||^2 + l1 ||W||_1, of the weights
# before each step: one kernel for the compiled epoch and the Python loop,
# so both give the same bits.

cdef struct NormChunk:
    # up to UPDATE_BLOCK consecutive elements of one parameter, and their
    # sum of squares and of absolute values
    const void* x
    Py_ssize_t n
    double sq, ab


cdef NormChunk* _norm_chunks(const void** data, const Py_ssize_t* sizes, Py_ssize_t count,
                             bint single, Py_ssize_t* n_chunks) noexcept nogil:
    """The chunks of ``count`` parameters (data[i], sizes[i] elements of
    float32 when ``single``, else float64); NULL when out of memory.  The
    caller frees the array."""
    cdef Py_ssize_t i, lo, c = 0
    cdef Py_ssize_t itemsize = sizeof(float) if single else sizeof(double)
    for i in range(count):
        c += _cdiv(sizes[i], UPDATE_BLOCK)
    cdef NormChunk* chunks = <NormChunk*> malloc((c + 1) * sizeof(NormChunk))
    if chunks == NULL:
        return NULL
    c = 0
    for i in range(count):
        lo = 0
        while lo < sizes[i]:
            chunks[c].x = <const char*>data[i] + lo * itemsize
            chunks[c].n = min(<Py_ssize_t>UPDATE_BLOCK, sizes[i] - lo)
            c += 1
            lo += UPDATE_BLOCK
    n_chunks[0] = c
    return chunks


cdef double _penalty_of(NormChunk* chunks, Py_ssize_t n_chunks, Py_ssize_t total, bint single,
                        double alpha, double l1) noexcept nogil:
    """alpha/2 sum x^2 + l1 sum |x| over the chunks (``total`` elements),
    each chunk summed by fastnn_norms over the team and the chunks' sums
    added in order: the same bits for any thread count."""
    cdef Py_ssize_t c
    cdef double sq = 0, ab = 0, result = 0
    if alpha == 0 and l1 == 0:
        return 0
    if _threaded(total, n_chunks):
        for c in prange(n_chunks, schedule="static", num_threads=_n_threads):
            _norm_chunk(&chunks[c], single)
    else:
        for c in range(n_chunks):
            _norm_chunk(&chunks[c], single)
    for c in range(n_chunks):
        sq = sq + chunks[c].sq
        ab = ab + chunks[c].ab
    if alpha != 0:
        result = result + 0.5 * alpha * sq
    if l1 != 0:
        result = result + l1 * ab
    return result


cdef inline void _norm_chunk(NormChunk* c, bint single) noexcept nogil:
    if single:
        fastnn_norms_f(<const float*>c.x, c.n, &c.sq, &c.ab)
    else:
        fastnn_norms_d(<const double*>c.x, c.n, &c.sq, &c.ab)


def penalty(list weights, double alpha, double l1):
    """alpha/2 sum ||W||^2 + l1 sum ||W||_1 of ``weights`` (C-contiguous
    arrays of one float dtype), in double (_penalty_of: the compiled
    epoch's sums)."""
    cdef Py_ssize_t count = len(weights), i, n_chunks, total = 0
    if count == 0:
        return 0.0
    cdef bint single = (isinstance(weights[0], cnp.ndarray) and
                        cnp.PyArray_TYPE(<cnp.ndarray> weights[0]) == cnp.NPY_FLOAT32)
    cdef const void** data = <const void**> malloc(count * sizeof(void*))
    cdef Py_ssize_t* sizes = <Py_ssize_t*> malloc(count * sizeof(Py_ssize_t))
    cdef NormChunk* chunks = NULL
    cdef double result
    try:
        if data == NULL or sizes == NULL:
            raise MemoryError()
        for i in range(count):
            w = weights[i]
            if not (isinstance(w, cnp.ndarray) and _plain(
                    w, cnp.NPY_FLOAT32 if single else cnp.NPY_FLOAT64,
                    cnp.PyArray_NDIM(<cnp.ndarray> w))):
                raise ValueError(f"weights[{i}] must be a non-empty C-contiguous array of "
                                 f"{'float32' if single else 'float64'}")
            data[i] = cnp.PyArray_DATA(<cnp.ndarray> w)
            sizes[i] = cnp.PyArray_SIZE(<cnp.ndarray> w)
            total += sizes[i]
        chunks = _norm_chunks(data, sizes, count, single, &n_chunks)
        if chunks == NULL:
            raise MemoryError()
        with nogil:
            result = _penalty_of(chunks, n_chunks, total, single, alpha, l1)
    finally:
        free(chunks)
        free(data)
        free(sizes)
    return result
