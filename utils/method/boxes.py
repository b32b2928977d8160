"""Boxes from masks, IoU and the SPOL localisation metrics (docs/method.md §6): the seg stage's mask ->
largest contour -> its bounding box -> IoU with the ground truth -> GT-known / Top-1 / Top-5 Loc.

Convention: boxes are `x0 y0 x1 y1` in pixels of the 224 x 224 evaluation frame, x1/y1 exclusive for
predicted boxes (`x + w` of `cv2.boundingRect`), floats for ground truth; IoU without the +1 pixel
term. (The wsolevaluation protocol, with +1 and int boxes, lives in utils/wsol_eval.py.)
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def largest_box(mask: np.ndarray) -> Optional[list]:
    """Bounding box [x0, y0, x1, y1] of the largest contour of a binary mask; None if it is empty."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_TREE,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return [x, y, x + w, y + h]


def iou(a, b) -> float:
    """IoU of two x0 y0 x1 y1 boxes; 0 when they do not overlap. 1e-12 guards an empty union."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / (area_a + area_b - inter + 1e-12))


def best_iou(box: Optional[list], gt_boxes) -> float:
    """Max IoU of a predicted box over the GT boxes of the image's class (0 for no prediction)."""
    if box is None:
        return 0.0
    return max(iou(box, g) for g in gt_boxes)


def localisation_metrics(records: list, threshold: float = 0.5) -> dict:
    """SPOL figures (percent) from per-image records.

    Each record: {"name", "label", "iou", "empty", "top1", "top5", optional "bad"} (top1/top5 None when
    unknown). An empty prediction is a failed localisation and stays in the denominator; "empty" counts the
    images whose predicted mask was empty, not the unreadable ("bad") ones, which are counted apart. Besides the
    image-level accuracies, the mean of per-class accuracies (as PSOL and BAS report) is given.
    """
    if not records:
        raise ValueError("no images were evaluated")
    correct = np.array([r["iou"] > threshold for r in records])
    labels = np.array([r["label"] for r in records])
    out = {"count": len(records), "empty": int(sum(r["empty"] and not r.get("bad") for r in records)),
           "gt_known_loc": 100.0 * correct.mean()}
    columns = {"gt_known_loc": correct}
    if all(r.get("top1") is not None for r in records):
        columns["top1_loc"] = correct & np.array([bool(r["top1"]) for r in records])
        columns["top5_loc"] = correct & np.array([bool(r["top5"]) for r in records])
        columns["top1_cls"] = np.array([bool(r["top1"]) for r in records])
        columns["top5_cls"] = np.array([bool(r["top5"]) for r in records])
        for key in ("top1_loc", "top5_loc", "top1_cls", "top5_cls"):
            out[key] = 100.0 * columns[key].mean()
    classes = np.unique(labels)
    for key, col in columns.items():
        out[f"{key}_class_mean"] = 100.0 * float(np.mean([col[labels == c].mean() for c in classes]))
    return out
