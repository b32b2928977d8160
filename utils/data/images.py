"""Images and the torch Datasets of every stage: robust image reading (truncated JPEGs, FIFOs, CMYK, images too
large to decode), the pseudo masks' files, and `ImageSet`, which turns the samples of a list (utils/data/lists.py) into
transformed tensors.
"""
from __future__ import annotations

import os
import stat
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.lists import SampleTable
# the pixel limit and the decode live in a torch-free module (wsolevaluation's workers read masks with them)
from utils.data.pixels import MAX_PIXELS, BadImage, check_pixels, decode, read_bytes, set_max_pixels  # noqa: F401


# image files OpenCV decodes (GIF: its first frame): what class folders and localize.py's folders may hold
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


# ----------------------------------------------------------------------------------------- images
# Newer OpenCV (IMREAD_COLOR_RGB) decodes to RGB itself: the pixels of BGR + cvtColor (tests/test_transforms.py),
# ~0.1 ms less per image; older versions decode to BGR and convert afterwards
_DECODE = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


def read_image(path: str, max_pixels: Optional[int] = None) -> np.ndarray:
    """RGB uint8 H x W x 3 image; grayscale and CMYK files are converted. Raises BadImage, also for an image of
    more than `max_pixels` pixels (default: this process's `set_max_pixels`), refused from its header."""
    try:
        # a FIFO or device named x.jpg would block open() for ever: check what it is before opening it
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadImage(f"{path}: not a regular file")
        data = read_bytes(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise BadImage(f"{path}: cannot open ({type(e).__name__})") from None
    if data.size == 0:
        raise BadImage(f"{path}: empty file")
    if data[:2].tobytes() == b"\xff\xd8" and jpeg_ends(data) is False:
        # a JPEG cut short decodes "successfully" with a grey bottom; its end-of-image marker is missing
        raise BadImage(f"{path}: truncated JPEG (no end-of-image marker)")
    image = decode(path, data, _DECODE, max_pixels)
    if image is None:
        raise BadImage(f"{path}: not a readable image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadImage(f"{path}: zero-size image")
    return image if _DECODE != cv2.IMREAD_COLOR else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def jpeg_ends(data: np.ndarray) -> Optional[bool]:
    """Does a JPEG's marker structure reach its end-of-image marker? Walks the segments from SOI (skipping
    each by its length, so markers inside EXIF thumbnails do not count) and the entropy-coded data after
    every SOS (progressive files have several) to the next real marker. Bytes after EOI are allowed, as
    decoders allow them. None where the structure is not one this walk knows (the decoder decides)."""
    n = len(data)
    ffs = np.flatnonzero(data[:-1] == 0xFF)
    follow = data[ffs + 1]
    # real markers in entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart marker or a fill byte
    markers = ffs[(follow != 0x00) & (follow != 0xFF) & ((follow < 0xD0) | (follow > 0xD7))]
    i = 2
    while i + 1 < n:
        if data[i] != 0xFF:
            return None
        marker = int(data[i + 1])
        if marker == 0xFF:          # fill byte before a marker
            i += 1
        elif marker == 0xD9:        # EOI
            return True
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
        elif i + 3 >= n:
            return False
        else:
            end = i + 2 + (int(data[i + 2]) << 8 | int(data[i + 3]))
            if marker != 0xDA:      # a segment: skip its payload
                i = end
                continue
            k = np.searchsorted(markers, end)  # SOS: the scan's data runs to the next real marker
            if k == len(markers):
                return False
            i = int(markers[k])
    return False


def mask_name(name: str) -> str:
    """Relative path of a sample's pseudo mask: the list name with a .png extension."""
    return os.path.splitext(name)[0] + ".png"


def read_pseudo_mask(path: str) -> np.ndarray:
    """Pseudo mask as stored, uint8 H x W x 3 (ch0 = CAM, ch1 = Gaussian prior); [0, 1] floats come from
    `utils.method.seg_target.pseudo_mask_floats`, after the transforms have resized and cropped it: a float copy
    at full size costs 12 bytes a pixel. Raises BadImage."""
    if not os.path.isfile(path):
        raise BadImage(f"{path}: pseudo mask missing (run the cam stage's test.py, or check --maskpath)")
    mask = decode(path, read_bytes(path), cv2.IMREAD_COLOR)  # a huge header is refused, not decoded
    if mask is None:
        raise BadImage(f"{path}: unreadable pseudo mask")
    return mask


# --------------------------------------------------------------------------------------- datasets
class ImageSet(Dataset):
    """Images of a list through a transform; optionally their pseudo masks (seg training).

    `samples`: a `SampleTable` (or a list of `Sample`s); `read(path)` decodes an image (`read_image`).
    `transform(image, mask, seed)` returns the transformed arrays. A bad file does not raise inside a
    worker (where the message would be buried in a re-raised traceback): the item comes back as
    `{"bad": name, "reason": ...}` and the caller decides (stop, or skip and count).
    """

    def __init__(self, samples: SampleTable | list, transform: Callable, maskpath: Optional[str] = None,
                 seed: int = 0, read: Callable[[str], np.ndarray] = read_image):
        self.samples, self.transform, self.maskpath, self.seed, self.read = samples, transform, maskpath, seed, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)  # training keys carry the epoch
        s = self.samples[index]
        try:
            image = self.read(s.path)
            mask = None
            if self.maskpath is not None:
                mask = read_pseudo_mask(os.path.join(self.maskpath, mask_name(s.name)))
                if mask.shape[:2] != image.shape[:2]:
                    raise BadImage(f"{os.path.join(self.maskpath, mask_name(s.name))}: pseudo mask is "
                                   f"{mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")
        except BadImage as e:
            return {"bad": s.name, "reason": str(e)}
        # per-sample seed: augmentation does not depend on worker count or on where a resumed run starts
        seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2 ** 32)
        image_t, mask_t = self.transform(image, mask, seed)
        item = {"image": image_t, "label": s.label, "index": index,
                "size": torch.tensor(image.shape[:2])}  # original H, W
        if mask_t is not None:
            item["mask"] = mask_t
        return item


def collate(items: list) -> dict:
    """Batch the good items; the bad ones are listed under "bad" as (name, reason)."""
    good = [it for it in items if "bad" not in it]
    batch = {"bad": [(it["bad"], it["reason"]) for it in items if "bad" in it]}
    if good:
        for key in good[0]:
            batch[key] = torch.utils.data.default_collate([it[key] for it in good])
    return batch
