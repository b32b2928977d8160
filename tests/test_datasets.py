"""The data-set table (utils/data/datasets.py): the code asks it, never a data set's name; the stage scripts name
their entry and hide no setting; what a run records (checkpoint.pth's "args") is what it always was."""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT, _script_main
from utils.stages import cli, stage_cam, stage_cls, stage_seg
from utils import localize
from utils.data.datasets import CUB, DATASETS, IMAGENET, OPENIMAGES, by_wsol_name
from utils.data.lists import SampleTable
from utils.errors import UserError

SCRIPTS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "*-*", "*.py")))
NAMES = {"cub", "imagenet", "openimages", "folder", "CUB", "ILSVRC", "OpenImages"}
# where a name may still be compared: the table itself, and the sub-command dispatch of the two dataset/ tools
MAY_COMPARE = {"utils/data/datasets.py", "dataset/prepare.py", "dataset/synthetic.py"}


def _project_files() -> list:
    files = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*-*", "*.py"))
    for package in ("utils", "network", "dataset"):
        files += glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)
    return sorted(os.path.relpath(f, ROOT) for f in files)


def _name_comparisons(path: str) -> list:
    """Lines of `path` that compare something with a data set's name (==, !=, in, not in, a match case)."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            constants = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else getattr(o, "elts", []))
                         if isinstance(c, ast.Constant)]
            if any(c.value in NAMES for c in constants if isinstance(c.value, str)):
                found.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in NAMES:
            found.append(node.lineno)
    return found


def test_no_code_compares_a_data_set_name_outside_the_table():
    assert "utils/stages/stage_seg.py" in _project_files() and "cub200-seg/test.py" in _project_files()
    offending = {p: lines for p in _project_files() if p not in MAY_COMPARE for lines in [_name_comparisons(p)]
                 if lines}
    assert offending == {}


def test_the_name_check_finds_comparisons(tmp_path):
    """The check above is not blind: each way of comparing a name is found."""
    path = tmp_path / "x.py"
    path.write_text('a = d == "cub"\nb = "imagenet" != d\nc = d in ("openimages", "x")\nmatch d:\n'
                    '    case "ILSVRC":\n        pass\ne = d == "other"\n')
    assert _name_comparisons(str(path)) == [1, 2, 3, 5]


def test_entries():
    assert list(DATASETS) == ["cub", "imagenet", "openimages"]
    assert all(DATASETS[name].name == name for name in DATASETS)
    assert (CUB.threshold, IMAGENET.threshold) == (0.2, 0.8)    # the authors' evaluation thresholds
    assert CUB.dual_head and not IMAGENET.dual_head and not OPENIMAGES.dual_head
    assert CUB.boxes and IMAGENET.boxes and not OPENIMAGES.boxes  # OpenImages: PxAP alone
    assert IMAGENET.excluded == ("ILSVRC2012_val_00033202.JPEG",) and CUB.excluded == OPENIMAGES.excluded == ()
    assert [d.stage_prefix for d in DATASETS.values()] == ["cub200", "imagenet", "openimages"]
    for d in DATASETS.values():  # every stage folder the table names exists
        assert os.path.isdir(os.path.join(ROOT, f"{d.stage_prefix}-cam"))
        assert os.path.isdir(os.path.join(ROOT, f"{d.stage_prefix}-seg"))
    with pytest.raises(Exception):
        CUB.threshold = 0.5  # frozen: a stage cannot change a data set for the others


def test_wsolevaluation_names_and_image_ids():
    assert [by_wsol_name(n) for n in ("CUB", "ILSVRC", "OpenImages")] == [CUB, IMAGENET, OPENIMAGES]
    with pytest.raises(UserError, match="CUB, ILSVRC, OpenImages"):
        by_wsol_name("VOC")
    assert IMAGENET.wsol_image_id("ILSVRC2012_val_00000001.JPEG") == "val/ILSVRC2012_val_00000001.JPEG"
    assert IMAGENET.wsol_image_id("n01440764/ILSVRC2012_val_00000001.JPEG") == "val/ILSVRC2012_val_00000001.JPEG"
    cub = "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    assert CUB.wsol_image_id(cub) == cub
    oi = "test/01226z/7af766bd43da900b.jpg"
    assert OPENIMAGES.wsol_image_id(oi) == oi
    assert [d.wsol_split for d in DATASETS.values()] == ["test"] * 3
    assert IMAGENET.imagenetv2_split == "val" and CUB.imagenetv2_split is None


def test_the_table_is_torch_free():
    """utils.wsol_eval reads the table in pool workers, which must not import torch (utils/engine/workers.py)."""
    code = "import sys, utils.data.datasets, utils.wsol_eval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_list_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.txt").write_bytes("a/\xe9.jpg,0,1 2 3 4\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"train.txt:1: not UTF-8 text \(byte 3 of the line"):
        CUB.read_list(str(tmp_path), "train.txt", with_boxes=False)


def test_openimages_lists_have_no_boxes_to_evaluate(tmp_path):
    (tmp_path / "val.txt").write_text("val/c/a.jpg,0\n")
    assert OPENIMAGES.read_list(str(tmp_path), "val.txt", with_boxes=False).names() == ["val/c/a.jpg"]
    with pytest.raises(UserError, match="no ground-truth boxes"):
        OPENIMAGES.read_list(str(tmp_path), "val.txt", with_boxes=True)


class _Parsed(Exception):
    """Raised where a stage would start: carries what the script built."""


def _parser_of(script: str, monkeypatch):
    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)
    monkeypatch.setattr(cli, "parse", capture)
    with pytest.raises(_Parsed) as caught:
        _script_main(script)([])
    return caught.value.args[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_stage_scripts_hide_no_setting(script, monkeypatch):
    """Every default a stage script gives is a flag's (shown by --help); its data set and other settings are
    named values in the script, passed to cli.parse. localize.py's shared parser keeps two internal keys."""
    parser = _parser_of(script, monkeypatch)
    flags = {a.dest for a in parser._actions}
    assert set(parser._defaults) - flags <= {"mode", "default_classifier_arch"}
    module = ast.parse(open(os.path.join(ROOT, script)).read())
    named = {t.id for node in module.body if isinstance(node, ast.Assign) for t in node.targets}
    assert "DATASET" in named


