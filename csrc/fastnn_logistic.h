/* Logistic regression's loss and gradient, float32 (fastnn/_kernels/logistic.pxi).
 *
 * fastnn_log1pf_unit: log1p(e) for e in [0, 1] (e = exp(-|z|)), branch-free,
 * so that a loop over rows vectorises; its AVX-512 twin fastnn_log1p16_unit.
 *
 * fastnn_logistic_chunk16_f (AVX-512 builds): a chunk of rows in one pass,
 * sixteen rows at a time: their logits (sixteen dot products in registers,
 * reduced by a fixed tree of shuffles into one vector of sixteen logits),
 * the loss and residual on that vector, and the group's part of the
 * gradient X^T r with the gradient's columns held in registers, while the
 * sixteen rows are in L1.  Every sum has a fixed order that depends on the
 * shape alone.
 */
#ifndef FASTNN_LOGISTIC_H
#define FASTNN_LOGISTIC_H

#include "fastnn_simd.h"

/* Taylor coefficients of atanh(s)/s - 1 in s^2: 1/3, 1/5, ..., 1/15. */
#define FASTNN_L1P_C1 3.33333343e-1f
#define FASTNN_L1P_C2 2.00000003e-1f
#define FASTNN_L1P_C3 1.42857149e-1f
#define FASTNN_L1P_C4 1.11111112e-1f
#define FASTNN_L1P_C5 9.09090936e-2f
#define FASTNN_L1P_C6 7.69230798e-2f
#define FASTNN_L1P_C7 6.66666701e-2f
/* Below this, log1p(e) rounds to e in float32 (e^2/2 < half an ulp of e). */
#define FASTNN_L1P_TINY 0x1p-25f

/* log1p(e) in float32 for 0 <= e <= 1 (or NaN, which it returns):
 * log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3], so
 * log1p(e) = 2s + 2s * s^2 (1/3 + s^2/5 + ... + s^12/15); the series' next
 * term is below 2^-27 of the sum.  No cancellation anywhere, so it keeps its
 * relative accuracy down to the subnormals, where it returns e itself.
 * Within 2 ulp of the exact value (tested: tests/test_exp.py). */
static inline float fastnn_log1pf_unit(float e)
{
    float s = e / (2.0f + e);
    float s2 = s * s, s4 = s2 * s2;
    float p = (FASTNN_L1P_C1 + FASTNN_L1P_C2 * s2) + s4 * (FASTNN_L1P_C3 + FASTNN_L1P_C4 * s2);
    float p2 = (FASTNN_L1P_C5 + FASTNN_L1P_C6 * s2) + s4 * FASTNN_L1P_C7;
    p = p + (s4 * s4) * p2;
    float two_s = s + s;
    float y = two_s + two_s * (s2 * p);
    return e < FASTNN_L1P_TINY ? e : y;     /* NaN compares false: y is NaN */
}

/* out[k] = log1p(x[k]) for 0 <= x[k] <= 1 (its accuracy test). */
static inline void fastnn_log1p_unit_f(const float *x, float *out, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++)
        out[k] = fastnn_log1pf_unit(x[k]);
}

#if defined(__AVX512F__)
/* fastnn_log1pf_unit on 16 lanes: the same operations in the same order. */
static inline __m512 fastnn_log1p16_unit(__m512 e)
{
    const __m512 s = _mm512_div_ps(e, _mm512_add_ps(_mm512_set1_ps(2.0f), e));
    const __m512 s2 = _mm512_mul_ps(s, s), s4 = _mm512_mul_ps(s2, s2);
    const __m512 c12 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_L1P_C2), s2, _mm512_set1_ps(FASTNN_L1P_C1));
    const __m512 c34 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_L1P_C4), s2, _mm512_set1_ps(FASTNN_L1P_C3));
    const __m512 c56 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_L1P_C6), s2, _mm512_set1_ps(FASTNN_L1P_C5));
    const __m512 p2 = _mm512_fmadd_ps(s4, _mm512_set1_ps(FASTNN_L1P_C7), c56);
    __m512 p = _mm512_fmadd_ps(s4, c34, c12);
    p = _mm512_fmadd_ps(_mm512_mul_ps(s4, s4), p2, p);
    const __m512 two_s = _mm512_add_ps(s, s);
    const __m512 y = _mm512_fmadd_ps(two_s, _mm512_mul_ps(s2, p), two_s);
    /* e < TINY (ordered compare: false for NaN, which keeps y = NaN) */
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(e, _mm512_set1_ps(FASTNN_L1P_TINY), _CMP_LT_OQ), e);
}

