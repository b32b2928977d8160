"""The tools' own inputs (README "What happens when ..."): `utils.wsol_eval`'s metadata, masks, score maps
and --json, `utils.results convert`, top1top5 files that list a name twice, `localize.py --savepath`. Each
bad input stops with one `error:` line naming the file and the problem (exit 2, no traceback), before any
figure is computed, and leaves no temporary file behind."""
import os

import cv2
import numpy as np
import pytest
import torch

from conftest import run_inprocess
from network import build_mffnet
from test_bad_input import clear_error
from test_wsol_eval import IMAGES, write_dataset
from utils.errors import UserError
from utils.results import read_top1top5
from utils.wsol_eval import resize_box_224


def wsol_eval(maps, meta, *extra):
    return run_inprocess("utils/wsol_eval.py", "--scoremap_root", maps, "--metadata_root", meta, "--dataset_name",
                         "CUB", "--multi_contour_eval", "true", "--workers", 1, *extra, check=False)


# ------------------------------------------------------------------------------------- utils.wsol_eval
def test_wsol_eval_refuses_an_image_id_listed_twice(tmp_path):
    meta, maps = write_dataset(tmp_path)
    ids = meta / "CUB" / "test" / "image_ids.txt"
    ids.write_text(ids.read_text() + "001.A/a.jpg\n")  # scored twice, it would lift MaxBoxAcc
    clear_error(wsol_eval(maps, meta), f"{ids}:4: image id 001.A/a.jpg is listed twice (lines 1 and 4)")


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_wsol_eval_refuses_ids_that_leave_the_score_map_folder(tmp_path, where):
    meta, maps = write_dataset(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    np.save(outside / "x.jpg.npy", np.ones((224, 224)))  # would be read and scored without the check
    iid = "../outside/x.jpg" if where == "dotdot" else str(outside / "x.jpg")
    folder = meta / "CUB" / "test"
    for name, line in (("image_ids.txt", iid), ("image_sizes.txt", f"{iid},224,224"),
                       ("localization.txt", f"{iid},0,0,100,100")):
        with open(folder / name, "a") as f:
            f.write(line + "\n")
    clear_error(wsol_eval(maps, meta), f"{folder / 'image_ids.txt'}:4: image id {iid!r} leaves its folder")


def test_wsol_eval_refuses_cub_masks_saved_as_0_and_1(tmp_path):
    meta, maps = write_dataset(tmp_path)
    masks = tmp_path / "segmentations"
    for value in (255, 1):
        for iid, (w, h), box, _ in IMAGES:
            x0, y0, x1, y1 = resize_box_224(box, w, h)
            m = np.zeros((224, 224), np.uint8)
            m[y0:y1 + 1, x0:x1 + 1] = value
            (masks / iid).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(masks / iid.replace(".jpg", ".png")), m)
        p = wsol_eval(maps, meta, "--mask_root", masks)
        if value == 255:  # 0/255 masks: scored as before
            assert p.returncode == 0 and "PxAP" in p.stdout, p.stderr
    clear_error(p, f"{masks / '001.A' / 'a.png'} holds only 0 and 1: expected 0/255 masks")


@pytest.mark.parametrize("target", ["folder", "under_a_file"])
def test_wsol_eval_checks_json_before_any_work(tmp_path, target):
    meta, maps = write_dataset(tmp_path)
    os.remove(maps / "002.B" / "c.jpg.npy")  # the evaluation would stop here: the --json check comes first
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    path = tmp_path / "folder" if target == "folder" else tmp_path / "file" / "wsol.json"
    clear_error(wsol_eval(maps, meta, "--json", path), "--json", str(path),
                "is a folder" if target == "folder" else "a file, not a folder")


