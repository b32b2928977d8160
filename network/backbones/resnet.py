"""ResNet-18/34/50/101/152 with torchvision's parameter names, returning the four stage outputs; registered as
the backbones `resnet18` .. `resnet152` (network/registry.py), with torchvision's ImageNet files.

The layout is torchvision's (Bottleneck with the stride on the 3x3 conv), so
`resnet50-19c8e357.pth` or any torchvision ResNet state dict loads into it. torchvision itself is
not a dependency: its wheels do not load beside the CPU build of torch this project pins, and the
backbone is small enough to own. The classifier `fc` exists only when `num_classes` is given
(the cls stages); the localisation stages build the backbone without it.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.registry import Backbone, register

TORCHVISION_URL = "https://download.pytorch.org/models/"


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3, as torchvision
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet(nn.Module):
    """Returns (out2, out3, out4, out5): layer1..layer4 outputs at strides 4, 8, 16, 32.

    With `num_classes` set it is a plain classifier instead (`forward` returns B x num_classes logits).
    """

    def __init__(self, block: type, layers: tuple, num_classes: Optional[int] = None):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.fc = nn.Linear(512 * block.expansion, num_classes) if num_classes else None
        for m in self.modules():  # torchvision's initialisation, for training from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> tuple:
        """The outputs of layer1..layer4 (what the call returns without `fc`: network/registry.py)."""
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.max_pool2d(x, 3, 2, 1)
        out2 = self.layer1(x)      # B x C2 x H/4 x W/4
        out3 = self.layer2(out2)   # B x C3 x H/8 x W/8
        out4 = self.layer3(out3)   # B x C4 x H/16 x W/16
        out5 = self.layer4(out4)   # B x C5 x H/32 x W/32
        return out2, out3, out4, out5

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        if self.fc is None:
            return feats
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(feats[3], 1), 1))


# name -> (block, blocks per stage, torchvision's ImageNet weights file)
DEPTHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "resnet18-f37072fd.pth"),
    "resnet34": (BasicBlock, (3, 4, 6, 3), "resnet34-b627a593.pth"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "resnet50-19c8e357.pth"),
    "resnet101": (Bottleneck, (3, 4, 23, 3), "resnet101-5d3b4d8f.pth"),
    "resnet152": (Bottleneck, (3, 8, 36, 3), "resnet152-b121ed2d.pth"),
}


def build_resnet(name: str = "resnet50", num_classes: Optional[int] = None) -> ResNet:
    block, layers, _ = DEPTHS[name]
    return ResNet(block, layers, num_classes)


def _entry(name: str) -> Backbone:
    block, _, weights_file = DEPTHS[name]
    return Backbone(name, partial(build_resnet, name),
                    levels=tuple((f"layer{i}", c * block.expansion) for i, c in enumerate((64, 128, 256, 512), 1)),
                    stem=("conv1", "bn1"),  # the ImageNet cam recipe keeps the first conv and its BatchNorm
                    weights_url=TORCHVISION_URL + weights_file)


for _name in DEPTHS:
    register(_entry(_name))
