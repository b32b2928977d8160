"""Tests of dataset/synthetic.py: the synthetic CUB-200-2011 and ILSVRC2012 trees have the official
layouts, consistent annotations (boxes tight around the drawn objects) and are deterministic. Tiny sets
with small images keep this to a few seconds."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # plain `pytest` puts tests/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

from dataset import synthetic  # noqa: E402

SMALL = dict(min_size=64, max_size=96)


def _read_table(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f.read().splitlines()]


def _make_cub(root: str, **kw) -> str:
    args = dict(num_classes=3, train_per_class=3, val_per_class=2, seed=0, **SMALL)
    args.update(kw)
    return synthetic.make_cub(root, **args)


# --------------------------------------------------------------------------------------------------
# CUB
# --------------------------------------------------------------------------------------------------

def test_cub_layout_and_annotations(tmp_path):
    root = _make_cub(str(tmp_path / "CUB_200_2011"))
    assert root == str(tmp_path / "CUB_200_2011")
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
                 "classes.txt"):
        assert os.path.isfile(os.path.join(root, name)), name

    classes = _read_table(os.path.join(root, "classes.txt"))
    assert classes == [["1", "001.Black_footed_Albatross"], ["2", "002.Laysan_Albatross"],
                       ["3", "003.Sooty_Albatross"]]
    images = _read_table(os.path.join(root, "images.txt"))
    labels = _read_table(os.path.join(root, "image_class_labels.txt"))
    split = _read_table(os.path.join(root, "train_test_split.txt"))
    with open(os.path.join(root, "bounding_boxes.txt"), encoding="utf-8") as f:
        box_lines = f.read().splitlines()

    n = 3 * (3 + 2)
    assert [int(r[0]) for r in images] == list(range(1, n + 1))
    for table in (labels, split):
        assert [r[0] for r in table] == [r[0] for r in images]
    assert [line.split()[0] for line in box_lines] == [r[0] for r in images]
    assert [r[1] for r in images] == sorted(r[1] for r in images)  # class folder, then file order

    per_class_train = {}
    for (iid, rel), (_, lab), (_, tr), bline in zip(images, labels, split, box_lines):
        folder, fname = rel.split("/")
        assert re.fullmatch(r"\d{3}\.[A-Za-z_]+", folder)
        assert int(folder[:3]) == int(lab)
        assert re.fullmatch(re.escape(folder[4:]) + r"_\d{4}_\d+\.jpg", fname)
        assert tr in ("0", "1")
        per_class_train.setdefault(lab, []).append(int(tr))
        # "<id> <x> <y> <width> <height>", floats with one decimal like the official file
        assert re.fullmatch(r"\d+( \d+\.\d){4}", bline), bline
        x, y, w, h = map(float, bline.split()[1:])

        img = cv2.imread(os.path.join(root, "images", rel), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.ndim == 3 and img.shape[2] == 3
        H, W = img.shape[:2]
        assert 64 <= H <= 96 and 64 <= W <= 96
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= W and y + h <= H

        mask = cv2.imread(os.path.join(root, "segmentations", rel[:-4] + ".png"), cv2.IMREAD_UNCHANGED)
        assert mask is not None and mask.shape == (H, W)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        ys, xs = np.nonzero(mask)
        # Box tight around the mask: x + width = rightmost pixel + 1.
        for got, want in ((x, xs.min()), (y, ys.min()), (x + w, xs.max() + 1), (y + h, ys.max() + 1)):
            assert abs(got - want) <= 1
        assert 0.05 <= (mask > 0).mean() <= 0.5
        assert cv2.connectedComponents((mask > 0).astype(np.uint8))[0] == 2  # one object region
        # The object is drawn where the mask says: it differs from the background around it.
        assert np.abs(img[mask > 0].mean(0) - img[mask == 0].mean(0)).max() > 10

    assert all(sorted(v) == [0, 0, 1, 1, 1] for v in per_class_train.values())


def test_cub_deterministic_and_seeded(tmp_path):
    a = _make_cub(str(tmp_path / "a"), seed=5)
    b = _make_cub(str(tmp_path / "b"), seed=5)
    c = _make_cub(str(tmp_path / "c"), seed=6)

    def read(root, name):
        with open(os.path.join(root, name), "rb") as f:
            return f.read()

    for name in ("images.txt", "bounding_boxes.txt", "train_test_split.txt"):
        assert read(a, name) == read(b, name)
    first = _read_table(os.path.join(a, "images.txt"))[0][1]
    assert read(a, os.path.join("images", first)) == read(b, os.path.join("images", first))
    assert read(a, "bounding_boxes.txt") != read(c, "bounding_boxes.txt")


def test_cub_without_segmentations(tmp_path):
    root = _make_cub(str(tmp_path / "CUB_200_2011"), num_classes=1, train_per_class=1, val_per_class=1,
                     segmentations=False)
    assert not os.path.exists(os.path.join(root, "segmentations"))
    assert len(_read_table(os.path.join(root, "images.txt"))) == 2


def test_class_appearances_are_distinct():
    looks = [synthetic.class_appearance(i) for i in range(20)]
    assert len({(a.shape, a.pattern) for a in looks}) == 20
    assert len({(a.shape, a.pattern, a.hue) for a in looks[:4]}) == 4
    assert len({a.shape for a in looks[:4]}) == len({a.pattern for a in looks[:4]}) == 4


# --------------------------------------------------------------------------------------------------
# ImageNet
# --------------------------------------------------------------------------------------------------

SYNSETS = ("n01443537", "n01440764", "n01484850")


@pytest.mark.parametrize("val_layout", ["flat", "synset"])
def test_imagenet_layout_and_boxes(tmp_path, val_layout):
    root = synthetic.make_imagenet(str(tmp_path / "ILSVRC"), synsets=SYNSETS, train_per_class=2,
                                   val_per_class=4, seed=0, val_layout=val_layout, **SMALL)
    assert root == str(tmp_path / "ILSVRC")

    for s in SYNSETS:
        files = sorted(os.listdir(os.path.join(root, "train", s)))
        assert len(files) == 2
        for f in files:
            assert re.fullmatch(s + r"_\d+\.JPEG", f)
            assert cv2.imread(os.path.join(root, "train", s, f)) is not None

    with open(os.path.join(root, "LOC_synset_mapping.txt"), encoding="utf-8") as f:
        mapping = f.read().splitlines()
    assert [m.split()[0] for m in mapping] == sorted(SYNSETS)
    assert mapping[0] == "n01440764 tench, Tinca tinca"

    n_val = len(SYNSETS) * 4
    xmls = sorted(os.listdir(os.path.join(root, "box")))
    assert xmls == [f"ILSVRC2012_val_{i:08d}.xml" for i in range(1, n_val + 1)]
    if val_layout == "flat":
        assert sorted(os.listdir(os.path.join(root, "val"))) == [x[:-4] + ".JPEG" for x in xmls]

    classes_seen, two_same, other_class = [], 0, 0
    for x in xmls:
        ann = ET.parse(os.path.join(root, "box", x)).getroot()
        assert ann.tag == "annotation" and ann.findtext("folder") == "val"
        assert ann.findtext("source/database") == "ILSVRC_2012"
        fname = ann.findtext("filename")
        assert fname == x[:-4] + ".JPEG"
        objects = ann.findall("object")
        gt = objects[0].findtext("name")  # the first object is of the image's class
        classes_seen.append(gt)
        path = (os.path.join(root, "val", fname) if val_layout == "flat"
                else os.path.join(root, "val", gt, fname))
        img = cv2.imread(path)
        assert img is not None
        H, W = img.shape[:2]
        assert (int(ann.findtext("size/width")), int(ann.findtext("size/height"))) == (W, H)
        assert ann.findtext("size/depth") == "3"
        names = []
        for o in objects:
            names.append(o.findtext("name"))
            assert names[-1] in SYNSETS
            assert o.findtext("difficult") == "0" and o.findtext("pose") == "Unspecified"
            x0, y0, x1, y1 = (int(o.findtext("bndbox/" + k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 < W and 0 <= y0 < y1 < H
        if len(names) == 2 and names[1] == gt:
            two_same += 1
        if any(nm != gt for nm in names):
            other_class += 1
            assert names[0] == gt and len(names) == 2
    assert sorted(classes_seen) == sorted(s for s in SYNSETS for _ in range(4))
    assert two_same >= 1 and other_class >= 1


def test_imagenet_deterministic(tmp_path):
    kw = dict(synsets=SYNSETS[:2], train_per_class=1, val_per_class=2, seed=3, **SMALL)
    a = synthetic.make_imagenet(str(tmp_path / "a"), **kw)
    b = synthetic.make_imagenet(str(tmp_path / "b"), **kw)
    for rel in ("box/ILSVRC2012_val_00000002.xml", "val/ILSVRC2012_val_00000001.JPEG",
                "LOC_synset_mapping.txt"):
        with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
            assert fa.read() == fb.read(), rel


def test_imagenet_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="WordNet"):
        synthetic.make_imagenet(str(tmp_path / "x"), synsets=["dog"], **SMALL)
    with pytest.raises(ValueError, match="val_layout"):
        synthetic.make_imagenet(str(tmp_path / "x"), val_layout="nested", **SMALL)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def test_cli_from_another_directory(tmp_path):
    script = os.path.join(REPO, "dataset", "synthetic.py")
    root = tmp_path / "CUB_200_2011"
    out = subprocess.run([sys.executable, script, "cub", "--root", "CUB_200_2011", "--classes", "2",
                          "--train_per_class", "1", "--val_per_class", "1", "--min_size", "64",
                          "--max_size", "72"], cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CUB-200-2011" in out.stdout and str(root) in out.stdout
    assert len(_read_table(str(root / "images.txt"))) == 4
