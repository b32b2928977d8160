"""InceptionV3 as wsolevaluation (Choe et al., CVPR 2020, `wsol/inception.py`) defines it for CAM, returning
four feature levels; registered as the backbone `inception_v3` (network/registry.py), with torchvision's
ImageNet file.

wsolevaluation's changes to torchvision's Inception3 for localisation, taken here: the first conv
(Conv2d_1a_3x3) is padded by 1; the two stem max poolings are 3x3 / 2 with padding 1 and `ceil_mode`; a 3x3 / 2
max pooling (`ceil_mode`, no padding) follows Mixed_5d; Mixed_6a's stride-2 convs become stride 1 with padding
1 (the same weights); Mixed_7a..7c, the auxiliary classifier (AuxLogits) and the classifier `fc` go; two new
3x3 convs (768 -> 1024 -> 1024, each with a ReLU) follow Mixed_6e, under their names `SPG_A3_1b` / `SPG_A3_2b`,
so Mixed_6e keeps stride 16 (14 x 14 at 224 px). Not taken: their dropouts (p 0.5) before those convs, as SPOL's
head has its own; and their class layer (a 1x1 conv before the pooling) is the equivalent `fc` after it here.
Every kept layer has torchvision's name, so `inception_v3_google-0cc3c7bd.pth` loads into it (BatchNorm eps
0.001 as theirs); the file's Mixed_7*, AuxLogits and fc are dropped by name. Inputs are ImageNet-normalised as
for every backbone here, as wsolevaluation feeds it (torchvision's `transform_input` is not used). The four
levels (docs/backbones.md): Conv2d_4a_3x3 (stride 4), Mixed_5d (8), Mixed_6e (16), SPG_A3_2b (16).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.registry import Backbone, register

TORCHVISION_URL = "https://download.pytorch.org/models/"


class BasicConv2d(nn.Module):
    """Conv (no bias), BatchNorm (eps 0.001, the ported TensorFlow weights'), ReLU: torchvision's unit."""

    def __init__(self, cin: int, cout: int, kernel, **conv):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _run(branch: list, x: torch.Tensor) -> torch.Tensor:
    for unit in branch:
        x = unit(x)
    return x


class InceptionA(nn.Module):
    """Mixed_5b..5d: 1x1, 5x5, double 3x3 and pooled 1x1 branches, concatenated (224 + `pool` channels)."""

    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          _run([self.branch5x5_1, self.branch5x5_2], x),
                          _run([self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3], x),
                          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionB(nn.Module):
    """Mixed_6a: torchvision's grid reduction, here at stride 1 with padding 1 as wsolevaluation's (768 ch)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=1, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          _run([self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3], x),
                          F.max_pool2d(x, 3, 1, 1)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: 1x1, factorised 7x7, double factorised 7x7 and pooled 1x1 branches (768 channels)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x),
                          _run([self.branch7x7_1, self.branch7x7_2, self.branch7x7_3], x),
                          _run([self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                                self.branch7x7dbl_4, self.branch7x7dbl_5], x),
                          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionV3(nn.Module):
    """Called without `fc`, returns Conv2d_4a_3x3, Mixed_5d, Mixed_6e and SPG_A3_2b: B x (192, 288, 768, 1024)
    x about H/4, H/8, H/16, H/16 (54, 28, 14, 14 at 224 px; 73, 37, 18, 18 at 299: the unpadded 3x3 convs
    trim a border). With `num_classes` it is a classifier (SPG_A3_2b, global average pooling, `fc`)."""
    new_layers = ("SPG_A3_1b.", "SPG_A3_2b.")         # WSOL layers the ImageNet file does not have
    dropped = ("Mixed_7", "AuxLogits.", "fc.")          # the ImageNet file's layers the WSOL network removed

    def __init__(self, num_classes: Optional[int] = None):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(1024, num_classes) if num_classes else None
        for m in self.modules():  # wsolevaluation's initialisation ("xavier"), for what the ImageNet file lacks
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        out2 = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                        # B x 192 x ~H/4 x ~W/4
        x = F.max_pool2d(out2, 3, 2, 1, ceil_mode=True)
        out3 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                   # B x 288 x H/8 x W/8
        x = F.max_pool2d(out3, 3, 2, ceil_mode=True)
        out4 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))  # B x 768 x H/16
        out5 = self.SPG_A3_2b(self.SPG_A3_1b(out4))                            # B x 1024 x H/16 x W/16
        if self.fc is None:
            return out2, out3, out4, out5
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out5, 1), 1))


register(Backbone("inception_v3", InceptionV3,
                  levels=(("Conv2d_4a_3x3", 192), ("Mixed_5d", 288), ("Mixed_6e", 768), ("SPG_A3_2b", 1024)),
                  strides=(4, 8, 16, 16),
                  stem=("Conv2d_1a_3x3",),  # the first conv and its BatchNorm, as ResNet's conv1 + bn1
                  weights_url=TORCHVISION_URL + "inception_v3_google-0cc3c7bd.pth"))
