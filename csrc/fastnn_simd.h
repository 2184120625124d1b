/* Vectorisable inner loops of the row kernels (softmax, cross-entropy, logistic).
 *
 * libm's expf is a scalar call, which keeps GCC from vectorising a loop that
 * contains it; fastnn_expf_nonpositive below is branch-free arithmetic that
 * it can.  The reductions use `omp simd reduction`, which vectorises a sum or
 * a max in a fixed, compile-time order without any value-changing compiler
 * flag (the package is built without -ffast-math / -fassociative-math), so
 * the results do not depend on the thread count.
 *
 * setup.py compiles the whole kernel module once per instruction-set level
 * (-march=x86-64, x86-64-v3, x86-64-v4 on x86-64 Linux) and fastnn/_kernels.py
 * imports the best one the CPU supports, so these loops are built for the
 * module's own -march.
 */
#ifndef FASTNN_SIMD_H
#define FASTNN_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define FASTNN_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define FASTNN_PREFETCH(p) ((void)(p))
#endif

/* A hint to bring the `bytes` bytes at p into cache; never faults. */
static inline void fastnn_prefetch(const void *p, ptrdiff_t bytes)
{
    for (ptrdiff_t b = 0; b < bytes; b += 64)
        FASTNN_PREFETCH((const char *)p + b);
}

/* The instruction set these loops were compiled for. */
static const char *fastnn_simd_variant(void)
{
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
    return "x86-64-v4 (AVX-512)";
#elif defined(__AVX2__) && defined(__FMA__)
    return "x86-64-v3 (AVX2+FMA)";
#elif defined(__x86_64__)
    return "baseline (x86-64, SSE2)";
#else
    return "baseline";
#endif
}

/* The constants of the float32 exp, shared by its scalar and AVX-512 forms:
 * ln 2 split in two so that n * LN2_HI is exact, and the Cephes minimax
 * coefficients of exp(r) = 1 + r + r^2 (P0 + P1 r + ... + P5 r^5). */
#define FASTNN_EXP_LOG2E 1.44269504088896341f
#define FASTNN_EXP_LN2_HI 0.693359375f
#define FASTNN_EXP_LN2_LO (-2.12194440e-4f)
#define FASTNN_EXP_P0 5.0000001201e-1f
#define FASTNN_EXP_P1 1.6666665459e-1f
#define FASTNN_EXP_P2 4.1665795894e-2f
#define FASTNN_EXP_P3 8.3334519073e-3f
#define FASTNN_EXP_P4 1.3981999507e-3f
#define FASTNN_EXP_P5 1.9875691500e-4f

/* exp(x) in float32 for the arguments every kernel exponentiates: x <= 0 (a
 * row shifted by its max, z - max(z), or -|z|) or NaN.  Within 2 ulp (tested),
 * NaN in -> NaN out, subnormal and then 0 below -87.3.
 * exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]
 * (ln 2 split in two so that n * LN2_HI is exact); exp(r) = 1 + r + r^2 p(r)
 * with the Cephes minimax p, evaluated by Estrin's scheme (three independent
 * pairs: a chain of three multiply-adds instead of Horner's six).  2^n is
 * applied in two halves so that neither factor underflows before the
 * product does.  Exact up to x = 88.7 too, but with no guard above (about
 * 20% of the time: 0.57-0.60 against 0.72-0.77 ns per element with Horner
 * and the guard, one core, in L1); fastnn_expf below adds it. */
