"""Your own data end to end, and localize.py.

* the box convention checked against a hand-computed case on a non-square image: fixed seg logits whose
  mask, after the upsampling to the original frame, has a box worked out on paper;
* the whole image is seen (no centre crop): an object touching the border gets a box reaching it;
* a class-folder data set (nested folders, PNG and JPEG, dataset/synthetic.py's make_folder) through
  prepare (no boxes) -> cam train -> pseudo masks -> seg train -> localize (boxes.csv, masks, pictures,
  JSON, the classifier's class), torchrun equal to one process, evaluation refusing a list without boxes
  and working once prepare is given the boxes.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from bad_files import write_corrupt_file
from conftest import ROOT, run_script
from dataset.synthetic import make_folder
from utils.engine.distributed import Dist
from utils.errors import run_main
from utils.localize import find_images, localize_images, mask_boxes, output_names, probability_map

SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "64"]  # localize.py's too
CROP = ["--crop", "56"]                                                                     # the stages'
TRAIN = ["--pretrained", "none", "--batch_size", "8", "--epoch", "1", *CROP]

# 4 x 4 seg logits = 20 * outer(rows, cols) - 10: bilinear (align_corners=True) interpolation of it is
# 20 * R(v) * C(u) - 10 with R, C the interpolated 0/1 profiles below.
ROWS, COLS = np.array([0, 1, 1, 1.0]), np.array([0, 1, 1, 0.0])
FIXED = torch.tensor(20 * np.outer(ROWS, COLS) - 10, dtype=torch.float32)


class FixedLogits(torch.nn.Module):
    """A seg model stand-in: the same logits for every image, whatever it shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FIXED.expand(len(x), 1, 4, 4).clone()


class BrightIsForeground(torch.nn.Module):
    """A seg model stand-in that sees its input: logits = 5 x the normalised brightness, pooled by 8."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 8) * 5


def _settings(tmp_path, **kw) -> dict:
    """localize_images' settings as localize.py's defaults give them on the CPU (outputs under tmp_path)."""
    base = dict(outdir=str(tmp_path / "localize"), size=32, batch_size=4, num_workers=0, on_bad_image="stop",
                threshold=0.2, all_boxes=False, masks=True, vis=False, dtype=None, channels_last=False)
    return dict(base, **kw)


def test_hand_computed_box_in_original_pixels(tmp_path):
    """W x H = 61 x 31, logits 4 x 4. align_corners=True: column x samples u = x * 3/60 = x/20, row y samples
    v = y * 3/30 = y/10. p > 0.2 <=> 20 R C - 10 > ln(0.2/0.8) <=> R(v) C(u) > (10 - ln 4)/20 = 0.43069.
    Rows with R = 1 exist (v in [1, 3]), so the box's x-range is C(u) > 0.43069: C = u on [0, 1] -> x/20 >
    0.43069 -> x >= 9; C = 3 - u on [2, 3] -> x <= 51; y-range R(v) > 0.43069: R = v on [0, 1] -> y >= 5,
    R = 1 to the last row (y = 30). Box on pixel edges: x0 9, y0 5, x1 51 + 1 = 52, y1 30 + 1 = 31 = H."""
    k = (10 - math.log(4)) / 20
    prob = probability_map(FIXED, 31, 61)
    assert prob.shape == (31, 61)
    mask = (prob > 0.2).numpy().astype(np.uint8)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (9, 51, 5, 30)
    assert 8 / 20 < k < 9 / 20 and 0.4 < k < 0.5                       # the hand computation's margins
    (box, score), = mask_boxes(mask, prob.numpy())
    assert box == [9, 5, 52, 31]
    assert 0.2 < score <= 1 / (1 + math.exp(-10)) + 1e-6

    # the same through localize's loop on a real non-square file: boxes.csv's numbers and the mask PNG
    path = str(tmp_path / "wide.png")
    cv2.imwrite(path, np.full((31, 61, 3), 100, np.uint8))
    (rec,) = localize_images(Dist(), FixedLogits(), [path], ["wide.png"], **_settings(tmp_path))
    assert (rec["width"], rec["height"]) == (61, 31) and rec["boxes"][0][0] == [9, 5, 52, 31]
    written = cv2.imread(str(tmp_path / "localize" / "masks" / "wide.png"), cv2.IMREAD_UNCHANGED)
    assert written.shape == (31, 61) and set(np.unique(written)) == {0, 255}
    assert np.array_equal(written > 0, mask.astype(bool))


def test_one_full_size_map_at_a_time_and_the_same_boxes(tmp_path, monkeypatch):
    """A batch's probability maps are made one image at a time at the original size and boxed at once (a
    48-MP photo's map is ~190 MB; a batch of 32 of them was held together), and the boxes are those of each
    image's own map computed alone."""
    import weakref
    import utils.localize as localize
    rng = np.random.default_rng(0)
    paths, names = [], []
    for k in range(5):
        path = str(tmp_path / f"{k}.png")
        cv2.imwrite(path, rng.integers(0, 255, (30 + 7 * k, 50 - 3 * k, 3), dtype=np.uint8))
        paths.append(path)
        names.append(f"{k}.png")
    alive, most = [], [0]
    made = probability_map

    def counted(logits, height, width):
        prob = made(logits, height, width)
        alive.append(weakref.ref(prob))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return prob
    monkeypatch.setattr(localize, "probability_map", counted)
    records = localize_images(Dist(), BrightIsForeground(), paths, names,
                              **_settings(tmp_path, size=32, threshold=0.5, masks=False, batch_size=5))
    assert len(alive) == 5 and most[0] == 1
    for rec in records:                            # each image alone, through the same steps
        image = torch.from_numpy(cv2.cvtColor(cv2.imread(rec["path"]), cv2.COLOR_BGR2RGB))
        data = localize.ImageFiles([rec["path"]], 32)
        logits = BrightIsForeground()(data[0]["image"][None])
        prob = made(logits[0, 0], image.shape[0], image.shape[1])
        assert rec["boxes"] == mask_boxes((prob > 0.5).to(torch.uint8).numpy(), prob.numpy())


