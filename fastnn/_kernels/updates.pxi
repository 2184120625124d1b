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
