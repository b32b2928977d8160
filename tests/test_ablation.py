"""Issue 11: the MFF-Net ablation switches (fusion, levels, MCA), the pseudo-mask prior switch, snapshots that
rebuild their own network, CAM-only localisation, and the ablation runner (resume, table, figure)."""
import contextlib
import importlib.util
import io
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset.synthetic import make_cub
from network import MFFNet, build_mffnet, load_mffnet
from network.mffnet import SPOL, recorded_architecture
from conftest import ROOT
from utils.ablation import DEFAULT_GRID, Setting, parse_grid, plot
from utils.evaluation.fixed_boxes import cub_baselines
from utils.ablation import main as ablation
from utils.cam_loc import ious_at, normalised_cams
from utils.engine.checkpoint import load_weights, save_atomic
from utils.engine.loop import sgd, train_step
from utils.errors import UserError
from utils.method.losses import dual_head_loss, seg_loss
from utils.engine.masks import make_pseudo_mask


# ------------------------------------------------------------------------------------------ network
def spec_forward(m: MFFNet, x: torch.Tensor) -> torch.Tensor:
    """docs/method.md §2 written out for the eval-mode CAM model: the default network must compute exactly this."""
    _, out3, out4, out5 = m.bkbone.features(x)
    gap = F.adaptive_avg_pool2d
    a5 = F.relu(m.bn51(m.fc51(gap(out5, 1))))
    a4 = F.relu(m.bn41(m.fc41(gap(out4, 1))))
    a3 = F.relu(m.bn31(m.fc31(gap(out3, 1))))
    v = a5 * a4 * a3
    out5, out4, out3 = (torch.sigmoid(m.fc52(v)) * out5, torch.sigmoid(m.fc42(v)) * out4,
                        torch.sigmoid(m.fc32(v)) * out3)
    size = out3.shape[2:]
    f5 = F.interpolate(F.relu(m.bn5(m.linear5(out5))), size=size, mode="bilinear", align_corners=True)
    f4 = F.interpolate(F.relu(m.bn4(m.linear4(out4))), size=size, mode="bilinear", align_corners=True)
    f3 = F.relu(m.bn3(m.linear3(out3)))
    return F.relu(m.linear(f5 * f4 * f3))


def test_default_network_is_spols_exactly():
    torch.manual_seed(0)
    m = build_mffnet(5, "resnet18").eval()
    assert m.architecture == SPOL
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(m(x), spec_forward(m, x))
    explicit = build_mffnet(200, fusion="mul", levels=3, mca=True).state_dict()
    assert list(build_mffnet(200).state_dict()) == list(explicit) and len(explicit) == 368
    assert explicit._metadata[""]["mffnet"] == SPOL


SGD = dict(momentum=0.9, weight_decay=1e-4, nesterov=True)  # the training defaults of every stage
# every fusion at 2, 3 and 4 stages, one stage alone, and no MCA with each fusion
SWITCHES = [("mul", 1, True), ("add", 2, True), ("concat", 2, False), ("add", 3, True), ("concat", 3, True),
            ("mul", 3, False), ("mul", 4, True), ("add", 4, False), ("concat", 4, True)]


