"""Files that look like images and are not what a loader expects, for the tests of the loaders' error paths:
a grayscale JPEG, a CMYK JPEG (as some real CUB and ImageNet files are), a JPEG cut short (an interrupted
download) and random bytes named like an image. Each returns its path. The scenes are drawn by
dataset/synthetic.py's `render_scene`, from a stream of their own keyed by (seed, size)."""
from __future__ import annotations

import cv2
import numpy as np

from dataset.synthetic import JPEG_QUALITY, render_scene


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A synthetic photo (BGR uint8, h x w x 3) with one object of one of the first four classes."""
    rng = np.random.default_rng([int(seed), h, w])
    img, _ = render_scene(rng, h, w, [int(rng.integers(0, 4))])
    return img


def _jpeg_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("cannot encode the JPEG")
    return buf.tobytes()


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_grayscale_jpeg(path: str, h: int = 120, w: int = 160, seed: int = 0) -> str:
    """A valid 1-channel (grayscale) JPEG scene: loaders must convert it to 3 channels."""
    return _write(path, _jpeg_bytes(cv2.cvtColor(_scene(h, w, seed), cv2.COLOR_BGR2GRAY)))


def write_cmyk_jpeg(path: str, h: int = 120, w: int = 160, seed: int = 0) -> str:
    """A valid CMYK JPEG scene. Needs Pillow: OpenCV cannot encode CMYK."""
    from PIL import Image  # only here: the callers skip the CMYK case without Pillow

    rgb = cv2.cvtColor(_scene(h, w, seed), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG", quality=JPEG_QUALITY)
    return path


def write_truncated_jpeg(path: str, h: int = 120, w: int = 160, seed: int = 0, keep: float = 0.5) -> str:
    """A valid JPEG cut to `keep` of its bytes (at least 64: the header stays whole), so no end marker."""
    data = _jpeg_bytes(_scene(h, w, seed))
    return _write(path, data[:max(64, int(len(data) * keep))])


def write_corrupt_file(path: str, size: int = 4096, seed: int = 0) -> str:
    """Random bytes (named whatever `path` says, e.g. .jpg): not an image in any format."""
    data = bytearray(np.random.default_rng([int(seed), size]).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[0] = 0x00  # never a JPEG/PNG/BMP magic number by chance
    return _write(path, bytes(data))
