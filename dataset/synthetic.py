"""Deterministic synthetic data sets in the official CUB-200-2011, ILSVRC2012 and OpenImages30k on-disk layouts.

The real data sets cannot be downloaded where the demo and the tests run, so this module draws small,
photo-like stand-ins with numpy and OpenCV only, written byte-for-byte in the layouts the loaders
read, so the very same loaders, list tools and evaluation run on them:

* `make_cub(root, ...)` writes a `CUB_200_2011` folder: `images/<NNN.Class_Name>/<file>.jpg`,
  `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `bounding_boxes.txt`
  (`<id> <x> <y> <width> <height>`, floats, x + width = rightmost object pixel + 1), `classes.txt`
  and `segmentations/<NNN.Class_Name>/<file>.png` (0 / 255 masks).
* `make_openimages(root, ...)` writes OpenImages30k as wsolevaluation publishes it: images, instance and
  ignore masks under `dataset/OpenImages/<split>/<class>/`, metadata under `metadata/OpenImages/<split>/`.
* `make_folder(root, ...)` writes a user's own data as it often comes: class folders (nested, PNG and
  JPEG), a `boxes.csv` of the objects and a folder of new unlabelled images (for `prepare.py folder`).
* `make_imagenet(root, ...)` writes `train/<synset>/<synset>_<k>.JPEG`, `val/ILSVRC2012_val_%08d.JPEG`
  (flat, or under `val/<synset>/`), `box/ILSVRC2012_val_%08d.xml` (PASCAL-VOC XML, 0-based integer
  pixel coordinates, xmax/ymax = rightmost/bottom object pixel, inclusive) and `LOC_synset_mapping.txt`.
  Every fourth validation image (index 1, 5, 9...) holds two objects of its class, and the next one
  (index 2, 6, 10...) an extra object of another synset, so the evaluation's "max IoU over the boxes
  of the image's class, ignore other classes" rule is exercised. The first object of each XML is of
  the image's class.

What the images look like, and why:
* one textured object per image (two for the multi-object val images), whose appearance is class
  specific on three independent cues -- shape family (blob, star, rounded rectangle, triangle), colour
  and texture pattern (stripes, dots, checker, rings, chevrons) -- with jitter in hue, size, aspect and
  rotation, so a small CAM network trained from scratch on a CPU learns it in minutes, and the class
  evidence covers the whole object (texture everywhere) rather than one part;
* the object is a single filled polygon (one connected region) covering about 10-45 % of the image
  (`make_cub(area_range=...)` draws others), placed with a bias away from the centre, so a fixed box
  scores well below a model that actually localises (at the demo's sizes the best centred box scores
  60, its central half 8.75: utils/evaluation/fixed_boxes.py);
* backgrounds are muted (low-saturation) gradients with a soft horizon, low-frequency and fine noise
  and a few small distractor shapes drawn from one class-independent distribution (so they carry no
  class information), then the whole image gets a mild blur, sensor noise and JPEG (quality 90).

Everything is drawn from `numpy.random.default_rng` streams keyed by (seed, split, index), so the same
arguments give byte-identical files on the same numpy/OpenCV build and CPU.

Command line (from any directory):
    python dataset/synthetic.py cub --root /tmp/CUB_200_2011 --classes 4 --train_per_class 60
    python dataset/synthetic.py imagenet --root /tmp/ILSVRC --val_layout synset
    python dataset/synthetic.py folder --root /tmp/my-images      # data/<class>/..., boxes.csv, new/
    python dataset/synthetic.py openimages --root /tmp/oi   # dataset/OpenImages/, metadata/OpenImages/ (masks)
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from utils.errors import UserError  # noqa: E402

JPEG_QUALITY = 90
MARKER = ".synthetic"  # in every root this module writes: a rerun may write over its files, never over others

# Real CUB-200-2011 class folder names (without the "NNN." prefix), in the official order, so the
# synthetic set looks like a prefix of the real one. Beyond this table, names are made up.
CUB_CLASS_NAMES = (
    "Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
    "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird",
    "Red_winged_Blackbird", "Rusty_Blackbird", "Yellow_headed_Blackbird", "Bobolink", "Indigo_Bunting",
    "Lazuli_Bunting", "Painted_Bunting", "Cardinal", "Spotted_Catbird", "Gray_Catbird",
    "Yellow_breasted_Chat",
)

# The first ILSVRC2012 synsets with their LOC_synset_mapping.txt descriptions.
IMAGENET_SYNSET_WORDS = {
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n01484850": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    "n01491361": "tiger shark, Galeocerdo cuvieri",
    "n01494475": "hammerhead, hammerhead shark",
    "n01496331": "electric ray, crampfish, numbfish, torpedo",
    "n01498041": "stingray",
    "n01514668": "cock",
    "n01514859": "hen",
    "n01518878": "ostrich, Struthio camelus",
}
DEFAULT_SYNSETS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")

_SHAPES = ("blob", "star", "rounded_rect", "triangle")
_PATTERNS = ("stripes", "dots", "checker", "rings", "chevrons")
# OpenCV hues (0..180) chosen far apart for the first classes: red-orange, blue, green, purple, yellow...
_BASE_HUES = (4, 112, 62, 148, 26, 88, 168, 44, 128, 78)

# Stream tags: each (seed, tag, index) triple gets its own generator, so e.g. adding training images
# does not change the validation images. (Tag 5 drew the bad-input test files, now tests/bad_files.py: the
# others keep their numbers, so the data sets stay byte for byte what they were.)
_TAG_CUB, _TAG_IN_TRAIN, _TAG_IN_VAL, _TAG_IN_ORDER, _TAG_FOLDER, _TAG_OPENIMAGES = 1, 2, 3, 4, 6, 7


# --------------------------------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Appearance:
    """The class-specific look of an object (before per-image jitter)."""
    shape: str
    pattern: str
    hue: int          # OpenCV hue 0..180 of the main colour
    dark_hue_shift: int  # hue shift of the pattern's second colour


def class_appearance(index: int) -> Appearance:
    """Appearance of class `index` (0-based). The first four classes differ in shape, pattern AND
    colour; later ones cycle the cues with different strides so no two classes share all three."""
    shape = _SHAPES[index % len(_SHAPES)]
    pattern = _PATTERNS[(index + 2 * (index // len(_SHAPES))) % len(_PATTERNS)]
    if index < len(_BASE_HUES):
        hue = _BASE_HUES[index]
    else:  # golden-ratio hue sequence: well spread for any number of classes
        hue = int((index * 0.618034 % 1.0) * 180)
    return Appearance(shape, pattern, hue, dark_hue_shift=(index * 37) % 30 - 15)


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h % 180, np.clip(s, 0, 255), np.clip(v, 0, 255)]]], dtype=np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Shapes: polygons in a unit object frame, then scaled/rotated/placed
# --------------------------------------------------------------------------------------------------

def _chaikin(poly: np.ndarray, iterations: int) -> np.ndarray:
    """Corner cutting: rounds polygon corners (star tips, triangle corners) so shapes look organic."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, axis=0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], axis=1).reshape(-1, 2)
    return poly


