"""MLPRegressor: scikit-learn's, trained by fastnn."""

import numpy as np

from .. import nn
from ._base import RegressorMixin, _check_dtype, _r2_score, _threads
from ._mlp import _BaseMLP, _stochastic_only


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, a drop-in for scikit-learn's.

    ``loss="squared_error"``: identity output, squared error (½ convention;
    the reported loss is averaged over outputs, as scikit-learn's);
    ``loss="poisson"``: exponential output, half Poisson deviance (y ≥ 0;
    summed over outputs, as scikit-learn's).  Parameters as in
    ``sklearn.neural_network.MLPRegressor``, plus the extras documented on
    :class:`MLPClassifier` (leaky_relu, l1, dropout, dtype, n_threads,
    validation_data, callbacks, comm).
    """

    _kind = "numeric"

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *,
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 l1=0.0, dropout=0.0, dtype=np.float32, compute_dtype=None, n_threads=None,
                 validation_data=None, callbacks=None, comm=None):
        self._store_params(locals())

    def _check_params(self, incremental):
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        return super()._check_params(incremental)

    @_stochastic_only
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y)."""
        with _threads(self.n_threads):
            return self._fit(X, y, sample_weight, incremental=True)

    def _encode_y(self, y, first, incremental, classes):
        y = np.asarray(y, dtype=_check_dtype(self.dtype))
        if y.ndim == 1:
            y = y.reshape(-1, 1)
        if first:
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self.out_activation_ != ("exp" if self.loss == "poisson" else "identity"):
            raise ValueError(f"loss={self.loss!r} differs from the loss the model was fitted "
                             "with; refit without warm_start")
        return y

    def _n_network_outputs(self, target):
        return target.shape[1]

    def _make_loss(self):
        # on the output layer's values z (the log of the prediction for poisson)
        return nn.PoissonLoss() if self.out_activation_ == "exp" else nn.MSELoss()

    def _loss_outputs(self):
        # scikit-learn averages the squared error over outputs, sums the deviance
        return 1 if self.out_activation_ == "exp" else self.n_outputs_

    def _forward(self, X):
        out = super()._forward(X)
        return np.exp(out, out=out) if self.out_activation_ == "exp" else out

    def _encoded_score(self, X, target, sample_weight=None):
        pred = self._forward(X)
        if not np.isfinite(pred).all():
            return float("nan")
        return _r2_score(target.astype(np.float64), pred, sample_weight)

    def predict(self, X):
        """Predicted values, shape (n_samples,) or (n_samples, n_outputs)."""
        out = self._raw_output(X)
        return out.ravel() if out.shape[1] == 1 else out
