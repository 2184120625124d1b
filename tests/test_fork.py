"""fastnn inside parallel Python: forked children, process pools, joblib,
threadpoolctl, neighbours with OpenMP runtimes of their own, Ctrl-C.

Every case runs in a fresh interpreter with a timeout, so that a hang (the
failure mode of a forked OpenMP runtime) fails its test instead of stalling
the suite.  The parent always does threaded work first: that is what starts
the OpenMP team a child inherits.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastnn

TESTS = Path(__file__).resolve().parent
TIMEOUT = 240

needs_openmp = pytest.mark.skipif(not fastnn.build_info()["openmp"], reason="serial build")

# Every public kernel (tests/test_threads.py's calls, on shapes well above
# the parallel thresholds) and an MLPClassifier fit, reduced to one digest
# of their exact bits, so that a child's results can be compared with the
# parent's.
PRELUDE = f"""
import hashlib, json, os, sys, warnings
sys.path.insert(0, {str(TESTS)!r})
import numpy as np
import fastnn
from test_threads import _kernel_calls, _as_bytes

def digest(seed=0):
    h = hashlib.sha256()
    for dtype in (np.float32, np.float64):
        calls = _kernel_calls(np.random.default_rng(seed), dtype)
        for name in sorted(calls):
            for b in _as_bytes(calls[name]()):
                h.update(b or b"")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 40)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # ConvergenceWarning
        model = fastnn.MLPClassifier((64,), max_iter=3, random_state=seed).fit(X, y)
    for a in model.coefs_ + [model.predict_proba(X)]:
        h.update(a.tobytes())
    return h.hexdigest()

def report(**values):
    values["threads"] = fastnn.get_num_threads()
    values["team"] = fastnn._kernels.openmp_team_size()
    values["serial_after_fork"] = fastnn._config._SERIAL_AFTER_FORK
    print(json.dumps(values))
