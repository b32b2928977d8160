"""Worker processes of the post-processing pools (pseudo masks, wsol scoring): how they start and die.

Torch-free, so that a worker that only post-processes does not import it for this.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def post_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` post-processing processes that start with "spawn" (no forkserver left behind),
    one OpenCV thread each, ignore Ctrl-C and die with this process (`init_pool_worker`)."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=init_pool_worker,
                               initargs=(os.getpid(),))


def init_pool_worker(parent: int) -> None:
    """Initializer of the post-processing pools' worker processes.

    One core per worker (the pool is the parallelism). Ctrl-C is the parent's to handle: it stops the pool,
    so a worker ignores SIGINT instead of printing its own KeyboardInterrupt trace. And the worker dies with
    its parent (`die_with_parent`). `parent`: the pid of the process that started the pool (pass
    `initargs=(os.getpid(),)`; the pool must use the "spawn" start method, whose workers are its children).
    """
    import signal

    import cv2
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """If the job is killed (SIGKILL, OOM killer), Linux sends this process SIGKILL rather than leaving a
    few hundred MB behind; `parent` must be this process's parent pid (a fork or spawn child of it)."""
    import signal
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect (e.g. while this worker imported)
        os._exit(1)
