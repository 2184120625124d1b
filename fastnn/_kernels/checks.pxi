# Cheap checks done in C: the per-step tests the Python layers call, and the
# argument tests of the one-call entry points (xent_mean_labels,
# dense_forward_plain, dense_backward_plain), which take arguments as given.

def same_writeable_arrays(list cached, list current):
    """Whether ``current`` holds the very objects of ``cached``, in order,
    each (None entries skipped) a writeable array: the per-step test that
    lets the optimisers and the stack step reuse the views they checked
    once, in a C loop (a Python one over ``ndarray.flags`` took 3-5 us a
    step for an MLP's six parameters)."""
    cdef Py_ssize_t i, n = len(current)
    if len(cached) != n:
        return False
    for i in range(n):
        x = current[i]
        if x is not cached[i]:
            return False
        if x is not None and not (isinstance(x, cnp.ndarray)
                                  and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x)):
            return False
    return True


def count_outside(const int64_t[::1] labels, int64_t n_classes):
    """How many labels lie outside [0, n_classes): the range check of the
    class indices, one vectorised pass in place of a min and a max."""
    return fastnn_count_outside(&labels[0], labels.shape[0], n_classes)


cdef inline bint _plain(object x, int type_num, int ndim):
    """``x`` is an exact ndarray of this dtype (native byte order) and rank,
    C-contiguous, aligned and not empty: usable as is."""
    cdef cnp.ndarray a
    if type(x) is not cnp.ndarray:
        return False
    a = <cnp.ndarray> x
    return (cnp.PyArray_TYPE(a) == type_num and cnp.PyArray_NDIM(a) == ndim
            and cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISNOTSWAPPED(a)
            and cnp.PyArray_SIZE(a) > 0)


cdef inline int _float_dtype(object x, int ndim):
    """NPY_FLOAT32 or NPY_FLOAT64 when ``x`` is _plain as one of them, else -1."""
    if _plain(x, cnp.NPY_FLOAT32, ndim):
        return cnp.NPY_FLOAT32
    if _plain(x, cnp.NPY_FLOAT64, ndim):
        return cnp.NPY_FLOAT64
    return -1


cdef inline bint _plain_shape(object x, int dtype, Py_ssize_t d0, Py_ssize_t d1):
    """_plain with shape (d0, d1), or (d0,) when d1 < 0."""
    if not _plain(x, dtype, 1 if d1 < 0 else 2):
        return False
    return (cnp.PyArray_DIM(<cnp.ndarray> x, 0) == d0
            and (d1 < 0 or cnp.PyArray_DIM(<cnp.ndarray> x, 1) == d1))


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether two contiguous arrays share any byte."""
    cdef char* pa = <char*> cnp.PyArray_DATA(a)
    cdef char* pb = <char*> cnp.PyArray_DATA(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef object _out_buffer(object out, int dtype, Py_ssize_t d0, Py_ssize_t d1, tuple inputs):
    """A new (d0, d1) array ((d0,) when d1 < 0) when ``out`` is None; ``out``
    itself when it is _plain of that shape, writeable and overlaps none of
    ``inputs`` (None entries skipped); None otherwise (decline)."""
    cdef cnp.npy_intp dims[2]
    if out is None:
        dims[0], dims[1] = d0, d1
        return cnp.PyArray_EMPTY(1 if d1 < 0 else 2, dims, dtype, 0)
    if not _plain_shape(out, dtype, d0, d1) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> out):
        return None
    for x in inputs:
        if x is not None and _overlap(<cnp.ndarray> out, <cnp.ndarray> x):
            return None
    return out


cdef inline void* _data(object x):
    """The data pointer of a checked array, NULL for None."""
    return cnp.PyArray_DATA(<cnp.ndarray> x) if x is not None else NULL
