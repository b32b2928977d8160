"""Worker processes: those of the post-processing pools (pseudo masks, wsol scoring), how they start and
die, and the settings of the DataLoaders' workers (one OpenCV thread, freed memory kept).

Torch-free, as are the modules of the tasks the pools run (`utils.engine.masks.write_masks`,
`utils.wsol_eval.score_image`): a pool worker imports numpy, OpenCV and fpng, not torch.
"""
from __future__ import annotations

import os
import sys
from typing import Optional
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import SpawnContext, SpawnProcess


def post_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` post-processing processes that start with "spawn" (no forkserver left behind)
    without importing this process's main script (`_LeanSpawnProcess`), one OpenCV thread each, ignore Ctrl-C
    and die with this process (`init_pool_worker`), with this process's pixel limit (--max-pixels: the ground-truth
    masks that wsolevaluation's scoring reads there). Its tasks must be functions of importable modules."""
    from utils.data.pixels import pixel_limit
    return ProcessPoolExecutor(workers, mp_context=_LeanSpawnContext(), initializer=init_pool_worker,
                               initargs=(os.getpid(), pixel_limit()))


class _LeanSpawnProcess(SpawnProcess):
    """A spawned process that does not run the parent's main script first.

    A spawned child imports the parent's `__main__` (a stage's test.py, and through it torch: ~3 s of CPU and
    ~250 MB per worker) so that functions defined there can be unpickled. Pool tasks here are functions of
    torch-free modules, so the main module is hidden while the child's start-up data is taken (multiprocessing
    reads `__main__.__spec__` and `__file__` for it) and restored at once.
    """

    @staticmethod
    def _Popen(process_obj):
        main = sys.modules["__main__"]
        saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
        try:
            return SpawnProcess._Popen(process_obj)
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


class _LeanSpawnContext(SpawnContext):
    Process = _LeanSpawnProcess


def init_pool_worker(parent: int, max_pixels: Optional[int] = None) -> None:
    """Initializer of the post-processing pools' worker processes.

    One core per worker (the pool is the parallelism). Ctrl-C is the parent's to handle: it stops the pool,
    so a worker ignores SIGINT instead of printing its own KeyboardInterrupt trace. And the worker dies with
    its parent (`die_with_parent`). `parent`: the pid of the process that started the pool (pass
    `initargs=(os.getpid(),)`; the pool must use the "spawn" start method, whose workers are its children).
    `max_pixels`: the parent's pixel limit, which a spawned worker does not inherit.
    """
    import signal

    import cv2
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    if max_pixels is not None:
        from utils.data.pixels import set_max_pixels
        set_max_pixels(max_pixels)


def loader_threads() -> None:
    """One OpenCV thread in this process, and so in the DataLoader workers it forks: call it before a loader
    starts its workers. The workers are the parallelism; OpenCV's own threads would only add their hand-offs
    to each resize and look-up (CPU time, while a GPU node's cores are all busy). A forked worker must not
    set it itself: OpenCV would wait for the parent's pool threads, which the child does not have (a hang)."""
    import cv2
    cv2.setNumThreads(1)


def init_loader_worker(worker_id: int) -> None:
    """`worker_init_fn` of the DataLoaders: a malloc that keeps the memory it frees (`keep_freed_memory`);
    ~0.6 ms of CPU less per image at batch 4 to 128 (docs/speed.md), the same tensors. SIGTERM ends a
    worker quietly (a forked worker would inherit `errors.run_main`'s handler; the main process reports)."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    keep_freed_memory()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make this process's malloc keep the memory it frees instead of handing it back to the kernel.

    A loader worker holds a batch's transformed images (786 KB each) until it collates them, then frees
    them all; glibc then trims the heap and the next batch faults every page in again (~190 faults per
    image, ~3 us each on a virtual machine: ~0.6 ms of CPU per image). With blocks up to 32 MB taken from
    the heap and no trimming, the next batch reuses the same pages. The cost: the process keeps its peak
    heap (one batch). glibc only: elsewhere nothing changes. Returns whether both settings took effect.
    """
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to load this way, or not glibc's
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) & bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


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
