"""wsolevaluation-compatible WSOL metrics: MaxBoxAcc, MaxBoxAccV2 and PxAP (Choe et al., CVPR 2020).

A re-implementation of the evaluation protocol of clovaai/wsolevaluation (`evaluation.py`) that gives the
same figures on the same inputs. Score maps are 224 x 224 float arrays in [0, 1], one `<image_id>.npy` per
image under `--scoremap_root`; ground truth comes from wsolevaluation-format metadata
(`<metadata_root>/<dataset>/<split>/{image_ids,class_labels,image_sizes,localization}.txt`). Boxes follow
the `x0y0x1y1` convention, pixel-inclusive (IoU counts `x1 - x0 + 1` pixels per side). For every CAM
threshold t in `arange(0, 1, interval)` the map is quantised to uint8, binarised at `int(t * max)` (strict
`>`), and the bounding boxes of its contours are scored against the GT boxes; MaxBoxAcc at IoU threshold
δ is the accuracy at the best t. PxAP is the area under the pixel precision-recall curve.

Image ids, and so score-map names, are wsolevaluation's: CUB `<class>/<file>.jpg`; ILSVRC2012 val
`val/ILSVRC2012_val_XXXXXXXX.JPEG`, in their split `test` (their ILSVRC `val` is ImageNetV2); OpenImages
`test/<class>/<id>.jpg`, its masks under `--mask_root` (their `dataset/`, or its `OpenImages/` folder).
`--centre_baseline` scores one fixed centre blob on every image instead of a folder of maps (the paper's
"center baseline"): the figure a method has to beat.

    python -m utils.wsol_eval --scoremap_root out/scoremaps --metadata_root metadata --dataset_name CUB \\
        --split test --cam_curve_interval 0.001 --multi_contour_eval true --json out/wsol.json
    python -m utils.wsol_eval --centre_baseline --metadata_root metadata --mask_root dataset \\
        --dataset_name OpenImages --split test
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from utils.data.datasets import DATASETS as TABLE, by_wsol_name
from utils.errors import UserError, run_main
from utils.data.lists import list_lines, normal_name
from utils.data.pixels import MAX_PIXELS, BadImage, decode, read_bytes, set_max_pixels
from utils.results import npy_header
from utils.engine.outputs import write_atomic, write_text

RESIZE_LENGTH = 224  # the protocol evaluates every map and box in a 224 x 224 frame
DATASETS = tuple(d.wsol_name for d in TABLE.values())  # their names: CUB, ILSVRC, OpenImages


# ----------------------------------------------------------------------------------------------- primitives
def cam_thresholds(cam_curve_interval: float) -> list[float]:
    """The CAM thresholds of the protocol, `list(np.arange(0, 1, interval))`, kept as arange makes them
    (0.35000000000000003, not 0.35): `int(t * max)` depends on the last bit."""
    if not 0 < cam_curve_interval < 1:
        raise UserError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}")
    return list(np.arange(0, 1, cam_curve_interval))


def check_scoremap(scoremap: np.ndarray, name: str = "score map") -> None:
    """Raise UserError unless `scoremap` is a 2-D real array without NaN and with values in [0, 1]."""
    if not isinstance(scoremap, np.ndarray):
        raise UserError(f"{name}: a score map must be a NumPy array, got {type(scoremap).__name__}")
    if scoremap.dtype.kind not in "biuf":
        raise UserError(f"{name}: a score map must hold real numbers, got dtype {scoremap.dtype}")
    if scoremap.ndim != 2:
        raise UserError(f"{name}: a score map must be 2-D (H x W), got shape {scoremap.shape}")
    if scoremap.size == 0:
        raise UserError(f"{name}: the score map is empty (shape {scoremap.shape})")
    if np.isnan(scoremap).any():
        raise UserError(f"{name}: the score map contains NaN")
    lo, hi = scoremap.min(), scoremap.max()
    if lo < 0 or hi > 1:
        raise UserError(f"{name}: score map values must lie in [0, 1], got min {lo} and max {hi}")


def _as_map(scoremap: np.ndarray, name: str = "score map") -> np.ndarray:
    check_scoremap(scoremap, name)
    # wsolevaluation casts every map to float64 (t2n) before scoring it; so do we, so that `* 255` and the
    # histogram edges see the very numbers theirs see
    return scoremap.astype(np.float64, copy=False)


def _levels(image: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binarisation levels `int(t * image.max())` that give distinct binary images: (levels, index of each t).

    Thresholds with the same integer level give the same binary image, and so do levels with no pixel value
    between them (`image > k` equals `image > k'` when no value lies in (k, k']); 1000 thresholds thus need
    at most 256 contour searches, and far fewer on maps that use few grey levels.
    """
    levels = (thresholds * int(image.max())).astype(np.int64)  # float64 product truncated, as int() does
    present = np.flatnonzero(np.bincount(image.ravel(), minlength=256))  # grey values in use, ascending
    keys = np.searchsorted(present, levels, side="right")  # which values stay at or below the level
    _, first, index = np.unique(keys, return_index=True, return_inverse=True)
    return levels[first], index.reshape(-1)


