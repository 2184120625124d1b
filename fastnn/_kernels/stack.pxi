# A whole training step of a stack of dense layers, in one call.

cdef struct DenseLayer:
    # raw pointers of one layer's arrays (float* or double*, as the step's dtype)
    const void* W
    const void* b
    void* O
    void* D
    void* dW
    void* db
    Py_ssize_t n_in, n_out
    int kind
    double alpha
    bint bf16                       # the products on bf16 operands (float32 only)
    ParamUpdate update_w, update_b  # with an optimiser: the update of W and of b


def dense_stack_step(list layers, const floating[:, ::1] X, int loss,
                     const int64_t[::1] labels, const floating[:, ::1] target,
                     const floating[::1] sample_weight, floating[:, ::1] loss_grad,
                     double scale, double smoothing, tuple update=None):
    """Forward, loss and backward of a stack of dense layers without
    returning to Python in between: the same kernels, in the same order, as
    dense_forward / softmax_cross_entropy or pointwise_loss / dense_backward
    layer by layer, so the results are identical.

    ``layers``: one tuple (W, b or None, kind, alpha, O, D, dW, db, bf16) per
    layer, first to last, O and D (the outputs and deltas) of shape (N,
    n_out), bf16 whether its products take bf16 operands (float32 only: the
    kernels of dense_forward/dense_backward with compute_dtype="bfloat16").  The
    loss gradient goes to ``loss_grad``; each layer's input gradient straight
    into the D of the layer below (none for the first layer).  Returns the
    weighted loss sum (MemoryError if a bf16 product's packing buffers
    cannot be allocated: the parameters may then be half updated).  The
    layers' arrays are checked here (_stack_array), X, the targets and
    loss_grad by their memoryviews.

    ``update``: None, or the optimiser step to take on the way (_stack_updates):
    each parameter is updated as soon as its gradient is known, while that
    is in cache (the same arithmetic as sgd_step / adam_step, so the same
    numbers); the gradients are written all the same."""
    cdef Py_ssize_t n = X.shape[0], n_layers = len(layers), width
    cdef DenseLayer* plan
    cdef double* partial
    cdef double total
    cdef int status = 0
    if n_layers == 0:
        raise ValueError("layers must not be empty")
    plan = <DenseLayer*> malloc(n_layers * sizeof(DenseLayer))
    if plan == NULL:
        raise MemoryError()
    try:
        width = _stack_prepare(layers, plan, n, X.shape[1], loss_grad.shape[0],
                               loss_grad.shape[1], update,
                               cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64)
        if (labels is not None and labels.shape[0] != n) or \
                (target is not None and (target.shape[0] != n or
                                         target.shape[1] != loss_grad.shape[1])) or \
                (sample_weight is not None and sample_weight.shape[0] != n):
            raise ValueError("targets and weights must have one row per sample")
        partial = <double*> malloc(_n_chunks(n) * width * sizeof(double))
        if partial == NULL:
            raise MemoryError()
        with nogil:
            total = _stack_run(plan, n_layers, n, &X[0, 0], loss,
                               &labels[0] if labels is not None else NULL,
                               &target[0, 0] if target is not None else NULL,
                               &sample_weight[0] if sample_weight is not None else NULL,
                               &loss_grad[0, 0], scale, smoothing, partial,
                               update is not None, &status)
        free(partial)
    finally:
        free(plan)
    _bf16_check(status)
    return total


