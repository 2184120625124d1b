"""Layers, losses and a minimal training loop over fastnn's compiled kernels.

Every numeric operation goes through :mod:`fastnn.functional`; this module
only chains the kernels and owns their buffers.

Conventions
-----------
- Data are row-major batches, one sample a row; ``Dense`` weights are
  ``(n_in, n_out)``.
- ``forward(X)`` stores what ``backward`` needs (a reference to ``X`` and the
  layer's output) — do not modify ``X`` between the two calls.
- ``backward(grad)`` **sets** (does not accumulate) each parameter's ``.grad``
  and returns the gradient with respect to the layer input (or ``None`` when
  ``need_input_grad=False``).
- **Buffer reuse.**  In training mode (the default) every layer keeps its
  output, delta, input-gradient and dropout-mask arrays per input shape and
  reuses them, so once a model has seen a batch size a training step
  (forward, loss, backward, optimiser step) allocates no new arrays.  The
  arrays returned by ``forward``/``backward`` and by ``Loss.backward`` are
  therefore *overwritten by the next call with the same batch size*: copy
  them if you keep them.  In eval mode (``model.eval()``) every call returns
  fresh arrays and nothing is cached (inference results are safe to keep).
  At most four shapes per buffer are kept (least recently used dropped);
  ``release_buffers()`` frees them.
- ``backward(grad, overwrite_grad=True)`` allows the layer to use ``grad``
  as scratch space (``Sequential`` passes it for the buffers its own layers
  returned); by default the caller's ``grad`` is never modified.
"""
import contextlib
import math
import numbers
from collections import OrderedDict

import numpy as np

from . import _kernels
from . import functional as F
from . import init as _init
from .functional import _CSR

__all__ = [
    "BinaryCrossEntropyWithLogits",
    "Dense",
    "Dropout",
    "Identity",
    "LeakyReLU",
    "Loss",
    "MSELoss",
    "Module",
    "Parameter",
    "PoissonLoss",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "fit",
    "forward_backward",
    "train_step",
]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_MAX_SHAPES_PER_BUFFER = 4


def _float_dtype(dtype, name="dtype"):
    dt = np.dtype(dtype)
    if dt not in (_FLOAT32, _FLOAT64):
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def _writable_like(grad, like):
    """True when ``grad`` can serve as an in-place buffer shaped like ``like``."""
    return (isinstance(grad, np.ndarray) and grad.dtype == like.dtype
            and grad.shape == like.shape and grad.flags.c_contiguous
            and grad.flags.writeable)


def _check_grad_shape(grad, expected, owner):
    if grad.shape != expected:
        raise ValueError(f"{owner}.backward: grad must have the shape of the layer output "
                         f"{expected}, got {grad.shape}")


class _Workspace:
    """Arrays kept per (role, shape, dtype) and reused across calls.

    At most ``_MAX_SHAPES_PER_BUFFER`` shapes per role are kept, the least
    recently used one is dropped (a training loop sees one or two batch sizes)."""

    __slots__ = ("_arrays",)

    def __init__(self):
        self._arrays = OrderedDict()

    def get(self, role, shape, dtype):
        key = (role, shape, dtype)
        arr = self._arrays.get(key)
        if arr is not None:
            self._arrays.move_to_end(key)
            return arr
        arr = np.empty(shape, dtype)
        self._arrays[key] = arr
        same_role = [k for k in self._arrays if k[0] == role]
        if len(same_role) > _MAX_SHAPES_PER_BUFFER:
            del self._arrays[same_role[0]]
        return arr

    def clear(self):
        self._arrays.clear()

    def nbytes(self):
        return sum(a.nbytes for a in self._arrays.values())


# ---------------------------------------------------------------------------
# parameters and modules
# ---------------------------------------------------------------------------
class Parameter:
    """A trainable array: ``data`` (updated in place by the optimisers),
    ``grad`` (same shape and dtype, set by ``backward``), a ``name`` and
    ``regularize`` (True for weights; biases are exempt from L2/L1 decay)."""

    __slots__ = ("data", "grad", "name", "regularize")

    def __init__(self, data, name="", regularize=True):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Parameter data must be a numpy.ndarray, got {type(data).__name__}")
        _float_dtype(data.dtype, "Parameter data dtype")
        if data.size == 0:
            raise ValueError(f"Parameter data must not be empty, got shape {data.shape}")
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.name = str(name)
        self.regularize = bool(regularize)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return (f"Parameter(name={self.name!r}, shape={self.data.shape}, "
                f"dtype={self.data.dtype}, regularize={self.regularize})")


