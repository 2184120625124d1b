# cython: language_level=3
"""fastnn's compiled kernels.

Contract (see docs/API.md): every function here receives *valid* input from
``fastnn.functional`` -- C-contiguous memoryviews of one float dtype, correct
shapes, no empty dimensions -- and never raises.  (dense_stack_step, called
by fastnn.nn with checked arrays, also checks that its layers' shapes chain,
as a second line of defence.)  The exceptions are the one-call entry points
of the training loop's calls (xent_mean_labels, dense_forward_plain,
dense_backward_plain): they take the arguments as given, accept only those
usable as is, and return None for anything else, which the general checks
of ``fastnn.functional`` then convert or reject.  One body serves float32 and
float64 through the ``floating`` fused type.  Loops over rows run under
``prange`` with the GIL released; reductions over rows are computed per
fixed-size chunk of rows and the chunk results are combined serially in chunk
order, so every result is bit-identical whatever the thread count.  (The
sparse layer's entries, sparse_dense_forward/backward, check the structure
of their CSR arrays themselves and raise ValueError: a bad index would
reach outside W or dW.)

One module, one file per concern: the pieces in fastnn/_kernels/ are included
below; what they share is declared in fastnn/_kernels.pxd.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.math cimport (exp, expf, log, logf, log1p, log1pf, tanh, tanhf, sqrt, sqrtf, pow, fabs,
                        fabsf, frexp, M_LN2)
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)
from scipy.linalg.cython_blas cimport sgemm, dgemm
cimport numpy as cnp

cnp.import_array()

include "_kernels/threads.pxi"
include "_kernels/blas.pxi"
include "_kernels/scalar.pxi"
include "_kernels/activations.pxi"
include "_kernels/softmax.pxi"
include "_kernels/losses.pxi"
include "_kernels/checks.pxi"
include "_kernels/gather.pxi"
include "_kernels/gemm.pxi"
include "_kernels/dense.pxi"
include "_kernels/sparse.pxi"
include "_kernels/bf16.pxi"
include "_kernels/stack.pxi"
include "_kernels/logistic.pxi"
include "_kernels/updates.pxi"
include "_kernels/simd.pxi"