def dense_stack_epoch(list layers, const floating[:, ::1] X, int loss,
                      const int64_t[::1] labels, const floating[:, ::1] target,
                      const int64_t[::1] order, Py_ssize_t batch_size,
                      floating[:, ::1] X_batch, int64_t[::1] labels_batch,
                      floating[:, ::1] target_batch, floating[:, ::1] loss_grad,
                      double smoothing, tuple update, tuple penalty, double[::1] values,
                      double[::1] penalties, int64_t[::1] progress):
    """One epoch of ``fit``: dense_stack_step (with ``update``'s step) over
    every batch of ``batch_size`` rows of X (the last one smaller), taken in
    ``order`` (a permutation of the rows, gathered into X_batch, labels_batch
    or target_batch as fit's gather does) or, without one, in sequence; the
    layers' O and D, and loss_grad, have batch_size rows (a smaller batch uses
    the first).  The same batches, kernels and order as fit's Python loop of
    train_step, so the same numbers, without returning to Python between
    steps (which cost 40-80 us a step: its code and data had left the
    caches while the step ran).  ``update`` as dense_stack_step's, Adam's step
    size renewed at each step.  ``values`` receives each batch's mean loss
    and ``progress[0]`` counts the batches done, also when a signal (Ctrl-C)
    stops the epoch between two.

    ``penalty``: None, or scikit-learn's MLP penalty (alpha, l1): before
    each batch of m rows, ``penalties`` receives alpha/2 ||W||^2 + l1 ||W||_1
    of the regularised parameters (_penalty_of, as the Python function
    ``penalty``), and the update's l2 and l1 become alpha/m and l1/m (as the
    estimators' batch hook sets weight_decay and l1 in the Python loop)."""
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1], n_layers = len(layers), width
    cdef Py_ssize_t start, m, i, n_out
    cdef DenseLayer* plan
    cdef double* partial = NULL
    cdef double total
    cdef int status = 0
    cdef const floating* xb
    cdef const int64_t* yb
    cdef const floating* tb
    cdef const int64_t* rows
    cdef bint adam = update is not None and update[0] == "adam"
    cdef double lr = update[3] if adam else 0, beta1 = update[5] if adam else 0
    cdef double beta2 = update[6] if adam else 0
    cdef Py_ssize_t steps = update[4] if adam else 0, n_chunks = 0, total_size = 0
    cdef double alpha = 0, l1 = 0
    cdef NormChunk* chunks = NULL
    if n_layers == 0:
        raise ValueError("layers must not be empty")
    if penalty is not None:
        alpha, l1 = penalty
        if update is None or (adam and update[10] != 0) or penalties is None or \
                penalties.shape[0] != values.shape[0]:
            raise ValueError("a penalty needs a coupled update and a value per batch")
    if n == 0 or batch_size <= 0 or batch_size > n or loss_grad.shape[0] != batch_size:
        raise ValueError(f"batch_size must be in [1, len(X) = {n}] and loss_grad have "
                         f"batch_size rows, got {batch_size} and {loss_grad.shape[0]}")
    if (labels is None) == (target is None) or progress.shape[0] != 1 or \
            values.shape[0] != (n + batch_size - 1) // batch_size:
        raise ValueError("one of labels and target, a value per batch and a progress "
                         "counter are needed")
    if (labels is not None and labels.shape[0] != n) or \
            (target is not None and (target.shape[0] != n or
                                     target.shape[1] != loss_grad.shape[1])):
        raise ValueError("targets must have one row per sample")
    if order is not None:
        if order.shape[0] != n or X_batch is None or X_batch.shape[0] != batch_size or \
                X_batch.shape[1] != d or (labels is not None and (
                    labels_batch is None or labels_batch.shape[0] != batch_size)) or \
                (target is not None and (target_batch is None or
                                         target_batch.shape[0] != batch_size or
                                         target_batch.shape[1] != target.shape[1])):
            raise ValueError("order needs batch buffers of batch_size rows")
        if fastnn_count_outside(&order[0], n, n) != 0:
            raise IndexError(f"order must lie in [0, {n})")
    plan = <DenseLayer*> malloc(n_layers * sizeof(DenseLayer))
    if plan == NULL:
        raise MemoryError()
    try:
        width = _stack_prepare(layers, plan, batch_size, d, loss_grad.shape[0],
                               loss_grad.shape[1], update,
                               cnp.NPY_FLOAT32 if floating is float else cnp.NPY_FLOAT64)
        n_out = loss_grad.shape[1]
        if penalty is not None:
            chunks = _stack_norm_chunks(plan, n_layers, floating is float, &n_chunks,
                                        &total_size)
        partial = <double*> malloc(_n_chunks(batch_size) * width * sizeof(double))
        if partial == NULL:
            raise MemoryError()
        progress[0] = 0
        start = 0
        with nogil:
            while start < n:
                m = min(batch_size, n - start)
                if order is None:
                    xb = &X[start, 0]
                    yb = &labels[start] if labels is not None else NULL
                    tb = &target[start, 0] if target is not None else NULL
                else:
                    rows = &order[start]
                    _gather_batch(&X[0, 0], rows, &X_batch[0, 0], m, d)
                    xb = &X_batch[0, 0]
                    yb = NULL
                    tb = NULL
                    if labels is not None:
                        for i in range(m):
                            labels_batch[i] = labels[rows[i]]
                        yb = &labels_batch[0]
                    else:
                        _gather_batch(&target[0, 0], rows, &target_batch[0, 0], m, n_out)
                        tb = &target_batch[0, 0]
                if adam or penalty is not None:
                    if penalty is not None:
                        penalties[progress[0]] = _penalty_of(chunks, n_chunks, total_size,
                                                             floating is float, alpha, l1)
                    _stack_retune(plan, n_layers, adam,
                                  _adam_lr(lr, beta1, beta2, steps + progress[0] + 1),
                                  penalty is not None, alpha / m, l1 / m)
                total = _stack_run(plan, n_layers, m, xb, loss, yb, tb, NULL, &loss_grad[0, 0],
                                   1.0 / m, smoothing, partial, update is not None, &status)
                if status != 0:
                    break
                values[progress[0]] = total * (1.0 / m)     # as train_step's mean
                progress[0] += 1
                start += m
                with gil:
                    PyErr_CheckSignals()
    finally:
        free(chunks)
        free(partial)
        free(plan)
    _bf16_check(status)