static inline float fastnn_expf_nonpositive(float x)
{
    const float LOG2E = FASTNN_EXP_LOG2E;
    const float LN2_HI = FASTNN_EXP_LN2_HI;
    const float LN2_LO = FASTNN_EXP_LN2_LO;
    const float SHIFTER = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    /* Straight-line code only (selects, no branches), or GCC won't vectorise.
     * NaN compares false and is clamped here (keeps the int conversion
     * defined); it is restored at the end. */
    float xc = x > -104.0f ? x : -104.0f;
    float nf = (xc * LOG2E + SHIFTER) - SHIFTER;
    int32_t n = (int32_t)nf;
    float r = xc - nf * LN2_HI;
    r = r - nf * LN2_LO;
    float r2 = r * r, r4 = r2 * r2;
    float p01 = FASTNN_EXP_P0 + FASTNN_EXP_P1 * r;
    float p23 = FASTNN_EXP_P2 + FASTNN_EXP_P3 * r;
    float p45 = FASTNN_EXP_P4 + FASTNN_EXP_P5 * r;
    float p = (p01 + p23 * r2) + p45 * r4;
    p = p * r2 + (r + 1.0f);
    int32_t half = n >> 1;
    int32_t bits1 = (half + 127) << 23, bits2 = (n - half + 127) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    float y = (p * scale1) * scale2;
    return x == x ? y : x;
}

/* exp(x) over the whole float32 range: +inf beyond 88.72 (NaN stays NaN). */
static inline float fastnn_expf(float x)
{
    return fastnn_expf_nonpositive(x > 89.0f ? 89.0f : x);
}

/* out[k] = exp(x[k]) for k < n (the full-range form, for its accuracy test). */
static void fastnn_exp_f(const float *x, float *out, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++)
        out[k] = fastnn_expf(x[k]);
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* fastnn_expf_nonpositive on 16 lanes with AVX-512's own instructions: the
 * rounding to an integer in one vrndscaleps, and the scaling by 2^n in one
 * vscalefps, a single correctly rounded step into the subnormals (in place of
 * the integer arithmetic and two products).  The same reduction and
 * polynomial, so the same accuracy (tested: exp_shifted_f32); about 30% fewer
 * instructions.  max(-104, x) passes NaN on (it returns its second operand
 * when either is NaN), and NaN propagates to the result. */
static inline __m512 fastnn_exp16_nonpositive(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    const __m512 nf = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(FASTNN_EXP_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(FASTNN_EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(FASTNN_EXP_LN2_LO), r);
    const __m512 r2 = _mm512_mul_ps(r, r), r4 = _mm512_mul_ps(r2, r2);
    const __m512 p01 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_EXP_P1), r,
                                       _mm512_set1_ps(FASTNN_EXP_P0));
    const __m512 p23 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_EXP_P3), r,
                                       _mm512_set1_ps(FASTNN_EXP_P2));
    const __m512 p45 = _mm512_fmadd_ps(_mm512_set1_ps(FASTNN_EXP_P5), r,
                                       _mm512_set1_ps(FASTNN_EXP_P4));
    __m512 p = _mm512_fmadd_ps(p45, r4, _mm512_fmadd_ps(p23, r2, p01));
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, nf);
}

/* e[k] = exp(z[k] - m) for k < c, m >= every z[k] (the row max; e may be
 * NULL: sum only); returns the sum (16 lane sums, added in a fixed order). */
static float fastnn_exp_shifted_sum_f(const float *z, float *e, ptrdiff_t c, float m)
{
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    ptrdiff_t k = 0;
    for (; k + 16 <= c; k += 16) {
        const __m512 v = fastnn_exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(z + k), mv));
        if (e != NULL)
            _mm512_storeu_ps(e + k, v);
        sum = _mm512_add_ps(sum, v);
    }
    if (k < c) {    /* the last 1-15: lanes beyond c are zeroed before they count */
        const __mmask16 tail = (__mmask16)((1u << (c - k)) - 1);
        const __m512 v = _mm512_maskz_mov_ps(
            tail, fastnn_exp16_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, z + k), mv)));
        if (e != NULL)
            _mm512_mask_storeu_ps(e + k, tail, v);
        sum = _mm512_add_ps(sum, v);
    }
    return _mm512_reduce_add_ps(sum);
}
#else
/* e[k] = exp(z[k] - m) for k < c, m >= every z[k] (the row max; e may be
 * NULL: sum only); returns the sum. */
static float fastnn_exp_shifted_sum_f(const float *z, float *e, ptrdiff_t c,
                                                    float m)
{
    float s = 0.0f;
    if (e == NULL) {
#pragma omp simd reduction(+:s)
        for (ptrdiff_t k = 0; k < c; k++)
            s += fastnn_expf_nonpositive(z[k] - m);
    } else {
#pragma omp simd reduction(+:s)
        for (ptrdiff_t k = 0; k < c; k++) {
            float v = fastnn_expf_nonpositive(z[k] - m);
            e[k] = v;
            s += v;
        }
    }
    return s;
}
#endif

