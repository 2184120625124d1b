/* Optimiser updates over a block of parameters, written as straight-line
 * code (selects, no branches in the loop body) so that the compiler
 * vectorises them: the kernels in _kernels.pyx split a parameter array into
 * blocks across the OpenMP team and call these on each block.
 *
 * Regularised gradient g' = g + l2 theta + l1 sign(theta); a term whose
 * coefficient is zero is left out (0 * inf would make an infinite weight
 * NaN), sign(NaN) = NaN as numpy.sign.  With l1 > 0 a step that would carry
 * a weight across zero stops at exactly zero (signs compared directly:
 * old * new underflows to -0 for tiny weights). */
#ifndef FASTNN_UPDATE_H
#define FASTNN_UPDATE_H

#include "fastnn_simd.h"

/* Each update is one long vectorised loop, called once per block or row
 * segment: kept out of line, one copy each, where inlining it into every
 * caller (the GEMM tile epilogue, sgd_step's threads) grew the module by a
 * tenth for no speed. */
#define FASTNN_UPDATE_FN static __attribute__((noinline)) void

#define FASTNN_DEFINE_UPDATES(suffix, type, sqrt_fn)                                     \
    static inline type fastnn_regularised_##suffix(type g, type theta, type l2, type l1)  \
    {                                                                                    \
        type sign = (type)((theta > 0) - (theta < 0));                                   \
        sign = theta == theta ? sign : theta;                                            \
        g = l2 != 0 ? g + l2 * theta : g;                                                \
        return l1 != 0 ? g + l1 * sign : g;                                              \
    }                                                                                    \
    static inline type fastnn_l1_clip_##suffix(type old, type new_, type l1)              \
    {                                                                                    \
        int flips = (old > 0 && new_ < 0) || (old < 0 && new_ > 0);                      \
        return (l1 != 0 && flips) ? (type)0 : new_;                                      \
    }                                                                                    \
    /* SGD; v == NULL: no momentum. */                                                   \
    FASTNN_UPDATE_FN fastnn_sgd_##suffix(type *p, const type *g, type *v,       \
                                                  ptrdiff_t n, type lr, type mu,         \
                                                  int nesterov, type l2, type l1)        \
    {                                                                                    \
        if (v == NULL) {                                                                 \
            _Pragma("omp simd")                                                          \
            for (ptrdiff_t i = 0; i < n; i++) {                                          \
                type gi = fastnn_regularised_##suffix(g[i], p[i], l2, l1);               \
                p[i] = fastnn_l1_clip_##suffix(p[i], p[i] - lr * gi, l1);                \
            }                                                                            \
        } else {                                                                         \
            type nest = nesterov ? (type)1 : (type)0;                                    \
            _Pragma("omp simd")                                                          \
            for (ptrdiff_t i = 0; i < n; i++) {                                          \
                type gi = fastnn_regularised_##suffix(g[i], p[i], l2, l1);               \
                type vi = mu * v[i] - lr * gi;                                           \
                v[i] = vi;                                                               \
                type u = nest != 0 ? mu * vi - lr * gi : vi;                             \
                p[i] = fastnn_l1_clip_##suffix(p[i], p[i] + u, l1);                      \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    /* Adam(W): lr_t bias-corrected; keep = 1 - lr * weight_decay (1: none). */          \
    FASTNN_UPDATE_FN fastnn_adam_##suffix(type *p, const type *g, type *m,      \
                                                   type *v, ptrdiff_t n, type lr_t,      \
                                                   type b1, type b2, type c1, type c2,   \
                                                   type eps, type l2, type l1, type keep) \
    {                                                                                    \
        _Pragma("omp simd")                                                              \
        for (ptrdiff_t i = 0; i < n; i++) {                                              \
            type theta = keep != 1 ? p[i] * keep : p[i];                                 \
            type gi = fastnn_regularised_##suffix(g[i], theta, l2, l1);                  \
            type mi = b1 * m[i] + c1 * gi;                                               \
            type vi = b2 * v[i] + c2 * gi * gi;                                          \
            m[i] = mi;                                                                   \
            v[i] = vi;                                                                   \
            p[i] = fastnn_l1_clip_##suffix(theta, theta - lr_t * mi / (sqrt_fn(vi) + eps), l1); \
        }                                                                                \
    }

/* *sq = sum x^2, *ab = sum |x| over n elements, in double: 32 lane sums,
 * then the tail and the lanes added in order -- a fixed order, so the same
 * bits on every call (the penalties of scikit-learn's MLP, per batch). */
#define FASTNN_DEFINE_NORMS(suffix, type)                                                \
    static void fastnn_norms_##suffix(const type *x, ptrdiff_t n, double *sq, double *ab)  \
    {                                                                                    \
        double s[32] = {0}, a[32] = {0}, ts = 0, ta = 0;                                 \
        ptrdiff_t i = 0;                                                                 \
        for (; i + 32 <= n; i += 32) {                                                   \
            _Pragma("omp simd")                                                          \
            for (int j = 0; j < 32; j++) {                                               \
                const double v = (double)x[i + j];                                       \
                s[j] += v * v;                                                           \
                a[j] += v < 0 ? -v : v;                                                  \
            }                                                                            \
        }                                                                                \
        for (; i < n; i++) {                                                             \
            const double v = (double)x[i];                                               \
            ts += v * v;                                                                 \
            ta += v < 0 ? -v : v;                                                        \
        }                                                                                \
        for (int j = 0; j < 32; j++) {                                                   \
            ts += s[j];                                                                  \
            ta += a[j];                                                                  \
        }                                                                                \
        *sq = ts;                                                                        \
        *ab = ta;                                                                        \
    }

FASTNN_DEFINE_UPDATES(f, float, sqrtf)
FASTNN_DEFINE_UPDATES(d, double, sqrt)
FASTNN_DEFINE_NORMS(f, float)
FASTNN_DEFINE_NORMS(d, double)

#endif
