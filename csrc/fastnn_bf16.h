/* bf16 matrix products: float32 operands rounded to bfloat16 (round to
 * nearest even) while they are packed, float32 accumulation.
 *
 * Three paths, chosen at import (fastnn/_config.py, fastnn/_kernels/bf16.pxi):
 *   - AMX-BF16 (tdpbf16ps on 16 x 16 float32 tiles) where the CPU has
 *     amx_tile + amx_bf16 and the OS grants tile data (Linux: arch_prctl
 *     ARCH_REQ_XCOMP_PERM, fastnn_bf16_amx_request);
 *   - AVX512_BF16 (vdpbf16ps) where AMX is absent;
 *   - emulated: operands rounded to bf16 into float32 scratch copies, then
 *     the ordinary float32 products (fastnn_bf16_round_f, used by bf16.pxi).
 * The first two are compiled with function-level target attributes, so they
 * exist in every SIMD variant of the module (even the SSE2 baseline) when the
 * compiler knows the intrinsics (GCC >= 11 / Clang >= 12 for AMX, GCC >= 10 /
 * Clang >= 9 for AVX512_BF16); only called after a CPU check.
 *
 * Both hardware paths share one packing of the operands:
 *   Ap: op(A) row-major as bf16, m_pad x kk (kk = k rounded up to the k step,
 *       zero-filled past k, zero rows past m);
 *   Bp: op(B) in the VNNI pair layout, groups of 16 columns: for group g and
 *       pair q (k = 2q, 2q + 1), 16 x 2 bf16 = 64 bytes at
 *       Bp + (g * kk / 2 + q) * 32: element (j, e) = op(B)(2q + e, 16g + j).
 * That is a row of a B tile for AMX (16 pairs x 16 columns = 1 KiB per tile)
 * and one zmm register of pairs for vdpbf16ps.
 *
 * Every element of C is one accumulation over the whole of k in a fixed
 * order (pairs in order; AMX: tiles in k order), a function of k alone, so
 * results do not depend on how the caller tiles C over threads.  Both
 * hardware dot-product instructions treat denormal inputs as zero and flush
 * denormal results (Intel SDM); the emulated path keeps them.
 */
#ifndef FASTNN_BF16_H
#define FASTNN_BF16_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#if defined(__x86_64__) && defined(__linux__)
#include <unistd.h>
#include <sys/syscall.h>
#endif

/* Which hardware paths this compiler can build. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_include)
#  if __has_include(<immintrin.h>)
#    if (defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10)
#      define FASTNN_BF16_AVX512 1
#    endif
#    if ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)) \
        && defined(__linux__)
#      define FASTNN_BF16_AMX 1
#    endif
#  endif
#endif
#ifndef FASTNN_BF16_AVX512
#  define FASTNN_BF16_AVX512 0
#endif
#ifndef FASTNN_BF16_AMX
#  define FASTNN_BF16_AMX 0
#endif
#if FASTNN_BF16_AVX512 || FASTNN_BF16_AMX
#include <immintrin.h>
#include "fastnn_simd.h"     /* fastnn_transpose16 */
#endif

/* ---- packing buffers, pooled between products ----
 * Training calls the same few products thousands of times; a fresh buffer
 * of a few hundred KB is an mmap that page-faults on every call (measured:
 * 67 -> 77 us for 128x784x256 serial).  A few pairs of buffers are kept,
 * each taken by one product at a time (an atomic flag; a thread training
 * in a loop takes the same one), grown to the largest size asked for up to
 * FASTNN_BF16_KEEP bytes; larger ones, and products that find every pair
 * busy, allocate their own.  The pool belongs to no thread, so threads that
 * exit leave nothing behind, and it needs no thread-local storage (whose
 * glibc 2.34 symbols the wheel must not depend on). */
enum { FASTNN_BF16_POOL = 4 };
#define FASTNN_BF16_KEEP ((size_t)4 << 20)       /* the products of training up to batch 1024 */

struct fastnn_bf16_kept { int busy; void *p[2]; size_t size[2]; };
static struct fastnn_bf16_kept fastnn_bf16_pool[FASTNN_BF16_POOL];

/* One product's packing buffers: a (slot 0) and b (slot 1), 64-byte aligned. */
struct fastnn_bf16_scratch { int entry; void *a, *b; size_t a_bytes, b_bytes; };