static void fastnn_log1p_unit16_f(const float *x, float *out, ptrdiff_t n)
{
    ptrdiff_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(out + k, fastnn_log1p16_unit(_mm512_loadu_ps(x + k)));
    if (k < n) {
        const __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        _mm512_mask_storeu_ps(out + k, m, fastnn_log1p16_unit(_mm512_maskz_loadu_ps(m, x + k)));
    }
}
#endif

/* Logistic loss and residual of n <= 1000 rows from their logits z, float32
 * (the loop of the builds without AVX-512): r[i] = w_i (sigmoid(z_i) - t_i),
 * and returns, in double, sum_i w_i (max(z_i, 0) - t_i z_i + log1p(exp(-|z_i|)));
 * sw NULL: w_i = 1; e is scratch for n floats.  With q = e / (1 + e),
 * sigmoid - t is (1 - t) - q for z >= 0 and q - t below: no cancellation
 * where sigmoid rounds to 1.  max(z, 0) - t z is exact in double (a product
 * of two floats); the exp and log1p are the vectorised float32 ones. */
static inline double fastnn_logistic_rows_f(const float *z, const float *t, const float *sw,
                                     float *r, float *e, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++)
        e[i] = fastnn_expf_nonpositive(-fabsf(z[i]));
    double total = 0;
#pragma omp simd reduction(+:total)
    for (ptrdiff_t i = 0; i < n; i++) {
        float zi = z[i], ti = t[i], ei = e[i];
        float q = ei / (1.0f + ei);
        float ri = zi >= 0 ? (1.0f - ti) - q : q - ti;
        double loss = ((double)(zi > 0 ? zi : 0.0f) - (double)ti * zi) + (double)fastnn_log1pf_unit(ei);
        r[i] = sw != NULL ? ri * sw[i] : ri;
        total += sw != NULL ? (double)sw[i] * loss : loss;
    }
    return total;
}

#if defined(__AVX512F__)
enum { FASTNN_LOGISTIC_VEC_BLOCK = 8 };   /* gradient columns in registers: 8 x 16 */
enum { FASTNN_LOGISTIC_AHEAD = 8192 };    /* software prefetch distance, bytes (at least) */

/* lane j := sum of the sixteen lanes of a[j], j < 16, by a fixed tree:
 * 256-bit halves, then 128-bit quarters, pairs, single lanes; each step
 * halves the registers and doubles the rows per register (60 shuffles and
 * adds for sixteen sums, against about 16 x 8 for one reduce_add each). */
static inline __m512 fastnn_sum16x16(__m512 a[16])
{
    __m512 u[8], v[4], s[2];
    for (int i = 0; i < 8; i++)     /* u[i]: row 2i in lanes 0-7, row 2i+1 in 8-15 */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)     /* v[i]: quarter q holds row 4i + q */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) {   /* s[i] quarter q: row 8i + q (lanes 0-1), 8i + 4 + q (2-3) */
        const __m512d x = _mm512_castps_pd(v[2 * i]), y = _mm512_castps_pd(v[2 * i + 1]);
        s[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* lane 4q + m: row 4m + q */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], 0x88),
                                   _mm512_shuffle_ps(s[0], s[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, t);
}

/* The logits x_j . w + b of the 16 rows at x[0..15] (pointers), d columns:
 * d / 16 vectors per row (the last masked by `tail`), one accumulator per
 * row, so sixteen independent chains of multiply-adds. */
static inline __m512 fastnn_logits16(const float *const x[16], const float *w, ptrdiff_t d,
                                     __mmask16 tail, float b)
{
    __m512 acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j++)
        acc[j] = _mm512_setzero_ps();
    ptrdiff_t k = 0;
    for (; k + 16 <= d; k += 16) {
        const __m512 wk = _mm512_loadu_ps(w + k);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[j] + k), wk, acc[j]);
    }
    if (k < d) {
        const __m512 wk = _mm512_maskz_loadu_ps(tail, w + k);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
            acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x[j] + k), wk, acc[j]);
    }
    return _mm512_add_ps(fastnn_sum16x16(acc), _mm512_set1_ps(b));
}

