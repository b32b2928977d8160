"""One run per output folder: a second run into a folder that another run is writing would mix their files
(`args.json` of one, `checkpoint.pth` and `log.jsonl` of the other) and both would exit 0.

`hold(folder, flag)` takes an exclusive `flock` on `<folder>/.lock` (without waiting) and writes this process's
pid and command line into it; when another process holds it, one error line names that process. The lock goes
with the process (the kernel drops it when the process ends, however it ends), or with `release_all()` at the end
of a stage (`distributed.entry`), so that runs in one process, one after another, can use the same folder.
"""
from __future__ import annotations

import fcntl
import os
import sys

from utils.errors import UserError

_HELD: dict = {}  # folder -> open lock file


def hold(folder: str, flag: str) -> None:
    """Lock `folder` (which exists) for this run, or raise UserError naming the run that has it."""
    key = os.path.realpath(folder)
    if key in _HELD:
        return
    path = os.path.join(folder, ".lock")
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{folder} is in use by another run ({other}): wait for it to end, or pass another "
                        f"{flag}") from None
    except OSError as e:  # a file system without locks: say so, and go on as before
        print(f"warning: cannot lock {path} ({e.strerror}): make sure no other run writes to {folder}")
        f.close()
        return
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}: {' '.join(sys.argv)}\n")
    f.flush()
    _HELD[key] = f


def release_all() -> None:
    for f in _HELD.values():
        f.close()
    _HELD.clear()
