"""Image transforms, in the authors' order: normalise the uint8 image to float FIRST, then resize.

That order (albumentations `Normalize` before `Resize`, as in the original code) changes the maps by
several grey levels compared with resizing the uint8 image, so it is kept everywhere (docs/method.md
§4, §6). Random transforms are seeded per sample (see `ImageSet`), which makes a run independent
of the number of loader workers and lets `--resume` reproduce the uninterrupted run.

Speed (every image of every stage passes here; 1.28M per ImageNet pass): albumentations' Normalize acts
on each uint8 value alone (its output is a table of 256 floats per channel), so any computation that gives
that table's 768 floats gives its output. Here: float32 `(v - mean) * scale` per channel with fixed float32
constants (`_AFFINE`, found by the tests), in three numpy passes over the image seen as rows of
W x 3 values (0.3 ms for 500 x 375, against 0.5 for OpenCV's look-up with a per-channel table and 1 for
Normalize itself). The inference transforms (resize, centre crop, no mask) call `cv2.resize` directly, as
A.Resize does, without `A.Compose`'s per-call cost, and without importing albumentations at all: only
the pipelines that need it (`Pipeline`: training, the seg stage's masks, the shorter-side classifier
evaluation) do. The tensors are bit for bit those of the plain albumentations
pipeline (tests/test_transforms.py).

Memory: an image over `LARGE_IMAGE` pixels is not normalised at full size (12 bytes a pixel: 1.7 GB for
12000 x 12000) before its first step, a resize (square, or by the shorter side): `normalise_resize` blends
the uint8 rows that each output row needs, resizes those rows in float32, then normalises the small image.
The same arithmetic in another order: the floats differ by rounding only (~1e-6), and every image under the
limit keeps the authors' order bit for bit.

Box helpers state their convention: boxes are `x0 y0 x1 y1` floats in pixels of the frame named.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from utils.method.seg_target import pseudo_mask_floats, seg_target

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# (mean, scale) per channel as float32 bits: float32(mean * 255) and float32(1 / (std * 255)), channel 1's scale
# one ulp under that. `(v - mean) * scale` in float32 then gives albumentations' Normalize for every uint8 v
# (checked, and found, by `affine_constants` in tests/test_transforms.py); fixed here rather than
# worked out at import, so that processes which never train need not import albumentations (~1.2 s: it
# pulls in scipy), and a later albumentations cannot change the normalisation the original code used.
_AFFINE = np.array([[float.fromhex(h) for h in ("0x1.eeb334p+6", "0x1.d11eb8p+6", "0x1.9e1eb8p+6")],
                    [float.fromhex(h) for h in ("0x1.18926cp-6", "0x1.1ed5b0p-6", "0x1.1d8f56p-6")]], dtype=np.float32)


def albumentations():
    """The albumentations module, imported on first use (training pipelines, masks, the references)."""
    import albumentations as A
    return A


@lru_cache(maxsize=None)
def albumentations_normalize():
    """albumentations' Normalize with the ImageNet statistics, made once (the reference `normalise` follows)."""
    return albumentations().Normalize(mean=MEAN, std=STD, max_pixel_value=255.0)


# Images of more pixels than this are resized before they are normalised (`normalise_resize`): their tensors then
# differ from the authors' order by float rounding, so the bound sits far above ordinary photographs (a 12-MP one
# is 2^23.5 pixels; CUB's are at most 500 px a side), whose tensors stay bit for bit the original code's.
LARGE_IMAGE = 2 ** 25
_BAND = 2 ** 20  # pixels of the rows blended at once on the large path: ~12 MB of float32 whatever the width

_ROWS = np.empty((2, 0), dtype=np.float32)  # _AFFINE's (mean, scale) repeated along a row of pixels: r, g, b, r, ...


