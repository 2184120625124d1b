/* fastnn's own single-threaded GEMM for AVX2+FMA (x86-64-v3 and up).
 *
 * Row-major C (m x n) = op(A) (m x k) op(B) (k x n), op = identity or
 * transpose, overwriting C.  The classic blocked scheme (Goto / BLIS):
 *
 *   for each KC-deep slice of k:        pack op(B) into NR-wide slivers
 *     for each MC-row block of op(A):   pack it into MR-tall slivers
 *       for each sliver pair:           MR x NR micro-kernel, accumulators
 *                                       in registers, C written once per slice
 *
 * The packed B sliver (KC x NR) stays in L1 while the A slivers stream from
 * L2.  Packing also absorbs the transposes, so one micro-kernel serves the
 * three products of a dense layer (A W, A^T dZ, dZ W^T).  Edge tiles are
 * zero-padded in the packs and stored through a small buffer.  Inputs need
 * no particular alignment (NumPy's large arrays are often 16-byte aligned).
 *
 * The result is a function of the shape alone (fixed blocking, fixed
 * summation order over k), like the tiles of _kernels.pyx's grid.
 * Where the micro-kernel cannot be built (no AVX2+FMA in the compile
 * flags), FASTNN_HAVE_OWN_GEMM is 0 and the kernels use BLAS.
 */
#ifndef FASTNN_GEMM_H
#define FASTNN_GEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#define FASTNN_HAVE_OWN_GEMM 1
#include <immintrin.h>

#define FASTNN_MR 6
#ifndef FASTNN_KC
#define FASTNN_KC 256
#endif
#ifndef FASTNN_MC
#define FASTNN_MC 144   /* multiple of MR: a 144 x 256 float block is 144 KiB (L2) */
#endif
#ifndef FASTNN_NC
#define FASTNN_NC 512   /* 256 x 512 float B panel: 512 KiB */
#endif

/* Per-thread packing buffers, allocated on first use and kept for the
 * thread's lifetime (the OpenMP team is long-lived): no allocation per call. */
static __thread void *fastnn_pack_a = NULL, *fastnn_pack_b = NULL;

static int fastnn_pack_buffers(void)
{
    /* sized for float64, the larger element */
    if (fastnn_pack_a == NULL)
        fastnn_pack_a = aligned_alloc(64, (size_t)FASTNN_MC * FASTNN_KC * sizeof(double));
    if (fastnn_pack_b == NULL)
        fastnn_pack_b = aligned_alloc(64, (size_t)FASTNN_KC * (FASTNN_NC + 16) * sizeof(double));
    return fastnn_pack_a != NULL && fastnn_pack_b != NULL;
}

/* One definition per element type.  V: the 256-bit vector type, W: its
 * lanes, NR = 2 W. */
#define FASTNN_DEFINE_GEMM(SUF, T, V, W, LOADU, STOREU, BCAST, FMA, ADD, ZERO)          \
                                                                                       \
