"""Save and load fastnn models without pickle.

A model file is a NumPy ``.npz`` archive (``numpy.savez``, uncompressed)
holding the model's arrays plus one extra entry, ``__header__``: a uint8
array of UTF-8 JSON::

    {"format": "fastnn-model", "format_version": 1, "fastnn_version": "0.1.0",
     "class": "MLPClassifier", "meta": {...},
     "arrays": {"name": {"dtype": "<f4", "shape": [64, 256], "sha256": "..."}}}

``meta`` is JSON (hyper-parameters, layer descriptions, ...), the arrays are
plain numeric or string arrays read with ``allow_pickle=False``; the class is
looked up by name in a fixed table of fastnn's own classes.  Loading a file
therefore never runs code from the file.

Saveable classes implement ``_get_fastnn_state(self) -> (meta, arrays)`` and
the classmethod ``_from_fastnn_state(cls, meta, arrays)``; for
:class:`fastnn.nn.Sequential` both live in this module.
"""
import hashlib
import importlib
import json
import os
import secrets
import zipfile
import zlib

import numpy as np

from ._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load", "save"]

FORMAT = "fastnn-model"
FORMAT_VERSION = 1
_HEADER = "__header__"
# kinds np.save writes without pickle: bool, ints, floats, complex, bytes, str
_PLAIN_KINDS = frozenset("biufcSU")

# The only classes load() will build: name in the file -> (module, attribute).
_REGISTRY = {
    "MLPClassifier": ("fastnn.estimators", "MLPClassifier"),
    "MLPRegressor": ("fastnn.estimators", "MLPRegressor"),
    "LogisticRegression": ("fastnn.estimators", "LogisticRegression"),
    "Sequential": ("fastnn.nn", "Sequential"),
}


class ModelFileError(ValueError):
    """A file that is not a valid fastnn model file (corrupted, truncated,
    foreign, or written by an incompatible fastnn)."""

    def __init__(self, path, problem):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------------------
# Sequential models: layers described in meta, parameters as arrays
# ---------------------------------------------------------------------------
def _layer_meta(layer):
    from . import nn

    kind = type(layer)
    if kind is nn.Dense:
        return {"type": "Dense", "n_in": layer.n_in, "n_out": layer.n_out,
                "activation": layer.activation, "alpha": layer.alpha,
                "bias": layer.bias is not None, "dtype": layer.dtype.name}
    if kind is nn.LeakyReLU:
        return {"type": "LeakyReLU", "alpha": layer.alpha}
    if kind is nn.Dropout:
        return {"type": "Dropout", "p": layer.p}
    if kind in (nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU):
        return {"type": kind.__name__}
    if kind is nn.Sequential:
        return {"type": "Sequential", "layers": [_layer_meta(sub) for sub in layer.layers]}
    raise TypeError(f"cannot save a Sequential containing a {kind.__name__} layer: "
                    "only fastnn.nn's built-in layers are supported")


def _layer_from_meta(meta):
    from . import nn

    kind = meta["type"]
    if kind == "Dense":
        # zeros: the real weights are copied in afterwards
        return nn.Dense(meta["n_in"], meta["n_out"], meta["activation"], alpha=meta["alpha"],
                        bias=meta["bias"], dtype=meta["dtype"], init="zeros")
    if kind == "LeakyReLU":
        return nn.LeakyReLU(meta["alpha"])
    if kind == "Dropout":
        return nn.Dropout(meta["p"])
    if kind in ("Identity", "Sigmoid", "Tanh", "ReLU"):
        return getattr(nn, kind)()
    if kind == "Sequential":
        return nn.Sequential(*(_layer_from_meta(sub) for sub in meta["layers"]))
    raise ValueError(f"unknown layer type {kind!r}")


def _sequential_state(model):
    meta = _layer_meta(model)
    meta["training"] = model.training
    return meta, model.state_dict()


def _sequential_from_state(cls, meta, arrays):
    model = _layer_from_meta(meta)
    if not isinstance(model, cls):
        raise ValueError(f"meta describes a {meta.get('type')!r}, not a Sequential")
    params = dict(model.named_parameters())
    for name, p in params.items():
        # exact dtype, so that predictions are bit-identical (no silent cast)
        if name in arrays and arrays[name].dtype != p.dtype:
            raise ValueError(f"array {name!r} has dtype {arrays[name].dtype}, "
                             f"the layer expects {p.dtype}")
    model.load_state_dict(arrays)
    return model.train(bool(meta.get("training", False)))


# name -> (get_state, from_state) for classes that do not carry the protocol
_EXTERNAL = {"Sequential": (_sequential_state, _sequential_from_state)}


