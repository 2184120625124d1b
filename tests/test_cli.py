"""The command line: ``python -m fastnn train`` / ``info``."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import cli

FAST = ["--epochs", "3", "--hidden", "16", "--threads", "1"]


def _digits():
    datasets = pytest.importorskip("sklearn.datasets",
                                   reason="the default data set comes with scikit-learn")
    X, y = datasets.load_digits(return_X_y=True)
    return X / 16.0, y


def _results(out):
    """The numbers of the final report."""
    epochs = re.search(r"^epochs: (\d+), fit time: ([\d.]+) s, throughput: ([\d,]+) samples/s$",
                       out, re.M)
    assert epochs, out
    res = {"epochs": int(epochs[1]), "fit time": float(epochs[2]),
           "throughput": float(epochs[3].replace(",", ""))}
    for name in ("train accuracy", "test accuracy"):
        match = re.search(rf"^{name}: ([\d.]+)%$", out, re.M)
        if match:
            res[name] = float(match[1])
    return res


def _check_accuracies(res, model, X, y, test_size, seed):
    """The printed accuracies are those of the saved model on the split."""
    train, test = cli._stratified_split(y, test_size, seed)
    assert res["train accuracy"] == pytest.approx(100 * model.score(X[train], y[train]), abs=0.006)
    assert res["test accuracy"] == pytest.approx(100 * model.score(X[test], y[test]), abs=0.006)


def _blobs(rng, n=150, n_features=4):
    centers = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])[:, :n_features]
    y = np.arange(n) % 3
    return centers[y] + rng.normal(size=(n, n_features)), y


# ---------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------
def test_train_digits_in_process(tmp_path, capsys):
    X, y = _digits()
    path = tmp_path / "digits.npz"
    assert cli.main(["train", *FAST, "--seed", "3", "--output", str(path)]) == 0
    out = capsys.readouterr().out
    data = re.search(r"^data: digits \(scikit-learn\): 1797 samples, 64 features, 10 classes; "
                     r"(\d+) train / (\d+) test", out, re.M)
    assert data, out
    n_train, n_test = int(data[1]), int(data[2])
    # 25% of each class, each rounded
    assert n_train + n_test == 1797 and abs(n_test - 0.25 * 1797) <= 10
    res = _results(out)
    assert res["epochs"] == 3 and res["throughput"] > 0
    assert f"model saved to {path}" in out
    model = fastnn.load(path)
    assert isinstance(model, fastnn.MLPClassifier)
    assert model.hidden_layer_sizes == (16,) and model.n_iter_ == 3
    _check_accuracies(res, model, X, y, 0.25, 3)


def test_quiet_prints_only_the_results(tmp_path, capsys):
    _digits()
    path = str(tmp_path / "m.npz")
    assert cli.main(["train", *FAST, "--quiet", "-o", path]) == 0
    quiet = capsys.readouterr()
    assert [line.split(":")[0] + ":" for line in quiet.out.splitlines()] == [
        "epochs:", "train accuracy:", "test accuracy:", "model saved to " + path + ":"]
    assert quiet.err == ""
    assert cli.main(["train", *FAST, "-o", path]) == 0
    verbose = capsys.readouterr()
    # the progress (per epoch, on stdout or stderr) comes on top of the results
    assert len((verbose.out + verbose.err).splitlines()) > len(quiet.out.splitlines()) + 3


def test_default_command_reaches_97_percent_on_digits(tmp_path, capsys, monkeypatch):
    X, y = _digits()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--quiet"]) == 0
    res = _results(capsys.readouterr().out)
    assert res["test accuracy"] >= 97.0
    _check_accuracies(res, fastnn.load(tmp_path / "fastnn-model.npz"), X, y, 0.25, 0)


def test_train_as_subprocess(tmp_path):
    _digits()
    root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "fastnn", "train", "--epochs", "2",
                           "--hidden", "32,16", "--activation", "tanh", "--solver", "sgd",
                           "--lr", "0.1", "--threads", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    res = _results(proc.stdout)
    assert res["epochs"] == 2
    assert "model saved to fastnn-model.npz" in proc.stdout
    model = fastnn.load(tmp_path / "fastnn-model.npz")
    assert model.hidden_layer_sizes == (32, 16) and model.activation == "tanh"
    assert model.solver == "sgd" and model.learning_rate_init == 0.1


def test_train_on_csv_with_header_and_string_labels(tmp_path, capsys, rng):
    X, codes = _blobs(rng)
    names = np.array(["setosa", "versicolor", "virginica"])
    path = tmp_path / "iris-like.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,species\n")
        for row, label in zip(X, names[codes]):
            f.write(",".join(repr(float(v)) for v in row) + f",{label}\n")
    out_path = tmp_path / "m.npz"
    args = ["train", "--data", str(path), "--epochs", "30", "--hidden", "8", "--batch-size",
            "16", "--lr", "0.01", "--test-size", "0.2", "--seed", "5", "-q", "-o", str(out_path)]
    assert cli.main(args) == 0
    res = _results(capsys.readouterr().out)
    model = fastnn.load(out_path)
    assert list(model.classes_) == list(names)
    _check_accuracies(res, model, X, names[codes], 0.2, 5)
    assert res["test accuracy"] >= 90   # well separated blobs


def test_train_on_npz(tmp_path, capsys, rng):
    X, y = _blobs(rng)
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y + 10)
    out_path = tmp_path / "m.npz"
    assert cli.main(["train", "--data", str(path), "--epochs", "30", "--hidden", "8",
                     "--batch-size", "16", "--lr", "0.01", "-q", "-o", str(out_path)]) == 0
    res = _results(capsys.readouterr().out)
    model = fastnn.load(out_path)
    assert list(model.classes_) == [10, 11, 12]
    _check_accuracies(res, model, X, y + 10, 0.25, 0)


def test_test_size_zero_trains_on_everything(tmp_path, capsys, rng):
    X, y = _blobs(rng, n=30)
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=y)
    assert cli.main(["train", "--data", str(path), "--test-size", "0", "--epochs", "2",
                     "-q", "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "train accuracy:" in out and "test accuracy" not in out


# ---------------------------------------------------------------------------
# data loading and splitting
# ---------------------------------------------------------------------------
def test_csv_reader(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2,0\n3.5,-4e1,1\n\n5,6,1\n")   # no header, a blank line
    X, y = cli._load_csv(str(path))
    np.testing.assert_array_equal(X, [[1, 2], [3.5, -40], [5, 6]])
    assert y.dtype == np.int64 and list(y) == [0, 1, 1]
    path.write_text("x,y,label\n1,2,0.5\n3,4,1.5\n")
    X, y = cli._load_csv(str(path))
    assert X.shape == (2, 2) and list(y) == [0.5, 1.5]
    path.write_text("0,1,target\n1,2,0\n3,4,1\n")       # numeric column names
    X, y = cli._load_csv(str(path))
    assert X.shape == (2, 2) and list(y) == [0, 1]


def test_stratified_split():
    y = np.repeat(["a", "b", "c"], [40, 20, 1])
    train, test = cli._stratified_split(y, 0.25, seed=7)
    assert sorted(np.concatenate([train, test])) == list(range(len(y)))
    assert [np.sum(y[test] == c) for c in "abc"] == [10, 5, 0]
    again = cli._stratified_split(y, 0.25, seed=7)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(cli._stratified_split(y, 0.25, seed=8)[1], test)


# ---------------------------------------------------------------------------
# errors: a message, exit code 2, no traceback
# ---------------------------------------------------------------------------
def _bad_files(tmp):
    (tmp / "ragged.csv").write_text("1,2,0\n3,1\n")
    (tmp / "words.csv").write_text("1,2,0\n3,oops,1\n")
    (tmp / "one.csv").write_text("label\n1\n2\n")
    (tmp / "single.csv").write_text("1,2,0\n3,4,0\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "data.txt").write_text("1,2,0\n")
    (tmp / "fake.npz").write_text("not an archive")
    np.savez(tmp / "noy.npz", X=np.zeros((4, 2)))
    np.savez(tmp / "flat.npz", X=np.zeros(4), y=np.zeros(4))
    np.savez(tmp / "short.npz", X=np.zeros((4, 2)), y=np.zeros(3))
    np.savez(tmp / "nan.npz", X=np.full((4, 2), np.nan), y=np.arange(4) % 2)
    with open(tmp / "single-array.npz", "wb") as f:
        np.save(f, np.zeros((4, 2)))
    np.savez(tmp / "cut.npz", X=np.zeros((4, 2)), y=np.zeros(4))
    (tmp / "cut.npz").write_bytes((tmp / "cut.npz").read_bytes()[:100])
    (tmp / "adir").mkdir()


@pytest.mark.parametrize("argv, message", [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--epochs", "many"], "--epochs"),
    (["train", "--hidden", "16,0"], "--hidden"),
    (["train", "--hidden", ""], "--hidden"),
    (["train", "--solver", "lbfgs"], "--solver"),
    (["train", "--activation", "softmax"], "--activation"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--alpha", "-1"], "--alpha"),
    (["train", "--test-size", "1"], "--test-size"),
    (["train", "--batch-size", "-3"], "--batch-size"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--data", "missing.csv"], "no such file"),
    (["train", "--data", "data.txt"], "expected a .npz or .csv"),
    (["train", "--data", "ragged.csv"], "line 2: expected 3 columns, got 2"),
    (["train", "--data", "words.csv"], "line 2: a feature value is not a number"),
    (["train", "--data", "one.csv"], "at least two columns"),
    (["train", "--data", "single.csv"], "single class"),
    (["train", "--data", "empty.csv"], "empty"),
    (["train", "--data", "fake.npz"], "cannot read it as an .npz"),
    (["train", "--data", "noy.npz"], "no array named y"),
    (["train", "--data", "single-array.npz"], "found a single array"),
    (["train", "--data", "cut.npz"], "cannot read it as an .npz"),
    (["train", "--data", "flat.npz"], "2-D"),
    (["train", "--data", "short.npz"], "one label per row"),
    (["train", "--data", "nan.npz"], "NaN"),
    (["train", "--output", "nodir/m.npz"], "does not exist"),
    (["train", "--output", "adir"], "is a directory"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, monkeypatch, capsys, argv, message):
    _bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "error" in captured.err
    assert "Traceback" not in captured.err
    assert os.listdir(tmp_path).count("fastnn-model.npz") == 0


def test_missing_scikit_learn_is_explained(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)   # import fails
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert "fastnn[sklearn]" in err and "--data" in err


def test_help_version_and_info(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--data", "--hidden", "--activation", "--epochs", "--batch-size", "--solver",
                   "--lr", "--alpha", "--threads", "--seed", "--test-size", "--output",
                   "--quiet"):
        assert option in out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastnn {fastnn.__version__}"
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "num_threads" in out and "openmp" in out
