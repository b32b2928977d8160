"""VGG16 as wsolevaluation (Choe et al., CVPR 2020, `wsol/vgg.py`) defines it for CAM, returning four feature
levels; registered as the backbone `vgg16` (network/registry.py), with torchvision's ImageNet file.

wsolevaluation's two changes to VGG16 for localisation: the last max pooling (pool5) goes, so conv5_3 keeps
stride 16 (14 x 14 at 224 px), and a new 3x3 convolution `conv6` (512 -> 1024, ReLU) follows conv5_3; the
classifier is global average pooling and `fc` (1024 -> classes) instead of torchvision's three linear layers.
With pool5 gone, the `features.N` indices of conv1_1 .. conv5_3 are torchvision's, so `vgg16-397923af.pth` loads
into them as it is; its `classifier.*` layers are dropped by name, `conv6` (and `fc`) start from scratch.
The four levels (docs/backbones.md): conv3_3 (stride 4), conv4_3 (8), conv5_3 (16) and conv6 (16: the deepest
level keeps wsolevaluation's stride 16 instead of ResNet's 32).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.registry import Backbone, register

TORCHVISION_URL = "https://download.pytorch.org/models/"
# torchvision's configuration "D" without its last "M" (pool5): widths of the 3x3 convs, "M" a 2x2 max pooling
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# the `features` indices of the ReLUs closing conv3_3, conv4_3, conv5_3 (strides 4, 8, 16)
CONV3_3, CONV4_3, CONV5_3 = 15, 22, 29


class VGG16(nn.Module):
    """Called without `fc`, returns conv3_3, conv4_3, conv5_3 and conv6 (after their ReLUs), B x (256, 512, 512,
    1024) x H/4, H/8, H/16, H/16 (x W likewise). With `num_classes` it is a classifier (B x num_classes logits:
    conv6, global average pooling, `fc`), wsolevaluation's VggCam."""
    new_layers = ("conv6.",)        # WSOL layers the ImageNet file does not have: trained from scratch
    dropped = ("classifier.",)      # the ImageNet file's layers the WSOL network removed

    def __init__(self, num_classes: Optional[int] = None):
        super().__init__()
        layers, width = [], 3
        for v in CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, v, 3, padding=1), nn.ReLU(inplace=True)]
                width = v
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(512, 1024, 3, padding=1)
        self.relu6 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(1024, num_classes) if num_classes else None
        for m in self.modules():  # wsolevaluation's initialisation ("he"), for what the ImageNet file lacks
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        """The four levels (no `fc`), or the logits (with `fc`). `self.features` is torchvision's Sequential
        (its name is what their file's keys need), so the levels come from calling the module."""
        out2 = self.features[:CONV3_3 + 1](x)                      # B x 256 x H/4 x W/4
        out3 = self.features[CONV3_3 + 1:CONV4_3 + 1](out2)        # B x 512 x H/8 x W/8
        out4 = self.features[CONV4_3 + 1:CONV5_3 + 1](out3)        # B x 512 x H/16 x W/16
        out5 = self.relu6(self.conv6(out4))                         # B x 1024 x H/16 x W/16
        if self.fc is None:
            return out2, out3, out4, out5
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out5, 1), 1))


register(Backbone("vgg16", VGG16,
                  levels=((f"features.{CONV3_3}", 256), (f"features.{CONV4_3}", 512), (f"features.{CONV5_3}", 512),
                          ("relu6", 1024)),
                  strides=(4, 8, 16, 16),
                  stem=("features.0",),  # conv1_1, the first conv as ResNet's conv1 (VGG16 has no BatchNorm)
                  weights_url=TORCHVISION_URL + "vgg16-397923af.pth"))
