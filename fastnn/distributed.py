"""Synchronous data-parallel training over MPI (mpi4py).

Every rank (process) holds a replica of the model, computes the gradient of
its part of each *global* minibatch, and the gradients are summed with one
``Allreduce`` of one preallocated flat buffer per step, weighted so that the
result is the gradient of the global minibatch's mean loss; then every rank
applies the same optimiser update, so the replicas stay identical.

Layer API::

    from mpi4py import MPI
    from fastnn import nn, optim, distributed as dist

    comm = MPI.COMM_WORLD
    model = nn.Sequential(nn.Dense(784, 256, "relu"), nn.Dense(256, 10))
    dist.broadcast_parameters(model, comm)           # rank 0's initial weights
    opt = dist.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.05), comm)
    with dist.abort_on_error(comm):                  # a failing rank stops all
        history = dist.fit(model, nn.SoftmaxCrossEntropy(), opt, X, y,
                           epochs=5, batch_size=128, rng=0, comm=comm)

run with ``mpirun -n 4 python train.py``.  The estimators take ``comm=``
(``MLPClassifier(comm=MPI.COMM_WORLD)``) and do all of this themselves.

Data: :func:`fit` has two modes.

- ``sharded=False`` (default): every rank passes the same (X, y) — a
  memory-mapped ``.npy`` is fine, each rank then reads from disk only the
  rows of its part of each minibatch.  The shuffled order comes from the same
  seed on every rank, and rank r takes the r-th contiguous part of each
  global batch: P ranks on batch B make the same steps as one process on
  batch B (``nn.fit``), up to the rounding of the reduction.
- ``sharded=True``: each rank passes only its own shard (e.g. from
  :func:`load_shard`).  Each rank shuffles its shard with its own stream
  (spawned from the common seed) and splits it into the same number of steps,
  ceil(N / batch_size) for N samples in all; a global batch is the union of
  the ranks' local batches.  The replicas stay identical, but the sample order
  differs from one process's, so the result is not that of ``nn.fit``.

Any object with mpi4py's ``Get_rank``, ``Get_size``, ``Allreduce``,
``Bcast``, ``bcast`` and ``Abort`` methods serves as ``comm``.
"""
import contextlib
import math
import os
import sys
import time
import traceback

import numpy as np

from . import init as _init
from . import nn, optim

__all__ = [
    "DistributedOptimizer",
    "abort_on_error",
    "broadcast_parameters",
    "default_threads",
    "fit",
    "is_root",
    "launched_by_mpi",
    "load_shard",
    "shard_range",
    "sync_generator",
    "weighted_mean",
    "world",
]

# abort_on_error's pause between its report and Abort, for the launcher to
# forward the report (a failure path: the pause costs nothing otherwise)
_ABORT_GRACE_SECONDS = 0.2


def world():
    """``mpi4py.MPI.COMM_WORLD``, with a clear error when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("fastnn.distributed needs mpi4py and an MPI library: "
                          'pip install "fastnn[mpi]"') from exc
    return MPI.COMM_WORLD


# set in every rank's environment by MPICH/Intel MPI (PMI), Open MPI and PMIx launchers
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


def launched_by_mpi():
    """True in a process started by mpiexec/mpirun (without importing MPI)."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def _in_place():
    try:
        from mpi4py import MPI
    except ImportError:  # only a duck-typed communicator can be in use
        return None
    return MPI.IN_PLACE


def _sum_in_place(comm, buf):
    comm.Allreduce(_in_place(), buf)


def is_root(comm, root=0):
    """True on ``root`` (and always without a communicator)."""
    return comm is None or comm.Get_rank() == root


def shard_range(n, comm=None, *, rank=None, size=None):
    """``(start, stop)`` of this rank's contiguous part of ``n`` items: the
    first ``n % size`` ranks get one item more than the others."""
    rank = comm.Get_rank() if rank is None else rank
    size = comm.Get_size() if size is None else size
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def load_shard(path, comm):
    """This rank's rows of the ``.npy`` file at ``path``: a memory map of
    rows ``shard_range(len, comm)``, so only those rows are ever read."""
    arr = np.load(path, mmap_mode="r")
    start, stop = shard_range(arr.shape[0], comm)
    return arr[start:stop]