/* g[c0 : c0 + 16 nv] (the last vector masked by `last`) = (accumulate: +=)
 * sum_i r[i] x_i there, over the n <= 16 rows x_i = X + i d, the columns in
 * nv <= 8 registers.  With few registers (nv <= 4) the rows alternate
 * between `sets` = 8 / nv (rounded down to a power of two) sets of
 * accumulators, added at the end in a fixed tree: a single chain of
 * dependent multiply-adds per register would wait on the FMA latency. */
static inline __attribute__((always_inline)) void fastnn_grad_cols16(
    const float *X, ptrdiff_t d, const float *r, ptrdiff_t n, float *g, ptrdiff_t c0,
    const int nv, const int sets, __mmask16 last, const int accumulate)
{
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int s = 0; s < sets; s++)
#pragma GCC unroll 8
        for (int c = 0; c < nv; c++)
            acc[s][c] = _mm512_setzero_ps();
    ptrdiff_t i = 0;
    for (; i + sets <= n; i += sets) {
#pragma GCC unroll 8
        for (int s = 0; s < sets; s++) {
            const float *x = X + (i + s) * d + c0;
            const __m512 ri = _mm512_set1_ps(r[i + s]);
#pragma GCC unroll 8
            for (int c = 0; c < nv - 1; c++)
                acc[s][c] = _mm512_fmadd_ps(ri, _mm512_loadu_ps(x + 16 * c), acc[s][c]);
            acc[s][nv - 1] = _mm512_fmadd_ps(ri, _mm512_maskz_loadu_ps(last, x + 16 * (nv - 1)),
                                             acc[s][nv - 1]);
        }
    }
    for (int s = 0; s < sets && i < n; i++, s++) {    /* the last rows: sets 0, 1, ... */
        const float *x = X + i * d + c0;
        const __m512 ri = _mm512_set1_ps(r[i]);
#pragma GCC unroll 8
        for (int c = 0; c < nv - 1; c++)
            acc[s][c] = _mm512_fmadd_ps(ri, _mm512_loadu_ps(x + 16 * c), acc[s][c]);
        acc[s][nv - 1] = _mm512_fmadd_ps(ri, _mm512_maskz_loadu_ps(last, x + 16 * (nv - 1)),
                                         acc[s][nv - 1]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < nv; c++) {
        __m512 sum = acc[0][c];
        if (sets == 8)
            sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0][c], acc[1][c]),
                                              _mm512_add_ps(acc[2][c], acc[3][c])),
                                _mm512_add_ps(_mm512_add_ps(acc[4][c], acc[5][c]),
                                              _mm512_add_ps(acc[6][c], acc[7][c])));
        else if (sets == 4)
            sum = _mm512_add_ps(_mm512_add_ps(acc[0][c], acc[1][c]),
                                _mm512_add_ps(acc[2][c], acc[3][c]));
        else if (sets == 2)
            sum = _mm512_add_ps(acc[0][c], acc[1][c]);
        float *gc = g + c0 + 16 * c;
        if (c < nv - 1)
            _mm512_storeu_ps(gc, accumulate ? _mm512_add_ps(_mm512_loadu_ps(gc), sum) : sum);
        else
            _mm512_mask_storeu_ps(gc, last, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(last, gc), sum) : sum);
    }
}

/* One column block of nv vectors: nv a constant in each call below. */
static void fastnn_grad_block16(const float *X, ptrdiff_t d, const float *r, ptrdiff_t n,
                                float *g, ptrdiff_t c0, int nv, __mmask16 last, int accumulate)
{
#define FASTNN_GRAD_CASE(nv_, sets_)                                                         \
    case nv_:                                                                                 \
        if (accumulate)                                                                       \
            fastnn_grad_cols16(X, d, r, n, g, c0, nv_, sets_, last, 1);                       \
        else                                                                                  \
            fastnn_grad_cols16(X, d, r, n, g, c0, nv_, sets_, last, 0);                       \
        break;
    switch (nv) {
    FASTNN_GRAD_CASE(1, 8)
    FASTNN_GRAD_CASE(2, 4)
    FASTNN_GRAD_CASE(3, 2)
    FASTNN_GRAD_CASE(4, 2)
    FASTNN_GRAD_CASE(5, 1)
    FASTNN_GRAD_CASE(6, 1)
    FASTNN_GRAD_CASE(7, 1)
    default:
    FASTNN_GRAD_CASE(8, 1)
    }
#undef FASTNN_GRAD_CASE
}

