"""Result files passed between stages and to the user (shared/SPEC.md §7): the classifier's
top1top5.npy and the evaluation's boxes.csv."""
from __future__ import annotations

import csv
import os
import pickle

import numpy as np

from utils.errors import UserError


def write_top1top5(path: str, names: list, top1: list, top5: list) -> None:
    """A NumPy structured array (name, top1, top5): loads with allow_pickle=False."""
    width = max([len(n) for n in names] + [1])
    arr = np.array(list(zip(names, top1, top5)), dtype=[("name", f"U{width}"), ("top1", "?"), ("top5", "?")])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def read_top1top5(path: str, allow_pickle: bool = False) -> dict:
    """{name: (top1, top5)} from our .npy, or, only if allowed, the original code's pickled dict."""
    if not os.path.isfile(path):
        raise UserError(f"--top1top5 file not found: {path} (write it with the cls stage's test.py)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError:
        if not allow_pickle:
            raise UserError(f"{path} is a pickle (the original code's format?). Unpickling runs code: pass "
                            f"--allow_pickle only if you trust the file") from None
        with open(path, "rb") as f:
            table = pickle.load(f)
        return {str(k): (bool(v[0]), bool(v[1])) for k, v in table.items()}
    if arr.dtype.names is None or not {"name", "top1", "top5"} <= set(arr.dtype.names):
        raise UserError(f"{path}: expected a structured array with fields name, top1, top5")
    return {str(n): (bool(a), bool(b)) for n, a, b in zip(arr["name"], arr["top1"], arr["top5"])}


def write_boxes_csv(path: str, records: list) -> None:
    """name,xmin,ymin,xmax,ymax,iou,correct; the box in the evaluation frame, blank when empty."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "xmin", "ymin", "xmax", "ymax", "iou", "correct"])
        for r in records:
            box = r["box"] if r["box"] is not None else ["", "", "", ""]
            w.writerow([r["name"], *box, f"{r['iou']:.6f}", int(r["correct"])])
    os.replace(tmp, path)