/* float64 keeps libm's exp (< 1 ulp), one element at a time. */
static double fastnn_exp_shifted_sum_d(const double *z, double *e, ptrdiff_t c, double m)
{
    double s = 0.0;
    for (ptrdiff_t k = 0; k < c; k++) {
        double v = exp(z[k] - m);
        if (e != NULL)
            e[k] = v;
        s += v;
    }
    return s;
}

/* x[i] = exp(x[i]) for i < n, x[i] <= 0, in place: one long loop over many
 * short rows (the cross-entropy of a few classes), where a loop per row would
 * spend most of its time in the vector loop's prologue and remainder. */
static void fastnn_exp_inplace_f(float *x, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = fastnn_expf_nonpositive(x[i]);
}

static void fastnn_exp_inplace_d(double *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = exp(x[i]);
}

/* How many of x[0:n] lie outside [0, c): one branch-free pass (an early
 * exit would keep the loop from vectorising). */
static ptrdiff_t fastnn_count_outside(const int64_t *x, ptrdiff_t n, int64_t c)
{
    ptrdiff_t bad = 0;
#pragma omp simd reduction(+:bad)
    for (ptrdiff_t i = 0; i < n; i++)
        bad += (uint64_t)x[i] >= (uint64_t)c;
    return bad;
}

/* max of z[0:c] (c >= 1).  A NaN may or may not win: either way the row's
 * exp-sum turns NaN, which is the documented NaN-row policy. */
#define FASTNN_DEFINE_MAX(name, type)                                      \
    static type name(const type *z, ptrdiff_t c)                           \
    {                                                                      \
        type m = z[0];                                                     \
        _Pragma("omp simd reduction(max:m)")                               \
        for (ptrdiff_t k = 1; k < c; k++)                                  \
            m = z[k] > m ? z[k] : m;                                       \
        return m;                                                          \
    }
FASTNN_DEFINE_MAX(fastnn_max_f, float)
FASTNN_DEFINE_MAX(fastnn_max_d, double)

/* z[i] = x_i . w + b for the n rows x_i = X + i d (b added in double).
 * Four rows at a time: one row's sum is a chain of dependent adds, four
 * independent sums keep the FMA units busy, and each load of w serves four
 * rows. */
#define FASTNN_DEFINE_MATVEC(name, type)                                   \
    static inline void name(const type *X, ptrdiff_t d, const type *w, double b,  \
                     ptrdiff_t n, type *z)                                 \
    {                                                                      \
        ptrdiff_t i = 0;                                                   \
        for (; i + 4 <= n; i += 4) {                                       \
            const type *x0 = X + i * d, *x1 = x0 + d, *x2 = x1 + d,        \
                       *x3 = x2 + d;                                       \
            type s0 = 0, s1 = 0, s2 = 0, s3 = 0;                           \
            _Pragma("omp simd reduction(+:s0,s1,s2,s3)")                   \
            for (ptrdiff_t k = 0; k < d; k++) {                            \
                s0 += x0[k] * w[k];                                        \
                s1 += x1[k] * w[k];                                        \
                s2 += x2[k] * w[k];                                        \
                s3 += x3[k] * w[k];                                        \
            }                                                              \
            z[i] = (type)(s0 + b);                                         \
            z[i + 1] = (type)(s1 + b);                                     \
            z[i + 2] = (type)(s2 + b);                                     \
            z[i + 3] = (type)(s3 + b);                                     \
        }                                                                  \
        for (; i < n; i++) {                                               \
            const type *x0 = X + i * d;                                    \
            type s0 = 0;                                                   \
            _Pragma("omp simd reduction(+:s0)")                            \
            for (ptrdiff_t k = 0; k < d; k++)                              \
                s0 += x0[k] * w[k];                                        \
            z[i] = (type)(s0 + b);                                         \
        }                                                                  \
    }
