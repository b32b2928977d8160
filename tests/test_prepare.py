"""dataset/prepare.py on tiny hand-built CUB-200-2011 and ImageNet folders: list lines checked by hand,
wsolevaluation metadata, the never-overwrite rule and each bad input it promises to reject.

Most cases call the script's `main` in this process through `run_main` (the same exit code and
messages as the command line, without a 4 s torch import per case); a few run the real command
line with subprocess, one of them from another working directory.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "dataset", "prepare.py")
sys.path.insert(0, REPO)

from utils.data.lists import read_cub_list, read_imagenet_list  # noqa: E402
from utils.errors import run_main  # noqa: E402

_spec = importlib.util.spec_from_file_location("prepare", SCRIPT)
prepare = importlib.util.module_from_spec(_spec)
sys.modules["prepare"] = prepare  # dataclasses look their module up there
_spec.loader.exec_module(prepare)


def cli(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    """The real command line."""
    return subprocess.run([sys.executable, SCRIPT if cwd != REPO else "dataset/prepare.py", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def run(capsys):
    """main() in this process: (exit code, stdout, stderr) as the command line gives them."""
    def call(*args: str) -> tuple:
        code = 0
        try:
            run_main(lambda: prepare.main(list(args)))
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return call


def write_jpeg(path: str, width: int, height: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, np.full((height, width, 3), 128, np.uint8))


def write_text(path: str, lines: list) -> None:
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def read(path: str) -> list:
    with open(path) as f:
        return f.read().splitlines()


# -------------------------------------------------------------------------------------------- CUB
# id, relpath, class (1-based), is_train, x y width height, image width x height
CUB = [
    ("1", "001.Gull/Gull_0001.jpg", 1, 1, "10.0 20.0 30.0 40.0", (80, 70)),
    ("2", "001.Gull/Gull_0002.jpg", 1, 0, "1.5 2.25 20.5 30.0", (64, 48)),
    ("3", "002.Tern/Tern_0003.jpg", 2, 1, "0.0 0.0 80.0 70.0", (80, 70)),
    ("4", "002.Tern/Tern_0004.jpg", 2, 0, "5.0 6.0 55.0 44.0", (60, 50)),  # to the right and bottom borders
]


def make_cub(root: str, images: str = "images", rows: list = CUB) -> str:
    os.makedirs(root)
    for _, rel, _, _, _, (w, h) in rows:
        write_jpeg(os.path.join(root, images, rel), w, h)
    write_text(os.path.join(root, "images.txt"), [f"{i} {rel}" for i, rel, *_ in rows])
    write_text(os.path.join(root, "image_class_labels.txt"), [f"{r[0]} {r[2]}" for r in rows])
    write_text(os.path.join(root, "train_test_split.txt"), [f"{r[0]} {r[3]}" for r in rows])
    write_text(os.path.join(root, "bounding_boxes.txt"), [f"{r[0]} {r[4]}" for r in rows])
    write_text(os.path.join(root, "classes.txt"), ["1 001.Gull", "2 002.Tern"])
    return root


def test_cub_lists_by_hand(tmp_path):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    p = cli("cub", "--root", root)
    assert p.returncode == 0, p.stderr
    # integral values as integers (the authors' lists), fractions kept
    assert read(os.path.join(root, "train.txt")) == ["001.Gull/Gull_0001.jpg,0,10 20 40 60",
                                                     "002.Tern/Tern_0003.jpg,1,0 0 80 70"]
    assert read(os.path.join(root, "val.txt")) == ["001.Gull/Gull_0002.jpg,0,1.5 2.25 22 32.25",
                                                   "002.Tern/Tern_0004.jpg,1,5 6 60 50"]
    assert "2 train / 2 val images, 2 classes" in p.stdout
    # the stages read them back as written
    val = read_cub_list(root, "val.txt")
    assert [(s.label, s.boxes) for s in val] == [(0, [[1.5, 2.25, 22.0, 32.25]]), (1, [[5.0, 6.0, 60.0, 50.0]])]


def test_cub_wsol_metadata(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    assert run("cub", "--root", root)[0] == 0
    meta = os.path.join(root, "wsol_metadata", "CUB", "test")
    assert read(os.path.join(meta, "image_ids.txt")) == ["001.Gull/Gull_0002.jpg", "002.Tern/Tern_0004.jpg"]
    assert read(os.path.join(meta, "class_labels.txt")) == ["001.Gull/Gull_0002.jpg,0", "002.Tern/Tern_0004.jpg,1"]
    assert read(os.path.join(meta, "image_sizes.txt")) == ["001.Gull/Gull_0002.jpg,64,48",
                                                           "002.Tern/Tern_0004.jpg,60,50"]
    # as wsolevaluation's: integers (fractions truncated), clipped to [0, width - 1] x [0, height - 1]:
    # Tern_0004's 5,6,60,50 reaches past its 60 x 50 image
    assert read(os.path.join(meta, "localization.txt")) == ["001.Gull/Gull_0002.jpg,1,2,22,32",
                                                            "002.Tern/Tern_0004.jpg,5,6,59,49"]


# Two test images of the real CUB-200-2011 (the 1st and 16th lines of both published files): their sizes, the
# bounding_boxes.txt line (x y width height) that gives the authors' box back, and the lines the authors'
# dataset/CUB_200_2011/val.txt and wsolevaluation's metadata/CUB/test/localization.txt hold for them. The
# second box reaches the right border of its 500-pixel-wide image: 500 in the list, 499 in the metadata.
ALBATROSS = "001.Black_footed_Albatross/Black_Footed_Albatross_"
PUBLISHED = [("1", ALBATROSS + "0046_18.jpg", "60.0 27.0 325.0 304.0", (500, 335),
              ALBATROSS + "0046_18.jpg,0,60 27 385 331", ALBATROSS + "0046_18.jpg,60,27,385,331"),
             ("2", ALBATROSS + "0005_796090.jpg", "1.0 2.0 499.0 286.0", (500, 335),
              ALBATROSS + "0005_796090.jpg,0,1 2 500 288", ALBATROSS + "0005_796090.jpg,1,2,499,288")]


def test_cub_files_equal_the_published_ones(tmp_path, run):
    rows = [(i, rel, 1, 0, box, size) for i, rel, box, size, _, _ in PUBLISHED]
    root = make_cub(str(tmp_path / "CUB_200_2011"), rows=rows)
    assert run("cub", "--root", root)[0] == 0
    with open(os.path.join(root, "val.txt"), "rb") as f:  # byte for byte, as the authors' file
        assert f.read() == b"".join(authors.encode() + b"\n" for *_, authors, _ in PUBLISHED)
    meta = os.path.join(root, "wsol_metadata", "CUB", "test")
    assert read(os.path.join(meta, "localization.txt")) == [theirs for *_, theirs in PUBLISHED]
    assert read(os.path.join(meta, "image_sizes.txt")) == [f"{rel},500,335" for _, rel, *_ in PUBLISHED]


def test_cub_id_missing_from_bounding_boxes(tmp_path):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    write_text(os.path.join(root, "bounding_boxes.txt"), [f"{r[0]} {r[4]}" for r in CUB if r[0] != "3"])
    p = cli("cub", "--root", root)
    assert p.returncode == 2
    assert "bounding_boxes.txt" in p.stderr and "id(s) 3 " in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(os.path.join(root, "train.txt"))


def test_cub_id_not_in_images_txt(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    write_text(os.path.join(root, "image_class_labels.txt"), [f"{r[0]} {r[2]}" for r in CUB] + ["9 1"])
    code, _, err = run("cub", "--root", root)
    assert code == 2 and "image_class_labels.txt" in err and "9" in err


def test_cub_missing_image_named(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    os.remove(os.path.join(root, "images", "002.Tern", "Tern_0003.jpg"))
    code, _, err = run("cub", "--root", root)
    assert code == 2 and "002.Tern/Tern_0003.jpg" in err and err.startswith("error: 1 image(s)")


def test_cub_keeps_existing_unless_force(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    meta = os.path.join(root, "wsol_metadata", "CUB", "test")
    os.makedirs(meta)
    for name in ("train.txt", "val.txt", os.path.join(meta, "image_ids.txt")):
        write_text(os.path.join(root, name), ["mine"])
    code, out, _ = run("cub", "--root", root)
    assert code == 0 and out.count("kept existing") == 3 and "--force" in out
    for name in ("train.txt", "val.txt", os.path.join(meta, "image_ids.txt")):
        assert read(os.path.join(root, name)) == ["mine"]
    assert not os.path.exists(os.path.join(meta, "localization.txt"))  # the folder is kept as a whole
    code, out, _ = run("cub", "--root", root, "--force")
    assert code == 0 and "kept" not in out
    assert read(os.path.join(root, "train.txt"))[0] == "001.Gull/Gull_0001.jpg,0,10 20 40 60"
    assert len(read(os.path.join(meta, "localization.txt"))) == 2


def test_cub_image_folder_named_image(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"), images="image")
    code, _, err = run("cub", "--root", root)
    assert code == 0, err
    assert len(read(os.path.join(root, "val.txt"))) == 2


def test_cub_check_images_warns_box_outside(tmp_path, run):
    rows = [r if r[0] != "4" else ("4", r[1], 2, 0, "50.0 6.0 20.0 12.0", (60, 50)) for r in CUB]
    root = make_cub(str(tmp_path / "CUB_200_2011"), rows=rows)
    code, _, err = run("cub", "--root", root)
    assert code == 0 and "warning" not in err  # sizes are only read with --check-images
    code, _, err = run("cub", "--root", root, "--check-images", "--force")
    assert code == 0 and "Tern_0004.jpg" in err and "outside the 60x50 image" in err
    assert read(os.path.join(root, "val.txt"))[1] == "002.Tern/Tern_0004.jpg,1,50 6 70 18"


def test_cub_zero_area_box_is_warned_about_and_kept(tmp_path, run):
    rows = [r if r[0] != "4" else ("4", r[1], 2, 0, "50.0 6.0 0.0 12.0", (60, 50)) for r in CUB]
    root = make_cub(str(tmp_path / "CUB_200_2011"), rows=rows)
    code, _, err = run("cub", "--root", root)
    assert code == 0 and "Tern_0004.jpg" in err and "zero area" in err
    assert read(os.path.join(root, "val.txt"))[1] == "002.Tern/Tern_0004.jpg,1,50 6 50 18"


def test_cub_unreadable_val_image_stops_before_writing(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    write_text(os.path.join(root, "images", "002.Tern", "Tern_0004.jpg"), ["not a jpeg"])
    code, _, err = run("cub", "--root", root)
    assert code == 2 and "Tern_0004.jpg" in err
    assert not os.path.exists(os.path.join(root, "train.txt"))


def test_cub_bad_box_number(tmp_path, run):
    root = make_cub(str(tmp_path / "CUB_200_2011"))
    write_text(os.path.join(root, "bounding_boxes.txt"), [f"{r[0]} {r[4]}" for r in CUB[:3]] + ["4 5.0 x 1 1"])
    code, _, err = run("cub", "--root", root)
    assert code == 2 and "bounding_boxes.txt" in err and "image id 4" in err


# --------------------------------------------------------------------------------------- ImageNet
SYNSETS = ["n01440764", "n01443537", "n01484850"]


def write_xml(path: str, objects: list, size: tuple = None) -> None:
    """objects: [(synset, (x0, y0, x1, y1))]."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(f"<object><name>{s}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for s, b in objects)
    with open(path, "w") as f:
        f.write(f"<annotation><folder>val</folder>{size_xml}{objs}</annotation>")


