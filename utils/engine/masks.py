"""The cam stage's pseudo masks, fast: the masks of utils/method/pseudo_mask.py (docs/method.md §4), bit for bit.

`make_pseudo_mask(cam, width, height, prior)` turns the 32 x 32 map of the ground-truth class into the
H x W x 3 uint8 mask written as PNG: channel 0 = the normalised CAM, channel 1 = the prior (`--prior`,
`method.PRIORS`), channel 2 = 0. The method's definition lives in utils/method/pseudo_mask.py, with every
constant; tests/test_pseudo_mask.py checks that this file computes the same masks on many maps.

Speed (this runs 1.28M times on ImageNet; ~2 ms per 500 x 375 image on one core, `python -m
utils.bench`): SPOL's Gaussian prior has a fast version here (`gaussian_prior`); any other prior of
`method.PRIORS` is its plain function. A region's moments are taken inside its bounding rectangle only;
each Gaussian is evaluated only inside its box (`method.gaussian_box`), those of narrow boxes (most) in one
stacked array, one numpy call per step for all of them; the large arrays are reused from image to image
(fresh ones cost more in page faults than the arithmetic), and the 2-channel result becomes the 3-channel
mask without a strided copy. None of this changes a bit of the output: the float operations are those of
the definition, in the same order.
"""
from __future__ import annotations

import threading
from typing import Optional

import cv2
import numpy as np

from utils.data import png
from utils.method.pseudo_mask import EPS, HIGH, LOW, MIN_AREA, PRIORS, SHRINK, SIZE, exponent_factor, gaussian_box
from utils.engine.outputs import write_atomic

_COORDS = np.arange(SIZE, dtype=np.float64)  # pixel coordinates: slices of it replace per-region aranges
_NARROW = 32        # Gaussians whose box is at most this wide (columns) are evaluated together
# Masks of more pixels than this are resized in bands of columns (`_banded_mask`): 3 bytes a pixel at the peak
# instead of 17 (2.4 GB for 12000 x 12000), the same bits; under it, the one resize of the fast path below.
BANDED = 2 ** 25
_BAND = 2 ** 20     # pixels of one band's float32 pairs (8 MB)


class _Buffers(threading.local):
    """Per-thread arrays reused from image to image.

    Fresh arrays of this size cost more in page faults (~1000 per image: the allocator hands large
    blocks back to the kernel) than all the arithmetic; images over `LIMIT` pixels get fresh ones.
    """
    LIMIT = 1024 * 1024

    def __init__(self):
        self.cam256 = np.empty((SIZE, SIZE), dtype=np.float32)
        self.prior = np.empty((SIZE, SIZE), dtype=np.float32)
        self.flat = np.empty(SIZE * SIZE, dtype=np.float64)
        self.fused = np.empty((SIZE, SIZE, 2), dtype=np.float32)
        self.big = np.empty(0, dtype=np.float32)

    def scratch(self, n: int) -> np.ndarray:
        """A flat float64 array of n elements (reused; grown when a batch of Gaussians needs more)."""
        if self.flat.size < n:
            self.flat = np.empty(n, dtype=np.float64)
        return self.flat[:n]

    def resized(self, height: int, width: int) -> tuple:
        """(H x W x 2 float32, H x W x 2 uint8, H x W little-endian uint32) views of one reused block."""
        n = height * width
        if n > self.LIMIT:
            return (np.empty((height, width, 2), np.float32), np.empty((height, width, 2), np.uint8),
                    np.empty((height, width), "<u4"))
        if self.big.size < 4 * n:
            self.big = np.empty(4 * n, dtype=np.float32)
        # floats in [0, 2n), uint8 pairs and uint32 after them: none overlaps another
        raw = self.big.view(np.uint8)
        return (self.big[:2 * n].reshape(height, width, 2),
                raw[8 * n:10 * n].reshape(height, width, 2),
                self.big[3 * n:4 * n].view("<u4").reshape(height, width))


_BUFFERS = _Buffers()


