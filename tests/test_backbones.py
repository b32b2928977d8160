"""The backbone registry (network/registry.py, network/backbones/): every registered backbone keeps the promises
of its entry, and a new backbone is one registration away from every stage and tool. A tiny throwaway backbone,
defined and registered here, builds CAM and seg MFF-Nets, runs the stages in-process, and is a `--backbone`
choice of every parser; a copy of the code with one more file in network/backbones/ offers it too."""
import json
import os
import re
import shutil
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, run_inprocess, run_script
from network import BACKBONES, build_mffnet, get_backbone, load_mffnet
from network.registry import Backbone, register

TINY = "tiny-test"
TINY_LEVELS = (("stages.0", 8), ("stages.1", 12), ("stages.2", 16), ("stages.3", 20))


class TinyNet(nn.Module):
    """A stride-2 stem (conv + BatchNorm) and four stride-2 convs: the levels at strides 4, 8, 16, 32."""

    def __init__(self, num_classes=None):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.norm = nn.BatchNorm2d(8)
        widths = (8,) + tuple(c for _, c in TINY_LEVELS)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.ReLU())
                                    for a, b in zip(widths, widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes) if num_classes else None

    def features(self, x):
        x = F.relu(self.norm(self.stem(x)))
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return tuple(out)

    def forward(self, x):
        feats = self.features(x)
        return feats if self.fc is None else self.fc(feats[3].mean((2, 3)))


@pytest.fixture
def tiny():
    entry = register(Backbone(TINY, TinyNet, levels=TINY_LEVELS, stem=("stem", "norm")))
    yield entry
    del BACKBONES[TINY]