cdef Py_ssize_t _stack_prepare(list layers, DenseLayer* plan, Py_ssize_t n, Py_ssize_t n_in,
                               Py_ssize_t grad_rows, Py_ssize_t grad_cols, tuple update,
                               int dtype) except -1:
    """Fills ``plan`` from dense_stack_step's ``layers`` (and ``update``) for
    batches of ``n`` rows, each array checked (_stack_array), and checks
    loss_grad's shape; returns the widest layer's width."""
    cdef Py_ssize_t l, width = 1, n_out
    # raw pointers, not memoryviews: acquiring eight buffers a layer cost
    # microseconds a step
    for l in range(len(layers)):
        W, b, kind, alpha, O, D, dW, db, bf16 = layers[l]
        if bf16 and dtype != cnp.NPY_FLOAT32:
            raise ValueError(f"layer {l}: bf16 products need float32 layers")
        n_out = (cnp.PyArray_DIM(<cnp.ndarray> W, 1) if isinstance(W, cnp.ndarray)
                 and cnp.PyArray_NDIM(<cnp.ndarray> W) == 2 else 0)
        plan[l].W = _stack_array(W, dtype, n_in, n_out, False, l, "W")
        plan[l].b = _stack_array(b, dtype, n_out, -1, False, l, "b") if b is not None else NULL
        plan[l].O = _stack_array(O, dtype, n, n_out, True, l, "O")
        plan[l].D = _stack_array(D, dtype, n, n_out, True, l, "D")
        plan[l].dW = _stack_array(dW, dtype, n_in, n_out, True, l, "dW")
        plan[l].db = _stack_array(db, dtype, n_out, -1, True, l, "db")
        plan[l].n_in, plan[l].n_out = n_in, n_out
        plan[l].kind, plan[l].alpha = kind, alpha
        plan[l].bf16 = bf16
        n_in = n_out
        width = max(width, n_in)
    if grad_rows != n or grad_cols != n_in:
        raise ValueError("loss_grad must have the shape of the last layer's output")
    if update is not None:
        _stack_updates(plan, len(layers), update)
    return width


