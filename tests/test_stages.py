"""Every stage script end to end on a tiny synthetic CUB set (through subprocesses, as a user runs
them), and the bad inputs the scripts promise to reject with one clear line."""
import json
import os
import shutil

import numpy as np
import pytest

from bad_files import write_cmyk_jpeg, write_corrupt_file, write_grayscale_jpeg, write_truncated_jpeg
from conftest import run_script
from dataset.synthetic import make_cub

SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "64", "--crop", "56"]
TRAIN = ["--pretrained", "none", "--batch_size", "8"]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """4 classes x (4 train + 2 test) images; one train image grayscale and one CMYK, as in real CUB."""
    root = str(tmp_path_factory.mktemp("data") / "CUB_200_2011")
    make_cub(root, num_classes=4, train_per_class=4, val_per_class=2, seed=3, min_size=64, max_size=96)
    names = [line.split()[1] for line in open(os.path.join(root, "images.txt"))]
    split = [line.split()[1] for line in open(os.path.join(root, "train_test_split.txt"))]
    train = [n for n, s in zip(names, split) if s == "1"]
    import cv2
    for name, writer in zip(train[:2], (write_grayscale_jpeg, write_cmyk_jpeg)):
        path = os.path.join(root, "images", name)
        h, w = cv2.imread(path).shape[:2]
        if writer is write_cmyk_jpeg:
            pytest.importorskip("PIL")
        writer(path, h, w)
    run_script("dataset/prepare.py", "cub", "--root", root)
    return root


