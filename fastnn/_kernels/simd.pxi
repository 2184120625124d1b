# The vectorised loops' CPU variant, and hooks for their accuracy tests.

def simd_variant():
    """The variant of the vectorised loops chosen for this CPU."""
    return fastnn_simd_variant().decode()


cdef _check_exp_out(const float[::1] x, float[::1] out):
    if out.shape[0] < x.shape[0]:
        raise ValueError(f"out must hold at least len(x) = {x.shape[0]} elements, "
                         f"got {out.shape[0]}")


def exp_f32(const float[::1] x, float[::1] out):
    """out = exp(x) through the full-range form of the kernels' vectorised,
    CPU-dispatched float32 exp; exposed for its accuracy test."""
    _check_exp_out(x, out)
    if x.shape[0] > 0:
        fastnn_exp_f(&x[0], &out[0], x.shape[0])


def exp_shifted_f32(const float[::1] x, float[::1] out, float m):
    """out = exp(x - m) for m >= max(x), and returns its sum: the exp loop of
    the softmax kernels itself, exposed for its accuracy test."""
    _check_exp_out(x, out)
    if x.shape[0] == 0:
        return 0.0
    return fastnn_exp_shifted_sum_f(&x[0], &out[0], x.shape[0], m)


def log1p_unit_f32(const float[::1] x, float[::1] out):
    """out = log1p(x) for 0 <= x <= 1 (x = exp(-|z|)) through the float32
    log1p of the logistic kernel (CPU-dispatched); for its accuracy test."""
    _check_exp_out(x, out)
    if x.shape[0] > 0:
        fastnn_log1p_unit_kernel_f(&x[0], &out[0], x.shape[0])
