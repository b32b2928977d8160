"""User-facing errors: a bad path, list, image or flag stops the run with one line that says what to do.

`UserError` carries such a message; `run_main` wraps a stage's `main` so that the user sees that line
(and exit status 2) instead of a traceback from deep inside a library, a CUDA out-of-memory error included.
It also turns SIGTERM (what a cluster scheduler sends before it kills a job) into `Stopped`, raised where the
run is: `finally` blocks run (no torn temporary file is left), the training loop says where to resume, and the
exit status is 143 (128 + SIGTERM), as a job killed by the signal would have.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import sys
from typing import Callable, Optional


class UserError(Exception):
    """An input the user can fix (missing file, malformed list, corrupt image...)."""


class Stopped(Exception):
    """The run was stopped by a signal; `where` (may be empty) says at which point and how to go on."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(signum, where)
        self.signum, self.where = signum, where

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}{' ' + self.where if self.where else ''}"


def _worker_killed(message: str) -> str:
    """torch's "DataLoader worker (pid N) is killed by signal: S" (or "... (pid(s) N) exited unexpectedly") as
    one clause, or '' for other errors."""
    match = re.search(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([A-Za-z ]+)|"
                      r"exited unexpectedly)", message)
    if not match:
        return ""
    how = f"was killed by signal {match.group(2).strip()}" if match.group(2) else "ended unexpectedly"
    return f"a data-loading worker (pid {match.group(1).strip()}) {how}"


def script_name() -> str:
    """The running script as a user typed it, short: cub200-cam/train.py, utils/localize.py (`python -m`)."""
    path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "this run"
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def out_of_memory(where: str, batch_size: Optional[int] = None, checkpoint: Optional[str] = None) -> str:
    """The line for a CUDA out-of-memory error in `where` (a stage script or tool) at `batch_size`: the flags that
    lower memory, and --resume where the run has a state to go on from (`checkpoint`)."""
    at = f" at --batch_size {batch_size}" if batch_size else ""
    again = f"; training then goes on from {checkpoint} with --resume" if checkpoint else ""
    return (f"CUDA out of memory in {where}{at}: lower --batch_size, compute in half precision (--amp auto, bf16 or "
            f"fp16, not off) and keep channels-last (--channels_last, CUDA's default){again}. python -m "
            f"utils.first_hour prints the largest batch that fits this GPU")


def _stop(signum, frame) -> None:
    raise Stopped(signum)


def run_main(main: Callable[[], object]) -> None:
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Stopped as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # a write no output helper wrapped (a library's own file): still one line, and what is kept
        print(f"error: cannot write{' ' + str(e.filename) if e.filename else ''}: {e.strerror}. Free some space; "
              f"the files written so far are whole, and running again (training: with --resume) goes on from "
              f"them", file=sys.stderr, flush=True)
        sys.exit(2)
    except RuntimeError as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch's; a stage names its batch (distributed.entry)
            print(f"error: {out_of_memory(script_name())}", file=sys.stderr, flush=True)
            sys.exit(2)
        if not _worker_killed(str(e)):
            raise
        print(f"error: {_worker_killed(str(e))}: most often the out-of-memory killer (see `dmesg`); lower "
              f"--num_workers or --batch_size, or give the job more memory. Training continues with --resume from "
              f"its last saved state; mask generation, run again, skips the masks already written",
              file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, previous)