def normalise(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> float32 (pixel / 255 - mean) / std, exactly as albumentations' Normalize."""
    if not (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        return albumentations_normalize()(image=image)["image"]
    global _ROWS
    h, w = image.shape[:2]
    if _ROWS.shape[1] < 3 * w:
        _ROWS = np.tile(_AFFINE, max(w, 1024))
    rows = _ROWS[:, :3 * w]
    out = image.reshape(h, 3 * w).astype(np.float32)  # one contiguous run per row: numpy's SIMD loops
    np.subtract(out, rows[0], out=out)
    np.multiply(out, rows[1], out=out)
    return out.reshape(h, w, 3)


def normalise_resize(image: np.ndarray, size, out: Optional[np.ndarray] = None) -> np.ndarray:
    """`cv2.resize(normalise(image), dsize, dst=out, interpolation=cv2.INTER_LINEAR)`, float32: `size` is the
    side of a square (an int) or OpenCV's (width, height).

    An H x W x 3 uint8 image of more than `LARGE_IMAGE` pixels is resized first, without a full-size float copy:
    in bands of output rows, the two source rows of each (rows and weights as OpenCV's INTER_LINEAR takes them)
    blended in float32, the band resized across by OpenCV (its rows unchanged), then the small result
    normalised. The same values up to float rounding; `out`, when it fits, receives them as OpenCV's `dst` does.
    """
    width, height = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    if h * w <= LARGE_IMAGE or not (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        return cv2.resize(normalise(image), (width, height), dst=out, interpolation=cv2.INTER_LINEAR)
    fits = (out is not None and out.shape == (height, width, 3) and out.dtype == np.float32
            and out.flags.c_contiguous)
    result = out if fits else np.empty((height, width, 3), dtype=np.float32)
    top, bottom, weight = _linear_taps(h, height)
    step = max(1, _BAND // w)
    for r in range(0, height, step):
        rows = slice(r, min(r + step, height))
        band = image[top[rows]].astype(np.float32)                    # k x W x 3: each output row's upper row
        band *= (1 - weight[rows])[:, None, None]                       # float32 weights, as OpenCV's
        lower = image[bottom[rows]].astype(np.float32)
        lower *= weight[rows, None, None]
        band += lower
        cv2.resize(band, (width, band.shape[0]), dst=result[rows], interpolation=cv2.INTER_LINEAR)
    np.subtract(result, _AFFINE[0], out=result)                         # the (v - mean) * scale of `normalise`
    np.multiply(result, _AFFINE[1], out=result)
    return result


def _linear_taps(src: int, dst: int) -> tuple:
    """INTER_LINEAR's source rows and weights for `src` rows resized to `dst`, as OpenCV computes them:
    f = (i + 0.5) * scale - 0.5, row floor(f) with weight 1 - (f - floor(f)), the next row with the rest, both
    clamped to the image (weight 0 beyond it). (upper rows, lower rows, float32 weights of the lower)."""
    scale = 1.0 / (dst / src)                                           # OpenCV's 1 / inv_scale, in double
    f = (np.arange(dst) + 0.5) * scale - 0.5
    if not cv2.ipp.useIPP():  # OpenCV's own resize rounds the coordinate to float32 first, its IPP one does not
        f = f.astype(np.float32)
    upper = np.floor(f)
    weight = (f - upper).astype(np.float32)
    upper = upper.astype(np.intp)
    edge = (upper < 0) | (upper >= src - 1)
    weight[edge] = 0
    upper = np.clip(upper, 0, src - 1)
    return upper, np.minimum(upper + 1, src - 1), weight


class Pipeline:
    """An albumentations pipeline as `(image, mask, seed) -> (CHW float tensor, mask tensor | None)`.

    The pseudo mask (H x W x 3 float, ch0 = CAM, ch1 = Gaussian prior) follows the image geometry
    (NEAREST resize, same crop and flip) and comes back as 2 x h x w: the segmentation target and
    its weight (`utils.method.seg_target`, docs/method.md §5).
    """

    def __init__(self, ops: Callable, eager: bool = True, square: int = 0, shorter: int = 0):
        """`ops(A)`: the list of albumentations transforms after `normalise`, given the module; a module-level
        function or a `functools.partial` of one, which pickles for loader workers. `A.Compose` is built here
        (forked loader workers then inherit albumentations instead of each importing it), or with
        `eager=False` on first use (`ResizeCrop`, whose inference path never needs it). `square`: the size of
        the `A.Resize(square, square)` that `ops` begins with (0: none), done before the pipeline on an image
        over `LARGE_IMAGE` pixels (`normalise_resize`; the mask NEAREST, as A.Resize: the same mask). `shorter`:
        likewise for the `A.SmallestMaxSize(shorter)` it begins with (no masks there)."""
        self.ops, self.square, self.shorter = ops, square, shorter
        self._compose = self._build() if eager else None

    def _build(self):
        A = albumentations()
        return A.Compose(self.ops(A))

    @property
    def compose(self):
        if self._compose is None:
            self._compose = self._build()
        return self._compose

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None, seed: int = 0):
        self.compose.set_random_seed(seed)
        large = image.shape[0] * image.shape[1] > LARGE_IMAGE
        if large and self.square:
            # A.Resize then meets an image of its size, which it hands on as it is
            image = normalise_resize(image, self.square)
            if mask is not None:
                mask = cv2.resize(mask, (self.square, self.square), interpolation=cv2.INTER_NEAREST)
        elif large and self.shorter and mask is None:
            # so does A.SmallestMaxSize: the shorter side is already `shorter`, its scale exactly 1
            image = normalise_resize(image, shorter_side_size(*image.shape[:2], self.shorter))
        else:
            image = normalise(image)
        out = self.compose(image=image, mask=mask) if mask is not None else self.compose(image=image)
        image_t = _chw(out["image"])
        if mask is None:
            return image_t, None
        mask = pseudo_mask_floats(out["mask"])
        target, weight = seg_target(mask[..., 0], mask[..., 1])
        return image_t, torch.from_numpy(np.stack([target, weight]).astype(np.float32))


class ResizeCrop(Pipeline):
    """Normalise, resize to size x size (`cv2.INTER_LINEAR`), then centre crop to crop x crop (0: none).

    Without a mask (inference) it runs the OpenCV calls of A.Resize and A.CenterCrop itself; with one,
    the albumentations pipeline (the mask's NEAREST resize). `hwc`: the image tensor stays h x w x 3
    (`mask_transform`).
    """

    def __init__(self, size: int, crop: int = 0, hwc: bool = False):
        super().__init__(partial(_resize_crop, size=size, crop=crop, random=False), eager=False, square=size)
        self.size, self.crop, self.hwc = size, crop, hwc

    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None, seed: int = 0):
        if mask is not None:
            return super().__call__(image, mask, seed)
        out = normalise_resize(image, self.size)
        if self.crop:
            top = (self.size - self.crop) // 2
            out = out[top:top + self.crop, top:top + self.crop]
        return (torch.from_numpy(np.ascontiguousarray(out)) if self.hwc else _chw(out)), None

    def into(self, image: np.ndarray, out: np.ndarray) -> None:
        """The normalised, resized image (no crop) written into `out` (size x size x 3 float32, C-contiguous):
        the h x w x 3 array of `mask_transform`, where the caller wants it (`utils.engine.ring`)."""
        if self.crop:
            raise ValueError("ResizeCrop.into writes uncropped images")
        written = normalise_resize(image, self.size, out)
        if written.ctypes.data != out.ctypes.data:  # OpenCV allocates anew rather than write a misfit `out`
            raise ValueError(f"ResizeCrop.into: out must be a C-contiguous {self.size} x {self.size} x 3 float32 "
                             f"array, got {out.dtype} {out.shape}")


def _chw(image: np.ndarray) -> torch.Tensor:
    """H x W x C float32 -> C x H x W tensor (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _resize_crop(A, size: int, crop: int, random: bool, shorter_side: bool = False) -> list:
    """A.Resize to size x size (or A.SmallestMaxSize(size)), then a crop x crop crop (0: none): random, with a
    horizontal flip, or centred."""
    ops = [A.SmallestMaxSize(size)] if shorter_side else [A.Resize(size, size)]
    if random:
        return ops + [A.RandomCrop(crop, crop), A.HorizontalFlip(p=0.5)]
    return ops + ([A.CenterCrop(crop, crop)] if crop else [])


def train_transform(size: int = 256, crop: int = 224) -> Callable:
    """cam/seg training: resize size x size, random crop, horizontal flip."""
    return Pipeline(partial(_resize_crop, size=size, crop=crop, random=True), square=size)


def resize_transform(size: int = 256) -> Callable:
    """Pseudo-mask inference (size 256) and the wsolevaluation protocol (size 224): resize only."""
    return ResizeCrop(size)


def mask_transform(size: int = 256) -> Callable:
    """Pseudo-mask inference: `resize_transform`'s image, left size x size x 3 (no mask). The loader workers
    skip the transpose to channels-first (~0.08 ms per image, 1.28M times on ImageNet); the stage puts the
    channels first on the device (`engine.to_device(..., hwc=True)`: on CUDA with channels-last, the batch
    is then already in the model's memory format, with no copy)."""
    return ResizeCrop(size, hwc=True)


def eval_transform(size: int = 256, crop: int = 224) -> Callable:
    """SPOL evaluation: resize size x size, centre crop."""
    return ResizeCrop(size, crop)


def cls_train_transform(size: int, crop: int) -> Callable:
    """Classifier training: `train_transform`'s pipeline at the classifier's sizes."""
    return train_transform(size, crop)


def cls_test_transform(size: int, crop: int = 0, shorter_side: bool = False) -> Callable:
    """Classifier evaluation: square resize (CUB recipe; OpenCV called directly, as `eval_transform`), or
    torchvision's shorter-side resize + centre crop (A.SmallestMaxSize + A.CenterCrop)."""
    if not shorter_side:
        return ResizeCrop(size, crop)
    return Pipeline(partial(_resize_crop, size=size, crop=crop, random=False, shorter_side=True), shorter=size)


def shorter_side_size(height: int, width: int, size: int) -> tuple:
    """The (width, height) A.SmallestMaxSize(size) gives an image (albumentations 2.0: each side times
    size / shorter side, rounded; tests/test_large_images.py checks it against albumentations itself)."""
    scale = size / min(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def boxes_to_eval_frame(boxes: np.ndarray, width: int, height: int, size: int = 256, crop: int = 0) -> np.ndarray:
    """GT boxes (x0 y0 x1 y1, original pixels) -> the evaluation frame (floats).

    Clip to the image ([0, W-1] x [0, H-1]), scale to size x size, shift by the centre-crop offset
    and clip to the crop [0, crop] (docs/method.md §6). `crop=0`: no crop, the frame is size x size.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width - 1) * size / width
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height - 1) * size / height
    if crop:
        off = (size - crop) // 2
        b = np.clip(b - off, 0, crop)
    return b
