"""Boxes that ignore the image: the figures a localiser has to beat to show it learned anything.

GT-known Loc (IoU > 0.5 with a ground-truth box, docs/method.md §6) of fixed boxes in the seg stage's evaluation
frame (resize to size x size, centre crop): the whole crop, its central half (in width and height), and the best
centred box of any size, the side a fraction 0.05, 0.10, ..., 1.00 of the crop's, chosen on the test boxes
themselves. The last is an upper bound for every fixed centred box: on data whose objects fill much of the frame
it is high (a box of 80 % of the side scores 60 on the demo's set, the central half 8.75), so it, not the central
half, is the baseline that says a run localised.
"""
from __future__ import annotations

import numpy as np

from utils.data.lists import read_cub_list
from utils.data.transforms import boxes_to_eval_frame
from utils.data.validate import read_headers
from utils.method.boxes import best_iou

FRACTIONS = np.round(np.arange(1, 21) * 0.05, 2)  # the centred boxes' sides, as fractions of the crop's side


def centred_box(crop: int, fraction: float) -> list:
    """The centred box whose side is `fraction` of the crop's, `x0 y0 x1 y1` in crop pixels."""
    lo, hi = crop * (1 - fraction) / 2, crop * (1 + fraction) / 2
    return [lo, lo, hi, hi]


def fixed_box_baselines(gt_boxes: list, crop: int) -> dict:
    """GT-known Loc (%) of the fixed boxes, from each test image's GT boxes in the evaluation frame (a list of
    N x 4 arrays; None for an image that cannot be read, which counts as a miss, as in the evaluation).

    Returns `whole_crop`, `centre_box` (the central half), `best_centred_box` and its side `best_fraction`."""
    n = max(len(gt_boxes), 1)

    def score(box: list) -> float:
        return 100.0 * sum(gt is not None and best_iou(box, gt) > 0.5 for gt in gt_boxes) / n

    centred = {float(f): score(centred_box(crop, f)) for f in FRACTIONS}
    best = max(centred, key=lambda f: (centred[f], -f))  # ties: the smaller box
    return {"whole_crop": score([0, 0, crop, crop]), "centre_box": centred[0.5],
            "best_centred_box": centred[best], "best_fraction": best}


def cub_baselines(datapath: str, size: int, crop: int, listname: str = "val.txt") -> dict:
    """`fixed_box_baselines` of the test images of a CUB-layout set (`<datapath>/<listname>`, written by
    dataset/prepare.py), their sizes read from the image headers."""
    samples = read_cub_list(datapath, listname)
    gts = [None if header is None else boxes_to_eval_frame(s.boxes, header[0], header[1], size, crop)
           for s, header in zip(samples, read_headers([s.path for s in samples]))]
    return fixed_box_baselines(gts, crop)
