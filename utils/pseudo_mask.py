"""Gaussian-enhanced pseudo masks from class activation maps (docs/method.md §4).

`make_pseudo_mask(cam, width, height)` turns the 32 x 32 map of the ground-truth class into the
H x W x 3 uint8 mask written as PNG: channel 0 = the normalised CAM, channel 1 = the Gaussian prior
fitted to each mid-confidence region, channel 2 = 0.

Speed (this runs 1.28M times on ImageNet; ~2 ms per 500 x 375 image on one core, `python -m
utils.bench`): a region's moments are taken inside its bounding rectangle only; each Gaussian is
evaluated only inside the ellipse box where it exceeds `_G_FLOOR` (below that it would add less than
1/1000 of a grey level, so the written PNG does not change), and those of narrow boxes (most) in one
stacked array, one numpy call per step for all of them; the large arrays are reused from image to
image (fresh ones cost more in page faults than the arithmetic), and the 2-channel result becomes the
3-channel mask without a strided copy. None of this changes a bit of the output: the float operations
are those of the formulas written out, in the same order.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import cv2
import numpy as np

from utils import png
from utils.outputs import write_atomic

SIZE = 256          # CAMs are upsampled to 256 x 256 before the prior is fitted
LOW, HIGH = 0.1, 0.5  # CAM values that make up the regions the Gaussians are fitted to
MIN_AREA = 20       # smaller contours get no Gaussian
SHRINK = 10.0       # the fitted (co)variances are divided by this: sharp priors
_G_FLOOR = 1e-3 / 255.0
_HALF_WIDTH = math.sqrt(2.0 * -math.log(_G_FLOOR))  # in standard deviations
_COORDS = np.arange(SIZE, dtype=np.float64)  # pixel coordinates: slices of it replace per-region aranges
_NARROW = 32        # Gaussians whose box is narrower (columns) are evaluated together (`_add_gaussians`)


class _Buffers(threading.local):
    """Per-thread arrays reused from image to image.

    Fresh arrays of this size cost more in page faults (~1000 per image: the allocator hands large
    blocks back to the kernel) than all the arithmetic; images over `LIMIT` pixels get fresh ones.
    """
    LIMIT = 1024 * 1024

    def __init__(self):
        self.cam256 = np.empty((SIZE, SIZE), dtype=np.float32)
        self.prior = np.empty((SIZE, SIZE), dtype=np.float32)
        self.scratch = np.empty(SIZE * SIZE, dtype=np.float64)
        self.fused = np.empty((SIZE, SIZE, 2), dtype=np.float32)
        self.big = np.empty(0, dtype=np.float32)

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


def normalise_cam(cam: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """cam / (max + 1e-6), bilinearly resized to 256 x 256 (float32, values in [0, 1))."""
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam / (cam.max() + 1e-6)
    return cv2.resize(cam, (SIZE, SIZE), dst=out, interpolation=cv2.INTER_LINEAR)


def _window(ux: float, uy: float, vx: float, vy: float, vxy: float) -> Optional[tuple]:
    """(c, x0, x1, y0, y1) of the Gaussian of docs/method.md §4 with these moments: its exponent's factor
    c = -1 / (2 (1 - rho^2)) and the pixel box (inclusive) outside which it stays under `_G_FLOOR`;
    None for a degenerate region (a line: no finite Gaussian) or a box off the grid."""
    one_minus_rho2 = 1.0 - vxy * vxy / (vx * vy)
    if not (vx > 0 and vy > 0 and one_minus_rho2 > 0):
        return None
    rx, ry = _HALF_WIDTH * math.sqrt(vx), _HALF_WIDTH * math.sqrt(vy)
    x0, x1 = max(0, math.floor(ux - rx)), min(SIZE - 1, math.ceil(ux + rx))
    y0, y1 = max(0, math.floor(uy - ry)), min(SIZE - 1, math.ceil(uy + ry))
    if x0 > x1 or y0 > y1:
        return None
    return -1.0 / (2.0 * one_minus_rho2), x0, x1, y0, y1


def _add_gaussian(prior: np.ndarray, scratch: np.ndarray, ux: float, uy: float, vx: float, vy: float,
                  vxy: float, c: float, x0: int, x1: int, y0: int, y1: int) -> None:
    """prior = max(prior, g) in the box x0..x1, y0..y1, with g the Gaussian of docs/method.md §4
    (peak 1 at (ux, uy)).

    g is computed in float64 by the operations of `exp(c * (dx*dx/vx - 2*dx*dy*vxy/(vx*vy) + dy*dy/vy))`
    in that order, in place in `scratch` (flat, >= 256 * 256 elements); a float32 `prior` receives
    the float64 max rounded, which equals the max of the rounded values (rounding is monotonic).
    """
    dx = _COORDS[x0:x1 + 1] - ux                                          # nx (broadcasts as 1 x nx)
    dy = (_COORDS[y0:y1 + 1] - uy)[:, None]                               # ny x 1
    q = scratch[:dx.size * dy.size].reshape(dy.size, dx.size)             # ny x nx, contiguous
    np.multiply(2.0 * dx, dy, out=q)
    q *= vxy
    q /= vx * vy
    np.subtract(dx * dx / vx, q, out=q)
    q += dy * dy / vy
    q *= c
    np.exp(q, out=q)
    window = prior[y0:y1 + 1, x0:x1 + 1]
    np.maximum(window, q, out=window)


def _add_narrow_gaussians(prior: np.ndarray, narrow: list) -> None:
    """`_add_gaussian` of each of `narrow` [(ux, uy, vx, vy, vxy, c, x0, x1, y0, y1)] at once: their boxes'
    rows stacked in one array (padded to the widest box), so that each step is one numpy call for all
    of them instead of one per Gaussian. The bits are those of `_add_gaussian`: every element goes
    through the same float64 operations in the same order (an array of copies of a Gaussian's scalar
    gives the products the scalar gives), and the padding is never written to `prior`."""
    table = np.array(narrow)                                                 # K x 10 float64
    ux, uy, vx, vy, vxy, c = table[:, :6].T
    x0, x1, y0, y1 = table[:, 6:].astype(np.intp).T
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    rows = np.repeat(np.arange(len(narrow)), ny)                             # each stacked row's Gaussian
    first = np.cumsum(ny) - ny                                               # each Gaussian's first row
    with np.errstate(over="ignore", invalid="ignore"):                       # the padding may overflow
        dx = (_COORDS[:int(nx.max())] + x0[:, None]) - ux[:, None]           # K x width: x - ux
        dy = (y0[rows] + (np.arange(len(rows)) - first[rows])) - uy[rows]    # R: y - uy
        q = np.multiply((2.0 * dx)[rows], dy[:, None])                       # R x width
        q *= vxy[rows, None]
        q /= (vx * vy)[rows, None]
        np.subtract((dx * dx / vx[:, None])[rows], q, out=q)
        q += (dy * dy / vy[rows])[:, None]
        q *= c[rows, None]
        np.exp(q, out=q)
    for (_, _, _, _, _, _, gx0, gx1, gy0, gy1), r in zip(narrow, first.tolist()):
        window = prior[gy0:gy1 + 1, gx0:gx1 + 1]
        np.maximum(window, q[r:r + gy1 - gy0 + 1, :gx1 - gx0 + 1], out=window)


def _add_gaussians(prior: np.ndarray, scratch: np.ndarray, moments: list) -> None:
    """prior = max(prior, g_1, ..., g_n) for the Gaussians of `moments` [(ux, uy, vx, vy, vxy)], each in
    its box (`_window`). Boxes under `_NARROW` columns (most: the variances are divided by SHRINK, so
    the Gaussians are sharp) are evaluated together (`_add_narrow_gaussians`), where ~15 numpy calls
    per Gaussian would cost more than their arithmetic; wider ones one by one, without padding."""
    narrow = []
    for m in moments:
        box = _window(*m)
        if box is None:
            continue
        if box[2] - box[1] < _NARROW:
            narrow.append(m + box)
        else:
            _add_gaussian(prior, scratch, *m, *box)
    if narrow:
        _add_narrow_gaussians(prior, narrow)


def regions(cam256: np.ndarray) -> tuple:
    """(inside, contours) of the 256 x 256 CAM: `inside` is 255 where LOW <= cam <= HIGH (the weight w > 0
    exactly there: LOW > 0), and each contour of it (RETR_TREE: holes too) of area >= MIN_AREA makes one
    region, which gets one Gaussian. The bench's random-weight CAMs have ~8 per map, noisier ones 15 or more,
    a trained model's smooth ones a few."""
    inside = cv2.inRange(cam256, LOW, HIGH)
    contours, _ = cv2.findContours(inside, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    return inside, [c for c in contours if cv2.contourArea(c) >= MIN_AREA]


def gaussian_prior(cam256: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Element-wise max of one Gaussian per mid-confidence region (`regions`) of the 256 x 256 CAM.

    Returns `out` (float64 or float32, 256 x 256), or a new float64 array when none is given.
    """
    if out is None:
        prior = np.zeros((SIZE, SIZE), dtype=np.float64)
    else:
        prior = out
        prior.fill(0)
    moments = []
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
        moments.append((float(ux), float(uy), float(np.dot(px, dxs * dxs)) / SHRINK,
                        float(np.dot(py, dys * dys)) / SHRINK, float(dys @ p @ dxs) / SHRINK))
    _add_gaussians(prior, _BUFFERS.scratch, moments)
    return prior


def make_pseudo_mask(cam: np.ndarray, width: int, height: int, gaussian: bool = True,
                     rgb: bool = False) -> np.ndarray:
    """H x W x 3 uint8 pseudo mask from a CAM of any size (the GT class's map, values >= 0).
    `gaussian=False` leaves the prior out (channel 1 = 0: the seg target is then the CAM alone).

    Write it with `cv2.imwrite(path, mask)`: `cv2.imread` then gives channel 0 = CAM,
    channel 1 = Gaussian prior, channel 2 = 0, as the original code's PNGs. `rgb=True` gives the same
    mask in the PNG file's channel order (0, prior, CAM), for `utils.png.encode_rgb`, at the same cost.
    """
    width, height = int(width), int(height)
    b = _BUFFERS
    cam256 = normalise_cam(cam, out=b.cam256)
    if gaussian:
        prior = gaussian_prior(cam256, out=b.prior)
    else:
        prior = b.prior
        prior.fill(0)
    cv2.merge((cam256, prior), dst=b.fused)
    b.fused *= 255.0  # float32 products, as cam * 255 and prior * 255
    # 2 channels, not 3: OpenCV's 2-channel bilinear kernel rounds differently from its 1/3/4-channel ones
    fused, two, four = b.resized(height, width)
    fused = cv2.resize(b.fused, (width, height), dst=fused, interpolation=cv2.INTER_LINEAR)
    np.copyto(two, fused, casting="unsafe")  # truncation, as the original's astype(uint8)
    # H x W x 2 -> H x W x 3 with channel 2 = 0: each pixel's two bytes zero-extended to a little-endian
    # uint32 (bytes B, G, 0, 0), then BGRA -> BGR (or RGB); ~20x faster than assigning into out[..., :2]
    np.copyto(four, two.view("<u2")[..., 0])
    order = cv2.COLOR_BGRA2RGB if rgb else cv2.COLOR_BGRA2BGR
    return cv2.cvtColor(four.view(np.uint8).reshape(height, width, 4), order)


def write_mask(cam: np.ndarray, width: int, height: int, path: str, gaussian: bool = True,
               writer: str = "auto") -> None:
    """Post-process one CAM and write its PNG atomically (a crash never leaves a torn mask);
    `gaussian=False`: no prior (channel 1 stays 0); `writer`: the PNG encoder (`utils.png`: the same
    pixels from either)."""
    data = png.encode_rgb(make_pseudo_mask(cam, width, height, gaussian, rgb=True), writer)
    write_atomic(path, lambda f: f.write(data))


def write_masks(items: list, writer: str = "auto") -> None:
    """`write_mask` of each (cam, width, height, path, ...): one pool task per chunk of a batch keeps the
    pool's per-task cost (futures, pickling, pipes: in the main process, under its GIL) small. Here, in a
    torch-free module, because it runs in the post-processing pool's workers (utils.workers)."""
    for item in items:
        write_mask(*item, writer=writer)
