# Matrix products: a shape-only grid of output tiles spread over the team,
# each tile one single-threaded call to fastnn's own GEMMs or BLAS, with the
# bias + activation epilogue fused per tile.

cdef enum:
    # Multiply-adds (about 8 us of single-core GEMM) below which a product
    # is not split across the team, for MIN_PARALLEL_WORK's reason (measured:
    # at batch 32 the 256 x 128 products of the mlp_epoch network gain from
    # two threads).
    MIN_PARALLEL_GEMM = 1 << 19
    # Larger products are cut into a fixed grid of output tiles of at most
    # this many rows and columns, each one single-threaded BLAS call, spread
    # over the team; tiles are halved further (down to GEMM_MIN_TILE_SIDE)
    # until there are GEMM_MIN_TILES, so that the small products of a
    # training step (128 x 256 outputs) still keep two cores busy.  Sizes
    # chosen by measurement on the mlp_epoch products at two threads (fewer,
    # larger BLAS calls beat finer balance: 512 x 256 and 2 tiles took the
    # epoch's GEMMs from 2.2-2.4 s to 1.8-1.9 s over batch 32, 128 and 512).
    # The grid depends on the shape only, never on the thread count, so
    # every element is computed by the same call whatever the number of
    # threads (OpenBLAS's own threading is not bit-reproducible across
    # thread counts, and its rounding of an element depends on where it
    # falls in the call's tiling).
    GEMM_TILE_ROWS = 512
    GEMM_TILE_COLS = 256
    GEMM_MIN_TILES = 2
    GEMM_MIN_TILE_SIDE = 32
    # fastnn's AVX-512 GEMM takes the float32 products (tiles) with at least
    # this many rows and columns: it packs B, which smaller ones do not
    # repay (measured against single-threaded OpenBLAS on its AVX2 kernels,
    # when it packed A too: 1.2-1.8x faster above, 0.4-0.9x below on 1-16
    # rows).  Any number of terms: with 4-24 (a classifier layer's delta
    # times W^T, or a small batch's dW) it measured 1.2-2.1x faster too, with
    # 1 the same.
    OWN_GEMM_MIN_SIDE = 32


cdef extern from "fastnn_gemm.h" nogil:
    int FASTNN_HAVE_GEMM_F
    int fastnn_gemm_l1_ways, fastnn_gemm_l1_way_bytes
    void fastnn_gemm_init()
    int fastnn_gemm_rows(Py_ssize_t lda_bytes)
    int fastnn_gemm_f(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb, float* C,
                      Py_ssize_t ldc)


cdef extern from "fastnn_narrow.h" nogil:
    int FASTNN_NARROW_F
    int fastnn_narrow_f(int trans_a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* A,
                        Py_ssize_t lda, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc)


