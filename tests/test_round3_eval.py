"""Evaluation honesty and names (issue 33, third audit): no figure is computed over the wrong images or the
wrong answers without a word. A classifier answer is never taken from another folder's image; a name written
another way (`./a/b.jpg`, `a//b.jpg`) is the same image; a label outside the classes stops the evaluation; a
mask path that leaves the OpenImages folder is never read; a 255-byte image name gets its mask; the printed
`utils.wsol_eval` command only where its metadata exists. On a tiny CUB set (2 classes, 3 + 3 images each)
and random-weight models."""
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import prepared_cub, run_inprocess
from network import build_mffnet
from test_bad_input import clear_error, edit_list
from test_wsol_eval import write_dataset
from utils.errors import UserError
from utils.data.lists import TableBuilder, normal_name, read_cub_list, read_openimages_list
from utils.engine.outputs import write_atomic
from utils.results import match_top1top5
from utils.evaluation.wsol_protocol import openimages_masks

RUN = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "48", "--crop", "40"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    top = tmp_path_factory.mktemp("round3")
    root = top / "CUB_200_2011"
    prepared_cub(str(root), num_classes=2, train_per_class=3, val_per_class=3, seed=8, min_size=48, max_size=64)
    torch.manual_seed(0)
    torch.save(build_mffnet(2, "resnet18").state_dict(), top / "cam.pth")
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), top / "seg.pth")
    return top


def seg_eval(cub, base, tmp_path, *extra, check=False):
    return run_inprocess("cub200-seg/test.py", "--datapath", cub, "--snapshot", base / "seg.pth", "--savepath",
                         tmp_path / "eval", "--top1top5", "none", *RUN, *extra, check=check)


def cam_masks(cub, base, tmp_path, *extra, check=False):
    return run_inprocess("cub200-cam/test.py", "--datapath", cub, "--clsnum", 2, "--snapshot", base / "cam.pth",
                         "--maskpath", tmp_path / "masks", "--post_workers", 0, *RUN, *extra, check=check)


# ------------------------------------------------------------------ E1: top1top5 matched by file name
def test_a_classifier_answer_is_never_taken_from_another_folder():
    table = {"cat/IMG_0003.jpg": (True, True), "ILSVRC2012_val_00000001.JPEG": (False, True)}
    with pytest.raises(UserError, match="no entry for 1 of the 2 evaluated images, e.g. dog/IMG_0003.jpg"):
        match_top1top5(table, ["cat/IMG_0003.jpg", "dog/IMG_0003.jpg"], "t.npy")
    # a bare entry (the authors' ImageNet file) still answers for its image in a class folder
    assert match_top1top5(table, ["n01/ILSVRC2012_val_00000001.JPEG"], "t.npy") == {
        "n01/ILSVRC2012_val_00000001.JPEG": (False, True)}


# ------------------------------------------------------------------ N15: one name, one normal form
def test_names_have_one_normal_form_and_never_leave_their_folder():
    assert {normal_name(n) for n in ("./a/b.jpg", "a//b.jpg", "a/./b.jpg", "a/b.jpg")} == {"a/b.jpg"}
    for bad in ("../a.jpg", "/a.jpg", "a/../../b.jpg", "a\\..\\b.jpg", "", ".", "a/"):
        with pytest.raises(ValueError):
            normal_name(bad)


def test_every_list_reader_writes_names_in_their_normal_form(cub, tmp_path):
    lines = (cub / "val.txt").read_text().splitlines()
    edit_list(cub / "val.txt", lambda ls: ["./" + ls[0], ls[1].replace("/", "//", 1)] + ls[2:])
    names = read_cub_list(str(cub), "val.txt").names()
    assert names == [line.split(",")[0] for line in lines]
    (tmp_path / "oi.txt").write_text("./train/c/a.jpg,0\ntrain//c/b.jpg,1\n")
    assert read_openimages_list(str(tmp_path), "oi.txt").names() == ["train/c/a.jpg", "train/c/b.jpg"]
    (tmp_path / "bad.txt").write_text("train/c/a.jpg,0\n../c/b.jpg,1\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: '\.\./c/b\.jpg' leaves its folder"):
        read_openimages_list(str(tmp_path), "bad.txt")


@pytest.mark.parametrize("spelling", ["./", "//"])
def test_an_image_listed_again_under_another_spelling_is_a_repeat(cub, base, tmp_path, spelling):
    def again(ls):
        name, rest = ls[0].split(",", 1)
        other = "./" + name if spelling == "./" else name.replace("/", "//", 1)
        return ls + [f"{other},{rest}"]
    edit_list(cub / "val.txt", again)
    clear_error(seg_eval(cub, base, tmp_path), f"{cub / 'val.txt'}:7:", "is listed again")
    p = seg_eval(cub, base, tmp_path, "--on-bad-image", "skip", check=True)
    assert "images: 6 " in p.stdout  # 6 images, not 7 (GT-known Loc over the wrong count)
    edit_list(cub / "train.txt", again)
    clear_error(cam_masks(cub, base, tmp_path), f"{cub / 'train.txt'}:7:", "is listed again")


