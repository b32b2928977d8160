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

from conftest import ROOT, prepared_cub, run_inprocess, run_script
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
    from utils import ablation, bench, localize
    from utils.stages import cli
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
    assert defined == [os.path.join("utils", "stages", "cli.py")]


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data") / "CUB_200_2011")
    prepared_cub(root, num_classes=3, train_per_class=3, val_per_class=2, seed=5, min_size=64, max_size=80)
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


# ------------------------------------------------------------------------ VGG16 and InceptionV3 (wsolevaluation)
WSOL_BACKBONES = ("vgg16", "inception_v3")
# the keys and shapes of torchvision's published vgg16 / inception_v3 files (read from torchvision's definitions)
TORCHVISION_KEYS = os.path.join(ROOT, "tests", "data", "torchvision_keys.json")


def _published(name: str, counters: bool = True) -> dict:
    """A state dict with exactly the keys and shapes of torchvision's ImageNet file of `name` (random values):
    the layouts in torchvision_keys.json, read from torchvision's own definitions; `counters=False` leaves out
    the BatchNorm counters, as files written before PyTorch 0.4.1 do."""
    with open(TORCHVISION_KEYS, encoding="utf-8") as f:
        layout = json.load(f)[name]
    g = torch.Generator().manual_seed(0)
    return {k: (torch.tensor(0) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g))
            for k, shape in layout.items() if counters or not k.endswith("num_batches_tracked")}


def test_the_wsol_entries_are_wsolevaluations_and_torchvisions():
    vgg, inc = BACKBONES["vgg16"], BACKBONES["inception_v3"]
    assert vgg.weights_url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert inc.weights_url == "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
    assert vgg.channels == (256, 512, 512, 1024) and inc.channels == (192, 288, 768, 1024)
    assert vgg.strides == inc.strides == (4, 8, 16, 16)            # wsolevaluation: no stride 32
    assert vgg.stem == ("features.0",) and inc.stem == ("Conv2d_1a_3x3",)
    from network.weights import RESOURCE, weights_url
    assert weights_url(os.path.join(RESOURCE, "inception_v3_google-0cc3c7bd.pth")) == inc.weights_url


@pytest.mark.parametrize("name,size,sizes", [
    ("vgg16", 224, (56, 28, 14, 14)), ("inception_v3", 224, (54, 28, 14, 14)), ("inception_v3", 299, (73, 37, 18, 18)),
    ("vgg16", 32, (8, 4, 2, 2)), ("inception_v3", 32, (6, 4, 2, 2))])
def test_feature_map_sizes(name, size, sizes):
    """wsolevaluation's maps: 14 x 14 at the deep levels at 224 px (their CAM size), 28 x 28 where SPOL fuses;
    32 px is the smallest input the stage tests below use."""
    model = get_backbone(name).build(None).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size))
    assert tuple(f.shape[2] for f in feats) == sizes and tuple(f.shape[3] for f in feats) == sizes
    assert tuple(f.shape[1] for f in feats) == get_backbone(name).channels


@pytest.mark.parametrize("name", WSOL_BACKBONES)
@pytest.mark.parametrize("counters", [True, False])
def test_torchvisions_imagenet_file_loads_strictly(name, counters, tmp_path):
    """A file with torchvision's exact keys and shapes: every kept layer's tensors arrive, the layers the WSOL
    form removed are dropped by name, its new layers keep their fresh initialisation; as the localisation
    backbone, inside an MFF-Net, and as a classifier (a new `fc`)."""
    from network import load_backbone_weights
    state = _published(name, counters)
    torch.save(state, tmp_path / "tv.pth")
    model = get_backbone(name).build(None)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_backbone_weights(model, str(tmp_path / "tv.pth"))
    new, dropped = type(model).new_layers, type(model).dropped
    for k, v in model.state_dict().items():
        if k.startswith(new):
            assert torch.equal(v, fresh[k]), k
        elif k in state:
            assert torch.equal(v, state[k]), k
        else:
            assert k.endswith("num_batches_tracked") and not counters and v == 0, k
    assert all(k.startswith(dropped) for k in state if k not in model.state_dict())
    mff = build_mffnet(3, name, pretrained=str(tmp_path / "tv.pth"))
    assert torch.equal(mff.bkbone.state_dict()[next(iter(state))], next(iter(state.values())))
    from network.classifier import load_imagenet_weights
    cls = get_backbone(name).build(5)
    load_imagenet_weights(cls, name, str(tmp_path / "tv.pth"))
    assert cls.fc.out_features == 5


