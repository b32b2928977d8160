"""Metadata folders laid out exactly as clovaai/wsolevaluation publishes its `metadata/<dataset>/test/`, for the
images of a (synthetic) data set, to test that the project's files work with theirs as users download them.

Their layout: `image_ids.txt` (`id`), `class_labels.txt` (`id,label`), `image_sizes.txt` (`id,width,height`),
`localization.txt` (`id,x0,y0,x1,y1`, one line per box, integers clipped to [0, width - 1] x [0, height - 1]),
no newline after the last line. Ids: CUB `<class>/<file>.jpg` (the official test images), ILSVRC2012 val
`val/<file>.JPEG` in split `test`. Built here from the data set's own annotation files, not with
dataset/prepare.py, so that a drift in the project's writer shows up as a difference.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2


def write_published(folder: Path, rows: list) -> Path:
    """rows: [(image id, label, (width, height), [(x0, y0, x1, y1), ...])] -> the four files in `folder`."""
    def clip(v: float, hi: int) -> int:
        return min(max(int(v), 0), hi)

    folder.mkdir(parents=True)
    files = {"image_ids.txt": [i for i, *_ in rows],
             "class_labels.txt": [f"{i},{c}" for i, c, *_ in rows],
             "image_sizes.txt": [f"{i},{w},{h}" for i, _, (w, h), _ in rows],
             "localization.txt": [f"{i},{clip(x0, w - 1)},{clip(y0, h - 1)},{clip(x1, w - 1)},{clip(y1, h - 1)}"
                                  for i, _, (w, h), boxes in rows for x0, y0, x1, y1 in boxes]}
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines))
    return folder


def _size(path: str) -> tuple:
    h, w = cv2.imread(path).shape[:2]
    return w, h


def cub_test_rows(root: str) -> list:
    """The official test images of a CUB_200_2011 folder, boxes x, y, x + width, y + height."""
    def table(name: str) -> dict:
        with open(os.path.join(root, name)) as f:
            return {p[0]: p[1:] for p in (line.split() for line in f) if p}

    images, labels, split, boxes = (table(n) for n in ("images.txt", "image_class_labels.txt",
                                                       "train_test_split.txt", "bounding_boxes.txt"))
    rows = []
    for i, (rel,) in images.items():
        if split[i] == ["0"]:
            x, y, w, h = map(float, boxes[i])
            rows.append((rel, int(labels[i][0]) - 1, _size(os.path.join(root, "images", rel)),
                         [(x, y, x + w, y + h)]))
    return rows


def ilsvrc_val_rows(root: str) -> list:
    """The val images named in an ILSVRC2012 folder's val.txt (flat or val/<synset>/), with the XML boxes of
    their class."""
    with open(os.path.join(root, "LOC_synset_mapping.txt")) as f:
        synsets = [line.split()[0] for line in f if line.strip()]  # the class order
    rows = []
    with open(os.path.join(root, "val.txt")) as f:
        for name, label in (line.split() for line in f if line.strip()):
            path = os.path.join(root, "val", name)
            if not os.path.exists(path):
                path = os.path.join(root, "val", synsets[int(label)], name)
            xml = ET.parse(os.path.join(root, "box", os.path.splitext(name)[0] + ".xml")).getroot()
            boxes = [tuple(float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
                     for o in xml.iter("object") if o.find("name").text == synsets[int(label)]]
            rows.append(("val/" + name, int(label), _size(path), boxes))
    return rows
