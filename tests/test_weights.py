"""ImageNet weight files fetched into resource/ (network/weights.py), without the network: the registered
ResNets' URLs pointed at a local file:// folder, or torch.hub's download stubbed."""
import dataclasses
import hashlib
import os

import pytest
import torch
import torch.hub

import network.classifier as classifier
import network.weights as weights
from network import BACKBONES, build_resnet, load_backbone_weights
from utils.errors import UserError


def published(folder, arch="resnet18", prefix=None):
    """A torchvision-style file of a fresh `arch` in `folder`, named with its SHA-256 prefix (or `prefix`)."""
    folder.mkdir(exist_ok=True)
    state = build_resnet(arch, num_classes=1000).state_dict()
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    name = f"{arch}-{prefix or hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(folder / name)
    return name, state


@pytest.fixture
def site(tmp_path, monkeypatch):
    """(the 'download.pytorch.org' folder, the resource folder)."""
    remote, resource = tmp_path / "models", tmp_path / "resource"
    remote.mkdir()
    for name, entry in list(BACKBONES.items()):  # torchvision's site -> the local folder
        if name.startswith("resnet"):
            url = entry.weights_url.replace("https://download.pytorch.org/models", remote.as_uri())
            monkeypatch.setitem(BACKBONES, name, dataclasses.replace(entry, weights_url=url))
    monkeypatch.setattr(weights, "RESOURCE", str(resource))
    monkeypatch.setattr(classifier, "RESOURCE", str(resource))
    return remote, resource


def test_hash_prefix_is_the_hex_after_the_last_dash():
    assert weights.hash_prefix("resource/resnet50-19c8e357.pth") == "19c8e357"
    assert weights.hash_prefix("efficientnet-b7-dcc49843.pth") == "dcc49843"
    assert weights.hash_prefix("my-weights.pth") is None
    assert weights.weights_url(os.path.join(weights.RESOURCE, "resnet50-19c8e357.pth")) == \
        "https://download.pytorch.org/models/resnet50-19c8e357.pth"
    assert weights.weights_url(os.path.join(weights.RESOURCE, "resnet50-0676ba61.pth")) == \
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"               # torchvision's other file
    assert weights.weights_url("/elsewhere/resnet50-19c8e357.pth") is None    # only into resource/
    assert weights.weights_url(os.path.join(weights.RESOURCE, "resnet51-19c8e357.pth")) is None
    assert weights.weights_url(os.path.join(weights.RESOURCE, "resnet50-19c8e35.pth")) is None   # 7 hex digits
    assert weights.weights_url(os.path.join(weights.RESOURCE, "resnet50-19c8e357.pt")) is None


def test_absent_resnet_file_is_downloaded_checked_and_loaded(site, capsys):
    remote, resource = site
    name, state = published(remote)
    model = build_resnet("resnet18")
    load_backbone_weights(model, str(resource / name))
    assert f"downloading {remote.as_uri()}/{name}" in capsys.readouterr().out
    assert (resource / name).read_bytes() == (remote / name).read_bytes()
    assert os.listdir(resource) == [name]                                    # no temporary left
    assert torch.equal(model.state_dict()["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    os.remove(remote / name)
    load_backbone_weights(build_resnet("resnet18"), str(resource / name))   # there now: no second download


def test_hash_mismatch_deletes_the_download(site):
    remote, resource = site
    name, _ = published(remote, prefix="deadbeef")
    with pytest.raises(UserError, match="SHA-256 .* does not start with deadbeef.*deleted"):
        load_backbone_weights(build_resnet("resnet18"), str(resource / name))
    assert not resource.exists() or os.listdir(resource) == []


def test_offline_names_the_file_and_the_url(site):
    _, resource = site
    path = str(resource / "resnet50-19c8e357.pth")
    with pytest.raises(UserError, match="resnet50-19c8e357.pth, and downloading file://.*/models/resnet50-19c8e357"
                                        ".pth failed"):
        load_backbone_weights(build_resnet("resnet50"), path)
    assert not resource.exists() or os.listdir(resource) == []
    with pytest.raises(UserError, match="pretrained weights not found: /elsewhere/resnet50-19c8e357.pth\n"):
        load_backbone_weights(build_resnet("resnet50"), "/elsewhere/resnet50-19c8e357.pth")   # not resource/


def test_interrupted_download_leaves_no_torn_file(site, monkeypatch):
    _, resource = site

    def cut(url, dst, progress=True):
        with open(dst, "wb") as f:
            f.write(b"half a file")
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(torch.hub, "download_url_to_file", cut)
    with pytest.raises(UserError, match="downloading .* failed .*ConnectionResetError"):
        load_backbone_weights(build_resnet("resnet18"), str(resource / "resnet18-f37072fd.pth"))
    assert os.listdir(resource) == []


def test_cls_stage_default_resnet_file_is_fetched_too(site, monkeypatch):
    remote, resource = site
    name, _ = published(remote)
    url = BACKBONES["resnet18"].weights_url.rsplit("/", 1)[0] + "/" + name   # the local site, set by `site`
    monkeypatch.setitem(BACKBONES, "resnet18", dataclasses.replace(BACKBONES["resnet18"], weights_url=url))
    path = classifier.imagenet_weights_file("resnet18")
    assert path == str(resource / name)
    assert classifier.resolve_imagenet_weights("resnet18", path) == path and os.path.isfile(path)
