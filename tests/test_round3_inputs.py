"""Inputs that went wrong without a word (round three): images whose header claims more pixels than a machine
should decode, and foreign text files that are not UTF-8; each is named in one line, or a counted skip."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from bad_files import write_huge_bmp, write_huge_png
from conftest import prepared_cub, run_inprocess, run_prepare
from conftest import prepare_module as load_prepare
from network import build_mffnet
from utils.data.images import MAX_PIXELS, BadImage, check_pixels, read_image
from utils.errors import UserError

prepare_module = load_prepare()

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40"]


prepare = run_prepare


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 3-class CUB set (2 train + 1 test images per class) and a random CAM model."""
    top = tmp_path_factory.mktemp("round3")
    root = top / "CUB_200_2011"
    prepared_cub(str(root), num_classes=3, train_per_class=2, val_per_class=1, seed=3, min_size=48, max_size=56)
    torch.manual_seed(0)
    torch.save(build_mffnet(3, "resnet18").state_dict(), top / "cam.pth")
    return top


def _first_train_image(cub) -> str:
    name = (cub / "train.txt").read_text().splitlines()[0].split(",")[0]
    return str(cub / "images" / name)


# ----------------------------------------------------------------------------------- huge images (I1-I3)
@pytest.mark.parametrize("write", [write_huge_png, write_huge_bmp])
def test_a_header_over_the_pixel_limit_is_a_bad_image(tmp_path, write):
    """A 60000 x 60000 header was a cv2.error traceback; 15000 x 15000 was decoded (GBs). Both are named."""
    for w, h in ((60000, 60000), (15000, 15000)):
        path = write(str(tmp_path / f"big{w}.{write.__name__[-3:]}"), w, h)
        with pytest.raises(BadImage, match=r"too large .*--max-pixels 178956970"):
            read_image(path)
    path = write(str(tmp_path / "mid.png"), 3000, 2000)
    with pytest.raises(BadImage, match=r"3000 x 2000 = 6,000,000 pixels; the limit is --max-pixels 5999999"):
        read_image(path, max_pixels=5_999_999)
    over_pillow = write(str(tmp_path / "over_pillow.png"), 20000, 10000)  # beyond Pillow's own bound (2 x 89.5 MP)
    with pytest.raises(BadImage, match=r"20000 x 10000 = 200,000,000 pixels; the limit is --max-pixels 178956970"):
        check_pixels(over_pillow, np.fromfile(over_pillow, np.uint8))
    check_pixels(over_pillow, np.fromfile(over_pillow, np.uint8), max_pixels=300_000_000)  # a raised limit holds
    with pytest.raises(BadImage, match=r"not a readable image \(OpenCV: .*MAX_IMAGE_PIXELS"):  # above OpenCV's own
        read_image(write(str(tmp_path / "huge.png"), 60000, 60000), max_pixels=10 ** 10)
    small = str(tmp_path / "small.png")
    assert cv2.imwrite(small, np.zeros((20, 30, 3), np.uint8))
    assert read_image(small, max_pixels=600).shape == (20, 30, 3) and MAX_PIXELS == 178_956_970


def test_a_huge_image_stops_mask_generation_or_is_skipped(cub, base, tmp_path):
    big = write_huge_png(_first_train_image(cub))
    args = ["cub200-cam/test.py", "--datapath", cub, "--clsnum", 3, "--snapshot", base / "cam.pth", "--post_workers",
            0, *RUN, "--list", "train.txt"]
    p = run_inprocess(*args, "--maskpath", tmp_path / "m1", check=False)
    assert p.returncode == 2 and big in p.stderr and "too large" in p.stderr and "Traceback" not in p.stderr
    p = run_inprocess(*args, "--maskpath", tmp_path / "m2", "--on-bad-image", "skip")
    assert "too large" in p.stdout + p.stderr and len(list((tmp_path / "m2").rglob("*.png"))) == 5
    # --max-pixels is the limit: the 48..56 px images are over 2,000
    p = run_inprocess(*args, "--maskpath", tmp_path / "m3", "--max-pixels", 2000, check=False)
    assert p.returncode == 2 and "--max-pixels 2000" in p.stderr