def _level_rects(image: np.ndarray, level: int, multi_contour: bool) -> list:
    """Unclipped boxes [x, y, x + w, y + h] of the contours of `image > level` (uint8 H x W image).

    As wsolevaluation: contours of `cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`, all of them or the
    first of the largest by `cv2.contourArea`, `cv2.boundingRect` of each; [0, 0, 0, 0] when no pixel is
    above the level. A list, not an array: per-level arrays cost more than the contour search on smooth maps.
    """
    _, binary = cv2.threshold(image, thresh=int(level), maxval=255, type=cv2.THRESH_BINARY)
    # [-2] is the contour list in OpenCV 3 (image, contours, hierarchy) and 4+ (contours, hierarchy)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return [(0, 0, 0, 0)]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]  # max() keeps the first of equal areas
    if len(contours) <= 16:
        return [(x, y, x + w, y + h) for x, y, w, h in map(cv2.boundingRect, contours)]
    # noisy maps give thousands of contours: boundingRect of a point set is (min x, min y, max x - min x + 1,
    # max y - min y + 1), so one vectorised min/max per contour replaces a Python call per contour
    points = np.concatenate(contours).reshape(-1, 2)
    starts = np.cumsum([0] + [len(c) for c in contours[:-1]])
    lo = np.minimum.reduceat(points, starts, axis=0)
    hi = np.maximum.reduceat(points, starts, axis=0) + 1
    return np.concatenate([lo, hi], axis=1).tolist()


def _boxes_per_level(image: np.ndarray, levels: np.ndarray, multi_contour: bool) -> tuple[np.ndarray, np.ndarray]:
    """All levels' boxes (N, 4) int64 x0y0x1y1, clipped to (W - 1, H - 1), and the first row of each level."""
    flat: list = []
    starts = np.empty(len(levels), dtype=np.int64)
    for i, level in enumerate(levels):
        starts[i] = len(flat)
        flat.extend(_level_rects(image, int(level), multi_contour))
    boxes = np.array(flat, dtype=np.int64)
    height, width = image.shape
    # x + w is one past the last column; the protocol keeps it, only clipped to the map
    np.minimum(boxes[:, 2], width - 1, out=boxes[:, 2])
    np.minimum(boxes[:, 3], height - 1, out=boxes[:, 3])
    return boxes, starts