cdef double _stack_run(DenseLayer* plan, Py_ssize_t n_layers, Py_ssize_t n, const floating* X,
                       int loss, const int64_t* labels, const floating* target,
                       const floating* sample_weight, floating* loss_grad, double scale,
                       double smoothing, double* partial, bint update, int* status) noexcept nogil:
    """One step over the n rows of X: forward, loss (returned: the weighted
    loss sum), backward, and with ``update`` the layers' updates; a bf16
    product's failure goes to ``status`` (the step then stops)."""
    cdef Py_ssize_t l
    cdef double total
    cdef const floating* A = X
    for l in range(n_layers):
        if floating is float and plan[l].bf16:
            if status[0] == 0:
                status[0] = _bf16_tiled(False, False, n, plan[l].n_out, plan[l].n_in, A,
                                        plan[l].n_in, <const float*>plan[l].W, plan[l].n_out,
                                        <float*>plan[l].O, plan[l].n_out,
                                        <const float*>plan[l].b, plan[l].kind,
                                        <float>plan[l].alpha)
        else:
            _gemm_tiled(False, False, n, plan[l].n_out, plan[l].n_in, A, plan[l].n_in,
                        <const floating*>plan[l].W, plan[l].n_out, <floating*>plan[l].O,
                        plan[l].n_out, <const floating*>plan[l].b, plan[l].kind,
                        <floating>plan[l].alpha)
        A = <const floating*>plan[l].O
    l = n_layers - 1
    total = _loss_rows(loss, <const floating*>plan[l].O, labels, target, sample_weight,
                       loss_grad, NULL, n, plan[l].n_out, scale, smoothing, partial)
    A = loss_grad        # the gradient arriving at the current layer
    for l in range(n_layers - 1, -1, -1):
        if status[0] != 0:
            break
        if floating is float and plan[l].bf16:
            status[0] = _bf16_backward_rows(
                <const float*>plan[l - 1].O if l > 0 else X,
                <const float*>plan[l].W, <const float*>plan[l].O, A,
                <float*>plan[l].D, <float*>plan[l - 1].D if l > 0 else NULL,
                <float*>plan[l].dW, <float*>plan[l].db, n, plan[l].n_in,
                plan[l].n_out, plan[l].kind, <float>plan[l].alpha, partial,
                &plan[l].update_w if update else NULL,
                &plan[l].update_b if update and plan[l].update_b.p != NULL else NULL)
        else:
            _dense_backward_rows(<const floating*>plan[l - 1].O if l > 0 else X,
                                 <const floating*>plan[l].W, <const floating*>plan[l].O,
                                 A, <floating*>plan[l].D,
                                 <floating*>plan[l - 1].D if l > 0 else NULL,
                                 <floating*>plan[l].dW, <floating*>plan[l].db, n,
                                 plan[l].n_in, plan[l].n_out, plan[l].kind,
                                 <floating>plan[l].alpha, partial,
                                 &plan[l].update_w if update else NULL,
                                 &plan[l].update_b if update and plan[l].update_b.p != NULL
                                 else NULL)
        if l > 0:
            A = <const floating*>plan[l - 1].D
    return total


cdef void* _stack_array(object x, int dtype, Py_ssize_t d0, Py_ssize_t d1, bint written,
                        Py_ssize_t l, str name) except NULL:
    """The data of one of dense_stack_step's per-layer arrays after checking
    it: _plain of shape (d0, d1) ((d0,) when d1 < 0), writeable where the
    step writes to it."""
    if not _plain_shape(x, dtype, d0, d1) or (written and
                                              not cnp.PyArray_ISWRITEABLE(<cnp.ndarray> x)):
        shape = f"({d0},)" if d1 < 0 else f"({d0}, {d1})"
        raise ValueError(f"layer {l}: {name} must be a C-contiguous "
                         f"{'float32' if dtype == cnp.NPY_FLOAT32 else 'float64'} array of "
                         f"shape {shape}{', writeable' if written else ''}")
    return cnp.PyArray_DATA(<cnp.ndarray> x)