@pytest.fixture(scope="module")
def pipeline(cub, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cam, seg, cls = out / "cam", out / "seg", out / "cls"
    run_script("cub200-cam/train.py", "--datapath", cub, "--clsnum", 4, "--epoch", 2, "--snapshot_from", 1,
               "--savepath", cam, *SMALL, *TRAIN)
    masks = run_script("cub200-cam/test.py", "--datapath", cub, "--clsnum", 4, "--snapshot", cam / "model-2.pth",
                       "--maskpath", cam / "masks", "--post_workers", "2", *SMALL)
    run_script("cub200-seg/train.py", "--datapath", cub, "--maskpath", cam / "masks", "--epoch", 1,
               "--savepath", seg, *SMALL, *TRAIN)
    run_script("cub200-cls/train.py", "--datapath", cub, "--clsnum", 4, "--arch", "resnet18", "--epoch", 1,
               "--savepath", cls, *SMALL, *TRAIN)
    run_script("cub200-cls/test.py", "--datapath", cub, "--clsnum", 4, "--arch", "resnet18", "--snapshot",
               cls / "model-1.pth", "--savepath", cls, "--device", "cpu", "--num_workers", "0", "--size", "64")
    test = run_script("cub200-seg/test.py", "--datapath", cub, "--snapshot", seg / "model-1.pth",
                      "--top1top5", cls / "top1top5.npy", "--savepath", seg, *SMALL)
    return {"cam": cam, "seg": seg, "cls": cls, "masks_out": masks.stdout, "test_out": test.stdout}


def test_cam_stage_writes_snapshots_logs_and_one_mask_per_train_image(cub, pipeline):
    cam = pipeline["cam"]
    assert (cam / "model-1.pth").is_file() and (cam / "model-2.pth").is_file() and (cam / "checkpoint.pth").is_file()
    log = [json.loads(line) for line in open(cam / "log.jsonl")]
    assert log and all(np.isfinite(r["loss"]) for r in log)
    assert json.load(open(cam / "args.json"))["clsnum"] == 4
    train = [line.split(",")[0] for line in open(os.path.join(cub, "train.txt"))]
    import cv2
    for name in train:
        mask = cv2.imread(str(cam / "masks" / (os.path.splitext(name)[0] + ".png")))
        image = cv2.imread(os.path.join(cub, "images", name))
        assert mask is not None and mask.shape == image.shape and mask[..., 2].max() == 0


def test_cam_test_skips_masks_that_exist(cub, pipeline):
    again = run_script("cub200-cam/test.py", "--datapath", cub, "--clsnum", 4, "--snapshot",
                       pipeline["cam"] / "model-2.pth", "--maskpath", pipeline["cam"] / "masks", *SMALL)
    assert "16 masks already" in again.stdout and "0 to write" in again.stdout


def test_cam_test_png_writers_give_the_same_masks(cub, pipeline, tmp_path):
    """--png_writer opencv (the writer before fpng) and the default read back as the same arrays."""
    out = run_script("cub200-cam/test.py", "--datapath", cub, "--clsnum", 4, "--snapshot",
                     pipeline["cam"] / "model-2.pth", "--maskpath", tmp_path, "--png_writer", "opencv",
                     "--post_workers", "0", *SMALL)
    import cv2
    assert "PNG writer: opencv" in out.stdout
    default = sorted(p.relative_to(pipeline["cam"] / "masks") for p in (pipeline["cam"] / "masks").rglob("*.png"))
    assert len(default) == 16 and default == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    for rel in default:
        assert np.array_equal(cv2.imread(str(pipeline["cam"] / "masks" / rel)), cv2.imread(str(tmp_path / rel)))


def test_seg_test_reports_and_writes_metrics_and_boxes(cub, pipeline):
    seg = pipeline["seg"]
    m = json.load(open(seg / "metrics.json"))
    assert m["count"] == 8
    for key in ("gt_known_loc", "top1_loc", "top5_loc", "gt_known_loc_class_mean", "empty"):
        assert key in m
    assert 0 <= m["top1_loc"] <= m["top5_loc"] <= m["gt_known_loc"] <= 100
    rows = open(seg / "boxes.csv").read().splitlines()
    assert rows[0] == "name,xmin,ymin,xmax,ymax,iou,correct" and len(rows) == 9
    assert "GT-known Loc" in pipeline["test_out"] and "Top-1 Loc" in pipeline["test_out"]


def test_cls_stage_writes_a_pickle_free_top1top5(pipeline):
    arr = np.load(pipeline["cls"] / "top1top5.npy", allow_pickle=False)
    assert arr.dtype.names == ("name", "top1", "top5") and len(arr) == 8
    assert np.all(arr["top5"] | ~arr["top1"])          # top-1 right implies top-5 right


def test_threshold_one_gives_empty_masks_counted_as_failures(cub, pipeline, tmp_path):
    run_script("cub200-seg/test.py", "--datapath", cub, "--snapshot", pipeline["seg"] / "model-1.pth",
               "--threshold", "1.0", "--savepath", tmp_path, *SMALL)
    m = json.load(open(tmp_path / "metrics.json"))
    assert m["count"] == 8 and m["empty"] == 8 and m["gt_known_loc"] == 0.0
    assert all(row.split(",")[1] == "" for row in open(tmp_path / "boxes.csv").read().splitlines()[1:])


def test_scripts_run_from_their_own_folder(cub, pipeline, root):
    p = run_script("test.py", "--datapath", cub, "--snapshot", pipeline["seg"] / "model-1.pth",
                   "--savepath", pipeline["seg"] / "from_cwd", *SMALL, cwd=os.path.join(root, "cub200-seg"))
    assert "GT-known Loc" in p.stdout


# ----------------------------------------------------------------------------------------- bad input
def _copy(cub, tmp_path):
    dst = tmp_path / "CUB_200_2011"
    shutil.copytree(cub, dst)
    first = open(dst / "train.txt").readline().split(",")[0]
    return str(dst), dst / "images" / first


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated", "empty"])
def test_bad_training_image_stops_naming_the_file(cub, tmp_path, damage):
    data, image = _copy(cub, tmp_path)
    if damage == "missing":
        os.remove(image)
    elif damage == "corrupt":
        write_corrupt_file(str(image))
    elif damage == "empty":
        open(image, "wb").close()       # a zero-byte file (an interrupted copy)
    else:
        write_truncated_jpeg(str(image), 80, 80)
    p = run_script("cub200-cam/train.py", "--datapath", data, "--clsnum", 4, "--epoch", 1,
                   "--savepath", tmp_path / "o", *SMALL, *TRAIN, check=False)
    assert p.returncode == 2 and str(image) in p.stderr and "Traceback" not in p.stderr


def test_skip_bad_images_logs_and_counts_them(cub, tmp_path):
    data, image = _copy(cub, tmp_path)
    write_corrupt_file(str(image))
    p = run_script("cub200-cam/train.py", "--datapath", data, "--clsnum", 4, "--epoch", 1, "--on-bad-image", "skip",
                   "--savepath", tmp_path / "o", *SMALL, *TRAIN)
    assert "1 bad files were skipped" in p.stdout
    assert str(image) in open(tmp_path / "o" / "skipped.txt").read()


def test_missing_mask_stops_seg_training(cub, pipeline, tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(pipeline["cam"] / "masks", masks)
    victim = next(masks.rglob("*.png"))
    os.remove(victim)
    p = run_script("cub200-seg/train.py", "--datapath", cub, "--maskpath", masks, "--epoch", 1,
                   "--savepath", tmp_path / "o", *SMALL, *TRAIN, check=False)
    assert p.returncode == 2 and str(victim) in p.stderr and "pseudo mask missing" in p.stderr


@pytest.mark.parametrize("args,message", [
    (["--pretrained", "/nonexistent/resnet.pth"], "pretrained weights not found"),
    (["--datapath", "/nonexistent/CUB"], "data folder not found"),
    (["--list", "nolist.txt"], "list file not found"),
])
def test_missing_inputs_give_one_clear_line(cub, tmp_path, args, message):
    base = ["--datapath", cub, "--clsnum", 4, "--epoch", 1, "--savepath", tmp_path, "--backbone", "resnet18",
            "--device", "cpu", "--num_workers", "0", "--pretrained", "none"]
    p = run_script("cub200-cam/train.py", *base, *args, check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_help_explains_every_flag(root):
    p = run_script("cub200-seg/test.py", "--help")
    for flag in ("--datapath", "--snapshot", "--threshold", "--top1top5", "--device", "--amp", "--on-bad-image"):
        assert flag in p.stdout
    assert "default: 0.2" in p.stdout


def test_timm_classifier_through_the_cls_stage(cub, tmp_path):
    """`--arch timm:<name>` with a stand-in timm (tests/fake_timm; real timm needs torchvision): the
    ImageNet file fills everything but the classifier, training and top-1/top-5 work, and a file of
    another architecture is one clear error."""
    import torch
    sys_path = {"PYTHONPATH": os.path.join(os.path.dirname(__file__), "fake_timm")}
    from fake_timm.timm import TinyNet
    torch.save(TinyNet(1000).state_dict(), tmp_path / "imagenet.pth")
    args = ["--datapath", cub, "--clsnum", 4, "--arch", "timm:tinynet", "--device", "cpu", "--num_workers", 0,
            "--size", 64]
    run_script("cub200-cls/train.py", *args, "--crop", 56, "--epoch", 1, "--batch_size", 8, "--pretrained",
               tmp_path / "imagenet.pth", "--savepath", tmp_path, env=sys_path)
    w = torch.load(tmp_path / "model-1.pth", weights_only=True)
    assert w["classifier.weight"].shape == (4, 8) and "conv_stem.weight" in w
    run_script("cub200-cls/test.py", *args, "--snapshot", tmp_path / "model-1.pth", "--savepath", tmp_path,
               env=sys_path)
    assert len(np.load(tmp_path / "top1top5.npy")) == 8

    torch.save({"conv_stem.weight": torch.zeros(8, 1, 3, 3)}, tmp_path / "other.pth")
    p = run_script("cub200-cls/train.py", *args, "--crop", 56, "--epoch", 1, "--batch_size", 8, "--pretrained",
                   tmp_path / "other.pth", "--savepath", tmp_path / "x", env=sys_path, check=False)
    assert p.returncode == 2 and "does not fit timm:tinynet" in p.stderr and "Traceback" not in p.stderr
