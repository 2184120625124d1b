"""Optimisers and learning-rate schedules.

Each ``step()`` makes one call of a fused compiled kernel per parameter
array (``F.sgd_step`` / ``F.adam_step``, docs/API.md), updating
``Parameter.data`` in place from ``Parameter.grad``.  L2 (``weight_decay``)
and L1 (``l1``) apply only to parameters with ``regularize=True``: biases
are exempt.  Optimiser state (velocities, moments) is allocated once.

Conventions follow scikit-learn's MLP optimisers:

- SGD: v ← momentum·v − lr·g'; update v, or with Nesterov momentum·v − lr·g';
  g' = grad + weight_decay·θ + l1·sign(θ) (coupled decay); L1 clips a weight
  at zero instead of flipping its sign.  Note that scikit-learn's ``alpha``
  enters the gradient as alpha·θ / batch_size: pass that as ``weight_decay``.
- Adam: bias-corrected step size lr·sqrt(1−β2^t)/(1−β1^t), eps added to
  sqrt(v) *after* the correction (scikit-learn's form); ``weight_decay`` is
  coupled L2.  AdamW: ``weight_decay`` is decoupled, θ ← θ − lr·wd·θ before
  the Adam update.

Schedules (``ConstantLR``, ``InverseScalingLR``, ``StepLR``,
``ExponentialLR``, ``AdaptiveLR``) take the optimiser as first argument,
read its ``lr`` as the initial rate (or set it from ``lr0``) and set
``optimizer.lr``.  Call ``batch_end(n_samples)`` after each step and
``epoch_end(loss)`` after each epoch (``fastnn.nn.fit`` does both when the
schedule is passed in ``callbacks``); ``epoch_end`` returns True when the
schedule asks to stop training (only ``AdaptiveLR`` does).
"""
import math
import numbers

import numpy as np

from ._checks import check_real
from . import _kernels
from . import functional as F
from .nn import Parameter

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "AdaptiveLR",
    "ConstantLR",
    "ExponentialLR",
    "InverseScalingLR",
    "LRSchedule",
    "Optimizer",
    "StepLR",
]


def _scalar(state, key):
    try:
        return np.asarray(state[key]).item()
    except KeyError:
        raise KeyError(f"load_state_dict: missing key {key!r}") from None


def _load_arrays(state, prefix, targets):
    for i, target in enumerate(targets):
        key = f"{prefix}.{i}"
        if key not in state:
            raise KeyError(f"load_state_dict: missing key {key!r}")
        value = np.asarray(state[key])
        if value.shape != target.shape:
            raise ValueError(f"load_state_dict: {key!r} has shape {value.shape}, "
                             f"expected {target.shape}")
        np.copyto(target, value, casting="same_kind")


