"""OpenImages30k (issue 26): wsolevaluation's metadata as they write it, read by `prepare.py openimages`; PxAP
by hand on two tiny images with an ignore region; the four stages end to end on the synthetic set, against
a fixed centre blob; and the bad metadata prepare.py promises to reject.

Fixtures follow their published `metadata/OpenImages/<split>/`: no newline after the last line, an empty
`image_sizes.txt` in every split and an empty `localization.txt` for train; `localization.txt` has a line per
instance mask, only an image's first line naming its ignore mask.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from conftest import run_inprocess, run_script
from dataset.synthetic import make_openimages
from utils.errors import run_main
from utils.wsol_eval import centre_scoremap

# ResNet-18 from scratch at 96 px: in five runs of this chain (data seeds 1-3, training seeds 0-2) its test PxAP was
# 68-79 against the centre blob's 42-55; at 64 px it fell to 53 on this set
SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "96", "--crop", "80"]
TRAIN = ["--pretrained", "none", "--batch_size", "16"]
CLASSES = 4


def _write(path, lines) -> None:
    """A metadata file as wsolevaluation's: `\\n` between lines, none after the last."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="\n") as f:
        f.write("\n".join(lines))


def _png(path, mask) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(mask, np.uint8))


def _synthetic(root) -> dict:
    """4 classes x (40 train, 4 val, 8 test) small images: every val/test pattern of make_openimages (one
    instance; two instances; an unannotated one under the ignore box; one instance again)."""
    paths = make_openimages(str(root), num_classes=CLASSES, train_per_class=40, val_per_class=4, test_per_class=8,
                            seed=1, min_size=128, max_size=192)
    return {"images": paths["images"], "metadata": paths["metadata"], "mask_root": os.path.dirname(paths["images"])}


def _wsol_eval(*args) -> dict:
    """`python -m utils.wsol_eval ARGS` in this process: its figures."""
    from utils.wsol_eval import main
    return main([str(a) for a in args])


def _prepare(paths, *extra, check=True) -> subprocess.CompletedProcess:
    """`python dataset/prepare.py openimages --root ... --metadata ...` in this process (exit code and output
    as the command line gives them)."""
    from dataset import prepare
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = ["openimages", "--root", paths["images"], "--metadata", paths["metadata"], *extra]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_main(lambda: prepare.main(argv))
        except SystemExit as e:
            code = e.code
    if check and code != 0:
        raise AssertionError(f"prepare.py exited {code}:\n{out.getvalue()}\n{err.getvalue()}")
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


# ------------------------------------------------------------------------------------ the layout as theirs
def test_synthetic_metadata_is_written_as_wsolevaluation_writes_it(tmp_path):
    paths = _synthetic(tmp_path)
    meta = paths["metadata"]
    for split in ("train", "val", "test"):
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            assert os.path.isfile(os.path.join(meta, split, name)), (split, name)
        assert os.path.getsize(os.path.join(meta, split, "image_sizes.txt")) == 0
        data = open(os.path.join(meta, split, "image_ids.txt"), "rb").read()
        assert not data.endswith(b"\n") and b"\r" not in data
        for iid in data.decode().split("\n"):
            assert re.fullmatch(rf"{split}/[0-9a-z_]+/[0-9a-f]{{16}}\.jpg", iid), iid
            assert os.path.isfile(os.path.join(paths["images"], iid))
    assert os.path.getsize(os.path.join(meta, "train", "localization.txt")) == 0
    rows = [line.split(",") for line in open(os.path.join(meta, "test", "localization.txt")).read().split("\n")]
    first: dict = {}
    for iid, mask, ignore in rows:
        assert mask.startswith(iid[:-len(".jpg")] + "_m") and mask.endswith(".png")
        assert os.path.isfile(os.path.join(paths["images"], mask))
        if iid in first:
            assert ignore == ""  # only the first line of an image names its ignore mask
        else:
            first[iid] = ignore
            assert ignore == iid[:-len(".jpg")] + "_ignore.png"
    per_image = {iid: sum(r[0] == iid for r in rows) for iid in first}
    assert max(per_image.values()) == 2 and min(per_image.values()) == 1
    ignored = [iid for iid, ign in first.items() if cv2.imread(os.path.join(paths["images"], ign), 0).any()]
    assert ignored and len(ignored) < len(first)  # some images have an ignore region, others an empty one


