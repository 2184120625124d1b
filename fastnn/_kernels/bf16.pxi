# bf16 matrix products (csrc/fastnn_bf16.h): float32 operands rounded to
# bfloat16 (RNE) while packed, float32 accumulation, the float32 GEMM's
# conventions (row-major C = op(A) op(B), bias + activation or SGD epilogue
# per tile; C split over the team in whole 32-row or 32-column blocks,
# _bf16_share, each element's sum in an order fixed by k, so the same bits at
# any thread count).  Three paths: AMX-BF16,
# AVX512_BF16, emulated (rounded float32 copies on the float32 products);
# fastnn/_config.py chooses one at import (CPU flags, OS permission,
# FASTNN_BF16) and sets it here.

from libc.stdint cimport uint16_t


cdef extern from "fastnn_bf16.h" nogil:
    enum:
        FASTNN_BF16_EMULATED
        FASTNN_BF16_AVX512BF16
        FASTNN_BF16_AMXBF16
        FASTNN_BF16_BLOCK
    int fastnn_bf16_compiled()
    int fastnn_bf16_amx_request()
    Py_ssize_t fastnn_bf16_kstep(int path)
    void fastnn_bf16_round_f(const float* x, Py_ssize_t ldx, float* y, Py_ssize_t ldy,
                             Py_ssize_t rows, Py_ssize_t cols)
    void fastnn_bf16_pack_a(const float* A, Py_ssize_t si, Py_ssize_t sp, Py_ssize_t m,
                            Py_ssize_t k, Py_ssize_t kk, Py_ssize_t i0, Py_ssize_t i1,
                            uint16_t* Ap)
    void fastnn_bf16_pack_b(const float* B, Py_ssize_t sp, Py_ssize_t sj, Py_ssize_t k,
                            Py_ssize_t n, Py_ssize_t kk, Py_ssize_t g0, Py_ssize_t g1,
                            uint16_t* Bp)
    struct fastnn_bf16_scratch:
        void* a
        void* b
    int fastnn_bf16_scratch_get(fastnn_bf16_scratch* s, size_t a_bytes, size_t b_bytes)
    void fastnn_bf16_scratch_put(fastnn_bf16_scratch* s)
    void fastnn_bf16_block(int path, const uint16_t* Ap, const uint16_t* Bp, Py_ssize_t kk,
                           Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1, float* C,
                           Py_ssize_t ldc)

BF16_PATHS = ("emulated", "avx512_bf16", "amx")     # index = the C path code

cdef int _bf16_path = FASTNN_BF16_EMULATED


def bf16_compiled():
    """The bf16 paths compiled into this module (the hardware ones need
    a compiler that knows their intrinsics)."""
    cdef int bits = fastnn_bf16_compiled()
    return tuple(name for i, name in enumerate(BF16_PATHS) if bits & (1 << i))


def bf16_amx_request():
    """Ask the OS for AMX tile data (Linux arch_prctl, once per process, before
    any thread uses a tile): 0 when granted, else the errno."""
    return fastnn_bf16_amx_request()


def bf16_path(name=None):
    """The bf16 path the products run on; ``name`` sets it (only
    fastnn._config, which has checked the CPU and the OS, should).  Returns
    the previous one."""
    global _bf16_path
    previous = BF16_PATHS[_bf16_path]
    if name is not None:
        if name not in bf16_compiled():
            raise ValueError(f"bf16 path {name!r} is not compiled into this module "
                             f"(compiled: {', '.join(bf16_compiled())})")
        _bf16_path = BF16_PATHS.index(name)
    return previous


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


cdef enum:
    BF16_ROWS, BF16_COLS, BF16_SHARED     # how a team splits a product (_bf16_share)

