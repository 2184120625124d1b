/* Vectorisable inner loops of the row kernels (softmax, cross-entropy, dot).
 *
 * libm's expf is a scalar call, which keeps GCC from vectorising a loop that
 * contains it; fastnn_expf below is branch-free arithmetic that it can.  The
 * reductions use `omp simd reduction`, which vectorises a sum or a max in a
 * fixed, compile-time order without any value-changing compiler flag (the
 * package is built without -ffast-math / -fassociative-math), so the results
 * do not depend on the thread count.
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

/* exp(x) in float32, within 2 ulp over the whole range (tested), NaN in ->
 * NaN out, +inf beyond 88.72, subnormal and then 0 below -87.3.
 * exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]
 * (ln 2 split in two so that n * LN2_HI is exact); exp(r) by the Cephes
 * minimax polynomial.  2^n is applied in two halves so that neither factor
 * over- or underflows before the product does. */
static inline float fastnn_expf(float x)
{
    const float LOG2E = 1.44269504088896341f;
    const float LN2_HI = 0.693359375f;
    const float LN2_LO = -2.12194440e-4f;
    const float SHIFTER = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    /* Straight-line code only (selects, no branches), or GCC won't vectorise.
     * NaN compares false and is clamped here (keeps the int conversion
     * defined); it is restored at the end. */
    float xc = x > -104.0f ? x : -104.0f;
    xc = xc < 89.0f ? xc : 89.0f;
    float nf = (xc * LOG2E + SHIFTER) - SHIFTER;
    int32_t n = (int32_t)nf;
    float r = xc - nf * LN2_HI;
    r = r - nf * LN2_LO;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t half = n >> 1;
    int32_t bits1 = (half + 127) << 23, bits2 = (n - half + 127) << 23;
    float scale1, scale2;
    memcpy(&scale1, &bits1, sizeof scale1);
    memcpy(&scale2, &bits2, sizeof scale2);
    float y = (p * scale1) * scale2;
    return x == x ? y : x;
}

/* e[k] = exp(z[k] - m) for k < c (e may be NULL: sum only); returns the sum. */
static float fastnn_exp_shifted_sum_f(const float *z, float *e, ptrdiff_t c,
                                                    float m)
{
    float s = 0.0f;
    if (e == NULL) {
#pragma omp simd reduction(+:s)
        for (ptrdiff_t k = 0; k < c; k++)
            s += fastnn_expf(z[k] - m);
    } else {
#pragma omp simd reduction(+:s)
        for (ptrdiff_t k = 0; k < c; k++) {
            float v = fastnn_expf(z[k] - m);
            e[k] = v;
            s += v;
        }
    }
    return s;
}

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

/* x[i] = exp(x[i]) for i < n, in place: one long loop over many short rows
 * (the cross-entropy of a few classes), where a loop per row would spend
 * most of its time in the vector loop's prologue and remainder. */
static void fastnn_exp_inplace_f(float *x, ptrdiff_t n)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++)
        x[i] = fastnn_expf(x[i]);
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
    static type name(const type *z, ptrdiff_t c)             \
    {                                                                      \
        type m = z[0];                                                     \
        _Pragma("omp simd reduction(max:m)")                               \
        for (ptrdiff_t k = 1; k < c; k++)                                  \
            m = z[k] > m ? z[k] : m;                                       \
        return m;                                                          \
    }
FASTNN_DEFINE_MAX(fastnn_max_f, float)
FASTNN_DEFINE_MAX(fastnn_max_d, double)

/* sum_k x[k] y[k], accumulated in the element type. */
#define FASTNN_DEFINE_DOT(name, type)                                      \
    static type name(const type *x, const type *y, ptrdiff_t n) \
    {                                                                      \
        type s = 0;                                                        \
        _Pragma("omp simd reduction(+:s)")                                 \
        for (ptrdiff_t k = 0; k < n; k++)                                  \
            s += x[k] * y[k];                                              \
        return s;                                                          \
    }
FASTNN_DEFINE_DOT(fastnn_dot_f, float)
FASTNN_DEFINE_DOT(fastnn_dot_d, double)

#endif