def _add_gaussians(prior: np.ndarray, gaussians: list) -> None:
    """prior = max(prior, g) in the box of each of `gaussians` [(ux, uy, vx, vy, vxy, c, x0, x1, y0, y1)], g the
    Gaussian of `method.gaussian` (peak 1 at (ux, uy)), by the same float64 operations in the same order: bit for
    bit its values (a float32 `prior` receives the float64 max rounded, the max of the rounded values).

    Several Gaussians: their boxes' rows are stacked in one array, padded to the widest box, so that each step is
    one numpy call for all of them; most boxes are a few pixels wide (the variances are divided by SHRINK), where
    ~15 numpy calls per Gaussian would cost more than their arithmetic. An array of copies of a Gaussian's scalar
    gives the products the scalar gives, and the padding is never written to `prior`. One Gaussian: its row of
    x and column of y broadcast, without the stacking's table and copies (which cost a wide box ~1.5x).
    """
    with np.errstate(over="ignore", invalid="ignore"):                       # the padding may overflow
        if len(gaussians) == 1:
            ux, uy, vx, vy, vxy, c, x0, x1, y0, y1 = gaussians[0]
            dx, dy = _COORDS[x0:x1 + 1] - ux, _COORDS[y0:y1 + 1] - uy       # W: x - ux, R: y - uy
            two_dx, dx2_vx = 2.0 * dx, dx * dx / vx                          # W, broadcast to every row
            vxy_r, vxvy_r, vy_r, c_r = vxy, vx * vy, vy, c                    # the same for every row
            first = [0]
        else:
            table = np.array(gaussians)                                      # K x 10 float64
            ux, uy, vx, vy, vxy, c = table[:, :6].T
            x0, x1, y0, y1 = table[:, 6:].astype(np.intp).T
            nx, ny = x1 - x0 + 1, y1 - y0 + 1
            rows = np.repeat(np.arange(len(gaussians)), ny)                  # each stacked row's Gaussian
            starts = np.cumsum(ny) - ny                                      # each Gaussian's first row
            dx = (_COORDS[:int(nx.max())] + x0[:, None]) - ux[:, None]       # K x width: x - ux
            dy = (y0[rows] + (np.arange(len(rows)) - starts[rows])) - uy[rows]  # R: y - uy
            two_dx, dx2_vx = (2.0 * dx)[rows], (dx * dx / vx[:, None])[rows]  # R x width
            vxy_r, vxvy_r, vy_r, c_r = vxy[rows, None], (vx * vy)[rows, None], vy[rows], c[rows, None]
            first = starts.tolist()
        q = _BUFFERS.scratch(dy.size * two_dx.shape[-1]).reshape(dy.size, -1)  # R x width
        np.multiply(two_dx, dy[:, None], out=q)
        q *= vxy_r
        q /= vxvy_r
        np.subtract(dx2_vx, q, out=q)
        q += (dy * dy / vy_r)[:, None]
        q *= c_r
        np.exp(q, out=q)
    for (_, _, _, _, _, _, gx0, gx1, gy0, gy1), r in zip(gaussians, first):
        window = prior[gy0:gy1 + 1, gx0:gx1 + 1]
        np.maximum(window, q[r:r + gy1 - gy0 + 1, :gx1 - gx0 + 1], out=window)


