/* float32 matrix products on AVX-512: fastnn's own GEMM where the CPU has it.
 *
 * The OpenBLAS that NumPy and SciPy bundle runs its AVX2 kernels on many
 * AVX-512 machines (OPENBLAS_CORETYPE=Haswell, or a CPU it does not know),
 * half of what the cores can do.  This GEMM, compiled only into the
 * x86-64-v4 variant of the kernels, uses the 512-bit registers: B is packed
 * in k x NR column panels, and a micro-kernel keeps an MR x NR block of C in
 * 2 * MR zmm registers, updated by multiply-adds of each B row with each of
 * MR elements of A broadcast straight from A's rows (packing A as well, as
 * BLIS does, made dense layers and training epochs 1.02-1.09x slower on the
 * EPYC: a broadcast takes any address, and the MR rows being read stay in
 * L1).  A transposed A (dW = X^T D) is the exception: its MR elements of a
 * term sit in one row of A, a row apart from the next term's, and reading
 * them in place cost up to a third of the speed on the Xeon (lda of 4 KiB:
 * every term's line falls in the same L1 set), so it is packed, MC rows at
 * a time, reading A's rows along their length.
 *
 * Row-major.  Each element of C is one dot product summed in order over p,
 * the k range cut into blocks that depend on k alone, so results do not
 * depend on how the caller tiles C over threads.
 */
#ifndef FASTNN_GEMM_H
#define FASTNN_GEMM_H

#include <stddef.h>
#include <stdlib.h>

#if defined(__AVX512F__)
#include <immintrin.h>

enum { FASTNN_HAVE_GEMM_F = 1 };

enum {
    GEMM_MR = 8,     /* rows of C per micro-kernel call */
    GEMM_NR = 32,    /* columns: two zmm registers */
    GEMM_KC = 384,   /* k block: a B panel, KC x NR floats = 48 KiB, in L1/L2 */
    GEMM_NC = 1024,  /* columns of B packed at a time: at most 1.5 MiB */
    GEMM_MC = 32,    /* rows of a transposed A packed at a time: KC x MC = 48 KiB */
};

/* C[0:mr, 0:nr] (+)= a (mr x kc) * Bp (kc x NR), mr <= MR, nr <= 16 * nv,
 * where a(r, p) = a[r * si + p * sp] (A or its transpose, read in place):
 * nv = 2 zmm columns, or 1 for a last panel of at most 16 columns (a
 * constant where it is called, so each inlined copy keeps only its own).
 * Rows r >= mr read row mr - 1 again: memory that exists, results not
 * stored. */
static inline void fastnn_gemm_kernel_f(ptrdiff_t kc, const float *a, ptrdiff_t si,
                                        ptrdiff_t sp, const float *Bp, float *C, ptrdiff_t ldc,
                                        int mr, int nr, int accumulate, const int nv)
{
    __m512 c[GEMM_MR][2];
    const float *row[GEMM_MR];
    for (int r = 0; r < GEMM_MR; r++) {
        c[r][0] = c[r][1] = _mm512_setzero_ps();
        row[r] = a + (r < mr ? r : mr - 1) * si;
    }
    for (ptrdiff_t p = 0; p < kc; p++) {
        for (int v = 0; v < nv; v++) {
            const __m512 b = _mm512_load_ps(Bp + p * GEMM_NR + 16 * v);
            for (int r = 0; r < GEMM_MR; r++)
                c[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(row[r][p * sp]), b, c[r][v]);
        }
    }
    for (int v = 0; v < nv; v++) {
        /* the columns of this vector to store */
        const int cols = nr - 16 * v;
        const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
        for (int r = 0; r < mr; r++) {
            float *cr = C + r * ldc + 16 * v;
            __m512 x = c[r][v];
            if (accumulate)
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, cr));
            _mm512_mask_storeu_ps(cr, mask, x);
        }
    }
}

/* dst[q * ds + r] = a[r * si + q] for r, q < 8: an 8 x 8 block transposed
 * in registers (unpacks, then shuffles of pairs, then of 128-bit halves);
 * dst 32-byte aligned, ds a multiple of 8. */
