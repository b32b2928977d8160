"""The pixel limit and the one decode of an image file from elsewhere, torch-free: the stages' images
(utils/data/images.py `read_image`), the pseudo masks a seg stage trains on and the ground-truth masks that
wsolevaluation's evaluator reads in its worker processes (utils/wsol_eval.py, which must not import torch) all
pass here. An image whose header claims more pixels than the limit (--max-pixels) is refused before it is
decoded, and a file OpenCV refuses is a `BadImage` naming it, never a `cv2.error` traceback.
"""
from __future__ import annotations

import io
from typing import Optional

import cv2
import numpy as np
from PIL import Image


class BadImage(Exception):
    """An image file that cannot be used (missing, unreadable, truncated, empty, too large)."""


# The most pixels an image may have (--max-pixels), by default Pillow's bound against decompression bombs (where it
# stops opening an image: twice its MAX_IMAGE_PIXELS, 89,478,485). A few-MB PNG
# can claim 30000 x 30000 pixels; decoded, normalised and upsampled at full size it costs a stage gigabytes.
MAX_PIXELS = 178_956_970
_limit = {"pixels": MAX_PIXELS}  # this process's limit (set_max_pixels); forked loader workers inherit it
# read_image applies its own limit (--max-pixels) from the header, which Pillow reads for it and never decodes:
# Pillow's own bound would refuse a header over twice its MAX_IMAGE_PIXELS whatever --max-pixels says
Image.MAX_IMAGE_PIXELS = None


def set_max_pixels(pixels: int) -> None:
    """The most pixels `read_image` accepts in this process (the stage's --max-pixels)."""
    _limit["pixels"] = int(pixels)


def pixel_limit() -> int:
    """This process's limit (`set_max_pixels`), for the processes it starts and for header-only readers."""
    return _limit["pixels"]


def header_size(data) -> Optional[tuple]:
    """(width, height) an image file's header (bytes or a uint8 array) claims, without decoding it; None where
    Pillow cannot tell (the decoder decides)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # a format or a damage Pillow does not read: OpenCV says whether it can
        return None


def check_pixels(path: str, data: bytes, max_pixels: Optional[int] = None) -> None:
    """Raise BadImage when the header of the image file `data` (read from `path`) claims more than `max_pixels`
    pixels (default: this process's limit)."""
    limit = _limit["pixels"] if max_pixels is None else max_pixels
    size = header_size(data)
    if size is not None and size[0] * size[1] > limit:
        raise BadImage(f"{path}: too large ({size[0]} x {size[1]} = {size[0] * size[1]:,} pixels; the limit is "
                       f"--max-pixels {limit}, raise it if the machine has the memory)")


def decode(path: str, data: np.ndarray, flags: int, max_pixels: Optional[int] = None) -> Optional[np.ndarray]:
    """`cv2.imdecode(data, flags)` of the file `path` whose bytes are `data`, once its header is within the pixel
    limit (`check_pixels`); None where OpenCV cannot decode it. Raises BadImage, also for OpenCV's own refusal."""
    check_pixels(path, data, max_pixels)
    try:
        return cv2.imdecode(data, flags)
    except cv2.error as e:  # e.g. a header beyond OpenCV's own pixel bound (2^30), under a raised --max-pixels
        raise BadImage(f"{path}: not a readable image (OpenCV: {str(e).split('error: ')[-1].strip()})") from None


def read_bytes(path: str) -> np.ndarray:
    """The bytes of the image file `path` as a uint8 array. Raises BadImage for a file that cannot be opened."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise BadImage(f"{path}: cannot open ({type(e).__name__})") from None