@pytest.mark.parametrize("content", ["text", "objects"])
def test_wsol_eval_names_a_score_map_that_is_not_a_float_npy(tmp_path, content):
    meta, maps = write_dataset(tmp_path)
    path = maps / "002.B" / "c.jpg.npy"
    if content == "text":
        path.write_text("0.1 0.2\n0.3 0.4\n")
    else:
        np.save(path, np.array([{"map": 1}], dtype=object), allow_pickle=True)
    p = wsol_eval(maps, meta)
    clear_error(p, str(path), "expected a 2-D float .npy array")
    assert "allow_pickle" not in p.stderr, p.stderr


# ------------------------------------------------------------------------------------- utils.results
@pytest.mark.parametrize("value,bad", [([2, True], "top-1 value 2"), ([True, "x"], "top-5 value 'x'"),
                                       ([0.5, 1], "top-1 value 0.5"), ([None, False], "top-1 value None")])
def test_convert_accepts_only_booleans_or_0_1(tmp_path, value, bad):
    src = tmp_path / "theirs.npy"
    np.save(src, {"a/1.jpg": value, "a/2.jpg": [True, True]})
    p = run_inprocess("utils/results.py", "convert", src, tmp_path / "ours.npy", check=False)
    clear_error(p, str(src), "'a/1.jpg'", bad, "is not a boolean or 0/1")
    assert not os.path.exists(tmp_path / "ours.npy")


def test_numpy_bools_and_0_1_integers_are_flags(tmp_path):
    src = str(tmp_path / "theirs.npy")
    np.save(src, {"a": [np.bool_(True), np.int64(1)], "b": [0, np.array([1])[0]], "c": [False, 0.0]})
    assert read_top1top5(src) == {"a": (True, True), "b": (False, True), "c": (False, False)}


def test_convert_into_a_folder_is_one_line_and_leaves_no_temporary(tmp_path):
    src, out = tmp_path / "theirs.npy", tmp_path / "out"
    np.save(src, {"a/1.jpg": [True, True]})
    out.mkdir()
    clear_error(run_inprocess("utils/results.py", "convert", src, out, check=False), f"{out} is a folder")
    assert sorted(os.listdir(tmp_path)) == ["out", "theirs.npy"] and not os.listdir(out)


def structured(path, rows):
    np.save(path, np.array(rows, dtype=[("name", "U16"), ("top1", "?"), ("top5", "?")]))


def test_top1top5_name_listed_twice_with_other_values_is_an_error(tmp_path):
    path = str(tmp_path / "top1top5.npy")
    structured(path, [("a.jpg", True, True), ("b.jpg", False, False), ("a.jpg", False, False)])
    with pytest.raises(UserError, match=f"{path} lists 'a.jpg' twice with different values"):
        read_top1top5(path)
    structured(path, [("a.jpg", True, True), ("b.jpg", False, False), ("a.jpg", True, True)])
    assert read_top1top5(path) == {"a.jpg": (True, True), "b.jpg": (False, False)}  # the same twice: once


# ------------------------------------------------------------------------------------- localize.py
@pytest.mark.parametrize("script", ["cub200-seg/localize.py", "imagenet-seg/localize.py"])
def test_localize_savepath_that_is_a_file_stops_before_any_work(tmp_path, script):
    snap, image, savepath = tmp_path / "seg.pth", tmp_path / "x.png", tmp_path / "out"
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), snap)
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    savepath.write_text("")
    p = run_inprocess(script, "--snapshot", snap, "--backbone", "resnet18", "--device", "cpu", "--num_workers", 0,
                      image, "--savepath", savepath, check=False)
    clear_error(p, f"cannot write to {savepath / 'localize'}", "--savepath")


def test_a_written_table_may_be_right_at_top_1_and_wrong_at_top_5(tmp_path):
    # not a contradiction this reader judges (the fidelity check's ImageNet table holds such rows): read as written
    from utils.results import read_top1top5, write_top1top5
    write_top1top5(str(tmp_path / "t.npy"), ["a.jpg", "b.jpg"], [True, False], [False, False])
    assert read_top1top5(str(tmp_path / "t.npy")) == {"a.jpg": (True, False), "b.jpg": (False, False)}