def test_prepare_writes_the_lists_and_a_checked_copy_of_their_metadata(tmp_path):
    paths = _synthetic(tmp_path)
    p = _prepare(paths)
    assert f"{CLASSES * 40} train / {CLASSES * 4} val / {CLASSES * 8} test images, {CLASSES} classes" in p.stdout
    for split in ("train", "val", "test"):
        ids = open(os.path.join(paths["metadata"], split, "image_ids.txt")).read().split("\n")
        labels = dict(line.split(",") for line in
                      open(os.path.join(paths["metadata"], split, "class_labels.txt")).read().split("\n"))
        assert open(os.path.join(paths["images"], f"{split}.txt")).read().splitlines() == \
            [f"{i},{labels[i]}" for i in ids]
    for split in ("val", "test"):
        theirs = open(os.path.join(paths["metadata"], split, "localization.txt")).read().split("\n")
        ours = open(os.path.join(paths["images"], "wsol_metadata", "OpenImages", split, "localization.txt"))
        assert ours.read().splitlines() == theirs
    again = _prepare(paths)  # never overwritten unless --force
    assert "kept existing" in again.stdout and "wrote" not in again.stdout


# ------------------------------------------------------------------------------------ PxAP by hand
def test_pxap_by_hand_on_two_tiny_images_with_an_ignore_region(tmp_path):
    """Two 2 x 2 images; the protocol resizes their masks to 224 x 224 by nearest neighbour, so each pixel
    becomes a 112 x 112 block and the score maps are constant on those blocks.

    image a: instance at top-left; ignore mask = the top row. Top-left stays foreground (ignore \\ foreground),
             top-right is left out. Scores TL 1.0, TR 0.9 (ignored), BL 0.5, BR 0.0.
    image b: two instances (TL and BR, two lines, the second with an empty ignore field), empty ignore mask.
             Scores TL 0.5, TR 0.7, BL 0.0, BR 0.2.
    Foreground blocks score 1.0, 0.5, 0.2; background blocks 0.7, 0.5, 0.0, 0.0. Going down the thresholds:
      >= 1.0: TP 1, FP 0 -> precision 1,   recall 1/3   area 1 x 1/3
      >= 0.7: TP 1, FP 1 -> precision 1/2, recall 1/3   area 0
      >= 0.5: TP 2, FP 2 -> precision 1/2, recall 2/3   area 1/2 x 1/3
      >= 0.2: TP 3, FP 2 -> precision 3/5, recall 1     area 3/5 x 1/3
    PxAP = 1/3 + 1/6 + 1/5 = 0.7 -> 70.0. Were the ignored block background, it would be 19/30 (63.33)."""
    data, meta, maps = tmp_path / "dataset" / "OpenImages", tmp_path / "metadata" / "OpenImages", tmp_path / "maps"
    a, b = "test/0a/aaaaaaaaaaaaaaaa", "test/0b/bbbbbbbbbbbbbbbb"
    _png(data / f"{a}_m0a_00000001.png", [[255, 0], [0, 0]])
    _png(data / f"{a}_ignore.png", [[255, 255], [0, 0]])
    _png(data / f"{b}_m0b_00000001.png", [[255, 0], [0, 0]])
    _png(data / f"{b}_m0b_00000002.png", [[0, 0], [0, 255]])
    _png(data / f"{b}_ignore.png", [[0, 0], [0, 0]])
    _write(meta / "test" / "image_ids.txt", [f"{a}.jpg", f"{b}.jpg"])
    _write(meta / "test" / "class_labels.txt", [f"{a}.jpg,0", f"{b}.jpg,1"])
    _write(meta / "test" / "image_sizes.txt", [])
    _write(meta / "test" / "localization.txt", [f"{a}.jpg,{a}_m0a_00000001.png,{a}_ignore.png",
                                                f"{b}.jpg,{b}_m0b_00000001.png,{b}_ignore.png",
                                                f"{b}.jpg,{b}_m0b_00000002.png,"])
    block = np.ones((112, 112), np.float32)
    for iid, scores in ((a, [[1.0, 0.9], [0.5, 0.0]]), (b, [[0.5, 0.7], [0.0, 0.2]])):
        os.makedirs(os.path.dirname(maps / iid), exist_ok=True)
        np.save(maps / f"{iid}.jpg.npy", np.kron(np.float32(scores), block))
    res = _wsol_eval("--scoremap_root", maps, "--metadata_root", tmp_path / "metadata", "--mask_root",
                     tmp_path / "dataset", "--dataset_name", "OpenImages", "--split", "test")
    assert res["count"] == 2 and res["pxap"] == pytest.approx(70.0, abs=1e-9)


