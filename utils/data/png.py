"""Lossless PNG encoding of the pseudo masks: fpng when it is installed, OpenCV's writer otherwise.

Writing 1.28M ImageNet masks, the PNG encoder is the largest CPU share per mask after the forward
pass moves to a GPU. fpng (PyPI `fpng`, a binding of Rich Geldreich's fpng) encodes a 500 x 375 mask
~5x faster than OpenCV's writer at its defaults (zlib level 1, RLE strategy, SUB filter: what the cam
stage used before); its files are 12 % smaller to 37 % larger (docs/speed.md). Both are lossless: any
PNG reader returns the same pixels (`cv2.imread` the same array).

The binding is young, so each process checks it once: the first image it encodes is decoded again and
compared with its input. An error, an empty result or a difference switches that process to OpenCV's
writer for good, with a warning; the masks stay the same, only slower to write.
"""
from __future__ import annotations

import sys
from typing import Union

import cv2
import numpy as np

from utils.errors import UserError

try:  # optional: the fallback is OpenCV's writer
    import fpng as _fpng
except (ImportError, OSError):  # not installed, or its compiled extension does not load here
    _fpng = None

WRITERS = ("auto", "fpng", "opencv")


class _State:
    """Per process: has fpng's output been checked yet, and did it fail (then OpenCV's writer is used)."""
    checked = False
    failed = False


def available() -> bool:
    return _fpng is not None and not _State.failed


def resolve(writer: str) -> str:
    """'auto' -> 'fpng' where it is installed, else 'opencv'; 'fpng' without the package is a UserError."""
    if writer not in WRITERS:
        raise UserError(f"PNG writer {writer!r}: expected one of {', '.join(WRITERS)}")
    if writer == "auto":
        return "fpng" if available() else "opencv"
    if writer == "fpng" and _fpng is None:
        raise UserError("PNG writer fpng: the fpng package is not installed (pip install fpng), or use opencv")
    return writer


def describe(writer: str) -> str:
    """'fpng 0.1.0' / 'opencv 4.x' for logs and benchmark figures."""
    return f"fpng {_fpng.__version__}" if writer == "fpng" and _fpng is not None else f"opencv {cv2.__version__}"


def encode_opencv(bgr: np.ndarray) -> np.ndarray:
    """PNG of an H x W x 3 uint8 array in OpenCV's BGR order, by OpenCV's writer with its defaults."""
    ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("OpenCV could not encode the PNG")
    return data


def encode_rgb(rgb: np.ndarray, writer: str) -> Union[bytes, np.ndarray]:
    """PNG (a bytes-like object) of an H x W x 3 uint8 C-contiguous array in file order (R, G, B).

    `writer` as in `resolve`; 'fpng' and 'auto' use OpenCV's writer where fpng is missing or has failed in
    this process.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous H x W x 3 uint8 array, got {rgb.dtype} {rgb.shape}")
    if writer in ("auto", "fpng") and available():
        data = _fpng_checked(rgb)
        if data is not None:
            return data
    return encode_opencv(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _fpng_checked(rgb: np.ndarray):
    """fpng's PNG of `rgb`, or None once fpng has failed in this process (after a one-line warning)."""
    try:
        data = _fpng.from_ndarray(rgb)
        if not data:  # the binding signals a refused input with an empty result
            raise RuntimeError("empty result")
        if not _State.checked:
            back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if back is None or back.shape != rgb.shape or not np.array_equal(back[..., ::-1], rgb):
                raise RuntimeError("its PNG does not decode to the image it was given")
            _State.checked = True
        return data
    except Exception as e:  # noqa: BLE001 - any failure of the optional encoder means: use OpenCV's
        _State.failed = True
        print(f"warning: fpng failed ({e}); this process writes its PNGs with OpenCV instead (same pixels, "
              f"slower)", file=sys.stderr, flush=True)
        return None


# ------------------------------------------------------------------------------------ whole files
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last chunk of every PNG: length 0, type, its fixed CRC


def is_whole_png(path: str) -> bool:
    """Whether `path` starts as a PNG and ends with its IEND chunk: what a mask written whole looks like (a file
    of zero bytes, cut off or of another format is not). Reads 20 bytes, never decodes."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _SIGNATURE:
                return False
            f.seek(-len(_IEND), 2)
            return f.read(len(_IEND)) == _IEND
    except OSError:  # shorter than 12 bytes (seek before the start), unreadable
        return False


def whole_pngs(paths: list, threads: int = 16) -> list:
    """`is_whole_png` of each path, in order. Serial where a check is fast (a local disk: ~15 us a file); on
    a file system that answers one round trip at a time (> 50 us a file), `threads` checks at once."""
    import time
    from concurrent.futures import ThreadPoolExecutor
    head = min(len(paths), 64)
    start = time.perf_counter()
    out = [is_whole_png(p) for p in paths[:head]]
    if head == len(paths) or (time.perf_counter() - start) / max(head, 1) < 50e-6:
        return out + [is_whole_png(p) for p in paths[head:]]
    with ThreadPoolExecutor(threads) as pool:
        return out + list(pool.map(is_whole_png, paths[head:], chunksize=256))