/* Rows X[0:n] of logistic_loss_grad, float32, on AVX-512: g[0:d] =
 * sum_i w_i r_i x_i, gb[0] = sum_i w_i r_i (in double), returns
 * sum_i w_i l_i (in double); T and sw (NULL: w_i = 1) point at the rows'
 * targets and weights.  Sixteen rows at a time, each group in one pass
 * while it is in L1: its logits (fastnn_logits16), then per row
 * r = sigmoid(z) - t as (1 - t) - q (z >= 0) or q - t, q = e / (1 + e),
 * e = exp(-|z|) (no cancellation where sigmoid rounds to 1), and
 * l = (max(z, 0) - t z) + log1p(e), the first term exact in double, the
 * exp and log1p vectorised in float32; then g += X_group^T r.  The last
 * group's lanes past n compute on copies of row n - 1 (valid memory) and
 * are masked out of every sum.  g's sum is in row-group order, each group's
 * part in the fixed order of fastnn_grad_cols16: the result depends on n
 * and d alone.  Software prefetch during the gradient pass only (below);
 * prefetches during the logits pass, 8-64 KiB ahead into L1 or L2, or of
 * the whole next chunk (what the earlier code did), measured no faster or
 * slower than the hardware's streams alone. */
static double fastnn_logistic_chunk16_f(const float *X, ptrdiff_t d, const float *w, float b,
                                        const float *T, const float *sw, ptrdiff_t n, float *g,
                                        double *gb)
{
    float r[16];
    const ptrdiff_t n_vec = (d + 15) / 16;
    const ptrdiff_t group_bytes = 16 * d * (ptrdiff_t)sizeof(float);
    /* prefetch only for groups of at most 8 KiB (d <= 128): the group
     * 8 KiB ahead, while the gradient pass, which reads this group from L1,
     * sends no requests to L2 and so does not drive the hardware's streams
     * (measured, 52 MB of X, one core, medians of 5 in ns per element:
     * d = 128: 0.154 against 0.180 without; d = 32: 0.177 against 0.26;
     * but d = 300: 0.174 against 0.159, d = 1000: 0.22 against 0.18, where a
     * whole group in L1 is too much) */
    const ptrdiff_t ahead = FASTNN_LOGISTIC_AHEAD;
    const int prefetch = group_bytes <= FASTNN_LOGISTIC_AHEAD;
    const __mmask16 tail = (d % 16) ? (__mmask16)((1u << (d % 16)) - 1) : (__mmask16)0xFFFF;
    __m512d loss_lo = _mm512_setzero_pd(), loss_hi = loss_lo, rs_lo = loss_lo, rs_hi = loss_lo;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += 16) {
        const int rows = n - i0 < 16 ? (int)(n - i0) : 16;
        const __mmask16 live = (__mmask16)((1u << rows) - 1);
        const float *x[16];
        for (int j = 0; j < 16; j++)
            x[j] = X + (i0 + (j < rows ? j : rows - 1)) * d;
        const __m512 z = fastnn_logits16(x, w, d, tail, b);
        const __m512 t = _mm512_maskz_loadu_ps(live, T + i0);
        const __m512 e = fastnn_exp16_nonpositive(
            _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(z), _mm512_set1_epi32((int)0x80000000u))));
        const __m512 one = _mm512_set1_ps(1.0f);
        const __m512 q = _mm512_div_ps(e, _mm512_add_ps(one, e));
        const __mmask16 nonneg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
        __m512 res = _mm512_mask_sub_ps(_mm512_sub_ps(q, t), nonneg, _mm512_sub_ps(one, t), q);
        /* the loss in double: (max(z, 0) - t z) + log1p(e) */
        const __m512 l1p = fastnn_log1p16_unit(e);
        const __m512 zpos = _mm512_maskz_mov_ps(
            _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GT_OQ), z);
        const __m512d z_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(z));
        const __m512d z_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(z, 1));
        const __m512d t_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(t));
        const __m512d t_hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(t, 1));
        __m512d l_lo = _mm512_add_pd(
            _mm512_fnmadd_pd(t_lo, z_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(zpos))),
            _mm512_cvtps_pd(_mm512_castps512_ps256(l1p)));
        __m512d l_hi = _mm512_add_pd(
            _mm512_fnmadd_pd(t_hi, z_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(zpos, 1))),
            _mm512_cvtps_pd(_mm512_extractf32x8_ps(l1p, 1)));
        if (sw != NULL) {
            const __m512 wv = _mm512_maskz_loadu_ps(live, sw + i0);
            res = _mm512_mul_ps(res, wv);
            l_lo = _mm512_mul_pd(l_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(wv)));
            l_hi = _mm512_mul_pd(l_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(wv, 1)));
        }
        res = _mm512_maskz_mov_ps(live, res);   /* lanes past n: 0, even from NaN */
        _mm512_storeu_ps(r, res);
        loss_lo = _mm512_mask_add_pd(loss_lo, (__mmask8)live, loss_lo, l_lo);
        loss_hi = _mm512_mask_add_pd(loss_hi, (__mmask8)(live >> 8), loss_hi, l_hi);
        rs_lo = _mm512_add_pd(rs_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(res)));
        rs_hi = _mm512_add_pd(rs_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(res, 1)));
        /* g += X_group^T r, one block of at most 8 x 16 columns at a time */
        /* the rows FASTNN_LOGISTIC_AHEAD bytes ahead into L1 */
        if (prefetch)
            for (ptrdiff_t p = 0; p < group_bytes; p += 64)
                _mm_prefetch((const char *)(X + i0 * d) + ahead + p, _MM_HINT_T0);
        for (ptrdiff_t v0 = 0; v0 < n_vec; v0 += FASTNN_LOGISTIC_VEC_BLOCK) {
            const int nv = n_vec - v0 < FASTNN_LOGISTIC_VEC_BLOCK ? (int)(n_vec - v0)
                                                                  : FASTNN_LOGISTIC_VEC_BLOCK;
            const __mmask16 last = v0 + nv == n_vec ? tail : (__mmask16)0xFFFF;
            fastnn_grad_block16(X + i0 * d, d, r, rows, g, 16 * v0, nv, last, i0 > 0);
        }
    }
    gb[0] = _mm512_reduce_add_pd(_mm512_add_pd(rs_lo, rs_hi));
    return _mm512_reduce_add_pd(_mm512_add_pd(loss_lo, loss_hi));
}
#endif