# ------------------------------------------------------------------------------------ the four stages
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """prepare, cam train + test (pseudo masks), seg train, seg test on val and test, localize: ResNet-18 from
    scratch, a few steps each (50 in all), from the layout as downloaded."""
    top = tmp_path_factory.mktemp("oi")
    paths = _synthetic(top / "data")
    _prepare(paths)
    cam, seg = top / "cam", top / "seg"
    data = ["--datapath", paths["images"]]
    run_script("openimages-cam/train.py", *data, "--clsnum", CLASSES, "--epoch", 5, "--savepath", cam, *SMALL, *TRAIN)
    run_script("openimages-cam/test.py", *data, "--clsnum", CLASSES, "--snapshot", cam / "model-5.pth",
               "--maskpath", cam / "masks", "--post_workers", 1, *SMALL)
    run_script("openimages-seg/train.py", *data, "--maskpath", cam / "masks", "--epoch", 2, "--savepath", seg,
               *SMALL, *TRAIN)
    out = {}
    for split in ("val", "test"):
        out[split] = run_script("openimages-seg/test.py", *data, "--snapshot", seg / "model-2.pth", "--split", split,
                                "--savepath", seg / split, "--post_workers", 1, *SMALL).stdout
    loc = run_script("openimages-seg/localize.py", "--snapshot", seg / "model-2.pth", "--savepath", seg,
                     "--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "96",
                     os.path.join(paths["images"], "val"))
    return dict(paths, cam=cam, seg=seg, out=out, localize=loc)


def _ids(paths, split) -> list:
    return open(os.path.join(paths["metadata"], split, "image_ids.txt")).read().split("\n")


def test_cam_stage_writes_a_pseudo_mask_per_train_image_under_its_id(chain):
    for iid in _ids(chain, "train"):
        assert os.path.isfile(chain["cam"] / "masks" / (iid[:-len(".jpg")] + ".png")), iid


@pytest.mark.parametrize("split", ["val", "test"])
def test_seg_test_prints_pxap_and_saves_the_maps_their_evaluator_reads(chain, split):
    metrics = json.load(open(chain["seg"] / split / "metrics.json"))
    assert metrics["split"] == split and metrics["count"] == len(_ids(chain, split))
    assert re.search(rf"PxAP\s+{metrics['pxap']:.2f}\s+\(OpenImages {split}", chain["out"][split])
    for iid in _ids(chain, split):  # wsolevaluation's names: <scoremap_root>/<image_id>.npy
        m = np.load(chain["seg"] / split / "scoremaps" / f"{iid}.npy")
        assert m.shape == (224, 224) and m.min() == 0 and m.max() == 1
    # the standalone evaluator, from the saved files and the metadata as published, gives the same figure
    res = _wsol_eval("--scoremap_root", chain["seg"] / split / "scoremaps", "--metadata_root",
                     os.path.dirname(chain["metadata"]), "--mask_root", chain["mask_root"], "--dataset_name",
                     "OpenImages", "--split", split)
    assert res["pxap"] == metrics["pxap"]


