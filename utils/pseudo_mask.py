"""Gaussian-enhanced pseudo masks from class activation maps (shared/SPEC.md §4.1).

`make_pseudo_mask(cam, width, height)` turns the 32 x 32 map of the ground-truth class into the
H x W x 3 uint8 mask written as PNG: channel 0 = the normalised CAM, channel 1 = the Gaussian prior
fitted to each mid-confidence region, channel 2 = 0.

Speed (this runs 1.28M times on ImageNet): a region's moments are taken inside its bounding rectangle
only, and each Gaussian is evaluated only inside the ellipse box where it exceeds `_G_FLOOR` (below
that it would add less than 1/1000 of a grey level, so the written PNG does not change).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

SIZE = 256          # CAMs are upsampled to 256 x 256 before the prior is fitted
LOW, HIGH = 0.1, 0.5  # CAM values that make up the regions the Gaussians are fitted to
MIN_AREA = 20       # smaller contours get no Gaussian
SHRINK = 10.0       # the fitted (co)variances are divided by this: sharp priors
_G_FLOOR = 1e-3 / 255.0
_HALF_WIDTH = math.sqrt(2.0 * -math.log(_G_FLOOR))  # in standard deviations


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """cam / (max + 1e-6), bilinearly resized to 256 x 256 (float32, values in [0, 1))."""
    cam = np.asarray(cam, dtype=np.float32)
    cam = cam / (cam.max() + 1e-6)
    return cv2.resize(cam, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


def _add_gaussian(prior: np.ndarray, ux: float, uy: float, vx: float, vy: float, vxy: float) -> None:
    """prior = max(prior, g) with g the bivariate Gaussian of SPEC §4.1 (peak 1 at (ux, uy))."""
    one_minus_rho2 = 1.0 - vxy * vxy / (vx * vy)
    if not (vx > 0 and vy > 0 and one_minus_rho2 > 0):
        return  # degenerate region (a line): the formula has no finite Gaussian
    c = -1.0 / (2.0 * one_minus_rho2)
    rx, ry = _HALF_WIDTH * math.sqrt(vx), _HALF_WIDTH * math.sqrt(vy)
    x0, x1 = max(0, math.floor(ux - rx)), min(SIZE - 1, math.ceil(ux + rx))
    y0, y1 = max(0, math.floor(uy - ry)), min(SIZE - 1, math.ceil(uy + ry))
    if x0 > x1 or y0 > y1:
        return
    dx = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] - ux
    dy = np.arange(y0, y1 + 1, dtype=np.float64)[:, None] - uy
    q = dx * dx / vx - 2.0 * dx * dy * vxy / (vx * vy) + dy * dy / vy
    window = prior[y0:y1 + 1, x0:x1 + 1]
    np.maximum(window, np.exp(c * q), out=window)


def gaussian_prior(cam256: np.ndarray) -> np.ndarray:
    """Element-wise max of one Gaussian per mid-confidence region of the 256 x 256 CAM (float64)."""
    w = np.where((cam256 >= LOW) & (cam256 <= HIGH), cam256, 0).astype(np.float64)
    prior = np.zeros((SIZE, SIZE), dtype=np.float64)
    contours, _ = cv2.findContours((w > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        if cv2.contourArea(contour) < MIN_AREA:
            continue
        x, y, bw, bh = cv2.boundingRect(contour)
        region = np.zeros((bh, bw), dtype=np.uint8)
        cv2.drawContours(region, [contour], -1, 1, thickness=-1, offset=(-x, -y))
        rw = region * w[y:y + bh, x:x + bw]
        total = rw.sum()
        if total <= 0:
            continue
        p = rw / total
        px, py = p.sum(0), p.sum(1)  # marginals over columns (x) and rows (y)
        xs = np.arange(x, x + bw, dtype=np.float64)
        ys = np.arange(y, y + bh, dtype=np.float64)
        ux, uy = px @ xs, py @ ys
        sx, sy = px @ (xs - ux) ** 2, py @ (ys - uy) ** 2
        sxy = (ys - uy) @ p @ (xs - ux)
        _add_gaussian(prior, ux, uy, sx / SHRINK, sy / SHRINK, sxy / SHRINK)
    return prior


def make_pseudo_mask(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 pseudo mask from a CAM of any size (the GT class's map, values >= 0).

    Write it with `cv2.imwrite(path, mask)`: `cv2.imread` then gives channel 0 = CAM,
    channel 1 = Gaussian prior, channel 2 = 0, as the original code's PNGs.
    """
    cam256 = normalise_cam(cam)
    prior = gaussian_prior(cam256)
    fused = np.stack([cam256 * 255.0, prior.astype(np.float32) * 255.0], axis=2)
    fused = cv2.resize(fused, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    out[..., :2] = fused.astype(np.uint8)  # truncation, as the original's astype(uint8)
    return out