cdef enum:
    # while C has at most this many rows or columns, each thread packs its
    # own copy of the operand it reads whole (_bf16_share):
    # reading packing another core has just written costs more than packing
    # B twice at the small batches of training (measured on a 2-core
    # Sapphire Rapids: 128x256x128 28 -> 8 us, 128x784x256 58 -> 41 us)
    BF16_PRIVATE_SIDE = 256
    BF16_TILE_ROWS = 512        # cache blocking of a thread's share of C
    BF16_TILE_COLS = 256
    # products of fewer multiply-adds run on one thread: below this, the
    # second thread's fork, join and its own copy of a packed operand cost
    # more than it saves (measured on a 2-core Sapphire Rapids, bf16
    # mlp_epoch: with float32's MIN_PARALLEL_GEMM, 1/8 of this, batch 32
    # took 423 ms, 392 ms with this; batch 128 181 -> 175 ms)
    BF16_MIN_PARALLEL = 5 << 20


cdef inline Py_ssize_t _bf16_team(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Threads for one product: the 32-row (or column) blocks of C along its
    longer side split in contiguous runs, one per thread (_bf16_share).
    Each element's sum is a function of k alone, so any split gives the same
    bits."""
    if _n_threads <= 1 or m * n * k < BF16_MIN_PARALLEL:
        return 1
    return min(<Py_ssize_t>_n_threads, _cdiv(max(m, n), FASTNN_BF16_BLOCK))


cdef void _bf16_round_rows(const float* x, Py_ssize_t ldx, float* y, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil:
    """y (rows x cols, contiguous) = x rounded to bf16, in chunks of rows
    over the team."""
    cdef Py_ssize_t n_chunks = _n_chunks(rows), ch
    if _threaded(rows * cols, n_chunks):
        for ch in prange(n_chunks, schedule="static", num_threads=_n_threads):
            fastnn_bf16_round_f(x + ch * ROWS_PER_CHUNK * ldx, ldx, y + ch * ROWS_PER_CHUNK * cols,
                                cols, _chunk_stop(ch, rows) - ch * ROWS_PER_CHUNK, cols)
    else:
        fastnn_bf16_round_f(x, ldx, y, cols, rows, cols)


cdef void _bf16_pack(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                     Py_ssize_t k, Py_ssize_t kk, const float* A, Py_ssize_t lda,
                     const float* B, Py_ssize_t ldb, uint16_t* Ap, uint16_t* Bp) noexcept nogil:
    """Ap, Bp (csrc/fastnn_bf16.h's layouts) in blocks of 32 rows of op(A)
    and 32 columns of op(B), spread over the team."""
    cdef Py_ssize_t a_blocks = _cdiv(m, FASTNN_BF16_BLOCK), b_blocks = _cdiv(n, FASTNN_BF16_BLOCK)
    cdef Py_ssize_t t
    if _threaded(m * k + k * n, a_blocks + b_blocks):
        for t in prange(a_blocks + b_blocks, schedule="dynamic", num_threads=_n_threads):
            _bf16_pack_block(t, a_blocks, trans_a, trans_b, m, n, k, kk, A, lda, B, ldb, Ap, Bp)
    else:
        for t in range(a_blocks + b_blocks):
            _bf16_pack_block(t, a_blocks, trans_a, trans_b, m, n, k, kk, A, lda, B, ldb, Ap, Bp)


cdef inline void _bf16_pack_block(Py_ssize_t t, Py_ssize_t a_blocks, bint trans_a, bint trans_b,
                                  Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t kk,
                                  const float* A, Py_ssize_t lda, const float* B,
                                  Py_ssize_t ldb, uint16_t* Ap, uint16_t* Bp) noexcept nogil:
    cdef Py_ssize_t s
    if t < a_blocks:
        s = t * FASTNN_BF16_BLOCK
        fastnn_bf16_pack_a(A, 1 if trans_a else lda, lda if trans_a else 1, m, k, kk, s,
                           s + FASTNN_BF16_BLOCK, Ap)
    else:
        s = (t - a_blocks) * (FASTNN_BF16_BLOCK // 16)
        fastnn_bf16_pack_b(B, 1 if trans_b else ldb, ldb if trans_b else 1, k, n, kk, s,
                           s + FASTNN_BF16_BLOCK // 16, Bp)


cdef void _bf16_rows(int path, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t c0, Py_ssize_t c1,
                    const uint16_t* Ap, const uint16_t* Bp, Py_ssize_t kk, float* C,
                    Py_ssize_t ldc, const float* bias, int kind, float alpha,
                    const ParamUpdate* update) noexcept nogil:
    """C[i0:i1, c0:c1] from the packed operands, in cache tiles, each
    followed by its epilogue (bias + activation, or C's parameter update)."""
    cdef Py_ssize_t r0 = i0, r1, j0, j1, i
    while r0 < i1:
        r1 = min(r0 + BF16_TILE_ROWS, i1)
        j0 = c0
        while j0 < c1:
            j1 = min(j0 + BF16_TILE_COLS, c1)
            fastnn_bf16_block(path, Ap, Bp, kk, r0, r1, j0, j1, C, ldc)
            if bias != NULL or kind != IDENTITY:
                _bias_activation(C, bias, r0, r1, j0, j1, ldc, kind, alpha)
            if update != NULL:      # C is a gradient: its parameter's SGD step
                for i in range(r0, r1):
                    _update_apply(update, C + i * ldc + j0, i * ldc + j0, j1 - j0)
            j0 = j1
        r0 = r1


cdef inline void _bf16_share(int path, Py_ssize_t t, Py_ssize_t team, int split,
                             bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, Py_ssize_t kk, const float* A, Py_ssize_t lda,
                             const float* B, Py_ssize_t ldb, uint16_t* Ap, Py_ssize_t a_size,
                             uint16_t* Bp, Py_ssize_t b_size, float* C, Py_ssize_t ldc,
                             const float* bias, int kind, float alpha,
                             const ParamUpdate* update) noexcept nogil:
    """Thread t's share of a product.  BF16_ROWS: its run of 32-row blocks
    of C, packing all of op(B) (its own copy) and then, block by block,
    those rows of op(A); BF16_COLS: its run of 32-column blocks, packing all
    of op(A) (its own copy) and those columns of op(B) block by block;
    BF16_SHARED: its rows of C from operands the team has packed.  team 1:
    the whole product."""
    cdef Py_ssize_t blocks = _cdiv(n if split == BF16_COLS else m, FASTNN_BF16_BLOCK)
    cdef Py_ssize_t s0 = t * blocks // team * FASTNN_BF16_BLOCK
    cdef Py_ssize_t s1 = (t + 1) * blocks // team * FASTNN_BF16_BLOCK
    cdef Py_ssize_t si = 1 if trans_a else lda, sp = lda if trans_a else 1
    cdef Py_ssize_t bp = 1 if trans_b else ldb, bj = ldb if trans_b else 1
    cdef Py_ssize_t b
    if split == BF16_ROWS:
        Bp = Bp + t * b_size
        fastnn_bf16_pack_b(B, bp, bj, k, n, kk, 0, _round_up(n, FASTNN_BF16_BLOCK) // 16, Bp)
        # each 32-row block of op(A) packed just before its row of C (and that
        # row's epilogue): the block is still in cache
        for b in range(s0, s1, 32):     # FASTNN_BF16_BLOCK (Cython needs a literal step)
            fastnn_bf16_pack_a(A, si, sp, m, k, kk, b, b + FASTNN_BF16_BLOCK, Ap)
            _bf16_rows(path, b, min(b + FASTNN_BF16_BLOCK, m), 0, n, Ap, Bp, kk, C, ldc, bias,
                       kind, alpha, update)
    elif split == BF16_COLS:
        Ap = Ap + t * a_size
        fastnn_bf16_pack_a(A, si, sp, m, k, kk, 0, _round_up(m, FASTNN_BF16_BLOCK), Ap)
        for b in range(s0, s1, 32):     # likewise for op(B)'s columns
            fastnn_bf16_pack_b(B, bp, bj, k, n, kk, b // 16, (b + FASTNN_BF16_BLOCK) // 16, Bp)
            _bf16_rows(path, 0, m, b, min(b + FASTNN_BF16_BLOCK, n), Ap, Bp, kk, C, ldc, bias,
                       kind, alpha, update)
    else:
        _bf16_rows(path, s0, min(s1, m), 0, n, Ap, Bp, kk, C, ldc, bias, kind, alpha, update)


cdef int _bf16_tiled(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                     const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb, float* C,
                     Py_ssize_t ldc, const float* bias, int kind, float alpha,
                     const ParamUpdate* update=NULL) noexcept nogil:
    """Row-major C (m, n) = op(bf16(A)) op(bf16(B)) [+ bias, activation] on
    the current path, k >= 1 [then ``update``, C being its gradient].
    Returns 0, or -1 when the packing buffers cannot be allocated (C
    untouched)."""
    cdef int path = _bf16_path
    cdef Py_ssize_t a_rows = k if trans_a else m, a_cols = m if trans_a else k
    cdef Py_ssize_t b_rows = n if trans_b else k, b_cols = k if trans_b else n
    cdef float* Ar
    cdef float* Br
    cdef fastnn_bf16_scratch scratch    # the packing buffers
    cdef int status
    if path == FASTNN_BF16_EMULATED:
        # the operands rounded into float32 copies of the same layout, then
        # the float32 products (tiles, epilogue, threads) on them
        status = fastnn_bf16_scratch_get(&scratch, a_rows * a_cols * sizeof(float),
                                         b_rows * b_cols * sizeof(float))
        if status == 0:
            Ar, Br = <float*> scratch.a, <float*> scratch.b
            _bf16_round_rows(A, lda, Ar, a_rows, a_cols)
            _bf16_round_rows(B, ldb, Br, b_rows, b_cols)
            _gemm_tiled(trans_a, trans_b, m, n, k, Ar, a_cols, Br, b_cols, C, ldc, bias, kind,
                        alpha, update)
        fastnn_bf16_scratch_put(&scratch)
        return status
    cdef Py_ssize_t kk = _round_up(k, fastnn_bf16_kstep(path))
    cdef Py_ssize_t m_pad = _round_up(m, FASTNN_BF16_BLOCK), n_pad = _round_up(n, FASTNN_BF16_BLOCK)
    cdef Py_ssize_t team = _bf16_team(m, n, k), t
    # bf16 elements of one copy of each packed operand (64-byte multiples)
    cdef Py_ssize_t a_size = _round_up(m_pad * kk, 32), b_size = _round_up(n_pad * kk, 32)
    # the team splits C along its longer side, each thread packing its own
    # copy of the operand all its blocks read (the smaller one); when both
    # sides exceed BF16_PRIVATE_SIDE, the operands are packed over the team
    # first (at 1024^3 or 4096x512x512 that was as fast, with less memory)
    cdef int split = (BF16_SHARED if min(m, n) > BF16_PRIVATE_SIDE
                      else BF16_COLS if n > m and _cdiv(n, FASTNN_BF16_BLOCK) >= team
                      else BF16_ROWS)
    status = fastnn_bf16_scratch_get(
        &scratch, (team if team > 1 and split == BF16_COLS else 1) * a_size * 2,
        (team if team > 1 and split == BF16_ROWS else 1) * b_size * 2)
    cdef uint16_t* Ap = <uint16_t*> scratch.a
    cdef uint16_t* Bp = <uint16_t*> scratch.b
    if status == 0:
        if split == BF16_SHARED:
            _bf16_pack(trans_a, trans_b, m, n, k, kk, A, lda, B, ldb, Ap, Bp)
        if team == 1:
            _bf16_share(path, 0, 1, split, trans_a, trans_b, m, n, k, kk, A, lda, B, ldb, Ap,
                        a_size, Bp, b_size, C, ldc, bias, kind, alpha, update)
        else:
            for t in prange(team, schedule="static", num_threads=team):
                _bf16_share(path, t, team, split, trans_a, trans_b, m, n, k, kk, A, lda, B, ldb,
                            Ap, a_size, Bp, b_size, C, ldc, bias, kind, alpha, update)
    fastnn_bf16_scratch_put(&scratch)
    return status


cdef _bf16_check(int status):
    if status != 0:
        raise MemoryError("cannot allocate the bf16 product's packing buffers")


def bf16_product(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] out,
                 bint trans_a, bint trans_b):
    """out = op(bf16(A)) op(bf16(B)) in float32, op a transpose where asked
    (fastnn.functional.matmul_bf16's kernel)."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
    cdef int status
    if (A.shape[1] if trans_a else A.shape[0]) != m or \
            (B.shape[1] if trans_b else B.shape[0]) != k or \
            (B.shape[0] if trans_b else B.shape[1]) != n:
        raise ValueError(f"A {A.shape[0], A.shape[1]}, B {B.shape[0], B.shape[1]} and out "
                         f"{m, n} do not chain (trans_a={trans_a}, trans_b={trans_b})")
    if m == 0 or n == 0:
        return
    if k == 0:
        out[:, :] = 0
        return
    with nogil:
        status = _bf16_tiled(trans_a, trans_b, m, n, k, &A[0, 0], A.shape[1], &B[0, 0],
                             B.shape[1], &out[0, 0], n, NULL, IDENTITY, 0)
    _bf16_check(status)


def bf16_dense_forward(const float[:, ::1] A, const float[:, ::1] W, const float[::1] b,
                       float[:, ::1] out, int kind, double alpha):
    """dense_forward with bf16 operands: out = f(bf16(A) bf16(W) + b)."""
    cdef Py_ssize_t n = A.shape[0], n_in = A.shape[1], n_out = W.shape[1]
    cdef const float* bp = &b[0] if b is not None else NULL
    cdef int status
    with nogil:
        status = _bf16_tiled(False, False, n, n_out, n_in, &A[0, 0], n_in, &W[0, 0], n_out,
                             &out[0, 0], n_out, bp, kind, <float>alpha)
    _bf16_check(status)


cdef int _bf16_backward_rows(const float* A, const float* W, const float* O, const float* G,
                             float* D, float* dA, float* dW, float* db, Py_ssize_t n,
                             Py_ssize_t n_in, Py_ssize_t n_out, int kind, float alpha,
                             double* partial, const ParamUpdate* update_w=NULL,
                             const ParamUpdate* update_b=NULL) noexcept nogil:
    """_dense_backward_rows with bf16 products: D = G * f'(O) and db in
    float32 as there, then dA = bf16(D) bf16(W)^T (dA may be NULL) before
    dW = bf16(A)^T bf16(D) and its update (which changes W).  0, or -1 when
    out of memory."""
    cdef int status = 0
    _delta_bias_grad(O, G, D, db, n, n_out, kind, alpha, partial)
    if update_b != NULL:
        _update_apply(update_b, db, 0, n_out)
    if dA != NULL:
        status = _bf16_tiled(False, True, n, n_in, n_out, D, n_out, W, n_out, dA, n_in, NULL,
                             IDENTITY, 0)
    if status == 0:
        status = _bf16_tiled(True, False, n_in, n_out, n, A, n_in, D, n_out, dW, n_out, NULL,
                             IDENTITY, 0, update_w)
    return status


def bf16_dense_backward(const float[:, ::1] A, const float[:, ::1] W, const float[:, ::1] O,
                        const float[:, ::1] G, float[:, ::1] delta, float[:, ::1] dA,
                        float[:, ::1] dW, float[::1] db, int kind, double alpha):
    """dense_backward with bf16 products (_bf16_backward_rows)."""
    cdef Py_ssize_t n = A.shape[0], n_in = A.shape[1], n_out = W.shape[1]
    cdef double* partial = <double*> malloc(_n_chunks(n) * n_out * sizeof(double))
    cdef int status
    cdef float* dAp = &dA[0, 0] if dA is not None else NULL
    if partial == NULL:
        raise MemoryError()
    with nogil:
        status = _bf16_backward_rows(&A[0, 0], &W[0, 0], &O[0, 0], &G[0, 0], &delta[0, 0], dAp,
                                     &dW[0, 0], &db[0], n, n_in, n_out, kind, <float>alpha,
                                     partial)
    free(partial)
    _bf16_check(status)


def bf16_round(const float[:, ::1] x, float[:, ::1] out):
    """out = float32(bf16(x)), the emulated path's rounding (for tests)."""
    if x.shape[0] != out.shape[0] or x.shape[1] != out.shape[1]:
        raise ValueError("x and out must have the same shape")
    if x.shape[0] and x.shape[1]:
        with nogil:
            _bf16_round_rows(&x[0, 0], x.shape[1], &out[0, 0], x.shape[0], x.shape[1])