static void fastnn_pack_a_##SUF(const T *A, ptrdiff_t lda, int trans, ptrdiff_t i0,    \
                                ptrdiff_t mc, ptrdiff_t p0, ptrdiff_t kc, T *dst)      \
{                                                                                      \
    for (ptrdiff_t s = 0; s < mc; s += FASTNN_MR, dst += FASTNN_MR * kc) {             \
        ptrdiff_t rows = mc - s < FASTNN_MR ? mc - s : FASTNN_MR;                      \
        for (ptrdiff_t r = 0; r < FASTNN_MR; r++) {                                    \
            T *d = dst + r;                                                            \
            if (r >= rows) {                                                           \
                for (ptrdiff_t p = 0; p < kc; p++)                                     \
                    d[p * FASTNN_MR] = 0;                                              \
            } else if (trans) {                                                        \
                const T *a = A + p0 * lda + (i0 + s + r);                              \
                for (ptrdiff_t p = 0; p < kc; p++)                                     \
                    d[p * FASTNN_MR] = a[p * lda];                                     \
            } else {                                                                   \
                const T *a = A + (i0 + s + r) * lda + p0;                              \
                for (ptrdiff_t p = 0; p < kc; p++)                                     \
                    d[p * FASTNN_MR] = a[p];                                           \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
                                                                                       \
static void fastnn_pack_b_##SUF(const T *B, ptrdiff_t ldb, int trans, ptrdiff_t p0,    \
                                ptrdiff_t kc, ptrdiff_t j0, ptrdiff_t nc, T *dst)      \
{                                                                                      \
    const ptrdiff_t NR = 2 * W;                                                        \
    for (ptrdiff_t s = 0; s < nc; s += NR, dst += NR * kc) {                           \
        ptrdiff_t cols = nc - s < NR ? nc - s : NR;                                    \
        if (trans) {  /* column j of op(B) is a contiguous row of B */                 \
            for (ptrdiff_t j = 0; j < NR; j++) {                                       \
                const T *b = B + (j0 + s + j) * ldb + p0;                              \
                for (ptrdiff_t p = 0; p < kc; p++)                                     \
                    dst[p * NR + j] = j < cols ? b[p] : 0;                             \
            }                                                                          \
            continue;                                                                  \
        }                                                                              \
        for (ptrdiff_t p = 0; p < kc; p++) {                                           \
            T *d = dst + p * NR;                                                       \
            const T *b = B + (p0 + p) * ldb + (j0 + s);                                \
            ptrdiff_t j = 0;                                                           \
            for (; j < cols; j++)                                                      \
                d[j] = b[j];                                                           \
            for (; j < NR; j++)                                                        \
                d[j] = 0;                                                              \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* C[0:rows, 0:cols] (= or +=) the MR x NR product of two packed slivers. */           \
static inline void fastnn_micro_##SUF(ptrdiff_t kc, const T *a, const T *b, T *C,      \
                                      ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t cols,   \
                                      int accumulate)                                  \
{                                                                                      \
    V c00 = ZERO(), c01 = ZERO(), c10 = ZERO(), c11 = ZERO(), c20 = ZERO(),            \
      c21 = ZERO(), c30 = ZERO(), c31 = ZERO(), c40 = ZERO(), c41 = ZERO(),            \
      c50 = ZERO(), c51 = ZERO();                                                      \
    for (ptrdiff_t p = 0; p < kc; p++, a += FASTNN_MR, b += 2 * W) {                   \
        V b0 = LOADU(b), b1 = LOADU(b + W), x;                                         \
        x = BCAST(a + 0); c00 = FMA(x, b0, c00); c01 = FMA(x, b1, c01);                \
        x = BCAST(a + 1); c10 = FMA(x, b0, c10); c11 = FMA(x, b1, c11);                \
        x = BCAST(a + 2); c20 = FMA(x, b0, c20); c21 = FMA(x, b1, c21);                \
        x = BCAST(a + 3); c30 = FMA(x, b0, c30); c31 = FMA(x, b1, c31);                \
        x = BCAST(a + 4); c40 = FMA(x, b0, c40); c41 = FMA(x, b1, c41);                \
        x = BCAST(a + 5); c50 = FMA(x, b0, c50); c51 = FMA(x, b1, c51);                \
    }                                                                                  \
    V acc[FASTNN_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},                         \
                           {c30, c31}, {c40, c41}, {c50, c51}};                        \
    if (rows == FASTNN_MR && cols == 2 * W) {                                          \
        for (int r = 0; r < FASTNN_MR; r++) {                                          \
            T *c = C + r * ldc;                                                        \
            if (accumulate) {                                                          \
                acc[r][0] = ADD(acc[r][0], LOADU(c));                                  \
                acc[r][1] = ADD(acc[r][1], LOADU(c + W));                              \
            }                                                                          \
            STOREU(c, acc[r][0]);                                                      \
            STOREU(c + W, acc[r][1]);                                                  \
        }                                                                              \
        return;                                                                        \
    }                                                                                  \
    T tile[FASTNN_MR][2 * W];                                                          \
    for (int r = 0; r < FASTNN_MR; r++) {                                              \
        STOREU(tile[r], acc[r][0]);                                                    \
        STOREU(tile[r] + W, acc[r][1]);                                                \
    }                                                                                  \
    for (ptrdiff_t r = 0; r < rows; r++)                                               \
        for (ptrdiff_t j = 0; j < cols; j++)                                           \
            C[r * ldc + j] = accumulate ? C[r * ldc + j] + tile[r][j] : tile[r][j];    \
}                                                                                      \
                                                                                       \
/* Returns 0 when the packing buffers cannot be allocated (C untouched). */            \
static int fastnn_gemm_##SUF(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n,       \
                             ptrdiff_t k, const T *A, ptrdiff_t lda, const T *B,       \
                             ptrdiff_t ldb, T *C, ptrdiff_t ldc)                       \
{                                                                                      \
    const ptrdiff_t NR = 2 * W;                                                        \
    if (!fastnn_pack_buffers())                                                        \
        return 0;                                                                      \
    T *pa = (T *)fastnn_pack_a, *pb = (T *)fastnn_pack_b;                              \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FASTNN_NC) {                                  \
        ptrdiff_t nc = n - j0 < FASTNN_NC ? n - j0 : FASTNN_NC;                        \
        for (ptrdiff_t p0 = 0; p0 < k; p0 += FASTNN_KC) {                              \
            ptrdiff_t kc = k - p0 < FASTNN_KC ? k - p0 : FASTNN_KC;                    \
            fastnn_pack_b_##SUF(B, ldb, trans_b, p0, kc, j0, nc, pb);                  \
            for (ptrdiff_t i0 = 0; i0 < m; i0 += FASTNN_MC) {                          \
                ptrdiff_t mc = m - i0 < FASTNN_MC ? m - i0 : FASTNN_MC;                \
                fastnn_pack_a_##SUF(A, lda, trans_a, i0, mc, p0, kc, pa);              \
                for (ptrdiff_t jr = 0; jr < nc; jr += NR)                              \
                    for (ptrdiff_t ir = 0; ir < mc; ir += FASTNN_MR)                   \
                        fastnn_micro_##SUF(                                            \
                            kc, pa + ir * kc, pb + jr * kc,                            \
                            C + (i0 + ir) * ldc + j0 + jr, ldc,                        \
                            mc - ir < FASTNN_MR ? mc - ir : FASTNN_MR,                 \
                            nc - jr < NR ? nc - jr : NR, p0 > 0);                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
    return 1;                                                                          \
}

FASTNN_DEFINE_GEMM(f, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                   _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_add_ps, _mm256_setzero_ps)
FASTNN_DEFINE_GEMM(d, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd,
                   _mm256_broadcast_sd, _mm256_fmadd_pd, _mm256_add_pd, _mm256_setzero_pd)

#else /* no AVX2+FMA: never called (FASTNN_HAVE_OWN_GEMM is 0) */
#define FASTNN_HAVE_OWN_GEMM 0
static int fastnn_gemm_f(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                         ptrdiff_t lda, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc)
{
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)A; (void)lda; (void)B; (void)ldb;
    (void)C; (void)ldc;
    return 0;
}
static int fastnn_gemm_d(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const double *A,
                         ptrdiff_t lda, const double *B, ptrdiff_t ldb, double *C, ptrdiff_t ldc)
{
    (void)ta; (void)tb; (void)m; (void)n; (void)k; (void)A; (void)lda; (void)B; (void)ldb;
    (void)C; (void)ldc;
    return 0;
}
#endif

#endif