static void *fastnn_bf16_slot(struct fastnn_bf16_kept *k, int slot, size_t bytes)
{
    if (k == NULL || bytes > FASTNN_BF16_KEEP)
        return aligned_alloc(64, bytes);
    if (k->size[slot] < bytes) {
        free(k->p[slot]);
        k->p[slot] = aligned_alloc(64, bytes);
        k->size[slot] = k->p[slot] != NULL ? bytes : 0;
    }
    return k->p[slot];
}

/* s->a, s->b of at least a_bytes, b_bytes (> 0): 0, or -1 when out of memory
 * (then s->a or s->b is NULL); fastnn_bf16_scratch_put(s) in any case. */
static int fastnn_bf16_scratch_get(struct fastnn_bf16_scratch *s, size_t a_bytes, size_t b_bytes)
{
    s->a_bytes = (a_bytes + 63) & ~(size_t)63;
    s->b_bytes = (b_bytes + 63) & ~(size_t)63;
    s->entry = -1;
#if defined(__GNUC__)
    for (int e = 0; e < FASTNN_BF16_POOL && s->entry < 0; e++) {
        int idle = 0;
        if (__atomic_compare_exchange_n(&fastnn_bf16_pool[e].busy, &idle, 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            s->entry = e;
    }
#endif
    struct fastnn_bf16_kept *k = s->entry >= 0 ? &fastnn_bf16_pool[s->entry] : NULL;
    s->a = fastnn_bf16_slot(k, 0, s->a_bytes);
    s->b = fastnn_bf16_slot(k, 1, s->b_bytes);
    return s->a != NULL && s->b != NULL ? 0 : -1;
}

static void fastnn_bf16_scratch_put(struct fastnn_bf16_scratch *s)
{
    struct fastnn_bf16_kept *k = s->entry >= 0 ? &fastnn_bf16_pool[s->entry] : NULL;
    if (k == NULL || s->a_bytes > FASTNN_BF16_KEEP)
        free(s->a);
    if (k == NULL || s->b_bytes > FASTNN_BF16_KEEP)
        free(s->b);
#if defined(__GNUC__)
    if (k != NULL)
        __atomic_store_n(&k->busy, 0, __ATOMIC_RELEASE);
#endif
}

/* Path codes (bf16.pxi's _bf16_path). */
enum { FASTNN_BF16_EMULATED = 0, FASTNN_BF16_AVX512BF16 = 1, FASTNN_BF16_AMXBF16 = 2 };

/* Bit i set: path i compiled in. */
static inline int fastnn_bf16_compiled(void)
{
    return 1 | (FASTNN_BF16_AVX512 ? 2 : 0) | (FASTNN_BF16_AMX ? 4 : 0);
}

/* x rounded to bfloat16, round to nearest even; NaN stays a (quiet) NaN,
 * +-inf stays infinite, overflow rounds to inf. */
static inline uint16_t fastnn_bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* y[i * ldy + j] = float32(bf16(x[i * ldx + j])) for i < rows, j < cols:
 * the emulated path's operand rounding (vectorised by the compiler). */
static void fastnn_bf16_round_f(const float *x, ptrdiff_t ldx, float *y, ptrdiff_t ldy,
                                ptrdiff_t rows, ptrdiff_t cols)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const uint32_t *xi = (const uint32_t *)(const void *)(x + i * ldx);
        uint32_t *yi = (uint32_t *)(void *)(y + i * ldy);
#pragma omp simd
        for (ptrdiff_t j = 0; j < cols; j++) {
            const uint32_t u = xi[j];
            const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
            yi[j] = (u & 0x7FFFFFFFu) > 0x7F800000u ? (u | 0x00400000u) & 0xFFFF0000u : r;
        }
    }
}

/* The k step of a path's packing (kk is k rounded up to it) and the rows /
 * columns its blocks cover (m and n are padded to them). */
static inline ptrdiff_t fastnn_bf16_kstep(int path) { return path == FASTNN_BF16_AMXBF16 ? 32 : 2; }
enum { FASTNN_BF16_BLOCK = 32 };

/* ---- packing: scalar (any layout), then the vectorised contiguous cases ---- */