FASTNN_DEFINE_MATVEC(fastnn_matvec_f, float)
FASTNN_DEFINE_MATVEC(fastnn_matvec_d, double)

/* g[0:d] = sum_i r[i] x_i over the n rows x_i = X + i d (g is overwritten).
 * Four rows per pass over g, so g is loaded and stored a quarter as often as
 * with one rank-1 update per row.  This pass reads X from cache; the
 * n_ahead rows at `ahead` (the next ones the caller will read) are
 * prefetched along the way, so that memory keeps streaming meanwhile. */
#define FASTNN_DEFINE_VECMAT(name, type)                                   \
    static inline void name(const type *X, ptrdiff_t d, const type *r, ptrdiff_t n, \
                     type *g, const type *ahead, ptrdiff_t n_ahead)        \
    {                                                                      \
        const char *next = (const char *)ahead;                            \
        ptrdiff_t next_bytes = n_ahead * d * (ptrdiff_t)sizeof(type);      \
        ptrdiff_t group_bytes = 4 * d * (ptrdiff_t)sizeof(type);           \
        memset(g, 0, d * sizeof(type));                                    \
        ptrdiff_t i = 0;                                                   \
        for (; i + 4 <= n; i += 4) {                                       \
            const type *x0 = X + i * d, *x1 = x0 + d, *x2 = x1 + d,        \
                       *x3 = x2 + d;                                       \
            type r0 = r[i], r1 = r[i + 1], r2 = r[i + 2], r3 = r[i + 3];   \
            for (ptrdiff_t b = i / 4 * group_bytes;                        \
                 b < (i / 4 + 1) * group_bytes && b < next_bytes; b += 64) \
                FASTNN_PREFETCH(next + b);                                 \
            _Pragma("omp simd")                                            \
            for (ptrdiff_t k = 0; k < d; k++)                              \
                g[k] += (r0 * x0[k] + r1 * x1[k]) + (r2 * x2[k] + r3 * x3[k]); \
        }                                                                  \
        for (; i < n; i++) {                                               \
            const type *x0 = X + i * d;                                    \
            type r0 = r[i];                                                \
            _Pragma("omp simd")                                            \
            for (ptrdiff_t k = 0; k < d; k++)                              \
                g[k] += r0 * x0[k];                                        \
        }                                                                  \
    }
FASTNN_DEFINE_VECMAT(fastnn_vecmat_f, float)
FASTNN_DEFINE_VECMAT(fastnn_vecmat_d, double)

/* The block's rows' losses w_i (log s_i - y.z_i) into L (unless NULL; sw
 * NULL: w_i = 1); returns their sum. */
static inline double fastnn_xent_row_losses(const float *s, const double *y_dot_z,
                                            const float *sw, float *L, ptrdiff_t rows)
{
    double total = 0;
    for (ptrdiff_t j = 0; j < rows; j++) {
        double w = sw != NULL ? sw[j] : 1.0;
        double loss = log((double)s[j]) - y_dot_z[j];
        if (L != NULL)
            L[j] = (float)(w * loss);
        total += w * loss;
    }
    return total;
}

/* Fused softmax cross-entropy of n <= 1024 rows of c < FASTNN_XENT_SMALL
 * classes with class-index targets, float32: G = scale w (softmax(z) - y),
 * y = (1 - smoothing) onehot(label) + smoothing / c; L[i] = w_i l_i unless
 * L is NULL; returns sum_i w_i l_i in double.  sw NULL: w_i = 1.
 *
 * A row of a dozen classes is too short for a vector loop of its own (each
 * max and sum is a horizontal reduction, about 30 ns a row), so rows go
 * eight at a time: a block is transposed into a c x 8 buffer in which every
 * step (max, exp, sum, scaling, the target) is one vector operation across
 * the eight rows, then transposed back.  Lanes past the last row compute
 * on zero rows and are dropped.  The row sums are added in class order and,
 * unweighted without L, sum_i log s_i is taken as the logs of one product per
 * lane (at most 128 factors <= c each, so no overflow in double).  AVX-512
 * builds take sixteen rows at a time instead (fastnn_xent_labels_lanes16_f). */