cdef inline TileGrid _tile_grid(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The output tiling of an (m, n) = (m, k)(k, n) product: a single tile
    below MIN_PARALLEL_GEMM, else near-equal tiles of at most GEMM_TILE_ROWS
    x GEMM_TILE_COLS, the longer side halved while there are fewer than
    GEMM_MIN_TILES.  A function of the shape alone (see GEMM_TILE_ROWS)."""
    cdef TileGrid g
    g.m, g.n = m, n
    g.row_tiles = g.col_tiles = 1
    if _blas_thread_control() and m * n * k >= MIN_PARALLEL_GEMM:
        g.row_tiles = _cdiv(m, GEMM_TILE_ROWS)
        g.col_tiles = _cdiv(n, GEMM_TILE_COLS)
        while g.row_tiles * g.col_tiles < GEMM_MIN_TILES:
            if n // g.col_tiles >= max(m // g.row_tiles, 2 * GEMM_MIN_TILE_SIDE):
                g.col_tiles *= 2
            elif m // g.row_tiles >= 2 * GEMM_MIN_TILE_SIDE:
                g.row_tiles *= 2
            else:
                break
    g.tile_rows = _cdiv(m, g.row_tiles)
    g.tile_cols = _cdiv(n, g.col_tiles)
    return g


cdef void _bias_activation(floating* O, const floating* b, Py_ssize_t i0, Py_ssize_t i1,
                           Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t ldo, int kind,
                           floating alpha) noexcept nogil:
    """O[i0:i1, j0:j1] = f(O + b) for one output tile."""
    cdef Py_ssize_t i, j
    cdef floating* o
    for i in range(i0, i1):
        o = O + i * ldo
        if b != NULL:
            for j in range(j0, j1):
                o[j] = o[j] + b[j]
        if kind != IDENTITY:
            _activation_forward_range(o, o, j0, j1, kind, alpha)


# fastnn's AVX-512 GEMM (x86-64-v4 variant only) for the float32 products it
# takes; off: BLAS (for comparisons and tests).
cdef bint _own_gemm = FASTNN_HAVE_GEMM_F
fastnn_gemm_init()


def gemm_kernel(l1=None):
    """How fastnn's GEMM picks its micro-kernel on this CPU: (ways, bytes
    per way) of the L1 data cache from CPUID (0, 0 if unknown), and the rows
    of C per block for an A read in place with rows 4 KiB apart (12, or 8
    where 12 such rows would overflow one L1 set).  ``l1`` = (ways, bytes
    per way) sets the geometry instead (for tests); returns the previous
    triple."""
    global fastnn_gemm_l1_ways, fastnn_gemm_l1_way_bytes
    previous = fastnn_gemm_l1_ways, fastnn_gemm_l1_way_bytes, fastnn_gemm_rows(4096)
    if l1 is not None:
        fastnn_gemm_l1_ways, fastnn_gemm_l1_way_bytes = (int(x) for x in l1)
    return previous


def own_gemm(on=None):
    """Whether float32 products run on fastnn's AVX-512 GEMM (compiled into
    the x86-64-v4 variant only) rather than BLAS; ``on`` sets it.  Returns the
    previous setting."""
    global _own_gemm
    previous = bool(_own_gemm)
    if on is not None:
        if on and not FASTNN_HAVE_GEMM_F:
            raise ValueError("fastnn's GEMM is not compiled into the "
                             f"{fastnn_simd_variant().decode()} variant")
        _own_gemm = bool(on)     # either is right for a product already running
    return previous


cdef inline int _own_product(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, const floating* A, Py_ssize_t lda,
                             const floating* B, Py_ssize_t ldb, floating* C,
                             Py_ssize_t ldc) noexcept nogil:
    """C = op(A) op(B) on fastnn's own float32 GEMMs where they were measured
    to beat BLAS: fastnn_narrow_f for at most FASTNN_NARROW_F columns (dW-type
    products, op(A) = A^T, from 1 column, forward products from 9), else
    fastnn_gemm_f on AVX-512 from OWN_GEMM_MIN_SIDE rows and columns.  Returns 0
    when done, else -1 and BLAS computes it."""
    if floating is float:
        if not trans_b and n <= FASTNN_NARROW_F and (trans_a or 2 * n > FASTNN_NARROW_F):
            return fastnn_narrow_f(trans_a, m, n, k, A, lda, B, ldb, C, ldc)
        if _own_gemm and min(m, n) >= OWN_GEMM_MIN_SIDE:
            return fastnn_gemm_f(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc)
    return -1


cdef void _gemm_tile(const TileGrid* g, Py_ssize_t t, bint trans_a, bint trans_b,
                     Py_ssize_t k, const floating* A, Py_ssize_t lda, const floating* B,
                     Py_ssize_t ldb, floating* C, Py_ssize_t ldc, const floating* bias,
                     int kind, floating alpha, const ParamUpdate* update) noexcept nogil:
    """Tile ``t`` of the row-major C = op(A) op(B) on one of fastnn's GEMMs
    (_own_product) or single-threaded BLAS, then, while the tile is in
    cache, the bias + activation epilogue (when ``bias`` or ``kind`` asks
    for it) or, C being a gradient, the SGD ``update`` of its parameter.
    BLAS gets it as the column-major C^T = op(B)^T op(A)^T."""
    cdef Py_ssize_t i0 = (t // g.col_tiles) * g.tile_rows, j0 = (t % g.col_tiles) * g.tile_cols
    cdef Py_ssize_t i1 = min(i0 + g.tile_rows, g.m), j1 = min(j0 + g.tile_cols, g.n)
    cdef const floating* a = A + (i0 if trans_a else i0 * lda)
    cdef const floating* b = B + (j0 * ldb if trans_b else j0)
    cdef Py_ssize_t i
    cdef int previous
    if i1 <= i0 or j1 <= j0:
        return
    if _own_product(trans_a, trans_b, i1 - i0, j1 - j0, k, a, lda, b, ldb,
                       C + i0 * ldc + j0, ldc) != 0:
        previous = _blas_single_begin()
        _gemm(c'T' if trans_b else c'N', c'T' if trans_a else c'N', <int>(j1 - j0),
              <int>(i1 - i0), <int>k, 1, b, <int>ldb, a, <int>lda, 0, C + i0 * ldc + j0,
              <int>ldc)
        _blas_single_end(previous)
    if bias != NULL or kind != IDENTITY:
        _bias_activation(C, bias, i0, i1, j0, j1, ldc, kind, alpha)
    if update != NULL:
        for i in range(i0, i1):
            _update_apply(update, C + i * ldc + j0, i * ldc + j0, j1 - j0)


cdef void _gemm_tiled(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                      floating* C, Py_ssize_t ldc, const floating* bias, int kind,
                      floating alpha, const ParamUpdate* update=NULL) noexcept nogil:
    """Row-major C (m, n) = op(A) op(B) [+ bias, activation] [then the
    ``update`` of the parameter C is the gradient of], its tiles spread over
    the team (dynamically: any thread may take any tile, the result is the
    same), each on single-threaded BLAS."""
    cdef TileGrid g = _tile_grid(m, n, k)
    cdef Py_ssize_t n_tiles = g.row_tiles * g.col_tiles, t
    _blas_product_begin()
    if _n_threads > 1 and n_tiles > 1:    # the grid already has one tile below the threshold
        for t in prange(n_tiles, schedule="dynamic", num_threads=_n_threads):
            _gemm_tile(&g, t, trans_a, trans_b, k, A, lda, B, ldb, C, ldc, bias, kind, alpha,
                       update)
    else:
        for t in range(n_tiles):
            _gemm_tile(&g, t, trans_a, trans_b, k, A, lda, B, ldb, C, ldc, bias, kind, alpha,
                       update)
    _blas_product_end()


def product(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] out,
            bint trans_a, bint trans_b):
    """out = op(A) op(B), op a transpose where asked: the products of the
    dense kernels on their own (tiles, threads, fastnn's GEMMs or BLAS), for
    tests and measurements."""
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = A.shape[0] if trans_a else A.shape[1]
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
        _gemm_tiled(trans_a, trans_b, m, n, k, &A[0, 0], A.shape[1], &B[0, 0], B.shape[1],
                    &out[0, 0], n, NULL, IDENTITY, 0)