def _resolve(name):
    module, attribute = _REGISTRY[name]
    return getattr(importlib.import_module(module), attribute)


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------
def _sha256(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def _state_of(obj):
    name = type(obj).__name__
    try:
        # exact class only: a subclass may carry state or behaviour we cannot restore
        registered = name in _REGISTRY and _resolve(name) is type(obj)
    except (ImportError, AttributeError):
        registered = False
    if not registered:
        raise TypeError(f"cannot save an object of type {type(obj).__module__}.{name}: "
                        f"fastnn can save {', '.join(sorted(_REGISTRY))}")
    if name in _EXTERNAL:
        meta, arrays = _EXTERNAL[name][0](obj)
    else:
        meta, arrays = obj._get_fastnn_state()
    clean = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key == _HEADER or "/" in key:
            raise ValueError(f"invalid array name {key!r}")
        value = np.asarray(value)
        if value.dtype.kind not in _PLAIN_KINDS:
            raise TypeError(f"array {key!r} has dtype {value.dtype}: only numeric and string "
                            "arrays can be saved (no pickled objects)")
        clean[key] = value
    return name, meta, clean


def _json_scalar(value):
    """NumPy scalars in meta are written as the Python numbers they hold."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    raise TypeError(f"model meta must be JSON data, got a {type(value).__name__}")


def save(obj, path):
    """Save a fastnn model (an estimator or a ``fastnn.nn.Sequential``) to
    ``path`` (used as given: no suffix is added; ``.npz`` is customary).

    The file is written to a temporary file in the same directory, flushed
    to disk and then renamed over ``path``, so ``path`` always holds either
    the previous file or the complete new one.  Returns ``path``."""
    name, meta, arrays = _state_of(obj)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastnn_version": __version__,
        "class": name,
        "meta": meta,
        "arrays": {key: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
                   for key, a in arrays.items()},
    }
    # (NaN/inf in meta, e.g. an unset best score, are written as Python's
    # json writes and reads them: NaN, Infinity)
    header_bytes = json.dumps(header, sort_keys=True, default=_json_scalar).encode("utf-8")
    header_array = np.frombuffer(header_bytes, dtype=np.uint8)

    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666: the umask applies, as for any new file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_HEADER: header_array})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory):
    """Make the rename itself durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------
def _parse_header(path, raw):
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(path, "malformed fastnn header entry")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(path, f"the fastnn header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(path, "not a fastnn model file (its header is not a "
                                   f"{FORMAT!r} header)")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "; upgrade fastnn to read it" if newer else ""
        raise ModelFileError(path, f"unsupported model file format version {version!r} "
                                   f"(written by fastnn {header.get('fastnn_version')}; "
                                   f"this fastnn {__version__} reads version "
                                   f"{FORMAT_VERSION}){hint}")
    name = header.get("class")
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ModelFileError(path, f"unknown model class {name!r} (fastnn can load "
                                   f"{', '.join(sorted(_REGISTRY))})")
    if not isinstance(header.get("arrays"), dict) or not isinstance(header.get("meta"), dict):
        raise ModelFileError(path, "malformed fastnn header (no 'arrays' or 'meta' table)")
    return header


def _read_archive(path):
    with open(path, "rb") as f:  # FileNotFoundError etc. propagate unchanged
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise ModelFileError(path, "not a fastnn model file (not an .npz archive)")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                if _HEADER not in npz.files:
                    raise ModelFileError(path, "not a fastnn model file (an .npz archive "
                                               "without a fastnn header)")
                header = _parse_header(path, npz[_HEADER])
                expected = set(header["arrays"]) | {_HEADER}
                if set(npz.files) != expected:
                    raise ModelFileError(path, "the archive's arrays do not match its header "
                                               f"(missing {sorted(expected - set(npz.files))}, "
                                               f"unexpected {sorted(set(npz.files) - expected)})")
                arrays = {key: npz[key] for key in header["arrays"]}
        except ModelFileError:
            raise
        except ValueError as exc:
            if "pickle" in str(exc):
                # np.load refuses object arrays: we never unpickle
                raise ModelFileError(path, "the file contains a pickled (object) array, "
                                           "which fastnn never loads") from None
            raise ModelFileError(path, f"corrupted or truncated file ({exc})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
            raise ModelFileError(path, f"corrupted or truncated file ({exc})") from None
    return header, arrays


def load(path):
    """Load a model saved with :func:`save`.

    Raises ``FileNotFoundError`` for a missing file and :class:`ModelFileError`
    (a ``ValueError``) for a file that is truncated, corrupted (checksum
    mismatch), foreign, of an unsupported format version or of an unknown
    class.  Nothing in the file is ever executed or unpickled."""
    path = os.fspath(path)
    header, arrays = _read_archive(path)
    for key, arr in arrays.items():
        info = header["arrays"][key]
        if not isinstance(info, dict):
            raise ModelFileError(path, f"malformed header entry for array {key!r}")
        if arr.dtype.str != info.get("dtype") or list(arr.shape) != info.get("shape"):
            raise ModelFileError(path, f"array {key!r} is {arr.dtype.str} {list(arr.shape)}, "
                                       f"the header says {info.get('dtype')} {info.get('shape')}")
        if _sha256(arr) != info.get("sha256"):
            raise ModelFileError(path, f"checksum mismatch for array {key!r}: the file is "
                                       "corrupted")
    name = header["class"]
    try:
        cls = _resolve(name)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(path, f"model class {name!r} is not available in this "
                                   f"fastnn ({exc})") from None
    try:
        if name in _EXTERNAL:
            return _EXTERNAL[name][1](cls, header["meta"], arrays)
        return cls._from_fastnn_state(header["meta"], arrays)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(path, f"inconsistent {name} model description "
                                   f"({type(exc).__name__}: {exc})") from exc
