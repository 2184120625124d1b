# Declarations the pieces of fastnn/_kernels/ share (Cython reads this before
# _kernels.pyx): the C they call, the codes the Python layers pass, the
# structs that cross files.  What one piece alone uses is declared there.
from libc.stdint cimport int64_t

cdef extern from "fastnn_simd.h" nogil:
    const char* fastnn_simd_variant()
    void fastnn_prefetch(const void* p, Py_ssize_t n_bytes)
    float fastnn_exp_shifted_sum_f(const float* z, float* e, Py_ssize_t c, float m)
    double fastnn_exp_shifted_sum_d(const double* z, double* e, Py_ssize_t c, double m)
    float fastnn_max_f(const float* z, Py_ssize_t c)
    double fastnn_max_d(const double* z, Py_ssize_t c)
    void fastnn_exp_inplace_f(float* x, Py_ssize_t n)
    void fastnn_exp_f(const float* x, float* out, Py_ssize_t n)
    void fastnn_exp_inplace_d(double* x, Py_ssize_t n)
    Py_ssize_t fastnn_count_outside(const int64_t* x, Py_ssize_t n, int64_t c)
    void fastnn_matvec_f(const float* X, Py_ssize_t d, const float* w, double b, Py_ssize_t n,
                         float* z)
    void fastnn_matvec_d(const double* X, Py_ssize_t d, const double* w, double b, Py_ssize_t n,
                         double* z)
    void fastnn_vecmat_f(const float* X, Py_ssize_t d, const float* r, Py_ssize_t n, float* g,
                         const float* ahead, Py_ssize_t n_ahead)
    void fastnn_vecmat_d(const double* X, Py_ssize_t d, const double* r, Py_ssize_t n,
                         double* g, const double* ahead, Py_ssize_t n_ahead)
    enum: FASTNN_XENT_SMALL
    double fastnn_xent_labels_small_f(const float* Z, const int64_t* labels, const float* sw,
                                      float* G, float* L, Py_ssize_t n, Py_ssize_t c,
                                      double scale, double smoothing)

cdef extern from "fastnn_logistic.h" nogil:
    double fastnn_logistic_block_f(const float* X, Py_ssize_t d, const float* w, double b,
                                   const float* T, const float* sw, Py_ssize_t n, float* g,
                                   double* gb, const float* ahead, Py_ssize_t n_ahead)
    void fastnn_log1p_unit_kernel_f(const float* x, float* out, Py_ssize_t n)

# Loss codes: pointwise_loss's ``which`` (functional.py passes 0, 1 and 3) and
# dense_stack_step's ``loss``.
cpdef enum Loss:
    LOSS_BCE = 0
    LOSS_MSE = 1
    LOSS_XENT = 2
    LOSS_POISSON = 3

# Activation codes shared with functional.py (ACTIVATIONS maps names to them).
cpdef enum Activation:
    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4

cdef struct TileGrid:
    Py_ssize_t m, n, row_tiles, col_tiles, tile_rows, tile_cols

cdef struct ParamUpdate:
    # One parameter's optimiser update (csrc/fastnn_update.h), SGD or Adam:
    # applied block by block by sgd_step / adam_step, or by dense_stack_step
    # where it computes the gradient, while that is still in cache.
    void* p             # the parameter (float* or double*, flat)
    void* s1            # SGD: its velocity, NULL without momentum; Adam: m
    void* s2            # Adam: v; NULL for SGD
    Py_ssize_t size     # its elements
    double lr           # SGD: lr; Adam: the bias-corrected lr_t
    double momentum     # SGD: momentum; Adam: beta1
    double beta2, c1, c2, eps, keep     # Adam (keep = 1 - lr * decoupled decay)
    double l2, l1       # zero for a parameter not regularised
    bint nesterov, regularize
