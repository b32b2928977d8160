"""Nothing wrong without a word (issue 13): every class of bad input stops before any work with one line
naming the file, the line and what to do (exit 2, no traceback), or, where a user may want to go on, is a
counted and named skip; no figure is computed over the wrong set of images; nothing lost, nothing left
running. One test per class of problem, on a tiny CUB set and random-weight models (nothing is trained
here unless training is what is tested)."""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import cv2
import pytest
import torch

from bad_files import write_corrupt_file
from conftest import ROOT, prepared_cub, run_inprocess, run_script
from dataset.synthetic import make_imagenet
from network import build_mffnet

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40"]
TRAIN = ["--pretrained", "none", "--batch_size", "4", "--epoch", "1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-class CUB set (3 train + 2 test images per class) and random CAM and seg models."""
    top = tmp_path_factory.mktemp("bad")
    root = top / "CUB_200_2011"
    prepared_cub(str(root), num_classes=3, train_per_class=3, val_per_class=2, seed=8, min_size=48, max_size=64)
    torch.manual_seed(0)
    torch.save(build_mffnet(3, "resnet18").state_dict(), top / "cam.pth")
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), top / "seg.pth")
    return top


def clear_error(p, *fragments):
    """Exit 2, one `error:` line naming what is wrong, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]
    for f in fragments:
        assert f in p.stderr, (f, p.stderr[-2000:])


def edit_list(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def cam_masks(cub, base, tmp_path, *extra, check=False):
    return run_inprocess("cub200-cam/test.py", "--datapath", cub, "--clsnum", 3, "--snapshot", base / "cam.pth",
                      "--maskpath", tmp_path / "masks", "--post_workers", 0, *RUN, *extra, check=check)


def seg_eval(cub, base, tmp_path, *extra, check=False, snapshot=None):
    return run_inprocess("cub200-seg/test.py", "--datapath", cub, "--snapshot", snapshot or base / "seg.pth",
                      "--savepath", tmp_path / "eval", "--top1top5", "none", *RUN, *extra, check=check)


# ----------------------------------------------------------------------------- labels and list lines
@pytest.mark.parametrize("label", ["-1", "3"])
def test_labels_outside_the_model_stop_every_stage(cub, base, tmp_path, label):
    edit_list(cub / "train.txt", lambda ls: [ls[0]] + [f"{ls[1].split(',')[0]},{label},{ls[1].split(',')[2]}"] + ls[2:])
    for p in (cam_masks(cub, base, tmp_path),
              run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", tmp_path / "t",
                         *RUN, *TRAIN, check=False),
              run_inprocess("cub200-cls/train.py", "--datapath", cub, "--clsnum", 3, "--arch", "resnet18", "--savepath",
                         tmp_path / "c", *RUN, *TRAIN, check=False)):
        clear_error(p, f"{cub / 'train.txt'}:2: label {label}", "outside 0..2 (--clsnum 3)")
    assert not (tmp_path / "masks").exists() or not any((tmp_path / "masks").rglob("*.png"))


def test_imagenet_val_label_outside_the_synsets(tmp_path):
    root = tmp_path / "ILSVRC2012"
    make_imagenet(str(root), synsets=["n01440764", "n01443537"], train_per_class=1, val_per_class=2, seed=1,
                  min_size=48, max_size=64)
    run_script("dataset/prepare.py", "imagenet", "--root", root)
    edit_list(root / "val.txt", lambda ls: [ls[0].split()[0] + " -1"] + ls[1:])
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), tmp_path / "seg.pth")
    p = run_inprocess("imagenet-seg/test.py", "--datapath", root, "--snapshot", tmp_path / "seg.pth", "--savepath",
                   tmp_path / "o", *RUN, check=False)
    clear_error(p, f"{root / 'val.txt'}:1: label -1", "outside 0..1")


def test_a_repeated_line_stops_or_is_used_once(cub, base, tmp_path):
    edit_list(cub / "val.txt", lambda ls: ls + ls[:2])
    clear_error(seg_eval(cub, base, tmp_path), f"{cub / 'val.txt'}:7:", "is listed again (first at", ":1)",
                "2 lines repeat")
    p = seg_eval(cub, base, tmp_path, "--on-bad-image", "skip", check=True)
    assert "skipped 2 repeated list lines" in p.stdout
    assert json.load(open(tmp_path / "eval" / "metrics.json"))["count"] == 6          # 6 distinct images


def test_names_that_leave_their_folder_or_share_a_mask_file(cub, base, tmp_path):
    first = (cub / "train.txt").read_text().splitlines()[0]
    name, rest = first.split(",", 1)
    other = os.path.splitext(name)[0] + ".png"
    cv2.imwrite(str(cub / "images" / other), cv2.imread(str(cub / "images" / name)))
    edit_list(cub / "train.txt", lambda ls: ls + [f"{other},{rest}"])
    clear_error(cam_masks(cub, base, tmp_path), f"train.txt:10: {other} and {name} ({cub / 'train.txt'}:1)",
                "would share the pseudo mask")
    edit_list(cub / "train.txt", lambda ls: ls[:-1] + [f"../{name},{rest}"])
    clear_error(cam_masks(cub, base, tmp_path), "leaves its folder", f"{cub / 'train.txt'}:10")


# ------------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize("box,why", [("30 5 10 40", "inverted"), ("nan 5 20 30", "4 finite numbers"),
                                     ("900 900 950 990", "outside the")])
def test_unscorable_ground_truth_stops_or_leaves_the_image_out(cub, base, tmp_path, box, why):
    edit_list(cub / "val.txt", lambda ls: [",".join(ls[0].split(",")[:2] + [box])] + ls[1:])
    clear_error(seg_eval(cub, base, tmp_path), f"{cub / 'val.txt'}:1:", why, "--on-bad-image skip")
    p = seg_eval(cub, base, tmp_path, "--on-bad-image", "skip", check=True)
    assert "left out of the evaluation: 1 images" in p.stdout
    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert m["count"] == 5 and len(m["unscorable_boxes"]) == 1
    assert "nan" not in (tmp_path / "eval" / "boxes.csv").read_text()


def test_exif_orientation_is_said_and_counted(cub, base, tmp_path):
    from PIL import Image
    name = (cub / "val.txt").read_text().splitlines()[0].split(",")[0]
    path = cub / "images" / name
    im = Image.open(path)
    exif = im.getexif()
    exif[0x0112] = 6                                            # "rotate 90 CW to display"
    im.save(path, "JPEG", exif=exif, quality=95)
    p = seg_eval(cub, base, tmp_path, check=True)
    assert "warning: 1 images carry an EXIF orientation tag" in p.stdout and name in p.stdout


# ----------------------------------------------------------------------------------------- training
def test_training_on_nothing_is_an_error_and_dropped_good_images_are_named(cub, tmp_path):
    names = [line.split(",")[0] for line in (cub / "train.txt").read_text().splitlines()]
    for name in names:
        write_corrupt_file(str(cub / "images" / name))
    p = run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", tmp_path / "t",
                   "--on-bad-image", "skip", *RUN, *TRAIN, check=False)
    clear_error(p, "no training step ran", "8 skipped")     # 9 images: two full batches of 4
    assert not list((tmp_path / "t").glob("model-*.pth"))


def test_a_batch_left_with_one_good_image_names_it(base, tmp_path):
    cub = tmp_path / "CUB_200_2011"
    shutil.copytree(base / "CUB_200_2011", cub)
    lines = (cub / "train.txt").read_text().splitlines()[:4]        # one batch of 4: three bad, one good
    (cub / "train.txt").write_text("\n".join(lines) + "\n")
    for line in lines[:3]:
        write_corrupt_file(str(cub / "images" / line.split(",")[0]))
    p = run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", tmp_path / "t",
                   "--on-bad-image", "skip", *RUN, *TRAIN, "--seed", "1", check=False)
    clear_error(p, "no training step ran")
    assert f"dropped with its batch (the rest were bad files): {lines[3].split(',')[0]}" in p.stdout


def test_non_finite_weights_or_maps_stop_the_run(cub, base, tmp_path):
    state = torch.load(base / "seg.pth", weights_only=True)
    state["linear.bias"][0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    clear_error(seg_eval(cub, base, tmp_path, snapshot=tmp_path / "nan.pth"), "non-finite (NaN/inf) values",
                "linear.bias")
    state = torch.load(base / "seg.pth", weights_only=True)
    state["linear.weight"].fill_(3e38)                               # finite, but the maps overflow
    torch.save(state, tmp_path / "huge.pth")
    clear_error(seg_eval(cub, base, tmp_path, snapshot=tmp_path / "huge.pth"), "gives non-finite (NaN/inf) maps")
    state = torch.load(base / "cam.pth", weights_only=True)
    state["linear.weight"].fill_(3e38)
    torch.save(state, tmp_path / "cam_huge.pth")
    p = run_inprocess("cub200-cam/test.py", "--datapath", cub, "--clsnum", 3, "--snapshot", tmp_path / "cam_huge.pth",
                   "--maskpath", tmp_path / "masks", "--post_workers", 0, *RUN, check=False)
    clear_error(p, "gives non-finite (NaN/inf) maps")


# ------------------------------------------------------------------------- outputs and lost work
def test_unwritable_outputs_stop_before_any_work(cub, base, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = seg_eval(cub, base, tmp_path, "--savepath", blocker / "eval")
    clear_error(p, f"cannot write to {blocker / 'eval'}", "--savepath")
    assert "evaluate" not in p.stderr                               # no progress bar: nothing was evaluated
    clear_error(cam_masks(cub, base, tmp_path, "--maskpath", blocker / "masks"), "--maskpath")
    if os.geteuid() != 0:                                            # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        clear_error(seg_eval(cub, base, tmp_path, "--savepath", ro), "cannot write to", "Permission denied")


def test_snapshots_and_checkpoints_are_readable_by_the_group(cub, tmp_path):
    old = os.umask(0o022)
    try:
        run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", tmp_path / "t",
                      *RUN, *TRAIN)
    finally:
        os.umask(old)
    for name in ("model-1.pth", "checkpoint.pth"):
        assert stat.S_IMODE(os.stat(tmp_path / "t" / name).st_mode) == 0o644, name


# -------------------------------------------------------------------- tracebacks that became lines
def test_empty_weight_files_and_foreign_resumes(cub, base, tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    clear_error(seg_eval(cub, base, tmp_path, snapshot=empty), f"{empty} is empty (0 bytes)")
    common = ["--datapath", cub, "--savepath", tmp_path / "t", *RUN, *TRAIN]
    clear_error(run_inprocess("cub200-cam/train.py", *common, "--clsnum", 3, "--pretrained", empty, check=False),
                "is empty (0 bytes)")
    clear_error(run_inprocess("cub200-cam/train.py", *common, "--clsnum", 3, "--resume", empty, check=False),
                "is empty (0 bytes)")
    missing = tmp_path / "no" / "checkpoint.pth"
    clear_error(run_inprocess("cub200-cam/train.py", *common, "--clsnum", 3, "--resume", missing, check=False),
                "--resume:", "not found")
    run_inprocess("cub200-cam/train.py", *common, "--clsnum", 3)
    clear_error(run_inprocess("cub200-cam/train.py", *common, "--clsnum", 3, "--backbone", "resnet34", "--resume",
                           "--epoch", 2, check=False),
                "holds another model than this run builds", "--backbone resnet18 there, resnet34 here")


@pytest.mark.parametrize("flags,message", [
    (["--epoch", "0"], "--epoch 0: must be at least 1"), (["--batch_size", "0"], "--batch_size 0: must be at least 1"),
    (["--clsnum", "0"], "--clsnum 0: must be at least 1"), (["--size", "32"], "--crop 40 is larger than --size 32"),
    (["--lr", "-1"], "--lr -1.0: must be a positive number")])
def test_insane_flags_are_one_line(cub, tmp_path, flags, message):
    p = run_inprocess("cub200-cam/train.py", "--datapath", cub, "--clsnum", 3, "--savepath", tmp_path, *RUN, *TRAIN,
                   *flags, check=False)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_list_encodings(cub, base, tmp_path):
    text = (cub / "val.txt").read_bytes()
    (cub / "val.txt").write_bytes(b"\xef\xbb\xbf" + text)                      # a UTF-8 byte-order mark: fine
    seg_eval(cub, base, tmp_path, check=True)
    (cub / "val.txt").write_bytes(text.replace(b"_", "\u00e9".encode("latin-1"), 1))
    clear_error(seg_eval(cub, base, tmp_path), f"{cub / 'val.txt'}", "val.txt:1: not UTF-8 text")


# ------------------------------------------------------------------------------------ right words
def test_each_bad_file_has_its_own_reason_and_is_not_an_empty_mask(cub, base, tmp_path):
    names = [line.split(",")[0] for line in (cub / "val.txt").read_text().splitlines()]
    write_corrupt_file(str(cub / "images" / names[0]))
    open(cub / "images" / names[1], "wb").close()
    p = run_inprocess("cub200-cls/test.py", "--datapath", cub, "--clsnum", 3, "--arch", "resnet18", "--snapshot",
                   _cls_weights(tmp_path), "--savepath", tmp_path / "c", "--on-bad-image", "skip", *RUN[2:], check=True)
    reasons = [line for line in p.stdout.splitlines() if line.startswith("skipped:")]
    both = reasons[0] + reasons[1] if len(reasons) == 2 else ""
    assert len(reasons) == 2 and "not a readable image" in both and "empty file" in both
    seg_eval(cub, base, tmp_path, "--on-bad-image", "skip", "--threshold", "0.0", check=True)
    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert m["bad_images"] == 2 and m["empty"] == 0 and m["count"] == 6


def _cls_weights(tmp_path):
    from network import build_resnet
    torch.save(build_resnet("resnet18", num_classes=3).state_dict(), tmp_path / "cls.pth")
    return tmp_path / "cls.pth"


def test_a_jpeg_with_bytes_after_its_end_is_read(cub, base, tmp_path):
    name = (cub / "val.txt").read_text().splitlines()[0].split(",")[0]
    with open(cub / "images" / name, "ab") as f:
        f.write(os.urandom(6000))                                  # e.g. a camera's trailer
    p = seg_eval(cub, base, tmp_path, check=True)
    assert "truncated" not in p.stdout + p.stderr


# -------------------------------------------------------------------------------------- leftovers
def _descendants(pid: int) -> set:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, set()).add(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_mask_run(base, tmp_path):
    root = tmp_path / "CUB_200_2011"
    prepared_cub(str(root), num_classes=3, train_per_class=40, val_per_class=1, seed=9, min_size=48, max_size=64)
    cmd = [sys.executable, os.path.join(ROOT, "cub200-cam/test.py"), "--datapath", str(root), "--clsnum", "3",
           "--snapshot", str(base / "cam.pth"), "--maskpath", str(tmp_path / "masks"), "--post_workers", "2",
           "--batch_size", "2", *map(str, RUN)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, family = time.time() + 120, set()
    while time.time() < deadline and proc.poll() is None:
        family |= _descendants(proc.pid)
        if len(family) >= 3 and any((tmp_path / "masks").rglob("*.png")):     # forkserver, tracker, workers
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    family |= _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.2)
    left = [p for p in family if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} processes outlived the killed run"
