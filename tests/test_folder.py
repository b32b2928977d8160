"""`dataset/prepare.py folder` on hand-built class folders: lists, classes.txt, boxes and the split checked
by hand, the lists read back by the stages' reader (several boxes, none), and every bad layout it promises
to reject with one clear line.

The class folders are written with OpenCV and plain file copies (a user's folders come from anywhere);
boxes.csv is written as a spreadsheet export would be (header row, `\\r\\n` line ends).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bad_files import write_corrupt_file  # noqa: E402
from dataset.folder import val_count  # noqa: E402
from utils.data.lists import count_classes, read_class_names, read_cub_list  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402

_spec = importlib.util.spec_from_file_location("prepare_for_folder", os.path.join(REPO, "dataset", "prepare.py"))
prepare = importlib.util.module_from_spec(_spec)
sys.modules["prepare_for_folder"] = prepare  # dataclasses look their module up there
_spec.loader.exec_module(prepare)

# relpath -> (width, height); nested folders, PNG and JPEG (upper-case extension too)
IMAGES = {
    "cat/a.jpg": (40, 30), "cat/b.png": (50, 20), "cat/2021/c.JPG": (30, 30), "cat/2021/deep/d.png": (20, 40),
    "dog/x.jpeg": (64, 48), "dog/y.png": (32, 32), "dog/z.bmp": (20, 10),
}


@pytest.fixture
def run(capsys):
    """prepare.py's main in this process: (exit code, stdout, stderr) as the command line gives them."""
    def call(*args: str) -> tuple:
        code = 0
        try:
            run_main(lambda: prepare.main(["folder", *map(str, args)]))
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return call


def make_folder(root: str, images: dict = IMAGES) -> str:
    for rel, (w, h) in images.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        assert cv2.imwrite(path, np.full((h, w, 3), 90, np.uint8))
    with open(os.path.join(root, "cat", "notes.txt"), "w") as f:   # not an image: ignored
        f.write("taken in 2021\n")
    os.makedirs(os.path.join(root, "dog", ".thumbnails"))          # hidden: ignored
    assert cv2.imwrite(os.path.join(root, "dog", ".thumbnails", "x.png"), np.zeros((4, 4, 3), np.uint8))
    return root


def write_csv(path: str, rows: list) -> str:
    with open(path, "w", newline="") as f:
        f.write("".join(row + "\r\n" for row in rows))
    return path


def read(path: str) -> list:
    with open(path) as f:
        return f.read().splitlines()