class Optimizer:
    """Base class: holds the parameter list and the learning rate ``lr``
    (settable; the schedules set it)."""

    _hyperparameters = ()  # names saved in state_dict besides lr and steps

    def __init__(self, params, lr):
        params = list(params)
        if not params:
            raise ValueError("params must contain at least one Parameter")
        seen = set()
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a fastnn.nn.Parameter, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"params[{i}] ({p.name!r}) appears twice")
            seen.add(id(p))
        self.params = params
        self.lr = lr
        self.steps = 0  # updates made so far
        self._views = None  # see _checked_views

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_real(value, "lr")

    def step(self):
        raise NotImplementedError

    def _stack_update(self, model):
        """The update as nn.train_step's one kernel call can take it along
        (see SGD), or None: the step is then taken by ``step()``."""
        return None

    def zero_grad(self):
        """Set every gradient to 0 (not needed with fastnn's layers, whose
        backward sets the gradients rather than adding to them)."""
        for p in self.params:
            p.grad.fill(0)

    def _state_arrays(self):
        """``{prefix: list of per-parameter arrays}`` of the optimiser state."""
        return {}

    def _checked_views(self, *states):
        """Per parameter, (data, grad, *state) as the checked flat views the
        update kernels take (F._param_and_grad, F._state); a list, as they
        take it.  ``states``: (name, per-parameter arrays) pairs; an array may
        be None.  Checked once and reused while every array stays the same
        object, C-contiguous in the parameter's dtype (no converted copy) and
        writeable -- an update then spends no Python time on its arrays."""
        flat = []
        for p, *s in zip(self.params, *(a for _, a in states)):
            flat += (p.data, p.grad, *s)
        cached = self._views
        if cached is not None and _kernels.same_writeable_arrays(cached[0], flat):
            return cached[1]
        names = [name for name, _ in states]
        arrays = [(p.data, p.grad, *s) for p, *s in zip(self.params, *(a for _, a in states))]
        views = []
        for data, grad, *state in arrays:
            p, g = F._param_and_grad(data, grad)
            views.append((p, g, *(None if s is None else F._state(s, name, data)
                                  for name, s in zip(names, state))))
        reusable = all(g.dtype == d.dtype and g.flags.c_contiguous for d, g, *_ in arrays)
        self._views = (flat, views) if reusable else None
        return views

    def state_dict(self):
        """Hyperparameters as 0-d arrays and copies of the state arrays
        ("velocity.0", "m.1", ...): plain arrays, savable with numpy.savez."""
        state = {"lr": np.asarray(self.lr), "steps": np.asarray(self.steps)}
        for name in self._hyperparameters:
            state[name] = np.asarray(getattr(self, name))
        for prefix, arrays in self._state_arrays().items():
            for i, arr in enumerate(arrays):
                state[f"{prefix}.{i}"] = arr.copy()
        return state

    def load_state_dict(self, state):
        self.lr = _scalar(state, "lr")
        self.steps = int(_scalar(state, "steps"))
        for name in self._hyperparameters:
            setattr(self, name, _scalar(state, name))
        for prefix, arrays in self._state_arrays(allocate=True).items():
            _load_arrays(state, prefix, arrays)

    def __repr__(self):
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("lr",) + self._hyperparameters)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, coupled
    L2 (``weight_decay``) and L1 (``l1``); scikit-learn's update rule."""

    _hyperparameters = ("momentum", "nesterov", "weight_decay", "l1")

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0):
        super().__init__(params, lr)
        self.momentum = check_real(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)
        self.weight_decay = check_real(weight_decay, "weight_decay")
        self.l1 = check_real(l1, "l1")
        self.velocities = None
        if self.momentum > 0:
            self._allocate()

    def _allocate(self):
        self.velocities = [np.zeros_like(p.data) for p in self.params]

    def _state_arrays(self, allocate=False):
        if self.velocities is None and allocate:
            self._allocate()
        return {} if self.velocities is None else {"velocity": self.velocities}

    def load_state_dict(self, state):
        # a state saved without momentum has no velocities
        if "velocity.0" not in state:
            self.velocities = None
            self.lr = _scalar(state, "lr")
            self.steps = int(_scalar(state, "steps"))
            for name in self._hyperparameters:
                setattr(self, name, _scalar(state, name))
            return
        super().load_state_dict(state)

    def step(self):
        views = self._checked_views(("velocity", self._velocities()))
        F._sgd_update(views, [param.regularize for param in self.params], self.lr,
                      self.momentum, self.nesterov, self.weight_decay, self.l1)
        self.steps += 1

    def _velocities(self):
        if self.momentum > 0 and self.velocities is None:  # momentum switched on later
            self._allocate()
        return self.velocities or [None] * len(self.params)

    def _stack_update(self, model):
        """The step as _kernels.dense_stack_step's ``sgd`` when that can take
        it: this class's step() (not a subclass's own), over exactly the
        model's parameters in its order; else None.  The arrays go as they
        are: the stack step has checked the parameters' (_stack_plan), and
        the kernel checks that they are the layers' and the velocities."""
        if type(self).step is not SGD.step or self.params != model.parameters():
            return None
        velocities = self._velocities()
        return ("sgd", [(p.data, v) for p, v in zip(self.params, velocities)],
                [param.regularize for param in self.params],
                *F._sgd_hyperparameters(velocities, self.lr, self.momentum, self.nesterov,
                                        self.weight_decay, self.l1))


