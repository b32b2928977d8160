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


def write_huge_png(path: str, width: int = 60000, height: int = 60000) -> str:
    """A PNG of a few hundred bytes whose header claims `width` x `height` pixels (RGB, 8 bits): a decompression
    bomb's header, refused before any decoding (its one IDAT holds a few zero rows)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return _write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                  + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * min(width, 64)))) + chunk(b"IEND", b""))


def write_huge_bmp(path: str, width: int = 60000, height: int = 60000) -> str:
    """A 54-byte BMP whose header claims `width` x `height` pixels (24 bits) and that holds none of them."""
    import struct

    row = (3 * width + 3) // 4 * 4
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row * height & 0xFFFFFFFF, 2835, 2835, 0, 0)
    return _write(path, b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info)
