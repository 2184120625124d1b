"""fastnn.io: save/load round trips, atomic writes, and rejection of bad files."""
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn import io, nn
from fastnn.io import ModelFileError


def _sequential(dtype):
    return nn.Sequential(
        nn.Dense(6, 9, "relu", dtype=dtype, rng=1),
        nn.Dropout(0.3, rng=2),
        nn.Dense(9, 7, "leaky_relu", alpha=0.2, dtype=dtype, rng=3),
        nn.Sequential(nn.Sigmoid(), nn.Tanh()),
        nn.Dense(7, 5, bias=False, dtype=dtype, rng=4),
        nn.LeakyReLU(0.05),
        nn.Dense(5, 4, dtype=dtype, rng=5),
        nn.ReLU(),
        nn.Identity(),
    )


@pytest.fixture
def saved(tmp_path):
    """A saved float32 Sequential (with non-zero biases): (path, model)."""
    model = _sequential(np.float32)
    for p in model.parameters():
        p.data += np.random.default_rng(0).normal(size=p.shape).astype(p.dtype)
    path = tmp_path / "model.npz"
    io.save(model, path)
    return path, model.eval()


def _rewrite(path, edit_header=None, arrays=None):
    """Re-create the archive at ``path`` with an edited header and/or
    replaced arrays (the header checksums are kept as they were)."""
    with np.load(path, allow_pickle=False) as npz:
        content = {key: npz[key] for key in npz.files}
    header = json.loads(content.pop("__header__").tobytes())
    if edit_header:
        edit_header(header)
    content.update(arrays or {})
    raw = np.frombuffer(json.dumps(header).encode(), np.uint8)
    os.remove(path)
    with open(path, "wb") as f:
        np.savez(f, **content, __header__=raw)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_round_trip_is_bit_identical(tmp_path, dtype, rng):
    model = _sequential(dtype)
    for p in model.parameters():
        p.data[...] = rng.normal(size=p.shape)
    path = tmp_path / "seq.npz"
    assert io.save(model, path) == os.fspath(path)
    loaded = io.load(path)

    assert repr(loaded) == repr(model)
    assert loaded.training is True   # the mode is restored as saved
    names = [name for name, _ in model.named_parameters()]
    assert [name for name, _ in loaded.named_parameters()] == names
    for (_, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert q.dtype == p.dtype and q.regularize == p.regularize
        np.testing.assert_array_equal(q.data, p.data)
    X = rng.normal(size=(13, 6)).astype(dtype)
    np.testing.assert_array_equal(loaded.eval().forward(X), model.eval().forward(X))
    assert loaded[1].p == 0.3 and loaded[2].alpha == 0.2 and loaded[5].alpha == 0.05
    assert loaded[4].bias is None


def test_top_level_exports_and_no_suffix_added(tmp_path):
    model = nn.Sequential(nn.Dense(2, 3, rng=0))
    path = tmp_path / "model"   # used as given: np.savez would append .npz
    fastnn.save(model, str(path))
    assert os.listdir(tmp_path) == ["model"]
    assert fastnn.save is io.save and fastnn.load is io.load
    np.testing.assert_array_equal(fastnn.load(path)[0].weight.data, model[0].weight.data)


def test_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "m.npz"
    io.save(nn.Sequential(nn.Dense(2, 3, rng=0)), path)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def _estimator(name):
    from fastnn import estimators
    return getattr(estimators, name)


def _blobs(rng, n=120, n_features=5, n_classes=3):
    centers = rng.normal(scale=3.0, size=(n_classes, n_features))
    y = np.arange(n) % n_classes
    return centers[y] + rng.normal(size=(n, n_features)), y


@pytest.mark.parametrize("name, kwargs", [
    ("MLPClassifier", dict(hidden_layer_sizes=(8, 6), max_iter=15, random_state=0)),
    ("MLPRegressor", dict(hidden_layer_sizes=(8,), max_iter=15, random_state=0)),
    ("LogisticRegression", dict(max_iter=30)),
])
def test_estimator_round_trip_is_bit_identical(tmp_path, rng, name, kwargs):
    cls = _estimator(name)
    X, y = _blobs(rng)
    if name == "MLPRegressor":
        target = X @ rng.normal(size=X.shape[1])
    else:   # string labels must survive the trip (saved as a str array)
        target = np.array(["ant", "bee", "cat"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a few iterations do not converge
        model = cls(**kwargs).fit(X, target)
    path = tmp_path / f"{name}.npz"
    io.save(model, path)
    loaded = io.load(path)

    assert type(loaded) is cls
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    if hasattr(model, "predict_proba"):
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
    for attr in ("coefs_", "intercepts_", "coef_", "intercept_"):
        if hasattr(model, attr):
            expected, actual = getattr(model, attr), getattr(loaded, attr)
            if isinstance(expected, list):   # one array per layer
                assert len(actual) == len(expected)
                for a, b in zip(actual, expected):
                    np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_array_equal(actual, expected)


# ---------------------------------------------------------------------------
# atomic save
# ---------------------------------------------------------------------------
def _fail_replace(src, dst):
    raise OSError("disk on fire")


def _fail_mid_write(file, **arrays):
    file.write(b"PK\x03\x04 half an archive")
    raise RuntimeError("interrupted mid-write")


@pytest.mark.parametrize("target, failure, error", [
    (os, ("replace", _fail_replace), OSError),
    (np, ("savez", _fail_mid_write), RuntimeError),
])
def test_failed_save_leaves_old_file_intact_and_no_temp_files(saved, monkeypatch, target,
                                                             failure, error):
    path, model = saved
    before = path.read_bytes()
    monkeypatch.setattr(target, *failure)
    with pytest.raises(error):
        io.save(nn.Sequential(nn.Dense(3, 3, rng=9)), path)
    monkeypatch.undo()
    assert os.listdir(path.parent) == [path.name]
    assert path.read_bytes() == before
    X = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    np.testing.assert_array_equal(io.load(path).eval().forward(X), model.forward(X))


def test_unsaveable_objects_raise_type_error_and_write_nothing(tmp_path):
    class MyLayer(nn.Identity):
        pass

    class MySequential(nn.Sequential):
        pass

    for obj in (object(), nn.Dense(2, 2, rng=0), nn.Sequential(MyLayer()),
                MySequential(nn.Dense(2, 2, rng=0))):
        with pytest.raises(TypeError, match="cannot save"):
            io.save(obj, tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------
def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "nothing.npz")


@pytest.mark.parametrize("keep", [0, 3, 30, 0.5, -22, -1])
def test_truncated_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    with pytest.raises(ModelFileError, match="model.npz") as info:
        io.load(path)
    assert isinstance(info.value, ValueError) and info.value.path == os.fspath(path)


@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_flipped_byte_in_the_weights(saved, where):
    path, _ = saved
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("0.weight.npy")
    data = bytearray(path.read_bytes())
    # the member's .npy data: after its magic string and .npy header (v1: 2-byte length)
    start = data.index(b"\x93NUMPY", member.header_offset)
    data_start = start + 10 + int.from_bytes(data[start + 8:start + 10], "little")
    data[data_start + int(where * (6 * 9 * 4 - 1))] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupted"):
        io.load(path)


def test_checksum_mismatch_is_detected(saved):
    """Tampering that keeps a valid archive (zip CRCs recomputed) is caught
    by the header's SHA-256."""
    path, model = saved
    weight = model[0].weight.data.copy()
    weight[2, 3] = np.nextafter(weight[2, 3], np.float32(np.inf))
    _rewrite(path, arrays={"0.weight": weight})
    with pytest.raises(ModelFileError, match="checksum mismatch for array '0.weight'"):
        io.load(path)


@pytest.mark.parametrize("version, message", [
    (2, "format version 2.*upgrade fastnn"), (0, "format version 0"), ("1", "format version '1'"),
])
def test_wrong_format_version(saved, version, message):
    path, _ = saved
    _rewrite(path, lambda h: h.update(format_version=version))
    with pytest.raises(ModelFileError, match=message):
        io.load(path)


def test_shape_in_header_must_match(saved):
    path, _ = saved
    _rewrite(path, lambda h: h["arrays"]["0.bias"].update(shape=[10]))
    with pytest.raises(ModelFileError, match="'0.bias'.*header says"):
        io.load(path)


def test_unknown_class_is_not_imported(saved):
    path, _ = saved
    _rewrite(path, lambda h: h.update({"class": "os.system"}))
    with pytest.raises(ModelFileError, match="unknown model class 'os.system'"):
        io.load(path)


def test_inconsistent_meta(saved):
    path, _ = saved
    _rewrite(path, lambda h: h["meta"]["layers"][0].update(n_out=10))
    with pytest.raises(ModelFileError, match="inconsistent Sequential"):
        io.load(path)
    _rewrite(path, lambda h: h["meta"]["layers"][1].update(type="Evil"))
    with pytest.raises(ModelFileError, match="unknown layer type 'Evil'"):
        io.load(path)


def test_foreign_files(tmp_path):
    cases = {
        "foreign.npz": lambda p: np.savez(p, X=np.zeros((3, 2)), y=np.arange(3)),
        "array.npy": lambda p: np.save(p, np.zeros(4)),
        "notes.txt": lambda p: open(p, "w").write("hello, not a model\n"),
        "empty.npz": lambda p: open(p, "wb").close(),
        "bad-json.npz": lambda p: np.savez(p, __header__=np.frombuffer(b"{oops", np.uint8)),
        "other-json.npz": lambda p: np.savez(
            p, __header__=np.frombuffer(b'{"format": "other"}', np.uint8)),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(ModelFileError, match=name) as info:
            io.load(path)
        assert "not a fastnn model file" in str(info.value) or "JSON" in str(info.value)


_TRIPPED = []


def _trip():
    _TRIPPED.append(True)
    return "tripped"


class _Tripwire:
    """Unpickling this calls _trip: proof that the loader unpickled."""

    def __reduce__(self):
        return (_trip, ())


def test_object_arrays_are_never_unpickled(saved):
    path, _ = saved
    evil = np.array([_Tripwire(), None], dtype=object)

    def add_evil(header):
        header["arrays"]["evil"] = {"dtype": "|O", "shape": [2], "sha256": ""}

    _rewrite(path, add_evil, arrays={"evil": evil})
    with pytest.raises(ModelFileError, match="pickle"):
        io.load(path)
    assert _TRIPPED == []


def test_extra_array_not_in_header(saved):
    path, _ = saved
    _rewrite(path, arrays={"smuggled": np.zeros(3)})
    with pytest.raises(ModelFileError, match="unexpected \\['smuggled'\\]"):
        io.load(path)