class Module:
    """Base class of layers and models.

    Subclasses implement ``forward(X)`` and
    ``backward(grad, *, need_input_grad=True, overwrite_grad=False)``, and
    ``named_parameters()`` if they own parameters, and must call
    ``super().__init__()``."""

    def __init__(self):
        self.training = True
        self._workspace = _Workspace()

    # -- computation ---------------------------------------------------------
    def forward(self, X):
        raise NotImplementedError

    def backward(self, grad, *, need_input_grad=True, overwrite_grad=False):
        """Gradient w.r.t. the input of the last ``forward`` (None when
        ``need_input_grad`` is False); sets the parameters' ``.grad``."""
        raise NotImplementedError

    def __call__(self, X):
        return self.forward(X)

    # -- parameters and state ------------------------------------------------
    def named_parameters(self):
        """``[(qualified_name, Parameter)]``; in a Sequential the names are
        prefixed with the layer index ("0.weight", "1.bias", ...)."""
        return []

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def state_dict(self):
        """``{qualified_name: copy of the parameter data}`` (plain arrays, so
        ``numpy.savez(path, **model.state_dict())`` saves without pickle)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays from ``state`` into the parameters, in place.  Keys and
        shapes must match exactly; values are cast to the parameter dtype."""
        named = dict(self.named_parameters())
        missing = sorted(set(named) - set(state))
        unexpected = sorted(set(state) - set(named))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in named.items():
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {name!r} has shape {value.shape}, "
                                 f"the parameter has {p.data.shape}")
            np.copyto(p.data, value, casting="same_kind")

    # -- modes and buffers ---------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def release_buffers(self):
        """Free the cached training buffers (they are re-created on demand)."""
        self._workspace.clear()

    def _buffer(self, role, shape, dtype):
        """A reused array in training mode, a fresh one in eval mode."""
        if self.training:
            return self._workspace.get(role, shape, dtype)
        return np.empty(shape, dtype)

    def _scratch_grad(self, grad, like, overwrite_grad):
        """Where to write this layer's input gradient: ``grad`` itself when
        the caller allows it and it fits, else this layer's own buffer."""
        if overwrite_grad and _writable_like(grad, like):
            return grad
        return self._buffer("grad_input", like.shape, like.dtype)

    def _require_forward(self, attr="_output"):
        value = getattr(self, attr, None)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return value


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------
def _check_activation(activation, alpha):
    """The slope ``alpha`` as a float, once the kernels' own check of the
    activation name and slope has passed."""
    F._activation(activation, alpha)
    return float(alpha)


def _check_layer_compute_dtype(compute_dtype, dtype):
    if compute_dtype not in F.COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be None or 'bfloat16', got {compute_dtype!r}")
    if compute_dtype is not None and dtype != _FLOAT32:
        raise ValueError(f"compute_dtype={compute_dtype!r} needs dtype=float32 (the master "
                         f"weights), got dtype={np.dtype(dtype)}")


def _check_size(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Dense(Module):
    """Fully connected layer ``O = f(X W + b)``, W of shape (n_in, n_out).

    The product, bias and activation run in one fused kernel
    (``F.dense_forward``); the backward pass (delta, dW, db, dX) in one call
    of ``F.dense_backward``.

    ``init``: a name from ``fastnn.init.INITIALIZERS`` or a callable
    ``init(shape, rng=..., dtype=...)``.  Default (``None``): scikit-learn's
    MLP initialisation, U(-b, b) with b = sqrt(f / (n_in + n_out)), f = 2 for
    sigmoid and 6 otherwise (``fastnn.init.sklearn_uniform``).  Biases start
    at 0 (scikit-learn also draws them from U(-b, b); set ``bias.data`` to
    reproduce that).  ``alpha`` is the leaky_relu slope.

    ``forward`` also takes a scipy.sparse X (CSR, or any format, converted
    to CSR once): ``F.sparse_dense_forward``, and backward computes dW and
    db by ``F.sparse_dense_backward``.  A sparse input has no gradient:
    ``backward(need_input_grad=True)`` raises ValueError (``Sequential``
    asks none of its first layer).

    ``compute_dtype="bfloat16"`` (float32 layers only): the products take
    their operands rounded to bfloat16 and accumulate in float32 (AMX or
    AVX512_BF16 where the CPU has them, ``fastnn.build_info()["bf16"]``);
    weights, gradients, outputs and deltas stay float32.  A sparse input's
    products stay float32.
    """

    def __init__(self, n_in, n_out, activation="identity", *, alpha=0.01, init=None,
                 bias=True, dtype=np.float32, rng=None, compute_dtype=None):
        super().__init__()
        self.n_in = _check_size(n_in, "n_in")
        self.n_out = _check_size(n_out, "n_out")
        self.alpha = _check_activation(activation, alpha)
        self.activation = activation
        self.dtype = _float_dtype(dtype)
        self.compute_dtype = compute_dtype
        make_weight = _init.get("sklearn_uniform" if init is None else init, activation, alpha)
        shape = (self.n_in, self.n_out)
        W = np.asarray(make_weight(shape, rng=_init.as_generator(rng), dtype=self.dtype))
        if W.shape != shape:
            raise ValueError(f"init returned an array of shape {W.shape}, expected {shape}")
        self.weight = Parameter(np.array(W, dtype=self.dtype, order="C"), "weight", True)
        self.bias = Parameter(np.zeros(self.n_out, self.dtype), "bias", False) if bias else None
        self._input = self._output = None

    @property
    def compute_dtype(self):
        """None (the products in ``dtype``) or "bfloat16"."""
        return self._compute_dtype

    @compute_dtype.setter
    def compute_dtype(self, value):
        _check_layer_compute_dtype(value, self.dtype)
        self._compute_dtype = value

    def named_parameters(self):
        params = [("weight", self.weight)]
        if self.bias is not None:
            params.append(("bias", self.bias))
        return params

    def parameters(self):   # without the names, as Sequential's
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(self, X):
        if type(X) is not np.ndarray and F._is_sparse(X):
            return self._sparse_forward(X)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"Dense(n_in={self.n_in}) expects X of shape (N, {self.n_in}), "
                             f"got {X.shape}")
        out = self._buffer("output", (X.shape[0], self.n_out), self.dtype)
        F.dense_forward(X, self.weight.data, None if self.bias is None else self.bias.data,
                        self.activation, alpha=self.alpha, out=out,
                        compute_dtype=self._compute_dtype)
        self._input, self._output = X, out
        return out

    def _sparse_forward(self, X):
        """forward for a scipy.sparse X: converted once to CSR of the layer
        dtype (F._csr), which backward reuses."""
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"Dense(n_in={self.n_in}) expects X of shape (N, {self.n_in}), "
                             f"got {X.shape}")
        X = F._csr(X, self.dtype)
        out = self._buffer("output", (X.shape[0], self.n_out), self.dtype)
        F.sparse_dense_forward(X, self.weight.data,
                               None if self.bias is None else self.bias.data, self.activation,
                               alpha=self.alpha, out=out)
        self._input, self._output = X, out
        return out

    def backward(self, grad, *, need_input_grad=True, overwrite_grad=False):
        O = self._require_forward()
        sparse = type(self._input) is _CSR
        if sparse and need_input_grad:
            raise ValueError("Dense.backward: the input was scipy.sparse, which has no input "
                             "gradient; call backward with need_input_grad=False (as "
                             "Sequential does for its first layer)")
        grad = np.asarray(grad)
        _check_grad_shape(grad, O.shape, "Dense")
        # the kernel stores delta in its grad_out argument: give it a buffer
        # we may overwrite (the caller's only when allowed)
        if overwrite_grad and _writable_like(grad, O):
            delta = grad
        else:
            delta = self._buffer("delta", O.shape, self.dtype)
            np.copyto(delta, grad, casting="same_kind")
        # a bias-free layer still gets db from the kernel: send it to scratch
        d_bias = self.bias.grad if self.bias is not None else self._buffer("bias_grad", (self.n_out,),
                                                                           self.dtype)
        if sparse:
            F.sparse_dense_backward(self._input, self.weight.data, O, delta, self.activation,
                                    alpha=self.alpha, out=(self.weight.grad, d_bias),
                                    overwrite_grad_out=True)
            return None
        d_input = self._buffer("grad_input", self._input.shape, self.dtype) if need_input_grad else None
        F.dense_backward(self._input, self.weight.data, O, delta, self.activation, alpha=self.alpha,
                         need_input_grad=need_input_grad, out=(d_input, self.weight.grad, d_bias),
                         overwrite_grad_out=True, compute_dtype=self._compute_dtype)
        return d_input

    def __repr__(self):
        bf16 = "" if self._compute_dtype is None else f", compute_dtype={self._compute_dtype!r}"
        return (f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r}, "
                f"bias={self.bias is not None}, dtype={self.dtype}{bf16})")