@pytest.mark.parametrize("script,threshold", [("cub200-seg/test.py", 0.2), ("cub200-seg/localize.py", 0.2),
                                              ("imagenet-seg/test.py", 0.8), ("imagenet-seg/localize.py", 0.8),
                                              ("openimages-seg/localize.py", 0.5)])
def test_threshold_defaults(script, threshold, monkeypatch):
    assert _parser_of(script, monkeypatch).get_default("threshold") == threshold


def _cub_root(tmp_path) -> str:
    root = tmp_path / "CUB_200_2011"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("1 a\n2 b\n3 c\n")
    return str(root)


def _stage_args(monkeypatch, module, entry: str, script: str, *argv) -> dict:
    """The namespace a stage script hands its stage entry (which is not run)."""
    monkeypatch.setattr(module, entry, lambda args: args)
    return vars(_script_main(script)([str(a) for a in argv]))


def test_recorded_settings_are_as_before(tmp_path, monkeypatch):
    """checkpoint.pth's "args" (and args.json) record the same keys and values as when the scripts set them
    with set_defaults: the data set's name, count_classes where classes.txt is counted, freeze_stem of the cam
    stages, dataset_prefix of the seg stages."""
    cub = _cub_root(tmp_path)
    extra = {"dataset", "count_classes", "freeze_stem", "dataset_prefix"}

    def recorded(args: dict) -> dict:
        return {k: v for k, v in args.items() if k in extra}

    args = _stage_args(monkeypatch, stage_cam, "train", "cub200-cam/train.py", "--datapath", cub)
    assert recorded(args) == {"dataset": "cub", "count_classes": True, "freeze_stem": False}
    assert args["clsnum"] == 3  # the lines of classes.txt
    assert list(args)[-4:] == ["dataset", "count_classes", "freeze_stem", "stage"]  # after the flags, in order
    args = _stage_args(monkeypatch, stage_cls, "train", "cub200-cls/train.py", "--datapath", cub, "--clsnum", 7)
    assert recorded(args) == {"dataset": "cub", "count_classes": True} and args["clsnum"] == 7
    args = _stage_args(monkeypatch, stage_seg, "train", "cub200-seg/train.py", "--datapath", cub)
    assert recorded(args) == {"dataset": "cub", "dataset_prefix": "cub200"} and args["clsnum"] == 1
    args = _stage_args(monkeypatch, stage_cam, "train", "imagenet-cam/train.py")
    assert recorded(args) == {"dataset": "imagenet", "freeze_stem": True} and args["clsnum"] == 1000
    args = _stage_args(monkeypatch, stage_seg, "train", "imagenet-seg/train.py")
    assert recorded(args) == {"dataset": "imagenet", "dataset_prefix": "imagenet"}
    args = _stage_args(monkeypatch, stage_cam, "train", "openimages-cam/train.py")
    assert recorded(args) == {"dataset": "openimages", "freeze_stem": False} and args["clsnum"] == 100
    args = _stage_args(monkeypatch, stage_seg, "train", "openimages-seg/train.py")
    assert recorded(args) == {"dataset": "openimages", "dataset_prefix": "openimages"}