enum { FASTNN_XENT_SMALL = 32, FASTNN_XENT_LANES = 8 };

#if !defined(__AVX512F__)     /* AVX-512 has the sixteen-lane form below */
static double fastnn_xent_labels_lanes8_f(const float *Z, const int64_t *labels,
                                          const float *sw, float *G, float *L, ptrdiff_t n,
                                          ptrdiff_t c, double scale, double smoothing)
{
    enum { B = FASTNN_XENT_LANES };
    float zt[FASTNN_XENT_SMALL * B], et[FASTNN_XENT_SMALL * B], pad[FASTNN_XENT_SMALL * B];
    float m[B], s[B], ws[B], hit[B], off[B], inv[B];
    int32_t lab[B];
    double y_dot_z[B], product[B];
    const float smooth_c = (float)(smoothing / c);
    const int products = sw == NULL && L == NULL;
    double total = 0;
    for (int j = 0; j < B; j++)
        product[j] = 1;
    for (ptrdiff_t i0 = 0; i0 < n; i0 += B) {
        ptrdiff_t rows = n - i0 < B ? n - i0 : B;
        const float *block = Z + i0 * c;
        if (rows < B) {                 /* the last rows, padded with zero rows */
            memset(pad, 0, sizeof pad);
            memcpy(pad, block, rows * c * sizeof(float));
            block = pad;
        }
        for (int j = 0; j < B; j++) {
            int live = j < rows;
            double w = live ? (sw != NULL ? sw[i0 + j] : 1.0) : 0.0;
            lab[j] = live ? (int32_t)labels[i0 + j] : 0;
            ws[j] = (float)(w * scale);
            hit[j] = (float)(w * scale * (1 - smoothing));
            off[j] = ws[j] * smooth_c;
        }
        /* column k of the block built in registers (strided loads), not by
         * scalar stores that a vector load would then wait on */
        for (ptrdiff_t k = 0; k < c; k++) {
#pragma omp simd
            for (int j = 0; j < B; j++)
                zt[k * B + j] = block[j * c + k];
        }
        for (int j = 0; j < B; j++)
            m[j] = zt[j];
        for (ptrdiff_t k = 1; k < c; k++) {
#pragma omp simd
            for (int j = 0; j < B; j++)
                m[j] = zt[k * B + j] > m[j] ? zt[k * B + j] : m[j];
        }
        for (int j = 0; j < B; j++)
            s[j] = 0;
        for (ptrdiff_t k = 0; k < c; k++) {
#pragma omp simd
            for (int j = 0; j < B; j++) {
                float e = fastnn_expf_nonpositive(zt[k * B + j] - m[j]);
                et[k * B + j] = e;
                s[j] += e;
            }
        }
        /* sum_k y_k (z_k - m) in double, as in the row-at-a-time path */
        for (int j = 0; j < B; j++)
            y_dot_z[j] = (1 - smoothing) * ((double)zt[lab[j] * B + j] - m[j]);
        if (smoothing != 0) {
            double z_sum[B] = {0};
            for (ptrdiff_t k = 0; k < c; k++)
                for (int j = 0; j < B; j++)
                    z_sum[j] += (double)zt[k * B + j] - m[j];
            for (int j = 0; j < B; j++)
                y_dot_z[j] += smoothing / c * z_sum[j];
        }
#pragma omp simd
        for (int j = 0; j < B; j++)
            inv[j] = ws[j] / s[j];
        for (ptrdiff_t k = 0; k < c; k++) {
#pragma omp simd
            for (int j = 0; j < B; j++)
                et[k * B + j] = et[k * B + j] * inv[j] - off[j] - (k == lab[j] ? hit[j] : 0.0f);
        }
        if (rows == B) {
            for (ptrdiff_t k = 0; k < c; k++) {
#pragma omp simd
                for (int j = 0; j < B; j++)
                    G[(i0 + j) * c + k] = et[k * B + j];
            }
        } else {
            for (ptrdiff_t j = 0; j < rows; j++)
                for (ptrdiff_t k = 0; k < c; k++)
                    G[(i0 + j) * c + k] = et[k * B + j];
        }
        if (products) {
            for (ptrdiff_t j = 0; j < rows; j++) {
                product[j] *= s[j];
                total -= y_dot_z[j];
            }
            continue;
        }
        total += fastnn_xent_row_losses(s, y_dot_z, sw != NULL ? sw + i0 : NULL,
                                        L != NULL ? L + i0 : NULL, rows);
    }
    if (products)
        for (int j = 0; j < B; j++)
            total += log(product[j]);
    return total;
}

