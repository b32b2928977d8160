"""`test.py --protocol wsol` (wsolevaluation's protocol) against the standalone evaluator, `--vis` pictures
of the seg and cam stages, the TensorBoard pictures of training, and the default SPOL protocol left as it
was. One tiny synthetic CUB set and freshly initialised resnet18 models (the figures need not be good, only
computed right), so the whole file runs in well under a minute on the CPU."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from conftest import prepared_cub, run_script
from published_metadata import cub_test_rows, write_published
from network import build_mffnet

CPU = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0"]
SMALL = [*CPU, "--size", "64", "--crop", "56"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 classes x (2 train + 2 test) images with CUB's segmentations/, lists, wsol metadata, two models."""
    tmp = tmp_path_factory.mktemp("protocols")
    root = str(tmp / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=2, val_per_class=2, seed=5, min_size=64, max_size=96)
    torch.manual_seed(0)
    torch.save(build_mffnet(1, "resnet18", seg=True).state_dict(), tmp / "seg.pth")
    torch.save(build_mffnet(3, "resnet18").state_dict(), tmp / "cam.pth")
    return {"root": root, "seg": tmp / "seg.pth", "cam": tmp / "cam.pth", "tmp": tmp}


@pytest.fixture(scope="module")
def wsol(data):
    """One wsol run, score maps scored by a pool of 2 processes, with the first 3 images drawn."""
    out = data["tmp"] / "wsol"
    p = run_script("cub200-seg/test.py", "--datapath", data["root"], "--snapshot", data["seg"], "--savepath", out,
                   "--protocol", "wsol", "--post_workers", 2, "--vis", 3, *CPU)
    return {"out": out, "stdout": p.stdout, "metrics": json.load(open(out / "metrics.json"))}


def _val_names(root):
    return [line.split(",")[0] for line in open(os.path.join(root, "val.txt"))]


def test_wsol_writes_one_224_scoremap_per_image_in_0_1(data, wsol):
    names = _val_names(data["root"])
    files = sorted(str(p.relative_to(wsol["out"] / "scoremaps")) for p in (wsol["out"] / "scoremaps").rglob("*.npy"))
    assert files == sorted(n + ".npy" for n in names)  # wsolevaluation's <image_id>.npy
    for name in names:
        m = np.load(wsol["out"] / "scoremaps" / (name + ".npy"), allow_pickle=False)
        assert m.shape == (224, 224) and m.dtype == np.float32
        assert m.min() == 0 and m.max() == 1  # min-max normalised (a random model's map is not constant)


def test_wsol_metrics_json_and_table(wsol):
    m = wsol["metrics"]
    assert m["protocol"] == "wsol" and m["count"] == 6 and m["bad_images"] == 0
    assert 0 <= m["maxboxacc"] <= 100 and 0 <= m["pxap"] <= 100
    assert set(m["maxboxacc_v2"]) == {"30", "50", "70", "mean"}
    assert all(0 <= v <= 100 for v in m["maxboxacc_v2"].values())
    assert m["maxboxacc_v2"]["mean"] == pytest.approx(np.mean([m["maxboxacc_v2"][d] for d in ("30", "50", "70")]))
    for row in ("MaxBoxAcc ", "MaxBoxAccV2", "PxAP"):
        assert row in wsol["stdout"]


def test_wsol_figures_equal_the_standalone_evaluator_on_the_written_maps(data, wsol, tmp_path):
    common = ["-m", "utils.wsol_eval", "--scoremap_root", wsol["out"] / "scoremaps", "--metadata_root",
              os.path.join(data["root"], "wsol_metadata"), "--dataset_name", "CUB", "--split", "test",
              "--workers", 1]
    run_script(*common, "--multi_contour_eval", "true", "--mask_root", os.path.join(data["root"], "segmentations"),
               "--json", tmp_path / "v2.json")
    run_script(*common, "--multi_contour_eval", "false", "--multi_iou_eval", "false", "--json", tmp_path / "v1.json")
    v2, v1, m = json.load(open(tmp_path / "v2.json")), json.load(open(tmp_path / "v1.json")), wsol["metrics"]
    assert v2["count"] == m["count"]
    assert v2["mean"] == m["maxboxacc_v2"]["mean"]
    assert v2["maxboxacc"] == {d: m["maxboxacc_v2"][d] for d in ("30", "50", "70")}
    assert v2["pxap"] == m["pxap"]
    assert v1["localization"] == m["maxboxacc"]