def sync_generator(rng, comm, root=0):
    """``rng`` as a Generator whose state is ``root``'s on every rank (so
    ``rng=None`` still gives all ranks the same shuffles and initial weights);
    a RandomState (scikit-learn's kind) stays one, with root's state."""
    if isinstance(rng, np.random.RandomState):
        rng.set_state(comm.bcast(rng.get_state(), root=root))
        return rng
    rng = _init.as_generator(rng)
    rng.bit_generator.state = comm.bcast(rng.bit_generator.state, root=root)
    return rng


def _arrays(obj):
    if isinstance(obj, nn.Module):
        return [p.data for p in obj.parameters()]
    return [p.data if isinstance(p, nn.Parameter) else p for p in obj]


def broadcast_parameters(params, comm, root=0):
    """Copy ``root``'s parameter values to every rank, in place.
    ``params``: a Module, or a list of Parameters or arrays."""
    arrays = _arrays(params)
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.empty(0)
    comm.Bcast(flat, root=root)
    offset = 0
    for a in arrays:
        a.ravel()[...] = flat[offset:offset + a.size]  # ravel is a view: arrays are contiguous
        offset += a.size


@contextlib.contextmanager
def abort_on_error(comm, exit_code=1):
    """Run the block; on an exception print its traceback (with the rank) to
    stderr and call ``comm.Abort(exit_code)``, which makes the MPI launcher
    kill every rank, instead of leaving the others waiting forever in a
    collective.  Without more than one rank the exception propagates."""
    try:
        yield
    except BaseException as exc:
        if comm is None or comm.Get_size() == 1 or isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        sys.stdout.flush()
        # one write, then a moment before Abort: MPICH's launcher, torn down
        # by the abort, once forwarded the first line of this report but not
        # the traceback that followed it (1 of about 10 CI runs)
        sys.stderr.write(f"fastnn.distributed: rank {comm.Get_rank()} of {comm.Get_size()} "
                         "failed; aborting all ranks\n" + traceback.format_exc())
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_SECONDS)
        comm.Abort(exit_code)
        raise  # a duck-typed comm whose Abort returns


