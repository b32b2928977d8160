"""One run per output folder: a second run into a folder that another run is writing would mix their files
(`args.json` of one, `checkpoint.pth` and `log.jsonl` of the other) and both would exit 0.

`hold(folder, flag)` takes an exclusive `flock` on the folder itself (an open directory; no file is added to
the outputs), without waiting; when another process holds it, one error line names that process (found by
its open descriptor of the folder in /proc). The lock goes with the process (the kernel drops it when the
process ends, however it ends), or with `release_all()` at the end of a stage (`distributed.entry`), so that
runs in one process, one after another, can use the same folder.
"""
from __future__ import annotations

import fcntl
import os

from utils.errors import UserError

_HELD: dict = {}  # real path of the folder -> its open descriptor


def hold(folder: str, flag: str) -> None:
    """Lock `folder` (which exists) for this run, or raise UserError naming the run that has it."""
    key = os.path.realpath(folder)
    if key in _HELD:
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{folder} is in use by another run ({holder(key)}): wait for it to end, or pass another "
                        f"{flag}") from None
    except OSError as e:  # a file system without locks: say so, and go on as before
        os.close(fd)
        print(f"warning: cannot lock {folder} ({e.strerror}): make sure no other run writes to it")
        return
    _HELD[key] = fd


def holder(folder: str) -> str:
    """'pid N: its command line' of another process that has `folder` open, or 'another process'."""
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == folder for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {pid}: {command}"
        except OSError:
            continue
    return "another process"


def release_all() -> None:
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()
