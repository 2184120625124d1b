"""The save-state encoding of the estimators: constructor parameters as JSON,
``classes_`` as a plain array (``fastnn.save``/``fastnn.load``)."""

import numpy as np


class _Unsaveable(Exception):
    pass


def _encode_param(value):
    """A constructor parameter as JSON; None when it cannot be saved
    (callbacks, validation data, random generators)."""
    try:
        return _to_json(value)
    except _Unsaveable:
        return None


def _to_json(value):
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"__dtype__": np.dtype(value).name, "type": True}
    if isinstance(value, np.dtype):
        return {"__dtype__": value.name, "type": False}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _Unsaveable


def _decode_param(value):
    if isinstance(value, dict):
        if "__dtype__" in value:
            dt = np.dtype(value["__dtype__"])
            return dt.type if value["type"] else dt
        if "__tuple__" in value:
            return tuple(_decode_param(v) for v in value["__tuple__"])
        raise ValueError(f"unexpected parameter value {value!r}")
    if isinstance(value, list):
        return [_decode_param(v) for v in value]
    return value


def _classes_state(classes):
    """classes_ as a plain array (+ its kind) for saving."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biufU":
        return classes, "plain"
    return classes.astype(str), "object"


def _classes_from_state(arr, kind):
    return arr.astype(object) if kind == "object" else arr