def test_all_boxes_one_per_region_largest_first():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:6] = 1                    # 3 x 3
    mask[8:18, 10:28] = 1                 # 10 x 18, with a hole: the hole gets no box
    mask[12:14, 15:17] = 0
    prob = np.where(mask > 0, 0.9, 0.1).astype(np.float32)
    prob[2:5, 3:6] = 0.6
    assert [b for b, _ in mask_boxes(mask, prob, all_boxes=True)] == [[10, 8, 28, 18], [3, 2, 6, 5]]
    assert [round(s, 4) for _, s in mask_boxes(mask, prob, all_boxes=True)] == [0.9, 0.6]
    assert mask_boxes(mask, prob) == [([10, 8, 28, 18], pytest.approx(0.9))]
    assert mask_boxes(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.float32)) == []


def test_whole_image_is_seen_so_a_box_reaches_the_border(tmp_path):
    image = np.zeros((40, 90, 3), np.uint8)
    image[:, 60:] = 255                   # an object over the right third, touching top, bottom and right
    path = str(tmp_path / "edge.jpg")
    cv2.imwrite(path, image)
    (rec,) = localize_images(Dist(), BrightIsForeground(), [path], ["edge.png"],
                             **_settings(tmp_path, size=64, threshold=0.5, masks=False))
    x0, y0, x1, y1 = rec["boxes"][0][0]
    assert (y0, x1, y1) == (0, 90, 40) and 45 < x0 < 65


def test_inputs_and_output_names(tmp_path):
    for rel in ("a/x.jpg", "a/x.png", "a/sub/y.JPEG", "a/.hidden/z.jpg", "a/notes.txt", "b/x.jpg"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "b" / "x.jpg"), str(tmp_path / "a" / "x.jpg")])
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a/x.jpg", "a/x.png", "a/sub/y.JPEG", "b/x.jpg"]
    # a/x.jpg and a/x.png would both be a/x.png: every name keeps its extension
    assert output_names(found) == ["a/x.jpg.png", "a/x.png.png", "a/sub/y.JPEG.png", "b/x.jpg.png"]
    assert output_names(found[2:]) == ["a/sub/y.png", "b/x.png"]
    assert output_names([str(tmp_path / "b" / "x.jpg")]) == ["x.png"]