class _Activation(Module):
    """Elementwise activation layer (``F.activation_forward``/``backward``);
    backward uses the stored output, not the input (MATH.md §2)."""

    activation = "identity"

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = _check_activation(self.activation, alpha)
        self._output = None

    def forward(self, X):
        X = np.asarray(X)
        out = self._buffer("output", X.shape, F._compute_dtype(X))
        F.activation_forward(X, self.activation, alpha=self.alpha, out=out)
        self._output = out
        return out

    def backward(self, grad, *, need_input_grad=True, overwrite_grad=False):
        O = self._require_forward()
        if not need_input_grad:
            return None
        grad = np.asarray(grad)
        _check_grad_shape(grad, O.shape, type(self).__name__)
        out = self._scratch_grad(grad, O, overwrite_grad)
        return F.activation_backward(O, grad, self.activation, alpha=self.alpha, out=out)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Identity(Module):
    """Returns its input unchanged (no copy); backward returns ``grad`` itself."""

    def forward(self, X):
        return X

    def backward(self, grad, *, need_input_grad=True, overwrite_grad=False):
        return grad if need_input_grad else None

    def __repr__(self):
        return "Identity()"


class Sigmoid(_Activation):
    """Logistic sigmoid, computed stably for any input."""
    activation = "sigmoid"

    def __init__(self):
        super().__init__()


class Tanh(_Activation):
    activation = "tanh"

    def __init__(self):
        super().__init__()


class ReLU(_Activation):
    """max(0, x); the derivative at 0 is taken as 0."""
    activation = "relu"

    def __init__(self):
        super().__init__()


class LeakyReLU(_Activation):
    """x for x >= 0, alpha·x below (alpha > 0)."""
    activation = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__(alpha)

    def __repr__(self):
        return f"LeakyReLU(alpha={self.alpha})"


