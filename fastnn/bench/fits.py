"""Whole estimator fits against scikit-learn, for ``fastnn bench``:

- ``mlp_lbfgs``: ``MLPClassifier(solver="lbfgs")`` on the digits data set
  (what scikit-learn users pick for small data);
- ``mlp_sparse``: an Adam-trained MLP on a TF-IDF-like sparse matrix (text
  classification: scipy.sparse CSR in, never densified).

fastnn's and scikit-learn's estimators get the same parameters and the same
arrays; the fits alternate, repeat by repeat, and the report gives the
median fit time, the test accuracy of each and the peak memory the fit
allocated (``tracemalloc``, which sees NumPy's and SciPy's buffers).
Both run a fixed number of iterations (``tol=0``), so they do equal work.
"""
import time
import tracemalloc
import warnings
from typing import NamedTuple

import numpy as np

import fastnn

FITS = ("mlp_lbfgs", "mlp_sparse")


class Sparse(NamedTuple):
    """mlp_sparse: n documents (a quarter held out) over a vocabulary of d,
    `words` word draws each (repeats merge: about 55% as many non-zeros), in
    `classes` topics; `epochs` of Adam."""
    n: int
    d: int
    words: int
    classes: int
    epochs: int


# profile -> (lbfgs max_iter, lbfgs training rows or None for all, Sparse)
SIZES = {
    "full": (200, None, Sparse(20000, 50000, 110, 20, 5)),
    "quick": (100, None, Sparse(8000, 50000, 110, 20, 3)),
    "smoke": (5, 300, Sparse(300, 2000, 30, 5, 1)),
}
HIDDEN = (100,)  # scikit-learn's default