def regions(cam256: np.ndarray) -> tuple:
    """(inside, contours) of the 256 x 256 CAM: `inside` is 255 where LOW <= cam <= HIGH (the weight w > 0
    exactly there: LOW > 0), and each contour of it of area >= MIN_AREA makes one region (`method.regions`).
    The bench's random-weight CAMs have ~8 per map, noisier ones 15 or more, a trained model's smooth ones a
    few."""
    inside = cv2.inRange(cam256, LOW, HIGH)
    contours, _ = cv2.findContours(inside, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    return inside, [c for c in contours if cv2.contourArea(c) >= MIN_AREA]


def _moments(cam256: np.ndarray) -> list:
    """`method.moments` of each region (`regions`) [(ux, uy, vx, vy, vxy)], each in its bounding rectangle."""
    out = []
    inside, contours = regions(cam256)
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        region = np.zeros((bh, bw), dtype=np.uint8)
        # the pixels drawContours(thickness=-1) fills for one contour (the same edges, LINE_8), with less overhead
        cv2.fillPoly(region, (contour,), 1, cv2.LINE_8, 0, (-x, -y))
        region &= inside[y:y + bh, x:x + bw]
        p = np.multiply(cam256[y:y + bh, x:x + bw], region, dtype=np.float64)  # R * w: the CAM where both, else 0
        total = np.add.reduce(p, None)  # = p.sum(), without the method's Python layer (as below)
        if total <= 0:
            continue
        p /= total
        px, py = np.add.reduce(p, 0), np.add.reduce(p, 1)  # marginals over columns (x) and rows (y)
        xs, ys = _COORDS[x:x + bw], _COORDS[y:y + bh]
        ux, uy = np.dot(px, xs), np.dot(py, ys)  # np.dot: the dot product of `@`, less overhead
        dxs, dys = xs - ux, ys - uy
        # Python floats for the divisions: the IEEE quotients numpy's scalars give, with less overhead
        out.append((float(ux), float(uy), float(np.dot(px, dxs * dxs)) / SHRINK,
                    float(np.dot(py, dys * dys)) / SHRINK, float(dys @ p @ dxs) / SHRINK))
    return out


def gaussian_prior(cam256: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """`method.gaussian_prior` of the 256 x 256 normalised CAM, fast: into `out` (float64 or float32,
    256 x 256; a new float64 array when none is given), which it returns.

    The Gaussians of boxes up to `_NARROW` columns wide (most) are evaluated together (`_add_gaussians`), wider
    ones one by one, without padding."""
    prior = np.empty((SIZE, SIZE), dtype=np.float64) if out is None else out
    prior.fill(0)
    narrow = []
    for ux, uy, vx, vy, vxy in _moments(cam256):
        c = exponent_factor(vx, vy, vxy)
        if c is None:
            continue
        x0, x1, y0, y1 = gaussian_box(ux, uy, vx, vy)
        if x1 - x0 < _NARROW:
            narrow.append((ux, uy, vx, vy, vxy, c, x0, x1, y0, y1))
        else:
            _add_gaussians(prior, [(ux, uy, vx, vy, vxy, c, x0, x1, y0, y1)])
    if narrow:
        _add_gaussians(prior, narrow)
    return prior


def make_pseudo_mask(cam: np.ndarray, width: int, height: int, prior: str = "gaussian",
                     rgb: bool = False) -> np.ndarray:
    """`method.pseudo_mask`: the H x W x 3 uint8 pseudo mask from a CAM of any size (the GT class's map,
    values >= 0), with the prior `method.PRIORS[prior]` in channel 1.

    Write it with `cv2.imwrite(path, mask)`: `cv2.imread` then gives channel 0 = CAM,
    channel 1 = prior, channel 2 = 0, as the original code's PNGs. `rgb=True` gives the same
    mask in the PNG file's channel order (0, prior, CAM), for `utils.data.png.encode_rgb`, at the same cost.
    """
    width, height = int(width), int(height)
    b = _BUFFERS
    cam = np.asarray(cam, dtype=np.float32)
    # method.normalise_cam into a reused array: a fresh 256 x 256 one costs 4x the normalisation in page faults
    cam256 = cv2.resize(cam / (cam.max() + EPS), (SIZE, SIZE), dst=b.cam256, interpolation=cv2.INTER_LINEAR)
    if prior == "gaussian":
        gaussian_prior(cam256, out=b.prior)
    else:  # a prior without a fast version here: the definition's function
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}: one of {', '.join(sorted(PRIORS))}")
        values = np.asarray(PRIORS[prior](cam256))
        if values.shape != (SIZE, SIZE):
            raise ValueError(f"prior {prior!r} gave a {values.shape} array, not {SIZE} x {SIZE}")
        np.copyto(b.prior, values, casting="same_kind")
    cv2.merge((cam256, b.prior), dst=b.fused)
    b.fused *= 255.0  # float32 products, as cam * 255 and prior * 255
    # 2 channels, as the definition: OpenCV's 2-channel bilinear kernel rounds differently from its 1/3/4-channel ones
    if height * width > BANDED:
        return _banded_mask(b.fused, width, height, rgb)
    fused, two, four = b.resized(height, width)
    fused = cv2.resize(b.fused, (width, height), dst=fused, interpolation=cv2.INTER_LINEAR)
    np.copyto(two, fused, casting="unsafe")  # truncation, as the original's astype(uint8)
    # H x W x 2 -> H x W x 3 with channel 2 = 0: each pixel's two bytes zero-extended to a little-endian
    # uint32 (bytes B, G, 0, 0), then BGRA -> BGR (or RGB); ~20x faster than assigning into out[..., :2]
    np.copyto(four, two.view("<u2")[..., 0])
    order = cv2.COLOR_BGRA2RGB if rgb else cv2.COLOR_BGRA2BGR
    return cv2.cvtColor(four.view(np.uint8).reshape(height, width, 4), order)


def _banded_mask(fused: np.ndarray, width: int, height: int, rgb: bool) -> np.ndarray:
    """`make_pseudo_mask`'s H x W x 3 uint8 mask from the 256 x 256 x 2 float32 `fused` (CAM, prior; x 255), without
    an H x W float array. OpenCV's INTER_LINEAR resizes each row across, then blends rows; resized across to W
    first (at 256 rows: the rows as they are), then down one band of columns at a time (each column on its own:
    the columns as they are), it computes the same sums in the same order: the bits of the one call
    (tests/test_large_images.py)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    cam, prior = (2, 1) if rgb else (0, 1)
    across = cv2.resize(fused, (width, SIZE), interpolation=cv2.INTER_LINEAR)  # 256 x W x 2
    step = max(1, _BAND // height)
    for start in range(0, width, step):
        cols = slice(start, min(start + step, width))
        band = cv2.resize(across[:, cols], (cols.stop - start, height), interpolation=cv2.INTER_LINEAR)
        np.copyto(out[:, cols, cam], band[..., 0], casting="unsafe")  # truncation, as astype(uint8)
        np.copyto(out[:, cols, prior], band[..., 1], casting="unsafe")
    return out


def write_mask(cam: np.ndarray, width: int, height: int, path: str, prior: str = "gaussian",
               writer: str = "auto") -> None:
    """Post-process one CAM and write its PNG atomically (a crash never leaves a torn mask); `prior`: a name
    of `method.PRIORS`, looked up in the process that writes (a pool worker imports the table itself);
    `writer`: the PNG encoder (`utils.data.png`: the same pixels from either)."""
    data = png.encode_rgb(make_pseudo_mask(cam, width, height, prior, rgb=True), writer)
    write_atomic(path, lambda f: f.write(data))


def write_masks(items: list, writer: str = "auto") -> None:
    """`write_mask` of each (cam, width, height, path[, prior]): one pool task per chunk of a batch keeps the
    pool's per-task cost (futures, pickling, pipes: in the main process, under its GIL) small. Here, in a
    torch-free module, because it runs in the post-processing pool's workers (utils.engine.workers)."""
    for item in items:
        write_mask(*item, writer=writer)