#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* r[0:16] := its transpose (r[j] lane k = element (j, k) of a 16 x 16 block):
 * unpacks of pairs of floats, then of pairs of pairs, then two rounds of
 * 128-bit lane shuffles; 64 shuffles.  A function target, not the build's
 * -march, so that the bf16 kernels of every SIMD variant (fastnn_bf16.h,
 * called after a CPU check) transpose their pairs of bf16 with it too. */
__attribute__((target("avx512f"))) static inline void fastnn_transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* r[i] 128-bit lane q := column 4q + p of rows i - p .. i - p + 3 (p = i % 4) */
    for (int i = 0; i < 16; i += 4)
        for (int p = 0; p < 2; p++) {
            const __m512d a = _mm512_castps_pd(t[i + p]), b = _mm512_castps_pd(t[i + p + 2]);
            r[i + 2 * p] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            r[i + 2 * p + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        }
    /* column 4q + p: lane q of r[p], r[4 + p], r[8 + p], r[12 + p], in that order */
    for (int p = 0; p < 4; p++) {
        const __m512 ab_lo = _mm512_shuffle_f32x4(r[p], r[4 + p], 0x44);
        const __m512 ab_hi = _mm512_shuffle_f32x4(r[p], r[4 + p], 0xEE);
        const __m512 cd_lo = _mm512_shuffle_f32x4(r[8 + p], r[12 + p], 0x44);
        const __m512 cd_hi = _mm512_shuffle_f32x4(r[8 + p], r[12 + p], 0xEE);
        t[p] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0x88);
        t[4 + p] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0xDD);
        t[8 + p] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0x88);
        t[12 + p] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0xDD);
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}
#endif

#if defined(__AVX512F__)

/* fastnn_xent_labels_lanes8_f on AVX-512: sixteen rows per block, each
 * loaded into one register (two where c > 16) and each 16 x 16 block
 * transposed in registers (the eight-lane form's strided copies cost more
 * than its arithmetic), so that row j is lane j of every class; the same
 * steps in the same order, then transposed back and stored row by row.
 * Rows past the last are zero and never stored.  Unweighted without L, the
 * loss takes one log per call: each lane multiplies its row sums (each in
 * [1, c], c <= 31; with n <= 1024, at most 128 factors per pair of lanes,
 * below 31^128 < 2^635), and the lanes' products are combined as mantissas
 * and exponents. */