def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """A closed polygon (N x 2, float) of radius about 1 around the origin for a shape family."""
    if shape == "blob":
        # An ellipse-like blob: a few low harmonics on the radius keep it convex-ish and one region.
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0.0, 0.09) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "star":
        # 5-6 fat points; inner radius >= 0.5 so the star is solid, not a thin spider.
        n = int(rng.integers(5, 7))
        inner = rng.uniform(0.5, 0.6)
        t = np.arange(2 * n) * np.pi / n - np.pi / 2
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner) * rng.uniform(0.93, 1.07, 2 * n)
        return _chaikin(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 2)
    if shape == "rounded_rect":
        hw, hh = 1.0, rng.uniform(0.6, 0.85)
        cr = rng.uniform(0.2, 0.35)
        pts = []
        for (cx, cy, a0) in ((hw - cr, hh - cr, 0.0), (-hw + cr, hh - cr, 0.5 * np.pi),
                             (-hw + cr, -hh + cr, np.pi), (hw - cr, -hh + cr, 1.5 * np.pi)):
            a = a0 + np.linspace(0, 0.5 * np.pi, 10)
            pts.append(np.stack([cx + cr * np.cos(a), cy + cr * np.sin(a)], axis=1))
        return np.concatenate(pts)
    if shape == "triangle":
        t = np.array([-90.0, 30.0, 150.0]) + rng.uniform(-12, 12, 3)
        t = np.deg2rad(t)
        tri = np.stack([np.cos(t), np.sin(t)], axis=1)
        # Densify the edges before rounding so only the corners get cut.
        edges = [tri[i] + np.linspace(0, 1, 8, endpoint=False)[:, None] * (tri[(i + 1) % 3] - tri[i])
                 for i in range(3)]
        return _chaikin(np.concatenate(edges), 3)
    raise ValueError(f"unknown shape {shape!r}")


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _offcentre(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A coordinate in [lo, hi] biased towards the ends (Beta(0.4, 0.4)): objects are often
    off-centre, so a fixed centre box is a poor localiser."""
    if hi <= lo:
        return 0.5 * (lo + hi)
    return lo + (hi - lo) * float(rng.beta(0.4, 0.4))


@dataclass
class _Placed:
    poly: np.ndarray       # N x 2 image-space polygon
    centre: np.ndarray     # (x, y)
    angle: float           # radians, the object frame's rotation (for the texture)
    scale: float           # pixels per unit (for the texture period)


def _place_object(rng: np.random.Generator, shape: str, h: int, w: int, area_range: tuple[float, float],
                  avoid: Sequence[tuple[int, int, int, int]] = (), gap: int = 4) -> Optional[_Placed]:
    """Scale, stretch, rotate and place one shape fully inside the image, covering a fraction of the
    image area drawn from `area_range`, not overlapping the boxes in `avoid` (x0, y0, x1, y1 inclusive).
    None if it cannot be placed in a reasonable number of tries."""
    for attempt in range(60):
        unit = _unit_polygon(shape, rng)
        aspect = float(np.exp(rng.uniform(np.log(0.65), np.log(1.55))))
        unit = unit * np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)])
        angle = float(rng.uniform(0, 2 * np.pi))
        c, s = np.cos(angle), np.sin(angle)
        unit = unit @ np.array([[c, s], [-s, c]])
        target = rng.uniform(*area_range) * h * w
        scale = np.sqrt(target / _polygon_area(unit))
        margin = int(rng.integers(1, 4)) if rng.random() < 0.3 else int(rng.integers(3, 12))
        lo, hi = unit.min(axis=0), unit.max(axis=0)
        # Shrink if the object would not fit; accept the smaller area only if it stays >= 60 % of the
        # lower bound (else draw another rotation/aspect, which usually fits better).
        fit = min((w - 1 - 2 * margin) / (hi[0] - lo[0]), (h - 1 - 2 * margin) / (hi[1] - lo[1]))
        if fit < scale:
            if _polygon_area(unit) * fit ** 2 < 0.6 * area_range[0] * h * w and attempt < 40:
                continue
            scale = fit
        lo, hi = lo * scale, hi * scale
        cx = _offcentre(rng, margin - lo[0], w - 1 - margin - hi[0])
        cy = _offcentre(rng, margin - lo[1], h - 1 - margin - hi[1])
        box = (cx + lo[0] - gap, cy + lo[1] - gap, cx + hi[0] + gap, cy + hi[1] + gap)
        if any(box[0] <= a[2] and a[0] <= box[2] and box[1] <= a[3] and a[1] <= box[3] for a in avoid):
            continue
        return _Placed(unit * scale + np.array([cx, cy]), np.array([cx, cy]), angle, float(scale))
    return None


def _fill_mask(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Binary (0/255) mask of a polygon, sub-pixel vertex precision, no anti-aliasing (so the mask is
    exactly the set of object pixels and the box is exactly its extent)."""
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    return mask


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def _noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
    """Smooth random field (float32, std ~1) with features about `cell` pixels wide."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    g = rng.standard_normal((gh, gw, channels), dtype=np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _muted(rng: np.random.Generator, v_lo: float, v_hi: float, s_hi: float = 100) -> np.ndarray:
    return _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(15, s_hi), rng.uniform(v_lo, v_hi))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, cluttered but object-free scene (float32 BGR, 0..255).

    Saturation stays well below the objects' (and the objects' pattern contrast above the
    background's), so "where is the object" has a clear answer, while the clutter -- gradients,
    multi-scale noise, out-of-focus blobs, small shapes and grass-like strokes -- keeps a plain
    "anything not flat" rule from working. All of it is class-independent.
    """
    # Everything smooth is built at half resolution and upscaled: same look, a quarter of the work.
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    yy = np.arange(h2, dtype=np.float32)[:, None]
    xx = np.arange(w2, dtype=np.float32)[None, :]
    # Two regions (sky/ground, wall/floor, water/shore) split by a soft, tilted horizon, each a
    # vertical gradient between two muted colours.
    top = (_muted(rng, 120, 235), _muted(rng, 110, 225))
    bot = (_muted(rng, 60, 190), _muted(rng, 50, 180))
    horizon = rng.uniform(0.2, 0.8) * h2 + (xx - w2 / 2) * np.float32(np.tan(rng.uniform(-0.3, 0.3)))
    below = (1.0 / (1.0 + np.exp(-np.clip((yy - horizon) / rng.uniform(1.5, 15), -30, 30))))[..., None]
    g = (yy / max(h2 - 1, 1))[..., None]
    img = ((top[0] * (1 - g) + top[1] * g) * (1 - below) + (bot[0] * (1 - g) + bot[1] * g) * below)
    img = img.astype(np.float32)
    # Large- and mid-scale luminance texture (foliage, sand, water) and a weaker colour cast variation.
    lum = (_noise(rng, h2, w2, rng.uniform(12, 30)) * rng.uniform(6, 14)
           + _noise(rng, h2, w2, rng.uniform(3, 7)) * rng.uniform(3, 8))
    img += lum + _noise(rng, h2, w2, 20, 3) * 3
    # Out-of-focus blobs (bokeh, bushes, rocks far away): big, soft, muted. Drawn and blurred at a
    # quarter of the full resolution (they are smooth anyway; a full-size blur this wide is slow).
    sh, sw = h2 // 2 + 1, w2 // 2 + 1
    layer = np.zeros((sh, sw, 3), np.float32)
    alpha = np.zeros((sh, sw), np.float32)
    cover = np.zeros((sh, sw), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        c = (int(rng.integers(0, sw)), int(rng.integers(0, sh)))
        ax = (max(1, int(rng.uniform(0.08, 0.25) * sw)), max(1, int(rng.uniform(0.08, 0.25) * sh)))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(layer, c, ax, ang, 0, 360, tuple(float(v) for v in _muted(rng, 60, 220, s_hi=80)), -1)
        cv2.ellipse(alpha, c, ax, ang, 0, 360, float(rng.uniform(0.25, 0.6)), -1)
        cv2.ellipse(cover, c, ax, ang, 0, 360, 1.0, -1)
    sig = rng.uniform(1.5, 3.5)
    blur = [cv2.resize(cv2.GaussianBlur(a, (0, 0), sig), (w2, h2), interpolation=cv2.INTER_LINEAR)
            for a in (layer, alpha, cover)]
    # Dividing by the blurred coverage keeps the blob colour instead of fading it to black at the rim.
    layer, alpha, cover = blur[0], blur[1][..., None], blur[2][..., None]
    img = img * (1 - alpha) + layer / np.maximum(cover, 1e-3) * alpha
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    # Fine grain at full resolution.
    img += _noise(rng, h, w, rng.uniform(2, 4)) * np.float32(rng.uniform(1, 5))
    # Grass/reed strokes in the lower region, sometimes: fine, low-contrast clutter.
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(15, 60))):
            x, y = int(rng.integers(0, w)), int(rng.uniform(0.4, 1.0) * h)
            ln = rng.uniform(4, 14)
            a = rng.uniform(-2.0, -1.1)
            shade = float(rng.uniform(-25, 25))
            col = tuple(float(v) for v in np.clip(img[min(y, h - 1), x] + shade, 0, 255))
            cv2.line(img, (x, y), (int(x + ln * np.cos(a)), int(y + ln * np.sin(a))), col, 1, cv2.LINE_AA)
    # Small distractor shapes: pebbles, twigs, leaves, litter. Muted colours near the background's.
    mean = img.mean(axis=(0, 1))
    for _ in range(int(rng.integers(3, 10))):
        col = tuple(float(v) for v in np.clip(
            mean + rng.normal(0, 20, 3) + rng.choice([-40.0, 40.0]), 0, 255))
        kind = rng.integers(0, 4)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = max(3, int(rng.uniform(0.02, 0.07) * min(h, w)))
        if kind == 0:
            cv2.ellipse(img, (x, y), (size, max(2, int(size * rng.uniform(0.4, 1.0)))),
                        float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
        elif kind == 1:
            d = rng.normal(0, 1, 2)
            d = d / (np.linalg.norm(d) + 1e-6) * size * rng.uniform(2, 4)
            cv2.line(img, (x, y), (int(x + d[0]), int(y + d[1])), col, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 2:
            rect = ((x, y), (size * rng.uniform(1, 2), size * rng.uniform(0.5, 1)), rng.uniform(0, 180))
            cv2.fillPoly(img, [cv2.boxPoints(rect).astype(np.int32)], col, cv2.LINE_AA)
        else:
            pts = np.array([x, y]) + rng.normal(0, size * 0.7, (5, 2))
            cv2.polylines(img, [pts.astype(np.int32)], False, col, 1, cv2.LINE_AA)
    return img


def _texture(app: Appearance, placed: _Placed, rng: np.random.Generator,
             box: tuple[int, int, int, int]) -> np.ndarray:
    """The object's colour over its box (x0, y0, x1, y1 inclusive), float32 BGR."""
    x0, y0, x1, y1 = box
    yy = np.arange(y0, y1 + 1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1 + 1, dtype=np.float32)[None, :]
    dx, dy = xx - np.float32(placed.centre[0]), yy - np.float32(placed.centre[1])
    c, s = np.float32(np.cos(placed.angle)), np.float32(np.sin(placed.angle))
    u, v = dx * c + dy * s, -dx * s + dy * c  # object frame, so the pattern turns with the object
    period = np.float32(placed.scale * rng.uniform(0.32, 0.45))  # ~5-7 repeats across the object
    ph_u, ph_v = rng.uniform(0, 1, 2).astype(np.float32)
    u, v = u / period + ph_u, v / period + ph_v
    if app.pattern == "stripes":
        t = np.sin(2 * np.pi * u)
    elif app.pattern == "dots":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        t = 0.3 - np.sqrt(fu * fu + fv * fv)
    elif app.pattern == "checker":
        t = np.sin(np.pi * u) * np.sin(np.pi * v)
    elif app.pattern == "rings":
        t = np.sin(2 * np.pi * np.sqrt(dx * dx + dy * dy) / period)
    elif app.pattern == "chevrons":
        t = np.sin(2 * np.pi * (u + 1.2 * np.abs(v - np.floor(v) - 0.5)))
    else:
        raise ValueError(f"unknown pattern {app.pattern!r}")
    t = (0.5 + 0.5 * np.tanh(6.0 * t))[..., None]  # crisp but not aliased: ~1 px transition
    hue = app.hue + rng.uniform(-5, 5)
    main = _hsv_to_bgr(hue, rng.uniform(185, 255), rng.uniform(185, 245))
    dark = _hsv_to_bgr(hue + app.dark_hue_shift, rng.uniform(150, 230), rng.uniform(45, 90))
    col = main * (1 - t) + dark * t
    # Directional light across the object: a hint of volume, and no flat-colour shortcut.
    light = rng.normal(0, 1, 2)
    light /= np.linalg.norm(light) + 1e-6
    shade = 1.0 + 0.18 * np.clip((dx * np.float32(light[0]) + dy * np.float32(light[1]))
                                 / np.float32(placed.scale + 1e-6), -1.5, 1.5)
    return (col * shade[..., None]).astype(np.float32)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera-ish degradations: mild blur and sensor noise (JPEG comes at encoding)."""
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 0.9))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(2.0)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, h: int, w: int, classes: Sequence[int],
                 area_range: tuple[float, float] = (0.10, 0.45)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw a scene holding one object of each class index in `classes` (non-overlapping boxes).

    Returns the BGR uint8 image and one 0/255 mask per object, in the order of `classes`. Each
    object's area fraction is drawn from `area_range`; with several objects pass a smaller range.
    """
    img = _background(rng, h, w)
    masks: list[np.ndarray] = []
    boxes: list[tuple[int, int, int, int]] = []
    for cls in classes:
        app = class_appearance(cls)
        lo, hi = area_range
        placed = None
        for _ in range(6):  # crowded canvas: retry with smaller objects
            placed = _place_object(rng, app.shape, h, w, (lo, hi), avoid=boxes)
            if placed is not None:
                break
            lo, hi = lo * 0.75, hi * 0.75
        if placed is None:
            raise RuntimeError(f"cannot place {len(classes)} objects in a {w}x{h} image")
        mask = _fill_mask(placed.poly, h, w)
        box = mask_box(mask)
        x0, y0, x1, y1 = box
        crop = img[y0:y1 + 1, x0:x1 + 1]
        crop[...] = np.where(mask[y0:y1 + 1, x0:x1 + 1, None] > 0, _texture(app, placed, rng, box), crop)
        masks.append(mask)
        boxes.append(box)
    return _finish(img, rng), masks


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1), all inclusive pixel indices, of a mask's non-zero pixels."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask")
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _write_jpeg(path: str, img: np.ndarray) -> None:
    # cv2.imwrite takes BGR (or 1-channel) arrays; imencode + write gives a clear error on failure.
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError(f"cannot encode JPEG for {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _write_png(path: str, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"cannot encode PNG for {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _rng(seed: int, tag: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, *[int(i) for i in index]])


def _image_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    """Width and height drawn independently, so aspect ratios vary as in real photos."""
    w = int(rng.integers(min_size, max_size + 1))
    h = int(rng.integers(min_size, max_size + 1))
    return h, w


def _check_sizes(min_size: int, max_size: int) -> None:
    if not 48 <= min_size <= max_size:
        raise ValueError(f"need 48 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")


# --------------------------------------------------------------------------------------------------
# CUB-200-2011
# --------------------------------------------------------------------------------------------------

def claim_root(root: str, writes: Sequence[str], force: bool) -> None:
    """Take `root` for a synthetic data set whose top-level entries are `writes`: refuse a root where any of them
    exists and that this module did not write (no MARKER: a real data set, whose annotation files would be
    overwritten), unless `force`; then mark it as ours."""
    found = [w for w in writes if os.path.lexists(os.path.join(root, w))]
    if found and not force and not os.path.isfile(os.path.join(root, MARKER)):
        raise UserError(f"{root} already holds {', '.join(found)}, not written by dataset/synthetic.py: a synthetic "
                        f"data set there would overwrite its files. Choose another folder (dataset/synthetic.py "
                        f"--force writes over it)")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        f.write("written by dataset/synthetic.py\n")


def cub_class_folders(num_classes: int) -> list[str]:
    """`001.Black_footed_Albatross`, ... (made-up names past the table of real ones)."""
    names = [CUB_CLASS_NAMES[i] if i < len(CUB_CLASS_NAMES) else f"Synthetic_Bird_{i + 1:03d}"
             for i in range(num_classes)]
    return [f"{i + 1:03d}.{n}" for i, n in enumerate(names)]


def make_cub(root: str, num_classes: int = 4, train_per_class: int = 60, val_per_class: int = 20,
             seed: int = 0, min_size: int = 160, max_size: int = 260, segmentations: bool = True,
             force: bool = False, area_range: tuple[float, float] = (0.10, 0.45)) -> str:
    """Write a synthetic `CUB_200_2011` folder at `root` (created; the files of an earlier synthetic set are
    overwritten, others left alone; a real data set there is refused unless `force`) and return `root`.

    Per class, `train_per_class` images get `1` in train_test_split.txt and `val_per_class` get `0`,
    interleaved at random like the real split. Ids run 1..N in class-folder then file-name order.
    `area_range`: the fraction of the image each object covers (drawn uniformly; smaller objects, placed
    off-centre, make fixed boxes score low).
    """
    if num_classes < 1 or train_per_class < 0 or val_per_class < 0 or train_per_class + val_per_class < 1:
        raise ValueError("need num_classes >= 1 and at least one image per class")
    if num_classes > 200:
        raise ValueError("CUB-200-2011 has at most 200 classes")
    _check_sizes(min_size, max_size)
    folders = cub_class_folders(num_classes)
    claim_root(root, ("images", "segmentations", "images.txt", "image_class_labels.txt", "train_test_split.txt",
                      "bounding_boxes.txt", "classes.txt"), force)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, labels, split, bboxes = [], [], [], []
    img_id = 0
    for c, folder in enumerate(folders):
        name = folder.split(".", 1)[1]
        os.makedirs(os.path.join(root, "images", folder), exist_ok=True)
        if segmentations:
            os.makedirs(os.path.join(root, "segmentations", folder), exist_ok=True)
        n = train_per_class + val_per_class
        crng = _rng(seed, _TAG_CUB, c, 1 << 20)
        is_train = np.array([1] * train_per_class + [0] * val_per_class)
        crng.shuffle(is_train)
        # The real file names end in a Flickr-like number; any unique-looking number will do.
        suffixes = crng.choice(np.arange(100, 800000), size=n, replace=False)
        for k in range(n):
            img_id += 1
            rng = _rng(seed, _TAG_CUB, c, k)
            h, w = _image_size(rng, min_size, max_size)
            img, (mask,) = render_scene(rng, h, w, [c], area_range=area_range)
            fname = f"{name}_{k + 1:04d}_{int(suffixes[k])}"
            _write_jpeg(os.path.join(root, "images", folder, fname + ".jpg"), img)
            if segmentations:
                _write_png(os.path.join(root, "segmentations", folder, fname + ".png"), mask)
            x0, y0, x1, y1 = mask_box(mask)
            images.append(f"{img_id} {folder}/{fname}.jpg")
            labels.append(f"{img_id} {c + 1}")
            split.append(f"{img_id} {int(is_train[k])}")
            # CUB convention: x, y = top-left object pixel; x + width = rightmost object pixel + 1.
            bboxes.append(f"{img_id} {x0:.1f} {y0:.1f} {x1 - x0 + 1:.1f} {y1 - y0 + 1:.1f}")
    _write_lines(os.path.join(root, "images.txt"), images)
    _write_lines(os.path.join(root, "image_class_labels.txt"), labels)
    _write_lines(os.path.join(root, "train_test_split.txt"), split)
    _write_lines(os.path.join(root, "bounding_boxes.txt"), bboxes)
    _write_lines(os.path.join(root, "classes.txt"), [f"{i + 1} {f}" for i, f in enumerate(folders)])
    return root


def _write_lines(path: str, lines: Sequence[str], last_newline: bool = True) -> None:
    # "\n" endings on every platform, like the official files (wsolevaluation's end without a final one).
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + ("\n" if last_newline and lines else ""))


# --------------------------------------------------------------------------------------------------
# ImageNet ILSVRC2012
# --------------------------------------------------------------------------------------------------

_SYNSET_RE = re.compile(r"^n\d{8}$")


def _voc_xml(filename: str, w: int, h: int, objects: Sequence[tuple[str, tuple[int, int, int, int]]]) -> str:
    """An ILSVRC2012 val box file (PASCAL-VOC layout, tab-indented like the official ones)."""
    parts = ["<annotation>", "\t<folder>val</folder>", f"\t<filename>{filename}</filename>",
             "\t<source>", "\t\t<database>ILSVRC_2012</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{w}</width>", f"\t\t<height>{h}</height>", "\t\t<depth>3</depth>",
             "\t</size>", "\t<segmented>0</segmented>"]
    for name, (x0, y0, x1, y1) in objects:
        parts += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0}</xmin>", f"\t\t\t<ymin>{y0}</ymin>",
                  f"\t\t\t<xmax>{x1}</xmax>", f"\t\t\t<ymax>{y1}</ymax>", "\t\t</bndbox>", "\t</object>"]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def make_imagenet(root: str, synsets: Sequence[str] = DEFAULT_SYNSETS, train_per_class: int = 40,
                  val_per_class: int = 10, seed: int = 0, val_layout: str = "flat",
                  min_size: int = 160, max_size: int = 260, force: bool = False) -> str:
    """Write a synthetic ILSVRC2012 tree at `root` (train/, val/, box/, LOC_synset_mapping.txt; a real data set
    there is refused unless `force`) and return `root`.

    Validation images are numbered 1..len(synsets)*val_per_class with the classes shuffled, as in the
    real val set. Val image i (0-based) holds two objects of its class if i % 4 == 1, and one extra
    object of another synset if i % 4 == 2 (needs >= 2 synsets); the others one object. Boxes are
    0-based integer pixel indices with inclusive xmax/ymax.
    """
    synsets = list(synsets)
    if not synsets or len(set(synsets)) != len(synsets):
        raise ValueError("synsets must be a non-empty list of distinct ids")
    bad = [s for s in synsets if not _SYNSET_RE.match(s)]
    if bad:
        raise ValueError(f"not WordNet ids like n01440764: {bad}")
    if val_layout not in ("flat", "synset"):
        raise ValueError(f"val_layout must be 'flat' or 'synset', got {val_layout!r}")
    if train_per_class < 0 or val_per_class < 0:
        raise ValueError("image counts must be >= 0")
    _check_sizes(min_size, max_size)
    claim_root(root, ("train", "val", "box", "LOC_synset_mapping.txt"), force)
    for d in ("train", "val", "box"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    # Appearance follows the synset's position in the sorted list (the usual class-index order).
    cls_of = {s: i for i, s in enumerate(sorted(synsets))}

    for s in synsets:
        os.makedirs(os.path.join(root, "train", s), exist_ok=True)
        srng = _rng(seed, _TAG_IN_TRAIN, cls_of[s], 1 << 20)
        # Real train names are <synset>_<number>; draw unique numbers so they look like it.
        nums = srng.choice(np.arange(1, 100000), size=train_per_class, replace=False)
        for k in range(train_per_class):
            rng = _rng(seed, _TAG_IN_TRAIN, cls_of[s], k)
            h, w = _image_size(rng, min_size, max_size)
            img, _ = render_scene(rng, h, w, [cls_of[s]])
            _write_jpeg(os.path.join(root, "train", s, f"{s}_{int(nums[k])}.JPEG"), img)

    val_classes = [s for s in synsets for _ in range(val_per_class)]
    _rng(seed, _TAG_IN_ORDER).shuffle(val_classes)
    for i, s in enumerate(val_classes):
        rng = _rng(seed, _TAG_IN_VAL, i)
        h, w = _image_size(rng, min_size, max_size)
        c = cls_of[s]
        if i % 4 == 1:  # two objects of the image's class
            names, classes, area = [s, s], [c, c], (0.07, 0.18)
        elif i % 4 == 2 and len(synsets) > 1:  # plus one object of another synset
            other = [t for t in synsets if t != s][int(rng.integers(0, len(synsets) - 1))]
            names, classes, area = [s, other], [c, cls_of[other]], (0.07, 0.18)
        else:
            names, classes, area = [s], [c], (0.10, 0.45)
        img, masks = render_scene(rng, h, w, classes, area_range=area)
        fname = f"ILSVRC2012_val_{i + 1:08d}"
        vdir = os.path.join(root, "val") if val_layout == "flat" else os.path.join(root, "val", s)
        os.makedirs(vdir, exist_ok=True)
        _write_jpeg(os.path.join(vdir, fname + ".JPEG"), img)
        xml = _voc_xml(fname + ".JPEG", w, h, [(n, mask_box(m)) for n, m in zip(names, masks)])
        with open(os.path.join(root, "box", fname + ".xml"), "w", encoding="utf-8", newline="\n") as f:
            f.write(xml)

    _write_lines(os.path.join(root, "LOC_synset_mapping.txt"),
                 [f"{s} {IMAGENET_SYNSET_WORDS.get(s, 'synthetic class ' + s)}" for s in sorted(synsets)])
    return root


# --------------------------------------------------------------------------------------------------
# Your own images: class folders
# --------------------------------------------------------------------------------------------------

def make_folder(root: str, num_classes: int = 3, per_class: int = 40, new_images: int = 8, seed: int = 0,
                min_size: int = 160, max_size: int = 260, force: bool = False) -> dict:
    """A user's own data as it often arrives, for `dataset/prepare.py folder` and `localize.py`:

    * `root/data/<Class_Name>/<file>`: every other image a PNG, the rest JPEG; every third one in a
      nested `batch2/` folder (the class is the top folder whatever the depth);
    * `root/boxes.csv`: `relpath,xmin,ymin,xmax,ymax` per object, relpaths from `root/data`, pixel edges
      (xmax = rightmost object pixel + 1), with a header row, as a spreadsheet export would have;
    * `root/new/<file>.jpg`: `new_images` unlabelled scenes (objects of any class) to localise.
    Returns {"data", "boxes", "new"} paths. Other data there is refused unless `force`.
    """
    if num_classes < 1 or per_class < 1 or new_images < 0:
        raise ValueError("need num_classes >= 1, per_class >= 1 and new_images >= 0")
    _check_sizes(min_size, max_size)
    claim_root(root, ("data", "boxes.csv", "new"), force)
    names = [f.split(".", 1)[1] for f in cub_class_folders(num_classes)]
    data, new = os.path.join(root, "data"), os.path.join(root, "new")
    rows = ["relpath,xmin,ymin,xmax,ymax"]
    for c, name in enumerate(names):
        for k in range(per_class):
            rng = _rng(seed, _TAG_FOLDER, c, k)
            h, w = _image_size(rng, min_size, max_size)
            img, (mask,) = render_scene(rng, h, w, [c])
            rel = f"{name}/{'batch2/' if k % 3 == 2 else ''}{name.lower()}_{k + 1:03d}.{'png' if k % 2 else 'jpg'}"
            os.makedirs(os.path.dirname(os.path.join(data, rel)), exist_ok=True)
            (_write_png if k % 2 else _write_jpeg)(os.path.join(data, rel), img)
            x0, y0, x1, y1 = mask_box(mask)
            rows.append(f"{rel},{x0},{y0},{x1 + 1},{y1 + 1}")
    os.makedirs(new, exist_ok=True)
    for k in range(new_images):
        rng = _rng(seed, _TAG_FOLDER, 1 << 20, k)
        h, w = _image_size(rng, min_size, max_size)
        img, _ = render_scene(rng, h, w, [int(rng.integers(0, num_classes))])
        _write_jpeg(os.path.join(new, f"photo_{k + 1:03d}.jpg"), img)
    _write_lines(os.path.join(root, "boxes.csv"), rows)
    return {"data": data, "boxes": os.path.join(root, "boxes.csv"), "new": new}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------
# OpenImages30k (wsolevaluation's layout)
# --------------------------------------------------------------------------------------------------

# Open Images class ids of the form wsolevaluation's folders use (`01226z`, `0bt9lr`, ...)
OPENIMAGES_CLASSES = ("01226z", "0bt9lr", "0bt_c3", "0by6g", "01yrx", "0cmf2", "0dzct", "0k4j")


def _openimages_id(rng: np.random.Generator) -> str:
    return "".join(f"{int(b):02x}" for b in rng.integers(0, 256, 8))  # 16 hex digits, as Open Images ids


def make_openimages(root: str, num_classes: int = 4, train_per_class: int = 40, val_per_class: int = 5,
                    test_per_class: int = 10, seed: int = 0, min_size: int = 160, max_size: int = 260,
                    force: bool = False) -> dict:
    """Write `<root>/dataset/OpenImages/{train,val,test}/<class>/<id>.jpg` and `<root>/metadata/OpenImages/<split>/`
    as wsolevaluation publishes them; returns {"images": ..., "metadata": ...} (the two OpenImages folders).

    Val and test images carry their instance masks beside them (`<id>_m<class>_<8 hex>.png`, 0/255, one per
    annotated instance) and an ignore mask (`<id>_ignore.png`). Image i (0-based, per class and split) holds
    two annotated instances of its class if i % 4 == 1; if i % 4 == 2 a second, unannotated instance whose
    box is the ignore region (as Open Images marks group-of and unlabelled objects); otherwise one instance and
    an empty ignore mask. `localization.txt` has one line per instance mask; only an image's first line names
    its ignore mask. As in their metadata, the files end without a newline, `image_sizes.txt` is empty in every
    split and so is train's `localization.txt`. Objects are placed off-centre at 7-45 % of the image area, so a centre blob scores low.
    """
    if not 1 <= num_classes <= len(OPENIMAGES_CLASSES):
        raise ValueError(f"num_classes must be 1..{len(OPENIMAGES_CLASSES)}, got {num_classes}")
    if min(train_per_class, val_per_class, test_per_class) < 1:
        raise ValueError("image counts must be >= 1")
    _check_sizes(min_size, max_size)
    claim_root(root, ("dataset", "metadata"), force)  # other data there is refused unless `force`
    images, meta = os.path.join(root, "dataset", "OpenImages"), os.path.join(root, "metadata", "OpenImages")
    classes = sorted(OPENIMAGES_CLASSES[:num_classes])
    for tag, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class),
                                              ("test", test_per_class))):
        ids, labels, loc = [], [], []
        for c, cls in enumerate(classes):
            os.makedirs(os.path.join(images, split, cls), exist_ok=True)
            for i in range(per_class):
                rng = _rng(seed, _TAG_OPENIMAGES, tag, c, i)
                h, w = _image_size(rng, min_size, max_size)
                iid = f"{split}/{cls}/{_openimages_id(rng)}"
                two = split != "train" and i % 4 in (1, 2)
                img, masks = render_scene(rng, h, w, [c, c] if two else [c],
                                          area_range=(0.07, 0.18) if two else (0.10, 0.45))
                _write_jpeg(os.path.join(images, iid + ".jpg"), img)
                ids.append(iid + ".jpg")
                labels.append(c)
                if split == "train":
                    continue
                annotated, ignore = (masks, np.zeros((h, w), np.uint8)) if i % 4 != 2 else (masks[:1], masks[1])
                if i % 4 == 2:  # the unannotated instance's box, a few pixels wider
                    x0, y0, x1, y1 = mask_box(ignore)
                    ignore = np.zeros((h, w), np.uint8)
                    ignore[max(0, y0 - 2):y1 + 3, max(0, x0 - 2):x1 + 3] = 255
                ignore_path = iid + "_ignore.png"
                _write_png(os.path.join(images, ignore_path), ignore)
                for k, mask in enumerate(annotated):
                    mask_path = f"{iid}_m{cls}_{_openimages_id(rng)[:8]}.png"
                    _write_png(os.path.join(images, mask_path), mask)
                    loc.append(f"{iid}.jpg,{mask_path},{ignore_path if k == 0 else ''}")
        os.makedirs(os.path.join(meta, split), exist_ok=True)
        # as their metadata/OpenImages/: no final newline; image_sizes.txt empty, and train's localization.txt
        _write_lines(os.path.join(meta, split, "image_ids.txt"), ids, last_newline=False)
        _write_lines(os.path.join(meta, split, "class_labels.txt"), [f"{i},{c}" for i, c in zip(ids, labels)],
                     last_newline=False)
        _write_lines(os.path.join(meta, split, "image_sizes.txt"), [])
        _write_lines(os.path.join(meta, split, "localization.txt"), loc, last_newline=False)
    return {"images": images, "metadata": meta}


