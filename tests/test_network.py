"""The network: docs/method.md §2 parameter names, shapes, variants, and checkpoint formats that must load."""
import torch

from network import build_mffnet, build_resnet, load_backbone_weights
from utils.engine.checkpoint import load_weights, read_state_dict
from utils.errors import UserError

import pytest

HEAD = {"fc51", "bn51", "fc52", "fc41", "bn41", "fc42", "fc31", "bn31", "fc32",
        "linear5", "bn5", "linear4", "bn4", "linear3", "bn3", "linear"}


def test_resnet50_cam_model_has_the_original_keys():
    sd = build_mffnet(200).state_dict()
    assert len(sd) == 368
    assert {k.split(".")[0] for k in sd} == HEAD | {"bkbone"}
    assert sd["bkbone.layer3.5.bn2.running_var"].shape == (256,)
    assert sd["fc51.weight"].shape == (128, 2048, 1, 1)
    assert sd["fc52.weight"].shape == (2048, 128, 1, 1)
    assert sd["linear.weight"].shape == (200, 128, 1, 1)
    assert not any(k.startswith("bkbone.fc") for k in sd)


def test_resnet_matches_torchvision_key_layout():
    sd = build_resnet("resnet50", num_classes=1000).state_dict()
    assert len(sd) == 320 and sd["fc.weight"].shape == (1000, 2048)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)   # stride on the 3x3 (torchvision v1.5)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_output_shapes_and_variants(backbone):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    cam = build_mffnet(5, backbone).eval()
    with torch.no_grad():
        maps = cam(x)
    assert maps.shape == (2, 5, 8, 12) and maps.min() >= 0                # B x K x H/8 x W/8, ReLU'd
    dual = build_mffnet(5, backbone, dual=True).train()
    deep, fused = dual(x)
    assert deep.shape == fused.shape == (2, 5, 8, 12)
    seg = build_mffnet(1, backbone, seg=True).eval()
    with torch.no_grad():
        seg.linear.weight.zero_()
        seg.linear.bias.fill_(-2.5)             # every logit exactly -2.5: a ReLU would turn them all into 0
        logits = seg(x)
    assert logits.shape == (2, 1, 8, 12) and torch.all(logits == -2.5)      # no ReLU on the logits


def test_head_initialisation():
    m = build_mffnet(3, "resnet18")
    assert torch.all(m.linear.bias == 0) and torch.all(m.bn5.weight == 1) and torch.all(m.bn5.bias == 0)
    std = m.fc51.weight.std().item()
    assert abs(std - (2 / 512) ** 0.5) < 0.2 * (2 / 512) ** 0.5             # Kaiming normal, fan_in


def test_original_checkpoint_formats_load_and_agree(tmp_path):
    torch.manual_seed(0)
    ref = build_mffnet(4, "resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ref(x)
    sd = ref.state_dict()
    formats = {
        "plain.pth": sd,
        "ddp.pth": {"module." + k: v for k, v in sd.items()},
        "apex_o2.pth": {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()},
        "state.pth": {"model": sd, "optimizer": {}, "epoch": 3},
    }
    for name, obj in formats.items():
        torch.save(obj, tmp_path / name)
        m = build_mffnet(4, "resnet18").eval()
        load_weights(m, str(tmp_path / name))
        with torch.no_grad():
            got = m(x)
        tol = 5e-2 if "apex" in name else 1e-6
        assert torch.allclose(got, want, atol=tol), name


def test_wrong_checkpoints_give_clear_errors(tmp_path):
    torch.save(build_mffnet(4, "resnet18").state_dict(), tmp_path / "cam4.pth")
    with pytest.raises(UserError, match="--clsnum"):
        load_weights(build_mffnet(200, "resnet18"), str(tmp_path / "cam4.pth"))
    with pytest.raises(UserError, match="--backbone"):
        load_weights(build_mffnet(4, "resnet50"), str(tmp_path / "cam4.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        read_state_dict(str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="not found"):
        read_state_dict(str(tmp_path / "missing.pth"))


def test_torchvision_file_loads_into_backbone(tmp_path):
    tv = build_resnet("resnet18", num_classes=1000)
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    m = build_mffnet(3, "resnet18", pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(m.bkbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(UserError, match="does not fit"):
        load_backbone_weights(build_resnet("resnet50"), str(tmp_path / "resnet18.pth"))
    with pytest.raises(UserError, match="--pretrained none"):
        build_mffnet(3, "resnet18", pretrained=str(tmp_path / "nope.pth"))
