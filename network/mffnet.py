"""MFF-Net: the ResNet backbone with SPOL's multi-scale channel attention and shallow x deep fusion head.

One definition serves every stage (shared/SPEC.md §2):
  * CAM model (`out_channels` = number of classes): class maps `ReLU(linear(fused))`;
    with `dual=True` (CUB) training also returns the maps of the deep feature alone.
  * segmentation model (`out_channels=1`, `seg=True`): one-channel logits, no ReLU.
Attribute names are the original code's, so its checkpoints load with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.resnet import build_resnet, load_backbone_weights

HIDDEN = 128  # width of every head feature in the authors' code


class MFFNet(nn.Module):
    def __init__(self, out_channels: int, backbone: str = "resnet50", dual: bool = False, seg: bool = False):
        super().__init__()
        if dual and seg:
            raise ValueError("the dual (deep + fused) head is for CAM models, not the segmentation model")
        self.dual, self.seg = dual, seg
        self.bkbone = build_resnet(backbone)
        _, c3, c4, c5 = self.bkbone.channels
        # multi-scale channel attention: squeeze each level to 128, multiply, excite back
        self.fc51, self.bn51, self.fc52 = nn.Conv2d(c5, HIDDEN, 1), nn.BatchNorm2d(HIDDEN), nn.Conv2d(HIDDEN, c5, 1)
        self.fc41, self.bn41, self.fc42 = nn.Conv2d(c4, HIDDEN, 1), nn.BatchNorm2d(HIDDEN), nn.Conv2d(HIDDEN, c4, 1)
        self.fc31, self.bn31, self.fc32 = nn.Conv2d(c3, HIDDEN, 1), nn.BatchNorm2d(HIDDEN), nn.Conv2d(HIDDEN, c3, 1)
        # reduction of each level to 128 channels before the fusion
        self.linear5, self.bn5 = nn.Conv2d(c5, HIDDEN, 1), nn.BatchNorm2d(HIDDEN)
        self.linear4, self.bn4 = nn.Conv2d(c4, HIDDEN, 1), nn.BatchNorm2d(HIDDEN)
        self.linear3, self.bn3 = nn.Conv2d(c3, HIDDEN, 1), nn.BatchNorm2d(HIDDEN)
        self.linear = nn.Conv2d(HIDDEN, out_channels, 1)
        # (rank, world): this process holds rows rank, rank + world, ... of the global training batch
        # (utils.distributed.EpochBatchSampler); set by the training engine, see `_dropout`
        self.batch_split = (0, 1)
        self._init_head()

    def _init_head(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("bkbone"):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _dropout(self, x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
        """Dropout whose mask is drawn for the whole global batch and sliced to this process's rows, so
        a sample gets the same mask however the batch is split over processes (torchrun = one process)."""
        if not self.training:
            return x
        rank, world = self.batch_split
        keep = torch.empty((x.shape[0] * world,) + x.shape[1:], dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1 - p).div_(1 - p)[rank::world]

    def head_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("bkbone.")]

    def forward(self, x: torch.Tensor):
        _, out3, out4, out5 = self.bkbone.features(x)
        # MCA: one 128-d channel descriptor per level, their product gates every level
        a5 = F.relu(self.bn51(self.fc51(F.adaptive_avg_pool2d(out5, 1))))   # B x 128 x 1 x 1
        a4 = F.relu(self.bn41(self.fc41(F.adaptive_avg_pool2d(out4, 1))))
        a3 = F.relu(self.bn31(self.fc31(F.adaptive_avg_pool2d(out3, 1))))
        v = a5 * a4 * a3
        out5 = torch.sigmoid(self.fc52(v)) * out5
        out4 = torch.sigmoid(self.fc42(v)) * out4
        out3 = torch.sigmoid(self.fc32(v)) * out3

        size = out3.shape[2:]
        f5 = F.interpolate(F.relu(self.bn5(self.linear5(out5))), size=size, mode="bilinear", align_corners=True)
        f4 = F.interpolate(F.relu(self.bn4(self.linear4(out4))), size=size, mode="bilinear", align_corners=True)
        f3 = F.relu(self.bn3(self.linear3(out3)))
        fused = f5 * f4 * f3                                                  # B x 128 x H/8 x W/8

        out = self.linear(self._dropout(fused))   # B x K x H/8 x W/8
        if self.seg:
            return out
        maps = F.relu(out)
        if self.dual and self.training:
            maps_deep = F.relu(self.linear(self._dropout(f5)))
            return maps_deep, maps
        return maps


def build_mffnet(out_channels: int, backbone: str = "resnet50", pretrained: str | None = None,
                 dual: bool = False, seg: bool = False) -> MFFNet:
    """MFF-Net with the backbone initialised from a torchvision ResNet file (or from scratch if None)."""
    model = MFFNet(out_channels, backbone, dual=dual, seg=seg)
    if pretrained:
        load_backbone_weights(model.bkbone, pretrained)
    return model