def make_imagenet(root: str, per_synset_val: bool = False) -> str:
    """3 classes, 2 train images each (+ a non-image file), 3 val images: val_1 of class 2, val_2 of
    class 0 (with a second box of its class and one of another class), val_3 of class 1 (no <size>)."""
    for s in SYNSETS:
        write_jpeg(os.path.join(root, "train", s, f"{s}_2.JPEG"), 20, 16)
        write_jpeg(os.path.join(root, "train", s, f"{s}_10.jpg"), 20, 16)
        write_text(os.path.join(root, "train", s, "notes.txt"), ["not an image"])
    val = [("ILSVRC2012_val_00000001.JPEG", 2, (40, 30), [(SYNSETS[2], (1, 2, 30, 20))]),
           ("ILSVRC2012_val_00000002.JPEG", 0, (50, 36),
            [(SYNSETS[0], (0, 0, 10, 10)), (SYNSETS[1], (5, 5, 20, 20)), (SYNSETS[0], (12, 3, 50, 36))]),
           ("ILSVRC2012_val_00000003.JPEG", 1, None, [(SYNSETS[1], (3, 4, 25, 26))])]
    for name, label, size, objects in val:
        folder = os.path.join(root, "val", SYNSETS[label]) if per_synset_val else os.path.join(root, "val")
        write_jpeg(os.path.join(folder, name), *(size or (32, 28)))
        write_xml(os.path.join(root, "box", name.replace(".JPEG", ".xml")), objects, size)
    return root


