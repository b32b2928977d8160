"""SPOL's pseudo mask, the definition (docs/method.md §4): plain functions, one step of the paper each.

The cam stage turns the class activation map (CAM) of a training image's ground-truth class into a
3-channel PNG: channel 0 the normalised CAM, channel 1 a prior, channel 2 zero. SPOL's prior is a Gaussian
fitted to each mid-confidence region of the CAM (`gaussian_prior`); `PRIORS` names every prior the cam
stage can write (`--prior`), so a new variant is one function here plus one entry in that table.

Written for reading, not speed: every array is the full 256 x 256 grid. The cam stage runs
utils/engine/masks.py instead, which computes the same masks bit for bit (tests/test_pseudo_mask.py) about
ten times faster, and takes its constants from here. The one shortcut of the project, stated here so that
both agree: a Gaussian is 0 outside the whole-pixel box beyond which it stays under 1/1000 of a grey level
(`gaussian_box`; it saves computing tails that would round away, but can move a written pixel by one grey
level where a sum lands within 1/1000 of a whole grey level).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import cv2
import numpy as np

SIZE = 256            # the CAM is resized to SIZE x SIZE before the prior is fitted
EPS = 1e-6            # cam / (max + EPS): an all-zero CAM stays 0
LOW, HIGH = 0.1, 0.5  # mid-confidence: the CAM values that make up the regions the Gaussians are fitted to
MIN_AREA = 20         # contours of smaller area (cv2.contourArea) get no Gaussian
SHRINK = 10.0         # the fitted (co)variances are divided by this: sharp Gaussians
G_FLOOR = 1e-3 / 255  # a Gaussian is cut where it stays below this (1/1000 of a grey level): `gaussian_box`
HALF_WIDTH = math.sqrt(-2.0 * math.log(G_FLOOR))  # in standard deviations: where the Gaussian falls to G_FLOOR

# pixel coordinates of the grid, x = column, y = row: a row vector and a column vector that broadcast
X = np.arange(SIZE, dtype=np.float64)[None, :]
Y = np.arange(SIZE, dtype=np.float64)[:, None]


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """The CAM (h x w, values >= 0) divided by its maximum, bilinearly resized to SIZE x SIZE.

    Returns float32 in [0, 1): `cam / (max + EPS)`, then `cv2.resize(INTER_LINEAR)`.
    """
    cam = np.asarray(cam, dtype=np.float32)
    return cv2.resize(cam / (cam.max() + EPS), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def mid_confidence(cam256: np.ndarray) -> np.ndarray:
    """The weight w: the CAM where LOW <= cam <= HIGH, else 0 (SIZE x SIZE float64)."""
    return np.where((cam256 >= LOW) & (cam256 <= HIGH), cam256, 0).astype(np.float64)


def regions(w: np.ndarray) -> list:
    """The contours of w > 0 (cv2.findContours, RETR_TREE: a hole's edge is a contour too, CHAIN_APPROX_SIMPLE)
    of area >= MIN_AREA: one Gaussian each."""
    contours, _ = cv2.findContours((w > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    return [c for c in contours if cv2.contourArea(c) >= MIN_AREA]


def moments(w: np.ndarray, contour: np.ndarray) -> tuple[float, float, float, float, float]:
    """(ux, uy, vx, vy, vxy): the mean and the (co)variances / SHRINK of the pixel coordinates inside the
    contour (filled: R = 1 there), weighted by p = R * w / sum(R * w)."""
    region = np.zeros((SIZE, SIZE), dtype=np.uint8)
    cv2.drawContours(region, [contour], -1, 1, thickness=-1)
    p = region * w
    p = p / p.sum()
    ux, uy = (p * X).sum(), (p * Y).sum()
    vx = (p * (X - ux) ** 2).sum() / SHRINK
    vy = (p * (Y - uy) ** 2).sum() / SHRINK
    vxy = (p * (X - ux) * (Y - uy)).sum() / SHRINK
    return float(ux), float(uy), float(vx), float(vy), float(vxy)


def exponent_factor(vx: float, vy: float, vxy: float) -> Optional[float]:
    """c = -1 / (2 (1 - vxy^2 / (vx vy))), the factor of the Gaussian's exponent; None where the moments
    describe no Gaussian (all the weight on one line: a variance 0 or a correlation of +-1)."""
    if not (vx > 0 and vy > 0):
        return None
    one_minus_rho2 = 1.0 - vxy * vxy / (vx * vy)
    return -1.0 / (2.0 * one_minus_rho2) if one_minus_rho2 > 0 else None


def gaussian_box(ux: float, uy: float, vx: float, vy: float) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1), inclusive pixel bounds on the grid, of the box that holds the ellipse where the
    Gaussian is >= G_FLOOR (HALF_WIDTH standard deviations either side of the mean, rounded out)."""
    rx, ry = HALF_WIDTH * math.sqrt(vx), HALF_WIDTH * math.sqrt(vy)
    return (max(0, math.floor(ux - rx)), min(SIZE - 1, math.ceil(ux + rx)),
            max(0, math.floor(uy - ry)), min(SIZE - 1, math.ceil(uy + ry)))


def gaussian(ux: float, uy: float, vx: float, vy: float, vxy: float) -> Optional[np.ndarray]:
    """g(x, y) = exp(c ((x-ux)^2/vx - 2 (x-ux)(y-uy) vxy/(vx vy) + (y-uy)^2/vy)) on the grid, peak 1 at
    (ux, uy), c = `exponent_factor`; 0 outside `gaussian_box`. SIZE x SIZE float64, or None (no Gaussian)."""
    c = exponent_factor(vx, vy, vxy)
    if c is None:
        return None
    dx, dy = X - ux, Y - uy
    g = np.exp(c * (dx ** 2 / vx - 2 * dx * dy * vxy / (vx * vy) + dy ** 2 / vy))
    x0, x1, y0, y1 = gaussian_box(ux, uy, vx, vy)
    return np.where((x0 <= X) & (X <= x1) & (y0 <= Y) & (Y <= y1), g, 0.0)


def gaussian_prior(cam256: np.ndarray) -> np.ndarray:
    """SPOL's prior: the element-wise max of the Gaussians of the mid-confidence regions of the normalised
    CAM (0 where there is none). SIZE x SIZE float64 in [0, 1]."""
    w = mid_confidence(cam256)
    prior = np.zeros((SIZE, SIZE))
    for contour in regions(w):
        g = gaussian(*moments(w, contour))
        if g is not None:
            prior = np.maximum(prior, g)
    return prior


def no_prior(cam256: np.ndarray) -> np.ndarray:
    """No prior (channel 1 stays 0): the seg target is then the CAM alone, the paper's ablation of the prior."""
    return np.zeros((SIZE, SIZE))


# --prior NAME -> the function from the SIZE x SIZE normalised CAM to the SIZE x SIZE prior in [0, 1]
PRIORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"gaussian": gaussian_prior, "none": no_prior}


def pseudo_mask(cam: np.ndarray, width: int, height: int, prior: str = "gaussian") -> np.ndarray:
    """The H x W x 3 uint8 pseudo mask of a CAM (any size, values >= 0): channel 0 the normalised CAM, channel 1
    the prior `PRIORS[prior]`, both x 255 in float32, bilinearly resized to W x H and truncated; channel 2 zero.
    `cv2.imwrite` stores it so that `cv2.imread` gives these channels back, as the authors' PNGs."""
    cam256 = normalise_cam(cam)
    fused = np.dstack([cam256, PRIORS[prior](cam256).astype(np.float32)]) * np.float32(255)
    # the two channels resized together: OpenCV's 2-channel kernel rounds as the fast path's does (its 3-channel
    # one can differ in the last float bit, so by one grey level where a pixel sits on a whole level)
    two = cv2.resize(fused, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    return np.dstack([two, np.zeros((height, width), np.uint8)])
