/* float32 matrix products with few output columns: fastnn's own GEMM where
 * it beats BLAS.
 *
 * A layer with few outputs (a classifier's 10 classes, a small head) makes
 * products with that many columns: its forward product and its dW.  OpenBLAS
 * runs them at 33-46 GFLOP/s on one core here, against 90 for a large
 * sgemm.  This kernel keeps a row of C in two vector registers (GCC vector
 * extensions, so every -march variant compiles it).  Measured against
 * single-threaded OpenBLAS on the same tiles (1 and 2 threads, medians of 9
 * interleaved runs): dW 1.2-1.7x faster for 4 to 16 columns; the forward
 * product 1.1-1.4x faster for 10 to 16 columns but slower for 8 or fewer
 * (0.8x), so the caller (_narrow_product) uses it only where it wins.  The
 * third product of a layer, delta W^T, was slower this way and stays on BLAS.
 *
 * Row-major.  Every element of C is one dot product summed in order over p,
 * so results do not depend on how the caller tiles C over threads.
 */
#ifndef FASTNN_NARROW_H
#define FASTNN_NARROW_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef float fastnn_vf __attribute__((vector_size(32)));

enum { FASTNN_LANES_F = sizeof(fastnn_vf) / sizeof(float),
       FASTNN_NARROW_F = 2 * FASTNN_LANES_F };   /* the widest C it takes */

/* C (m x n) = op(A) (m x k) B (k x n), n <= FASTNN_NARROW_F; op(A) is A
 * (m x k, lda) or, with trans_a, the transpose of A (k x m, lda).  B is
 * copied once into k rows of FASTNN_NARROW_F lanes (zeros beyond n); four
 * rows of C are then two vectors each, updated from each row of B by
 * broadcast multiply-adds.  Returns 0, or -1 when the copy of B cannot be
 * allocated (C untouched). */
static int fastnn_narrow_f(int trans_a, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                           const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb,
                           float *C, ptrdiff_t ldc)
{
    enum { V = FASTNN_LANES_F, W = FASTNN_NARROW_F };
    float *Bp = (float *)calloc((size_t)(k > 0 ? k : 1) * W, sizeof(float));
    if (Bp == NULL)
        return -1;
    for (ptrdiff_t p = 0; p < k; p++)
        memcpy(Bp + p * W, B + p * ldb, n * sizeof(float));
    /* op(A)(i, p) = A[i * si + p * sp] */
    const ptrdiff_t si = trans_a ? 1 : lda, sp = trans_a ? lda : 1;
    for (ptrdiff_t i = 0; i < m; i += 4) {
        const float *a = A + i * si;
        if (m - i >= 4) {
            fastnn_vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0},
                      c30 = {0}, c31 = {0};
            for (ptrdiff_t p = 0; p < k; p++) {
                fastnn_vf b0, b1;
                memcpy(&b0, Bp + p * W, sizeof b0);
                memcpy(&b1, Bp + p * W + V, sizeof b1);
                const float *ap = a + p * sp;
                float a0 = ap[0], a1 = ap[si], a2 = ap[2 * si], a3 = ap[3 * si];
                c00 += a0 * b0; c01 += a0 * b1;
                c10 += a1 * b0; c11 += a1 * b1;
                c20 += a2 * b0; c21 += a2 * b1;
                c30 += a3 * b0; c31 += a3 * b1;
            }
            fastnn_vf rows[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
            for (int r = 0; r < 4; r++)
                memcpy(C + (i + r) * ldc, rows[r], n * sizeof(float));
            continue;
        }
        for (ptrdiff_t r = 0; r < m - i; r++) {          /* the last 1-3 rows */
            fastnn_vf s0 = {0}, s1 = {0};
            for (ptrdiff_t p = 0; p < k; p++) {
                fastnn_vf b0, b1;
                memcpy(&b0, Bp + p * W, sizeof b0);
                memcpy(&b1, Bp + p * W + V, sizeof b1);
                float ar = a[r * si + p * sp];
                s0 += ar * b0; s1 += ar * b1;
            }
            fastnn_vf row[2] = {s0, s1};
            memcpy(C + (i + r) * ldc, row, n * sizeof(float));
        }
    }
    free(Bp);
    return 0;
}

#endif
