"""Bad input from the file system itself: links to folders (a loop, a class folder linked into another),
a FIFO or other non-regular file named like an image, localize.py's own outputs inside its input folder,
hidden files and `__MACOSX` folders. Each is a counted, named skip (or one `error:` line), never a hang,
never the same file under two labels, never an output read back as input.

Every run that could hang on a FIFO is a subprocess with a timeout, so a regression fails instead."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import cv2
import numpy as np
import torch

from conftest import ROOT, run_inprocess, run_script
from network import build_mffnet
from utils.localize import find_images

SMALL = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "32"]
TIMEOUT = 60  # seconds; a walk or read that blocks on a FIFO never ends


def image(path, value: int = 90) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((12, 16, 3), value, np.uint8))
    return str(path)


def listed(root) -> list:
    """The relpaths of train.txt and val.txt, in file order."""
    out = []
    for name in ("train.txt", "val.txt"):
        if os.path.exists(os.path.join(root, name)):
            with open(os.path.join(root, name)) as f:
                out += [line.split(",")[0] for line in f if line.strip()]
    return out


def prepare(root, *extra, check=True):
    return run_script("dataset/prepare.py", "folder", "--root", root, "--val-fraction", "0.5", *extra,
                      check=check, timeout=TIMEOUT)


def test_folder_links_are_not_followed_and_each_file_is_listed_once(tmp_path):
    root = tmp_path / "R"
    for rel in ("cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"):
        image(root / rel)
    os.symlink("..", root / "cat" / "loop")                 # a loop: would list every class again under cat
    os.symlink("../cat", root / "dog" / "cats")             # cat's images under dog's label
    os.symlink("../cat/a.png", root / "dog" / "a.png")      # one file, two labels
    elsewhere = tmp_path / "elsewhere"
    image(elsewhere / "e.png")
    image(elsewhere / "f.png")
    os.symlink(elsewhere, root / "bird")                    # a class folder that is a link: taken as the class
    p = prepare(root)
    names = listed(root)
    assert sorted(names) == ["bird/e.png", "bird/f.png", "cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"]
    assert "cat/loop" in p.stderr and "dog/cats" in p.stderr and "links to folders" in p.stderr, p.stderr
    assert "dog/a.png (= cat/a.png)" in p.stderr and "1 duplicate" in p.stderr, p.stderr
    # a class folder linked to another class holds only that class's files: one clear error, nothing written
    os.remove(root / "train.txt")
    os.remove(root / "val.txt")
    os.remove(root / "classes.txt")
    os.remove(root / "bird")
    os.symlink("cat", root / "cat2")
    p = prepare(root, check=False)
    assert p.returncode == 2 and "error:" in p.stderr and "cat2" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(root / "train.txt")


def test_read_image_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    code = ("from utils.data.images import BadImage, read_image\n"
            "try:\n    read_image(%r)\nexcept BadImage as e:\n    print(e)\n" % str(fifo))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and p.stdout.strip() == f"{fifo}: not a regular file", (p.stdout, p.stderr)


def test_fifo_named_like_an_image_is_skipped_and_counted(tmp_path):
    root = tmp_path / "R"
    for rel in ("cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"):
        image(root / rel)
    os.mkfifo(root / "cat" / "x.jpg")
    p = prepare(root)
    assert sorted(listed(root)) == ["cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"]
    assert "1 not a regular file: cat/x.jpg" in p.stderr, p.stderr
    found = find_images([str(root / "cat")])
    assert [os.path.basename(f) for f in found] == ["a.png", "b.png"]


def test_localize_skips_a_fifo(tmp_path):
    torch.manual_seed(0)
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), tmp_path / "seg.pth")
    data = tmp_path / "new"
    image(data / "a.png")
    os.mkfifo(data / "b.jpg")
    p = run_script("cub200-seg/localize.py", "--snapshot", tmp_path / "seg.pth", data, "--savepath",
                   tmp_path / "out", *SMALL, timeout=TIMEOUT)
    assert "1 images;" in p.stdout and "not a regular file" in p.stderr and "b.jpg" in p.stderr, p.stderr


def test_localize_does_not_read_its_own_outputs_back(tmp_path):
    torch.manual_seed(0)
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), tmp_path / "seg.pth")
    data = tmp_path / "new"
    for k in range(4):
        image(data / f"{k}.png", 40 * k + 20)
    for run in range(2):
        p = run_inprocess("cub200-seg/localize.py", "--snapshot", tmp_path / "seg.pth", data, "--savepath",
                          data / "out", "--masks", "--vis", *SMALL)
    assert "4 images;" in p.stdout, p.stdout
    assert "left out" in p.stderr and os.path.join(str(data / "out"), "localize") in p.stderr, p.stderr
    with open(data / "out" / "localize" / "boxes.csv", newline="") as f:
        paths = {row["path"] for row in csv.DictReader(f)}
    assert sorted(os.path.basename(x) for x in paths) == ["0.png", "1.png", "2.png", "3.png"]


def test_hidden_files_and_macosx_folders_are_counted(tmp_path):
    root = tmp_path / "R"
    for rel in ("cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"):
        image(root / rel)
    (root / "cat" / ".DS_Store").write_bytes(b"\0" * 8)
    image(root / "cat" / "__MACOSX" / "._a.png")
    image(root / "__MACOSX" / "cat" / "._b.png")
    p = prepare(root)
    assert sorted(listed(root)) == ["cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"]
    assert "3 hidden" in p.stderr and "cat/.DS_Store" in p.stderr and "__MACOSX" in p.stderr, p.stderr
    found = find_images([str(root)])
    assert len(found) == 4


def test_cam_training_names_a_listed_fifo_instead_of_waiting(tmp_path):
    root = tmp_path / "R"
    for rel in ("cat/a.png", "cat/b.png", "dog/x.png", "dog/y.png"):
        image(root / rel)
    prepare(root, "--val-fraction", "0")
    os.remove(root / "cat" / "b.png")
    os.mkfifo(root / "cat" / "b.png")  # became a FIFO after the lists were written
    p = run_script("cub200-cam/train.py", "--datapath", root, "--savepath", tmp_path / "out", *SMALL, "--crop", "24",
                   "--pretrained", "none", "--batch_size", "2", "--epoch", "1", check=False, timeout=TIMEOUT)
    assert p.returncode == 2 and "b.png: not a regular file" in p.stderr and "Traceback" not in p.stderr, p.stderr