def test_trained_pipeline_beats_a_fixed_centre_blob(chain):
    centre = _wsol_eval("--centre_baseline", "--metadata_root", os.path.dirname(chain["metadata"]), "--mask_root",
                        chain["mask_root"], "--dataset_name", "OpenImages", "--split", "test")["pxap"]
    ours = json.load(open(chain["seg"] / "test" / "metrics.json"))["pxap"]
    assert ours > centre + 15, (ours, centre)


def test_centre_blob_is_a_centred_map_in_0_1():
    m = centre_scoremap()
    assert m.shape == (224, 224) and m.min() == 0 and m.max() == 1
    assert m[112, 112] > m[112, 160] > m[112, 223] and np.allclose(m, m.T) and np.allclose(m, m[::-1, ::-1])


def test_localize_takes_a_split_folder_as_it_is(chain):
    rows = open(chain["seg"] / "localize" / "boxes.csv").read().splitlines()[1:]
    assert len(rows) == len(_ids(chain, "val"))  # the masks beside the images are left out
    assert not any("_ignore" in r or "_m0" in r for r in rows)
    assert re.search(r"left out \d+ annotation masks", chain["localize"].stderr)


@pytest.mark.parametrize("flag", [["--protocol", "spol"], ["--threshold", "0.5"], ["--vis", "2"]])
def test_seg_test_refuses_flags_openimages_does_not_use(chain, flag):
    p = run_inprocess("openimages-seg/test.py", "--datapath", chain["images"], "--snapshot",
                      chain["seg"] / "model-2.pth", "--savepath", chain["seg"] / "x", *SMALL, *flag, check=False)
    assert p.returncode == 2 and f"{flag[0]}" in p.stderr and "not used on OpenImages" in p.stderr
    assert "Traceback" not in p.stderr