def _count_files(root: str, ext: str) -> int:
    return sum(f.endswith(ext) for _, _, files in os.walk(root) for f in files)


def main(argv: Optional[Sequence[str]] = None) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description="Write a small deterministic synthetic data set in the official "
                                "CUB-200-2011 or ILSVRC2012 layout.", formatter_class=fmt)
    sub = p.add_subparsers(dest="dataset", required=True)
    cub = sub.add_parser("cub", help="CUB-200-2011 layout (root = the CUB_200_2011 folder)", formatter_class=fmt)
    cub.add_argument("--root", required=True, help="CUB_200_2011 folder to create")
    cub.add_argument("--classes", type=int, default=4, help="number of classes (001..N)")
    cub.add_argument("--train_per_class", type=int, default=60, help="training images per class")
    cub.add_argument("--val_per_class", type=int, default=20, help="test images per class")
    cub.add_argument("--no_segmentations", action="store_true", help="do not write segmentations/")
    inet = sub.add_parser("imagenet", help="ILSVRC2012 layout (train/, val/, box/)", formatter_class=fmt)
    inet.add_argument("--root", required=True, help="folder to create train/, val/, box/ in")
    inet.add_argument("--synsets", nargs="+", default=list(DEFAULT_SYNSETS), help="WordNet ids of the classes")
    inet.add_argument("--train_per_class", type=int, default=40, help="training images per synset")
    inet.add_argument("--val_per_class", type=int, default=10, help="validation images per synset")
    inet.add_argument("--val_layout", choices=("flat", "synset"), default="flat",
                      help="val/<file> (official) or val/<synset>/<file>")
    fold = sub.add_parser("folder", help="your own images: class folders, boxes.csv and new images to localise",
                          formatter_class=fmt)
    fold.add_argument("--root", required=True, help="folder to create data/<class>/, boxes.csv and new/ in")
    fold.add_argument("--classes", type=int, default=3, help="number of class folders")
    fold.add_argument("--per_class", type=int, default=40, help="images per class folder")
    fold.add_argument("--new_images", type=int, default=8, help="unlabelled images in new/")
    oi = sub.add_parser("openimages", help="OpenImages30k as wsolevaluation publishes it (dataset/OpenImages/, "
                        "metadata/OpenImages/)", formatter_class=fmt)
    oi.add_argument("--root", required=True, help="folder to create dataset/OpenImages/ and metadata/OpenImages/ in")
    oi.add_argument("--classes", type=int, default=4, help="number of classes")
    oi.add_argument("--train_per_class", type=int, default=40, help="train images per class")
    oi.add_argument("--val_per_class", type=int, default=5, help="val images per class")
    oi.add_argument("--test_per_class", type=int, default=10, help="test images per class")
    for sp in (cub, inet, fold, oi):
        sp.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same files)")
        sp.add_argument("--min_size", type=int, default=160, help="smallest image side, px")
        sp.add_argument("--max_size", type=int, default=260, help="largest image side, px")
        sp.add_argument("--force", action="store_true",
                        help="write into a --root that holds a data set this script did not write (its files with "
                             "the synthetic set's names are overwritten)")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        if a.dataset == "cub":
            root = make_cub(a.root, a.classes, a.train_per_class, a.val_per_class, a.seed, a.min_size,
                            a.max_size, segmentations=not a.no_segmentations, force=a.force)
            print(f"wrote CUB-200-2011 layout to {os.path.abspath(root)}: {a.classes} classes, "
                  f"{a.classes * a.train_per_class} train + {a.classes * a.val_per_class} test images"
                  f"{', with segmentations' if not a.no_segmentations else ''} "
                  f"({time.time() - t0:.1f} s)")
        elif a.dataset == "openimages":
            paths = make_openimages(a.root, a.classes, a.train_per_class, a.val_per_class, a.test_per_class, a.seed,
                                    a.min_size, a.max_size, force=a.force)
            print(f"wrote OpenImages30k layout: images and masks in {paths['images']}, metadata in "
                  f"{paths['metadata']}: {a.classes} classes, {a.classes * a.train_per_class} train / "
                  f"{a.classes * a.val_per_class} val / {a.classes * a.test_per_class} test images, "
                  f"{_count_files(paths['images'], '.png')} masks ({time.time() - t0:.1f} s)")
        elif a.dataset == "folder":
            paths = make_folder(a.root, a.classes, a.per_class, a.new_images, a.seed, a.min_size, a.max_size,
                                force=a.force)
            print(f"wrote {a.classes} class folders of {a.per_class} images to {paths['data']}, their boxes to "
                  f"{paths['boxes']} and {a.new_images} new images to {paths['new']} ({time.time() - t0:.1f} s)")
        else:
            root = make_imagenet(a.root, a.synsets, a.train_per_class, a.val_per_class, a.seed, a.val_layout,
                                 a.min_size, a.max_size, force=a.force)
            print(f"wrote ILSVRC2012 layout to {os.path.abspath(root)}: {len(a.synsets)} synsets, "
                  f"{_count_files(os.path.join(root, 'train'), '.JPEG')} train images, "
                  f"{len(a.synsets) * a.val_per_class} val images ({a.val_layout}), "
                  f"{_count_files(os.path.join(root, 'box'), '.xml')} box XMLs, LOC_synset_mapping.txt "
                  f"({time.time() - t0:.1f} s)")
    except (ValueError, UserError) as e:  # bad arguments, another data set at --root: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
