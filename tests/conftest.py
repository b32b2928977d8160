"""Shared fixtures: the repository root on sys.path, and a runner for the stage scripts."""
import os
import subprocess
import sys

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


@pytest.fixture
def root():
    return ROOT