class Dropout(Module):
    """Inverted dropout: in training mode each entry is zeroed with
    probability ``p`` and the kept ones are scaled by 1/(1-p), so the expected
    output equals the input; in eval mode (or with p = 0) the input is
    returned unchanged.  The mask of the last forward is reused by backward.
    ``rng``: Generator, int seed or None."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if (not isinstance(p, numbers.Real) or isinstance(p, bool) or not math.isfinite(p)
                or not 0 <= p < 1):
            raise ValueError(f"p (the drop probability) must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _init.as_generator(rng)
        self._mask = None
        self._output = None

    def forward(self, X):
        X = np.asarray(X)
        if not self.training or self.p == 0.0:
            self._mask, self._output = None, X
            return X
        dtype = F._compute_dtype(X)
        mask = self._buffer("mask", X.shape, dtype)
        # mask = scale where u > p else 0, built in place without temporaries:
        # u - p > 0 exactly when u > p, so ceil(u - p) is 1 or 0 for u in [0, 1)
        self.rng.random(out=mask, dtype=dtype)
        np.subtract(mask, self.p, out=mask)
        np.ceil(mask, out=mask)
        np.multiply(mask, 1.0 / (1.0 - self.p), out=mask)
        out = self._buffer("output", X.shape, dtype)
        np.multiply(X, mask, out=out)
        self._mask, self._output = mask, out
        return out

    def backward(self, grad, *, need_input_grad=True, overwrite_grad=False):
        O = self._require_forward()
        if not need_input_grad:
            return None
        if self._mask is None:
            return grad
        grad = np.asarray(grad)
        _check_grad_shape(grad, O.shape, "Dropout")
        out = self._scratch_grad(grad, O, overwrite_grad)
        np.multiply(grad, self._mask, out=out)
        return out

    def __repr__(self):
        return f"Dropout(p={self.p})"


class Sequential(Module):
    """Layers applied in order.  ``backward`` runs them in reverse and stops
    below the lowest layer that has parameters: by default the gradient with
    respect to the model input is not computed and ``None`` is returned (pass
    ``need_input_grad=True`` to get it)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a fastnn.nn.Module, "
                                f"got {type(layer).__name__}")
        self.layers = tuple(layers)
        # dense layers of one dtype only: train_step runs the whole step in one call
        self._dense_stack = (bool(layers) and all(type(layer) is Dense for layer in layers)
                             and len({layer.dtype for layer in layers}) == 1)
        self._stack_cache = None   # train_step's checked arrays (_stack_plan)
        # layer i must pass a gradient down iff a layer below it trains
        self._params_below = []
        seen = False
        for layer in self.layers:
            self._params_below.append(seen)
            seen = seen or bool(layer.parameters())

    def forward(self, X):
        for layer in self.layers:
            X = layer.forward(X)
        return X

    def backward(self, grad, *, need_input_grad=False, overwrite_grad=False):
        overwrite = overwrite_grad
        for i in range(len(self.layers) - 1, -1, -1):
            need = need_input_grad or self._params_below[i]
            new_grad = self.layers[i].backward(grad, need_input_grad=need, overwrite_grad=overwrite)
            if not need:
                return None
            # a buffer a layer returned is not needed once passed down
            if new_grad is not grad:
                overwrite = True
            grad = new_grad
        return grad

    @property
    def compute_dtype(self):
        """The ``compute_dtype`` of the Dense layers (None without any);
        setting it sets every Dense layer's."""
        values = {layer.compute_dtype for layer in self.layers if isinstance(layer, Dense)}
        if len(values) > 1:
            raise ValueError(f"the Dense layers have different compute dtypes: {values}")
        return values.pop() if values else None

    @compute_dtype.setter
    def compute_dtype(self, value):
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        for layer in dense:     # all checked before any is changed
            _check_layer_compute_dtype(value, layer.dtype)
        for layer in dense:
            layer.compute_dtype = value

    def named_parameters(self):
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers)
                for name, p in layer.named_parameters()]

    def parameters(self):   # without the names: train_step asks on every step
        return [p for layer in self.layers for p in layer.parameters()]

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return super().train(mode)

    def release_buffers(self):
        for layer in self.layers:
            layer.release_buffers()
        self._stack_cache = None
        super().release_buffers()

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
class Loss:
    """``value = loss.forward(output, target, sample_weight=None)`` returns the
    (weighted) mean loss as a float and keeps its gradient; ``backward()``
    returns that gradient w.r.t. ``output``, in a buffer owned by the loss and
    overwritten by the next ``forward`` with the same output shape."""

    def __init__(self):
        self._workspace = _Workspace()
        self._grad = None

    def __call__(self, output, target, sample_weight=None):
        return self.forward(output, target, sample_weight)

    def forward(self, output, target, sample_weight=None):
        output = np.asarray(output)
        out = self._workspace.get("grad", output.shape, F._compute_dtype(output))
        value, self._grad = self._kernel(output, np.asarray(target), sample_weight, out)
        return value

    def backward(self):
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def release_buffers(self):
        self._workspace.clear()
        self._grad = None

    def _kernel(self, output, target, sample_weight, out):
        raise NotImplementedError

    # The loss code of _kernels.dense_stack_step, and its targets: (class
    # indices, target array, label smoothing) for an output of ``shape``.
    _stack_loss = None

    def _stack_target(self, target, shape, dtype):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def _column_target(shape, target):
    """A 1-D target for an (N, 1) output is read as (N, 1) (a view)."""
    if len(shape) == 2 and shape[1] == 1 and target.ndim == 1:
        return target.reshape(-1, 1)
    return target