static inline void fastnn_gemm_transpose8(const float *a, ptrdiff_t si, float *dst, ptrdiff_t ds)
{
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_loadu_ps(a + i * si);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int h = 0; h < 8; h += 4) {      /* rows h .. h + 3: columns q and q + 4 */
        r[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
        r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
        r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
        r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
    }
    for (int q = 0; q < 4; q++) {
        _mm256_store_ps(dst + q * ds, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
        _mm256_store_ps(dst + (q + 4) * ds, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
    }
}

/* Bp = op(B)[p0:p0+kc, 0:n] as ceil(n / NR) panels of kc x NR (zeros beyond
 * n); op(B)(p, j) = B[p * sp + j * sj].  Read along whichever of p and j
 * is contiguous in B. */
static void fastnn_gemm_pack_b(const float *B, ptrdiff_t sp, ptrdiff_t sj, ptrdiff_t p0,
                               ptrdiff_t kc, ptrdiff_t n, float *Bp)
{
    for (ptrdiff_t j0 = 0; j0 < n; j0 += GEMM_NR, Bp += kc * GEMM_NR) {
        const ptrdiff_t nr = n - j0 < GEMM_NR ? n - j0 : GEMM_NR;
        const float *b = B + p0 * sp + j0 * sj;
        if (sj == 1) {     /* rows of 32: two vector copies, zero-filled past n */
            const __mmask16 m0 = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
            const __mmask16 m1 = nr >= 32 ? (__mmask16)0xFFFF
                                 : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
            for (ptrdiff_t p = 0; p < kc; p++) {
                _mm512_store_ps(Bp + p * GEMM_NR, _mm512_maskz_loadu_ps(m0, b + p * sp));
                _mm512_store_ps(Bp + p * GEMM_NR + 16, _mm512_maskz_loadu_ps(m1, b + p * sp + 16));
            }
        } else if (sp == 1 && nr == GEMM_NR) {  /* B^T: 8 x 8 blocks transposed */
            ptrdiff_t p = 0;
            for (; p + 8 <= kc; p += 8)
                for (int g = 0; g < GEMM_NR; g += 8)
                    fastnn_gemm_transpose8(b + g * sj + p, sj, Bp + p * GEMM_NR + g, GEMM_NR);
            for (; p < kc; p++)
                for (ptrdiff_t j = 0; j < GEMM_NR; j++)
                    Bp[p * GEMM_NR + j] = b[p + j * sj];
        } else {    /* B^T's last panel: gather the row of each 16 columns */
            const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                                  1, 0);
            for (int v = 0; v < GEMM_NR / 16; v++) {
                const ptrdiff_t cols = nr - 16 * v;
                const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF
                                       : cols > 0 ? (__mmask16)((1u << cols) - 1) : 0;
                const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)sj));
                const float *bv = b + 16 * v * sj;
                for (ptrdiff_t p = 0; p < kc; p++)
                    _mm512_store_ps(Bp + p * GEMM_NR + 16 * v,
                                    _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, idx,
                                                             bv + p * sp, 4));
            }
        }
    }
}

/* Ap = (A^T)[0:m, 0:kc] as panels of kc x MR (MR rows of A^T for each
 * term, zeros past m), where A^T(i, p) = a[p * lda + i], m <= MC: each row
 * of A read along its length, half a vector per panel. */
static void fastnn_gemm_pack_at(const float *a, ptrdiff_t lda, ptrdiff_t m, ptrdiff_t kc,
                                float *Ap)
{
    for (ptrdiff_t p = 0; p < kc; p++) {
        const float *row = a + p * lda;
        ptrdiff_t i = 0;
        for (; i + 16 <= m; i += 16) {
            const __m512 x = _mm512_loadu_ps(row + i);
            _mm256_store_ps(Ap + i * kc + p * GEMM_MR, _mm512_castps512_ps256(x));
            _mm256_store_ps(Ap + (i + 8) * kc + p * GEMM_MR, _mm512_extractf32x8_ps(x, 1));
        }
        for (; i < m; i += GEMM_MR) {
            const ptrdiff_t r = m - i < GEMM_MR ? m - i : GEMM_MR;
            _mm256_store_ps(Ap + i * kc + p * GEMM_MR,
                            _mm256_maskz_loadu_ps((__mmask8)((1u << r) - 1), row + i));
        }
    }
}

/* C (m x n) = op(A) (m x k) op(B) (k x n); op(A) is A (m x k, lda) or, with
 * trans_a, the transpose of A (k x m, lda); op(B) likewise.  Returns 0, or
 * -1 when the packing buffer cannot be allocated (C untouched). */