class DistributedOptimizer(optim.Optimizer):
    """Wraps an optimiser so that ``step()`` first replaces every gradient by
    the weighted mean of all ranks' gradients, then makes the inner step.

    At construction the parameters' ``.grad`` arrays become views of one flat
    buffer (fastnn's layers write gradients into ``.grad`` in place), so a step
    sends exactly one ``Allreduce`` with no packing copy; if something rebinds
    a ``.grad`` it is copied back into the buffer.  The buffer has one extra
    slot for the rank's weight w_r (``local_weight``: its number of samples, or
    the sum of their sample weights, in this step; default 1): each rank
    sends w_r·g_r and w_r, and the result Σ w_r g_r / Σ w_r is the gradient of
    the global minibatch's mean loss, whatever the ranks' shares.

    Every other attribute (``lr``, ``steps``, ``weight_decay``, state_dict,
    ...) is the inner optimiser's, read and set through this wrapper, so the
    learning-rate schedules and the estimators work with it unchanged.
    """

    _own = ("optimizer", "comm", "local_weight", "_flat", "_views")

    def __init__(self, optimizer, comm):
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a fastnn.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        dtypes = {p.dtype for p in optimizer.params}
        if len(dtypes) != 1:
            raise TypeError(f"all parameters must have one dtype, got {sorted(map(str, dtypes))}")
        # no super().__init__: params, lr and steps live in the inner optimiser
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "comm", comm)
        object.__setattr__(self, "local_weight", 1.0)
        sizes = [p.size for p in optimizer.params]
        flat = np.zeros(sum(sizes) + 1, dtypes.pop())
        views, offset = [], 0
        for p, size in zip(optimizer.params, sizes):
            view = flat[offset:offset + size].reshape(p.shape)
            np.copyto(view, p.grad)
            p.grad = view
            views.append(view)
            offset += size
        object.__setattr__(self, "_flat", flat)
        object.__setattr__(self, "_views", views)

    # -- forwarding to the inner optimiser ------------------------------------
    def __getattr__(self, name):  # only called for names not found here
        if name in DistributedOptimizer._own:
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        if name in DistributedOptimizer._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.optimizer, name, value)

    lr = property(lambda self: self.optimizer.lr,
                  lambda self, value: setattr(self.optimizer, "lr", value))

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)

    def zero_grad(self):
        self._flat.fill(0)
        self._rebind()

    # -- the step ----------------------------------------------------------------
    @property
    def nbytes(self):
        """Bytes each rank sends per step (gradients plus the weight slot)."""
        return self._flat.nbytes

    def _rebind(self):
        """Make every .grad a view of the flat buffer again (copying it in)."""
        for p, view in zip(self.optimizer.params, self._views):
            if p.grad is not view:
                np.copyto(view, p.grad)
                p.grad = view

    def allreduce_gradients(self, local_weight=None):
        """Replace the gradients by Σ_r w_r g_r / Σ_r w_r over all ranks;
        returns Σ_r w_r (0: every gradient is set to 0)."""
        w = float(self.local_weight if local_weight is None else local_weight)
        self._rebind()
        flat, grads = self._flat, self._flat[:-1]
        if w != 1.0:
            grads *= w
        flat[-1] = w
        _sum_in_place(self.comm, flat)
        total = float(flat[-1])
        if total > 0:
            grads *= 1.0 / total
        else:
            grads.fill(0)
        return total

    def step(self):
        self.allreduce_gradients()
        self.optimizer.step()

    def __repr__(self):
        return (f"DistributedOptimizer({self.optimizer!r}, rank {self.comm.Get_rank()} of "
                f"{self.comm.Get_size()})")


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------
def _as_batch_source(X, y, sample_weight, dtype, loss):
    """X, y, w with the dtypes ``nn.fit`` gives them; memory maps that already
    have them stay memory maps (rows are read when a batch gathers them)."""
    X = np.asarray(X)
    if X.ndim < 1:
        raise ValueError(f"X must be an array of samples, got shape {X.shape}")
    n = X.shape[0]
    y = np.asarray(y)
    if y.ndim < 1 or y.shape[0] != n:
        raise ValueError(f"y must have one row per sample of X ({n}), got shape {y.shape}")
    if isinstance(loss, nn.SoftmaxCrossEntropy) and y.ndim == 1:
        y_dtype = np.int64 if y.dtype.kind in "iub" else y.dtype  # as nn.fit
    else:
        y_dtype = dtype
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight)
        if sample_weight.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}")
        sample_weight = sample_weight.astype(dtype, copy=False)
    # a conversion reads everything: data of the model dtype stay memory maps
    return X.astype(dtype, copy=False), y.astype(y_dtype, copy=False), sample_weight


