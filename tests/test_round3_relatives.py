"""Relatives of issue 33's cases in the readers and tools its audit did not reach: images that bypassed the pixel
limit (pseudo masks, wsolevaluation's ground-truth masks, the header check's EXIF look-up, pool workers that did not
know --max-pixels), text files that bypassed the one encoding rule (`prepare.py folder --boxes`, Kaggle's
LOC_val_solution.csv, the bench's --datapath lists), and test.py runs pointed at another stage's run folder."""
from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
import torch
from PIL import PngImagePlugin

from bad_files import write_huge_bmp, write_huge_png
from conftest import prepared_cub, run_inprocess, run_prepare
from conftest import prepare_module as load_prepare
from dataset.synthetic import make_folder
from network import build_mffnet
from utils import bench, wsol_eval
from utils.data import validate
from utils.data.images import BadImage, ImageSet, read_pseudo_mask
from utils.data.lists import Sample
from utils.data.pixels import MAX_PIXELS, pixel_limit, set_max_pixels
from utils.engine.workers import post_pool
from utils.errors import UserError

prepare_module = load_prepare()

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40"]


@pytest.fixture
def limit():
    """Restores this process's pixel limit after a test that changes it."""
    yield
    set_max_pixels(MAX_PIXELS)


def clear_error(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    for f in fragments:
        assert f in p.stderr, (f, p.stderr[-2000:])


# ------------------------------------------------------------------------------------------ pixel limit
@pytest.mark.parametrize("write", [write_huge_png, write_huge_bmp])
def test_a_pseudo_mask_with_a_huge_header_is_a_bad_image_and_skippable(tmp_path, write, limit):
    """cv2.imread of a 60000 x 60000 header raised cv2.error (a traceback under --on-bad-image skip too)."""
    (tmp_path / "masks").mkdir()
    mask = write(str(tmp_path / "masks" / "a.png"))
    with pytest.raises(BadImage, match=r"a.png: too large \(60000 x 60000 = 3,600,000,000 pixels; the limit is "):
        read_pseudo_mask(mask)
    set_max_pixels(10 ** 10)  # past OpenCV's own bound: its refusal is a bad image too
    with pytest.raises(BadImage, match="a.png: not a readable image"):
        read_pseudo_mask(mask)
    set_max_pixels(MAX_PIXELS)
    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.full((8, 8, 3), 90, np.uint8))
    item = ImageSet([Sample("a.jpg", str(image), 0)], lambda i, m, s: (i, m), maskpath=str(tmp_path / "masks"))[0]
    assert item["bad"] == "a.jpg" and "too large" in item["reason"]  # the seg stage's loader counts it


def test_a_ground_truth_mask_with_a_huge_header_is_one_error_line(tmp_path):
    """utils.wsol_eval (and --protocol wsol) read CUB's segmentations and OpenImages' masks with cv2.imread."""
    (tmp_path / "001.X").mkdir()
    write_huge_png(str(tmp_path / "001.X" / "a.png"))
    with pytest.raises(UserError, match=r"001.X/a.png: too large \(60000 x 60000"):
        wsol_eval.cub_mask(str(tmp_path), "001.X/a.jpg")
    with pytest.raises(UserError, match=r"001.X/a.png: too large"):
        wsol_eval.openimages_mask(str(tmp_path), ["001.X/a.png"], "")


def test_the_header_check_never_decodes_an_image_over_the_limit(tmp_path, monkeypatch, limit):
    """Pillow's getexif decodes a whole PNG (to look for EXIF after its pixels): a 15000 x 15000 PNG of 0.7 MB
    cost its pixels' memory before the loader refused it from its header."""
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((40, 30, 3), np.uint8))

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    set_max_pixels(30 * 40 - 1)
    assert validate.read_headers([path], workers=1) == [(30, 40, None)]


def test_post_processing_workers_take_the_parents_pixel_limit(limit):
    """Spawned pool workers (pseudo masks, --protocol wsol's mask scoring) started at the default limit."""
    set_max_pixels(12345)
    with post_pool(1) as pool:
        assert pool.submit(pixel_limit).result(timeout=120) == 12345


