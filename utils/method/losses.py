"""SPOL's training losses (docs/method.md §3, §5), as `loss(model, batch) -> scalar tensor`, the form the
training loop (`utils.engine.loop.fit`) calls: `batch["image"]` is B x 3 x H x W, `batch["label"]` B class indices,
`batch["mask"]` B x 2 x H x W (the seg target and its weight, `utils.method.seg_target`).

Class scores are the spatial means of the class maps (the MFF-Net has no fc layer); every loss is computed in
float32, also under mixed precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dual_head_loss(model, batch) -> torch.Tensor:
    """CUB's cam stage: L = (CE(s_deep, y) + SoftCE(s_fused, softmax(s_deep))) / 2.

    The dual-head model returns the class maps of the deep feature alone and of the fused feature (each
    B x K x h x w); s = their spatial means (B x K). SoftCE distils the fused head towards the deep head's
    prediction, which is not trained by it (detached): -sum_k softmax(s_deep)_k log softmax(s_fused)_k, mean
    over the batch.
    """
    maps_deep, maps_fused = model(batch["image"])
    logits_deep = maps_deep.float().mean((2, 3))
    logits_fused = maps_fused.float().mean((2, 3))
    loss1 = F.cross_entropy(logits_deep, batch["label"])
    loss2 = -(F.softmax(logits_deep, 1).detach() * F.log_softmax(logits_fused, 1)).sum(1).mean()
    return (loss1 + loss2) / 2


def single_head_loss(model, batch) -> torch.Tensor:
    """ImageNet's cam stage: L = CE(s, y), s = the spatial mean of the fused class maps (B x K x h x w -> B x K)."""
    return F.cross_entropy(model(batch["image"]).float().mean((2, 3)), batch["label"])


def seg_loss(model, batch) -> torch.Tensor:
    """The seg stage: L = mean over all pixels of weight * BCE(sigmoid(logit), target).

    The B x 1 x h x w logits are upsampled (bilinear, align_corners=True) to the target's H x W; the target is 1
    on the pseudo mask's object, 0 on its background, and the weight 0 on the pixels it leaves undecided (so
    they count in the mean's denominator but add nothing).
    """
    logits = model(batch["image"]).float()
    target, weight = batch["mask"][:, 0], batch["mask"][:, 1]
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)