def test_seg_test_names_a_gt_mask_gone_after_prepare(chain, tmp_path):
    images = tmp_path / "OpenImages"
    shutil.copytree(chain["images"], images)
    rel = _mask_of_second_instance(chain["metadata"])
    os.remove(images / rel)
    p = run_inprocess("openimages-seg/test.py", "--datapath", images, "--snapshot", chain["seg"] / "model-2.pth",
                      "--savepath", tmp_path / "out", "--post_workers", 0, *SMALL, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"error: mask not found: {rel} " in p.stderr and str(images / rel) in p.stderr


@pytest.mark.parametrize("script, defaults", [
    ("openimages-cam/train.py", {"epoch": "10", "batch_size": "64", "lr": "0.02", "backbone_lr": "0.002",
                                 "clsnum": "100", "size": "256", "crop": "224"}),
    ("openimages-cam/test.py", {"clsnum": "100", "size": "256", "crop": "0"}),
    ("openimages-seg/train.py", {"epoch": "2", "batch_size": "128", "lr": "0.02", "backbone_lr": "0.02",
                                 "maskpath": "../openimages-cam/out/masks"}),
    ("openimages-seg/test.py", {"split": "test", "cam_curve_interval": "0.01", "protocol": "wsol"}),
    ("openimages-seg/localize.py", {"threshold": "0.5", "size": "256"}),
])
def test_help_prints_the_defaults_the_docstrings_explain(script, defaults):
    text = run_inprocess(script, "--help").stdout
    assert text.startswith("usage:") and "OpenImages30k" in text
    entries: dict = {}  # flag -> its help entry, on one line
    flag = None
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        start = re.match(r"  (?:-\w, )?(--[\w-]+)", line)  # argparse opens each flag's entry with "  --flag"
        if start:
            flag = start.group(1)
        if flag and line.strip():
            entries[flag] = entries.get(flag, "") + " " + line.strip()
    for flag, value in defaults.items():
        assert f"(default: {value})" in entries[f"--{flag}"], (flag, entries.get(f"--{flag}"))


# ------------------------------------------------------------------------------------ bad metadata
def _edit(path, fn) -> None:
    lines = open(path).read().split("\n")
    _write(path, fn(lines))


def _mask_of_second_instance(meta) -> str:
    rows = [r.split(",") for r in open(os.path.join(meta, "test", "localization.txt")).read().split("\n")]
    return next(mask for iid, mask, ignore in rows if not ignore)


BAD = {
    "missing image": (lambda p: os.remove(os.path.join(p["images"], _ids(p, "val")[1])),
                      "val/image_ids.txt:2: image not found"),
    "missing mask": (lambda p: os.remove(os.path.join(p["images"], _mask_of_second_instance(p["metadata"]))),
                     r"test/localization\.txt:\d+: mask not found: "),
    "id outside its split's folder": (
        lambda p: _edit(os.path.join(p["metadata"], "val", "image_ids.txt"),
                        lambda ls: ls[:2] + ["test/" + ls[2].split("/", 1)[1]] + ls[3:]),
        "val/image_ids.txt:3: image id test/"),
    "id without its class folder": (
        lambda p: _edit(os.path.join(p["metadata"], "train", "image_ids.txt"),
                        lambda ls: ["train/" + ls[0].rsplit("/", 1)[1]] + ls[1:]),
        "train/image_ids.txt:1: image id train/"),
    "label out of range": (
        lambda p: _edit(os.path.join(p["metadata"], "test", "class_labels.txt"),
                        lambda ls: [ls[0].rsplit(",", 1)[0] + f",{CLASSES}"] + ls[1:]),
        f"test/class_labels.txt:1: label {CLASSES} of test/"),
    "label not a number": (
        lambda p: _edit(os.path.join(p["metadata"], "train", "class_labels.txt"),
                        lambda ls: ls[:-1] + [ls[-1].rsplit(",", 1)[0] + ",dog"]),
        "train/class_labels.txt:"),
    "second ignore mask": (
        lambda p: _edit(os.path.join(p["metadata"], "test", "localization.txt"),
                        lambda ls: [line + (line.split(",")[0][:-4] + "_ignore.png" if line.endswith(",") else "")
                                    for line in ls]),
        "a second ignore mask for test/"),
    "first line without its ignore mask": (
        lambda p: _edit(os.path.join(p["metadata"], "val", "localization.txt"),
                        lambda ls: [ls[0].rsplit(",", 1)[0] + ","] + ls[1:]),
        "val/localization.txt:1: the first line of val/"),
    "mask path leaving the folder": (
        lambda p: _edit(os.path.join(p["metadata"], "val", "localization.txt"),
                        lambda ls: [ls[0].replace(",val/", ",../val/", 1)] + ls[1:]),
        "val/localization.txt:1: mask path '../val/"),
    "image without a mask": (
        lambda p: _edit(os.path.join(p["metadata"], "test", "localization.txt"), lambda ls: ls[1:]),
        r"test/localization\.txt has no mask for 1 image\(s\)"),
    "missing class_labels.txt": (lambda p: os.remove(os.path.join(p["metadata"], "val", "class_labels.txt")),
                                 "metadata file not found: "),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_metadata_gives_one_error_line_naming_the_file(tmp_path, case):
    paths = _synthetic(tmp_path)
    damage, message = BAD[case]
    damage(paths)
    p = _prepare(paths, check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not os.path.exists(os.path.join(paths["images"], "train.txt"))  # nothing written from bad metadata