class Adam(Optimizer):
    """Adam (Kingma & Ba) in scikit-learn's form, with coupled L2
    (``weight_decay`` added to the gradient) and L1."""

    _hyperparameters = ("beta1", "beta2", "eps", "weight_decay", "l1")
    _decoupled = False

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0):
        super().__init__(params, lr)
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
        self.beta1 = check_real(beta1, "betas[0]", 0.0, 1.0, high_open=True)
        self.beta2 = check_real(beta2, "betas[1]", 0.0, 1.0, high_open=True)
        self.eps = check_real(eps, "eps")
        self.weight_decay = check_real(weight_decay, "weight_decay")
        self.l1 = check_real(l1, "l1")
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _state_arrays(self, allocate=False):
        return {"m": self.m, "v": self.v}

    def step(self):
        self.steps += 1
        decay = self.weight_decay
        F._adam_update(self._checked_views(("m", self.m), ("v", self.v)),
                       [param.regularize for param in self.params], self.lr, self.steps,
                       self.beta1, self.beta2, self.eps, 0.0 if self._decoupled else decay,
                       self.l1, decay if self._decoupled else 0.0)

    def _stack_update(self, model):
        """The step as _kernels.dense_stack_step's ``update`` (see SGD's): the
        next step's number is steps + 1, which the kernel counts on from."""
        if type(self).step is not Adam.step or self.params != model.parameters():
            return None
        decay = self.weight_decay
        hyper = F._adam_hyperparameters(self.lr, self.beta1, self.beta2, self.eps,
                                        0.0 if self._decoupled else decay, self.l1,
                                        decay if self._decoupled else 0.0)
        lr, beta1, beta2, eps, l2, l1, weight_decay = hyper
        return ("adam", [(p.data, m, v) for p, m, v in zip(self.params, self.m, self.v)],
                [param.regularize for param in self.params], lr, self.steps, beta1, beta2, eps,
                l2, l1, lr * weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter):
    θ ← θ − lr·weight_decay·θ, then the Adam step (biases exempt)."""

    _decoupled = True

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, l1=0.0):
        super().__init__(params, lr, betas, eps, weight_decay, l1)


# ---------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------
class LRSchedule:
    """Base class.  ``base_lr`` is the initial rate (``lr0`` if given, else
    the optimiser's lr at construction); ``epoch`` counts ``epoch_end`` calls."""

    _state = ("base_lr", "epoch")

    def __init__(self, optimizer, *, lr0=None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastnn.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if lr0 is not None:
            optimizer.lr = lr0
        self.base_lr = optimizer.lr
        self.epoch = 0

    @property
    def lr(self):
        return self.optimizer.lr

    def batch_end(self, n_samples):
        """Called after each optimiser step with the batch size."""

    def epoch_end(self, loss=None):
        """Called after each epoch with its training loss; returns True to
        request that training stop."""
        self.epoch += 1
        return False

    def state_dict(self):
        return {name: np.asarray(getattr(self, name)) for name in self._state}

    def load_state_dict(self, state):
        for name in self._state:
            setattr(self, name, _scalar(state, name))
        self.epoch = int(self.epoch)

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr})"


class ConstantLR(LRSchedule):
    """Keeps the learning rate (scikit-learn's "constant")."""


class InverseScalingLR(LRSchedule):
    """scikit-learn's "invscaling": at the end of each epoch
    lr = lr0 / (t + 1)^power_t, where t is the number of training samples seen
    so far (summed from ``batch_end(n_samples)``; settable as ``samples_seen``).
    Within an epoch the rate is constant, as in scikit-learn."""

    _state = LRSchedule._state + ("samples_seen", "power_t")

    def __init__(self, optimizer, power_t=0.5, *, lr0=None):
        super().__init__(optimizer, lr0=lr0)
        self.power_t = check_real(power_t, "power_t")
        self.samples_seen = 0

    def batch_end(self, n_samples):
        self.samples_seen += int(n_samples)

    def epoch_end(self, loss=None):
        self.epoch += 1
        self.optimizer.lr = self.base_lr / (self.samples_seen + 1) ** self.power_t
        return False

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.samples_seen = int(self.samples_seen)