class _PointwiseLoss(Loss):
    """The losses of ``F._pointwise_loss``: targets of the output's shape."""

    _names = ("o", "y")

    def _stack_target(self, target, shape, dtype):
        target = _column_target(shape, np.asarray(target))
        return None, F._pointwise_target(target, self._names[1], shape, dtype,
                                         self._names[0], self._stack_loss), 0.0


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on logits (N, C).  Targets: class indices (N,)
    or probability rows (N, C); ``label_smoothing`` ε in [0, 1) replaces a
    target row y by (1-ε)·y + ε/C."""

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        if (not isinstance(label_smoothing, numbers.Real) or isinstance(label_smoothing, bool)
                or not 0 <= label_smoothing < 1):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _kernel(self, output, target, sample_weight, out):
        return F.softmax_cross_entropy(output, target, sample_weight=sample_weight,
                                       label_smoothing=self.label_smoothing, out=out)

    _stack_loss = _kernels.Loss.LOSS_XENT

    def _stack_target(self, target, shape, dtype):
        return (*F._xent_target(target, shape, dtype), self.label_smoothing)

    def __repr__(self):
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"


class BinaryCrossEntropyWithLogits(_PointwiseLoss):
    """Sigmoid + binary cross-entropy on logits (N,) or (N, K), targets in
    [0, 1] of the same shape (a 1-D target is accepted for an (N, 1) output).
    The per-sample loss sums the K outputs; the batch loss is their mean
    (scikit-learn's multilabel convention)."""

    _names = ("z", "t")
    _stack_loss = _kernels.Loss.LOSS_BCE

    def _kernel(self, output, target, sample_weight, out):
        return F.binary_cross_entropy_with_logits(output, _column_target(output.shape, target),
                                                  sample_weight=sample_weight, out=out)


class MSELoss(_PointwiseLoss):
    """Squared error with the ½ convention: per-sample ½·Σ_k (o_k − y_k)²,
    averaged over samples (a 1-D target is accepted for an (N, 1) output)."""

    _stack_loss = _kernels.Loss.LOSS_MSE

    def _kernel(self, output, target, sample_weight, out):
        return F.mse_loss(output, _column_target(output.shape, target), sample_weight=sample_weight,
                          out=out)


class PoissonLoss(_PointwiseLoss):
    """Poisson loss on the log link: the output z is log of the predicted
    rate, targets y >= 0 of its shape (a 1-D target is accepted for an (N, 1)
    output); per-sample Σ_k exp(z_k) − y_k z_k + xlogy(y_k, y_k) − y_k,
    averaged over samples (scikit-learn's MLPRegressor(loss="poisson") with
    its exp output activation).  Predictions are exp(output)."""

    _names = ("z", "y")
    _stack_loss = _kernels.Loss.LOSS_POISSON

    def _kernel(self, output, target, sample_weight, out):
        return F.poisson_loss(output, _column_target(output.shape, target),
                              sample_weight=sample_weight, out=out)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
# train_step runs a Sequential of Dense layers with one of the four losses
# in one kernel call (switched off by the tests that compare the two paths)
_FUSE_DENSE_STACKS = True


def train_step(model, loss, optimizer, X, y, sample_weight=None):
    """One step: forward, loss, backward, optimiser update.  Returns the
    batch loss.  Allocation-free after warm-up when X (and float targets and
    weights) already have the model dtype and integer labels are int64.

    A ``Sequential`` of ``Dense`` layers (one dtype) with one of the losses
    here runs forward, loss and backward in one compiled call
    (``_kernels.dense_stack_step``): the same kernels in the same order as
    layer by layer, so the same numbers, without returning to Python
    between them.  Layers and loss are left as after the layer-by-layer
    path (outputs, ``loss.backward()``); only the layers' input-gradient
    buffers are not filled.  With ``optim.SGD`` over exactly the model's
    parameters that call also takes the SGD step, each parameter updated
    as soon as its gradient is known (the same numbers as ``step()``
    afterwards; the gradients stay in ``.grad``).  A scipy.sparse X goes
    layer by layer (the first Dense layer takes it, ``Dense.forward``)."""
    if _stacks(model, loss) and (type(X) is np.ndarray or not F._is_sparse(X)):
        return _dense_stack_step(model, loss, X, y, sample_weight, optimizer)
    value = forward_backward(model, loss, X, y, sample_weight)
    optimizer.step()
    return value


def forward_backward(model, loss, X, y, sample_weight=None):
    """``train_step`` without the update: the parameters' ``.grad`` hold the
    batch's gradient afterwards; returns the batch loss."""
    if _stacks(model, loss) and (type(X) is np.ndarray or not F._is_sparse(X)):
        return _dense_stack_step(model, loss, X, y, sample_weight)
    value = loss.forward(model.forward(X), y, sample_weight)
    model.backward(loss.backward(), need_input_grad=False)
    return value


def _stacks(model, loss):
    """Whether ``model`` and ``loss`` train in one dense_stack_step call."""
    return (_FUSE_DENSE_STACKS and getattr(model, "_dense_stack", False)
            and type(loss)._stack_loss is not None)


def _check_parameter(param, where, dtype, shape):
    """What the kernel reads a parameter's data from and writes its grad to:
    C-contiguous arrays of the layer's dtype and shape (the grad writeable)."""
    for attr, array in (("data", param.data), ("grad", param.grad)):
        if (not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape
                or not array.flags.c_contiguous
                or (attr == "grad" and not array.flags.writeable)):
            raise ValueError(f"{where}.{attr} must be a C-contiguous {np.dtype(dtype)} array "
                             f"of shape {shape}" + (", writeable" if attr == "grad" else "")
                             + f"; got {getattr(array, 'dtype', type(array).__name__)} "
                             f"{getattr(array, 'shape', '')}")


def _dense_stack_step(model, loss, X, y, sample_weight, optimizer=None):
    """Forward, loss and backward of ``model``'s dense layers in one kernel
    call, then ``optimizer``'s step (in that call where the optimiser's
    ``_stack_update`` offers it); returns the mean loss.  The checks of the
    layer-by-layer path come first: X as in Dense.forward, targets and
    weights as in the loss's functional kernel, the parameters' arrays by
    dtype, shape and layout (``_stack_plan``)."""
    layers = model.layers
    first = layers[0]
    dtype = first.dtype
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != first.n_in:
        raise ValueError(f"Dense(n_in={first.n_in}) expects X of shape (N, {first.n_in}), "
                         f"got {X.shape}")
    X = F._contiguous(X, "X", dtype, (2,))
    n = X.shape[0]
    labels, target, smoothing = loss._stack_target(y, (n, layers[-1].n_out), dtype)
    weights = F._sample_weight(sample_weight, n, dtype)
    scale = F._scale("mean", n, weights)
    plan, grad = _stack_plan(model, loss, n, dtype)
    A = X
    for layer, arrays in zip(layers, plan):
        layer._input, layer._output = A, arrays[4]
        A = arrays[4]
    update = None if optimizer is None else optimizer._stack_update(model)
    total = _kernels.dense_stack_step(plan, X, type(loss)._stack_loss, labels, target, weights,
                                      grad, scale, smoothing, update)
    loss._grad = grad
    if update is not None:
        optimizer.steps += 1
    elif optimizer is not None:
        optimizer.step()
    return total * scale


def _stack_epoch(model, loss, optimizer, X, y, order, batch_size, penalty=None):
    """One epoch of ``fit`` in one compiled call (_kernels.dense_stack_epoch)
    for a model and loss that ``train_step`` runs in one call, with
    ``optimizer``'s step taken in it: the same batches, kernels and order as
    fit's loop of train_step, so the same numbers.  X and y are fit's
    converted arrays, ``order`` the shuffled sample order or None,
    ``penalty`` None or the batch penalty callback
    (_Callbacks.compiled_penalty); returns
    the epoch loss.  Layers and loss are left as after that loop's last
    step."""
    layers = model.layers
    first, dtype, n = layers[0], layers[0].dtype, X.shape[0]
    if X.ndim != 2 or X.shape[1] != first.n_in:
        raise ValueError(f"Dense(n_in={first.n_in}) expects X of shape (N, {first.n_in}), "
                         f"got {X.shape}")
    labels, target, smoothing = loss._stack_target(y, (n, layers[-1].n_out), dtype)
    plan, grad = _stack_plan(model, loss, batch_size, dtype)
    x_batch = labels_batch = target_batch = None
    if order is not None:
        x_batch = np.empty((batch_size, X.shape[1]), dtype)
        if labels is not None:
            labels_batch = np.empty(batch_size, np.int64)
        else:
            target_batch = np.empty((batch_size, target.shape[1]), dtype)
    values = np.empty((n + batch_size - 1) // batch_size)
    penalties = None if penalty is None else np.empty_like(values)
    progress = np.zeros(1, np.int64)
    m = n - (len(values) - 1) * batch_size       # the last batch's rows
    try:
        _kernels.dense_stack_epoch(plan, X, type(loss)._stack_loss, labels, target, order,
                                   batch_size, x_batch, labels_batch, target_batch, grad,
                                   smoothing, optimizer._stack_update(model),
                                   None if penalty is None else penalty.stack_penalty,
                                   values, penalties, progress)
    finally:
        done = int(progress[0])
        optimizer.steps += done
        if penalty is not None and done:
            penalty.batches_done(penalties[:done], m if done == len(values) else batch_size)
    loss_sum = 0.0
    for value in values[:-1].tolist():           # fit's sum, in its order
        loss_sum += value * batch_size
    A = X[n - m:] if order is None else x_batch[:m]
    for layer, arrays in zip(layers, plan):
        layer._input, layer._output = A, arrays[4][:m]
        A = layer._output
    loss._grad = grad[:m]
    return (loss_sum + float(values[-1]) * m) / float(n)


def _stack_plan(model, loss, n, dtype):
    """dense_stack_step's per-layer arrays for a batch of ``n`` and the loss
    gradient buffer: checked and gathered once, then reused (in training
    mode) while the batch size, the loss and every parameter array stay the
    same objects -- a step then spends no Python time on them."""
    arrays = []
    for layer in model.layers:
        arrays += (layer.weight.grad, layer.weight.data)
        if layer.bias is not None:
            arrays += (layer.bias.grad, layer.bias.data)
    cached = model._stack_cache
    # (an array's layout and dtype cannot change in place; its writeability
    # can: the grads must stay writeable, and a read-only weight, which the
    # kernel would only read, just misses the cache)
    modes = tuple(layer._compute_dtype for layer in model.layers)
    if (cached is not None and cached[0] == n and cached[1] is loss and cached[5] == modes
            and _kernels.same_writeable_arrays(cached[2], arrays)):
        return cached[3], cached[4]
    plan = []
    for i, layer in enumerate(model.layers):
        for name, param in layer.named_parameters():
            _check_parameter(param, f"layer {i} (Dense) {name}", dtype,
                             (layer.n_in, layer.n_out) if name == "weight" else (layer.n_out,))
        out_shape = (n, layer.n_out)
        bias = layer.bias
        plan.append((layer.weight.data, None if bias is None else bias.data,
                     F.ACTIVATIONS[layer.activation], layer.alpha,
                     layer._buffer("output", out_shape, dtype),
                     layer._buffer("delta", out_shape, dtype), layer.weight.grad,
                     layer._buffer("bias_grad", (layer.n_out,), dtype) if bias is None
                     else bias.grad, layer.compute_dtype is not None))
    grad = loss._workspace.get("grad", (n, model.layers[-1].n_out), dtype)
    model._stack_cache = (n, loss, arrays, plan, grad, modes) if model.training else None
    return plan, grad


def _model_dtype(model, X):
    params = model.parameters()
    if params:
        return params[0].dtype
    if F._is_sparse(X):
        return _FLOAT32 if X.dtype == _FLOAT32 else _FLOAT64
    return F._compute_dtype(np.asarray(X))


class _BatchGather:
    """Rows of X, y (and sample weights) gathered by index into buffers of
    ``rows`` rows allocated once, not fancy-indexed copies: float matrices
    (X, soft targets) by the compiled, threaded row copy, the rest by
    ``np.take``.  Shared by ``fit`` and ``fastnn.distributed.fit``."""

    def __init__(self, X, y, sample_weight, rows):
        self.arrays = (X, y, sample_weight)
        self.buffers = tuple(None if a is None else np.empty((rows,) + a.shape[1:], a.dtype)
                             for a in self.arrays)

    def __call__(self, idx):
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        n = len(idx)
        (X, y, w), (bx, by, bw) = self.arrays, self.buffers
        return (self._gather(X, idx, bx[:n]), self._gather(y, idx, by[:n]),
                None if w is None else self._gather(w, idx, bw[:n]))

    @staticmethod
    def _gather(array, idx, out):
        if array.ndim == 2 and array.dtype in (np.float32, np.float64) and array.flags.c_contiguous:
            _kernels.gather_rows(array, idx, out)
            return out
        # mode="clip": the indices are valid, and "raise" would buffer the output
        return np.take(array, idx, axis=0, out=out, mode="clip")


class _SparseBatchGather(_BatchGather):
    """_BatchGather for a scipy.sparse CSR X (checked once, _checked_csr_matrix):
    its rows gathered by scipy's compiled row indexing, O(nnz of the batch),
    never densified; y and the weights as _BatchGather."""

    def __init__(self, X, y, sample_weight, rows):
        super().__init__(np.empty((0,)), y, sample_weight, rows)
        self.X = X

    def __call__(self, idx):
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        n = len(idx)
        (_, y, w), (_, by, bw) = self.arrays, self.buffers
        return (self.X[idx], self._gather(y, idx, by[:n]),
                None if w is None else self._gather(w, idx, bw[:n]))


class _Callbacks:
    """fit's callbacks (shared with fastnn.distributed.fit):
    ``batch_start(n, weight)`` before every step (n samples of weight sum
    ``weight``) and ``batch_end(n)`` after it, where a callback has them,
    and at the end of an epoch ``epoch_end(loss)`` or a call
    ``callback(epoch, loss)``."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks or [])
        self.start_hooks = [cb.batch_start for cb in self.callbacks if hasattr(cb, "batch_start")]
        self.batch_hooks = [cb.batch_end for cb in self.callbacks if hasattr(cb, "batch_end")]

    def compiled_penalty(self, optimizer):
        """The callback whose work a compiled epoch can do, else None: the
        only one with a batch_start, a batch penalty of the coupled kind (the
        MLP estimators' _BatchPenalty).  It has ``stack_penalty`` = (alpha,
        l1): each batch of m samples sets the optimiser's weight_decay to
        alpha/m and its l1 to l1/m, and ``batches_done(penalties,
        last_rows)``, which takes the penalty of each batch's weights before
        its step (_kernels.dense_stack_epoch)."""
        owners = [cb for cb in self.callbacks if hasattr(cb, "batch_start")]
        if (len(owners) == 1 and hasattr(owners[0], "stack_penalty")
                and not getattr(optimizer, "_decoupled", False)
                # the kernel's table holds 64 regularised parameters
                and sum(p.regularize for p in optimizer.params) <= 64):
            return owners[0]
        return None

    def batch_start(self, n_samples, weight):
        for hook in self.start_hooks:
            hook(n_samples, weight)

    def batch_end(self, n_samples):
        for hook in self.batch_hooks:
            hook(n_samples)

    def epoch_end(self, epoch, value):
        """Calls every callback; True when any of them asks to stop."""
        stop_requested = False
        for cb in self.callbacks:
            hook = getattr(cb, "epoch_end", None)
            if hook is not None:
                result = hook(value)
            elif callable(cb):
                result = cb(epoch, value)
            else:
                raise TypeError(f"callbacks must have an epoch_end(loss) method or be "
                                f"callable(epoch, loss), got {type(cb).__name__}")
            stop_requested = bool(result) or stop_requested
        return stop_requested


def _sample_order(order, n):
    if order is None:
        return np.arange(n)
    if (not isinstance(order, np.ndarray) or order.dtype != np.int64 or order.shape != (n,)
            or not order.flags.writeable):
        raise ValueError(f"order must be a writeable int64 array of shape ({n},)")
    return order


@contextlib.contextmanager
def _training_mode(model):
    """The model in training mode, its previous mode restored afterwards."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def fit(model, loss, optimizer, X, y, *, epochs, batch_size, shuffle=True, rng=None,
        sample_weight=None, callbacks=None, order=None):
    """Minibatch training; returns the list of epoch losses.

    Each epoch visits every sample once, in an order shuffled by ``rng``
    (Generator, RandomState, int seed or None) when ``shuffle``; the last batch may be
    smaller.  Batches are gathered into buffers allocated once
    (``np.take(..., out=)``), not fancy-indexed copies; X (and float targets,
    weights) are converted once to the model dtype, integer class labels to
    int64.  The epoch loss is the (weighted) mean of the sample losses, each
    taken when its batch was trained on (as scikit-learn's ``loss_curve_``).

    X may be scipy.sparse (for a model whose first layer is ``Dense``):
    converted once to CSR of the model dtype (a copy when it is another
    format or dtype), its structure and values checked once, each batch's
    rows gathered from it by scipy's row indexing (O(nnz of the batch),
    never densified); the steps then go layer by layer (``train_step``).

    ``callbacks``: objects with ``epoch_end(loss)`` (and optionally
    ``batch_end(n_samples)``), e.g. the learning-rate schedules of
    ``fastnn.optim``, or callables ``f(epoch, loss)``.  Training stops after
    an epoch for which any callback returns True.  The model is put in
    training mode and its previous mode restored at the end.

    A ``Sequential`` of ``Dense`` layers trained by ``optim.SGD``, ``Adam``
    or ``AdamW`` without sample weights and without callbacks that have
    batch hooks (but for the estimators' penalty) runs each epoch as one
    compiled call: the same steps as train_step after
    train_step, so the same numbers, with no Python between them (Ctrl-C
    still stops it between two steps).

    ``order``: None, or an int64 array holding a permutation of range(n),
    the sample order, shuffled in place at each epoch: passing the same
    array to every call continues one sequence of shuffles across calls
    (as scikit-learn's epochs do), where None starts from range(n).
    """
    epochs = _check_size(epochs, "epochs")
    batch_size = _check_size(batch_size, "batch_size")
    dtype = _model_dtype(model, X)
    sparse = F._is_sparse(X)
    X = F._checked_csr_matrix(X, dtype) if sparse else np.ascontiguousarray(X, dtype=dtype)
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"X must hold at least one sample, got shape {X.shape}")
    n = X.shape[0]
    y = np.asarray(y)
    if y.ndim < 1 or y.shape[0] != n:
        raise ValueError(f"y must have one row per sample of X ({n}), got shape {y.shape}")
    if isinstance(loss, SoftmaxCrossEntropy) and y.ndim == 1:
        # class indices: int64 is what the kernel reads; float labels are left
        # as they are for the kernel to check (a cast would truncate 0.5 to 0)
        y = np.ascontiguousarray(y, dtype=np.int64 if y.dtype.kind in "iub" else None)
    else:
        y = np.ascontiguousarray(y, dtype=dtype)
    if sample_weight is not None:
        sample_weight = np.ascontiguousarray(sample_weight, dtype=dtype)
        if sample_weight.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}")
    callbacks = _Callbacks(callbacks)
    if not isinstance(rng, np.random.RandomState):  # (scikit-learn's kind is kept)
        rng = _init.as_generator(rng)
    batch_size = min(batch_size, n)

    order = _sample_order(order, n)
    # an epoch in one compiled call where nothing runs between its steps
    penalty = callbacks.compiled_penalty(optimizer)
    compiled = (not sparse and sample_weight is None and not callbacks.batch_hooks
                and (not callbacks.start_hooks or penalty is not None)
                and _stacks(model, loss) and optimizer._stack_update(model) is not None)
    gather = None
    if shuffle and not compiled:
        gather = (_SparseBatchGather if sparse else _BatchGather)(X, y, sample_weight, batch_size)
    history = []
    with _training_mode(model):
        for epoch in range(epochs):
            if shuffle:
                rng.shuffle(order)
            if compiled:
                epoch_loss = _stack_epoch(model, loss, optimizer, X, y,
                                          order if shuffle else None, batch_size, penalty)
                history.append(epoch_loss)
                if callbacks.epoch_end(epoch, epoch_loss):
                    break
                continue
            loss_sum = weight_sum = 0.0
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                m = stop - start
                if shuffle:
                    xb, yb, wb = gather(order[start:stop])
                else:  # contiguous row slices are views: no gathering needed
                    xb, yb = X[start:stop], y[start:stop]
                    wb = None if sample_weight is None else sample_weight[start:stop]
                weight = m if wb is None else float(wb.sum(dtype=np.float64))
                if weight == 0:  # a batch of zero weight has no mean and teaches nothing
                    callbacks.batch_end(m)
                    continue
                callbacks.batch_start(m, weight)
                value = train_step(model, loss, optimizer, xb, yb, wb)
                loss_sum += value * weight
                weight_sum += weight
                callbacks.batch_end(m)
            epoch_loss = loss_sum / weight_sum if weight_sum > 0 else float("nan")
            history.append(epoch_loss)
            if callbacks.epoch_end(epoch, epoch_loss):
                break
    return history
