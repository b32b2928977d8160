"""Tests of utils/wsol_eval.py, the wsolevaluation-compatible MaxBoxAcc / MaxBoxAccV2 / PxAP evaluator.

Answers are worked out by hand in the comments (box convention x0y0x1y1, pixel-inclusive; a contour's box
is (x, y, x + w, y + h), i.e. one past its last pixel, clipped to 223). CPU only, a few seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.errors import UserError
from utils.wsol_eval import (BoxEvaluator, PxAPEvaluator, boxes_at_thresholds, cam_thresholds, check_scoremap,
                             iou_plus1, main, read_metadata, resize_box_224, str2bool)

ROOT = Path(__file__).resolve().parents[1]  # the CLI runs as `python -m utils.wsol_eval` from here


def rect_map(*rects: tuple[int, int, int, int, float], size: int = 224) -> np.ndarray:
    """A size x size float64 map of zeros with value v on rows y0..y1 and columns x0..x1 (inclusive)."""
    m = np.zeros((size, size))
    for x0, y0, x1, y1, v in rects:
        m[y0:y1 + 1, x0:x1 + 1] = v
    return m


# ------------------------------------------------------------------------------------------- IoU and resize
def test_iou_plus1_by_hand():
    # [0,0,2,2] and [1,1,3,3] are 3 x 3 = 9 pixels each and share the 2 x 2 block [1,1,2,2]: 4 / (9 + 9 - 4)
    assert iou_plus1(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]]))[0, 0] == pytest.approx(4 / 14)
    # 10 x 10 boxes overlapping on 5 x 5: 25 / 175
    assert iou_plus1(np.array([[0, 0, 9, 9]]), np.array([[5, 5, 14, 14]]))[0, 0] == pytest.approx(1 / 7)
    # boxes that touch on column 2 share one 1 x 3 column under the +1 convention: 3 / 15
    assert iou_plus1(np.array([[0, 0, 2, 2]]), np.array([[2, 0, 4, 2]]))[0, 0] == pytest.approx(0.2)
    assert iou_plus1(np.array([[0, 0, 1, 1]]), np.array([[3, 3, 4, 4]]))[0, 0] == 0
    assert iou_plus1(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 1  # a single pixel
    ious = iou_plus1(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [9, 9, 9, 9]]))
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious, [[4 / 14, 1, 0], [1, 4 / 14, 0]])


def test_resize_box_truncates():
    # 10*224/300 = 7.47, 20*224/400 = 11.2, 299*224/300 = 223.25, 399*224/400 = 223.44
    assert resize_box_224((10, 20, 299, 399), 300, 400) == (7, 11, 223, 223)
    # 1*224/3 = 74.67 and 2*224/3 = 149.33: truncated, not rounded (rounding would give 75)
    assert resize_box_224((1, 1, 2, 2), 3, 3) == (74, 74, 149, 149)
    assert resize_box_224(("50", "50", "100", "100"), 200, 100, target=100) == (25, 50, 50, 100)
    assert all(isinstance(v, int) for v in resize_box_224((1.5, 2.5, 3.5, 4.5), 10, 10))


# ------------------------------------------------------------------------------------------- boxes
def test_rectangle_box_is_one_past_last_pixel():
    # ones on rows 50..99, columns 40..119: boundingRect (40, 50, 80, 50) -> box [40, 50, 120, 100]
    boxes = boxes_at_thresholds(rect_map((40, 50, 119, 99, 1.0)), cam_thresholds(0.01), multi_contour=False)
    assert len(boxes) == 100
    for b in boxes:
        np.testing.assert_array_equal(b, [[40, 50, 120, 100]])
    # touching the right/bottom edge: x + w = 224 is clipped to 223
    b = boxes_at_thresholds(rect_map((200, 210, 223, 223, 1.0)), [0.5], multi_contour=True)[0]
    np.testing.assert_array_equal(b, [[200, 210, 223, 223]])


def test_empty_map_gives_zero_box():
    for b in boxes_at_thresholds(np.zeros((224, 224)), cam_thresholds(0.1), multi_contour=True):
        np.testing.assert_array_equal(b, [[0, 0, 0, 0]])


def test_single_rectangle_maxboxacc_100():
    # predicted [40,50,120,100] vs GT [40,50,119,99]: IoU 4000 / 4131 = 0.968 >= 0.7 at every threshold
    ev = BoxEvaluator(cam_curve_interval=0.01)
    ev.accumulate(rect_map((40, 50, 119, 99, 1.0)), np.array([[40, 50, 119, 99]]))
    res = ev.compute()
    assert ev.count == 1
    assert res["maxboxacc"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    assert res["mean"] == 100.0
    assert res["best_threshold"] == {"30": 0.0, "50": 0.0, "70": 0.0}  # the first of equal accuracies
    for acc in ev.accuracies().values():
        assert (acc == 100).all()


@pytest.mark.parametrize("scale, interval, best", [(1.0, 0.01, 0.50), (1.0, 0.001, 0.499), (0.5, 0.001, 0.497)])
def test_best_threshold_of_halo_map(scale, interval, best):
    # inner square (value scale) = GT, inside a 180 x 180 halo (value scale / 2). The halo's box
    # [20,20,200,200] has IoU 3600 / 181^2 = 0.11 with the GT: wrong at every δ. It drops out once
    # int(t * max) reaches the halo's grey level. scale 1: levels 255 and 127, so t >= 127/255 = 0.49804;
    # on the 0.01 grid 0.49 * 255 = 124.95 -> 124 keeps it, 0.50 -> 127 drops it; on the 0.001 grid
    # 0.498 -> 126 keeps, 0.499 -> 127 drops. scale 0.5: levels 127 and 63 (0.25 * 255 = 63.75),
    # 0.496 * 127 = 62.99 -> 62 keeps, 0.497 * 127 = 63.12 -> 63 drops.
    m = rect_map((20, 20, 199, 199, scale / 2), (80, 80, 139, 139, scale))
    ev = BoxEvaluator(cam_curve_interval=interval, multi_contour=False)
    ev.accumulate(m, np.array([[80, 80, 139, 139]]))
    res = ev.compute()
    assert res["maxboxacc"] == {"30": 100.0, "50": 100.0, "70": 100.0}
    for d in ("30", "50", "70"):
        assert res["best_threshold"][d] == pytest.approx(best, abs=1e-9)
    t = np.asarray(ev.thresholds)
    np.testing.assert_array_equal(ev.accuracies()[50], np.where(t < best - 1e-9, 0.0, 100.0))


def test_iou_exactly_at_threshold_counts():
    # ones on rows 10..29, columns 10..20 -> box [10,10,21,30], 12 x 21 = 252 pixels; GT [10,10,15,30] is
    # 6 x 21 = 126 pixels inside it: IoU 126 / 252 = 0.5 exactly, which is correct at δ = 50 (>=)
    ev = BoxEvaluator(iou_thresholds=[50, 51])
    ev.accumulate(rect_map((10, 10, 20, 29, 1.0)), np.array([[10, 10, 15, 30]]))
    assert ev.compute()["maxboxacc"] == {"50": 100.0, "51": 0.0}


def test_multi_contour_changes_result():
    # a large distractor (rows/cols 10..109) and the object (150..189); only the largest contour is kept
    # without multi-contour: box [10,10,110,110], IoU 0 with GT. With it, [150,150,190,190]: 1600/1681.
    m = rect_map((10, 10, 109, 109, 1.0), (150, 150, 189, 189, 1.0))
    gt = np.array([[150, 150, 189, 189]])
    single, multi = BoxEvaluator(multi_contour=False), BoxEvaluator(multi_contour=True)
    single.accumulate(m, gt)
    multi.accumulate(m, gt)
    assert single.compute()["maxboxacc"] == {"30": 0.0, "50": 0.0, "70": 0.0}
    assert multi.compute()["maxboxacc"] == {"30": 100.0, "50": 100.0, "70": 100.0}


def test_best_over_gt_boxes_and_accuracy_over_images():
    # image 1: two GT boxes, the second matches. image 2: IoU 0.33 (correct at 30 only, see the CLI test).
    ev = BoxEvaluator(iou_thresholds=[30, 50])
    ev.accumulate(rect_map((40, 50, 119, 99, 1.0)), np.array([[0, 0, 5, 5], [40, 50, 119, 99]]))
    ev.accumulate(rect_map((60, 10, 159, 109, 1.0)), np.array([[10, 10, 109, 109]]))
    res = ev.compute()
    assert res["maxboxacc"] == {"30": 100.0, "50": 50.0}
    assert res["mean"] == pytest.approx(75.0)


def literal_boxes(scoremap, thresholds, multi):
    """The protocol step by step, one threshold at a time (the reference for the level-caching code)."""
    img = (scoremap * 255).astype(np.uint8)
    out = []
    for t in thresholds:
        _, binary = cv2.threshold(img, int(t * img.max()), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if not contours:
            out.append([[0, 0, 0, 0]])
            continue
        if not multi:
            contours = [max(contours, key=cv2.contourArea)]
        rects = [cv2.boundingRect(c) for c in contours]
        out.append([[x, y, min(x + w, 223), min(y + h, 223)] for x, y, w, h in rects])
    return out


def test_boxes_equal_literal_protocol_on_varied_maps():
    rs = np.random.RandomState(0)
    smooth = cv2.resize(rs.rand(7, 7) ** 2, (224, 224), interpolation=cv2.INTER_CUBIC)
    maps = [
        (smooth - smooth.min()) / (smooth.max() - smooth.min()),
        np.kron(rs.randint(0, 4, (14, 14)), np.ones((16, 16))) / 3.0,  # few grey levels, many equal areas
        rs.rand(224, 224) * 0.3 + rect_map((30, 40, 150, 120, 0.7)),  # noise: hundreds of contours
    ]
    for m in maps:
        for multi in (False, True):
            got = boxes_at_thresholds(m, cam_thresholds(0.01), multi)
            want = literal_boxes(m, cam_thresholds(0.01), multi)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, np.array(w))


# ------------------------------------------------------------------------------------------- PxAP
def test_pxap_by_hand():
    # interval 0.5: thresholds [0, 0.5], bins [0,.5) [.5,1) [1,2) [2,3]. GT 1 at 0.9 and 0.1, GT 0 at 0.6,
    # 0.7 ignored (255). true hist [1,1,0,0], false [0,1,0,0]; from the top: tp [0,0,1,2], fp [0,0,1,1],
    # precision [-, -, 1/2, 2/3], recall [0, 0, 1/2, 1]: PxAP = 1/2 * 1/2 + 2/3 * 1/2 = 7/12.
    # (Counting the ignored 0.7 as background would give 5/12, as foreground 3/4.)
    ev = PxAPEvaluator(cam_curve_interval=0.5)
    ev.accumulate(np.array([[0.9, 0.7], [0.6, 0.1]]), np.array([[1, 255], [0, 1]], dtype=np.uint8))
    assert ev.compute() == pytest.approx(100 * 7 / 12)


def test_pxap_perfect_separation_and_accumulation():
    ev = PxAPEvaluator(cam_curve_interval=0.01)
    ev.accumulate(np.array([[0.9, 0.2], [0.6, 0.1]]), np.array([[1, 0], [1, 0]], dtype=np.uint8))
    assert ev.compute() == pytest.approx(100.0)
    # a second image where the background outscores the foreground halves precision at the top:
    # fg 0.3 / bg 0.95 -> from the top: (0.95 bg) p=0, then 0.9, 0.6 fg -> p 1/2, 2/3; then 0.3 -> 3/4
    ev.accumulate(np.array([[0.3, 0.95]]), np.array([[1, 0]], dtype=np.uint8))
    # recall steps of 1/3 at precisions 1/2 (0.9), 2/3 (0.6), 3/4 (0.3)
    assert ev.compute() == pytest.approx(100 * (1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert ev.count == 2


def test_pxap_needs_foreground():
    ev = PxAPEvaluator()
    ev.accumulate(np.full((2, 2), 0.5), np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(UserError, match="foreground"):
        ev.compute()


# ------------------------------------------------------------------------------------------- rejections
@pytest.mark.parametrize("bad, what", [
    (np.zeros((224, 224, 1)), "2-D"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.full((4, 4), 1.5), r"\[0, 1\]"),
    (np.full((4, 4), -0.1), r"\[0, 1\]"),
    ([[0.5]], "NumPy array"),
])
def test_check_scoremap_rejects(bad, what):
    with pytest.raises(UserError, match=what) as e:
        check_scoremap(bad, name="maps/x.npy")
    assert "maps/x.npy" in str(e.value)


def test_evaluators_reject_bad_maps():
    with pytest.raises(UserError):
        BoxEvaluator().accumulate(np.full((224, 224), 1.5), np.array([[0, 0, 9, 9]]))
    with pytest.raises(UserError):
        PxAPEvaluator().accumulate(np.zeros((2, 2, 2)), np.zeros((2, 2), dtype=np.uint8))
    check_scoremap(np.zeros((3, 3)))  # 0 and 1 are fine
    check_scoremap(np.ones((3, 3), dtype=np.float32))


def test_str2bool():
    assert [str2bool(v) for v in ("true", "True", "1", "yes")] == [True] * 4
    assert [str2bool(v) for v in ("false", "FALSE", "0", "no")] == [False] * 4
    with pytest.raises(Exception):
        str2bool("maybe")


# ------------------------------------------------------------------------------------------- CLI
IMAGES = [  # id, (width, height), GT box in the original image, map rectangles in the 224 frame
    # 20*224/448 = 10, 219*224/448 = 109.5 -> 109; 40*224/896 = 10, 439*224/896 = 109.75 -> 109.
    # predicted [10,10,110,110]: IoU 10000/10201 = 0.98 -> correct at 30, 50, 70
    ("001.A/a.jpg", (448, 896), (20, 40, 219, 439), [(10, 10, 109, 109, 1.0)]),
    # GT [10,10,109,109]; predicted [60,10,160,110]: 50*100 / (10000 + 10201 - 5000) = 0.329 -> 30 only
    ("001.A/b.jpg", (448, 448), (20, 20, 219, 219), [(60, 10, 159, 109, 1.0)]),
    # GT [150,150,199,199]; predicted [10,10,50,50]: IoU 0
    ("002.B/c.jpg", (224, 224), (150, 150, 199, 199), [(10, 10, 49, 49, 1.0)]),
]


def write_dataset(root: Path, images=IMAGES) -> tuple[Path, Path]:
    meta, maps = root / "metadata" / "CUB" / "test", root / "scoremaps"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i, *_ in images))
    (meta / "class_labels.txt").write_text("".join(f"{i},{k}\n" for k, (i, *_) in enumerate(images)))
    (meta / "image_sizes.txt").write_text("".join(f"{i},{w},{h}\n" for i, (w, h), *_ in images))
    (meta / "localization.txt").write_text("".join(f"{i},{b[0]},{b[1]},{b[2]},{b[3]}\n" for i, _, b, _ in images))
    for iid, _, _, rects in images:
        (maps / iid).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{iid}.npy", rect_map(*rects))
    return root / "metadata", maps


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.wsol_eval", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_end_to_end(tmp_path):
    meta, maps = write_dataset(tmp_path)
    out = tmp_path / "res" / "wsol.json"
    p = run_cli("--scoremap_root", str(maps), "--metadata_root", str(meta), "--dataset_name", "CUB",
                "--cam_curve_interval", "0.01", "--multi_contour_eval", "true", "--json", str(out))
    assert p.returncode == 0, p.stderr
    got = json.loads(out.read_text())
    assert got["maxboxacc"] == {"30": 200 / 3, "50": 100 / 3, "70": 100 / 3}
    assert got["mean"] == pytest.approx((200 / 3 + 100 / 3 + 100 / 3) / 3)
    assert got["localization"] == got["mean"]  # --multi_iou_eval defaults to true
    assert "pxap" not in got and got["count"] == 3
    assert "MaxBoxAccV2" in p.stdout and "66.67" in p.stdout


def test_cli_with_cub_masks_reports_pxap(tmp_path):
    meta, maps = write_dataset(tmp_path)
    masks = tmp_path / "segmentations"
    for iid, (w, h), b, rects in IMAGES:
        x0, y0, x1, y1 = resize_box_224(b, w, h)
        m = np.zeros((448, 448), np.uint8)  # written at twice the size: NEAREST takes every other pixel
        m[2 * y0:2 * y1 + 2, 2 * x0:2 * x1 + 2] = 200
        if iid.endswith("c.jpg"):
            m[20:100, 20:100] = 100  # <= 127: background, though the map scores it 1
        (masks / iid).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(masks / iid.replace(".jpg", ".png")), m)
    out = tmp_path / "wsol.json"
    main(["--scoremap_root", str(maps), "--metadata_root", str(meta / "CUB" / "test"), "--dataset_name", "CUB",
          "--mask_root", str(masks), "--multi_iou_eval", "false", "--json", str(out)])
    got = json.loads(out.read_text())
    # scores are 0 or 1. foreground scored 1: a 10000 + b 5000 = 15000; scored 0: b 5000 + c 2500.
    # background scored 1: b 5000 + c 1600. Two operating points: {>= 1}: P = 15000/21600, R = 2/3;
    # {>= 0}: everything, P = 22500 / (3 * 224^2), R = 1.
    want = 100 * (15000 / 21600 * 2 / 3 + 22500 / (3 * 224 ** 2) / 3)
    assert got["pxap"] == pytest.approx(want)
    assert got["localization"] == got["maxboxacc"]["50"] == 100 / 3  # --multi_iou_eval false: δ = 50


def test_cli_workers_give_same_figures(tmp_path):
    rs = np.random.RandomState(1)
    images = [(f"x/{k:02d}.jpg", (300, 200), tuple(int(v) for v in (rs.randint(0, 100), rs.randint(0, 60),
                                                                  rs.randint(150, 299), rs.randint(120, 199))),
               [(int(rs.randint(0, 80)), int(rs.randint(0, 80)), int(rs.randint(120, 220)),
                 int(rs.randint(120, 220)), float(rs.uniform(0.3, 1)))]) for k in range(40)]
    meta, maps = write_dataset(tmp_path, images)
    common = ["--scoremap_root", str(maps), "--metadata_root", str(meta), "--dataset_name", "CUB"]
    one = main(common + ["--workers", "1"])
    two = main(common + ["--workers", "2"])
    assert one == two


def test_cli_rejects_missing_and_bad_inputs(tmp_path):
    meta, maps = write_dataset(tmp_path)
    common = ["--scoremap_root", str(maps), "--metadata_root", str(meta), "--dataset_name", "CUB"]
    os.remove(maps / "002.B" / "c.jpg.npy")
    p = run_cli(*common)
    assert p.returncode == 2 and "error:" in p.stderr and "c.jpg.npy" in p.stderr
    np.save(maps / "002.B" / "c.jpg.npy", np.full((224, 224), 1.5))
    with pytest.raises(UserError, match=r"c\.jpg\.npy.*\[0, 1\]"):
        main(common)
    os.remove(meta / "CUB" / "test" / "image_sizes.txt")
    with pytest.raises(UserError, match="image_sizes.txt"):
        main(common)
    with pytest.raises(UserError, match="image_ids.txt"):
        main(["--scoremap_root", str(maps), "--metadata_root", str(tmp_path / "nowhere"), "--dataset_name", "CUB"])


def test_read_metadata_both_layouts(tmp_path):
    meta, _ = write_dataset(tmp_path)
    nested = read_metadata(str(meta), "CUB", "test")
    direct = read_metadata(str(meta / "CUB" / "test"), "CUB", "test")
    assert nested["image_ids"] == direct["image_ids"] == [i for i, *_ in IMAGES]
    assert nested["image_sizes"]["001.A/a.jpg"] == (448, 896)
    assert nested["boxes"]["001.A/b.jpg"] == [(20.0, 20.0, 219.0, 219.0)]
    assert nested["class_labels"]["002.B/c.jpg"] == 2


def test_openimages_pxap_with_ignore_regions(tmp_path):
    # image 1: foreground rows/cols 10..59 (2500 px) scored 1; an ignore box scored 0.5 (left out).
    # image 2 (no ignore box): foreground rows/cols 0..9 (100 px) scored 0.2, background block scored 0.25.
    # From the top: score 1 -> P 1, R 2500/2600; 0.25 adds 100 FP (R unchanged); 0.2 -> P 2600/2700, R 1.
    # Counting the ignored 0.5 block as background would add 2500 FP before the last step.
    meta = tmp_path / "metadata" / "OpenImages" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("c1/one.jpg\nc2/two.jpg\n")
    (meta / "localization.txt").write_text("c1/one.jpg,test/c1/one_m1.png,test/c1/one_ignore.png\n"
                                           "c2/two.jpg,test/c2/two_m1.png,\n")
    masks = tmp_path / "masks" / "OpenImages" / "test"
    for name, rects in (("c1/one_m1.png", [(10, 10, 59, 59, 255)]), ("c1/one_ignore.png", [(100, 100, 149, 149, 255)]),
                        ("c2/two_m1.png", [(0, 0, 9, 9, 255)])):
        (masks / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(masks / name), rect_map(*rects).astype(np.uint8))
    maps = tmp_path / "scoremaps"
    (maps / "c1").mkdir(parents=True)
    (maps / "c2").mkdir()
    np.save(maps / "c1" / "one.jpg.npy", rect_map((10, 10, 59, 59, 1.0), (100, 100, 149, 149, 0.5)))
    np.save(maps / "c2" / "two.jpg.npy", rect_map((0, 0, 9, 9, 0.2), (200, 200, 209, 209, 0.25)))
    res = main(["--scoremap_root", str(maps), "--metadata_root", str(tmp_path / "metadata"),
                "--dataset_name", "OpenImages", "--mask_root", str(tmp_path / "masks")])
    assert res["pxap"] == pytest.approx(100 * (2500 / 2600 + 100 / 2700))
    assert res["localization"] == res["pxap"] and "maxboxacc" not in res


# ------------------------------------------------------------------------------------------- their ILSVRC files
# The first lines of wsolevaluation's published metadata/ILSVRC/test/ (the ILSVRC2012 val set; their files end
# without a newline). val_2's first box is clipped to its 500-pixel width (499).
ILSVRC_TEST = {
    "image_ids.txt": ["val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG",
                      "val/ILSVRC2012_val_00000003.JPEG"],
    "class_labels.txt": ["val/ILSVRC2012_val_00000001.JPEG,65", "val/ILSVRC2012_val_00000002.JPEG,970",
                         "val/ILSVRC2012_val_00000003.JPEG,230"],
    "image_sizes.txt": ["val/ILSVRC2012_val_00000001.JPEG,500,375", "val/ILSVRC2012_val_00000002.JPEG,500,375",
                        "val/ILSVRC2012_val_00000003.JPEG,500,375"],
    "localization.txt": ["val/ILSVRC2012_val_00000001.JPEG,111,108,441,193",
                         "val/ILSVRC2012_val_00000002.JPEG,45,49,499,162",
                         "val/ILSVRC2012_val_00000002.JPEG,2,69,437,207",
                         "val/ILSVRC2012_val_00000003.JPEG,38,19,385,373"],
}


def write_ilsvrc_as_published(root: Path, split: str = "test", files: dict = ILSVRC_TEST) -> Path:
    folder = root / "metadata" / "ILSVRC" / split
    folder.mkdir(parents=True)
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines))
    return root / "metadata"


def test_ilsvrc_metadata_as_published_finds_maps_under_val(tmp_path):
    meta = write_ilsvrc_as_published(tmp_path)
    maps = tmp_path / "scoremaps"
    (maps / "val").mkdir(parents=True)
    # in the 224 frame (x * 224 / 500, y * 224 / 375, truncated): val_1's GT is [49,64,197,115], val_2's
    # [20,29,223,96] and [0,41,195,123], val_3's [17,11,172,222]. The maps' rectangles give exactly the first two
    # (box = one past the last pixel, clipped to 223); val_3's [180,0,223,11] misses: 2 of 3 at every δ.
    for n, rect in ((1, (49, 64, 196, 114, 1.0)), (2, (20, 29, 222, 95, 1.0)), (3, (180, 0, 223, 10, 1.0))):
        np.save(maps / "val" / f"ILSVRC2012_val_{n:08d}.JPEG.npy", rect_map(rect))
    common = ["--scoremap_root", str(maps), "--metadata_root", str(meta), "--dataset_name", "ILSVRC"]
    res = main(common + ["--split", "test"])
    assert res["count"] == 3 and res["maxboxacc"] == {"30": 200 / 3, "50": 200 / 3, "70": 200 / 3}
    assert read_metadata(str(meta), "ILSVRC", "test")["boxes"]["val/ILSVRC2012_val_00000002.JPEG"] == [
        (45.0, 49.0, 499.0, 162.0), (2.0, 69.0, 437.0, 207.0)]

    # their ILSVRC "val" is ImageNetV2: asking for it here says where the ILSVRC2012 val set is
    p = run_cli(*common, "--split", "val")
    assert p.returncode == 2 and "ImageNetV2" in p.stderr and "--split test" in p.stderr
    assert "Traceback" not in p.stderr

    # maps saved under the bare file name are not taken for another image's, and the message says why
    os.replace(maps / "val" / "ILSVRC2012_val_00000001.JPEG.npy", maps / "ILSVRC2012_val_00000001.JPEG.npy")
    with pytest.raises(UserError, match=r"val/ILSVRC2012_val_00000001\.JPEG\.npy.*full image id"):
        main(common)


def test_ilsvrc_val_split_is_imagenetv2(tmp_path, capsys):
    # their metadata/ILSVRC/val/ lines (ImageNetV2, ids val2/<class>/<n>.jpeg) score as given, with a note;
    # a val folder holding ILSVRC2012 ids is a mix-up and is refused
    v2 = {"image_ids.txt": ["val2/0/0.jpeg"], "image_sizes.txt": ["val2/0/0.jpeg,500,375"],
          "localization.txt": ["val2/0/0.jpeg,156,163,318,230"]}
    meta = write_ilsvrc_as_published(tmp_path, "val", v2)
    maps = tmp_path / "scoremaps" / "val2" / "0"
    maps.mkdir(parents=True)
    np.save(maps / "0.jpeg.npy", np.zeros((224, 224)))
    common = ["--scoremap_root", str(tmp_path / "scoremaps"), "--metadata_root", str(meta),
              "--dataset_name", "ILSVRC", "--split", "val"]
    assert main(common)["count"] == 1
    assert "ImageNetV2" in capsys.readouterr().err
    other = tmp_path / "other"
    meta = write_ilsvrc_as_published(other, "val", {k: [line.replace("val2/0/0.jpeg", "ILSVRC2012_val_00000001.JPEG")
                                                        for line in v] for k, v in v2.items()})
    with pytest.raises(UserError, match="ImageNetV2.*ILSVRC2012_val_00000001.JPEG"):
        main(["--scoremap_root", str(tmp_path / "scoremaps"), "--metadata_root", str(meta),
              "--dataset_name", "ILSVRC", "--split", "val"])
