"""The dense layer on a scipy.sparse input: functional.sparse_dense_forward /
sparse_dense_backward against the NumPy reference (dtypes, index dtypes,
formats, matrix and array classes, awkward shapes, duplicates), finite
differences, the same bits at any thread count, every argument error,
malformed CSR structures, and nn.Dense / train_step / fit on sparse X against
the dense path on X.toarray()."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastnn
from fastnn import _kernels, functional, nn, optim, reference
from conftest import (
    ACTIVATIONS,
    DTYPES,
    assert_close_accumulated,
    assert_gradient_matches,
    nan_buffer,
    randn,
)

INDEX_DTYPES = (np.int32, np.int64)
# (rows, features, outputs, density): one row, one output, odd sizes that
# leave remainders of the 16-row and 64-feature tasks, mostly-empty rows
SHAPES = ((1, 7, 3, 0.5), (37, 130, 1, 0.1), (97, 101, 13, 0.05), (130, 67, 33, 0.02),
          (16, 64, 16, 0.3))
CLASSES = {"csr_matrix": sp.csr_matrix, "csr_array": sp.csr_array,
           "csc_matrix": sp.csc_matrix, "csc_array": sp.csc_array}


def sparse_input(rng, n, n_in, density, dtype, cls="csr_matrix", index_dtype=np.int32,
                 empty_rows=True):
    """A random sparse X with values in [-2, 2], some rows left empty, in
    the class and index dtype asked for."""
    dense = np.where(rng.uniform(size=(n, n_in)) < density, rng.uniform(-2, 2, (n, n_in)), 0)
    if empty_rows and n > 2:
        dense[::3] = 0
    X = CLASSES[cls](dense.astype(dtype))
    X.indices = X.indices.astype(index_dtype)
    X.indptr = X.indptr.astype(index_dtype)
    return X


def unsorted_with_duplicates(rng, n, n_in, per_row, dtype, index_dtype=np.int32):
    """A CSR X whose rows repeat columns and list them in no order (scipy
    keeps both as given): the dense value is the sum of a column's entries."""
    indices = rng.integers(0, n_in, (n, per_row))
    indices[:, 1] = indices[:, 0]                 # a duplicate in every row
    indices = indices[:, ::-1].ravel().astype(index_dtype)
    indptr = np.arange(0, n * per_row + 1, per_row).astype(index_dtype)
    data = rng.uniform(-2, 2, n * per_row).astype(dtype)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, n_in))
    assert not X.has_canonical_format
    return X


def layer(rng, n_in, n_out, dtype):
    W = randn(rng, (n_in, n_out), dtype, 1 / np.sqrt(n_in))
    b = randn(rng, (n_out,), dtype, 0.5)
    return W, b


def assert_forward_close(got, X, W, b, name, dtype):
    expected = reference.sparse_dense_forward(X, W, b, name, alpha=0.1)
    A = np.abs(X.toarray().astype(np.float64))
    bound = A @ np.abs(W.astype(np.float64))
    if b is not None:
        bound += np.abs(b.astype(np.float64))
    assert_close_accumulated(got, expected, bound, X.shape[1] + 1, dtype)


def assert_backward_close(got, X, W, O, G, name, dtype):
    dW, db = got
    eW, eb = reference.sparse_dense_backward(X, W, O, G, name, alpha=0.1)
    delta = np.abs(reference.activation_backward(O, G, name, alpha=0.1).astype(np.float64))
    A = np.abs(X.toarray().astype(np.float64))
    assert_close_accumulated(dW, eW, A.T @ delta, X.shape[0], dtype)
    assert_close_accumulated(db, eb, delta.sum(axis=0), X.shape[0], dtype)


def backward_data(rng, X, W, b, name, dtype):
    O = reference.sparse_dense_forward(X, W, b, name, alpha=0.1)
    G = randn(rng, O.shape, dtype)
    return O, G