# ------------------------------------------------------------------------------------- one encoding rule
def _prepare(*args) -> subprocess.CompletedProcess:
    return run_prepare(*args, check=False)


def test_prepare_folder_boxes_csv_not_utf8_is_one_line_and_a_bom_is_fine(tmp_path):
    paths = make_folder(str(tmp_path / "own"), num_classes=2, per_class=3, new_images=0, min_size=48, max_size=56)
    data, boxes = paths["data"], paths["boxes"]
    text = open(boxes, "rb").read()
    bad = tmp_path / "bad.csv"
    lines = text.split(b"\n")
    bad.write_bytes(b"\n".join(lines[:2] + [lines[2] + b"\xe9"] + lines[3:]))  # Latin-1 bytes in line 3
    p = _prepare("folder", "--root", data, "--boxes", bad)
    clear_error(p, f"{bad}:3: not UTF-8 text", "\\xe9")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text)
    assert _prepare("folder", "--root", data, "--boxes", bom, "--force").returncode == 0
    first = lines[1].decode().split(",")[0]  # a row after the header; `..` is refused as in the lists
    bom.write_bytes(text + f"dog/../{first},1,1,5,5\n".encode())
    clear_error(_prepare("folder", "--root", data, "--boxes", bom, "--force"), f"dog/../{first} (line")


def test_imagenet_val_solution_csv_not_utf8_is_one_line_and_a_bom_is_fine(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(val / f"ILSVRC2012_val_0000000{i}.JPEG"), np.zeros((8, 8, 3), np.uint8))
    rows = b"ILSVRC2012_val_00000001,n01 1 1 5 5\nILSVRC2012_val_00000002,n02 1 1 5 5 \n"
    path = tmp_path / "LOC_val_solution.csv"
    path.write_bytes(b"\xef\xbb\xbfImageId,PredictionString\n" + rows)  # the header was refused for its BOM
    images = prepare_module._val_from_csv(str(path), str(val), ["n01", "n02"])
    assert [(v.name, v.label) for v in images] == [("ILSVRC2012_val_00000001.JPEG", 0),
                                                   ("ILSVRC2012_val_00000002.JPEG", 1)]
    path.write_bytes(b"ImageId,PredictionString\n" + rows.replace(b"n02 1", b"n02 \xff1"))
    with pytest.raises(UserError, match=r"LOC_val_solution.csv:3: not UTF-8 text \(byte 29"):
        prepare_module._val_from_csv(str(path), str(val), ["n01", "n02"])