def test_lists_and_classes_by_hand(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    code, out, err = run("--root", root, "--val-fraction", "0.3", "--seed", "1")
    assert code == 0, err
    assert read(os.path.join(root, "classes.txt")) == ["1 cat", "2 dog"]
    train, val = read(os.path.join(root, "train.txt")), read(os.path.join(root, "val.txt"))
    # round(0.3 x 4) = 1 cat and round(0.3 x 3) = 1 dog in val; labels from the sorted folder names
    assert len(val) == 2 and len(train) == 5
    lines = {line.split(",")[0]: line for line in train + val}
    assert set(lines) == set(IMAGES)
    assert all(line == f"{rel},{0 if rel.startswith('cat/') else 1}" for rel, line in lines.items())
    assert [v.split("/")[0] for v in val] == ["cat", "dog"]
    assert "ignored 1 file(s) that are not images: .txt x1" in err
    assert "evaluation needs boxes" in out
    # what the stages read back: DIR is the image folder, no boxes, classes from classes.txt
    samples = read_cub_list(root, "train.txt")
    assert all(os.path.isfile(s.path) and s.boxes == [] for s in samples)
    assert count_classes(root) == 2 and read_class_names(root) == ["cat", "dog"]
    # the same seed, the same split
    assert run("--root", root, "--val-fraction", "0.3", "--seed", "1", "--force")[0] == 0
    assert read(os.path.join(root, "val.txt")) == val


def test_boxes_csv_several_per_image_and_val_drawn_among_boxed(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    boxes = write_csv(str(tmp_path / "boxes.csv"), [
        "relpath,xmin,ymin,xmax,ymax",
        "cat/a.jpg,1,2,30,25", "cat/a.jpg,31,0,40,30.5",     # two boxes, one reaching outside (warned)
        "./cat/2021/c.JPG,0,0,30,30",
        "dog/y.png,2.5,3,20,21"])
    code, out, err = run("--root", root, "--boxes", boxes, "--val-fraction", "0.5")
    assert code == 0, err
    val = read(os.path.join(root, "val.txt"))
    # val: round(0.5 x 4) = 2 of cat's boxed images (both), 1 of dog's (y.png, its only boxed one... of 2 wanted)
    assert val == ["cat/2021/c.JPG,0,0 0 30 30", "cat/a.jpg,0,1 2 30 25 31 0 40 30.5", "dog/y.png,1,2.5 3 20 21"]
    assert "too few images with a box" in err and "dog (1 of 2)" in err
    assert "1 box(es) reach outside their image" in err and "cat/a.jpg 31 0 40 30.5 (40x30)" in err
    assert "boxes: 4 for 3 images (3 of 3 val images)" in out
    samples = read_cub_list(root, "val.txt", require_boxes=True)
    assert samples[1].boxes == [[1.0, 2.0, 30.0, 25.0], [31.0, 0.0, 40.0, 30.5]]
    assert all(line.count(",") == 1 for line in read(os.path.join(root, "train.txt")))  # unboxed: no box field


def test_evaluation_list_without_boxes_is_one_clear_error(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    assert run("--root", root, "--val-fraction", "0.3")[0] == 0
    with pytest.raises(UserError, match=r"val.txt: 2 of 2 images have no ground-truth box .*evaluation needs boxes"):
        read_cub_list(root, "val.txt", require_boxes=True)


def test_val_count_rule():
    assert [val_count(n, 0.1) for n in (1, 2, 9, 10, 14, 15, 100)] == [0, 1, 1, 1, 1, 2, 10]
    assert val_count(10, 0.0) == 0 and val_count(3, 0.9) == 2   # never a whole class


def test_val_fraction_zero_writes_no_val_list(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    code, out, _ = run("--root", root, "--val-fraction", "0")
    assert code == 0 and "no val.txt" in out and not os.path.exists(os.path.join(root, "val.txt"))
    assert len(read(os.path.join(root, "train.txt"))) == len(IMAGES)


def test_existing_outputs_are_kept_unless_forced(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    assert run("--root", root)[0] == 0
    before = read(os.path.join(root, "train.txt"))
    code, out, _ = run("--root", root, "--seed", "5", "--val-fraction", "0.5")
    assert code == 0 and "kept existing classes.txt, train.txt, val.txt" in out
    assert read(os.path.join(root, "train.txt")) == before
    os.remove(os.path.join(root, "train.txt"))
    code, _, err = run("--root", root)
    assert code == 2 and "already has classes.txt and val.txt but not the rest" in err and "--force" in err


def test_unreadable_image_stops_naming_it_or_is_left_out(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    bad = write_corrupt_file(os.path.join(root, "dog", "broken.jpg"))
    code, _, err = run("--root", root)
    assert code == 2 and bad in err and "not a readable image" in err and "--skip-unreadable" in err
    assert "Traceback" not in err and not os.path.exists(os.path.join(root, "train.txt"))
    boxes = write_csv(str(tmp_path / "boxes.csv"), ["dog/broken.jpg,1,1,5,5", "dog/y.png,1,1,5,5"])
    code, _, err = run("--root", root, "--skip-unreadable", "--boxes", boxes)
    assert code == 0 and f"left out: {bad}" in err
    listed = read(os.path.join(root, "train.txt")) + read(os.path.join(root, "val.txt"))
    assert len(listed) == len(IMAGES) and not any("broken" in line for line in listed)


@pytest.mark.parametrize("case,message", [
    ("empty class", "class folder(s) bird hold no image"),
    ("one class", "only one class (cat)"),
    ("same name", "duplicate image names cat/a.jpg and cat/a.png"),
    ("reserved", "may not be named images"),
    ("image at the root", "lie outside any class folder"),
    ("comma", "hold a comma or line break"),
    ("no class folder", "holds no class folder"),
    ("missing root", "folder not found"),
    ("cub images.txt", "would make the stage scripts read"),
])
def test_bad_layouts_give_one_clear_line(tmp_path, run, case, message):
    root = str(tmp_path / "pets")
    images = {"cat/a.jpg": (8, 8), "dog/b.jpg": (8, 8)}
    if case == "one class":
        images = {"cat/a.jpg": (8, 8), "cat/b.jpg": (8, 8)}
    elif case == "same name":
        images["cat/a.png"] = (8, 8)
    elif case == "reserved":
        images["images/c.jpg"] = (8, 8)
    elif case == "image at the root":
        images["stray.png"] = (8, 8)
    elif case == "comma":
        images["dog/b,2.jpg"] = (8, 8)
    elif case == "no class folder":
        images = {}
    if case != "missing root":
        os.makedirs(root)
        for rel, (w, h) in images.items():
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            assert cv2.imwrite(os.path.join(root, rel), np.zeros((h, w, 3), np.uint8))
    if case == "empty class":
        os.makedirs(os.path.join(root, "bird", "sub"))
    if case == "cub images.txt":
        open(os.path.join(root, "images.txt"), "w").close()
    code, _, err = run("--root", root)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("rows,message", [
    (["cat/a.jpg,1,2,3"], "expected 'relpath,xmin,ymin,xmax,ymax'"),
    (["cat/a.jpg,1,2,3,4", "cat/b.png,x,2,3,4"], "box values must be numbers"),
    (["cat/a.jpg,10,2,5,4"], "xmax > xmin"),
    (["cat/a.jpg,1,2,3,nan"], "xmax > xmin"),
    (["pets/cat/a.jpg,1,2,3,4"], "no such image in the class folders: pets/cat/a.jpg (line 1)"),
    (["relpath,xmin,ymin,xmax,ymax"], "holds no box"),
])
def test_bad_boxes_csv_gives_one_clear_line(tmp_path, run, rows, message):
    root = make_folder(str(tmp_path / "pets"))
    code, _, err = run("--root", root, "--boxes", write_csv(str(tmp_path / "b.csv"), rows))
    assert code == 2 and message in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(root, "train.txt"))  # nothing written before the check


def test_missing_boxes_file_and_bad_fraction(tmp_path, run):
    root = make_folder(str(tmp_path / "pets"))
    code, _, err = run("--root", root, "--boxes", str(tmp_path / "none.csv"))
    assert code == 2 and "--boxes file not found" in err
    code, _, err = run("--root", root, "--val-fraction", "1")
    assert code == 2 and "--val-fraction must be in [0, 1)" in err


def test_list_reader_takes_several_boxes_or_none_and_rejects_the_rest(tmp_path):
    root = make_folder(str(tmp_path / "pets"))
    (tmp_path / "pets" / "classes.txt").write_text("1 cat\n2 dog\n")
    (tmp_path / "pets" / "l.txt").write_text("cat/a.jpg,0,1 2 3 4 5 6 7 8\ncat/b.png,0\ndog/y.png,1,\n")
    s = read_cub_list(root, "l.txt")
    assert [x.boxes for x in s] == [[[1, 2, 3, 4], [5, 6, 7, 8]], [], []]
    assert s[0].path == os.path.join(root, "cat/a.jpg")   # the folder data set is its own image folder
    for bad in ("cat/a.jpg,0,1 2 3", "cat/a.jpg", "cat/a.jpg,0,1 2 3 4,5"):
        (tmp_path / "pets" / "l.txt").write_text(bad + "\n")
        with pytest.raises(UserError, match="l.txt:1: expected 'relpath,label,xmin ymin xmax ymax'"):
            read_cub_list(root, "l.txt")
