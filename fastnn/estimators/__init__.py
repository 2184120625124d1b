"""scikit-learn-compatible estimators: MLPClassifier, MLPRegressor, LogisticRegression.

The MLPs take scikit-learn's ``MLPClassifier``/``MLPRegressor`` constructor
parameters with the same names, defaults and meaning (solvers "sgd" and
"adam"; "lbfgs" is not supported), plus ``activation="leaky_relu"``,
``dropout``, ``l1``, ``dtype``, ``n_threads``, ``validation_data`` and
``callbacks``.  They train through :mod:`fastnn.nn` and :mod:`fastnn.optim`.

scikit-learn is optional: when it is importable the estimators derive from
its ``BaseEstimator``/mixins and use its input validation (so they work in
pipelines, grid searches, ``clone`` ...); without it a small fallback base
provides ``get_params``/``set_params``/``score`` and equivalent checks.

Saving (``est.save(path)`` / ``fastnn.load``) goes through
``_get_fastnn_state``/``_from_fastnn_state``: hyper-parameters and fitted
scalars as JSON, arrays as plain numeric/string arrays.  What round-trips:
every fitted attribute needed to predict (bit-identical predictions), the
loss curve and validation scores, ``classes_`` (numeric, bool and str labels
exactly; an object array of str comes back as an object array of the same
str; other objects as their ``str``), ``feature_names_in_``.  Not saved:
``callbacks``, ``validation_data`` and ``comm`` (reset to None), a Generator or
RandomState ``random_state`` (None), the optimiser state (a ``partial_fit``
or warm-started ``fit`` after loading starts a fresh optimiser).
"""
from ._base import _SKLEARN, ConvergenceWarning, NotFittedError  # noqa: F401 (_SKLEARN: tests)
from ._logistic_regression import LogisticRegression
from ._mlp_classifier import MLPClassifier
from ._mlp_regressor import MLPRegressor

__all__ = ["LogisticRegression", "MLPClassifier", "MLPRegressor", "NotFittedError",
           "ConvergenceWarning"]

# The public name, in reprs and pickles: a pickle then refers to
# fastnn.estimators.MLPClassifier, whichever private module defines it.
for _cls in (LogisticRegression, MLPClassifier, MLPRegressor):
    _cls.__module__ = __name__
del _cls
