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
 * The 12-row micro-kernel is inline assembly: 24 accumulators, two B
 * vectors and the broadcasts fill the 32 zmm registers, and the 12 rows are
 * addressed from 4 base registers as base + {0, 1, 2} x lda; the compiler's
 * code for the same loop kept 12 row pointers and spilled (0.55-0.8x of the
 * 8-row kernel).  Against 8 rows it loads B once per 24 multiply-adds
 * instead of 16: 1.03-1.19x on one Xeon core.  Blocks of fewer rows, and
 * the last panel of at most 16 columns, run on the 8-row intrinsics kernel,
 * which sums in the same order.
 *
 * Where the 12 rows, read in place, sit a multiple of the L1's way size
 * apart (4 KiB: an A of 1024 or 2048 floats a row), all of them fall in
 * one L1 set; with fewer than 12 ways they evict each other, and the
 * 8-row kernel runs those products instead (the EPYC Zen 4, 32 KiB 8-way:
 * 12 rows took 1024^3 0.69-0.90x of 8 rows, equal elsewhere; the Xeon's
 * 12-way L1 keeps them).  The L1's geometry comes from CPUID at import.
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
#include <cpuid.h>
#include <immintrin.h>

enum { FASTNN_HAVE_GEMM_F = 1 };

enum {
    GEMM_MR = 12,    /* rows of C per micro-kernel call */
    GEMM_MR_EDGE = 8,  /* rows of the intrinsics kernel for the edges */
    GEMM_NR = 32,    /* columns: two zmm registers */
    GEMM_KC = 384,   /* k block: a B panel, KC x NR floats = 48 KiB, in L1/L2 */
    GEMM_NC = 1024,  /* columns of B packed at a time: at most 1.5 MiB */
    GEMM_MC = 48,    /* rows of a transposed A packed at a time: KC x MC = 72 KiB */
};

/* The L1 data cache: ways and bytes per way (0 if CPUID does not say). */
static int fastnn_gemm_l1_ways = 0, fastnn_gemm_l1_way_bytes = 0;

/* Read the L1 data cache's geometry from CPUID's deterministic cache
 * parameters: leaf 4 (Intel), 0x8000001D (AMD), one sub-leaf per cache. */
static void fastnn_gemm_init(void)
{
    unsigned int a, b, c, d, leaf = 4;
    if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u)   /* "Auth"enticAMD */
        leaf = 0x8000001Du;
    if (__get_cpuid_max(leaf & 0x80000000u, NULL) < leaf)
        return;
    for (unsigned int i = 0; i < 8; i++) {
        __cpuid_count(leaf, i, a, b, c, d);
        if ((a & 31) == 0)
            return;                              /* no more caches */
        if ((a & 31) == 1 && ((a >> 5) & 7) == 1) {   /* data, level 1 */
            fastnn_gemm_l1_ways = (int)(b >> 22) + 1;
            fastnn_gemm_l1_way_bytes = (int)((((b >> 12) & 1023) + 1) * ((b & 4095) + 1) * (c + 1));
            return;
        }
    }
}

/* Rows of C per block when A's rows, lda_bytes apart, are read in place. */
static inline int fastnn_gemm_rows(ptrdiff_t lda_bytes)
{
    const int one_set = fastnn_gemm_l1_way_bytes > 0 && lda_bytes % fastnn_gemm_l1_way_bytes == 0;
    return one_set && fastnn_gemm_l1_ways < GEMM_MR ? GEMM_MR_EDGE : GEMM_MR;
}

/* C[0:mr, 0:nr] (+)= a (mr x kc) * Bp (kc x NR), mr <= MR_EDGE, nr <= 16 * nv,
 * where a(r, p) = a[r * si + p * sp] (A or its transpose, read in place):
 * nv = 2 zmm columns, or 1 for a last panel of at most 16 columns (a
 * constant where it is called, so each inlined copy keeps only its own).
 * Rows r >= mr read row mr - 1 again: memory that exists, results not
 * stored. */