def test_wsol_figures_with_wsolevaluations_own_metadata_folder(data, wsol, tmp_path):
    """Their metadata/CUB/test/ as published (ids, clipped integer boxes, no final newline) scores the project's
    score maps as the project's own metadata does, and prepare.py's files hold the same lines."""
    theirs = write_published(tmp_path / "metadata" / "CUB" / "test", cub_test_rows(data["root"]))
    ours = os.path.join(data["root"], "wsol_metadata", "CUB", "test")
    for f in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        assert open(os.path.join(ours, f)).read().splitlines() == (theirs / f).read_text().splitlines(), f
    run_script("-m", "utils.wsol_eval", "--scoremap_root", wsol["out"] / "scoremaps", "--metadata_root",
               tmp_path / "metadata", "--dataset_name", "CUB", "--split", "test", "--multi_contour_eval", "true",
               "--json", tmp_path / "v2.json")
    v2, m = json.load(open(tmp_path / "v2.json")), wsol["metrics"]
    assert v2["maxboxacc"] == {d: m["maxboxacc_v2"][d] for d in ("30", "50", "70")} and v2["count"] == m["count"]
    assert "utils.wsol_eval" in wsol["stdout"] and "--dataset_name CUB --split test" in wsol["stdout"]


def test_wsol_without_segmentations_reports_boxes_and_says_why_no_pxap(data, tmp_path):
    root = tmp_path / "CUB_200_2011"
    shutil.copytree(data["root"], root, ignore=shutil.ignore_patterns("segmentations"))
    p = run_script("cub200-seg/test.py", "--datapath", root, "--snapshot", data["seg"], "--savepath", tmp_path / "o",
                   "--protocol", "wsol", "--no-save_scoremaps", "--post_workers", 0, *CPU)
    m = json.load(open(tmp_path / "o" / "metrics.json"))
    assert m["pxap"] is None and 0 <= m["maxboxacc_v2"]["mean"] <= 100
    assert "PxAP: not computed" in p.stdout and "segmentations" in p.stdout
    assert not (tmp_path / "o" / "scoremaps").exists()


def _pictures(folder, n):
    files = sorted(os.listdir(folder))
    assert len(files) == n + 1 and files[-1] == "grid.png", files
    images = [cv2.imread(os.path.join(folder, f)) for f in files]
    assert all(im is not None and im.ndim == 3 for im in images)
    return images


def test_wsol_vis_writes_pictures(wsol):
    *rows, sheet = _pictures(wsol["out"] / "vis", 3)
    assert sheet.shape[0] > 3 * 224 and sheet.shape[1] == rows[0].shape[1]  # 3 rows of the same panels


def test_spol_default_unchanged_by_vis_and_pseudo_mask_panel(data, tmp_path):
    """`--protocol spol --vis` (with pseudo masks) gives the default run's metrics.json and boxes.csv."""
    masks = tmp_path / "cam" / "masks"
    run_script("cub200-cam/test.py", "--datapath", data["root"], "--clsnum", 3, "--snapshot", data["cam"],
               "--maskpath", masks, "--post_workers", 0, "--vis", 2, *SMALL)
    _pictures(tmp_path / "cam" / "vis", 2)  # <maskpath>/../vis
    base = ["cub200-seg/test.py", "--datapath", data["root"], "--snapshot", data["seg"], *SMALL]
    default = run_script(*base, "--savepath", tmp_path / "default")
    run_script(*base, "--savepath", tmp_path / "spol", "--protocol", "spol", "--vis", 3,
               "--list", "val.txt", "--maskpath", masks)  # val images have no pseudo mask: an empty panel
    for f in ("metrics.json", "boxes.csv"):
        assert open(tmp_path / "default" / f).read() == open(tmp_path / "spol" / f).read()
    assert "protocol" not in json.load(open(tmp_path / "default" / "metrics.json"))
    assert "GT-known Loc" in default.stdout and not (tmp_path / "default" / "vis").exists()
    *rows, _ = _pictures(tmp_path / "spol" / "vis", 3)
    assert rows[0].shape[1] > 4 * 224  # input, score, mask & boxes, pseudo mask

    # a val image has no pseudo mask (a blank panel); a train image's panel shows its mask
    run_script(*base, "--savepath", tmp_path / "train", "--list", "train.txt", "--vis", 1, "--maskpath", masks)
    shown, _ = _pictures(tmp_path / "train" / "vis", 1)
    last = (slice(24, 248), slice(4 + 3 * 228, 4 + 3 * 228 + 224))  # below the titles, the 4th panel
    assert np.mean(rows[0][last] == 235) > 0.9 and np.mean(shown[last] == 235) < 0.5