"""


def _env(**changes):
    """This very fastnn (in-tree or installed), whatever the cwd holds, with
    ``changes`` to the environment (None: unset)."""
    package_root = os.path.dirname(os.path.dirname(fastnn.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def run_script(tmp_path, body, timeout=TIMEOUT, **env):
    """Run PRELUDE + ``body`` as a script (a file, so that spawn and
    forkserver children can import its functions); its last stdout line is
    JSON."""
    script = tmp_path / "case.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=timeout, env=_env(**env), cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for {timeout} s:\n{e.stderr}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


FORK_CASES = {
    "os.fork": """
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, json.dumps([digest(), fastnn.get_num_threads(),
                                        fastnn._kernels.openmp_team_size()]).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child, child_threads, child_team = json.loads(f.read())
        os.waitpid(pid, 0)
        report(parent=parent, children=[child], child_threads=[child_threads],
               child_team=[child_team])
        """,
    "fork Process": """
        import multiprocessing as mp
        def work(queue):
            queue.put([digest(), fastnn.get_num_threads(), fastnn._kernels.openmp_team_size()])
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        p = ctx.Process(target=work, args=(queue,))
        p.start()
        child, child_threads, child_team = queue.get()
        p.join()
        assert p.exitcode == 0
        report(parent=parent, children=[child], child_threads=[child_threads],
               child_team=[child_team])
        """,
    "fork Pool(2)": """
        import multiprocessing as mp
        def work(seed):
            return [digest(), fastnn.get_num_threads(), fastnn._kernels.openmp_team_size()]
        with mp.get_context("fork").Pool(2) as pool:
            out = pool.map(work, [0, 1])
        report(parent=parent, children=[o[0] for o in out],
               child_threads=[o[1] for o in out], child_team=[o[2] for o in out])
        """,
}


@needs_openmp
@pytest.mark.parametrize("init_at_fork", [None, "FALSE"])
@pytest.mark.parametrize("case", sorted(FORK_CASES))
def test_forked_children_run_every_kernel_and_fit(tmp_path, case, init_at_fork):
    """After threaded kernels and a fit in the parent, forked children run
    them all at once, with the parent's results: on libomp with the
    parent's team; on one thread on libgomp, or on libomp whose fork
    handlers KMP_INIT_AT_FORK=FALSE (set by scikit-learn and joblib at
    import, inherited by their children) turned off."""
    out = run_script(tmp_path, """
        fastnn.set_num_threads(2)
        assert fastnn._kernels.openmp_team_size() == 2
        parent = digest()
        """ + FORK_CASES[case], KMP_INIT_AT_FORK=init_at_fork)
    assert out["children"] == [out["parent"]] * len(out["children"])
    gomp = os.path.basename(fastnn.build_info()["openmp_runtime"] or "").startswith("libgomp")
    assert out["serial_after_fork"] == (gomp or init_at_fork == "FALSE")
    expected = 1 if out["serial_after_fork"] else 2
    assert out["child_threads"] == out["child_team"] == [expected] * len(out["children"])


@needs_openmp
def test_forked_child_thread_requests(tmp_path):
    """In a forked child: libomp grants a larger team silently; libgomp keeps
    one thread and says why."""
    out = run_script(tmp_path, """
        fastnn.set_num_threads(2)
        digest()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    fastnn.set_num_threads(2)
                    with fastnn.num_threads(2):
                        team = fastnn._kernels.openmp_team_size()
                gomp = fastnn._kernels.forked_serial()
                messages = [str(w.message) for w in caught]
                if gomp:
                    ok = team == 1 and len(messages) == 2 and all(
                        "one thread in this forked child" in m for m in messages)
                else:
                    ok = team == 2 and not messages
                code = 0 if ok else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        report(status=os.waitstatus_to_exitcode(status))
        """)
    assert out["status"] == 0


@needs_openmp
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_pools(tmp_path, method):
    out = run_script(tmp_path, f"""
        import multiprocessing as mp
        def work(seed):
            return digest(seed)
        if __name__ == "__main__":
            parent = [digest(0), digest(1)]
            with mp.get_context({method!r}).Pool(2) as pool:
                children = pool.map(work, [0, 1])
            report(same=children == parent)
        """)
    assert out["same"]


# ---------------------------------------------------------------------------
# threadpoolctl: one thread budget
# ---------------------------------------------------------------------------
@needs_openmp
@pytest.mark.parametrize("user_api", [None, "openmp"])
def test_threadpool_limits_reach_the_kernels_and_restore(tmp_path, user_api):
    out = run_script(tmp_path, f"""
        from threadpoolctl import threadpool_info, threadpool_limits
        fastnn.set_num_threads(2)
        before = fastnn._kernels.openmp_team_size()
        with threadpool_limits(1, user_api={user_api!r}):
            inside = [fastnn.get_num_threads(), fastnn._kernels.openmp_team_size()]
            inside_digest = digest()
        after = [fastnn.get_num_threads(), fastnn._kernels.openmp_team_size()]
        with threadpool_limits(1, user_api="blas"):      # BLAS only: not fastnn's team
            blas_only = fastnn.get_num_threads()
        mine = [lib for lib in threadpool_info() if lib["internal_api"] == "fastnn"]
        report(before=before, inside=inside, after=after, blas_only=blas_only, mine=mine,
               same=inside_digest == digest(), runtime=fastnn.build_info()["openmp_runtime"],
               module=fastnn._kernels.compiled.__file__)
        """)
    assert out["before"] == 2
    assert out["inside"] == [1, 1]
    assert out["after"] == [2, 2]
    assert out["blas_only"] == 2
    assert out["same"]                    # one thread: the very same bits
    [mine] = out["mine"]
    assert mine["user_api"] == "openmp" and mine["num_threads"] == 2
    assert mine["version"] == fastnn.__version__
    assert os.path.samefile(mine["filepath"], out["module"])
    assert mine["openmp_runtime"] == out["runtime"]


@needs_openmp
def test_threadpool_limits_follow_set_num_threads(tmp_path):
    """The budget is one number: the last of set_num_threads, num_threads
    and threadpool_limits wins, and each context restores what it found."""
    out = run_script(tmp_path, """
        from threadpoolctl import threadpool_info, threadpool_limits
        def mine():
            return [lib["num_threads"] for lib in threadpool_info()
                    if lib["internal_api"] == "fastnn"]
        fastnn.set_num_threads(3)
        seen = [mine()]
        with threadpool_limits(2):
            with fastnn.num_threads(1):
                seen.append(mine())
            seen.append(mine())
        seen.append(mine())
        report(seen=seen)
        """)
    assert out["seen"] == [[3], [1], [2], [3]]


# ---------------------------------------------------------------------------
# joblib and scikit-learn's parallel tools
# ---------------------------------------------------------------------------
@needs_openmp
def test_grid_search_with_loky_workers(tmp_path):
    """GridSearchCV(n_jobs=2): each loky worker's fastnn takes its share of
    the cores (loky's OMP_NUM_THREADS), and the search finds what n_jobs=1
    finds."""
    pytest.importorskip("sklearn")
    out = run_script(tmp_path, """
        from joblib import Parallel, delayed
        from sklearn.datasets import load_digits
        from sklearn.model_selection import GridSearchCV, cross_val_score
        X, y = load_digits(return_X_y=True)
        grid = {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(32,), (64,)]}
        est = fastnn.MLPClassifier(max_iter=5, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            serial = GridSearchCV(est, grid, cv=3, n_jobs=1).fit(X, y)
            parallel = GridSearchCV(est, grid, cv=3, n_jobs=2).fit(X, y)
            scores = [list(cross_val_score(est, X, y, cv=3, n_jobs=n)) for n in (1, 2)]
        workers = Parallel(n_jobs=2)(delayed(fastnn.get_num_threads)() for _ in range(4))
        report(serial=list(serial.cv_results_["mean_test_score"]),
               parallel=list(parallel.cv_results_["mean_test_score"]),
               scores=scores, workers=workers, cores=len(os.sched_getaffinity(0)))
        """)
    assert out["serial"] == out["parallel"]
    assert out["scores"][0] == out["scores"][1]
    # loky's share, unless the user set a count (theirs then, by precedence)
    share = os.environ.get("FASTNN_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    share = int(share.split(",")[0]) if share else max(1, out["cores"] // 2)
    assert out["workers"] == [share] * 4


@needs_openmp
def test_joblib_threading_fits_match_serial(tmp_path):
    out = run_script(tmp_path, """
        from joblib import Parallel, delayed
        fastnn.set_num_threads(2)
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2000, 30)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        def fit(seed):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = fastnn.MLPClassifier((32,), max_iter=3, random_state=seed).fit(X, y)
            return [a.tobytes().hex() for a in m.coefs_]
        serial = [fit(s) for s in range(4)]
        threaded = Parallel(n_jobs=4, backend="threading")(delayed(fit)(s) for s in range(4))
        report(same=serial == threaded)
        """)
    assert out["same"]


# ---------------------------------------------------------------------------
# neighbours: PyTorch and scikit-learn bring OpenMP runtimes of their own
# ---------------------------------------------------------------------------
@needs_openmp
@pytest.mark.parametrize("order", ["neighbours first", "fastnn first"])
def test_with_torch_and_sklearn_in_one_process_then_fork(tmp_path, order):
    pytest.importorskip("sklearn")
    has_torch = subprocess.run([sys.executable, "-c", "import torch"],
                               capture_output=True).returncode == 0
    imports = "import sklearn.neural_network" + ("; import torch" if has_torch else "")
    out = run_script(tmp_path, f"""
        {imports if order == "neighbours first" else ""}
        import fastnn as _again
        {imports if order == "fastnn first" else ""}
        from threadpoolctl import threadpool_info, threadpool_limits
        from sklearn.neural_network import MLPClassifier as SkMLP

        def everyone(child=False):
            rng = np.random.default_rng(0)
            X = rng.normal(size=(2000, 30)).astype(np.float32)
            y = (X[:, 0] > 0).astype(int)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sk = SkMLP((32,), max_iter=3, random_state=0).fit(X, y).score(X, y)
            out = {{"fastnn": digest(), "sklearn": sk}}
            if "torch" in sys.modules:
                import torch
                if child:
                    # PyTorch's own libgomp hangs in a forked child of a
                    # threaded parent (measured with torch alone); its
                    # DataLoader workers do this too
                    torch.set_num_threads(1)
                torch.manual_seed(0)
                net = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(),
                                          torch.nn.Linear(64, 2))
                opt = torch.optim.SGD(net.parameters(), lr=0.1)
                Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
                for _ in range(20):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(net(Xt), yt)
                    loss.backward()
                    opt.step()
                out["torch"] = loss.item()
            return out

        fastnn.set_num_threads(2)
        parent = everyone()
        with threadpool_limits(1):
            limited = fastnn._kernels.openmp_team_size()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, json.dumps(everyone(child=True)).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            child = json.loads(f.read())
        os.waitpid(pid, 0)
        runtimes = [lib["filepath"] for lib in threadpool_info() if lib["user_api"] == "openmp"]
        report(parent=parent, child=child, limited=limited, runtimes=runtimes,
               mine=fastnn.build_info()["openmp_runtime"])
        """)
    assert out["child"]["fastnn"] == out["parent"]["fastnn"]
    assert out["child"]["sklearn"] == out["parent"]["sklearn"]
    if "torch" in out["parent"]:
        assert out["child"]["torch"] == pytest.approx(out["parent"]["torch"], rel=1e-5)
    assert out["limited"] == 1
    assert out["mine"] in out["runtimes"]


# ---------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------
def test_sigint_during_fit_keeps_a_usable_model(tmp_path):
    """A real SIGINT, sent from outside while fit runs: fit returns the model
    trained so far with scikit-learn's warning; it predicts, saves, loads."""
    script = tmp_path / "interrupt.py"
    script.write_text(PRELUDE + textwrap.dedent(f"""
        rng = np.random.default_rng(0)
        X = rng.normal(size=(20000, 50)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        def started(model, logs):
            if logs["epoch"] == 1:
                print("training", flush=True)
        model = fastnn.MLPClassifier((128,), max_iter=100000, tol=0, n_iter_no_change=10**9,
                                     random_state=0, callbacks=[started])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(X, y)
        path = os.path.join({str(tmp_path)!r}, "model.fastnn")
        model.save(path)
        loaded = fastnn.load(path)
        report(messages=[str(w.message) for w in caught], n_iter=model.n_iter_,
               curve=len(model.loss_curve_), accuracy=model.score(X, y),
               finite=all(np.isfinite(a).all() for a in model.coefs_),
               same=bool((loaded.predict_proba(X) == model.predict_proba(X)).all()))
        """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
    try:
        assert proc.stdout.readline().strip() == "training", proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert "Training interrupted by user." in out["messages"]
    assert 1 <= out["n_iter"] == out["curve"] < 100000
    assert out["finite"] and out["same"]
    assert out["accuracy"] > 0.9