@pytest.mark.parametrize("name", WSOL_BACKBONES)
def test_a_wrong_shape_or_key_is_one_clear_line(name, tmp_path):
    from network import load_backbone_weights
    from utils.errors import UserError
    model = get_backbone(name).build(None)
    first = next(iter(_published(name)))
    for damage in ("shape", "missing"):
        state = _published(name)
        if damage == "shape":
            state[first] = state[first][:1]
        else:
            del state[first]
        torch.save(state, tmp_path / "bad.pth")
        with pytest.raises(UserError) as e:
            load_backbone_weights(model, str(tmp_path / "bad.pth"))
        line = str(e.value)
        assert "\n" not in line and "bad.pth" in line and first in line, line
        if damage == "shape":
            assert "in the file" in line
    # a ResNet file is not a VGG16 / InceptionV3 file
    torch.save(BACKBONES["resnet18"].build(None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="does not fit"):
        load_backbone_weights(model, str(tmp_path / "r18.pth"))


@pytest.mark.parametrize("name,new", [("vgg16", {"conv6.weight", "conv6.bias"}),
                                      ("inception_v3", {"SPG_A3_1b.0.weight", "SPG_A3_1b.0.bias",
                                                        "SPG_A3_2b.0.weight", "SPG_A3_2b.0.bias"})])
def test_the_stem_freezes_and_the_classifier_trains_new_layers_at_the_heads_rate(name, new):
    """The ImageNet recipe's stem: the first conv (and InceptionV3's BatchNorm); the cls stage's head group: `fc`
    with the layers the WSOL form adds (wsolevaluation trains them at its classifier's rate)."""
    model = build_mffnet(3, name)
    get_backbone(name).freeze_stem(model.bkbone)
    frozen = {n for n, p in model.bkbone.named_parameters() if not p.requires_grad}
    assert frozen == ({"features.0.weight", "features.0.bias"} if name == "vgg16" else
                      {"Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.weight", "Conv2d_1a_3x3.bn.bias"})
    from network.classifier import param_groups
    classifier = get_backbone(name).build(4)
    (head, head_lr), (base, _) = param_groups(classifier, name, 0.1, 0.01)
    names = {id(p): n for n, p in classifier.named_parameters()}
    assert {names[id(p)] for p in head} == new | {"fc.weight", "fc.bias"} and head_lr == 0.1
    assert len(head) + len(base) == len(names)


def test_a_backbone_call_is_what_the_mffnet_fuses():
    """The MFF-Net takes a backbone's four levels from its call (forward hooks see them)."""
    model = build_mffnet(3, "vgg16").eval()
    seen = []
    model.bkbone.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 4, 4)
    assert len(seen) == 1 and len(seen[0]) == 4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Tiny synthetic sets of every layout: CUB, ILSVRC2012, OpenImages (as downloaded), a class folder."""
    from dataset.synthetic import make_folder, make_imagenet, make_openimages
    top = tmp_path_factory.mktemp("sets")
    cub = str(top / "CUB_200_2011")
    prepared_cub(cub, num_classes=2, train_per_class=2, val_per_class=1, seed=3, min_size=48, max_size=64)
    inet = str(top / "ILSVRC2012")
    make_imagenet(inet, synsets=("n01440764", "n01443537"), train_per_class=2, val_per_class=1, seed=3,
                  min_size=48, max_size=64)
    run_script("dataset/prepare.py", "imagenet", "--root", inet)
    oi = make_openimages(str(top / "oi"), num_classes=2, train_per_class=2, val_per_class=1, test_per_class=1,
                         seed=3, min_size=48, max_size=64)
    run_script("dataset/prepare.py", "openimages", "--root", oi["images"], "--metadata", oi["metadata"])
    own = make_folder(str(top / "own"), num_classes=2, per_class=3, new_images=1, seed=3, min_size=48, max_size=64)
    run_script("dataset/prepare.py", "folder", "--root", own["data"], "--val-fraction", "0.34")
    return {"cub": cub, "imagenet": inet, "openimages": oi["images"], "own": own["data"], "new": own["new"]}


@pytest.mark.parametrize("name", WSOL_BACKBONES)
def test_every_stage_runs_with_the_wsol_backbones(name, datasets, tmp_path):
    """`--backbone vgg16` / `inception_v3` through every stage script's main (cam train/test, seg
    train/test/localize; CUB, ImageNet, OpenImages, one's own folder; the cls stage's --arch) at 32 px,
    each a step or an epoch. The cam stage trains the new layers at --lr (with --backbone_lr 1e-9 they move,
    the pretrained layers do not)."""
    small = ["--backbone", name, "--device", "cpu", "--num_workers", 0, "--size", 40, "--crop", 32]
    once = ["--pretrained", "none", "--epoch", 1, "--snapshot_from", 1, "--batch_size", 4]
    cam, seg = tmp_path / "cam", tmp_path / "seg"
    run_inprocess("cub200-cam/train.py", "--datapath", datasets["cub"], *small, *once, "--clsnum", 2,
                  "--backbone_lr", 1e-9, "--savepath", cam)
    torch.manual_seed(0)   # the stage's --seed: the same initial network
    start = build_mffnet(2, name).bkbone.state_dict()
    trained = {k[len("bkbone."):]: v for k, v in torch.load(cam / "model-1.pth", weights_only=True).items()
               if k.startswith("bkbone.")}
    new = type(get_backbone(name).build(None)).new_layers
    weights = [k for k in start if k.endswith("weight") and start[k].dim() == 4]
    assert all(not torch.equal(trained[k], start[k]) for k in weights if k.startswith(new))
    assert all(torch.allclose(trained[k], start[k], atol=1e-6) for k in weights if not k.startswith(new))
    run_inprocess("cub200-cam/test.py", "--datapath", datasets["cub"], *small, "--clsnum", 2, "--snapshot",
                  cam / "model-1.pth", "--maskpath", cam / "masks", "--post_workers", 0)
    run_inprocess("cub200-seg/train.py", "--datapath", datasets["cub"], *small, *once, "--maskpath", cam / "masks",
                  "--savepath", seg)
    run_inprocess("cub200-seg/test.py", "--datapath", datasets["cub"], *small, "--snapshot", seg / "model-1.pth",
                  "--savepath", seg, "--threshold", 0.5)
    assert json.load(open(seg / "metrics.json"))["count"] == 2
    run_inprocess("cub200-seg/localize.py", "--snapshot", seg / "model-1.pth", "--backbone", name, "--device", "cpu",
                  "--num_workers", 0, "--size", 40, "--savepath", tmp_path / "loc", datasets["new"])
    assert (tmp_path / "loc" / "localize" / "boxes.csv").is_file()
    steps = ["--max_steps", 1, "--savepath"]
    run_inprocess("imagenet-cam/train.py", "--datapath", datasets["imagenet"], *small, *once, "--clsnum", 2, *steps,
                  tmp_path / "inet-cam")
    run_inprocess("imagenet-seg/test.py", "--datapath", datasets["imagenet"], *small, "--snapshot",
                  seg / "model-1.pth", "--savepath", tmp_path / "inet-seg")
    run_inprocess("openimages-cam/train.py", "--datapath", datasets["openimages"], *small, *once, "--clsnum", 2,
                  *steps, tmp_path / "oi-cam")
    run_inprocess("openimages-seg/test.py", "--datapath", datasets["openimages"], *small, "--snapshot",
                  seg / "model-1.pth", "--savepath", tmp_path / "oi-seg", "--post_workers", 0)
    run_inprocess("cub200-cam/train.py", "--datapath", datasets["own"], *small, *once, *steps, tmp_path / "own-cam")
    run_inprocess("cub200-cls/train.py", "--datapath", datasets["cub"], "--arch", name, "--device", "cpu",
                  "--num_workers", 0, "--size", 40, "--crop", 32, "--pretrained", "none", "--epoch", 1,
                  "--batch_size", 4, *steps, tmp_path / "cls")