def test_test_scripts_find_the_released_snapshot_and_the_cls_stage(tmp_path, monkeypatch):
    """Without --snapshot: the authors' released name in --savepath; a seg test.py looks for the classifier's
    results in its data set's cls stage; OpenImages (no boxes) looks for none."""
    cub = _cub_root(tmp_path)
    (tmp_path / "model-8.pth").write_bytes(b"")
    args = _stage_args(monkeypatch, stage_seg, "evaluate", "cub200-seg/test.py", "--datapath", cub,
                       "--savepath", tmp_path)
    assert args["snapshot"] == str(tmp_path / "model-8.pth") and args["top1top5"] is None
    assert args["dataset"] == "cub" and "released" not in args and "cls_stage" not in args
    cls_out = os.path.join(ROOT, "imagenet-cls", "out")
    if not os.path.exists(os.path.join(cls_out, "top1top5.npy")):
        (tmp_path / "model-6000").write_bytes(b"")
        monkeypatch.setattr(cli, "_say", lambda message: said.append(message))
        said = []
        _stage_args(monkeypatch, stage_seg, "evaluate", "imagenet-seg/test.py", "--savepath", tmp_path)
        assert said[0].startswith("--snapshot not given: using ") and said[0].endswith("(the released snapshot's name)")
        assert f"no top1top5.npy in {os.path.normpath(cls_out)}" in said[1]
    (tmp_path / "model-2").write_bytes(b"")
    args = _stage_args(monkeypatch, stage_seg, "evaluate", "openimages-seg/test.py", "--savepath", tmp_path)
    assert args["snapshot"] == str(tmp_path / "model-2") and args["top1top5"] is None
    args = _stage_args(monkeypatch, localize, "localize", "openimages-seg/localize.py", "--savepath", tmp_path, "x")
    assert args["snapshot"] == str(tmp_path / "model-2") and args["dataset"] == "openimages"


def _read_toy_list(datapath: str, listname: str, with_boxes: bool) -> SampleTable:
    """A layout none of the scripts knows: `<file> <label>` per line, the images in `<datapath>/pictures/`."""
    from utils.data.lists import TableBuilder, list_lines
    samples = TableBuilder()
    for _, line in list_lines(os.path.join(datapath, listname)):
        name, label = line.split()
        samples.add(name, os.path.join(datapath, "pictures"), int(label), [])
    return samples.table()


def test_a_new_layout_is_a_reader_and_a_table_entry(tmp_path, monkeypatch):
    """A data set with a layout of its own runs with an existing stage script's recipe through --dataset once
    the table has its entry (the reader above and the entry below: no other code)."""
    import cv2
    import numpy as np
    from utils.data.datasets import DataSet
    toy = DataSet(name="toy", stage_prefix="imagenet", reader=_read_toy_list, count_classes=False,
                  class_names=lambda datapath: ["a", "b"], class_list="-", dual_head=False, threshold=0.5,
                  boxes=False, wsol_name="toy")
    monkeypatch.setitem(DATASETS, "toy", toy)
    (tmp_path / "pictures").mkdir()
    rng = np.random.default_rng(0)
    with open(tmp_path / "train.txt", "w") as f:
        for i in range(4):
            cv2.imwrite(str(tmp_path / "pictures" / f"{i}.png"), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
            f.write(f"{i}.png {i % 2}\n")
    args = _stage_args(monkeypatch, stage_cam, "train", "imagenet-cam/train.py", "--dataset", "toy",
                       "--datapath", tmp_path, "--list", "train.txt", "--clsnum", 2)
    assert args["dataset"] == "toy" and args["freeze_stem"]        # the layout is toy's, the recipe ImageNet's
    monkeypatch.undo()
    monkeypatch.setitem(DATASETS, "toy", toy)
    out = tmp_path / "out"
    _script_main("imagenet-cam/train.py")(["--dataset", "toy", "--datapath", str(tmp_path), "--list", "train.txt",
                                           "--clsnum", "2", "--backbone", "resnet18", "--pretrained", "none",
                                           "--device", "cpu", "--num_workers", "0", "--size", "32", "--crop", "32",
                                           "--batch_size", "2", "--epoch", "1", "--savepath", str(out)])
    assert (out / "model-2.pth").is_file()                        # ImageNet names snapshots by step: 4 / 2
    with pytest.raises(SystemExit):  # not in the table: a usage error naming the choices
        _script_main("imagenet-cam/train.py")(["--dataset", "nosuch"])