static inline __attribute__((always_inline)) double fastnn_xent_lanes16_f(
    const float *Z, const int64_t *labels, const float *sw, float *G, float *L, ptrdiff_t n,
    ptrdiff_t c, double scale, double smoothing, const int halves)
{
    enum { B = 16, AHEAD_ROWS = 2 * B };
    /* a row's classes 0-15 and 16-31 (the second half, halves = 2, for c > 16) */
    const __mmask16 half_mask[2] = {
        c >= B ? (__mmask16)0xFFFF : (__mmask16)((1u << c) - 1),
        c > B ? (__mmask16)((1u << (c - B)) - 1) : (__mmask16)0};
    const float smooth_c = (float)(smoothing / c);
    const int products = sw == NULL && L == NULL;
    const __m512d keep = _mm512_set1_pd(1 - smoothing), spread = _mm512_set1_pd(smoothing / c);
    __m512 ws = _mm512_set1_ps((float)scale);
    __m512 hit = _mm512_set1_ps((float)(scale * (1 - smoothing)));
    __m512 off = _mm512_mul_ps(ws, _mm512_set1_ps(smooth_c));
    __m512d product_lo = _mm512_set1_pd(1), product_hi = product_lo;
    __m512d y_dot_z_lo = _mm512_setzero_pd(), y_dot_z_hi = y_dot_z_lo;
    double total = 0;
    __m512 r[2 * B];
    for (ptrdiff_t i0 = 0; i0 < n; i0 += B) {
        const int rows = n - i0 < B ? (int)(n - i0) : B;
        const __mmask16 live = (__mmask16)((1u << rows) - 1);
        if (sw != NULL) {
            float w_scale[B] = {0}, w_hit[B] = {0};
            for (int j = 0; j < rows; j++) {
                w_scale[j] = (float)(sw[i0 + j] * scale);
                w_hit[j] = (float)(sw[i0 + j] * scale * (1 - smoothing));
            }
            ws = _mm512_loadu_ps(w_scale);
            hit = _mm512_loadu_ps(w_hit);
            off = _mm512_mul_ps(ws, _mm512_set1_ps(smooth_c));
        }
        const __m512i lab = _mm512_inserti64x4(
            _mm512_castsi256_si512(
                _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64((__mmask8)live, labels + i0))),
            _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64((__mmask8)(live >> 8), labels + i0 + 8)),
            1);
        /* the logits and gradient rows two blocks ahead: from memory, the
         * hardware prefetcher alone left this loop at 1.6 ns per element
         * (262144 x 10, one core), 0.55 with these, as in cache */
        for (ptrdiff_t b = 0; b < B * c * (ptrdiff_t)sizeof(float); b += 64) {
            FASTNN_PREFETCH((const char *)(Z + (i0 + AHEAD_ROWS) * c) + b);
            __builtin_prefetch((const char *)(G + (i0 + AHEAD_ROWS) * c) + b, 1, 3);
        }
        for (int h = 0; h < halves; h++) {
            for (int j = 0; j < B; j++)
                r[h * B + j] = j < rows ? _mm512_maskz_loadu_ps(half_mask[h], Z + (i0 + j) * c + h * B)
                                        : _mm512_setzero_ps();
            fastnn_transpose16(r + h * B);     /* r[k]: class k of the sixteen rows */
        }
        /* the max, then exp(z - max) in place and the row sums in class order */
        __m512 m = r[0];
        for (ptrdiff_t k = 1; k < c; k++)
            m = _mm512_max_ps(m, r[k]);
        __m512 s = _mm512_setzero_ps(), z_label = _mm512_setzero_ps();
        __m512d z_sum_lo = _mm512_setzero_pd(), z_sum_hi = z_sum_lo;
        for (ptrdiff_t k = 0; k < c; k++) {
            z_label = _mm512_mask_mov_ps(
                z_label, _mm512_cmpeq_epi32_mask(lab, _mm512_set1_epi32((int)k)), r[k]);
            if (smoothing != 0) {
                z_sum_lo = _mm512_add_pd(z_sum_lo, _mm512_sub_pd(
                    _mm512_cvtps_pd(_mm512_castps512_ps256(r[k])),
                    _mm512_cvtps_pd(_mm512_castps512_ps256(m))));
                z_sum_hi = _mm512_add_pd(z_sum_hi, _mm512_sub_pd(
                    _mm512_cvtps_pd(_mm512_extractf32x8_ps(r[k], 1)),
                    _mm512_cvtps_pd(_mm512_extractf32x8_ps(m, 1))));
            }
            r[k] = fastnn_exp16_nonpositive(_mm512_sub_ps(r[k], m));
            s = _mm512_add_ps(s, r[k]);
        }
        /* sum_k y_k (z_k - m) in double, as in the row-at-a-time path */
        __m512d ydz_lo = _mm512_mul_pd(keep, _mm512_sub_pd(
            _mm512_cvtps_pd(_mm512_castps512_ps256(z_label)),
            _mm512_cvtps_pd(_mm512_castps512_ps256(m))));
        __m512d ydz_hi = _mm512_mul_pd(keep, _mm512_sub_pd(
            _mm512_cvtps_pd(_mm512_extractf32x8_ps(z_label, 1)),
            _mm512_cvtps_pd(_mm512_extractf32x8_ps(m, 1))));
        if (smoothing != 0) {
            ydz_lo = _mm512_fmadd_pd(spread, z_sum_lo, ydz_lo);
            ydz_hi = _mm512_fmadd_pd(spread, z_sum_hi, ydz_hi);
        }
        /* the gradient: scaled softmax minus the (smoothed, weighted) target */
        const __m512 inv = _mm512_div_ps(ws, s);
        for (ptrdiff_t k = 0; k < c; k++) {
            const __mmask16 is_label = _mm512_cmpeq_epi32_mask(lab, _mm512_set1_epi32((int)k));
            const __m512 g = _mm512_sub_ps(_mm512_mul_ps(r[k], inv), off);
            r[k] = _mm512_mask_sub_ps(g, is_label, g, hit);
        }
        for (int h = 0; h < halves; h++)
            fastnn_transpose16(r + h * B);     /* r[h * B + j]: half h of row j */
        /* whole-vector stores, each spilling into the next rows, which the
         * next stores overwrite; masked where one would pass the call's last
         * row (the rows after it may belong to another thread) */
        for (int j = 0; j < rows; j++)
            for (int h = 0; h < halves; h++) {
                float *g = G + (i0 + j) * c + h * B;
                if (g + B <= G + n * c)
                    _mm512_storeu_ps(g, r[h * B + j]);
                else
                    _mm512_mask_storeu_ps(g, half_mask[h], r[h * B + j]);
            }
        if (products) {
            const __m512 s_live = _mm512_mask_mov_ps(_mm512_set1_ps(1), live, s);
            product_lo = _mm512_mul_pd(product_lo, _mm512_cvtps_pd(_mm512_castps512_ps256(s_live)));
            product_hi = _mm512_mul_pd(product_hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(s_live, 1)));
            y_dot_z_lo = _mm512_add_pd(y_dot_z_lo, ydz_lo);     /* rows past the last: 0 */
            y_dot_z_hi = _mm512_add_pd(y_dot_z_hi, ydz_hi);
            continue;
        }
        float s_row[B];
        double ydz_row[B];
        _mm512_storeu_ps(s_row, s);
        _mm512_storeu_pd(ydz_row, ydz_lo);
        _mm512_storeu_pd(ydz_row + 8, ydz_hi);
        total += fastnn_xent_row_losses(s_row, ydz_row, sw != NULL ? sw + i0 : NULL,
                                        L != NULL ? L + i0 : NULL, rows);
    }
    if (products) {
        const __m512d product = _mm512_mul_pd(product_lo, product_hi);
        total = log(_mm512_reduce_mul_pd(_mm512_getmant_pd(product, _MM_MANT_NORM_1_2,
                                                            _MM_MANT_SIGN_src)))
                + _mm512_reduce_add_pd(_mm512_getexp_pd(product)) * M_LN2
                - _mm512_reduce_add_pd(_mm512_add_pd(y_dot_z_lo, y_dot_z_hi));
    }
    return total;
}

/* The two-half form for c > 16 and the one-half form, each compiled with
 * its number of halves a constant (a variable one kept the registers of
 * the c <= 16 form in memory: 10-20% slower). */
static double fastnn_xent_labels_lanes16_f(const float *Z, const int64_t *labels,
                                           const float *sw, float *G, float *L, ptrdiff_t n,
                                           ptrdiff_t c, double scale, double smoothing)
{
    if (c > 16)
        return fastnn_xent_lanes16_f(Z, labels, sw, G, L, n, c, scale, smoothing, 2);
    return fastnn_xent_lanes16_f(Z, labels, sw, G, L, n, c, scale, smoothing, 1);
}
#endif

static double fastnn_xent_labels_small_f(const float *Z, const int64_t *labels,
                                         const float *sw, float *G, float *L, ptrdiff_t n,
                                         ptrdiff_t c, double scale, double smoothing)
{
#if defined(__AVX512F__)
    return fastnn_xent_labels_lanes16_f(Z, labels, sw, G, L, n, c, scale, smoothing);
#else
    return fastnn_xent_labels_lanes8_f(Z, labels, sw, G, L, n, c, scale, smoothing);
#endif
}

#endif