def test_bench_reads_the_lists_of_datapath_by_the_one_rule(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.txt").write_bytes(b"\xef\xbb\xbfa.jpg,0,1 1 5 5\r\nb.jpg,0,1 1 5 5\r\n")
    (source / "val.txt").write_bytes(b"a.jpg,0,1 1 5 5\nb\xe9.jpg,0,1 1 5 5\n")
    with pytest.raises(UserError, match=r"val.txt:2: not UTF-8 text"):
        bench.linked_cub(str(source), str(tmp_path / "a"), 2)
    (source / "val.txt").write_bytes(b"a.jpg,0,1 1 5 5\nb.jpg,0,1 1 5 5\n")
    bench.linked_cub(str(source), str(tmp_path / "b"), 2)
    assert (tmp_path / "b" / "train.txt").read_text() == "a.jpg,0,1 1 5 5\nb.jpg,0,1 1 5 5\n"


# ------------------------------------------------------------------------ test.py into another stage's run
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-class CUB set, cam and seg models, and folders holding a cam, a seg and a cls training run (their
    args.json as a training run writes it, and a file of theirs a test would replace)."""
    top = tmp_path_factory.mktemp("stagefolders")
    prepared_cub(str(top / "CUB_200_2011"), num_classes=3, train_per_class=2, val_per_class=1, seed=5, min_size=48,
                 max_size=56)
    torch.manual_seed(0)
    torch.save(build_mffnet(3, "resnet18").state_dict(), top / "cam.pth")
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), top / "seg.pth")
    for stage in ("cub200-cam", "cub200-seg", "cub200-cls"):
        (top / stage).mkdir()
        (top / stage / "args.json").write_text(json.dumps({"stage": stage, "command": f"{stage}/train.py"}))
        for name in ("metrics.json", "top1top5.npy"):
            (top / stage / name).write_text("theirs")
        (top / stage / "vis").mkdir()
    return top


def _kept(folder) -> dict:
    return {f: (folder / f).read_text() for f in ("args.json", "metrics.json", "top1top5.npy")}


def test_a_seg_test_refuses_another_stages_run_folder(runs):
    cub, cam = runs / "CUB_200_2011", runs / "cub200-cam"
    kept = _kept(cam)
    seg_test = ["cub200-seg/test.py", "--datapath", cub, "--snapshot", runs / "seg.pth", "--top1top5", "none", *RUN]
    p = run_inprocess(*seg_test, "--savepath", cam, check=False)
    clear_error(p, f"--savepath {cam} holds a run of cub200-cam (its args.json), not of cub200-seg: this run would "
                   f"replace its metrics.json, boxes.csv, vis/ and scoremaps/", "--force")
    assert _kept(cam) == kept
    run_inprocess(*seg_test, "--savepath", runs / "cub200-seg")  # its own stage's run folder
    assert json.loads((runs / "cub200-seg" / "metrics.json").read_text())["count"] == 3
    run_inprocess(*seg_test, "--savepath", cam, "--force")
    assert json.loads((cam / "metrics.json").read_text())["count"] == 3


def test_a_cam_test_refuses_masks_beside_another_stages_run(runs):
    cub, seg = runs / "CUB_200_2011", runs / "cub200-seg"
    cam_test = ["cub200-cam/test.py", "--datapath", cub, "--snapshot", runs / "cam.pth", *RUN]
    p = run_inprocess(*cam_test, "--maskpath", seg / "masks", "--vis", 2, check=False)
    clear_error(p, f"the folder of --maskpath {seg / 'masks'}, {seg}, holds a run of cub200-seg (its args.json), "
                   f"not of cub200-cam: this run would replace its vis/ pictures", "--force")
    assert not (seg / "masks").exists() or not any((seg / "masks").iterdir())
    assert not any((seg / "vis").iterdir())
    run_inprocess(*cam_test, "--maskpath", runs / "cub200-cam" / "masks")  # beside its own stage's run
    assert len(list((runs / "cub200-cam" / "masks").rglob("*.png"))) == 6


def test_a_cls_test_refuses_another_stages_run_folder(runs):
    cub, seg = runs / "CUB_200_2011", runs / "cub200-seg"
    p = run_inprocess("cub200-cls/test.py", "--datapath", cub, "--snapshot", runs / "none.pth", "--arch", "resnet18",
                      "--savepath", seg, *RUN[2:], check=False)
    clear_error(p, f"--savepath {seg} holds a run of cub200-seg (its args.json), not of cub200-cls: this run would "
                   f"replace its top1top5.npy", "--force")
    assert (seg / "top1top5.npy").read_text() == "theirs"


def test_top1top5_names_are_read_in_the_lists_one_form(tmp_path):
    """`./cat/a.jpg` and `cat/a.jpg` were two entries: the list's `cat/a.jpg` took one, the other unseen."""
    from utils.results import match_top1top5, read_top1top5, write_top1top5

    path = str(tmp_path / "top1top5.npy")
    write_top1top5(path, ["./cat/a.jpg", "dog//b.jpg"], [True, False], [True, True])
    assert match_top1top5(read_top1top5(path), ["cat/a.jpg", "dog/b.jpg"], path) == {
        "cat/a.jpg": (True, True), "dog/b.jpg": (False, True)}
    write_top1top5(path, ["./cat/a.jpg", "cat/a.jpg"], [True, False], [True, True])
    with pytest.raises(UserError, match="lists 'cat/a.jpg' twice with different values"):
        read_top1top5(path)