@pytest.mark.parametrize("fusion,levels,mca", SWITCHES)
def test_each_switch_builds_trains_a_step_and_evaluates(fusion, levels, mca):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    cam = build_mffnet(3, "resnet18", dual=True, fusion=fusion, levels=levels, mca=mca)
    names = {k.split(".")[0] for k in cam.state_dict() if not k.startswith("bkbone.")}
    stages = (5, 4, 3, 2)[:levels]
    want = {f"linear{i}" for i in stages} | {f"bn{i}" for i in stages} | {"linear"}
    if mca:
        want |= {f"{p}{i}{q}" for i in stages for p, q in (("fc", 1), ("bn", 1), ("fc", 2))}
    assert names == want
    assert cam.linear.weight.shape[1] == (128 * levels if fusion == "concat" else 128)
    before = cam.linear.weight.detach().clone()
    batch = {"image": x, "label": torch.tensor([0, 2])}
    loss = train_step(cam, dual_head_loss, batch, sgd([(cam.parameters(), 0.01)], **SGD), None,
                      torch.device("cpu"), None)
    assert torch.isfinite(loss) and not torch.equal(before, cam.linear.weight)
    cam.eval()
    with torch.no_grad():
        maps = cam(x)
    stride = (32, 16, 8, 4)[levels - 1]  # the shallowest fused stage's resolution
    assert maps.shape == (2, 3, 64 // stride, 64 // stride) and maps.min() >= 0

    seg = build_mffnet(1, "resnet18", seg=True, fusion=fusion, levels=levels, mca=mca)
    target = torch.zeros(2, 2, 64, 64)
    target[:, 0, 16:48, 16:48] = 1
    target[:, 1] = 1
    loss = train_step(seg, seg_loss, {"image": x, "mask": target}, sgd([(seg.parameters(), 0.01)], **SGD),
                      None, torch.device("cpu"), None)
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert seg.eval()(x).shape == (2, 1, 64 // stride, 64 // stride)


def test_bad_switches_are_refused():
    with pytest.raises(ValueError, match="fusion"):
        MFFNet(3, "resnet18", fusion="max")
    with pytest.raises(ValueError, match="levels"):
        MFFNet(3, "resnet18", levels=5)


# ------------------------------------------------------------------------------ snapshot metadata
@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """An add/2-level/no-MCA snapshot, a concat one, and the same weights saved the authors' way (a plain
    dict of tensors: no record of the switches)."""
    d = tmp_path_factory.mktemp("snap")
    torch.manual_seed(1)
    add = build_mffnet(3, "resnet18", fusion="add", levels=2, mca=False).eval()
    concat = build_mffnet(3, "resnet18", fusion="concat", levels=4).eval()
    save_atomic(add.state_dict(), str(d / "add.pth"))
    save_atomic(concat.state_dict(), str(d / "concat.pth"))
    torch.save(dict(add.state_dict()), d / "add_plain.pth")
    torch.save(dict(concat.state_dict()), d / "concat_plain.pth")
    return d, add, concat


def test_snapshot_records_its_switches_and_rebuilds_its_network(snapshots):
    d, add, concat = snapshots
    state = torch.load(d / "add.pth", weights_only=True)  # what any loader of plain state dicts sees
    assert all(torch.is_tensor(v) for v in state.values())
    assert recorded_architecture(state) == {"fusion": "add", "levels": 2, "mca": False}
    x = torch.randn(1, 3, 64, 64)
    for path, ref in (("add.pth", add), ("concat.pth", concat)):
        m = load_mffnet(str(d / path), None, "resnet18").eval()
        assert m.architecture == ref.architecture
        with torch.no_grad():
            assert torch.equal(m(x), ref(x))


def test_a_flag_that_contradicts_the_snapshot_is_a_clear_error(snapshots):
    d, add, _ = snapshots
    with pytest.raises(UserError, match=r"records an MFF-Net with --fusion add.*--fusion mul was given"):
        load_mffnet(str(d / "add.pth"), None, "resnet18", fusion="mul")
    with pytest.raises(UserError, match="--no-mca"):
        load_mffnet(str(d / "add.pth"), None, "resnet18", mca=True)
    with pytest.raises(UserError, match="--fusion add"):  # a model built by hand is checked on load too
        load_weights(build_mffnet(3, "resnet18", fusion="mul", levels=2, mca=False), str(d / "add.pth"))


def test_snapshots_without_a_record_load_as_their_keys_show(snapshots):
    d, add, concat = snapshots
    x = torch.randn(1, 3, 64, 64)
    m = load_mffnet(str(d / "concat_plain.pth"), None, "resnet18").eval()  # concat, 4 levels: visible in the keys
    assert m.architecture == concat.architecture
    as_spol = load_mffnet(str(d / "add_plain.pth"), None, "resnet18")  # mul and add look alike: SPOL's mul
    assert as_spol.architecture == {"fusion": "mul", "levels": 2, "mca": False}
    given = load_mffnet(str(d / "add_plain.pth"), None, "resnet18", fusion="add").eval()  # the flag decides
    with torch.no_grad():
        assert torch.equal(given(x), add(x))
    with pytest.raises(UserError, match="has the keys of an MFF-Net with --levels 2"):
        load_mffnet(str(d / "add_plain.pth"), None, "resnet18", levels=3)


# ------------------------------------------------------------------------------ pseudo masks / CAMs
def test_no_prior_leaves_channel_1_empty_and_the_cam_unchanged():
    cam = np.zeros((16, 16), np.float32)
    cam[4:12, 5:11] = np.linspace(0.2, 1.0, 6)[None, :]
    with_prior, without = make_pseudo_mask(cam, 60, 40), make_pseudo_mask(cam, 60, 40, prior="none")
    assert with_prior[..., 1].max() > 0 and without[..., 1].max() == 0
    assert np.array_equal(with_prior[..., 0], without[..., 0]) and without[..., 2].max() == 0


def test_cam_localisation_boxes_the_normalised_gt_class_map():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 1, 2:5, 3:7] = 4.0   # the GT class (1): a 3 x 4 blob
    maps[0, 0, 0:2, 0:2] = 9.0   # another class, brighter: must be ignored
    cam = normalised_cams(maps, torch.tensor([1]), 57)[0].numpy()   # 8 -> 57: grid point k lands on pixel 8k
    assert cam.shape == (57, 57) and abs(cam.max() - 4.0 / (4.0 + 1e-6)) < 1e-6
    # blob rows 2..4 -> pixels 16..32, columns 3..6 -> 24..48; the ramps to the zero neighbours 8 pixels away stay
    # above 0.5 for 3 pixels (at 4 the value is 0.5 x 0.9999998): rows 13..35, columns 21..51
    assert ious_at(cam, np.array([[21, 13, 52, 36]]), [0.5]) == [pytest.approx(1.0)]
    assert ious_at(cam, np.array([[21, 13, 52, 36]]), [0.05])[0] < 0.9   # a lower cut boxes a wider region
    assert ious_at(cam, np.array([[0, 0, 10, 10]]), [0.5]) == [0.0]


# ------------------------------------------------------------------------------------------ runner
def test_grid_names():
    grid = parse_grid("default")
    assert [s.name for s in grid] == list(DEFAULT_GRID) and len(grid) == 12
    assert Setting.parse("spol-no-mca") == Setting(3, "mul", mca=False)
    assert Setting.parse("fuse3-mul-no-prior").name == "spol-no-prior"
    assert [s.name for s in parse_grid("fuse1-add, fuse1-concat fuse1")] == ["fuse1"]  # one stage: nothing fused
    assert Setting.parse("fuse2-add-no-mca-no-prior").network == "fuse2-add-no-mca"
    with pytest.raises(UserError, match="name the fusion"):
        Setting.parse("fuse2")
    with pytest.raises(UserError, match="unknown setting"):
        Setting.parse("fuse5-mul")


def test_plot_draws_every_setting_of_the_default_grid(tmp_path):
    rng = np.random.default_rng(0)
    rows = [dict(name=s.name, cam_gt_known=float(rng.uniform(40, 90)), final_gt_known=float(rng.uniform(40, 90)))
            for s in parse_grid("default")]
    plot(str(tmp_path / "figure1b.png"), rows, "test", {"whole_crop": 50.0, "centre_box": 20.0})
    image = cv2.imread(str(tmp_path / "figure1b.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 800


def test_boxes_that_ignore_the_image(tmp_path):
    # three 100 x 100 images evaluated at size 100, crop 100, their objects centred: the whole image, 70 x 70 and
    # 90 x 90. The central half finds only the 70 box (IoU 0.51), the whole crop the first and the last, and a
    # centred box of 0.75 of the side all three (IoU 0.57, 0.87, 0.69); at 0.70 the first falls under 0.5.
    os.makedirs(tmp_path / "images" / "001.A")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        cv2.imwrite(str(tmp_path / "images" / "001.A" / name), np.zeros((100, 100, 3), np.uint8))
    (tmp_path / "val.txt").write_text("001.A/a.jpg,0,0 0 99 99\n001.A/b.jpg,0,15 15 85 85\n"
                                      "001.A/c.jpg,0,5 5 95 95\n")
    fixed = cub_baselines(str(tmp_path), 100, 100)
    assert fixed == pytest.approx({"whole_crop": 200 / 3, "centre_box": 100 / 3, "best_centred_box": 100.0,
                                   "best_fraction": 0.75})


TINY = ["--backbone", "resnet18", "--pretrained", "none", "--size", "64", "--crop", "56", "--cam_epochs", "1",
        "--seg_epochs", "1", "--cam_batch_size", "6", "--seg_batch_size", "6", "--device", "cpu",
        "--num_workers", "0"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One setting with every switch off SPOL's (add, 2 stages, no MCA, no prior) through the whole runner."""
    d = tmp_path_factory.mktemp("ablation")
    data = str(d / "CUB_200_2011")
    make_cub(data, num_classes=3, train_per_class=4, val_per_class=2, seed=3, min_size=64, max_size=96)
    out = d / "out"
    first = runner("--datapath", data, "--out", out, "--grid", "fuse2-add-no-mca-no-prior", *TINY)
    return {"data": data, "out": out, "first": first}


def runner(*argv) -> str:
    """python -m utils.ablation in this process (the steps still run as subprocesses); returns its output."""
    with contextlib.redirect_stdout(io.StringIO()) as f:
        ablation([str(a) for a in argv])
    return f.getvalue()


def test_runner_runs_the_stage_scripts_and_writes_table_json_and_figure(grid):
    out, name = grid["out"], "fuse2-add-no-mca-no-prior"
    record = json.load(open(out / "ablation.json"))
    rows = record["rows"]
    assert set(record["fixed_boxes"]) == {"whole_crop", "centre_box", "best_centred_box", "best_fraction"}
    assert "(the best centred box," in open(out / "ablation.md").read()
    assert [r["name"] for r in rows] == [name] and rows[0]["count"] == 6
    for key in ("cam_gt_known", "final_gt_known", "maxboxacc_v2"):
        assert 0 <= rows[0][key] <= 100
    assert f"| {name} | 2 | add | no | none |" in open(out / "ablation.md").read()
    assert cv2.imread(str(out / "figure1b.png")) is not None
    cam_args = json.load(open(out / "cam" / "fuse2-add-no-mca" / "args.json"))
    assert (cam_args["fusion"], cam_args["levels"], cam_args["mca"]) == ("add", 2, False)
    seg_snapshot = torch.load(out / name / "seg" / "model-1.pth", weights_only=True)
    assert recorded_architecture(seg_snapshot) == {"fusion": "add", "levels": 2, "mca": False}
    masks = [os.path.join(r, f) for r, _, fs in os.walk(out / name / "masks") for f in fs if f.endswith(".png")]
    assert len(masks) == 12 and all(cv2.imread(m)[..., 1].max() == 0 for m in masks)  # --prior none


def test_cam_test_refuses_a_flag_that_contradicts_the_snapshot(grid):
    spec = importlib.util.spec_from_file_location("cam_test", os.path.join(ROOT, "cub200-cam", "test.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--datapath", grid["data"], "--snapshot", str(grid["out"] / "cam" / "fuse2-add-no-mca" / "model-1.pth"),
            "--maskpath", str(grid["out"] / "unused"), "--backbone", "resnet18", "--device", "cpu",
            "--num_workers", "0", "--post_workers", "0"]
    with pytest.raises(UserError, match=r"records an MFF-Net with --fusion add, but --fusion mul was given"):
        script.main(argv + ["--fusion", "mul"])
    assert not list((grid["out"] / "unused").rglob("*.png"))


def test_runner_resumes_a_half_finished_grid_without_redoing_finished_work(grid):
    out, name, data = grid["out"], "fuse2-add-no-mca-no-prior", grid["data"]
    kept = [out / "cam" / "fuse2-add-no-mca" / "model-1.pth", out / name / "seg" / "model-1.pth",
            out / name / "eval" / "metrics.json"]
    mtimes = [os.path.getmtime(p) for p in kept]
    os.remove(out / name / "result.json")            # as if the run stopped during its last step
    os.remove(out / name / "wsol" / "metrics.json")
    again = runner("--datapath", data, "--out", out, "--grid", name, "--resume", *TINY)
    assert again.count("done earlier") == 5 and "seg_wsol   ..." in again
    assert [os.path.getmtime(p) for p in kept] == mtimes and (out / name / "wsol" / "metrics.json").is_file()
    third = runner("--datapath", data, "--out", out, "--grid", name, "--resume", *TINY)
    assert "finished earlier, kept" in third and " ..." not in third
    assert f"| {name} |" in open(out / "ablation.md").read()

    with pytest.raises(UserError, match="--resume"):
        runner("--datapath", data, "--out", out, "--grid", name, *TINY)
    with pytest.raises(UserError, match="another recipe"):
        runner("--datapath", data, "--out", out, "--grid", name, "--resume", *TINY, "--seed", "1")


def test_a_resumed_grid_of_other_settings_keeps_the_finished_ones(grid):
    # fuse2-add-no-mca shares the cam network of the fixture's setting: only its masks and seg stage run
    out, data, first, other = grid["out"], grid["data"], "fuse2-add-no-mca-no-prior", "fuse2-add-no-mca"
    again = runner("--datapath", data, "--out", out, "--grid", other, "--resume", *TINY)
    assert f"kept from the earlier grid in {out} (finished): {first}" in again
    rows = [r["name"] for r in json.load(open(out / "ablation.json"))["rows"]]
    assert rows == [other, first]
    table = open(out / "ablation.md").read()
    assert f"| {first} |" in table and f"| {other} |" in table
