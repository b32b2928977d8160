"""The backbone registry: what a backbone of the MFF-Net provides, and the table of every backbone by name.

A backbone is an `nn.Module` that, built without `num_classes`, returns from its call the four feature maps
the MFF-Net fuses: the outputs of its stages at strides 4, 8, 16 and 32 of the B x 3 x H x W input (the paper's
out2..out5, B x C_i x H/s x W/s; SPOL fuses out3..out5, docs/method.md §2), or the closest strides its
architecture has (wsolevaluation's VGG16 and InceptionV3 end at stride 16: docs/backbones.md). Built with
`num_classes`, the same module is a classifier instead (it returns B x num_classes logits) whose classifier
layer is named `fc`: the cls stages use it so (`--arch resnet50`) and its ImageNet file loads with that layer.
Its parameters have the names of its ImageNet file (torchvision's); a backbone whose WSOL form adds layers the
file lacks, or removes layers the file has, names their prefixes in the class attributes `new_layers` (trained
from scratch, at the head's learning rate in the cam stage) and `dropped` (left out of the file when loading).
The entry (`Backbone`) of a backbone says how to build it, the names and channels of its four levels (the
MFF-Net's head is built from them) and their strides, the modules the ImageNet cam recipe freezes (its "stem"),
and where its ImageNet weights come from. Each module of network/backbones/ registers its backbones when
imported; code that looks one up imports `network.backbones`, which imports them all, so a new backbone is one
new file there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch.nn as nn


@dataclass(frozen=True)
class Backbone:
    """One backbone: `build(num_classes)` makes a fresh one (None: the feature extractor of the MFF-Net);
    `levels` are the (module name, channels) of its stages at `strides` (4, 8, 16, 32 where the architecture
    has them; a level's map is H/stride x W/stride up to the border an unpadded conv trims); `stem` names the modules
    the ImageNet cam recipe keeps as pretrained; `weights_url` is its ImageNet weights file (torch.hub's naming,
    `<name>-<SHA-256 prefix>.pth`, which the download is checked against), None when it has none."""
    name: str
    build: Callable[[Optional[int]], nn.Module]
    levels: tuple
    stem: tuple
    weights_url: Optional[str] = None
    strides: tuple = (4, 8, 16, 32)

    @property
    def channels(self) -> tuple:
        """C2, C3, C4, C5: the channels of the feature maps at strides 4, 8, 16, 32."""
        return tuple(c for _, c in self.levels)

    @property
    def weights_file(self) -> Optional[str]:
        """The ImageNet weight file's name (resource/<it> is the default --pretrained of its cls stage)."""
        return self.weights_url.rsplit("/", 1)[1] if self.weights_url else None

    def freeze_stem(self, module: nn.Module) -> None:
        """Stop the gradient of the stem's parameters (the ImageNet recipe; their BatchNorm statistics still
        update in training mode, as in the authors' code)."""
        for name in self.stem:
            for p in module.get_submodule(name).parameters():
                p.requires_grad_(False)


BACKBONES: dict = {}  # name -> Backbone, in the order registered


def register(entry: Backbone) -> Backbone:
    """Add `entry` to the table (its name must be new: a second definition under one name is a mistake)."""
    if entry.name in BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is registered twice")
    if len(entry.levels) != 4 or not all(isinstance(c, int) and c > 0 for c in entry.channels):
        raise ValueError(f"backbone {entry.name!r}: levels must be 4 (module name, channels) pairs, the stages at "
                         f"strides 4, 8, 16, 32; got {entry.levels!r}")
    if len(entry.strides) != 4 or list(entry.strides) != sorted(entry.strides):
        raise ValueError(f"backbone {entry.name!r}: strides must be the 4 levels' strides, shallow to deep; got "
                         f"{entry.strides!r}")
    BACKBONES[entry.name] = entry
    return entry


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]