static int fastnn_gemm_f(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                         const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb,
                         float *C, ptrdiff_t ldc)
{
    if (m <= 0 || n <= 0)
        return 0;
    if (k <= 0) {
        for (ptrdiff_t i = 0; i < m; i++)
            for (ptrdiff_t j = 0; j < n; j++) C[i * ldc + j] = 0.0f;
        return 0;
    }
    /* C = A B^T with few rows and many terms (a small batch's delta W^T): B,
     * the large operand, would be packed through 8 x 8 transposes; C^T =
     * B A^T reads it in place and packs the small A^T instead, then C^T is
     * copied into C, eight rows of C at a time.  The same sums in the same
     * order.  Measured on the backward of 784 x 256 dense layers (1 and 2
     * threads): 1.07-1.09x with 32 rows, 1.03x with 64; with 128 (2m > n
     * for its 196-column tiles) 0.93x; and a 128 x 256 x 10 layer (k < m:
     * more to copy back than to transpose) 2x slower: not taken there. */
    if (trans_b && !trans_a && 2 * m <= n && m <= k) {
        float *T = (float *)malloc((size_t)(n * m) * sizeof(float));
        if (T == NULL)
            return -1;
        const int status = fastnn_gemm_f(0, 1, n, m, k, B, ldb, A, lda, T, m);
        if (status == 0)
            for (ptrdiff_t i0 = 0; i0 < m; i0 += GEMM_MR) {
                const ptrdiff_t i1 = m - i0 < GEMM_MR ? m : i0 + GEMM_MR;
                for (ptrdiff_t j = 0; j < n; j++)
                    for (ptrdiff_t i = i0; i < i1; i++)
                        C[i * ldc + j] = T[j * m + i];
            }
        free(T);
        return status;
    }
    /* k blocks of near-equal size, a function of k alone */
    const ptrdiff_t k_blocks = (k + GEMM_KC - 1) / GEMM_KC;
    const ptrdiff_t kc_max = (k + k_blocks - 1) / k_blocks;
    const ptrdiff_t nc_max = n < GEMM_NC ? n : GEMM_NC;
    const ptrdiff_t n_pad = (nc_max + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
    /* A^T packed where more than two column panels reuse it (measured on
     * the Xeon, one thread: 1.05-1.5x from k = 128 up with 128 or more
     * columns; 0.9-0.97x with 64) */
    const int pack_a = trans_a && n > 2 * GEMM_NR;
    /* n_pad is a multiple of NR: whole 64-byte lines, as aligned_alloc
     * needs, and Ap, behind Bp, starts on one */
    float *Bp = (float *)aligned_alloc(64, (size_t)(kc_max * (n_pad + (pack_a ? GEMM_MC : 0)))
                                               * sizeof(float));
    if (Bp == NULL)
        return -1;
    float *Ap = Bp + kc_max * n_pad;
    const ptrdiff_t a_si = trans_a ? 1 : lda, a_sp = trans_a ? lda : 1;
    const ptrdiff_t b_sp = trans_b ? 1 : ldb, b_sj = trans_b ? ldb : 1;
    for (ptrdiff_t jc = 0; jc < n; jc += GEMM_NC) {
        const ptrdiff_t nc = n - jc < GEMM_NC ? n - jc : GEMM_NC;
        for (ptrdiff_t p0 = 0; p0 < k; p0 += kc_max) {
            const ptrdiff_t kc = k - p0 < kc_max ? k - p0 : kc_max;
            fastnn_gemm_pack_b(B + jc * b_sj, b_sp, b_sj, p0, kc, nc, Bp);
            /* the MR rows of A being read stay in L1 while the B panels
             * stream from L2 */
            for (ptrdiff_t i0 = 0; i0 < m; i0 += GEMM_MR) {
                const int mr = (int)(m - i0 < GEMM_MR ? m - i0 : GEMM_MR);
                const float *a = A + i0 * a_si + p0 * a_sp;
                ptrdiff_t si = a_si, sp = a_sp;
                if (pack_a) {
                    if (i0 % GEMM_MC == 0)
                        fastnn_gemm_pack_at(a, lda, m - i0 < GEMM_MC ? m - i0 : GEMM_MC, kc, Ap);
                    a = Ap + (i0 % GEMM_MC) * kc;
                    si = 1;
                    sp = GEMM_MR;
                }
                for (ptrdiff_t j0 = 0; j0 < nc; j0 += GEMM_NR) {
                    const int nr = (int)(nc - j0 < GEMM_NR ? nc - j0 : GEMM_NR);
                    const float *bp = Bp + j0 * kc;
                    float *c = C + i0 * ldc + jc + j0;
                    if (nr > 16)
                        fastnn_gemm_kernel_f(kc, a, si, sp, bp, c, ldc, mr, nr, p0 > 0, 2);
                    else
                        fastnn_gemm_kernel_f(kc, a, si, sp, bp, c, ldc, mr, nr, p0 > 0, 1);
                }
            }
        }
    }
    free(Bp);
    return 0;
}

#else   /* no AVX-512: BLAS computes every product */

enum { FASTNN_HAVE_GEMM_F = 0 };

static int fastnn_gemm_f(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                         const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb,
                         float *C, ptrdiff_t ldc)
{
    (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)A; (void)lda; (void)B;
    (void)ldb; (void)C; (void)ldc;
    return -1;
}

#endif
#endif
