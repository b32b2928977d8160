"""Where outputs go, and how they are written.

Every output path is taken inside an output folder the user named (`--savepath`, `--maskpath`,
`--scoremap_root`, ...). `Folder` resolves paths inside it and refuses to write through a link that leads out
of it: a class folder of the masks linked elsewhere, `vis -> /somewhere` among the outputs. The folder itself
may be a link (a scratch disk mounted under `out/`); only what lies inside it is held to it.

Every file is written whole or not at all: into a temporary beside it, then renamed over the path
(`write_atomic`). A crash, a SIGKILL or a full disk never leaves a torn output; a full disk stops the run
with one line (`write_error`) and the file's earlier version, if any, is kept. The temporaries a killed
process left are named `<file>.<pid>.tmp` (shortened where that is too long a name);
`remove_temporaries` clears those of processes no longer alive.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
from typing import BinaryIO, Callable, Iterable

from utils.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"\.(\d+)\.tmp$")
_NAME_MAX = 255  # bytes in one file name: ext4, XFS, btrfs, APFS (os.pathconf needs the folder to exist)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Folder:
    """The output folder `root`, named by `flag` in messages."""

    def __init__(self, root: str, flag: str):
        self.root, self.flag = root, flag

    def check_folder(self, sub: str = "") -> str:
        """`root/sub`, after checking that no link on the way leads out of `root`."""
        path = os.path.join(self.root, sub) if sub else self.root
        if not sub:
            return path
        real_root = os.path.realpath(self.root)
        if _inside(os.path.realpath(path), real_root):
            return path
        # name the link that leads out: the first component whose real path leaves the folder
        walked = self.root
        for part in os.path.normpath(sub).split(os.sep):
            walked = os.path.join(walked, part)
            if not _inside(os.path.realpath(walked), real_root):
                if os.path.islink(walked):
                    raise UserError(f"{walked} is a link to {os.path.realpath(walked)}, outside {self.flag} "
                                    f"{self.root}: outputs are written only inside their folder; remove the link "
                                    f"or give another {self.flag}")
                break
        raise UserError(f"{path} leads outside {self.flag} {self.root} (to {os.path.realpath(path)}): outputs are "
                        f"written only inside their folder; give another {self.flag}")

    def check_folders(self, subs: Iterable[str]) -> None:
        """`check_folder` of each distinct folder in `subs` (e.g. the class folders of 1.28M masks: 1,000 checks)."""
        for sub in sorted(set(subs)):
            self.check_folder(sub)

    def path(self, *parts: str) -> str:
        """`root/parts...` of a file, its folder checked (`check_folder`) and created."""
        rel = os.path.join(*parts)
        folder = self.check_folder(os.path.dirname(rel))
        os.makedirs(folder, exist_ok=True)
        return os.path.join(self.root, rel)


def write_error(path: str, e: OSError) -> UserError:
    """The one line of an output that could not be written (full disk, quota, permissions)."""
    reason = e.strerror or type(e).__name__
    if e.errno in _FULL:
        return UserError(f"cannot write {path}: {reason}. Free some space (or pick another output folder); the "
                         f"files written so far are whole, and running again (training: with --resume) goes on "
                         f"from them")
    return UserError(f"cannot write {path}: {reason}")


def write_atomic(path: str, fill: Callable[[BinaryIO], None]) -> None:
    """`fill(f)` writes the file into `<path>.<pid>.tmp` (a temporary of this process: two workers never share
    one), which then replaces `path`. On any failure the temporary is removed and `path` is left as it was;
    an OSError (a full disk) becomes `write_error`'s one line."""
    folder = os.path.dirname(path)
    tmp = temporary_path(path)
    try:
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def name_too_long(path: str) -> bool:
    """Is the file name of `path` longer than a file name may be (255 bytes on ext4, XFS, btrfs, APFS)?"""
    return len(os.fsencode(os.path.basename(path))) > _NAME_MAX


def temporary_path(path: str) -> str:
    """`<path>.<pid>.tmp`, or, where that name would be longer than a file name may be (255 bytes on ext4, XFS,
    APFS: a legal 255-byte image name's mask or score map), `<folder>/.<hash of the name>.<pid>.tmp`, which is
    short and still this process's own (`remove_temporaries` finds both)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    if not name_too_long(tmp):
        return tmp
    digest = hashlib.sha1(os.fsencode(os.path.basename(path))).hexdigest()[:16]
    return os.path.join(os.path.dirname(path), f".{digest}.{os.getpid()}.tmp")


def write_text(path: str, text: str) -> None:
    """A text file (UTF-8, '\\n' line ends), written atomically."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_image(path: str, image, params: tuple = ()) -> None:
    """`image` (OpenCV's BGR or one channel) encoded by the extension of `path`, written atomically."""
    import cv2
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png", image, list(params))
    if not ok:
        raise UserError(f"cannot encode {path} (OpenCV's encoder for {os.path.splitext(path)[1]!r} failed)")
    write_atomic(path, lambda f: f.write(data.tobytes()))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.search(name))


def remove_temporaries(folder: str, names: Iterable[str]) -> int:
    """Remove the `<file>.<pid>.tmp` among `names` (entries of `folder`) whose process is gone (a run killed
    while it wrote them); returns how many."""
    removed = 0
    for name in names:
        match = _TEMPORARY.search(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            _remove(os.path.join(folder, name))
            removed += 1
    return removed