cdef int _stack_updates(DenseLayer* plan, Py_ssize_t n_layers, tuple update) except -1:
    """Fills each layer's update_w and update_b from dense_stack_step's
    ``update``, after checking that its views are the layers' parameters,
    in order (the same memory, writeable, state arrays of the same size):
    ("sgd", views, regularize, lr, momentum, nesterov, l2, l1), views
    holding (parameter, velocity or None), as sgd_step's arguments; or
    ("adam", views, regularize, lr, steps, beta1, beta2, eps, l2, l1,
    decay), views holding (parameter, m, v), the step taken being number
    steps + 1, the rest as adam_step's arguments.  Views come for each
    layer's W then its b, first layer to last."""
    kind = update[0]
    if kind == "sgd":
        _, views, regularize, lr, momentum, nesterov, l2, l1 = update
    elif kind == "adam":
        _, views, regularize, lr, steps, beta1, beta2, eps, l2, l1, decay = update
    else:
        raise ValueError(f"update: 'sgd' or 'adam', got {kind!r}")
    cdef Py_ssize_t l, k = 0, size
    cdef ParamUpdate* u
    cdef const void* param
    cdef int which
    cdef bint adam = kind == "adam"
    cdef double lr_t = 0
    if adam:
        lr_t = _adam_lr(lr, beta1, beta2, steps + 1)
    for l in range(n_layers):
        k += 1 + (plan[l].b != NULL)
    if len(views) != k or len(regularize) != k:
        raise ValueError(f"update: {len(views)} views for the layers' {k} parameters")
    k = 0
    for l in range(n_layers):
        for which in range(2):      # W, then b
            u = &plan[l].update_w if which == 0 else &plan[l].update_b
            param = plan[l].W if which == 0 else plan[l].b
            size = plan[l].n_in * plan[l].n_out if which == 0 else plan[l].n_out
            u.p = NULL      # a layer without bias: no update of its db
            if param == NULL:
                continue
            p, s1, *s2 = views[k]
            s2 = s2[0] if s2 else None
            if not (isinstance(p, cnp.ndarray) and _data(p) == param
                    and cnp.PyArray_SIZE(<cnp.ndarray> p) == size
                    and cnp.PyArray_ISWRITEABLE(<cnp.ndarray> p)
                    and (s1 is None and not adam or _state_of(s1, p, size))
                    and (s2 is None and not adam or _state_of(s2, p, size))):
                raise ValueError(f"update: view {k} is not layer {l}'s "
                                 f"{('weight', 'bias')[which]}, writeable "
                                 f"(with {'m and v' if adam else 'a velocity'} of its size)")
            u.p, u.s1, u.s2 = _data(p), _data(s1), _data(s2)
            u.size, u.regularize = size, regularize[k]
            if adam:
                _adam_rule(u, lr_t, beta1, beta2, eps, l2, l1, decay)
            else:
                _sgd_rule(u, lr, momentum, nesterov, l2, l1)
            k += 1
    return 0


cdef inline bint _state_of(object s, object p, Py_ssize_t size):
    """``s`` can be the optimiser state of parameter ``p`` (size elements)."""
    return (isinstance(s, cnp.ndarray) and s.dtype == p.dtype
            and cnp.PyArray_SIZE(<cnp.ndarray> s) == size
            and cnp.PyArray_ISCARRAY(<cnp.ndarray> s))


cdef void _stack_retune(DenseLayer* plan, Py_ssize_t n_layers, bint adam, double lr_t,
                        bint penalty, double l2, double l1) noexcept nogil:
    """The hyperparameters that change from step to step in an epoch: Adam's
    step size, and the penalty's l2 and l1 (of regularised parameters)."""
    cdef Py_ssize_t l
    cdef int which
    cdef ParamUpdate* u
    for l in range(n_layers):
        for which in range(2):
            u = &plan[l].update_w if which == 0 else &plan[l].update_b
            if u.p == NULL:
                continue
            if adam:
                u.lr = lr_t
            if penalty:
                u.l2 = l2 if u.regularize else 0
                u.l1 = l1 if u.regularize else 0


cdef NormChunk* _stack_norm_chunks(DenseLayer* plan, Py_ssize_t n_layers, bint single,
                                   Py_ssize_t* n_chunks, Py_ssize_t* total) except NULL:
    """The chunks of the regularised parameters, for _penalty_of."""
    cdef const void* data[64]
    cdef Py_ssize_t sizes[64]
    cdef Py_ssize_t l, count = 0
    cdef int which
    cdef ParamUpdate* u
    total[0] = 0
    for l in range(n_layers):
        for which in range(2):
            u = &plan[l].update_w if which == 0 else &plan[l].update_b
            if u.p != NULL and u.regularize:
                if count == 64:
                    raise ValueError("a penalty over more than 64 parameters")
                data[count], sizes[count] = u.p, u.size
                total[0] += u.size
                count += 1
    cdef NormChunk* chunks = _norm_chunks(data, sizes, count, single, n_chunks)
    if chunks == NULL:
        raise MemoryError()
    return chunks