def digits(rows=None):
    """Digits scaled to [0, 1], a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.25, random_state=0,
                                              stratify=y)
    return (X_tr[:rows], y_tr[:rows], X_te, y_te) if rows else (X_tr, y_tr, X_te, y_te)


def tfidf_like(size, seed=0):
    """A synthetic TF-IDF matrix (CSR, float64, rows of unit norm) and labels:
    each document draws a twentieth of its words from its topic's vocabulary
    (d / (2·classes) words) and the rest Zipf-distributed (exponent 1.1) from
    all d; term counts 1 + Poisson(0.5), weighted by the smoothed idf.
    Returns (X_train, y_train, X_test, y_test)."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    n, d, k, c = size.n, size.d, size.words, size.classes
    y = rng.integers(0, c, n)
    topics = rng.permuted(np.tile(np.arange(d), (c, 1)), axis=1)[:, :max(1, d // (2 * c))]
    n_topic = max(1, k // 20)
    topic_words = topics[y[:, None], rng.integers(0, topics.shape[1], (n, n_topic))]
    ranks = np.minimum(rng.zipf(1.1, (n, k - n_topic)) - 1, d - 1)
    common = rng.permutation(d)[ranks]          # the Zipf ranks as random word ids
    cols = np.concatenate([topic_words, common], axis=1).ravel()
    rows = np.repeat(np.arange(n), k)
    counts = 1.0 + rng.poisson(0.5, n * k)
    X = sp.csr_matrix((counts, (rows, cols)), shape=(n, d))   # duplicates summed
    df = np.bincount(X.indices, minlength=d)
    X.data *= (np.log((1 + n) / (1 + df)) + 1)[X.indices]
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.csr_matrix(sp.diags(1 / np.maximum(norms, 1e-12)) @ X)
    cut = n * 3 // 4
    return X[:cut], y[:cut], X[cut:], y[cut:]


def _estimators(fit):
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    if fit == "mlp_lbfgs":
        params = dict(hidden_layer_sizes=HIDDEN, solver="lbfgs", alpha=1e-4, tol=0.0,
                      random_state=0)
    else:
        params = dict(hidden_layer_sizes=HIDDEN, solver="adam", alpha=1e-4, batch_size=200,
                      learning_rate_init=1e-3, tol=0.0, n_iter_no_change=10**6,
                      random_state=0)
    return {"sklearn": lambda **kw: SklearnMLP(**params, **kw),
            "fastnn": lambda **kw: fastnn.MLPClassifier(**params, **kw)}


def _fit_once(make, max_iter, data):
    X_tr, y_tr, X_te, y_te = data
    model = make(max_iter=max_iter)
    tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fixed number of iterations: no convergence
        model.fit(X_tr, y_tr)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, float(model.score(X_te, y_te)), peak


def measure(fit, profile, repeats):
    """{peer: (median fit seconds, test accuracy, peak traced bytes)} and a
    description of the data."""
    max_iter, rows, sparse = SIZES[profile]
    if fit == "mlp_lbfgs":
        data = digits(rows)
        about = (f"digits, {data[0].shape[0]} training x {data[0].shape[1]} features, "
                 f"hidden {HIDDEN}, lbfgs, max_iter={max_iter}")
    else:
        data = tfidf_like(sparse)
        X = data[0]
        about = (f"TF-IDF-like CSR {X.shape[0]} x {X.shape[1]}, {X.nnz / X.shape[0]:.0f} "
                 f"non-zeros a row, {sparse.classes} classes, hidden {HIDDEN}, adam, batch 200, "
                 f"{sparse.epochs} epochs; as a dense float32 array X would take "
                 f"{X.shape[0] * X.shape[1] * 4 / 2**30:.2f} GiB")
        max_iter = sparse.epochs
    times, results = {}, {}
    for _ in range(repeats):
        for peer, make in _estimators(fit).items():   # interleaved
            seconds, accuracy, peak = _fit_once(make, max_iter, data)
            times.setdefault(peer, []).append(seconds)
            results[peer] = (accuracy, peak)
    return {peer: (float(np.median(t)), *results[peer]) for peer, t in times.items()}, about


def section(out, fits, profile, repeats, n_threads):
    """Writes the fits' tables; returns the problems (a fit that fails, or
    fastnn's test accuracy more than a point below scikit-learn's outside
    the smoke run)."""
    from .report import fmt_ratio, fmt_time, table
    from .workloads import threads
    problems = []
    try:
        import sklearn  # noqa: F401
    except ImportError:
        out("\n## Estimator fits against scikit-learn\n\nnot run: scikit-learn is not "
            "installed (pip install scikit-learn)")
        return problems
    out(f"\n## Estimator fits against scikit-learn, {n_threads} threads\n\nThe same "
        "parameters and arrays, a fixed number of iterations (tol=0), fits alternating; "
        f"the median of {repeats} fit time(s), the test accuracy, and the peak memory the fit "
        "allocated (tracemalloc).\n")
    rows = []
    for fit in fits:
        try:
            with threads(n_threads):
                result, about = measure(fit, profile, repeats)
        except Exception as exc:  # reported, not raised: the rest of the report stands
            problems.append(f"{fit}: {type(exc).__name__}: {exc}")
            continue
        (t_sk, acc_sk, mem_sk), (t_fn, acc_fn, mem_fn) = result["sklearn"], result["fastnn"]
        rows.append([fit, about, fmt_time(t_fn), fmt_time(t_sk), fmt_ratio(t_sk / t_fn),
                     f"{100 * acc_fn:.2f}%", f"{100 * acc_sk:.2f}%",
                     f"{mem_fn / 2**20:.0f} MiB", f"{mem_sk / 2**20:.0f} MiB"])
        if profile != "smoke" and acc_fn < acc_sk - 0.01:
            problems.append(f"{fit}: fastnn's test accuracy {acc_fn:.4f} is more than a point "
                            f"below scikit-learn's {acc_sk:.4f}")
    out(table(["fit", "data and parameters", "fastnn", "sklearn", "sklearn/fastnn",
               "fastnn accuracy", "sklearn accuracy", "fastnn peak memory",
               "sklearn peak memory"], rows))
    return problems