def test_wsol_eval_sees_an_image_id_repeated_under_another_spelling(tmp_path):
    meta, maps = write_dataset(tmp_path)
    ids = meta / "CUB" / "test" / "image_ids.txt"
    ids.write_text(ids.read_text() + "./001.A/a.jpg\n")  # scored twice, it would lift MaxBoxAcc
    p = run_inprocess("utils/wsol_eval.py", "--scoremap_root", maps, "--metadata_root", meta, "--dataset_name",
                      "CUB", "--workers", 1, check=False)
    clear_error(p, f"{ids}:4: image id 001.A/a.jpg is listed twice (lines 1 and 4)")


# ------------------------------------------------------------------ E2: labels in evaluation
@pytest.mark.parametrize("label,extra", [("-1", ()), ("7", ()), ("7", ("--clsnum", "2"))])
def test_evaluation_refuses_a_label_outside_the_classes(cub, base, tmp_path, label, extra):
    edit_list(cub / "val.txt", lambda ls: [ls[0].split(",")[0] + f",{label}," + ls[0].split(",")[2]] + ls[1:])
    clear_error(seg_eval(cub, base, tmp_path, *extra), f"{cub / 'val.txt'}:1: label {label}", "outside 0..1")


# ------------------------------------------------------------------ E7, E8, E9: OpenImages mask paths
def _openimages(tmp_path, mask: str, ignore: str):
    """A one-image OpenImages set, `<tmp>/data` (its wsol_metadata/ inside), whose localization.txt names `mask`
    and `ignore`; a mask outside the folder, `<tmp>/outside/m.png`, that a missing check would read."""
    data, meta = tmp_path / "data", tmp_path / "data" / "wsol_metadata" / "OpenImages" / "test"
    meta.mkdir(parents=True)
    (data / "test" / "c").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    square = np.zeros((40, 40), np.uint8)
    square[10:30, 10:30] = 255
    for path, pixels in ((data / "test/c/a_m.png", square), (data / "test/c/a_ignore.png", 0 * square),
                         (tmp_path / "outside/m.png", 255 - square)):
        cv2.imwrite(str(path), pixels)
    (meta / "image_ids.txt").write_text("test/c/a.jpg\n")
    (meta / "class_labels.txt").write_text("test/c/a.jpg,0\n")
    (meta / "localization.txt").write_text(f"test/c/a.jpg,{mask},{ignore}\n")
    return data, meta


@pytest.mark.parametrize("field", ["mask", "ignore"])
@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_openimages_mask_paths_that_leave_the_folder_are_never_read(tmp_path, field, where):
    outside = "../outside/m.png" if where == "dotdot" else str(tmp_path / "outside" / "m.png")
    mask, ignore = (outside, "test/c/a_ignore.png") if field == "mask" else ("test/c/a_m.png", outside)
    data, meta = _openimages(tmp_path, mask, ignore)
    p = run_inprocess("utils/wsol_eval.py", "--centre_baseline", "--metadata_root", data / "wsol_metadata",
                      "--mask_root", data, "--dataset_name", "OpenImages", "--split", "test", "--workers", 1,
                      check=False)
    clear_error(p, f"{meta / 'localization.txt'}:1: ", f"path {outside!r} leaves its folder")
    samples = TableBuilder()
    samples.add("test/c/a.jpg", str(data), 0, [])
    with pytest.raises(UserError, match=f"path '{outside}' leaves its folder"):  # openimages-seg/test.py's reader
        openimages_masks(str(data), "OpenImages", "test", samples.table())


# ------------------------------------------------------------------ E15: the printed utils.wsol_eval command
def test_wsol_protocol_prints_a_wsol_eval_command_only_where_its_metadata_is(cub, base, tmp_path):
    shutil.rmtree(cub / "wsol_metadata")  # as a class-folder data set of prepare.py folder: none written
    p = seg_eval(cub, base, tmp_path, "--protocol", "wsol", "--post_workers", 0, check=True)
    assert "python -m utils.wsol_eval --scoremap_root" not in p.stdout
    assert "wsol_metadata/CUB/test/ is missing" in p.stdout


# ------------------------------------------------------------------ N5: a 255-byte image name
LONG = "x" * 251 + ".jpg"  # 255 bytes, the longest file name ext4 takes


def test_a_file_of_the_longest_name_is_written_atomically(tmp_path):
    write_atomic(str(tmp_path / LONG), lambda f: f.write(b"data"))
    assert [p.name for p in tmp_path.iterdir()] == [LONG] and (tmp_path / LONG).read_bytes() == b"data"


def test_a_255_byte_image_name_gets_its_mask_and_its_score_map_is_refused_before_work(cub, base, tmp_path):
    first = (cub / "train.txt").read_text().splitlines()[0]
    name, rest = first.split(",", 1)
    long = name.split("/")[0] + "/" + LONG
    shutil.copy(cub / "images" / name, cub / "images" / long)
    edit_list(cub / "train.txt", lambda ls: ls + [f"{long},{rest}"])
    cam_masks(cub, base, tmp_path, check=True)
    assert (tmp_path / "masks" / long).with_suffix(".png").is_file()
    edit_list(cub / "val.txt", lambda ls: ls + [f"{long},{rest}"])
    clear_error(seg_eval(cub, base, tmp_path, "--protocol", "wsol", "--post_workers", 0),
                f"the score map of {long}", "--no-save_scoremaps")
    assert not (tmp_path / "eval" / "scoremaps").exists() or not any((tmp_path / "eval" / "scoremaps").rglob("*"))