# ---------------------------------------------------------------------------
# against the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_matches_reference(rng, dtype, shape, name):
    n, n_in, n_out, density = shape
    X = sparse_input(rng, n, n_in, density, dtype)
    W, b = layer(rng, n_in, n_out, dtype)
    out = nan_buffer((n, n_out), dtype)
    got = functional.sparse_dense_forward(X, W, b, name, alpha=0.1, out=out)
    assert got is out
    assert_forward_close(got, X, W, b, name, dtype)
    assert_forward_close(functional.sparse_dense_forward(X, W, None, name, alpha=0.1),
                         X, W, None, name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_matches_reference(rng, dtype, shape, name):
    n, n_in, n_out, density = shape
    X = sparse_input(rng, n, n_in, density, dtype)
    W, b = layer(rng, n_in, n_out, dtype)
    O, G = backward_data(rng, X, W, b, name, dtype)
    G_before = G.copy()
    buffers = (nan_buffer((n_in, n_out), dtype), nan_buffer((n_out,), dtype))
    got = functional.sparse_dense_backward(X, W, O, G, name, alpha=0.1, out=buffers)
    assert got[0] is buffers[0] and got[1] is buffers[1]
    np.testing.assert_array_equal(G, G_before)      # grad_out untouched by default
    assert_backward_close(got, X, W, O, G, name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("cls", sorted(CLASSES))
def test_formats_classes_and_index_dtypes(rng, dtype, index_dtype, cls):
    X = sparse_input(rng, 45, 70, 0.1, dtype, cls, index_dtype)
    W, b = layer(rng, 70, 9, dtype)
    O = functional.sparse_dense_forward(X, W, b, "tanh", alpha=0.1)
    assert_forward_close(O, X, W, b, "tanh", dtype)
    G = randn(rng, O.shape, dtype)
    assert_backward_close(functional.sparse_dense_backward(X, W, O, G, "tanh", alpha=0.1),
                          X, W, O, G, "tanh", dtype)


@pytest.mark.parametrize("x_dtype", (np.float32, np.float64, np.int64, np.bool_))
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_converted_to_the_dtype_of_W(rng, x_dtype, dtype):
    X = sparse_input(rng, 20, 30, 0.2, np.float64)
    X.data = (X.data > 0) if x_dtype is np.bool_ else X.data.astype(x_dtype)
    W, b = layer(rng, 30, 4, dtype)
    O = functional.sparse_dense_forward(X, W, b)
    assert O.dtype == dtype
    assert_forward_close(O, X, W, b, "identity", dtype)
    dW, db = functional.sparse_dense_backward(X, W, O, np.ones_like(O))
    assert dW.dtype == dtype and db.dtype == dtype


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_index_arrays_are_not_copied(rng, index_dtype, dtype):
    # int32 and int64 are taken as they are; other values dtypes copy values only
    X = sparse_input(rng, 20, 30, 0.2, np.float64, index_dtype=index_dtype)
    parts = functional._csr(X, np.dtype(dtype))
    assert parts[2] is X.indices and parts[3] is X.indptr
    assert (parts[1] is X.data) == (dtype is np.float64)


def test_mixed_index_dtypes_and_storage_beyond_nnz(rng):
    X = sparse_input(rng, 25, 40, 0.2, np.float64)
    W, b = layer(rng, 40, 5, np.float64)
    expected = reference.sparse_dense_forward(X, W, b, "relu")
    for indices, indptr in ((np.int32, np.int64), (np.int64, np.int32)):
        Y = X.copy()
        Y.indices, Y.indptr = Y.indices.astype(indices), Y.indptr.astype(indptr)
        np.testing.assert_allclose(functional.sparse_dense_forward(Y, W, b, "relu"), expected,
                                   rtol=1e-12, atol=1e-12)
    # scipy allows data and indices longer than indptr[-1]: the tail is ignored
    Y = X.copy()
    Y.data = np.concatenate([Y.data, [np.nan] * 3])
    Y.indices = np.concatenate([Y.indices, [10 ** 6] * 3]).astype(np.int32)
    np.testing.assert_allclose(functional.sparse_dense_forward(Y, W, b, "relu"), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", [functional, reference], ids=["functional", "reference"])
def test_duplicate_and_unsorted_indices_sum(rng, impl, index_dtype, dtype):
    X = unsorted_with_duplicates(rng, 40, 50, 6, dtype, index_dtype)
    W, b = layer(rng, 50, 7, dtype)
    dense = X.toarray()         # duplicates summed by scipy
    O = impl.sparse_dense_forward(X, W, b, "sigmoid")
    expected = reference.dense_forward(dense, W, b, "sigmoid")
    tol = 1e-5 if dtype is np.float32 else 1e-12
    np.testing.assert_allclose(O, expected, rtol=tol, atol=tol)
    G = randn(rng, O.shape, dtype)
    dW, db = impl.sparse_dense_backward(X, W, O, G, "sigmoid")
    _, eW, eb = reference.dense_backward(dense, W, O, G, "sigmoid", need_input_grad=False)
    np.testing.assert_allclose(dW, eW, rtol=tol, atol=tol)
    np.testing.assert_allclose(db, eb, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_all_zero_matrix(rng, dtype, name):
    # no stored value: O = f(b), dW entirely zero (every element written)
    X = sp.csr_matrix((9, 200), dtype=dtype)
    W, b = layer(rng, 200, 5, dtype)
    O = functional.sparse_dense_forward(X, W, b, name, alpha=0.1, out=nan_buffer((9, 5), dtype))
    np.testing.assert_allclose(O, reference.activation_forward(np.tile(b, (9, 1)), name,
                                                               alpha=0.1), rtol=1e-6)
    G = randn(rng, O.shape, dtype)
    dW, db = functional.sparse_dense_backward(
        X, W, O, G, name, alpha=0.1,
        out=(nan_buffer(W.shape, dtype), nan_buffer((5,), dtype)))
    np.testing.assert_array_equal(dW, np.zeros(W.shape, dtype))
    assert_close_accumulated(db, reference.activation_backward(O, G, name, alpha=0.1).sum(0),
                             np.abs(G).sum(0), 9, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large(rng, dtype):
    # above every parallel threshold, many tasks of rows and of features
    X = sparse_input(rng, 3000, 5000, 0.004, dtype, empty_rows=False)
    W, b = layer(rng, 5000, 40, dtype)
    O = functional.sparse_dense_forward(X, W, b, "relu")
    assert_forward_close(O, X, W, b, "relu", dtype)
    G = randn(rng, O.shape, dtype)
    assert_backward_close(functional.sparse_dense_backward(X, W, O, G, "relu"),
                          X, W, O, G, "relu", dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_feature_buckets(rng, dtype):
    # n_out 1: the weight gradient's buckets of features (a fixed number of
    # bytes of dW each) hold 64-128 Ki features; 300001 leaves a remainder
    n_in = 300001
    X = sparse_input(rng, 30, n_in, 2e-4, dtype, empty_rows=False)
    X = sp.vstack([X, sp.csr_matrix(([1.5, -0.5], ([0, 0], [0, n_in - 1])), shape=(1, n_in),
                                    dtype=dtype)]).tocsr()
    W, b = layer(rng, n_in, 1, dtype)
    O = functional.sparse_dense_forward(X, W, b, "sigmoid")
    G = randn(rng, O.shape, dtype)
    dW, db = functional.sparse_dense_backward(X, W, O, G, "sigmoid",
                                              out=(nan_buffer(W.shape, dtype), None))
    delta = (G * O * (1 - O)).astype(np.float64)
    expected = np.asarray(X.astype(np.float64).T @ delta)     # scipy, never densified
    assert_close_accumulated(dW, expected, np.abs(X.astype(np.float64)).T @ np.abs(delta),
                             X.shape[0], dtype)
    assert np.count_nonzero(dW) <= X.nnz


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_overwrite_grad_out(rng, name):
    X = sparse_input(rng, 20, 30, 0.2, np.float64)
    W, b = layer(rng, 30, 6, np.float64)
    O, G = backward_data(rng, X, W, b, name, np.float64)
    expected = functional.sparse_dense_backward(X, W, O, G, name, alpha=0.1)
    buffer = G.copy()
    got = functional.sparse_dense_backward(X, W, O, buffer, name, alpha=0.1,
                                           overwrite_grad_out=True)
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(buffer, reference.activation_backward(O, G, name, alpha=0.1),
                               rtol=1e-15)


# ---------------------------------------------------------------------------
# finite differences (float64)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_gradients_by_finite_differences(rng, name):
    X = unsorted_with_duplicates(rng, 8, 12, 4, np.float64)
    W, b = layer(rng, 12, 3, np.float64)
    G = randn(rng, (8, 3), np.float64)
    Z = X.toarray() @ W + b
    if name in ("relu", "leaky_relu"):
        assert np.abs(Z).min() > 1e-4, "data too close to the kink"
    O = functional.sparse_dense_forward(X, W, b, name, alpha=0.1)
    dW, db = functional.sparse_dense_backward(X, W, O, G, name, alpha=0.1)

    def loss_of_W(W_):
        return float(np.sum(G * functional.sparse_dense_forward(X, W_, b, name, alpha=0.1)))

    def loss_of_b(b_):
        return float(np.sum(G * functional.sparse_dense_forward(X, W, b_, name, alpha=0.1)))

    assert_gradient_matches(dW, loss_of_W, W)
    assert_gradient_matches(db, loss_of_b, b)


# ---------------------------------------------------------------------------
# the same bits at any thread count
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_bit_identical_across_thread_counts(rng, dtype, index_dtype):
    # (nnz + n) x n_out and (nnz + n_in) x n_out far above MIN_PARALLEL_WORK;
    # duplicates make several terms per dW element land in one feature
    X = sp.vstack([sparse_input(rng, 2000, 3000, 0.01, dtype, index_dtype=index_dtype),
                   unsorted_with_duplicates(rng, 500, 3000, 20, dtype, index_dtype)]).tocsr()
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    W, b = layer(rng, 3000, 70, dtype)
    G = randn(rng, (2500, 70), dtype)
    results = {}
    for n in (1, 2, 3, 8):
        with fastnn.num_threads(n):
            O = functional.sparse_dense_forward(X, W, b, "tanh")
            dW, db = functional.sparse_dense_backward(X, W, O, G, "tanh")
        results[n] = [a.tobytes() for a in (O, dW, db)]
    for n in (2, 3, 8):
        assert results[n] == results[1], f"{n} threads differ from 1 thread"


# ---------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------
def _case(rng, dtype=np.float32):
    X = sparse_input(rng, 10, 8, 0.3, dtype)
    W, b = layer(rng, 8, 4, dtype)
    O = functional.sparse_dense_forward(X, W, b, "tanh")
    return X, W, b, O, randn(rng, O.shape, dtype)


def test_forward_argument_errors(rng):
    X, W, b, O, G = _case(rng)
    f = functional.sparse_dense_forward
    readonly = np.empty((10, 4), np.float32)
    readonly.flags.writeable = False
    cases = [
        (TypeError, "^X must be a scipy.sparse", lambda: f(X.toarray(), W, b)),
        (TypeError, "^X must be a scipy.sparse", lambda: f(X.toarray().tolist(), W, b)),
        (ValueError, r"^X must have shape \(N, 8\)", lambda: f(sp.csr_matrix((10, 9)), W, b)),
        (ValueError, "^X must not be empty", lambda: f(sp.csr_matrix((0, 8)), W, b)),
        (ValueError, "^X must not be empty", lambda: f(sp.csr_matrix((10, 0)), W, b)),
        (TypeError, "^X must hold float32 or float64",
         lambda: f(sp.csr_matrix(X, dtype=np.complex128), W, b)),
        (TypeError, "^W must be a float32 or float64", lambda: f(X, W.astype(np.int64), b)),
        (TypeError, "^W must be a float32 or float64", lambda: f(X, W.astype(np.float16), b)),
        (ValueError, "^W must be 2-D", lambda: f(X, W[:, 0], b)),
        (TypeError, "^W must be a float32 or float64", lambda: f(X, W.tolist(), b)),
        (TypeError, "^b must have the dtype of W", lambda: f(X, W, b.astype(np.float64))),
        (TypeError, "^b must have the dtype of W", lambda: f(X, W, b.tolist())),
        (ValueError, "^b must have shape", lambda: f(X, W, b[:3])),
        (TypeError, "^out must have dtype", lambda: f(X, W, b, out=np.empty((10, 4)))),
        (ValueError, "^out must have shape", lambda: f(X, W, b, out=np.empty((10, 5), np.float32))),
        (ValueError, "^out must be writeable", lambda: f(X, W, b, out=readonly)),
        (ValueError, "^out must be C-contiguous",
         lambda: f(X, W, b, out=np.empty((4, 10), np.float32).T)),
        (TypeError, "^out must be a numpy.ndarray", lambda: f(X, W, b, out=[0.0])),
        (ValueError, "^activation must be one of", lambda: f(X, W, b, "softplus")),
        (ValueError, "alpha", lambda: f(X, W, b, "leaky_relu", alpha=-1.0)),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf))
def test_non_finite_values_of_X(rng, bad):
    X, W, b, O, G = _case(rng)
    X = X.copy()
    X.data[3] = bad
    with pytest.raises(ValueError, match="^X.data must be finite"):
        functional.sparse_dense_forward(X, W, b)
    with pytest.raises(ValueError, match="^X.data must be finite"):
        functional.sparse_dense_backward(X, W, O, G)


def test_backward_argument_errors(rng):
    X, W, b, O, G = _case(rng)
    f = functional.sparse_dense_backward
    readonly = G.copy()
    readonly.flags.writeable = False
    cases = [
        (TypeError, "^X must be a scipy.sparse", lambda: f(X.toarray(), W, O, G)),
        (ValueError, r"^X must have shape \(N, 8\)", lambda: f(sp.csr_matrix((10, 7)), W, O, G)),
        (TypeError, "^W must be a float32 or float64", lambda: f(X, W.astype(np.int32), O, G)),
        (ValueError, "^O must have shape", lambda: f(X, W, O[:5], G)),
        (ValueError, "^grad_out must have shape", lambda: f(X, W, O, G[:, :3])),
        (ValueError, "^grad_out must be writeable",
         lambda: f(X, W, O, readonly, overwrite_grad_out=True)),
        (TypeError, "^grad_out must have dtype",
         lambda: f(X, W, O, G.astype(np.float64), overwrite_grad_out=True)),
        (TypeError, "^out must be a pair", lambda: f(X, W, O, G, out=(None, None, None))),
        (TypeError, r"^out\[0\] \(dW\) must have dtype",
         lambda: f(X, W, O, G, out=(np.empty((8, 4)), None))),
        (ValueError, r"^out\[1\] \(db\) must have shape",
         lambda: f(X, W, O, G, out=(None, np.empty(5, np.float32)))),
        (ValueError, r"^out\[0\] \(dW\) must not overlap", lambda: f(X, W, O, G, out=(W, None))),
        (ValueError, "^activation must be one of", lambda: f(X, W, O, G, "gelu")),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


# ---------------------------------------------------------------------------
# malformed CSR structures: a ValueError, never a crash
# ---------------------------------------------------------------------------
def _malformed(X, what):
    X = X.copy()
    if what == "index too large":
        X.indices[2] = X.shape[1]
    elif what == "negative index":
        X.indices[-1] = -1
    elif what == "huge index":
        X.indices = X.indices.astype(np.int64)
        X.indptr = X.indptr.astype(np.int64)
        X.indices[0] = 2 ** 40
    elif what == "indptr not from 0":
        X.indptr[0] = 1
    elif what == "indptr decreasing":
        X.indptr[3], X.indptr[4] = X.indptr[4] + 1, X.indptr[3]
    elif what == "indptr beyond nnz":
        X.indptr[-1] = len(X.data) + 5
    elif what == "indptr negative end":
        X.indptr[-1] = -3
    elif what == "indptr too short":
        X.indptr = X.indptr[:-1]
    elif what == "indices shorter than data":
        X.indices = X.indices[:-2]
    else:
        raise AssertionError(what)
    return X


MALFORMED = ("index too large", "negative index", "huge index", "indptr not from 0",
             "indptr decreasing", "indptr beyond nnz", "indptr negative end",
             "indptr too short", "indices shorter than data")


@pytest.mark.parametrize("what", MALFORMED)
def test_malformed_csr_raises(rng, what):
    X, W, b, O, G = _case(rng, np.float64)
    assert X.nnz > 6
    bad = _malformed(X, what)
    with pytest.raises(ValueError, match="^X"):
        functional.sparse_dense_forward(bad, W, b)
    with pytest.raises(ValueError, match="^X"):
        functional.sparse_dense_backward(bad, W, O, G)
    model = nn.Sequential(nn.Dense(8, 4, dtype=np.float64, rng=0))
    with pytest.raises(ValueError, match="^X"):
        nn.fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), bad,
               np.zeros((10, 4)), epochs=1, batch_size=4, rng=0)


def test_kernel_entries_check_the_structure_themselves(rng):
    # the compiled entries, called directly, refuse what functional would
    X, W, b, O, G = _case(rng, np.float64)
    bad = _malformed(X, "index too large")
    out = np.empty(O.shape)
    with pytest.raises(ValueError, match="X.indices must lie in"):
        _kernels.sparse_dense_forward(bad.data, bad.indices, bad.indptr, W, b, out, 0, 0.0)
    with pytest.raises(ValueError, match="X.indices and X.data must have the same length"):
        _kernels.sparse_dense_forward(X.data[:-1], X.indices, X.indptr, W, b, out, 0, 0.0)
    with pytest.raises(ValueError, match="X.indptr must end"):
        _kernels.sparse_dense_backward(X.data[:-1], X.indices[:-1], X.indptr, O, G, G.copy(),
                                       np.empty(W.shape), np.empty(4), 0, 0.0)


# ---------------------------------------------------------------------------
# the layer API
# ---------------------------------------------------------------------------
def _mlp(dtype, n_in=60, seed=0):
    return nn.Sequential(nn.Dense(n_in, 16, "relu", dtype=dtype, rng=seed),
                         nn.Dense(16, 5, "tanh", dtype=dtype, rng=seed + 1),
                         nn.Dense(5, 3, dtype=dtype, rng=seed + 2))


def _tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", ("csr_matrix", "csc_array"))
def test_dense_layer_on_sparse_input(rng, dtype, cls):
    X = sparse_input(rng, 33, 60, 0.1, np.float64, cls)
    sparse_layer = nn.Dense(60, 7, "sigmoid", dtype=dtype, rng=3)
    dense_layer = nn.Dense(60, 7, "sigmoid", dtype=dtype, rng=3)
    O = sparse_layer.forward(X).copy()
    np.testing.assert_allclose(O, dense_layer.forward(X.toarray()), **_tol(dtype))
    G = randn(rng, O.shape, dtype)
    with pytest.raises(ValueError, match="no input gradient"):
        sparse_layer.backward(G)
    assert sparse_layer.backward(G, need_input_grad=False) is None
    dense_layer.backward(G, need_input_grad=False)
    for p, q in zip(sparse_layer.parameters(), dense_layer.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, **_tol(dtype))
    # eval mode: a fresh array every call
    sparse_layer.eval()
    assert sparse_layer.forward(X) is not sparse_layer.forward(X)
    with pytest.raises(ValueError, match=r"expects X of shape \(N, 60\)"):
        sparse_layer.forward(sp.csr_matrix((3, 59)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_train_step_and_forward_backward_on_sparse_input(rng, dtype, monkeypatch):
    X = sparse_input(rng, 40, 60, 0.1, dtype)
    y = rng.integers(0, 3, 40)
    results = []
    for inputs in (X, X.toarray()):
        model = _mlp(dtype)
        loss = nn.SoftmaxCrossEntropy()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        values = [nn.forward_backward(model, loss, inputs, y)]
        grads = [p.grad.copy() for p in model.parameters()]
        values += [nn.train_step(model, loss, opt, inputs, y) for _ in range(3)]
        results.append((values, grads, [p.data.copy() for p in model.parameters()]))
    (v1, g1, p1), (v2, g2, p2) = results
    np.testing.assert_allclose(v1, v2, **_tol(dtype))
    for a, b in zip(g1 + p1, g2 + p2):
        np.testing.assert_allclose(a, b, **_tol(dtype))
    # the fused one-call step is never handed a sparse X
    monkeypatch.setattr(nn, "_dense_stack_step", lambda *a, **k: pytest.fail("fused path"))
    model = _mlp(dtype)
    nn.train_step(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), X,
                  np.zeros((40, 3), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shuffle", (True, False))
@pytest.mark.parametrize("weighted", (False, True))
def test_fit_on_sparse_matches_fit_on_dense(rng, dtype, shuffle, weighted):
    X = sparse_input(rng, 150, 60, 0.08, np.float64, "csc_matrix")
    y = rng.integers(0, 3, 150)
    w = rng.uniform(0.5, 2, 150) if weighted else None
    runs = []
    for inputs in (X, X.toarray()):
        model = _mlp(dtype, seed=5)
        history = nn.fit(model, nn.SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=0.01),
                         inputs, y, epochs=3, batch_size=32, shuffle=shuffle, rng=7,
                         sample_weight=w)
        runs.append((history, [p.data.copy() for p in model.parameters()]))
    (h1, p1), (h2, p2) = runs
    np.testing.assert_allclose(h1, h2, **_tol(dtype))
    assert h1[-1] < h1[0]
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, **_tol(dtype))


def test_fit_gathers_sparse_batches(rng, monkeypatch):
    # every batch reaches the first layer as CSR of the model dtype, the
    # batch's rows only: X is never densified
    X = sparse_input(rng, 70, 60, 0.1, np.float64, "csc_array")
    seen = []
    original = nn.Dense._sparse_forward

    def spy(self, batch):
        seen.append((batch.format, batch.dtype, batch.shape))
        return original(self, batch)

    monkeypatch.setattr(nn.Dense, "_sparse_forward", spy)
    model = _mlp(np.float32)
    nn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X,
           rng.integers(0, 3, 70), epochs=2, batch_size=32, rng=0)
    assert seen == [("csr", np.float32, (m, 60)) for m in (32, 32, 6) * 2]
