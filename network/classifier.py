"""Classifiers of the cls stages: the authors' EfficientNet (efficientnet_pytorch), the project's
ResNets, or a timm model.

`efficientnet-b0` .. `efficientnet-b7` are built by the `efficientnet_pytorch` package itself (the
authors' library: `EfficientNet.from_name`), so its parameter names (`_conv_stem.weight`, `_blocks.*`,
`_bn1.weight`, `_fc.weight`) are the ones in the authors' snapshots and in efficientnet_pytorch's
ImageNet weight files, which therefore load strictly. Every registered backbone (network/registry.py: the
ResNets) is a classifier too, built with a class count. The ImageNet file of an architecture has a fixed
name (`efficientnet-b7-dcc49843.pth`; a backbone's is in its registry entry, `resnet50-19c8e357.pth`);
`resolve_imagenet_weights` finds it in resource/ and, when it is absent, downloads it there (network/weights.py:
the backbone's URL, torchvision's for a ResNet; efficientnet_pytorch's release URL for an EfficientNet).
"""
from __future__ import annotations

import os

import torch.nn as nn

from network import weights
from network.backbones import BACKBONES, get_backbone
from network.weights import load_backbone_weights
from utils.engine.checkpoint import fill_batchnorm_counters, read_state_dict
from utils.errors import UserError

RESOURCE = weights.RESOURCE
EFFICIENTNETS = tuple(f"efficientnet-b{i}" for i in range(8))
# The authors' classifier recipe puts exactly these two parameters into the high-lr group; every other
# one, `_fc.weight` included, trains at the low lr (their cub200-cls/train.py matches full names).
EFFICIENTNET_HEAD = ("_bn1.weight", "_fc.bias")


def _efficientnet_pytorch():
    try:
        import efficientnet_pytorch
    except ImportError:
        raise UserError("the EfficientNet classifiers need efficientnet_pytorch: pip install efficientnet_pytorch "
                        "(it is in requirements.txt)") from None
    return efficientnet_pytorch


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """A classifier with `num_classes` outputs and fresh (seeded) weights."""
    if arch in EFFICIENTNETS:
        return _efficientnet_pytorch().EfficientNet.from_name(arch, num_classes=num_classes)
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise UserError(f"--arch {arch} needs timm (pip install timm; it also needs torchvision)") from None
        return timm.create_model(arch[5:], pretrained=False, num_classes=num_classes)
    if arch not in BACKBONES:
        raise UserError(f"--arch {arch!r}: choose one of {', '.join(EFFICIENTNETS + tuple(BACKBONES))} "
                        f"or timm:<model name>")
    return get_backbone(arch).build(num_classes)


def param_groups(model: nn.Module, arch: str, head_lr: float, base_lr: float) -> list:
    """[(params, lr), ...]: the authors' two groups for EfficientNet (EFFICIENTNET_HEAD at `head_lr`);
    for the other architectures the whole classifier layer at `head_lr` (with the layers a backbone's WSOL form
    adds, as wsolevaluation trains them: VGG16's conv6, ...); everything else at `base_lr`."""
    if arch in EFFICIENTNETS:
        head = [p for n, p in model.named_parameters() if n in EFFICIENTNET_HEAD]
    else:
        layer = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
        new = tuple(getattr(model, "new_layers", ()))
        head = list(layer.parameters()) + [p for n, p in model.named_parameters() if new and n.startswith(new)]
    ids = {id(p) for p in head}
    return [(head, head_lr), ([p for p in model.parameters() if id(p) not in ids], base_lr)]


def imagenet_weights_file(arch: str) -> str:
    """resource/<the ImageNet weight file's usual name> for an architecture (timm: none)."""
    if arch in EFFICIENTNETS:
        return os.path.join(RESOURCE, os.path.basename(_efficientnet_pytorch().utils.url_map[arch]))
    if arch in BACKBONES and BACKBONES[arch].weights_file:
        return os.path.join(RESOURCE, BACKBONES[arch].weights_file)
    raise UserError(f"--arch {arch} has no default ImageNet weights file: pass --pretrained PATH (or none)")


def resolve_imagenet_weights(arch: str, path: str) -> str:
    """`path` if it exists; when absent and it is the architecture's default file (or any file of a backbone in
    resource/, network/weights.py), download it there: the backbone's URL (torchvision's for a ResNet, hash
    checked), efficientnet_pytorch's release URL for an EfficientNet. Otherwise, or offline, a clear error
    naming the file."""
    if os.path.isfile(path):
        return path
    url = None
    if arch in EFFICIENTNETS and os.path.abspath(path) == os.path.abspath(imagenet_weights_file(arch)):
        url = _efficientnet_pytorch().utils.url_map[arch]
    # efficientnet_pytorch itself loads its files unchecked (torch.hub's load_url without check_hash), so
    # only the backbones' files (torchvision's names) are held to their SHA-256 prefix
    if not weights.ensure(path, url, check_hash=url is None):
        raise UserError(f"pretrained weights not found: {path}\n  (see resource/README.md; --pretrained none "
                        f"trains from scratch)")
    return path


def load_imagenet_weights(model: nn.Module, arch: str, path: str) -> None:
    """Load ImageNet weights; the classifier layer is kept when its class count matches the file's and left
    as initialised otherwise (a new head). Any other missing, unexpected or mis-shaped key is an error."""
    if arch in BACKBONES:
        load_backbone_weights(model, path, keep_fc=True)
        return
    state = fill_batchnorm_counters(model, read_state_dict(path))
    own = model.state_dict()
    head = ({"_fc.weight", "_fc.bias"} if arch in EFFICIENTNETS else
            {n for n, p in model.named_parameters()
             if any(p is q for q in model.get_classifier().parameters())})
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = sorted(set(own) - set(fits) - head)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{path} does not fit {arch}: {len(missing)} missing or mis-shaped keys {missing[:3]}, "
                        f"{len(unexpected)} unexpected {unexpected[:3]} (weights of another architecture?)")
    model.load_state_dict(fits, strict=False)