static inline void fastnn_gemm_kernel_f(ptrdiff_t kc, const float *a, ptrdiff_t si,
                                        ptrdiff_t sp, const float *Bp, float *C, ptrdiff_t ldc,
                                        int mr, int nr, int accumulate, const int nv)
{
    __m512 c[GEMM_MR_EDGE][2];
    const float *row[GEMM_MR_EDGE];
    for (int r = 0; r < GEMM_MR_EDGE; r++) {
        c[r][0] = c[r][1] = _mm512_setzero_ps();
        row[r] = a + (r < mr ? r : mr - 1) * si;
    }
    for (ptrdiff_t p = 0; p < kc; p++) {
        for (int v = 0; v < nv; v++) {
            const __m512 b = _mm512_load_ps(Bp + p * GEMM_NR + 16 * v);
            for (int r = 0; r < GEMM_MR_EDGE; r++)
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

/* C[0:12, 0:32] (+)= a (12 x kc) * Bp (kc x NR), kc >= 1, where a(r, p)
 * sits r * L + p * SP bytes from a: the same sums, in the same order, as
 * fastnn_gemm_kernel_f (each element one chain of multiply-adds over p,
 * then + C when accumulating). */
#define FASTNN_K12_ROW(addr, t, c0, c1) \
    "vbroadcastss " addr ", %%" t "\n\t" \
    "vfmadd231ps %%zmm24, %%" t ", %%" c0 "\n\t" \
    "vfmadd231ps %%zmm25, %%" t ", %%" c1 "\n\t"
#define FASTNN_K12_STORE(c0, c1) \
    "vmovups %%" c0 ", (%[c])\n\t" "vmovups %%" c1 ", 64(%[c])\n\t" "add %[ldc], %[c]\n\t"
#define FASTNN_K12_ADD_STORE(c0, c1) \
    "vaddps (%[c]), %%" c0 ", %%" c0 "\n\t" "vaddps 64(%[c]), %%" c1 ", %%" c1 "\n\t" \
    FASTNN_K12_STORE(c0, c1)
#define FASTNN_K12_ROWS(X) \
    X("zmm0", "zmm1") X("zmm2", "zmm3") X("zmm4", "zmm5") X("zmm6", "zmm7") \
    X("zmm8", "zmm9") X("zmm10", "zmm11") X("zmm12", "zmm13") X("zmm14", "zmm15") \
    X("zmm16", "zmm17") X("zmm18", "zmm19") X("zmm20", "zmm21") X("zmm22", "zmm23")
#define FASTNN_K12_ZERO(c0, c1) "vpxord %%" c0 ", %%" c0 ", %%" c0 "\n\t" \
    "vpxord %%" c1 ", %%" c1 ", %%" c1 "\n\t"

static inline void fastnn_gemm_kernel12_f(ptrdiff_t kc, const float *a, ptrdiff_t L,
                                          ptrdiff_t SP, const float *Bp, float *C,
                                          ptrdiff_t ldc_bytes, int accumulate)
{
    const float *a3, *a6, *a9;   /* rows 3, 6, 9: each base + {0, 1, 2} x L */
    __asm__ volatile(
        "lea (%[a0],%[L],2), %[a3]\n\t" "add %[L], %[a3]\n\t"
        "lea (%[a3],%[L],2), %[a6]\n\t" "add %[L], %[a6]\n\t"
        "lea (%[a6],%[L],2), %[a9]\n\t" "add %[L], %[a9]\n\t"
        FASTNN_K12_ROWS(FASTNN_K12_ZERO)
        "1:\n\t"
        "vmovaps (%[b]), %%zmm24\n\t"
        "vmovaps 64(%[b]), %%zmm25\n\t"
        "prefetcht0 1024(%[b])\n\t"       /* the panel streams from L2: 8 terms ahead */
        "prefetcht0 1088(%[b])\n\t"
        FASTNN_K12_ROW("(%[a0])", "zmm26", "zmm0", "zmm1")
        FASTNN_K12_ROW("(%[a0],%[L],1)", "zmm27", "zmm2", "zmm3")
        FASTNN_K12_ROW("(%[a0],%[L],2)", "zmm28", "zmm4", "zmm5")
        FASTNN_K12_ROW("(%[a3])", "zmm29", "zmm6", "zmm7")
        FASTNN_K12_ROW("(%[a3],%[L],1)", "zmm30", "zmm8", "zmm9")
        FASTNN_K12_ROW("(%[a3],%[L],2)", "zmm31", "zmm10", "zmm11")
        FASTNN_K12_ROW("(%[a6])", "zmm26", "zmm12", "zmm13")
        FASTNN_K12_ROW("(%[a6],%[L],1)", "zmm27", "zmm14", "zmm15")
        FASTNN_K12_ROW("(%[a6],%[L],2)", "zmm28", "zmm16", "zmm17")
        FASTNN_K12_ROW("(%[a9])", "zmm29", "zmm18", "zmm19")
        FASTNN_K12_ROW("(%[a9],%[L],1)", "zmm30", "zmm20", "zmm21")
        FASTNN_K12_ROW("(%[a9],%[L],2)", "zmm31", "zmm22", "zmm23")
        "add %[SP], %[a0]\n\t" "add %[SP], %[a3]\n\t" "add %[SP], %[a6]\n\t"
        "add %[SP], %[a9]\n\t"
        "add $128, %[b]\n\t"
        "dec %[kc]\n\t"
        "jnz 1b\n\t"
        "test %[acc], %[acc]\n\t"
        "jz 2f\n\t"
        FASTNN_K12_ROWS(FASTNN_K12_ADD_STORE)
        "jmp 3f\n\t"
        "2:\n\t"
        FASTNN_K12_ROWS(FASTNN_K12_STORE)
        "3:\n\t"
        : [a0] "+r"(a), [a3] "=&r"(a3), [a6] "=&r"(a6), [a9] "=&r"(a9), [b] "+r"(Bp),
          [kc] "+r"(kc), [c] "+r"(C)
        : [L] "r"(L), [SP] "r"(SP), [ldc] "r"(ldc_bytes), [acc] "r"(accumulate)
        : "cc", "memory", "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7",
          "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16",
          "zmm17", "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "zmm24", "zmm25",
          "zmm26", "zmm27", "zmm28", "zmm29", "zmm30", "zmm31");
}

/* One MR x NR block of C (mr rows, nr columns): the 12-row kernel where
 * all 12 rows exist (through an L1 buffer when the panel is partial), the
 * 8-row one for the rest. */
static inline void fastnn_gemm_block_f(ptrdiff_t kc, const float *a, ptrdiff_t si,
                                       ptrdiff_t sp, const float *Bp, float *C, ptrdiff_t ldc,
                                       int mr, int nr, int accumulate)
{
    const ptrdiff_t L = si * (ptrdiff_t)sizeof(float), SP = sp * (ptrdiff_t)sizeof(float);
    if (mr == GEMM_MR && nr == GEMM_NR) {
        fastnn_gemm_kernel12_f(kc, a, L, SP, Bp, C, ldc * (ptrdiff_t)sizeof(float), accumulate);
        return;
    }
    if (mr == GEMM_MR && nr > 16) {
        float T[GEMM_MR * GEMM_NR] __attribute__((aligned(64)));
        const __mmask16 tail = (__mmask16)((1u << (nr - 16)) - 1);
        fastnn_gemm_kernel12_f(kc, a, L, SP, Bp, T, GEMM_NR * (ptrdiff_t)sizeof(float), 0);
        for (int r = 0; r < GEMM_MR; r++) {
            float *cr = C + r * ldc;
            __m512 x0 = _mm512_load_ps(T + r * GEMM_NR), x1 = _mm512_load_ps(T + r * GEMM_NR + 16);
            if (accumulate) {
                x0 = _mm512_add_ps(x0, _mm512_loadu_ps(cr));
                x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(tail, cr + 16));
            }
            _mm512_storeu_ps(cr, x0);
            _mm512_mask_storeu_ps(cr + 16, tail, x1);
        }
        return;
    }
    for (int r0 = 0; r0 < mr; r0 += GEMM_MR_EDGE) {
        const int rows = mr - r0 < GEMM_MR_EDGE ? mr - r0 : GEMM_MR_EDGE;
        if (nr > 16)
            fastnn_gemm_kernel_f(kc, a + r0 * si, si, sp, Bp, C + r0 * ldc, ldc, rows, nr,
                                 accumulate, 2);
        else
            fastnn_gemm_kernel_f(kc, a + r0 * si, si, sp, Bp, C + r0 * ldc, ldc, rows, nr,
                                 accumulate, 1);
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
 * of A read along its length, MR elements per panel. */
static void fastnn_gemm_pack_at(const float *a, ptrdiff_t lda, ptrdiff_t m, ptrdiff_t kc,
                                float *Ap)
{
    for (ptrdiff_t p = 0; p < kc; p++) {
        const float *row = a + p * lda;
        for (ptrdiff_t i = 0; i < m; i += GEMM_MR) {
            const ptrdiff_t r = m - i < GEMM_MR ? m - i : GEMM_MR;
            _mm512_mask_storeu_ps(Ap + i * kc + p * GEMM_MR, (__mmask16)((1u << GEMM_MR) - 1),
                                  _mm512_maskz_loadu_ps((__mmask16)((1u << r) - 1), row + i));
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
            for (ptrdiff_t i0 = 0; i0 < m; i0 += GEMM_MR_EDGE) {
                const ptrdiff_t i1 = m - i0 < GEMM_MR_EDGE ? m : i0 + GEMM_MR_EDGE;
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
    const int rows = pack_a ? GEMM_MR : fastnn_gemm_rows(a_si * (ptrdiff_t)sizeof(float));
    for (ptrdiff_t jc = 0; jc < n; jc += GEMM_NC) {
        const ptrdiff_t nc = n - jc < GEMM_NC ? n - jc : GEMM_NC;
        for (ptrdiff_t p0 = 0; p0 < k; p0 += kc_max) {
            const ptrdiff_t kc = k - p0 < kc_max ? k - p0 : kc_max;
            fastnn_gemm_pack_b(B + jc * b_sj, b_sp, b_sj, p0, kc, nc, Bp);
            /* the MR rows of A being read stay in L1 while the B panels
             * stream from L2 */
            for (ptrdiff_t i0 = 0; i0 < m; i0 += rows) {
                const int mr = (int)(m - i0 < rows ? m - i0 : rows);
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
                    fastnn_gemm_block_f(kc, a, si, sp, Bp + j0 * kc, C + i0 * ldc + jc + j0,
                                        ldc, mr, nr, p0 > 0);
                }
            }
        }
    }
    free(Bp);
    return 0;
}

#else   /* no AVX-512: BLAS computes every product */

enum { FASTNN_HAVE_GEMM_F = 0 };
static int fastnn_gemm_l1_ways = 0, fastnn_gemm_l1_way_bytes = 0;
static void fastnn_gemm_init(void) {}
static inline int fastnn_gemm_rows(ptrdiff_t lda_bytes) { (void)lda_bytes; return 0; }

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