/* Ap rows [i0, i1) of op(A) (m x k), op(A)(i, p) = A[i * si + p * sp]. */
static void fastnn_bf16_pack_a_scalar(const float *A, ptrdiff_t si, ptrdiff_t sp, ptrdiff_t m,
                                      ptrdiff_t k, ptrdiff_t kk, ptrdiff_t i0, ptrdiff_t i1,
                                      uint16_t *Ap)
{
    if (sp == 1 || si != 1) {
        for (ptrdiff_t i = i0; i < i1; i++) {
            uint16_t *row = Ap + i * kk;
            ptrdiff_t p = 0;
            if (i < m)
                for (; p < k; p++) row[p] = fastnn_bf16_bits(A[i * si + p * sp]);
            for (; p < kk; p++) row[p] = 0;
        }
        return;
    }
    /* A^T: read A's rows (contiguous over i), 64 rows of Ap at a time */
    for (ptrdiff_t b0 = i0; b0 < i1; b0 += 64) {
        const ptrdiff_t b1 = i1 - b0 < 64 ? i1 : b0 + 64;
        const ptrdiff_t e1 = b1 < m ? b1 : m;
        for (ptrdiff_t p = 0; p < k; p++)
            for (ptrdiff_t i = b0; i < e1; i++) Ap[i * kk + p] = fastnn_bf16_bits(A[p * sp + i]);
        for (ptrdiff_t i = b0; i < b1; i++) {
            const ptrdiff_t from = i < m ? k : 0;
            memset(Ap + i * kk + from, 0, (size_t)(kk - from) * sizeof(uint16_t));
        }
    }
}

/* Bp column groups [g0, g1) of op(B) (k x n), op(B)(p, j) = B[p * sp + j * sj]. */
static void fastnn_bf16_pack_b_scalar(const float *B, ptrdiff_t sp, ptrdiff_t sj, ptrdiff_t k,
                                      ptrdiff_t n, ptrdiff_t kk, ptrdiff_t g0, ptrdiff_t g1,
                                      uint16_t *Bp)
{
    const ptrdiff_t kq = kk / 2;
    for (ptrdiff_t g = g0; g < g1; g++) {
        uint16_t *panel = Bp + g * kq * 32;
        for (ptrdiff_t jj = 0; jj < 16; jj++) {
            const ptrdiff_t j = 16 * g + jj;
            for (ptrdiff_t p = 0; p < kk; p++)
                panel[(p >> 1) * 32 + 2 * jj + (p & 1)] =
                    j < n && p < k ? fastnn_bf16_bits(B[p * sp + j * sj]) : 0;
        }
    }
}

#if FASTNN_BF16_AVX512 || FASTNN_BF16_AMX
#define FASTNN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

