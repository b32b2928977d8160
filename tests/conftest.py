"""Shared fixtures: the repository root on sys.path, and runners for the stage scripts: in a second process
(`run_script`, as a user runs them), or in this one (`run_inprocess`, for the many short runs that check one
input each: no interpreter and torch start-up per case)."""
import contextlib
import functools
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_script(*args, check=True, cwd=ROOT, timeout=600, env=None):
    """Run a repo script (path relative to the root) with this interpreter; returns CompletedProcess."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    e.update(env or {})
    p = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"{args[0]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _script_main(path: str):
    """A stage script's main(argv), imported from its file (a fresh module each time, like a new process)."""
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    spec = importlib.util.spec_from_file_location("stage_script_" + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_inprocess(*args, check=True):
    """`run_script` in this process: the script's main under run_main, its output captured; an exception
    that escapes run_main is printed as the traceback a user would see (exit status 1)."""
    from utils.errors import run_main
    script, argv = str(args[0]), [str(a) for a in args[1:]]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(lambda: _script_main(script)(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - what a user would see as a raw traceback
            traceback.print_exc()
            code = 1
    p = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} exited {code}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@functools.lru_cache(maxsize=None)
def prepare_module():
    """dataset/prepare.py as a module, loaded once (registered in sys.modules, where its dataclasses look)."""
    spec = importlib.util.spec_from_file_location("prepare_under_test", os.path.join(ROOT, "dataset", "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_prepare(*args, check: bool = True) -> subprocess.CompletedProcess:
    """dataset/prepare.py's main in this process, as `run_inprocess` runs a stage script."""
    from utils.errors import run_main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(lambda: prepare_module().main([str(a) for a in args]))
        except SystemExit as e:
            code = e.code
    p = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    assert code == 0 or not check, p.stderr
    return p


def prepared_cub(root, **kw) -> str:
    """A synthetic CUB-200-2011 set at `root` (dataset/synthetic.py's make_cub; `kw` are its arguments) with its
    list files, written by dataset/prepare.py cub in this process."""
    from dataset.synthetic import make_cub
    make_cub(str(root), **kw)
    run_prepare("cub", "--root", root)
    return str(root)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (tests/test_cuda.py; skipped without one); "
                                       "run them with `python -m pytest tests -m cuda -q`")


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def cub(base, tmp_path):
    """A fresh copy of the module's `base` CUB set (`base/CUB_200_2011`), which a test may damage."""
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(base / "CUB_200_2011", dst)
    return dst