def _best_ious(image: np.ndarray, levels: np.ndarray, gt: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Per level, the best IoU of its boxes against the GT boxes (one IoU call for all levels)."""
    boxes, starts = _boxes_per_level(image, levels, multi_contour)
    return np.maximum.reduceat(iou_plus1(boxes, gt).max(axis=1), starts)


def _quantise(scoremap: np.ndarray) -> np.ndarray:
    return (scoremap * 255).astype(np.uint8)


def boxes_at_thresholds(scoremap: np.ndarray, thresholds: Sequence[float],
                        multi_contour: bool) -> list[np.ndarray]:
    """Estimated boxes of a score map at each CAM threshold.

    Args:
        scoremap: (H, W) real array in [0, 1].
        thresholds: CAM thresholds in [0, 1).
        multi_contour: all contours (MaxBoxAccV2) or only the largest one (MaxBoxAcc).
    Returns:
        one (n, 4) int64 array of x0y0x1y1 boxes per threshold (n >= 1; [0, 0, 0, 0] when nothing is above
        the threshold). Thresholds at the same integer level share one read-only array.
    """
    image = _quantise(_as_map(scoremap))
    levels, index = _levels(image, np.asarray(thresholds, dtype=np.float64))
    boxes, starts = _boxes_per_level(image, levels, multi_contour)
    boxes.flags.writeable = False  # thresholds of one level share a view
    per_level = np.split(boxes, starts[1:])
    return [per_level[i] for i in index]


def iou_plus1(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) float64 of x0y0x1y1 boxes, pixel-inclusive: a box [0, 0, 2, 2] covers 3 x 3 pixels.

    A pair whose union is not positive (degenerate boxes) scores 0, as in wsolevaluation.
    """
    a = np.asarray(boxes_a).reshape(-1, 4)[:, None, :]  # n x 1 x 4
    b = np.asarray(boxes_b).reshape(-1, 4)[None, :, :]  # 1 x m x 4
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    ious = inter / np.where(degenerate, 1, union)
    ious[degenerate] = 0
    return ious


def resize_box_224(box: Sequence[float], width: float, height: float,
                   target: int = RESIZE_LENGTH) -> tuple[int, int, int, int]:
    """Rescale an x0y0x1y1 box from a width x height image to target x target, truncating like int()."""
    x0, y0, x1, y1 = map(float, box)
    w, h, t = float(width), float(height), float(target)
    # the order (x * t) / w matters for bit-exact truncation; it is wsolevaluation's
    return int(x0 * t / w), int(y0 * t / h), int(x1 * t / w), int(y1 * t / h)


# ----------------------------------------------------------------------------------------------- evaluators
class BoxEvaluator:
    """MaxBoxAcc over score maps: accumulate one map and its GT boxes (224 frame) per image, then compute.

    `num_correct[δ][i]` counts images whose best IoU at CAM threshold i is >= δ / 100.
    """

    def __init__(self, cam_curve_interval: float = 0.01, iou_thresholds: Iterable[int] = (30, 50, 70),
                 multi_contour: bool = False) -> None:
        self.thresholds = cam_thresholds(cam_curve_interval)
        self._thresholds = np.asarray(self.thresholds, dtype=np.float64)
        self.iou_thresholds = [int(d) for d in iou_thresholds]
        if not self.iou_thresholds or len(set(self.iou_thresholds)) != len(self.iou_thresholds):
            raise UserError(f"IoU thresholds must be distinct and at least one, got {self.iou_thresholds}")
        if any(not 0 <= d <= 100 for d in self.iou_thresholds):
            raise UserError(f"IoU thresholds are percentages in [0, 100], got {self.iou_thresholds}")
        self.multi_contour = bool(multi_contour)
        self.num_correct = {d: np.zeros(len(self.thresholds)) for d in self.iou_thresholds}
        self.count = 0

    def best_ious(self, scoremap: np.ndarray, gt_boxes_224: np.ndarray) -> np.ndarray:
        """Per CAM threshold, the best IoU over all predicted boxes x all GT boxes (float64, len(thresholds))."""
        gt = np.asarray(gt_boxes_224)
        if gt.size == 0 or gt.size % 4:
            raise UserError(f"GT boxes must be an (m, 4) array with m >= 1, got shape {gt.shape}")
        gt = gt.reshape(-1, 4)
        image = _quantise(_as_map(scoremap))
        levels, index = _levels(image, self._thresholds)
        return _best_ious(image, levels, gt, self.multi_contour)[index]

    def accumulate(self, scoremap: np.ndarray, gt_boxes_224: np.ndarray) -> None:
        """Add one image: its (H, W) score map in [0, 1] and its GT boxes (m, 4) x0y0x1y1 in the 224 frame."""
        self.add(self.best_ious(scoremap, gt_boxes_224))

    def add(self, best: np.ndarray) -> None:
        """Add one image given its `best_ious` (computed elsewhere, e.g. in a worker process)."""
        for d in self.iou_thresholds:
            self.num_correct[d] += best >= (d / 100)  # d / 100 exactly as wsolevaluation (0.3, 0.5, 0.7)
        self.count += 1

    def merge(self, other: "BoxEvaluator") -> None:
        """Add another evaluator's counts (another process's share of the images); settings must match."""
        if (other.thresholds != self.thresholds or other.iou_thresholds != self.iou_thresholds
                or other.multi_contour != self.multi_contour):
            raise ValueError("cannot merge box evaluators with different thresholds or contour settings")
        for d in self.iou_thresholds:
            self.num_correct[d] += other.num_correct[d]
        self.count += other.count

    def accuracies(self) -> dict[int, np.ndarray]:
        """Box accuracy (%) at every CAM threshold, per IoU threshold."""
        if self.count == 0:
            raise UserError("no image was evaluated")
        return {d: self.num_correct[d] * 100. / float(self.count) for d in self.iou_thresholds}

    def compute(self) -> dict:
        """{"maxboxacc": {"30": %, ...}, "mean": % over δ, "best_threshold": {"30": t, ...}}."""
        accs = self.accuracies()
        best = {d: a.max() for d, a in accs.items()}
        return {
            "maxboxacc": {str(d): float(v) for d, v in best.items()},
            # np.average of the list, as wsolevaluation, for the same last bit
            "mean": float(np.average([best[d] for d in self.iou_thresholds])),
            "best_threshold": {str(d): float(self.thresholds[int(np.argmax(a))]) for d, a in accs.items()},
        }


class PxAPEvaluator:
    """PxAP: area under the pixel precision-recall curve, from score histograms of GT fore/background pixels."""

    def __init__(self, cam_curve_interval: float = 0.01) -> None:
        self.thresholds = cam_thresholds(cam_curve_interval)
        # bins [0, bw), [bw, 2bw), ..., [1 - bw, 1), [1, 2), [2, 3]: a score of exactly 1 gets its own bin
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.true_hist = np.zeros(len(self.thresholds) + 2)
        self.false_hist = np.zeros(len(self.thresholds) + 2)
        self.count = 0

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> None:
        """Add one image: (H, W) score map in [0, 1]; gt_mask (H, W) uint8, 1 fore, 0 back, 255 ignored."""
        self.add(*self.histograms(scoremap, gt_mask))

    def histograms(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score histograms (over `edges`) of one image's foreground and background pixels."""
        scoremap = _as_map(scoremap)
        gt_mask = np.asarray(gt_mask)
        if gt_mask.shape != scoremap.shape:
            raise UserError(f"GT mask shape {gt_mask.shape} differs from score map shape {scoremap.shape}")
        return (np.histogram(scoremap[gt_mask == 1], bins=self.edges)[0],
                np.histogram(scoremap[gt_mask == 0], bins=self.edges)[0])

    def add(self, true_hist: np.ndarray, false_hist: np.ndarray) -> None:
        """Add one image given its `histograms` (integer counts, so the order of images does not matter)."""
        self.true_hist += true_hist
        self.false_hist += false_hist
        self.count += 1

    def merge(self, other: "PxAPEvaluator") -> None:
        """Add another evaluator's histograms (another process's share of the images); thresholds must match."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge PxAP evaluators with different CAM thresholds")
        self.true_hist += other.true_hist
        self.false_hist += other.false_hist
        self.count += other.count

    def compute(self) -> float:
        """PxAP in %."""
        # reversed cumulative sums: entry i counts pixels predicted positive at the i-th highest edge
        tp = self.true_hist[::-1].cumsum()
        fn = self.true_hist.sum() - tp
        fp = self.false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise UserError("PxAP: no foreground GT pixel in the evaluated masks")
        if ((tp + fp) <= 0).all():
            raise UserError("PxAP: no positive prediction in the evaluated score maps")
        nonzero = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 at empty top bins; masked out below
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


# ----------------------------------------------------------------------------------------------- metadata
# Where the project's val lists sit in wsolevaluation's `metadata/<dataset>/<split>/`, and their image ids: the
# data-set table's wsol_name, wsol_split and wsol_image_id (utils/data/datasets.py). Their ILSVRC split `test` is the
# official 50,000-image ILSVRC2012 val set (ids `val/ILSVRC2012_val_XXXXXXXX.JPEG`); their split `val` is
# ImageNetV2 (ids `val2/<class>/<n>.jpeg`). CUB's split `test` is the official test set (ids `<class>/<file>.jpg`).
IMAGENETV2_PREFIX = "val2/"


def _metadata_folder(metadata_root: str, dataset_name: str, split: str) -> str:
    nested = os.path.join(metadata_root, dataset_name, split)
    for folder in (nested, metadata_root):  # `<root>/<dataset>/<split>/` or that folder itself
        if os.path.isfile(os.path.join(folder, "image_ids.txt")):
            return folder
    if by_wsol_name(dataset_name).imagenetv2_split == split:
        raise UserError(_ILSVRC_VAL + f" ({os.path.join(nested, 'image_ids.txt')} not found)")
    raise UserError(f"metadata file not found: {os.path.join(nested, 'image_ids.txt')} "
                    f"(nor {os.path.join(metadata_root, 'image_ids.txt')})")


_ILSVRC_VAL = ("ILSVRC split 'val' is ImageNetV2 in wsolevaluation (ids val2/...); the ILSVRC2012 validation "
               "images (ids val/ILSVRC2012_val_XXXXXXXX.JPEG) are split 'test': use --split test "
               "(dataset/prepare.py imagenet writes wsol_metadata/ILSVRC/test/)")


def _check_ilsvrc_val(ids: list[str], folder: str) -> None:
    """`--split val` on ILSVRC scores ImageNetV2, as in wsolevaluation; anything else there is a mix-up."""
    other = [i for i in ids if not i.startswith(IMAGENETV2_PREFIX)]
    if other:
        raise UserError(_ILSVRC_VAL + f" ({folder} lists {other[0]})")
    print("note: ILSVRC split 'val' = ImageNetV2 (wsolevaluation's metadata), not the ILSVRC2012 val set",
          file=sys.stderr)


def _rows(path: str, n_fields: int, required: bool = True) -> list[tuple[int, list[str]]]:
    """(line number, comma-separated fields) of the non-blank lines of a metadata file."""
    if not os.path.isfile(path):
        if required:
            raise UserError(f"metadata file not found: {path}")
        return []
    rows = []
    for no, line in list_lines(path):  # UTF-8, a byte-order mark ignored (it would hide in the first id)
        line = line.rstrip("\r\n")
        fields = line.split(",")
        if len(fields) != n_fields:
            raise UserError(f"{path}:{no}: expected {n_fields} comma-separated fields, got {line!r}")
        rows.append((no, fields))
    return rows


def _relative(path: str, no: int, rel: str, what: str = "image id") -> str:
    """An image id or mask path on line `no` of the metadata file `path`, in its normal form (utils/data/lists.py's
    `normal_name`: `./a/b.jpg` is `a/b.jpg`, so a repeat is seen); one that leaves the score-map or mask folder
    (absolute, or with '..': files elsewhere would be read) is an error naming the line."""
    try:
        return normal_name(rel)
    except ValueError as e:
        raise UserError(f"{path}:{no}: {what} {e}: ids and mask paths are relative to the score-map and mask "
                        f"folders, as <class>/<file>.jpg") from None


def _image_ids(path: str) -> list[str]:
    """The ids of image_ids.txt (normal form): each once (a repeat would be scored twice), none leaving the
    score-map and mask folders."""
    first: dict = {}
    for no, (iid,) in _rows(path, 1):
        iid = _relative(path, no, iid)
        if first.setdefault(iid, no) != no:
            raise UserError(f"{path}:{no}: image id {iid} is listed twice (lines {first[iid]} and {no}): "
                            f"each image is scored once; remove the repeat")
    if not first:
        raise UserError(f"{path} lists no image")
    return list(first)


def read_metadata(metadata_root: str, dataset_name: str, split: str) -> dict:
    """Read wsolevaluation metadata.

    Returns {"folder", "image_ids": [str], "class_labels": {id: int}} plus, for CUB/ILSVRC,
    "image_sizes": {id: (w, h)} and "boxes": {id: [(x0, y0, x1, y1) floats in the original image]},
    for OpenImages "mask_paths": {id: [str]} and "ignore_paths": {id: str} (relative to the mask root).
    """
    folder = _metadata_folder(metadata_root, dataset_name, split)
    dataset = by_wsol_name(dataset_name)

    def path(name: str) -> str:
        return os.path.join(folder, name)

    ids = _image_ids(path("image_ids.txt"))
    if dataset.imagenetv2_split == split:
        _check_ilsvrc_val(ids, folder)
    meta: dict = {"folder": folder, "image_ids": ids, "class_labels": {}}
    for no, (iid, label) in _rows(path("class_labels.txt"), 2, required=False):  # not needed to score
        try:
            meta["class_labels"][_relative(path("class_labels.txt"), no, iid)] = int(label)
        except ValueError:
            raise UserError(f"{path('class_labels.txt')}:{no}: label {label!r} is not an integer") from None
    loc = path("localization.txt")
    if not dataset.boxes:  # OpenImages: `id,mask_path,ignore_path` lines
        meta["mask_paths"], meta["ignore_paths"] = {}, {}
        for no, (iid, mask, ignore) in _rows(loc, 3):
            iid, mask = _relative(loc, no, iid), _relative(loc, no, mask, "mask path")
            ignore = ignore and _relative(loc, no, ignore, "ignore-mask path")  # an image's later lines name none
            meta["mask_paths"].setdefault(iid, []).append(mask)
            if ignore or iid not in meta["ignore_paths"]:
                meta["ignore_paths"][iid] = ignore
        missing = [i for i in ids if i not in meta["mask_paths"]]
    else:
        meta["image_sizes"], meta["boxes"] = {}, {}
        for no, (iid, w, h) in _rows(path("image_sizes.txt"), 3):
            try:
                size = (int(w), int(h))
            except ValueError:
                raise UserError(f"{path('image_sizes.txt')}:{no}: width/height must be integers") from None
            if min(size) <= 0:
                raise UserError(f"{path('image_sizes.txt')}:{no}: width/height must be positive")
            meta["image_sizes"][_relative(path("image_sizes.txt"), no, iid)] = size
        for no, (iid, *coords) in _rows(loc, 5):
            iid = _relative(loc, no, iid)
            try:
                x0, y0, x1, y1 = map(float, coords)
            except ValueError:
                raise UserError(f"{loc}:{no}: box coordinates must be numbers") from None
            if min(x0, y0) < 0 or x1 < x0 or y1 < y0:  # wsolevaluation rejects these too
                raise UserError(f"{loc}:{no}: box {coords} is not x0,y0,x1,y1 with 0 <= x0 <= x1, 0 <= y0 <= y1")
            meta["boxes"].setdefault(iid, []).append((x0, y0, x1, y1))
        missing = [i for i in ids if i not in meta["boxes"]]
        no_size = [i for i in ids if i not in meta["image_sizes"]]
        if no_size:
            raise UserError(f"{path('image_sizes.txt')} has no line for {len(no_size)} image(s), e.g. {no_size[0]}")
    if missing:
        raise UserError(f"{loc} has no annotation for {len(missing)} image(s), e.g. {missing[0]}")
    return meta


# ----------------------------------------------------------------------------------------------- files
def centre_scoremap(size: int = RESIZE_LENGTH) -> np.ndarray:
    """The centre baseline's map: (size, size) float32, an isotropic Gaussian at the image centre (sigma =
    size / 4), min-max normalised to [0, 1]. PxAP depends only on the order of the pixel scores (up to the
    CAM-threshold bins), so every sigma ranks pixels alike: by their distance to the centre."""
    y, x = np.mgrid[:size, :size] + 0.5  # pixel centres
    d2 = (x - size / 2) ** 2 + (y - size / 2) ** 2
    g = np.exp(-d2 / (2 * (size / 4) ** 2))
    return ((g - g.min()) / (g.max() - g.min())).astype(np.float32)


def load_scoremap(scoremap_root: str, image_id: str) -> np.ndarray:
    """`<scoremap_root>/<image_id>.npy` (wsolevaluation's name), else `<image_id without extension>.npy`."""
    path = os.path.join(scoremap_root, image_id + ".npy")
    if not os.path.isfile(path):
        alt = os.path.join(scoremap_root, os.path.splitext(image_id)[0] + ".npy")
        if not os.path.isfile(alt):
            # maps saved by file name alone (as the project did before it followed wsolevaluation's ids)
            flat = os.path.join(scoremap_root, os.path.basename(image_id) + ".npy")
            hint = (f" ({flat} exists, but maps are found by their full image id: <scoremap_root>/<image_id>.npy)"
                    if flat != path and os.path.isfile(flat) else "")
            raise UserError(f"score map not found: {path}{hint}")
        path = alt
    expected = f"a 2-D float .npy array, np.save of the {RESIZE_LENGTH} x {RESIZE_LENGTH} map"
    try:
        with open(path, "rb") as f:
            # the magic first: on other bytes np.load would try a pickle and advise allow_pickle
            if npy_header(f, path, expected).hasobject:
                raise UserError(f"{path} holds Python objects, not numbers (expected {expected})")
            f.seek(0)
            scoremap = np.load(f, allow_pickle=False)  # never unpickle files from elsewhere
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read score map {path}: {e} (expected {expected})") from None
    check_scoremap(scoremap, path)
    if scoremap.shape != (RESIZE_LENGTH, RESIZE_LENGTH):
        # GT boxes and masks live in the 224 x 224 frame; another size would be scored against the wrong pixels
        raise UserError(f"{path}: score maps must be {RESIZE_LENGTH} x {RESIZE_LENGTH}, got {scoremap.shape}")
    return scoremap


def _read_mask(path: str) -> np.ndarray:
    """A grayscale mask as float32, resized to 224 x 224 with nearest neighbours (wsolevaluation's loader). A
    header over the pixel limit (--max-pixels) is refused before it is decoded, as the stages refuse images."""
    try:
        mask = decode(path, read_bytes(path), cv2.IMREAD_GRAYSCALE) if os.path.isfile(path) else None
    except BadImage as e:
        raise UserError(str(e)) from None
    if mask is None:
        raise UserError(f"mask not found or unreadable: {path}")
    return cv2.resize(np.float32(mask), (RESIZE_LENGTH, RESIZE_LENGTH), interpolation=cv2.INTER_NEAREST)


def openimages_mask(mask_root: str, mask_paths: Sequence[str], ignore_path: str) -> np.ndarray:
    """GT mask (224, 224) uint8: 1 on any instance, 255 on the ignore box outside instances, 0 elsewhere.

    Paths are relative to `<mask_root>/OpenImages` (where wsolevaluation looks) or to `<mask_root>` itself.
    """
    def resolve(rel: str) -> str:
        for path in (os.path.join(mask_root, "OpenImages", rel), os.path.join(mask_root, rel)):
            if os.path.isfile(path):
                return path
        raise UserError(f"mask not found: {rel} (looked for {os.path.join(mask_root, 'OpenImages', rel)} and "
                        f"{os.path.join(mask_root, rel)})")

    fg = np.stack([_read_mask(resolve(p)) > 0.5 for p in mask_paths]).any(axis=0)
    ignore = np.zeros_like(fg)
    if ignore_path:  # an image without an ignore box has an empty third field
        ignore = (_read_mask(resolve(ignore_path)) > 0.5) & ~fg
    return fg.astype(np.uint8) + 255 * ignore.astype(np.uint8)


def cub_mask(mask_root: str, image_id: str) -> np.ndarray:
    """GT mask (224, 224) uint8 from CUB's `segmentations/<class>/<name>.png`: 1 where value > 127, else 0."""
    path = os.path.join(mask_root, os.path.splitext(image_id)[0] + ".png")
    mask = _read_mask(path)
    if mask.max() == 1:  # a mask saved as 0/1 would be all background here, and PxAP silently lower
        raise UserError(f"{path} holds only 0 and 1: expected 0/255 masks (foreground where value > 127)")
    return (mask > 127).astype(np.uint8)


V2_IOUS = (30, 50, 70)  # MaxBoxAccV2's IoU thresholds


def score_image(scoremap: np.ndarray, gt: Optional[np.ndarray], interval: float, mask_root: Optional[str],
                image_id: str, save_path: Optional[str], failed: bool = False,
                instance_masks: Optional[tuple] = None) -> tuple:
    """One image's share of the figures of `test.py --protocol wsol`: best IoU per CAM threshold for MaxBoxAcc
    and for MaxBoxAccV2 (None when `gt` is None: OpenImages has no boxes), and the PxAP histograms (None without
    masks). The GT mask is CUB's `<mask_root>/<id>.png`, or, given `instance_masks` = (mask paths, ignore path)
    of OpenImages' localization.txt, `openimages_mask(mask_root, ...)`. Saves the map first when `save_path`
    is given. A `failed` image (unreadable) localises nothing: zero IoUs, and its mask's pixels all score 0.
    Here, in a torch-free module, because it runs in the post-processing pool's workers (utils.engine.workers)."""
    if save_path:  # into the open file: np.save(path) would append .npy to the temporary name
        write_atomic(save_path, lambda f: np.save(f, scoremap.astype(np.float32, copy=False)))
    best_v1 = best_v2 = hists = None
    if gt is not None:
        v1 = BoxEvaluator(interval, (50,), multi_contour=False)
        v2 = BoxEvaluator(interval, V2_IOUS, multi_contour=True)
        if failed:
            best_v1, best_v2 = np.zeros(len(v1.thresholds)), np.zeros(len(v2.thresholds))
        else:
            best_v1, best_v2 = v1.best_ious(scoremap, gt), v2.best_ious(scoremap, gt)
    if instance_masks is not None:
        hists = PxAPEvaluator(interval).histograms(scoremap, openimages_mask(mask_root, *instance_masks))
    elif mask_root:
        hists = PxAPEvaluator(interval).histograms(scoremap, cub_mask(mask_root, image_id))
    return best_v1, best_v2, hists


# ----------------------------------------------------------------------------------------------- CLI
def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/1/0/yes/no, got {value!r}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.wsol_eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scoremap_root",
                   help="folder of score maps, one <image_id>.npy (224 x 224, values in [0, 1]) per image")
    p.add_argument("--centre_baseline", action="store_true",
                   help="score a fixed centre blob (an isotropic Gaussian) on every image instead of "
                        "--scoremap_root's maps")
    p.add_argument("--metadata_root", required=True,
                   help="wsolevaluation metadata root holding <dataset_name>/<split>/, or that folder itself")
    p.add_argument("--mask_root", default=None,
                   help="OpenImages: root of the mask pngs named in localization.txt (also tried under "
                        "<mask_root>/OpenImages); CUB: the segmentations/ folder, to report PxAP as well")
    p.add_argument("--dataset_name", required=True, choices=DATASETS, help="which protocol: boxes or masks")
    p.add_argument("--split", default="test",
                   help="metadata split folder; the ILSVRC2012 val set is ILSVRC split test (their val is ImageNetV2)")
    p.add_argument("--cam_curve_interval", type=float, default=0.01,
                   help="step of the CAM thresholds arange(0, 1, step)")
    p.add_argument("--multi_contour_eval", type=str2bool, nargs="?", const=True, default=False,
                   help="score the boxes of all contours (MaxBoxAccV2) instead of only the largest one")
    p.add_argument("--multi_iou_eval", type=str2bool, nargs="?", const=True, default=True,
                   help="headline figure = mean MaxBoxAcc over the IoU thresholds instead of the one at 50")
    p.add_argument("--iou_threshold_list", type=int, nargs="+", default=[30, 50, 70],
                   help="IoU thresholds δ in percent")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, default=MAX_PIXELS,
                   help="a mask whose header claims more pixels is refused before it is decoded (a small PNG can "
                        "claim 60000 x 60000)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes scoring maps in parallel (1: in this process); figures do not depend on it")
    return p


