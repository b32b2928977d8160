"""The authors' own artefacts as they write them: their top1top5.npy (`np.save(path, {name: [top1, top5]})`),
their snapshots (`torch.save(model.state_dict(), 'out/model-8')`, no extension, fp16 under apex O2), their
EfficientNet classifier (efficientnet_pytorch), and their zero-flag `python test.py`.

The zero-flag runs use a copy of the repository's layout in a temporary folder (stage scripts copied,
`utils/`, `network/`, `dataset/` linked), so the files land where a user puts them (`cub200-seg/out/model-8`,
`cub200-cls/top1top5.npy`) without touching the checkout.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import ROOT, prepared_cub, run_inprocess, run_script
from dataset.synthetic import make_imagenet
from network import build_mffnet
from utils.engine.checkpoint import find_snapshot, load_weights
from utils.errors import UserError
from utils.results import match_top1top5, read_top1top5

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
EfficientNet = efficientnet_pytorch.EfficientNet
RUN = ["--device", "cpu", "--num_workers", "0", "--size", "64", "--crop", "56"]


def save_like_the_authors(path, table: dict) -> None:
    """Their cls test.py: `np.save('top1top5', top1top5)` with top1top5 = {name: [top1, top5]} (Python bools)."""
    np.save(path, {name: [bool(a), bool(b)] for name, (a, b) in table.items()})


def authors_seg_checkpoint(path, backbone: str = "resnet50") -> None:
    """A seg model whose mask is the whole image (weights 0, bias 5: p = 0.993 everywhere), saved as their
    train.py does under apex O2: a plain state dict, fp16 except BatchNorm, file name without extension."""
    model = build_mffnet(1, backbone, seg=True)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.fill_(5.0)
    state = {k: v.half() if v.is_floating_point() and "bn" not in k else v for k, v in model.state_dict().items()}
    assert any(v.dtype == torch.float16 for v in state.values())
    torch.save(state, path)


def repo_copy(tmp_path, stages: list) -> str:
    """tmp/<stage>/test.py copies with utils/, network/, dataset/ linked: the layout of a clone."""
    top = tmp_path / "SPOL"
    top.mkdir()
    for shared in ("utils", "network", "dataset"):
        os.symlink(os.path.join(ROOT, shared), top / shared)
    for stage in stages:
        (top / stage).mkdir()
        shutil.copy(os.path.join(ROOT, stage, "test.py"), top / stage / "test.py")
    return top


# ------------------------------------------------------------------------------------- top1top5 files
TABLE = {"001.A/a_1.jpg": (True, True), "001.A/a_2.jpg": (False, True), "002.B/b_1.jpg": (False, False)}


def test_authors_top1top5_is_read_safely_without_a_flag_and_with_allow_pickle(tmp_path):
    save_like_the_authors(tmp_path / "top1top5", TABLE)        # np.save adds .npy, as in their repository
    path = str(tmp_path / "top1top5.npy")
    with pytest.raises(ValueError):                             # it really is a pickle: numpy refuses it
        np.load(path, allow_pickle=False)
    assert read_top1top5(path) == TABLE
    assert read_top1top5(path, allow_pickle=True) == TABLE


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())                                  # any callable a hostile file could name


def test_other_pickles_are_refused_without_allow_pickle(tmp_path):
    path = str(tmp_path / "evil.npy")
    np.save(path, np.array({"x.jpg": [True, True], "payload": _Payload()}, dtype=object))
    with pytest.raises(UserError, match="not the authors' top1top5 dict.*--allow_pickle"):
        read_top1top5(path)
    with pytest.raises(UserError, match="is not \\[top1, top5\\]"):   # unpickled on request, then checked
        read_top1top5(path, allow_pickle=True)


@pytest.mark.parametrize("damage,message", [
    ("empty", "is empty"), ("text", "is not a .npy file"), ("truncated", "damaged"), ("list", "expected a dict")])
def test_damaged_top1top5_files_give_one_clear_line(tmp_path, damage, message):
    path = tmp_path / "top1top5.npy"
    save_like_the_authors(path, TABLE)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("001.A/a_1.jpg 1 1\n")
    elif damage == "truncated":
        path.write_bytes(data[:len(data) - 40])
    else:                                                       # an np.save'd list instead of the dict
        arr = np.empty((), dtype=object)
        arr[()] = [("001.A/a_1.jpg", True, True)]
        np.save(path, arr)
    with pytest.raises(UserError, match=message):
        read_top1top5(str(path))


def test_convert_writes_the_pickle_free_format(tmp_path):
    save_like_the_authors(tmp_path / "theirs", TABLE)
    p = run_script("-m", "utils.results", "convert", tmp_path / "theirs.npy", tmp_path / "ours.npy")
    assert "3 images, top-1 33.33 %, top-5 66.67 %" in p.stdout
    arr = np.load(tmp_path / "ours.npy", allow_pickle=False)
    assert {str(n): (bool(a), bool(b)) for n, a, b in arr} == TABLE


def test_list_names_are_matched_exactly_or_by_file_name():
    table = {"ILSVRC2012_val_00000001.JPEG": (True, True), "ILSVRC2012_val_00000002.JPEG": (False, True)}
    got = match_top1top5(table, ["n01440764/ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"], "t.npy")
    assert got == {"n01440764/ILSVRC2012_val_00000001.JPEG": (True, True),
                   "ILSVRC2012_val_00000002.JPEG": (False, True)}
    with pytest.raises(UserError, match="no entry for 2 of the 3 evaluated images, e.g. x/a.JPEG, b.JPEG"):
        match_top1top5(table, ["x/a.JPEG", "b.JPEG", "ILSVRC2012_val_00000001.JPEG"], "t.npy")


def test_find_snapshot_prefers_the_released_name_then_the_last_number(tmp_path):
    assert find_snapshot(str(tmp_path), "model-8")[0] is None
    for name in ("model-1.pth", "model-2.pth", "model-10"):
        (tmp_path / name).write_bytes(b"x")
    assert find_snapshot(str(tmp_path), "model-8")[0] == str(tmp_path / "model-10")
    (tmp_path / "model-8.pth").write_bytes(b"x")
    assert find_snapshot(str(tmp_path), "model-8")[0] == str(tmp_path / "model-8.pth")
    (tmp_path / "model-8").write_bytes(b"x")
    assert find_snapshot(str(tmp_path), "model-8")[0] == str(tmp_path / "model-8")


# --------------------------------------------------------------- zero-flag evaluation, hand-counted Loc
def _known_localisation_cub(root) -> dict:
    """A CUB set whose val boxes make the whole-image mask right or wrong by construction: the box is the
    whole image (IoU 1) for even-numbered lines, a 4 x 4 box in the middle (IoU ~0) for odd ones."""
    prepared_cub(str(root), num_classes=3, train_per_class=1, val_per_class=3, seed=5, min_size=64, max_size=90)
    import cv2
    lines, correct = [], {}
    for i, line in enumerate(open(root / "val.txt").read().splitlines()):
        name, label, _ = line.split(",")
        h, w = cv2.imread(str(root / "images" / name)).shape[:2]
        box = (0, 0, w, h) if i % 2 == 0 else (w // 2 - 2, h // 2 - 2, w // 2 + 2, h // 2 + 2)
        lines.append(f"{name},{label},{' '.join(map(str, box))}")
        correct[name] = i % 2 == 0
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return correct


def _classification(names: list) -> dict:
    """Right and wrong classifications spread over right and wrong localisations."""
    pattern = [(True, True), (False, True), (False, False), (True, True), (False, False), (True, True),
               (False, True), (True, True), (False, False)]
    return {n: pattern[i % len(pattern)] for i, n in enumerate(names)}


def _hand_count(correct: dict, table: dict) -> tuple:
    n = len(correct)
    return (100.0 * sum(correct[k] and table[k][0] for k in correct) / n,
            100.0 * sum(correct[k] and table[k][1] for k in correct) / n,
            100.0 * sum(correct.values()) / n)


def test_cub_seg_test_with_no_flags_evaluates_the_authors_files(tmp_path):
    data = tmp_path / "CUB_200_2011"
    correct = _known_localisation_cub(data)
    table = _classification(list(correct))
    top1, top5, gt = _hand_count(correct, table)
    assert 0 < top1 < top5 < gt < 100                            # the figures can tell the three apart
    top = repo_copy(tmp_path, ["cub200-seg"])
    (top / "cub200-seg" / "out").mkdir()
    (top / "cub200-cls").mkdir()
    authors_seg_checkpoint(top / "cub200-seg" / "out" / "model-8")
    save_like_the_authors(top / "cub200-cls" / "top1top5", table)
    p = run_inprocess(top / "cub200-seg" / "test.py", "--datapath", data, *RUN)
    assert f"using {top / 'cub200-seg' / 'out' / 'model-8'}" in p.stdout
    assert f"using {top / 'cub200-cls' / 'top1top5.npy'}" in p.stdout and "the authors'" in p.stdout
    m = json.load(open(top / "cub200-seg" / "out" / "metrics.json"))
    assert m["count"] == len(correct) and m["empty"] == 0
    assert (m["top1_loc"], m["top5_loc"], m["gt_known_loc"]) == pytest.approx((top1, top5, gt))

    # our own cls output, where the cls stage writes it, wins over the authors' file
    (top / "cub200-cls" / "out").mkdir()
    run_script("-m", "utils.results", "convert", top / "cub200-cls" / "top1top5.npy",
               top / "cub200-cls" / "out" / "top1top5.npy")
    p = run_inprocess(top / "cub200-seg" / "test.py", "--datapath", data, *RUN, "--savepath", tmp_path / "again")
    assert f"using {top / 'cub200-cls' / 'out' / 'top1top5.npy'}" in p.stdout
    assert json.load(open(tmp_path / "again" / "metrics.json"))["top1_loc"] == pytest.approx(top1)


def test_zero_flag_test_says_what_is_missing(tmp_path):
    data = tmp_path / "CUB_200_2011"
    _known_localisation_cub(data)
    top = repo_copy(tmp_path, ["cub200-seg"])
    p = run_inprocess(top / "cub200-seg" / "test.py", "--datapath", data, *RUN, check=False)
    assert p.returncode == 2 and "no --snapshot given and no model-8(.pth)" in p.stderr and "Traceback" not in p.stderr
    (top / "cub200-seg" / "out").mkdir()
    authors_seg_checkpoint(top / "cub200-seg" / "out" / "model-2.pth")
    p = run_inprocess(top / "cub200-seg" / "test.py", "--datapath", data, *RUN)
    assert "model-2.pth (the last model-<N>" in p.stdout and "reporting GT-known Loc only" in p.stdout
    m = json.load(open(top / "cub200-seg" / "out" / "metrics.json"))
    assert "top1_loc" not in m and m["gt_known_loc"] == pytest.approx(100 * 5 / 9)


def _known_localisation_imagenet(root) -> dict:
    """Synthetic ILSVRC2012 val whose XML boxes of the image's class are the whole image (even lines) or a
    4 x 4 box (odd lines); a whole-image box of another class is added to each, and must be ignored."""
    synsets = ["n01440764", "n01443537", "n01484850"]
    make_imagenet(str(root), synsets=synsets, train_per_class=1, val_per_class=3, seed=4, min_size=64, max_size=90)
    run_script("dataset/prepare.py", "imagenet", "--root", root)
    import cv2
    correct = {}
    for i, line in enumerate(open(root / "val.txt").read().splitlines()):
        name, label = line.split()
        h, w = cv2.imread(str(root / "val" / name)).shape[:2]
        own = (0, 0, w - 1, h - 1) if i % 2 == 0 else (w // 2 - 2, h // 2 - 2, w // 2 + 2, h // 2 + 2)
        other = synsets[(int(label) + 1) % 3]
        objects = "".join(
            f"<object><name>{s}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
            f"<ymax>{b[3]}</ymax></bndbox></object>"
            for s, b in ((synsets[int(label)], own), (other, (0, 0, w - 1, h - 1))))
        xml = (f"<annotation><filename>{os.path.splitext(name)[0]}</filename><size><width>{w}</width>"
               f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>")
        (root / "box" / (os.path.splitext(name)[0] + ".xml")).write_text(xml)
        correct[name] = i % 2 == 0
    return correct


def test_imagenet_seg_test_with_no_flags_and_synset_folder_names(tmp_path):
    data = tmp_path / "ILSVRC2012"
    correct = _known_localisation_imagenet(data)
    table = _classification(sorted(correct))                       # the authors' names: bare file names
    top1, top5, gt = _hand_count(correct, table)
    top = repo_copy(tmp_path, ["imagenet-seg"])
    (top / "imagenet-seg" / "out").mkdir()
    (top / "imagenet-cls").mkdir()
    authors_seg_checkpoint(top / "imagenet-seg" / "out" / "model-6000", backbone="resnet18")
    save_like_the_authors(top / "imagenet-cls" / "top1top5", table)
    args = ["--datapath", data, "--backbone", "resnet18", "--threshold", "0.5", *RUN]
    run_inprocess(top / "imagenet-seg" / "test.py", *args)
    m = json.load(open(top / "imagenet-seg" / "out" / "metrics.json"))
    assert (m["top1_loc"], m["top5_loc"], m["gt_known_loc"]) == pytest.approx((top1, top5, gt))

    # val/<synset>/<file> with a list naming synset/file: matched to the authors' bare names
    synsets = [line.split()[0] for line in open(data / "synsets.txt")]
    lines = []
    for line in open(data / "val.txt").read().splitlines():
        name, label = line.split()
        (data / "val" / synsets[int(label)]).mkdir(exist_ok=True)
        os.replace(data / "val" / name, data / "val" / synsets[int(label)] / name)
        lines.append(f"{synsets[int(label)]}/{name} {label}")
    (data / "val_nested.txt").write_text("\n".join(lines) + "\n")
    run_inprocess(top / "imagenet-seg" / "test.py", *args, "--list", "val_nested.txt",
                  "--savepath", tmp_path / "nested")
    m = json.load(open(tmp_path / "nested" / "metrics.json"))
    assert (m["top1_loc"], m["top5_loc"], m["gt_known_loc"]) == pytest.approx((top1, top5, gt))


# ------------------------------------------------------------------------------ EfficientNet classifier
def test_efficientnet_state_dicts_load_strictly_fp32_and_fp16(tmp_path):
    from network.classifier import build_classifier
    torch.manual_seed(0)
    theirs = EfficientNet.from_name("efficientnet-b0", num_classes=5)
    torch.save(theirs.state_dict(), tmp_path / "model-20")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in theirs.state_dict().items()},
               tmp_path / "model-20-fp16")
    for name, tol in (("model-20", 0), ("model-20-fp16", 1e-3)):
        ours = build_classifier("efficientnet-b0", 5)
        load_weights(ours, str(tmp_path / name))
        for k, v in theirs.state_dict().items():
            assert torch.allclose(ours.state_dict()[k].float(), v.float(), atol=tol, rtol=tol), k
    with pytest.raises(UserError, match="check --clsnum"):
        load_weights(build_classifier("efficientnet-b0", 7), str(tmp_path / "model-20"))
    with pytest.raises(UserError, match="another architecture"):
        load_weights(build_classifier("efficientnet-b1", 5), str(tmp_path / "model-20"))


def test_efficientnet_imagenet_file_fills_all_but_the_new_fc_and_the_authors_groups(tmp_path):
    from network.classifier import build_classifier, load_imagenet_weights, param_groups
    torch.manual_seed(1)
    imagenet = EfficientNet.from_name("efficientnet-b0")             # efficientnet_pytorch's file: 1000 classes
    torch.save(imagenet.state_dict(), tmp_path / "efficientnet-b0-355c32eb.pth")
    model = build_classifier("efficientnet-b0", 4)
    load_imagenet_weights(model, "efficientnet-b0", str(tmp_path / "efficientnet-b0-355c32eb.pth"))
    for k, v in imagenet.state_dict().items():
        if not k.startswith("_fc."):
            assert torch.equal(model.state_dict()[k], v), k
    assert model._fc.weight.shape == (4, 1280)
    (head, lr), (base, base_lr) = param_groups(model, "efficientnet-b0", 0.05, 0.005)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in head) == ["_bn1.weight", "_fc.bias"] and (lr, base_lr) == (0.05, 0.005)
    assert "_fc.weight" in {names[id(p)] for p in base} and len(head) + len(base) == len(list(model.parameters()))


def test_missing_efficientnet_weights_offline_name_the_file(tmp_path, monkeypatch):
    import network.classifier as classifier
    monkeypatch.setattr(classifier, "RESOURCE", str(tmp_path))

    def offline(url, dst, progress=True):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    path = classifier.imagenet_weights_file("efficientnet-b7")
    assert path == str(tmp_path / "efficientnet-b7-dcc49843.pth")
    with pytest.raises(UserError, match="efficientnet-b7-dcc49843.pth, and downloading https://.*failed"):
        classifier.resolve_imagenet_weights("efficientnet-b7", path)

    def online(url, dst, progress=True):
        torch.save(EfficientNet.from_name("efficientnet-b0").state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", online)
    path = classifier.imagenet_weights_file("efficientnet-b0")
    assert classifier.resolve_imagenet_weights("efficientnet-b0", path) == path and os.path.isfile(path)
    with pytest.raises(UserError, match="pretrained weights not found: /elsewhere/x.pth"):
        classifier.resolve_imagenet_weights("efficientnet-b0", "/elsewhere/x.pth")   # a path given: no download


def test_efficientnet_b0_through_cub_cls_train_and_zero_flag_test(tmp_path):
    data = tmp_path / "CUB_200_2011"
    prepared_cub(str(data), num_classes=3, train_per_class=3, val_per_class=2, seed=6, min_size=64, max_size=90)
    torch.manual_seed(2)
    torch.save(EfficientNet.from_name("efficientnet-b0").state_dict(), tmp_path / "imagenet.pth")
    top = repo_copy(tmp_path, ["cub200-cls"])
    shutil.copy(os.path.join(ROOT, "cub200-cls", "train.py"), top / "cub200-cls" / "train.py")
    common = ["--datapath", data, "--clsnum", 3, "--arch", "efficientnet-b0", "--device", "cpu", "--num_workers", 0]
    run_inprocess(top / "cub200-cls" / "train.py", *common, "--pretrained", tmp_path / "imagenet.pth", "--epoch", 1,
                  "--batch_size", 3, "--size", 72, "--crop", 64)
    out = top / "cub200-cls" / "out"
    state = torch.load(out / "model-1.pth", weights_only=True)
    assert state["_fc.weight"].shape == (3, 1280) and "_conv_stem.weight" in state
    p = run_inprocess(top / "cub200-cls" / "test.py", *common, "--size", 72)
    assert f"using {out / 'model-1.pth'}" in p.stdout and "images: 6" in p.stdout
    arr = np.load(out / "top1top5.npy", allow_pickle=False)
    assert len(arr) == 6 and arr["top5"].all()                      # 3 classes: top-5 always right


def test_cls_stages_default_to_the_authors_recipe():
    p = run_inprocess("cub200-cls/train.py", "--help")
    text = " ".join(p.stdout.split())
    for default in ("--arch ARCH classifier", "default: efficientnet-b7",
                    "--lr LR learning rate of the head (default: 0.05)", "(default: 0.005)",
                    "--epoch EPOCH epochs (default: 20)", "(default: 685)", "(default: 600)"):
        assert default in text, default
    p = run_inprocess("imagenet-cls/test.py", "--help")
    text = " ".join(p.stdout.split())
    assert "default: efficientnet-b7" in text and "(default: 685)" in text