class StepLR(LRSchedule):
    """lr = lr0 · gamma^(epoch // step_size) after each epoch."""

    _state = LRSchedule._state + ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, *, lr0=None):
        super().__init__(optimizer, lr0=lr0)
        if not isinstance(step_size, numbers.Integral) or isinstance(step_size, bool) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = check_real(gamma, "gamma")

    def epoch_end(self, loss=None):
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** (self.epoch // self.step_size)
        return False


class ExponentialLR(LRSchedule):
    """lr = lr0 · gamma^epoch after each epoch."""

    _state = LRSchedule._state + ("gamma",)

    def __init__(self, optimizer, gamma, *, lr0=None):
        super().__init__(optimizer, lr0=lr0)
        self.gamma = check_real(gamma, "gamma")

    def epoch_end(self, loss=None):
        self.epoch += 1
        self.optimizer.lr = self.base_lr * self.gamma ** self.epoch
        return False


class AdaptiveLR(LRSchedule):
    """scikit-learn's "adaptive" rule, as its code implements it
    (``BaseMultilayerPerceptron._update_no_improvement_count`` and
    ``SGDOptimizer.trigger_stopping``):

    after each epoch, if loss > best_loss − tol the no-improvement count goes
    up by one, else it is reset to 0; best_loss is the lowest loss so far.
    When the count exceeds ``n_iter_no_change``: if lr <= ``min_lr``,
    ``epoch_end`` returns True (stop training); otherwise lr is divided by
    ``factor`` and the count reset.

    scikit-learn's docstring speaks of "two consecutive epochs", but its code
    counts against ``n_iter_no_change`` (default 10, so 11 epochs without
    improvement); ``n_iter_no_change=1`` gives the documented behaviour.
    """

    _state = LRSchedule._state + ("tol", "n_iter_no_change", "factor", "min_lr",
                                  "best_loss", "no_improvement_count")

    def __init__(self, optimizer, tol=1e-4, n_iter_no_change=10, factor=5.0, min_lr=1e-6, *,
                 lr0=None):
        super().__init__(optimizer, lr0=lr0)
        self.tol = check_real(tol, "tol")
        if n_iter_no_change != math.inf and (
                not isinstance(n_iter_no_change, numbers.Integral)
                or isinstance(n_iter_no_change, bool) or n_iter_no_change < 1):
            raise ValueError(f"n_iter_no_change must be a positive integer or math.inf, "
                             f"got {n_iter_no_change!r}")
        # math.inf: never stop nor change the rate (scikit-learn's np.inf)
        self.n_iter_no_change = (math.inf if n_iter_no_change == math.inf
                                 else int(n_iter_no_change))
        self.factor = check_real(factor, "factor", 1.0, low_open=True)
        self.min_lr = check_real(min_lr, "min_lr")
        self.best_loss = math.inf
        self.no_improvement_count = 0

    def epoch_end(self, loss=None):
        if loss is None:
            raise ValueError("AdaptiveLR.epoch_end needs the epoch's training loss")
        loss = float(loss)
        self.epoch += 1
        if loss > self.best_loss - self.tol:
            self.no_improvement_count += 1
        else:
            self.no_improvement_count = 0
        if loss < self.best_loss:
            self.best_loss = loss
        if self.no_improvement_count > self.n_iter_no_change:
            if self.optimizer.lr <= self.min_lr:
                return True
            self.optimizer.lr = self.optimizer.lr / self.factor
            self.no_improvement_count = 0
        return False

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.n_iter_no_change != math.inf:
            self.n_iter_no_change = int(self.n_iter_no_change)
        self.no_improvement_count = int(self.no_improvement_count)