/* 32 floats (masked past `count`) as 32 bf16, RNE, in one zmm. */
FASTNN_BF16_TARGET static inline __m512i fastnn_bf16_cvt32(const float *x, ptrdiff_t count)
{
    const __mmask16 m0 = count >= 16 ? (__mmask16)0xFFFF
                         : count > 0 ? (__mmask16)((1u << count) - 1) : 0;
    const __mmask16 m1 = count >= 32 ? (__mmask16)0xFFFF
                         : count > 16 ? (__mmask16)((1u << (count - 16)) - 1) : 0;
    const __m512 lo = _mm512_maskz_loadu_ps(m0, x);
    const __m512 hi = m1 ? _mm512_maskz_loadu_ps(m1, x + 16) : _mm512_setzero_ps();
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* The 16 pairs (x[p * sp + j], x[(p + 1) * sp + j]) of j < 16 (zero past the
 * mask, and for rows p, p + 1 >= k) as bf16, RNE: the VNNI pair layout. */
FASTNN_BF16_TARGET static inline __m512i fastnn_bf16_pairs(const float *x, ptrdiff_t sp,
                                                           ptrdiff_t p, ptrdiff_t k,
                                                           __mmask16 mask)
{
    /* cvtne2ps(odd row, even row) holds even in words 0-15, odd in 16-31 */
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                           24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                           16, 0);
    const __m512 even = p < k ? _mm512_maskz_loadu_ps(mask, x + p * sp) : _mm512_setzero_ps();
    const __m512 odd = p + 1 < k ? _mm512_maskz_loadu_ps(mask, x + (p + 1) * sp)
                                 : _mm512_setzero_ps();
    return _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

/* Ap rows [i0, i1): op(A) = A row-major (sp == 1) or A^T (si == 1)
 * vectorised, else scalar. */
FASTNN_BF16_TARGET static void fastnn_bf16_pack_a(const float *A, ptrdiff_t si, ptrdiff_t sp,
                                                  ptrdiff_t m, ptrdiff_t k, ptrdiff_t kk,
                                                  ptrdiff_t i0, ptrdiff_t i1, uint16_t *Ap)
{
    if (sp != 1 && si == 1 && (i1 - i0) % 16 == 0) {
        /* A^T: rows p and p + 1 of A (16 of its columns at a time, which are
         * rows of op(A)) become 16 pairs; 16 such vectors (32 values of p)
         * transposed are 64 contiguous bytes of 16 rows of Ap */
        const ptrdiff_t kq = kk / 2;
        for (ptrdiff_t h = i0; h < i1; h += 16) {
            const ptrdiff_t cols = m - h;
            const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF
                                   : cols > 0 ? (__mmask16)((1u << cols) - 1) : 0;
            for (ptrdiff_t q0 = 0; q0 < kq; q0 += 16) {
                __m512 v[16];       /* pairs of bf16 as 32-bit lanes */
                for (int t = 0; t < 16; t++)
                    v[t] = _mm512_castsi512_ps(fastnn_bf16_pairs(A + h, sp, 2 * (q0 + t), k, mask));
                fastnn_transpose16(v);
                const ptrdiff_t left = kq - q0;     /* pairs of this group inside kk */
                const __mmask32 words = left >= 16 ? (__mmask32)0xFFFFFFFFu
                                                   : (__mmask32)((1u << (2 * left)) - 1);
                for (int j = 0; j < 16; j++)
                    _mm512_mask_storeu_epi16((void *)(Ap + (h + j) * kk + 2 * q0), words,
                                             _mm512_castps_si512(v[j]));
            }
        }
        return;
    }
    if (sp != 1) {
        fastnn_bf16_pack_a_scalar(A, si, sp, m, k, kk, i0, i1, Ap);
        return;
    }
    for (ptrdiff_t i = i0; i < i1; i++) {
        uint16_t *row = Ap + i * kk;
        if (i >= m) {
            memset(row, 0, (size_t)kk * sizeof(uint16_t));
            continue;
        }
        const float *a = A + i * si;
        ptrdiff_t p = 0;
        for (; p + 32 <= k; p += 32)
            _mm512_storeu_si512((void *)(row + p), fastnn_bf16_cvt32(a + p, 32));
        if (p < k) {    /* the rest of k and the padding up to kk (kk - p <= 32 at AMX's step) */
            const __m512i v = fastnn_bf16_cvt32(a + p, k - p);
            const ptrdiff_t w = kk - p < 32 ? kk - p : 32;
            _mm512_mask_storeu_epi16((void *)(row + p), (__mmask32)(w >= 32 ? 0xFFFFFFFFu
                                     : (1u << w) - 1), v);
            p += w;
        }
        for (; p < kk; p++) row[p] = 0;
    }
}

/* Bp groups [g0, g1): op(B) = B row-major (sj == 1) vectorised: rows 2q and
 * 2q + 1 of 16 columns converted together and interleaved into pairs; B^T
 * (sp == 1) converted row by row and transposed in registers. */
FASTNN_BF16_TARGET static void fastnn_bf16_pack_b(const float *B, ptrdiff_t sp, ptrdiff_t sj,
                                                  ptrdiff_t k, ptrdiff_t n, ptrdiff_t kk,
                                                  ptrdiff_t g0, ptrdiff_t g1, uint16_t *Bp)
{
    const ptrdiff_t kq = kk / 2;
    if (sj != 1 && sp == 1) {
        /* B^T: a pair is two neighbours in a row of B (a column of op(B));
         * 32 values of p of the group's 16 rows, converted and transposed,
         * are its 16 pair vectors */
        for (ptrdiff_t g = g0; g < g1; g++) {
            uint16_t *panel = Bp + g * kq * 32;
            for (ptrdiff_t q0 = 0; q0 < kq; q0 += 16) {
                __m512 v[16];       /* pairs of bf16 as 32-bit lanes */
                for (int jj = 0; jj < 16; jj++)
                    v[jj] = 16 * g + jj < n ? _mm512_castsi512_ps(fastnn_bf16_cvt32(
                                                  B + (16 * g + jj) * sj + 2 * q0, k - 2 * q0))
                                            : _mm512_setzero_ps();
                fastnn_transpose16(v);
                const int left = kq - q0 < 16 ? (int)(kq - q0) : 16;
                for (int t = 0; t < left; t++)
                    _mm512_store_ps(panel + (q0 + t) * 32, v[t]);
            }
        }
        return;
    }
    if (sj != 1) {
        fastnn_bf16_pack_b_scalar(B, sp, sj, k, n, kk, g0, g1, Bp);
        return;
    }
    for (ptrdiff_t g = g0; g < g1; g++) {
        uint16_t *panel = Bp + g * kq * 32;
        const ptrdiff_t cols = n - 16 * g;
        const __mmask16 mask = cols >= 16 ? (__mmask16)0xFFFF
                               : cols > 0 ? (__mmask16)((1u << cols) - 1) : 0;
        for (ptrdiff_t q = 0; q < kq; q++)
            _mm512_store_si512((void *)(panel + q * 32),
                               fastnn_bf16_pairs(B + 16 * g, sp, 2 * q, k, mask));
    }
}
#else
#define fastnn_bf16_pack_a fastnn_bf16_pack_a_scalar
#define fastnn_bf16_pack_b fastnn_bf16_pack_b_scalar
#endif

/* ---- AVX512_BF16: 8 x 32 blocks of C in 16 zmm, one vdpbf16ps per pair ---- */
#if FASTNN_BF16_AVX512
/* C[i0:i1, j0:j1] (C row-major, ldc) from Ap, Bp; i0, j0 multiples of 32
 * (the packing covers whole 32-row and 32-column blocks). */
FASTNN_BF16_TARGET static void fastnn_bf16_avx512_block(const uint16_t *Ap, const uint16_t *Bp,
                                                        ptrdiff_t kk, ptrdiff_t i0, ptrdiff_t i1,
                                                        ptrdiff_t j0, ptrdiff_t j1, float *C,
                                                        ptrdiff_t ldc)
{
    const ptrdiff_t kq = kk / 2;
    for (ptrdiff_t jb = j0; jb < j1; jb += 32) {
        const uint16_t *b0 = Bp + (jb / 16) * kq * 32, *b1 = b0 + kq * 32;
        const int cols = (int)(j1 - jb < 32 ? j1 - jb : 32);
        const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
        const __mmask16 m1 = cols >= 32 ? (__mmask16)0xFFFF
                             : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
        for (ptrdiff_t ib = i0; ib < i1; ib += 8) {
            const uint32_t *a = (const uint32_t *)(const void *)(Ap + ib * kk);
            __m512 c[8][2];
            for (int r = 0; r < 8; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
            for (ptrdiff_t q = 0; q < kq; q++) {
                const __m512bh x0 = (__m512bh)_mm512_load_si512((const void *)(b0 + q * 32));
                const __m512bh x1 = (__m512bh)_mm512_load_si512((const void *)(b1 + q * 32));
                for (int r = 0; r < 8; r++) {
                    const __m512bh y = (__m512bh)_mm512_set1_epi32((int)a[r * kq + q]);
                    c[r][0] = _mm512_dpbf16_ps(c[r][0], y, x0);
                    c[r][1] = _mm512_dpbf16_ps(c[r][1], y, x1);
                }
            }
            const int rows = (int)(i1 - ib < 8 ? i1 - ib : 8);
            for (int r = 0; r < rows; r++) {
                _mm512_mask_storeu_ps(C + (ib + r) * ldc + jb, m0, c[r][0]);
                if (m1)
                    _mm512_mask_storeu_ps(C + (ib + r) * ldc + jb + 16, m1, c[r][1]);
            }
        }
    }
}
#endif

/* ---- AMX-BF16: 32 x 32 blocks of C in four tiles ---- */
#if FASTNN_BF16_AMX
#define FASTNN_AMX_TARGET \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))

struct fastnn_tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Ask Linux for the AMX tile data state once per process (before any tile
 * instruction, in any thread).  Returns 0 when granted, else an errno. */
static int fastnn_bf16_amx_request(void)
{
#if defined(SYS_arch_prctl)
    const long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XTILEDATA = 18;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA) != 0)
        return errno ? errno : EPERM;
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &features) != 0)
        return errno ? errno : EPERM;
    return (features >> XTILEDATA) & 1 ? 0 : EPERM;
