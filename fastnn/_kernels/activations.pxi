# Elementwise activations and their derivatives (Activation codes).

cdef inline floating _activate(floating z, int kind, floating alpha) noexcept nogil:
    if kind == SIGMOID:
        return _sigmoid(z)
    if kind == TANH:
        if floating is float:
            return tanhf(z)
        else:
            return tanh(z)
    if kind == RELU:
        return 0 if z < 0 else z            # NaN propagates
    if kind == LEAKY_RELU:
        return alpha * z if z < 0 else z
    return z


cdef inline floating _derivative(floating o, int kind, floating alpha) noexcept nogil:
    """f'(z) written in terms of the output o = f(z) (MATH.md section 2)."""
    if kind == SIGMOID:
        return o * (1 - o)
    if kind == TANH:
        return 1 - o * o
    if kind == RELU:
        return 1 if o > 0 else 0             # convention: 0 at z = 0
    if kind == LEAKY_RELU:
        return 1 if o >= 0 else alpha        # alpha > 0: sign(o) == sign(z)
    return 1


cdef void _activation_forward_range(const floating* z, floating* out, Py_ssize_t start,
                                    Py_ssize_t stop, int kind, floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if kind == RELU:                          # hot case: keep the loop branch-free
        for i in range(start, stop):
            out[i] = 0 if z[i] < 0 else z[i]
    else:
        for i in range(start, stop):
            out[i] = _activate(z[i], kind, alpha)


cdef void _activation_backward_range(const floating* o, const floating* g, floating* out,
                                     Py_ssize_t start, Py_ssize_t stop, int kind,
                                     floating alpha) noexcept nogil:
    cdef Py_ssize_t i
    if kind == RELU:
        for i in range(start, stop):
            out[i] = g[i] if o[i] > 0 else 0
    else:
        for i in range(start, stop):
            out[i] = g[i] * _derivative(o[i], kind, alpha)


def activation_forward(const floating[::1] z, floating[::1] out, int kind, double alpha):
    """out = f(z) elementwise; ``out`` may alias ``z``."""
    cdef Py_ssize_t n = z.shape[0], block = 16384, n_blocks = (n + block - 1) // block, b
    cdef const floating* zp = &z[0]
    cdef floating* op = &out[0]
    if _threaded(n, n_blocks):
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _activation_forward_range(zp, op, b * block, min((b + 1) * block, n), kind,
                                      <floating>alpha)
    else:
        with nogil:
            _activation_forward_range(zp, op, 0, n, kind, <floating>alpha)


def activation_backward(const floating[::1] o, const floating[::1] g, floating[::1] out,
                        int kind, double alpha):
    """out = g * f'(o) elementwise; ``out`` may alias ``g``."""
    cdef Py_ssize_t n = o.shape[0], block = 16384, n_blocks = (n + block - 1) // block, b
    cdef const floating* op = &o[0]
    cdef const floating* gp = &g[0]
    cdef floating* outp = &out[0]
    if _threaded(n, n_blocks):
        for b in prange(n_blocks, nogil=True, schedule="static", num_threads=_n_threads):
            _activation_backward_range(op, gp, outp, b * block, min((b + 1) * block, n), kind,
                                       <floating>alpha)
    else:
        with nogil:
            _activation_backward_range(op, gp, outp, 0, n, kind, <floating>alpha)