# ------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """3 class folders x 6 images (nested batch2/, PNG and JPEG, 64..96 px), prepared WITHOUT boxes, through
    cam train -> masks -> seg train; a 1-epoch ResNet-18 classifier; 3 new images to localise."""
    base = tmp_path_factory.mktemp("own")
    paths = make_folder(str(base), num_classes=3, per_class=6, new_images=3, seed=2, min_size=64, max_size=96)
    data, out = paths["data"], base / "out"
    prep = run_script("dataset/prepare.py", "folder", "--root", data, "--val-fraction", "0.2")
    # no --clsnum anywhere: the stages count the lines of classes.txt
    run_script("cub200-cam/train.py", "--datapath", data, "--savepath", out / "cam", *SMALL, *TRAIN)
    run_script("cub200-cam/test.py", "--datapath", data, "--snapshot", out / "cam" / "model-1.pth",
               "--maskpath", out / "masks", "--post_workers", 0, *SMALL, *CROP)
    run_script("cub200-seg/train.py", "--datapath", data, "--maskpath", out / "masks", "--savepath", out / "seg",
               *SMALL, *TRAIN)
    run_script("cub200-cls/train.py", "--datapath", data, "--arch", "resnet18", "--savepath", out / "cls",
               *SMALL, *TRAIN)
    loc = run_script("cub200-seg/localize.py", "--snapshot", out / "seg" / "model-1.pth", paths["new"],
                     "--savepath", out / "seg", "--masks", "--vis", "--json", "--classifier",
                     out / "cls" / "model-1.pth", "--classifier_arch", "resnet18", "--classifier_size", 64,
                     "--datapath", data, *SMALL)
    return dict(paths, out=out, prepare=prep.stdout, localize=loc.stdout)


def _rows(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_own_data_trains_with_classes_from_classes_txt(own):
    assert "3 classes" in own["prepare"] and "evaluation needs boxes" in own["prepare"]
    assert json.load(open(own["out"] / "cam" / "args.json"))["clsnum"] == 3
    train = [line.split(",")[0] for line in open(os.path.join(own["data"], "train.txt"))]
    assert any("/batch2/" in t for t in train) and {os.path.splitext(t)[1] for t in train} == {".jpg", ".png"}
    for name in train:  # one pseudo mask per train image, its size
        mask = cv2.imread(str(own["out"] / "masks" / (os.path.splitext(name)[0] + ".png")))
        assert mask.shape == cv2.imread(os.path.join(own["data"], name)).shape


def test_localize_writes_boxes_masks_pictures_json_and_classes(own):
    loc = own["out"] / "seg" / "localize"
    rows = _rows(loc / "boxes.csv")
    new = sorted(os.path.join(own["new"], f) for f in os.listdir(own["new"]))
    assert list(rows[0]) == ["path", "xmin", "ymin", "xmax", "ymax", "score", "class_index", "class", "class_score"]
    assert sorted({r["path"] for r in rows}) == new and len(rows) == 3   # one row per image (largest box)
    classes = [line.split(" ", 1)[1].strip() for line in open(os.path.join(own["data"], "classes.txt"))]
    for r in rows:
        h, w = cv2.imread(r["path"]).shape[:2]
        mask = cv2.imread(str(loc / "masks" / (os.path.splitext(os.path.basename(r["path"]))[0] + ".png")), 0)
        assert mask.shape == (h, w)
        assert r["class"] == classes[int(r["class_index"])] and 0 < float(r["class_score"]) <= 1
        if r["xmin"]:  # the box is the bounding box of the mask's largest region, in original pixels
            box = [int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
            (expected, _), = mask_boxes(mask > 0, mask.astype(np.float32))
            assert box == expected
        else:
            assert not mask.any()
    pictures = sorted(os.listdir(loc / "vis"))
    assert pictures == ["grid.jpg", "photo_001.jpg", "photo_002.jpg", "photo_003.jpg"]
    assert cv2.imread(str(loc / "vis" / "photo_001.jpg")).shape == cv2.imread(new[0]).shape
    doc = json.load(open(loc / "boxes.json"))
    assert [i["path"] for i in doc["images"]] == new and doc["threshold"] == 0.2
    assert all(i["class"] == classes[i["class_index"]] for i in doc["images"])
    assert "wrote" in own["localize"] and "grid.jpg" in own["localize"]


def test_localize_all_boxes_threshold_and_torchrun_equal_one_process(own, tmp_path):
    snap = own["out"] / "seg" / "model-1.pth"
    args = ["--snapshot", snap, own["new"], "--threshold", 0.3, "--all-boxes", *SMALL]
    run_script("cub200-seg/localize.py", *args, "--savepath", tmp_path / "one")
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "cub200-seg/localize.py", *args,
               "--savepath", tmp_path / "two")
    one = open(tmp_path / "one" / "localize" / "boxes.csv").read()
    assert one == open(tmp_path / "two" / "localize" / "boxes.csv").read()
    assert list(_rows(tmp_path / "one" / "localize" / "boxes.csv")[0]) == ["path", "xmin", "ymin", "xmax", "ymax",
                                                                           "score"]
    scores = [float(r["score"]) for r in _rows(tmp_path / "one" / "localize" / "boxes.csv") if r["score"]]
    assert all(0.3 < s <= 1 for s in scores)


def _script(path: str):
    """A stage script's main(argv), imported, for cases that need no second process."""
    spec = importlib.util.spec_from_file_location(path.replace("/", "_").replace(".py", ""), os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def call(capsys):
    """A script's main in this process: (exit code, stdout, stderr) as its command line gives them."""
    def run(path: str, *args) -> tuple:
        code = 0
        try:
            run_main(lambda: _script(path)([str(a) for a in args]))
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def test_evaluation_needs_boxes_then_works_with_them(own, tmp_path, call):
    snap = own["out"] / "seg" / "model-1.pth"
    code, _, err = call("cub200-seg/test.py", "--datapath", own["data"], "--snapshot", snap, "--savepath", tmp_path,
                        *CROP, *SMALL)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "have no ground-truth box" in err and "evaluation needs boxes" in err
    data = tmp_path / "data"
    shutil.copytree(own["data"], data)
    val = open(data / "val.txt").read()
    run_script("dataset/prepare.py", "folder", "--root", data, "--val-fraction", "0.2", "--boxes", own["boxes"],
               "--force")
    # every image has a box, so the same seed draws the same val images; now with their boxes
    assert [line.split(",")[0] for line in open(data / "val.txt")] == [v.split(",")[0] for v in val.splitlines()]
    run_script("cub200-seg/test.py", "--datapath", data, "--snapshot", snap, "--savepath", tmp_path, *CROP,
               *SMALL)
    m = json.load(open(tmp_path / "metrics.json"))
    assert m["count"] == 3 and 0 <= m["gt_known_loc"] <= 100


def test_localize_bad_inputs_give_one_clear_line(own, tmp_path, call):
    snap = own["out"] / "seg" / "model-1.pth"
    cls = own["out"] / "cls" / "model-1.pth"
    bad = write_corrupt_file(str(tmp_path / "broken.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = call("cub200-seg/localize.py", "--snapshot", snap, bad, "--savepath", tmp_path, *SMALL)
    assert code == 2 and bad in err and "--on-bad-image skip" in err
    code, out, _ = call("cub200-seg/localize.py", "--snapshot", snap, bad, own["new"], "--savepath", tmp_path,
                        "--on-bad-image", "skip", *SMALL)
    assert code == 0 and "1 unreadable skipped" in out and len(_rows(tmp_path / "localize" / "boxes.csv")) == 3
    for args, message in (([tmp_path / "nothing"], "not found"),
                          ([empty], "no image"),
                          ([own["new"], "--threshold", 1.5], "--threshold"),
                          ([own["new"], "--classifier_arch", "resnet18"], "--classifier_arch is for --classifier"),
                          ([own["new"], "--classifier", cls, "--classifier_arch", "resnet18", "--datapath", tmp_path],
                           "--classifier needs its number of classes"),
                          ([own["new"], "--classifier", cls, "--classifier_arch", "resnet18", "--datapath", own["data"],
                            "--clsnum", 5], "--clsnum 5, but"),
                          ([own["new"], "--classifier", cls, "--classifier_arch", "resnet34", "--datapath",
                            own["data"]], "pass the --classifier_arch it was trained with")):
        code, _, err = call("cub200-seg/localize.py", "--snapshot", snap, *args, "--savepath", tmp_path, *SMALL)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_localize_zero_flag_snapshot_and_imagenet_defaults(own, tmp_path, call):
    shutil.copy(own["out"] / "seg" / "model-1.pth", tmp_path / "model-3.pth")
    code, out, err = call("cub200-seg/localize.py", own["new"], "--savepath", tmp_path, *SMALL)
    assert code == 0, err
    assert f"--snapshot not given: using {tmp_path / 'model-3.pth'}" in out
    code, out, err = call("imagenet-seg/localize.py", own["new"], "--snapshot", tmp_path / "model-3.pth",
                          "--savepath", tmp_path, "--json", *SMALL)
    assert code == 0, err
    assert json.load(open(tmp_path / "localize" / "boxes.json"))["threshold"] == 0.8   # SPOL's ImageNet threshold


def test_localize_rebuilds_an_ablation_snapshot(own, tmp_path, call):
    """A seg snapshot of another network (issue 11's switches, recorded in the state dict) loads as itself."""
    from network import MFFNet
    torch.manual_seed(0)
    torch.save(MFFNet(1, "resnet18", seg=True, fusion="concat", levels=2).state_dict(), tmp_path / "concat.pth")
    code, out, err = call("cub200-seg/localize.py", own["new"], "--snapshot", tmp_path / "concat.pth",
                          "--savepath", tmp_path, *SMALL)
    assert code == 0, err
    assert len(_rows(tmp_path / "localize" / "boxes.csv")) >= 3