VAL_LINES = ["ILSVRC2012_val_00000001.JPEG 2", "ILSVRC2012_val_00000002.JPEG 0", "ILSVRC2012_val_00000003.JPEG 1"]


def test_imagenet_flat_val_from_xml(tmp_path):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    p = cli("imagenet", "--root", root, cwd=str(tmp_path))  # from another working directory
    assert p.returncode == 0, p.stderr
    assert read(os.path.join(root, "synsets.txt")) == SYNSETS
    assert read(os.path.join(root, "train.txt")) == [f"{s}/{f} {i}" for i, s in enumerate(SYNSETS)
                                                     for f in (f"{s}_10.jpg", f"{s}_2.JPEG")]
    assert read(os.path.join(root, "val.txt")) == VAL_LINES
    assert "6 train / 3 val images, 3 classes" in p.stdout
    # the stages read it back, with the boxes of the image's own class only
    val = read_imagenet_list(root, "val.txt")
    assert val[1].boxes == [[0.0, 0.0, 10.0, 10.0], [12.0, 3.0, 50.0, 36.0]]


def test_imagenet_wsol_metadata(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    assert run("imagenet", "--root", root)[0] == 0
    # wsolevaluation's split and ids for ILSVRC2012 val (their ILSVRC "val" is ImageNetV2)
    assert not os.path.exists(os.path.join(root, "wsol_metadata", "ILSVRC", "val"))
    meta = os.path.join(root, "wsol_metadata", "ILSVRC", "test")
    names = ["val/" + line.split()[0] for line in VAL_LINES]
    assert read(os.path.join(meta, "image_ids.txt")) == names
    assert read(os.path.join(meta, "class_labels.txt")) == ["val/" + line.replace(" ", ",") for line in VAL_LINES]
    # val_3's XML has no <size>: read from the image
    assert read(os.path.join(meta, "image_sizes.txt")) == [f"{names[0]},40,30", f"{names[1]},50,36",
                                                           f"{names[2]},32,28"]
    # two boxes of val_2's own class, not the other class's box; the second one's 50,36 clipped to its 50 x 36
    # image, as wsolevaluation's boxes
    assert read(os.path.join(meta, "localization.txt")) == [f"{names[0]},1,2,30,20", f"{names[1]},0,0,10,10",
                                                            f"{names[1]},12,3,49,35", f"{names[2]},3,4,25,26"]


def test_imagenet_former_val_metadata_is_pointed_out(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    old = os.path.join(root, "wsol_metadata", "ILSVRC", "val")
    os.makedirs(old)
    write_text(os.path.join(old, "image_ids.txt"), [line.split()[0] for line in VAL_LINES])
    code, _, err = run("imagenet", "--root", root)
    assert code == 0 and "ImageNetV2" in err and os.path.join("ILSVRC", "test") in err


def test_imagenet_per_synset_val(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"), per_synset_val=True)
    # the folder decides, not the first object of the XML
    write_xml(os.path.join(root, "box", "ILSVRC2012_val_00000003.xml"),
              [(SYNSETS[2], (1, 1, 5, 5)), (SYNSETS[1], (3, 4, 25, 26))])
    code, out, err = run("imagenet", "--root", root)
    assert code == 0, err
    assert read(os.path.join(root, "val.txt")) == VAL_LINES and "val/<synset>/ folders" in out
    # wsolevaluation's ids whatever our val/ layout
    ids = read(os.path.join(root, "wsol_metadata", "ILSVRC", "test", "image_ids.txt"))
    assert ids == ["val/" + line.split()[0] for line in VAL_LINES]
    assert read_imagenet_list(root, "val.txt")[2].boxes == [[3.0, 4.0, 25.0, 26.0]]


def test_imagenet_existing_val_list_kept(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    mine = ["ILSVRC2012_val_00000002.JPEG 0", "ILSVRC2012_val_00000003.JPEG 1"]
    write_text(os.path.join(root, "val.txt"), mine)
    code, out, err = run("imagenet", "--root", root)
    assert code == 0, err
    assert read(os.path.join(root, "val.txt")) == mine and "kept existing" in out
    ids = read(os.path.join(root, "wsol_metadata", "ILSVRC", "test", "image_ids.txt"))
    assert ids == ["val/" + m.split()[0] for m in mine]
    assert run("imagenet", "--root", root, "--force")[0] == 0
    assert read(os.path.join(root, "val.txt")) == VAL_LINES


def test_imagenet_train_list_kept_without_force(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    write_text(os.path.join(root, "train.txt"), ["mine"])
    assert run("imagenet", "--root", root)[0] == 0
    assert read(os.path.join(root, "train.txt")) == ["mine"]


def test_imagenet_synsets_order_honoured(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    order = SYNSETS[::-1]
    write_text(os.path.join(root, "LOC_synset_mapping.txt"), [f"{s} some name, other name" for s in order])
    assert run("imagenet", "--root", root)[0] == 0
    assert read(os.path.join(root, "synsets.txt")) == order
    train = read(os.path.join(root, "train.txt"))
    assert train[0] == f"{SYNSETS[0]}/{SYNSETS[0]}_10.jpg 2" and train[-1] == f"{SYNSETS[2]}/{SYNSETS[2]}_2.JPEG 0"
    assert read(os.path.join(root, "val.txt")) == [line[:-1] + str(2 - int(line[-1])) for line in VAL_LINES]


def test_imagenet_train_folder_not_in_class_list(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    write_text(os.path.join(root, "synsets.txt"), SYNSETS[:2])
    code, _, err = run("imagenet", "--root", root)
    assert code == 2 and SYNSETS[2] in err and "train/" in err


def test_imagenet_unknown_synset_in_xml(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    write_xml(os.path.join(root, "box", "ILSVRC2012_val_00000002.xml"),
              [(SYNSETS[0], (0, 0, 10, 10)), ("n09999999", (1, 1, 4, 4))])
    code, _, err = run("imagenet", "--root", root)
    assert code == 2 and "ILSVRC2012_val_00000002.xml" in err and "n09999999" in err


def test_imagenet_val_image_without_box_of_its_class(tmp_path):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"), per_synset_val=True)
    write_xml(os.path.join(root, "box", "ILSVRC2012_val_00000001.xml"), [(SYNSETS[0], (1, 2, 30, 20))])
    p = cli("imagenet", "--root", root)
    assert p.returncode == 2 and "ILSVRC2012_val_00000001.xml" in p.stderr and SYNSETS[2] in p.stderr
    assert not os.path.exists(os.path.join(root, "val.txt"))


def test_imagenet_val_image_without_xml(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    os.remove(os.path.join(root, "box", "ILSVRC2012_val_00000003.xml"))
    code, _, err = run("imagenet", "--root", root)
    assert code == 2 and "ILSVRC2012_val_00000003.xml" in err


def test_imagenet_missing_folders(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    os.rename(os.path.join(root, "val"), os.path.join(root, "valid"))
    code, _, err = run("imagenet", "--root", root)
    assert code == 2 and "val/ folder" in err


def test_imagenet_labels_from_kaggle_csv(tmp_path, run):
    root = make_imagenet(str(tmp_path / "ILSVRC2012"))
    write_text(os.path.join(root, "LOC_val_solution.csv"), [
        "ImageId,PredictionString",
        f"ILSVRC2012_val_00000003,{SYNSETS[1]} 3 4 25 26 {SYNSETS[0]} 1 1 2 2",
        f"ILSVRC2012_val_00000001,{SYNSETS[2]} 1 2 30 20",
        f"ILSVRC2012_val_00000002,{SYNSETS[0]} 0 0 10 10"])
    # the CSV, not the XML's first object, gives the label
    write_xml(os.path.join(root, "box", "ILSVRC2012_val_00000003.xml"),
              [(SYNSETS[0], (1, 1, 2, 2)), (SYNSETS[1], (3, 4, 25, 26))])
    code, out, err = run("imagenet", "--root", root)
    assert code == 0, err
    assert read(os.path.join(root, "val.txt")) == VAL_LINES and "LOC_val_solution.csv" in out


def test_help_explains_layouts(run):
    code, out, _ = run("imagenet", "--help")
    assert code == 0 and "val/<synset>/" in out and "box/<file>.xml" in out
    code, out, _ = run("cub", "--help")
    assert code == 0 and "bounding_boxes.txt" in out and "image/" in out
