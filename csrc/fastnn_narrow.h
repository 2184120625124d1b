/* float32 matrix products with few output columns: fastnn's own GEMM where
 * it beats BLAS.
 *
 * A layer with few outputs (a classifier's 10 classes, a small head) makes
 * products with that many columns: its forward product and its dW.  OpenBLAS
 * runs them at 33-46 GFLOP/s on one core here, against 90 for a large
 * sgemm.  This kernel keeps a row of C in one AVX-512 register or two AVX2
 * ones (GCC vector extensions; on AVX-512 1.5x faster than in two: 128 x 256
 * x 10 forward 10.7 -> 6.9 us, its dW 10.3 -> 6.6 us, one core).  Without
 * AVX2 it was many times slower than BLAS, which then takes these products
 * (fastnn_narrow_f returns -1).  Measured against
 * single-threaded OpenBLAS on the same tiles (1 and 2 threads, medians of 9
 * interleaved runs): dW 1.2-1.7x faster for 4 to 16 columns; the forward
 * product 1.1-1.4x faster for 10 to 16 columns but slower for 8 or fewer
 * (0.8x), so the caller (_own_product) uses it only where it wins.  The
 * third product of a layer, delta W^T, was slower this way: it goes to
 * fastnn_gemm.h (AVX-512) or BLAS.
 *
 * Row-major.  Every element of C is one dot product summed in order over p,
 * so results do not depend on how the caller tiles C over threads.
 */
#ifndef FASTNN_NARROW_H
#define FASTNN_NARROW_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* One vector register holds FASTNN_LANES_F floats: 16 on AVX-512 (C's row
 * in one register), 8 elsewhere (in two). */
#if defined(__AVX512F__)
typedef float fastnn_vf __attribute__((vector_size(64)));
#else
typedef float fastnn_vf __attribute__((vector_size(32)));
#endif

enum { FASTNN_LANES_F = sizeof(fastnn_vf) / sizeof(float),
       FASTNN_NARROW_F = 16,                            /* the widest C it takes */
       FASTNN_NARROW_VECS = FASTNN_NARROW_F / FASTNN_LANES_F,   /* per row of C */
       FASTNN_NARROW_ROWS = 8 / FASTNN_NARROW_VECS };  /* 8 accumulators in all */

/* C (m x n) = op(A) (m x k) B (k x n), n <= FASTNN_NARROW_F; op(A) is A
 * (m x k, lda) or, with trans_a, the transpose of A (k x m, lda).  B is
 * copied once into k rows of FASTNN_NARROW_F lanes (zeros beyond n); then
 * FASTNN_NARROW_ROWS rows of C at a time, FASTNN_NARROW_VECS vectors each,
 * are updated from each row of B by broadcast multiply-adds (8 independent
 * accumulators keep both FMA units busy).  Returns 0, or -1 when the copy of
 * B cannot be allocated (C untouched). */
static int fastnn_narrow_f(int trans_a, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                           const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb,
                           float *C, ptrdiff_t ldc)
{
    enum { V = FASTNN_LANES_F, W = FASTNN_NARROW_F, NV = FASTNN_NARROW_VECS,
           R = FASTNN_NARROW_ROWS };
#if !defined(__AVX2__)
    (void)trans_a; (void)m; (void)n; (void)k; (void)A; (void)lda; (void)B; (void)ldb; (void)C;
    (void)ldc;
    return -1;
#endif
    float *Bp = (float *)calloc((size_t)(k > 0 ? k : 1) * W, sizeof(float));
    if (Bp == NULL)
        return -1;
    for (ptrdiff_t p = 0; p < k; p++)
        memcpy(Bp + p * W, B + p * ldb, n * sizeof(float));
    /* op(A)(i, p) = A[i * si + p * sp] */
    const ptrdiff_t si = trans_a ? 1 : lda, sp = trans_a ? lda : 1;
    for (ptrdiff_t i = 0; i < m; i += R) {
        const float *a = A + i * si;
        if (m - i >= R) {
            fastnn_vf acc[R][NV];
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    acc[r][v] = (fastnn_vf){0};
            for (ptrdiff_t p = 0; p < k; p++) {
                fastnn_vf b[NV];
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    memcpy(&b[v], Bp + p * W + v * V, sizeof b[v]);
                const float *ap = a + p * sp;
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) {
                    const float ar = ap[r * si];
#pragma GCC unroll 2
                    for (int v = 0; v < NV; v++)
                        acc[r][v] += ar * b[v];
                }
            }
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                fastnn_vf row[NV];      /* a copy: acc itself never has its address taken */
#pragma GCC unroll 2
                for (int v = 0; v < NV; v++)
                    row[v] = acc[r][v];
                memcpy(C + (i + r) * ldc, row, n * sizeof(float));
            }
            continue;
        }
        for (ptrdiff_t r = 0; r < m - i; r++) {          /* the last rows */
            fastnn_vf s[NV];
            for (int v = 0; v < NV; v++)
                s[v] = (fastnn_vf){0};
            for (ptrdiff_t p = 0; p < k; p++) {
                fastnn_vf b[NV];
                memcpy(b, Bp + p * W, sizeof b);
                const float ar = a[r * si + p * sp];
                for (int v = 0; v < NV; v++)
                    s[v] += ar * b[v];
            }
            memcpy(C + (i + r) * ldc, s, n * sizeof(float));
        }
    }
    free(Bp);
    return 0;
}

#endif
