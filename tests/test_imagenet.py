"""The ImageNet stages on a synthetic ILSVRC2012-layout set (flat and per-synset val folders; XMLs with
two boxes of the class and one of another class), and torchrun on the CPU equal to one process."""
import csv
import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from conftest import run_script
from published_metadata import ilsvrc_val_rows, write_published
from dataset.synthetic import make_imagenet
from network import build_mffnet, build_resnet

SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "64", "--crop", "56"]
SYNSETS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("inet") / "ILSVRC2012")
    make_imagenet(root, synsets=SYNSETS, train_per_class=4, val_per_class=3, seed=2, min_size=64, max_size=96)
    run_script("dataset/prepare.py", "imagenet", "--root", root)
    return root


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "seg.pth"
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), path)
    return path


def test_imagenet_cam_and_seg_train_and_masks(inet, tmp_path):
    cam, seg = tmp_path / "cam", tmp_path / "seg"
    run_script("imagenet-cam/train.py", "--datapath", inet, "--clsnum", 3, "--pretrained", "none", "--batch_size", 4,
               "--snapshot_every", 2, "--savepath", cam, *SMALL)
    assert (cam / "model-2.pth").is_file() and (cam / "model-3.pth").is_file()   # 12 images / 4 = 3 steps
    run_script("imagenet-cam/test.py", "--datapath", inet, "--clsnum", 3, "--snapshot", cam / "model-3.pth",
               "--maskpath", cam / "masks", "--post_workers", 0, *SMALL)
    masks = sorted(str(p.relative_to(cam / "masks")) for p in (cam / "masks").rglob("*.png"))
    train = sorted(os.path.splitext(line.split()[0])[0] + ".png" for line in open(os.path.join(inet, "train.txt")))
    assert masks == train
    run_script("imagenet-seg/train.py", "--datapath", inet, "--maskpath", cam / "masks", "--pretrained", "none",
               "--batch_size", 4, "--snapshot_every", 3, "--savepath", seg, *SMALL)
    assert (seg / "model-3.pth").is_file()


def test_imagenet_frozen_stem_does_not_move(inet, tmp_path):
    torch.manual_seed(1)
    start = build_mffnet(3, "resnet18")
    torch.save(start.state_dict(), tmp_path / "start.pth")
    run_script("imagenet-cam/train.py", "--datapath", inet, "--clsnum", 3, "--pretrained", "none", "--batch_size", 4,
               "--snapshot", tmp_path / "start.pth", "--savepath", tmp_path / "o", *SMALL)
    end = torch.load(tmp_path / "o" / "model-3.pth", weights_only=True)
    assert torch.equal(end["bkbone.conv1.weight"], start.bkbone.conv1.weight)
    assert torch.equal(end["bkbone.bn1.weight"], start.bkbone.bn1.weight)
    assert not torch.equal(end["bkbone.layer1.0.conv1.weight"], start.bkbone.layer1[0].conv1.weight)


def _evaluate(inet, seg_model, out, *extra):
    return run_script("imagenet-seg/test.py", "--datapath", inet, "--snapshot", seg_model, "--savepath", out,
                      "--threshold", 0.5, *SMALL, *extra)


