"""Training cases run on every rank under mpiexec by tests/test_distributed.py.

``python _mpi_worker.py OUTDIR CASE...`` runs each case with
``MPI.COMM_WORLD`` and saves rank r's results to ``OUTDIR/CASE.rank{r}.npz``;
the test runs the same case functions with ``comm=None`` (one process,
``nn.fit`` / the estimators without comm) for the reference.  Importing this
module does not import mpi4py.
"""
import functools
import os
import sys
import warnings

import numpy as np

import fastnn
from fastnn import distributed as dist
from fastnn import nn, optim
from fastnn.estimators import LogisticRegression, MLPClassifier, MLPRegressor


def make_data(n=103, d=12, k=3, dtype=np.float64, seed=5):
    """Gaussian inputs, labels of a random linear teacher (n is prime, so no
    rank count or batch size divides it)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = np.argmax(X @ rng.standard_normal((d, k)), axis=1)
    return X, y


def _layer(comm, dtype, adam=False):
    X, y = make_data(dtype=dtype)
    w = np.random.default_rng(9).uniform(0.2, 2.0, len(y)) if adam else None
    model = nn.Sequential(nn.Dense(12, 16, "relu", rng=1, dtype=dtype),
                          nn.Dense(16, 3, rng=2, dtype=dtype))
    opt = (optim.Adam(model.parameters(), lr=0.01) if adam else
           optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    train = nn.fit
    if comm is not None:
        opt = dist.DistributedOptimizer(opt, comm)
        train = functools.partial(dist.fit, comm=comm)
    history = train(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=4, batch_size=16, rng=3,
                    sample_weight=w, callbacks=[optim.StepLR(opt, step_size=2, gamma=0.5)])
    return {**model.state_dict(), "history": np.array(history)}


def _mlp_state(est):
    out = {f"coef{i}": W for i, W in enumerate(est.coefs_)}
    out.update({f"intercept{i}": b for i, b in enumerate(est.intercepts_)})
    return {**out, "loss_curve": np.array(est.loss_curve_)}


def _mlp_classifier(comm, dtype):
    X, y = make_data(dtype=dtype)
    est = MLPClassifier((16,), solver="adam", batch_size=16, max_iter=4, random_state=0,
                        learning_rate_init=0.01, dtype=dtype, comm=comm)
    return _mlp_state(est.fit(X, y))


def _mlp_regressor(comm):
    X, y = make_data()
    # sgd + invscaling + alpha: the batch-size penalty and the schedule go
    # through the distributed optimiser
    est = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling",
                       learning_rate_init=0.05, alpha=1e-2, batch_size=10, max_iter=4,
                       random_state=0, dtype=np.float64, comm=comm)
    return _mlp_state(est.fit(X, X[:, 0] - y))


def _logreg(comm, solver, k):
    X, y = make_data(k=k)
    est = LogisticRegression(solver=solver, C=0.5, max_iter=30 if solver == "gd" else 5,
                             batch_size=16, random_state=0, comm=comm).fit(X, y)
    return {"coef": est.coef_, "intercept": est.intercept_, "n_iter": est.n_iter_}


def _sharded(comm):
    """Each rank reads its own rows of a .npy file (unequal shards)."""
    path = os.environ["FASTNN_SHARD_FILE"]
    X = dist.load_shard(path, comm)
    assert isinstance(X, np.memmap), type(X)
    lo, hi = dist.shard_range(np.load(path, mmap_mode="r").shape[0], comm)
    y = make_data()[1][lo:hi]
    model = nn.Sequential(nn.Dense(12, 3, rng=comm.Get_rank()))  # broadcast fixes it
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), comm)
    history = dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=3, batch_size=16,
                       rng=4, comm=comm, sharded=True)
    return {**model.state_dict(), "history": np.array(history)}


def _fail(comm):
    """Rank 1 raises in its third step, while the others wait in Allreduce."""
    X, y = make_data()
    model = nn.Sequential(nn.Dense(12, 3, rng=0))
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), comm)

    def boom(epoch, loss):
        if comm.Get_rank() == 1:
            raise RuntimeError("rank 1 fails on purpose")
    with dist.abort_on_error(comm):
        dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1000, batch_size=16,
                 rng=0, comm=comm, callbacks=[boom])
    return {}


CASES = {
    "layer_sgd64": lambda comm: _layer(comm, np.float64),
    "layer_sgd32": lambda comm: _layer(comm, np.float32),
    "layer_adam_weighted64": lambda comm: _layer(comm, np.float64, adam=True),
    "mlp_classifier64": lambda comm: _mlp_classifier(comm, np.float64),
    "mlp_classifier32": lambda comm: _mlp_classifier(comm, np.float32),
    "mlp_regressor64": _mlp_regressor,
    "logreg_gd_binary": lambda comm: _logreg(comm, "gd", 2),
    "logreg_gd_multinomial": lambda comm: _logreg(comm, "gd", 3),
    "logreg_sgd": lambda comm: _logreg(comm, "sgd", 3),
    "sharded": _sharded,
    "fail": _fail,
}


def run_case(name, comm):
    with warnings.catch_warnings():  # short runs "do not converge"
        warnings.simplefilter("ignore")
        return CASES[name](comm)


def main(outdir, *names):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    expected = os.environ.get("FASTNN_EXPECTED_PACKAGE")
    if expected and os.path.realpath(os.path.dirname(fastnn.__file__)) != os.path.realpath(expected):
        raise RuntimeError(f"imported fastnn from {fastnn.__file__}, expected {expected}")
    with dist.abort_on_error(comm):
        for name in names:
            np.savez(os.path.join(outdir, f"{name}.rank{comm.Get_rank()}.npz"),
                     **run_case(name, comm))


if __name__ == "__main__":
    main(*sys.argv[1:])