def fit(model, loss, optimizer, X, y, *, epochs, batch_size, comm, shuffle=True, rng=None,
        sample_weight=None, callbacks=None, sharded=False, order=None):
    """``nn.fit`` over the ranks of ``comm``; call it on every rank with the
    same arguments (and, with ``sharded=True``, each rank's own X, y).

    ``optimizer`` must be a :class:`DistributedOptimizer` on ``comm``.  The
    parameters are broadcast from rank 0 first and ``rng`` is synchronised
    from rank 0.  Returns the epoch losses, the same on every rank (the global
    weighted mean, as ``nn.fit``); callbacks get the global batch sizes in
    ``batch_end`` and the global loss in ``epoch_end``.  ``order``: as
    ``nn.fit``'s, over this rank's rows.
    """
    if not isinstance(optimizer, DistributedOptimizer) or optimizer.comm is not comm:
        raise TypeError("optimizer must be a fastnn.distributed.DistributedOptimizer on comm")
    epochs = nn._check_size(epochs, "epochs")
    batch_size = nn._check_size(batch_size, "batch_size")
    dtype = nn._model_dtype(model, X)
    X, y, sample_weight = _as_batch_source(X, y, sample_weight, dtype, loss)
    rank, size = comm.Get_rank(), comm.Get_size()
    n_local = X.shape[0]
    counts = np.array(comm.allgather(n_local))
    if not sharded and np.any(counts != n_local):
        raise ValueError(f"sharded=False needs the same X on every rank, got {counts.tolist()} "
                         "samples; pass sharded=True for per-rank shards")
    n = n_local if not sharded else int(counts.sum())
    if n == 0:
        raise ValueError("X must hold at least one sample")
    batch_size = min(batch_size, n)
    n_steps = math.ceil(n / batch_size)
    rng = sync_generator(rng, comm)
    if sharded:  # one stream per rank
        if isinstance(rng, np.random.RandomState):
            rng = np.random.default_rng(rng.randint(2**31 - 1))
        order_rng = rng.spawn(size)[rank]
    else:
        order_rng = rng
    broadcast_parameters(model, comm)

    callbacks = nn._Callbacks(callbacks)
    largest = (math.ceil(batch_size / size) if not sharded
               else math.ceil(n_local / n_steps) if n_local else 0)
    gather = nn._BatchGather(X, y, sample_weight, largest)
    order = nn._sample_order(order, n_local)
    sums = np.empty(2, np.float64)  # loss·weight and weight of the epoch on this rank
    if sharded:  # step s takes shard_range(n_r, rank=s, size=n_steps) of each rank r
        base, extra = np.divmod(counts, n_steps)
        global_sizes = [int(base.sum() + np.count_nonzero(s < extra)) for s in range(n_steps)]

    history = []
    with nn._training_mode(model):
        for epoch in range(epochs):
            if shuffle:
                order_rng.shuffle(order)
            sums.fill(0)
            for step in range(n_steps):
                if sharded:  # this rank's part of step `step`, of its own order
                    lo, hi = shard_range(n_local, rank=step, size=n_steps)
                    global_m = global_sizes[step]
                else:        # this rank's part of the global batch
                    start = step * batch_size
                    global_m = min(batch_size, n - start)
                    lo, hi = shard_range(global_m, rank=rank, size=size)
                    lo, hi = start + lo, start + hi
                m = hi - lo
                if callbacks.start_hooks:  # the global batch's weight sum
                    if sample_weight is None:
                        global_w = global_m
                    elif sharded:
                        global_w = comm.allreduce(float(sample_weight[order[lo:hi]].sum()))
                    else:  # every rank holds the whole batch
                        global_w = float(sample_weight[order[start:start + global_m]].sum())
                    callbacks.batch_start(global_m, global_w)
                if m:
                    xb, yb, wb = gather(order[lo:hi])
                    weight = m if wb is None else float(wb.sum(dtype=np.float64))
                    value = nn.forward_backward(model, loss, xb, yb, wb)
                    sums += (value * weight, weight)
                else:        # nothing here this step: still join the reduction
                    weight = 0.0
                    optimizer.zero_grad()
                optimizer.local_weight = weight
                optimizer.step()
                callbacks.batch_end(global_m)
            _sum_in_place(comm, sums)
            epoch_loss = sums[0] / sums[1] if sums[1] > 0 else float("nan")
            history.append(float(epoch_loss))
            if callbacks.epoch_end(epoch, epoch_loss):
                break
    return history


def default_threads(comm):
    """Threads per rank that fill this machine's cores without
    oversubscribing them: the usable cores over the ranks sharing the node."""
    try:
        from mpi4py import MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local = node.Get_size()
        node.Free()
    except Exception:  # a duck-typed comm, or an MPI without shared-memory split
        local = comm.Get_size()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // local)


def weighted_mean(comm, local_weight, *values):
    """Σ_r w_r·v_r / Σ_r w_r over the ranks for each scalar or array ``v``
    (one Allreduce of one buffer); every rank gets the same values."""
    arrays = [np.asarray(v, np.float64).ravel() for v in values]
    buf = np.concatenate(arrays + [np.ones(1)]) * float(local_weight)
    _sum_in_place(comm, buf)
    total = buf[-1]
    buf = buf[:-1] / total if total > 0 else np.zeros(buf.size - 1)
    out, offset = [], 0
    for v, a in zip(values, arrays):
        piece = buf[offset:offset + a.size]
        offset += a.size
        out.append(float(piece[0]) if np.ndim(v) == 0 else
                   piece.reshape(np.shape(v)).astype(np.asarray(v).dtype))
    return out