def test_a_new_backbone_builds_cam_and_seg_mffnets(tiny, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    cam = build_mffnet(5, TINY).eval()
    sd = cam.state_dict()
    assert sd["fc51.weight"].shape == (128, 20, 1, 1) and sd["fc42.weight"].shape == (16, 128, 1, 1)
    assert sd["linear3.weight"].shape == (128, 12, 1, 1) and "bkbone.stages.3.0.weight" in sd
    with torch.no_grad():
        maps = cam(x)
    assert maps.shape == (2, 5, 8, 12) and maps.min() >= 0                   # B x K x H/8 x W/8
    deep, fused = build_mffnet(5, TINY, dual=True).train()(x)
    assert deep.shape == fused.shape == (2, 5, 8, 12)
    four = build_mffnet(5, TINY, levels=4).eval()                            # + the stride-4 level
    assert four.state_dict()["linear2.weight"].shape == (128, 8, 1, 1)
    with torch.no_grad():
        assert four(x).shape == (2, 5, 16, 24)
    seg = build_mffnet(1, TINY, seg=True).eval()
    torch.save(seg.state_dict(), tmp_path / "seg.pth")
    again = load_mffnet(str(tmp_path / "seg.pth"), None, TINY, seg=True).eval()
    with torch.no_grad():
        assert seg(x).shape == (2, 1, 8, 12) and torch.equal(again(x), seg(x))


@pytest.mark.parametrize("name", sorted(BACKBONES) + [TINY])
def test_every_backbone_keeps_the_promises_of_its_entry(tiny, name):
    """Its call gives the levels' channels at its entry's strides (4..32 where the architecture has them; up
    to 2 pixels fewer where unpadded convs trim a border, as InceptionV3's), each the output of the module its
    entry names; the stem names modules with parameters; with a class count it is a classifier with `fc`."""
    entry = get_backbone(name)
    torch.manual_seed(0)
    model = entry.build(None).eval()
    seen = {}
    for level, _ in entry.levels:
        model.get_submodule(level).register_forward_hook(lambda m, i, o, level=level: seen.setdefault(level, o))
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert len(feats) == 4 and entry.strides[:3] == (4, 8, 16) and entry.strides[3] in (16, 32)
    for f, (level, channels), stride in zip(feats, entry.levels, entry.strides):
        assert f.shape[:2] == (1, channels), (name, level)
        assert 0 <= 64 // stride - f.shape[2] <= 2 and 0 <= 96 // stride - f.shape[3] <= 2, (name, level, f.shape)
        assert torch.equal(seen[level], f), (name, level)
    assert entry.stem and all(list(model.get_submodule(s).parameters()) for s in entry.stem)
    assert getattr(model, "fc", None) is None
    classifier = entry.build(7).eval()
    with torch.no_grad():
        assert classifier(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert classifier.fc.out_features == 7


def test_freezing_the_stem_stops_exactly_its_parameters(tiny):
    for name, stem in (("resnet18", {"conv1.weight", "bn1.weight", "bn1.bias"}),
                       (TINY, {"stem.weight", "stem.bias", "norm.weight", "norm.bias"})):
        model = build_mffnet(3, name)
        get_backbone(name).freeze_stem(model.bkbone)
        assert {n for n, p in model.bkbone.named_parameters() if not p.requires_grad} == stem
        assert all(p.requires_grad for p in model.head_parameters())


def test_the_resnet_entries_are_torchvisions():
    assert [n for n in BACKBONES if n.startswith("resnet")] == ["resnet18", "resnet34", "resnet50", "resnet101",
                                                                "resnet152"]
    r50, r18 = BACKBONES["resnet50"], BACKBONES["resnet18"]
    assert r50.weights_url == "https://download.pytorch.org/models/resnet50-19c8e357.pth"
    assert r50.weights_file == "resnet50-19c8e357.pth" and r18.weights_file == "resnet18-f37072fd.pth"
    assert r50.levels == (("layer1", 256), ("layer2", 512), ("layer3", 1024), ("layer4", 2048))
    assert r18.channels == (64, 128, 256, 512) and r50.stem == r18.stem == ("conv1", "bn1")
    import network.classifier as classifier
    assert classifier.imagenet_weights_file("resnet101") == os.path.join(classifier.RESOURCE,
                                                                          "resnet101-5d3b4d8f.pth")


def test_register_refuses_a_second_entry_and_wrong_levels(tiny):
    with pytest.raises(ValueError, match="registered twice"):
        register(Backbone(TINY, TinyNet, levels=TINY_LEVELS, stem=()))
    with pytest.raises(ValueError, match="levels must be 4"):
        register(Backbone("three", TinyNet, levels=TINY_LEVELS[:3], stem=()))
    assert "three" not in BACKBONES
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        get_backbone("nope")


def _backbone_actions():
    """The --backbone action of every parser that has the flag."""
    from utils import ablation, bench, cli, localize
    parsers = [cli.make_parser("doc", train=True), cli.make_parser("doc", train=False), ablation.get_args_parser(),
               bench.get_args_parser(), localize.get_args_parser("doc")]
    return [next(a for a in p._actions if "--backbone" in a.option_strings) for p in parsers]


def test_every_backbone_flag_is_the_one_definition_with_the_registry_as_choices(tiny):
    actions = _backbone_actions()
    assert all(a.choices == sorted(BACKBONES) and TINY in a.choices for a in actions)
    assert {a.default for a in actions} == {"resnet50"} and len({a.help for a in actions}) == 1
    defined = []
    for folder, _, files in os.walk(ROOT):
        if os.path.relpath(folder, ROOT).split(os.sep)[0] in (".venv", "tests", ".git"):
            continue
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                defined += [os.path.relpath(os.path.join(folder, name), ROOT)] * len(
                    re.findall(r"add_argument\(\s*\"--backbone\"", text))
    assert defined == [os.path.join("utils", "cli.py")]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    from dataset.synthetic import make_cub
    root = str(tmp_path_factory.mktemp("data") / "CUB_200_2011")
    make_cub(root, num_classes=3, train_per_class=3, val_per_class=2, seed=5, min_size=64, max_size=80)
    run_script("dataset/prepare.py", "cub", "--root", root)
    return root


def test_a_new_backbone_runs_the_stages(tiny, cub, tmp_path):
    small = ["--datapath", cub, "--backbone", TINY, "--device", "cpu", "--num_workers", 0, "--size", 64,
             "--crop", 56]
    cam, seg = tmp_path / "cam", tmp_path / "seg"
    run_inprocess("cub200-cam/train.py", *small, "--clsnum", 3, "--epoch", 1, "--snapshot_from", 1,
                  "--pretrained", "none", "--batch_size", 3, "--savepath", cam)
    assert torch.load(cam / "checkpoint.pth", weights_only=True)["args"]["backbone"] == TINY
    run_inprocess("cub200-cam/test.py", *small, "--clsnum", 3, "--snapshot", cam / "model-1.pth",
                  "--maskpath", cam / "masks", "--post_workers", 0)
    assert len(list((cam / "masks").rglob("*.png"))) == 9
    run_inprocess("cub200-seg/train.py", *small, "--maskpath", cam / "masks", "--epoch", 1, "--pretrained", "none",
                  "--batch_size", 3, "--savepath", seg)
    run_inprocess("cub200-seg/test.py", *small, "--snapshot", seg / "model-1.pth", "--savepath", seg,
                  "--threshold", 0.5)
    assert json.load(open(seg / "metrics.json"))["count"] == 6


def test_a_new_file_in_network_backbones_is_a_choice_of_the_stage_scripts(tmp_path):
    """A copy of the code with one more module in network/backbones/ (and nothing else changed) offers it."""
    for folder in ("network", "utils", "cub200-cam"):
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    source = open(__file__, encoding="utf-8").read()
    net = source[source.index("TINY_LEVELS = "):source.index("@pytest.fixture")]
    (tmp_path / "network" / "backbones" / "tiny_file.py").write_text(
        "import torch.nn as nn\nimport torch.nn.functional as F\n\nfrom network.registry import Backbone, register\n\n"
        + net + textwrap.dedent("""
            register(Backbone("tiny-file", TinyNet, levels=TINY_LEVELS, stem=("stem", "norm")))
            """))
    p = run_script(tmp_path / "cub200-cam" / "train.py", "--help", cwd=tmp_path)
    choices = re.search(r"--backbone \{([^}]*)\}", p.stdout).group(1).split(",")
    assert choices == sorted([*BACKBONES, "tiny-file"])
    assert "tiny-file" not in run_script("cub200-cam/train.py", "--help").stdout     # the copy's file only
    assert sys.modules.get("network.backbones.tiny_file") is None