def test_prepare_folder_refuses_a_huge_image_or_leaves_it_out(tmp_path):
    root = tmp_path / "pets"
    for rel in ("cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        assert cv2.imwrite(str(root / rel), np.full((20, 30, 3), 90, np.uint8))
    big = write_huge_png(str(root / "dog" / "huge.png"), 30000, 30000)
    p = prepare("folder", "--root", root, check=False)
    assert p.returncode == 2 and big in p.stderr and "too large" in p.stderr and "Traceback" not in p.stderr
    p = prepare("folder", "--root", root, "--skip-unreadable")
    assert f"left out: {big}: too large" in p.stderr and "huge" not in (root / "train.txt").read_text()
    p = prepare("folder", "--root", root, "--max-pixels", 599, "--force", check=False)
    assert p.returncode == 2 and "--max-pixels 599" in p.stderr


# ------------------------------------------------------------------------------ foreign text files (N2, N12, N14)
def test_one_encoding_rule_for_lists_class_lists_and_metadata(tmp_path):
    """UTF-8 with a byte-order mark reads as without it (wsol metadata kept it in the first id: "score map not
    found"); Latin-1 bytes are one error naming the file, the line and the byte (were UnicodeDecodeErrors)."""
    from utils.data.lists import read_class_names, read_synsets
    from utils.wsol_eval import _image_ids, _rows

    bom = tmp_path / "bom"
    bom.mkdir()
    (bom / "image_ids.txt").write_bytes(b"\xef\xbb\xbf001/a.jpg\r\n001/b.jpg\n")
    (bom / "class_labels.txt").write_bytes(b"\xef\xbb\xbf001/a.jpg,0\n")
    (bom / "classes.txt").write_bytes(b"\xef\xbb\xbf1 Black_footed_Albatross\n")
    (bom / "synsets.txt").write_bytes(b"\xef\xbb\xbfn01440764 tench\n")
    assert _image_ids(str(bom / "image_ids.txt")) == ["001/a.jpg", "001/b.jpg"]
    assert _rows(str(bom / "class_labels.txt"), 2) == [(1, ["001/a.jpg", "0"])]
    assert read_class_names(str(bom)) == ["Black_footed_Albatross"] and read_synsets(str(bom)) == ["n01440764"]

    bad = tmp_path / "latin1"
    bad.mkdir()
    for name in ("image_ids.txt", "classes.txt", "synsets.txt"):
        (bad / name).write_bytes(b"1 ok\n2 caf\xe9\n")
    for read in (lambda: _image_ids(str(bad / "image_ids.txt")), lambda: read_class_names(str(bad)),
                 lambda: read_synsets(str(bad))):
        with pytest.raises(UserError, match=r"latin1/\w+\.txt:2: not UTF-8 text \(byte 6 of the line: b'\\xe9\\n'\)"):
            read()


def test_prepare_cub_annotations_not_utf8_or_with_a_bom(cub):
    """images.txt in Latin-1 was a UnicodeDecodeError traceback from prepare.py cub."""
    images = cub / "images.txt"
    text = images.read_bytes()
    images.write_bytes(b"\xef\xbb\xbf" + text)  # a BOM: the first id is still `1`
    prepare("cub", "--root", cub, "--force")
    first = text.split(b"\n")[0]
    images.write_bytes(text.replace(first, first + b"\xe9", 1))
    p = prepare("cub", "--root", cub, "--force", check=False)
    assert p.returncode == 2 and f"{images}:1: not UTF-8 text" in p.stderr and "Traceback" not in p.stderr


def test_prepare_imagenet_reads_a_val_list_with_a_bom(tmp_path):
    """A kept val.txt with a BOM: its first name was '\\ufeffILSVRC2012_val_...' (not found)."""
    from dataset.synthetic import make_imagenet

    root = tmp_path / "inet"
    make_imagenet(str(root), synsets=("n01440764", "n01443537"), train_per_class=1, val_per_class=1, seed=0,
                  min_size=48, max_size=48)
    prepare("imagenet", "--root", root)
    val = root / "val.txt"
    val.write_bytes(b"\xef\xbb\xbf" + val.read_bytes())
    shutil.rmtree(root / "wsol_metadata")
    prepare("imagenet", "--root", root)
    assert (root / "wsol_metadata" / "ILSVRC" / "test" / "image_ids.txt").read_text().startswith("val/ILSVRC")


# ------------------------------------------------------------------------------------ prepare.py's writes (D1-D4)
def test_a_second_prepare_into_one_folder_stops_and_a_failed_write_is_one_line(cub):
    """Two runs shared one `<list>.tmp` with no lock (a crash in 6 of 6 tries); a list that cannot be written
    was an OSError traceback (a read-only folder; here the target is a folder, which stops root too)."""
    import fcntl

    fd = os.open(cub, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running prepare.py holds
        p = prepare("cub", "--root", cub, "--force", check=False)
        assert p.returncode == 2 and f"{cub} is in use by another run" in p.stderr
    finally:
        os.close(fd)
    os.remove(cub / "val.txt")
    os.mkdir(cub / "val.txt")
    p = prepare("cub", "--root", cub, "--force", check=False)
    assert p.returncode == 2 and f"cannot write {cub / 'val.txt'}: Is a directory" in p.stderr
    assert "Traceback" not in p.stderr and not [f for f in os.listdir(cub) if f.endswith(".tmp")]
    os.rmdir(cub / "val.txt")
    prepare("cub", "--root", cub)  # the lock went with the run before


def test_prepare_folder_refuses_names_that_are_not_utf8_before_writing_anything(tmp_path):
    """A Latin-1 file or folder name was a UnicodeEncodeError after classes.txt was written (which then
    blocked the rerun)."""
    root = tmp_path / "pets"
    for rel in ("cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        assert cv2.imwrite(str(root / rel), np.full((20, 30, 3), 90, np.uint8))
    latin1 = os.path.join(os.fsencode(root), b"dog", b"caf\xe9.png")
    shutil.copy(root / "dog" / "c.png", latin1)
    p = prepare("folder", "--root", root, check=False)
    assert p.returncode == 2 and "b'dog/caf\\xe9.png'" in p.stderr and "not UTF-8" in p.stderr
    assert "Traceback" not in p.stderr and not os.path.exists(root / "classes.txt")
    os.remove(latin1)
    prepare("folder", "--root", root)


@pytest.mark.parametrize("name", ["ILSVRC2012_val_0000 copy.JPEG", "a\tb.JPEG", b"caf\xe9.JPEG"])
def test_prepare_imagenet_refuses_names_its_lists_cannot_carry(tmp_path, name):
    """A train image named with a space (or tab, or Latin-1 bytes) was written into train.txt, which the
    stages' reader then refused (or a traceback)."""
    from dataset.synthetic import make_imagenet

    root = tmp_path / "inet"
    make_imagenet(str(root), synsets=("n01440764", "n01443537"), train_per_class=1, val_per_class=1, seed=0,
                  min_size=48, max_size=48)
    folder = os.path.join(os.fsencode(root), b"train", b"n01443537")
    first = os.path.join(folder, sorted(os.listdir(folder))[0])
    os.rename(first, os.path.join(folder, name if isinstance(name, bytes) else name.encode()))
    p = prepare("imagenet", "--root", root, check=False)
    assert p.returncode == 2 and "train: file name(s)" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(root / "train.txt") and not os.path.exists(root / "synsets.txt")
