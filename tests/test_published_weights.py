"""Weight files with the key sets their publishers wrote, not the project's own: torchvision's ResNet files
from before PyTorch 0.4.1 (`resnet50-19c8e357.pth`, the file every cam and seg stage starts from, and
`resnet101-5d3b4d8f.pth`, `resnet152-b121ed2d.pth`) have no BatchNorm `num_batches_tracked` buffers.
`load_state_dict(strict=True)` fills those in; every loader of the project must do the same, and keep every
other mismatch an error."""
import torch

import pytest

from conftest import run_inprocess
from network import build_mffnet, build_resnet, load_backbone_weights
from network.classifier import build_classifier, load_imagenet_weights
from utils.engine.checkpoint import load_weights
from utils.errors import UserError

# torchvision's published files: conv and BN parameters, BN running statistics and the fc layer, no counters.
# ResNet-50: 53 convolutions + 53 BatchNorms x 4 + fc weight and bias; ResNet-18: 20 + 20 x 4 + 2.
PUBLISHED_KEYS = {"resnet18": 102, "resnet50": 267}


def published(state: dict) -> dict:
    """A state dict as a pre-0.4.1 torch.save wrote it: no `num_batches_tracked`, no `_metadata`."""
    return {k: v.clone() for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("depth", ["resnet18", "resnet50"])
def test_a_torchvision_file_without_batchnorm_counters_loads_into_the_backbone(tmp_path, depth):
    torch.manual_seed(0)
    tv = build_resnet(depth, num_classes=1000)
    state = published(tv.state_dict())
    assert len(state) == PUBLISHED_KEYS[depth]
    torch.save(state, tmp_path / "tv.pth")
    m = build_resnet(depth)
    load_backbone_weights(m, str(tmp_path / "tv.pth"))
    assert torch.equal(m.layer4[-1].bn1.running_var, tv.layer4[-1].bn1.running_var)
    assert int(m.bn1.num_batches_tracked) == 0
    assert build_mffnet(3, depth, pretrained=str(tmp_path / "tv.pth")).bkbone.conv1.weight.equal(tv.conv1.weight)


def test_other_mismatches_of_such_a_file_stay_errors(tmp_path):
    state = published(build_resnet("resnet18", num_classes=1000).state_dict())
    del state["layer2.1.bn2.running_mean"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"does not fit.*layer2\.1\.bn2\.running_mean"):
        load_backbone_weights(build_resnet("resnet18"), str(tmp_path / "cut.pth"))
    with pytest.raises(UserError, match="does not fit"):        # a pre-0.4.1 file of another depth
        load_backbone_weights(build_resnet("resnet50"), str(tmp_path / "cut.pth"))


def test_a_snapshot_without_counters_loads_strictly_and_gives_the_same_maps(tmp_path):
    torch.manual_seed(0)
    ref = build_mffnet(1, "resnet18", seg=True).eval()
    torch.save(published(ref.state_dict()), tmp_path / "seg.pth")
    m = build_mffnet(1, "resnet18", seg=True).eval()
    load_weights(m, str(tmp_path / "seg.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    state = published(ref.state_dict())
    del state["bn5.running_var"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"1 missing keys \['bn5.running_var'\]"):
        load_weights(build_mffnet(1, "resnet18", seg=True), str(tmp_path / "cut.pth"))


def test_a_classifier_file_without_counters_loads(tmp_path):
    pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    ref = build_classifier("efficientnet-b0", 1000)
    torch.save(published(ref.state_dict()), tmp_path / "b0.pth")
    m = build_classifier("efficientnet-b0", 7)                   # a new head: the file's fc is left out
    load_imagenet_weights(m, "efficientnet-b0", str(tmp_path / "b0.pth"))
    assert torch.equal(m._bn1.running_mean, ref._bn1.running_mean)


def test_cam_and_seg_stages_start_from_a_published_style_file(tmp_path):
    """The default path of every user's first run: the cam stage's --pretrained, then a seg snapshot without
    counters as test.py's --snapshot."""
    from dataset.prepare import prepare_cub
    from dataset.synthetic import make_cub
    root = str(tmp_path / "CUB_200_2011")
    make_cub(root, num_classes=2, train_per_class=2, val_per_class=1, seed=5, min_size=64, max_size=80)
    prepare_cub(root)
    torch.save(published(build_resnet("resnet18", num_classes=1000).state_dict()), tmp_path / "tv.pth")
    small = ["--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--size", "64", "--crop", "56",
             "--datapath", root]
    run_inprocess("cub200-cam/train.py", *small, "--clsnum", 2, "--epoch", 1, "--snapshot_from", 1,
                  "--batch_size", 4, "--pretrained", tmp_path / "tv.pth", "--savepath", tmp_path / "cam")
    seg = build_mffnet(1, "resnet18", seg=True)
    torch.save(published(seg.state_dict()), tmp_path / "seg.pth")
    p = run_inprocess("cub200-seg/test.py", *small, "--snapshot", tmp_path / "seg.pth",
                      "--savepath", tmp_path / "seg", "--top1top5", "none")
    assert "GT-known" in p.stdout