/* The rows X[0:n] (n <= 1024) of logistic_loss_grad, float32, as
 * fastnn_logistic_chunk16_f describes; without AVX-512: the logits four rows
 * at a time (fastnn_matvec_f), fastnn_logistic_rows_f, and the gradient four
 * rows per pass over g (fastnn_vecmat_f). */
static double fastnn_logistic_block_f(const float *X, ptrdiff_t d, const float *w, double b,
                                      const float *T, const float *sw, ptrdiff_t n, float *g,
                                      double *gb, const float *ahead, ptrdiff_t n_ahead)
{
#if defined(__AVX512F__)
    (void)ahead;
    (void)n_ahead;
    return fastnn_logistic_chunk16_f(X, d, w, (float)b, T, sw, n, g, gb);
#else
    float z[1024], r[1024], e[1024];
    fastnn_matvec_f(X, d, w, b, n, z);
    double total = fastnn_logistic_rows_f(z, T, sw, r, e, n);
    double r_sum = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        r_sum += r[i];
    fastnn_vecmat_f(X, d, r, n, g, ahead, n_ahead);
    gb[0] = r_sum;
    return total;
#endif
}

/* out = log1p(x) for 0 <= x <= 1 through the form the kernel uses. */
static void fastnn_log1p_unit_kernel_f(const float *x, float *out, ptrdiff_t n)
{
#if defined(__AVX512F__)
    fastnn_log1p_unit16_f(x, out, n);
#else
    fastnn_log1p_unit_f(x, out, n);
#endif
}

#endif