def _progress(items: Iterable, total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a convenience only
        return items
    return tqdm(items, total=total, desc="wsol eval", unit="img", disable=None)  # None: quiet off a terminal


_JOB: dict = {}  # what `_score_image` needs; set once per process (inherited or via the pool initializer)


def _set_job(job: dict, parent: Optional[int] = None) -> None:
    _JOB.clear()
    _JOB.update(job)
    set_max_pixels(job["max_pixels"])  # the masks' limit, in a pool worker too
    if parent is not None:  # a pool worker: it must not outlive a killed evaluation
        import signal

        from utils.engine.workers import die_with_parent
        # forked with run_main's SIGTERM handler: pool.terminate() would print a Stopped trace per worker
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent(parent)


def _score_image(image_id: str) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """One image's contribution: best IoU per CAM threshold (box datasets), PxAP histograms (with masks)."""
    meta, boxes, pixels, mask_root = _JOB["meta"], _JOB["boxes"], _JOB["pixels"], _JOB["mask_root"]
    scoremap = _JOB["centre"] if _JOB["centre"] is not None else load_scoremap(_JOB["scoremap_root"], image_id)
    best = hists = None
    if boxes is not None:
        w, h = meta["image_sizes"][image_id]
        best = boxes.best_ious(scoremap, np.array([resize_box_224(b, w, h) for b in meta["boxes"][image_id]]))
    if pixels is not None:
        if _JOB["instance_masks"]:  # OpenImages' ground truth, listed in localization.txt
            mask = openimages_mask(mask_root, meta["mask_paths"][image_id], meta["ignore_paths"][image_id])
        else:
            mask = cub_mask(mask_root, image_id)
        hists = pixels.histograms(scoremap, mask)
    return best, hists


def evaluate(args: argparse.Namespace) -> dict:
    """Run the protocol the arguments describe; returns the figures written to --json."""
    dataset = by_wsol_name(args.dataset_name)
    if bool(args.scoremap_root) == args.centre_baseline:
        raise UserError("give --scoremap_root (the maps to score) or --centre_baseline (a fixed centre blob), "
                        "one of the two")
    if not dataset.boxes and not args.mask_root:
        raise UserError(f"{args.dataset_name} is evaluated on masks: give --mask_root")
    if not args.multi_iou_eval and dataset.boxes and 50 not in args.iou_threshold_list:
        raise UserError("--multi_iou_eval false reports MaxBoxAcc at IoU 50: include 50 in --iou_threshold_list")
    meta = read_metadata(args.metadata_root, args.dataset_name, args.split)
    boxes = BoxEvaluator(args.cam_curve_interval, args.iou_threshold_list,
                         args.multi_contour_eval) if dataset.boxes else None
    # masks: OpenImages' own ground truth; CUB's segmentations/ (--mask_root) add PxAP to its boxes
    use_masks = not dataset.boxes or (dataset.segmentations is not None and bool(args.mask_root))
    pixels = PxAPEvaluator(args.cam_curve_interval) if use_masks else None
    if args.mask_root and not use_masks:
        print(f"note: --mask_root is not used for {args.dataset_name}", file=sys.stderr)

    ids = meta["image_ids"]
    job = {"meta": meta, "boxes": boxes, "pixels": pixels, "mask_root": args.mask_root,
           "instance_masks": not dataset.boxes, "scoremap_root": args.scoremap_root,
           "centre": centre_scoremap() if args.centre_baseline else None, "max_pixels": args.max_pixels}
    workers = min(args.workers, len(ids) // 16)  # a pool does not pay for itself on a handful of maps
    if workers > 1:
        import multiprocessing as mp
        # per-image results are integer counts, so their arrival order cannot change a figure
        pool = mp.Pool(workers, initializer=_set_job, initargs=(job, os.getpid()))
        results = pool.imap_unordered(_score_image, ids, chunksize=8)
    else:
        pool = None
        _set_job(job)
        results = map(_score_image, ids)
    try:
        for best, hists in _progress(results, len(ids)):
            if boxes is not None:
                boxes.add(best)
            if pixels is not None:
                pixels.add(*hists)
    finally:
        if pool is not None:
            pool.terminate()
        _JOB.clear()

    out: dict = {"count": len(ids)}
    if boxes is not None:
        out.update(boxes.compute())
        # wsolevaluation's headline: mean over δ (MaxBoxAccV2 with multi-contour), else the value at δ = 50
        out["localization"] = out["mean"] if args.multi_iou_eval else out["maxboxacc"]["50"]
    if pixels is not None:
        out["pxap"] = pixels.compute()
        if not dataset.boxes:
            out["localization"] = out["pxap"]
    return out


def _report(res: dict, dataset_name: str, split: str, interval: float, multi_contour: bool, multi_iou: bool,
            centre_baseline: bool) -> str:
    """The figures of `evaluate` as printed: the run in one line, a table, the headline figure."""
    what = "images (centre baseline: one fixed map)" if centre_baseline else "images"
    lines = [f"{dataset_name} {split}: {res['count']} {what}, CAM thresholds every "
             f"{interval}, multi_contour_eval {str(multi_contour).lower()}"]
    if "maxboxacc" in res:
        lines.append(f"  {'IoU δ':>7}  {'MaxBoxAcc':>9}  {'best CAM threshold':>18}")
        for d, v in res["maxboxacc"].items():
            lines.append(f"  {d:>7}  {v:9.2f}  {res['best_threshold'][d]:18.3f}")
        lines.append(f"  {'mean':>7}  {res['mean']:9.2f}")
    if "pxap" in res:
        lines.append(f"  {'PxAP':>7}  {res['pxap']:9.2f}")
    if "maxboxacc" not in res:  # a data set without boxes: PxAP is its figure
        name = "PxAP"
    elif multi_iou:
        kind = "MaxBoxAccV2" if multi_contour else "MaxBoxAcc"
        name = f"{kind}, mean over IoU {'/'.join(res['maxboxacc'])}"
    else:
        name = f"{'MaxBoxAcc, all contours' if multi_contour else 'MaxBoxAcc'} at IoU 50"
    lines.append(f"localization ({name}): {res['localization']:.4f}")
    return "\n".join(lines)


def _check_json(path: str) -> None:
    """Before any work: --json must name a file that can be written (its folder is made if needed)."""
    if os.path.isdir(path):
        raise UserError(f"--json {path} is a folder: give a file name, e.g. {os.path.join(path, 'wsol.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        reason = "a file, not a folder" if isinstance(e, FileExistsError) else e.strerror or type(e).__name__
        raise UserError(f"cannot write --json {path}: {folder} ({reason})") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write --json {path}: {folder} is not writable")


def main(argv: Sequence[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.json:
        _check_json(args.json)
    res = evaluate(args)
    print(_report(res, args.dataset_name, args.split, args.cam_curve_interval, args.multi_contour_eval,
                  args.multi_iou_eval, args.centre_baseline), flush=True)
    if args.json:
        write_text(args.json, json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    run_main(main)