#else
    return ENOSYS;
#endif
}

/* C[i0:i1, j0:j1] from Ap, Bp (kk a multiple of 32); i0, j0 multiples of 32.
 * Loads the tile configuration itself (whatever thread runs it) and
 * releases the tiles at the end. */
FASTNN_AMX_TARGET static void fastnn_bf16_amx_block(const uint16_t *Ap, const uint16_t *Bp,
                                                    ptrdiff_t kk, ptrdiff_t i0, ptrdiff_t i1,
                                                    ptrdiff_t j0, ptrdiff_t j1, float *C,
                                                    ptrdiff_t ldc)
{
    struct fastnn_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    /* GCC 12 declares ldtilecfg's operand as 8 bytes: without this the
     * stores of rows/colsb above may be dropped */
    __asm__ volatile("" : : "m"(cfg) : "memory");
    _tile_loadconfig(&cfg);
    float edge[32 * 32] __attribute__((aligned(64)));
    const ptrdiff_t kq = kk / 2, steps = kk / 32, a_stride = kk * 2;
    for (ptrdiff_t jb = j0; jb < j1; jb += 32) {
        const uint16_t *b0 = Bp + (jb / 16) * kq * 32, *b1 = b0 + kq * 32;
        for (ptrdiff_t ib = i0; ib < i1; ib += 32) {
            const uint16_t *a0 = Ap + ib * kk, *a1 = a0 + 16 * kk;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (ptrdiff_t s = 0; s < steps; s++) {
                _tile_loadd(4, a0 + 32 * s, a_stride);
                _tile_loadd(6, b0 + 512 * s, 64);
                _tile_loadd(7, b1 + 512 * s, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_loadd(5, a1 + 32 * s, a_stride);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            /* the tiles go to an L1 buffer, then to C with vector stores:
             * tile stores straight to C's rows measured 17% slower at
             * k = 128 (784x256x128, one thread) */
            _tile_stored(0, edge, 128);
            _tile_stored(1, edge + 16, 128);
            _tile_stored(2, edge + 16 * 32, 128);
            _tile_stored(3, edge + 16 * 32 + 16, 128);
            float *c = C + ib * ldc + jb;
            const ptrdiff_t rows = i1 - ib < 32 ? i1 - ib : 32;
            const ptrdiff_t cols = j1 - jb < 32 ? j1 - jb : 32;
            const __mmask16 m0 = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
            const __mmask16 m1 = cols >= 32 ? (__mmask16)0xFFFF
                                 : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
            for (ptrdiff_t r = 0; r < rows; r++) {
                _mm512_mask_storeu_ps(c + r * ldc, m0, _mm512_load_ps(edge + r * 32));
                if (m1)
                    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, _mm512_load_ps(edge + r * 32 + 16));
            }
        }
    }
    _tile_release();
}
#else
static inline int fastnn_bf16_amx_request(void) { return ENOSYS; }
#endif

/* C[i0:i1, j0:j1] on a hardware path from the packed operands (bf16.pxi
 * calls it per output tile, with the team). */
static inline void fastnn_bf16_block(int path, const uint16_t *Ap, const uint16_t *Bp,
                                     ptrdiff_t kk, ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t j0,
                                     ptrdiff_t j1, float *C, ptrdiff_t ldc)
{
#if FASTNN_BF16_AMX
    if (path == FASTNN_BF16_AMXBF16) {
        fastnn_bf16_amx_block(Ap, Bp, kk, i0, i1, j0, j1, C, ldc);
        return;
    }
#endif
#if FASTNN_BF16_AVX512
    if (path == FASTNN_BF16_AVX512BF16) {
        fastnn_bf16_avx512_block(Ap, Bp, kk, i0, i1, j0, j1, C, ldc);
        return;
    }
#endif
    (void)path; (void)Ap; (void)Bp; (void)kk; (void)i0; (void)i1; (void)j0; (void)j1; (void)C;
    (void)ldc;
}

#endif