def test_torchrun_wsol_equals_one_process(data, wsol, tmp_path):
    run_script("-m", "torch.distributed.run", "--nproc_per_node", 2, "cub200-seg/test.py", "--datapath",
               data["root"], "--snapshot", data["seg"], "--savepath", tmp_path, "--protocol", "wsol",
               "--post_workers", 0, "--no-save_scoremaps", "--vis", 3, *CPU)
    m = json.load(open(tmp_path / "metrics.json"))
    for key in ("count", "maxboxacc", "maxboxacc_v2", "maxboxacc_v2_best_threshold", "pxap"):
        assert m[key] == wsol["metrics"][key], key
    # each rank drew its share of the first 3 images; rank 0 wrote them all, as one process does
    assert sorted(os.listdir(tmp_path / "vis")) == sorted(os.listdir(wsol["out"] / "vis"))


# ------------------------------------------------------------------------------------ in-process
def test_evaluators_merge_to_the_single_evaluator():
    from utils.wsol_eval import BoxEvaluator, PxAPEvaluator
    rng = np.random.default_rng(0)
    maps = [cv2.GaussianBlur(rng.random((224, 224)), (0, 0), 12) for _ in range(4)]
    maps = [(m - m.min()) / (m.max() - m.min()) for m in maps]
    gts = [np.array([[20 * i, 30, 120 + 20 * i, 200]]) for i in range(4)]
    masks = [(m > 0.5).astype(np.uint8) for m in maps[::-1]]
    whole, parts = BoxEvaluator(multi_contour=True), [BoxEvaluator(multi_contour=True) for _ in range(2)]
    pxap, pxap_parts = PxAPEvaluator(), [PxAPEvaluator(), PxAPEvaluator()]
    for i, (m, g, k) in enumerate(zip(maps, gts, masks)):
        whole.accumulate(m, g)
        parts[i % 2].accumulate(m, g)
        pxap.accumulate(m, k)
        pxap_parts[i % 2].accumulate(m, k)
    parts[0].merge(parts[1])
    pxap_parts[0].merge(pxap_parts[1])
    assert parts[0].compute() == whole.compute() and parts[0].count == 4
    assert pxap_parts[0].compute() == pxap.compute()
    with pytest.raises(ValueError):
        whole.merge(BoxEvaluator(multi_contour=False))


def test_scoremaps_are_min_max_normalised_and_constant_maps_zero():
    from utils.evaluation.wsol_protocol import scoremaps
    logits = torch.zeros(2, 1, 7, 7)
    logits[0, 0, 3, 3] = 5.0
    maps = scoremaps(logits).numpy()
    assert maps.shape == (2, 224, 224) and maps.dtype == np.float32
    assert maps[0].min() == 0 and maps[0].max() == 1 and maps[0][112, 112] == 1  # the peak, at the centre
    assert not maps[1].any()


@pytest.mark.parametrize("stage", ["cam", "seg"])
def test_tensorboard_pictures_at_epoch_end_leave_the_model_as_it_was(data, tmp_path, stage):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from utils.stages import stage_cam, stage_seg
    from utils.data.datasets import CUB
    from utils.engine.log import RunLog
    from utils.stages.vis import tensorboard_hook
    samples = CUB.read_list(data["root"], "train.txt", with_boxes=False)
    model = build_mffnet(1, "resnet18", seg=True) if stage == "seg" else build_mffnet(3, "resnet18", dual=True)
    heat = stage_seg._predicted_mask if stage == "seg" else stage_cam._gt_class_cam
    hook = tensorboard_hook(samples, 64, 56, stage, heat)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = RunLog(str(tmp_path), {}, enabled=True)
    model.train()
    hook(model, 1, log)
    log.close()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert stage in events.Tags()["images"]
    shown = events.Images(stage)
    # one grid per step: the 6 train images (up to 8 are shown) side by side, each a 224 x 224 panel
    assert len(shown) == 1 and shown[0].step == 1 and (shown[0].width, shown[0].height) == (6 * 224, 224)