def test_imagenet_eval_uses_every_box_of_the_class_only(inet, seg_model, tmp_path):
    _evaluate(inet, seg_model, tmp_path)
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "boxes.csv"))}
    assert len(rows) == 9
    from utils.method.boxes import best_iou
    from utils.data.lists import read_imagenet_list
    from utils.data.transforms import boxes_to_eval_frame
    import cv2
    samples = {s.name: s for s in read_imagenet_list(inet, "val.txt")}
    several = 0
    for name, r in rows.items():
        s = samples[name]
        several += len(s.boxes) > 1
        if r["xmin"] == "":
            continue
        h, w = cv2.imread(s.path).shape[:2]
        gt = boxes_to_eval_frame(s.boxes, w, h, 64, 56)
        assert float(r["iou"]) == pytest.approx(best_iou([float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")], gt),
                                                abs=1e-6)
    assert several > 0
    # the other class's box is in the XML but not among the image's boxes
    xml_objects = sum(open(os.path.join(inet, "box", os.path.splitext(n)[0] + ".xml")).read().count("<object>")
                      for n in rows)
    assert xml_objects > sum(len(samples[n].boxes) for n in rows)


def test_per_synset_val_layout_gives_the_same_result(inet, seg_model, tmp_path):
    flat = tmp_path / "flat"
    _evaluate(inet, seg_model, flat)
    nested = tmp_path / "ILSVRC2012"
    shutil.copytree(inet, nested)
    synsets = [line.split()[0] for line in open(nested / "synsets.txt")]
    for line in open(nested / "val.txt"):
        name, label = line.split()
        os.makedirs(nested / "val" / synsets[int(label)], exist_ok=True)
        os.replace(nested / "val" / name, nested / "val" / synsets[int(label)] / name)
    _evaluate(str(nested), seg_model, tmp_path / "nested")
    assert open(flat / "boxes.csv").read() == open(tmp_path / "nested" / "boxes.csv").read()


def test_wsol_scoremaps_score_with_wsolevaluations_metadata_and_ours(inet, seg_model, tmp_path):
    """`--protocol wsol` score maps under wsolevaluation's ids (`scoremaps/val/<file>.JPEG.npy`, whatever the val/
    layout), scored by `python -m utils.wsol_eval` with a metadata/ILSVRC/test/ folder as they publish it and with
    the one prepare.py writes: the same figures as metrics.json. One box reaches past its image's border."""
    root = tmp_path / "ILSVRC2012"
    shutil.copytree(inet, root)
    synsets = [line.split()[0] for line in open(root / "synsets.txt")]
    val = [line.split() for line in open(root / "val.txt")]
    for name, label in val:  # val/<synset>/ layout
        os.makedirs(root / "val" / synsets[int(label)], exist_ok=True)
        os.replace(root / "val" / name, root / "val" / synsets[int(label)] / name)
    name, label = val[0]
    xml = ET.parse(root / "box" / (os.path.splitext(name)[0] + ".xml"))
    width, height = (int(xml.find("size").find(k).text) for k in ("width", "height"))
    own = next(o.find("bndbox") for o in xml.iter("object") if o.find("name").text == synsets[int(label)])
    own.find("xmax").text, own.find("ymax").text = str(width), str(height)  # past the last pixel, as many real ones
    xml.write(root / "box" / (os.path.splitext(name)[0] + ".xml"))
    run_script("dataset/prepare.py", "imagenet", "--root", root, "--force")
    theirs = write_published(tmp_path / "metadata" / "ILSVRC" / "test", ilsvrc_val_rows(str(root)))
    ours = root / "wsol_metadata" / "ILSVRC" / "test"
    for f in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        assert (ours / f).read_text().splitlines() == (theirs / f).read_text().splitlines(), f
    x0, y0 = own.find("xmin").text, own.find("ymin").text
    assert f"val/{name},{x0},{y0},{width - 1},{height - 1}" in (ours / "localization.txt").read_text().splitlines()

    out = tmp_path / "wsol"
    _evaluate(str(root), seg_model, out, "--protocol", "wsol", "--post_workers", 0)
    maps = sorted(str(p.relative_to(out / "scoremaps")) for p in (out / "scoremaps").rglob("*.npy"))
    assert maps == sorted(f"val/{name}.npy" for name, _ in val)
    m = json.load(open(out / "metrics.json"))
    for metadata_root in (tmp_path / "metadata", root / "wsol_metadata"):
        common = ["-m", "utils.wsol_eval", "--scoremap_root", out / "scoremaps", "--metadata_root", metadata_root,
                  "--dataset_name", "ILSVRC", "--split", "test", "--workers", 1]
        run_script(*common, "--multi_contour_eval", "true", "--json", tmp_path / "v2.json")
        run_script(*common, "--multi_iou_eval", "false", "--json", tmp_path / "v1.json")
        v2, v1 = json.load(open(tmp_path / "v2.json")), json.load(open(tmp_path / "v1.json"))
        assert v2["count"] == m["count"] == 9
        assert v2["maxboxacc"] == {d: m["maxboxacc_v2"][d] for d in ("30", "50", "70")}
        assert v2["mean"] == m["maxboxacc_v2"]["mean"] and v1["localization"] == m["maxboxacc"]


def test_imagenet_cls_test_with_a_torchvision_style_file(inet, tmp_path):
    torch.manual_seed(0)
    torch.save(build_resnet("resnet18", num_classes=3).state_dict(), tmp_path / "cls.pth")
    p = run_script("imagenet-cls/test.py", "--datapath", inet, "--clsnum", 3, "--arch", "resnet18", "--snapshot",
                   tmp_path / "cls.pth", "--savepath", tmp_path, "--device", "cpu", "--num_workers", 0, "--size", 64,
                   "--crop", 56)
    arr = np.load(tmp_path / "top1top5.npy", allow_pickle=False)
    assert len(arr) == 9 and arr["top5"].all()       # 3 classes: top-5 always right
    assert "top-1 accuracy" in p.stdout


def test_torchrun_eval_and_masks_equal_one_process(inet, seg_model, tmp_path):
    _evaluate(inet, seg_model, tmp_path / "one")
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "imagenet-seg/test.py", "--datapath", inet,
               "--snapshot", seg_model, "--savepath", tmp_path / "two", "--threshold", 0.5, *SMALL)
    assert open(tmp_path / "one" / "boxes.csv").read() == open(tmp_path / "two" / "boxes.csv").read()
    m1, m2 = (json.load(open(tmp_path / d / "metrics.json")) for d in ("one", "two"))
    assert m1["count"] == m2["count"] == 9 and m1["gt_known_loc"] == m2["gt_known_loc"]

    torch.manual_seed(0)
    torch.save(build_mffnet(3, "resnet18").state_dict(), tmp_path / "cam.pth")
    for name, launcher in (("m1", []), ("m2", ["-m", "torch.distributed.run", "--nproc_per_node", 2])):
        run_script(*launcher, "imagenet-cam/test.py", "--datapath", inet, "--clsnum", 3, "--snapshot",
                   tmp_path / "cam.pth", "--maskpath", tmp_path / name, "--post_workers", 0, *SMALL)
    files = sorted(p.relative_to(tmp_path / "m1") for p in (tmp_path / "m1").rglob("*.png"))
    assert len(files) == 12
    for f in files:
        assert (tmp_path / "m1" / f).read_bytes() == (tmp_path / "m2" / f).read_bytes()


def test_ranks_see_exactly_the_single_process_batches():
    from utils.engine.distributed import Dist, EpochBatchSampler
    one = list(EpochBatchSampler(20, 8, Dist(), seed=3))
    parts = [list(EpochBatchSampler(20, 4, Dist(rank=r, world=2), seed=3)) for r in range(2)]
    for step, batch in enumerate(one[:2]):                       # the full batches
        assert sorted(batch) == sorted(parts[0][step] + parts[1][step])


def test_torchrun_training_equals_one_process(inet, tmp_path):
    """2 processes x 2 images = 1 process x 4 images: same samples, augmentations and dropout masks,
    BatchNorm over the whole batch, averaged gradients; only summation order differs."""
    args = ["imagenet-cam/train.py", "--datapath", inet, "--clsnum", 3, "--pretrained", "none", "--batch_size", 4,
            "--print_freq", 1, *SMALL]
    run_script(*args, "--savepath", tmp_path / "one")
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, *args, "--savepath", tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two").glob("model-*.pth")) == ["model-3.pth"]
    a, b = (torch.load(tmp_path / d / "model-3.pth", weights_only=True) for d in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4, msg=k)
    (la, lb) = ([json.loads(r)["loss"] for r in open(tmp_path / d / "log.jsonl")] for d in ("one", "two"))
    assert len(la) == len(lb) == 3 and np.allclose(la, lb, rtol=1e-5)
