"""MFF-Net: a registered backbone (network/registry.py; ResNet-50 in the paper) with SPOL's multi-scale channel
attention and shallow x deep fusion head, built from the channels of the backbone's four levels.

One definition serves every stage (docs/method.md §2):
  * CAM model (`out_channels` = number of classes): class maps `ReLU(linear(fused))`;
    with `dual=True` (CUB) training also returns the maps of the deep feature alone.
  * segmentation model (`out_channels=1`, `seg=True`): one-channel logits, no ReLU.
Attribute names are the original code's, so its checkpoints load with strict=True.

Ablation switches (the paper's Figure 1(b) and its MCA ablation), all off by default, where the network is
exactly SPOL's (the same 368 ResNet-50 state-dict keys, the same outputs):
  * `fusion`: "mul" (SPOL: f5 * f4 * f3), "add" (f5 + f4 + f3) or "concat" (channel concatenation; the
    output layer `linear` then reads 128 x levels channels);
  * `levels`: how many of the last backbone stages are fused, deepest first: 1 = layer4 alone (a plain CAM
    on the same head; the fusion then does nothing), 2 = + layer3, 3 = + layer2 (SPOL), 4 = + layer1. The
    fused map has the resolution of the shallowest fused stage (stride 32, 16, 8 or 4), as SPOL's fuses at
    layer2's; layer1 gets layers named like the others (fc21, bn21, fc22, linear2, bn2);
  * `mca`: the multi-scale channel attention; without it the fc{i}1/bn{i}1/fc{i}2 layers do not exist.
A state dict saved from the model records these three values in its `_metadata` (the dict PyTorch already
keeps module versions in; it survives `torch.save` and `torch.load(weights_only=True)`, and the authors'
code ignores it), so a snapshot rebuilds its own network: `load_mffnet`.
"""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.backbones import get_backbone
from network.weights import load_backbone_weights
from utils.engine.checkpoint import load_state, read_state_dict
from utils.errors import UserError

HIDDEN = 128  # width of every head feature in the authors' code


@dataclass(frozen=True)
class Fusion:
    """One way to fuse the reduced levels [f5, f4, ...] (deepest first, each B x 128 x h x w) into one map."""

    combine: Callable[[list], torch.Tensor]
    label: str              # its name in the ablation figure's legend (utils/ablation.py)
    stacked: bool = False   # the levels are stacked along channels: `linear` then reads 128 x levels channels


# The --fusion table (the paper's Figure 1(b)): a new operator is one entry here, then a --fusion choice of
# every stage and a setting of utils.ablation's --grid (fuse<levels>-<name>).
FUSIONS = {
    "mul": Fusion(lambda f: functools.reduce(operator.mul, f), "multiplication (SPOL)"),   # f5 * f4 * f3
    "add": Fusion(lambda f: functools.reduce(operator.add, f), "addition"),                # f5 + f4 + f3
    "concat": Fusion(lambda f: torch.cat(f, 1), "concatenation", stacked=True),          # B x 128*levels x h x w
}
STAGES = (5, 4, 3, 2)  # fused stages, deepest first: out5 = layer4 ... out2 = layer1 (the paper's numbering)
SPOL = {"fusion": "mul", "levels": 3, "mca": True}
METADATA_KEY = "mffnet"  # where the architecture is recorded in a state dict's _metadata


class MFFNet(nn.Module):
    def __init__(self, out_channels: int, backbone: str = "resnet50", dual: bool = False, seg: bool = False,
                 fusion: str = "mul", levels: int = 3, mca: bool = True):
        super().__init__()
        if dual and seg:
            raise ValueError("the dual (deep + fused) head is for CAM models, not the segmentation model")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if levels not in (1, 2, 3, 4):
            raise ValueError(f"levels must be 1..4 (stages fused, deepest first), got {levels!r}")
        self.dual, self.seg = dual, seg
        self.fusion, self.levels, self.mca = fusion, int(levels), bool(mca)
        self.stages = STAGES[:self.levels]
        entry = get_backbone(backbone)
        self.bkbone = entry.build(None)
        channels = dict(zip((2, 3, 4, 5), entry.channels))
        # created in the original's order (attention of 5, 4, 3, then reductions, then `linear`), so the
        # seeded initialisation of the default network is the one it always had
        if self.mca:  # multi-scale channel attention: squeeze each level to 128, multiply, excite back
            for i in self.stages:
                setattr(self, f"fc{i}1", nn.Conv2d(channels[i], HIDDEN, 1))
                setattr(self, f"bn{i}1", nn.BatchNorm2d(HIDDEN))
                setattr(self, f"fc{i}2", nn.Conv2d(HIDDEN, channels[i], 1))
        for i in self.stages:  # reduction of each level to 128 channels before the fusion
            setattr(self, f"linear{i}", nn.Conv2d(channels[i], HIDDEN, 1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(HIDDEN))
        width = HIDDEN * self.levels if FUSIONS[fusion].stacked else HIDDEN
        self.linear = nn.Conv2d(width, out_channels, 1)
        # (rank, world): this process holds rows rank, rank + world, ... of the global training batch
        # (utils.engine.distributed.EpochBatchSampler); set by the training engine, see `_dropout`
        self.batch_split = (0, 1)
        self._init_head()
        self.register_state_dict_post_hook(_record_architecture)

    @property
    def architecture(self) -> dict:
        return {"fusion": self.fusion, "levels": self.levels, "mca": self.mca}

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

    def check_snapshot(self, state: dict, path: str) -> None:
        """Refuse the snapshot `state` (read from `path`) of an MFF-Net with other switches, naming them:
        utils.engine.checkpoint.load_state calls this before loading (checkpoint code knows no network)."""
        if "linear5.weight" in state or recorded_architecture(state):
            resolve_architecture(state, path, **self.architecture)

    def head_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("bkbone.")]

    def _layer(self, name: str, i: int) -> nn.Module:
        return getattr(self, name.format(i))

    def forward(self, x: torch.Tensor):
        features = dict(zip((2, 3, 4, 5), self.bkbone(x)))  # a backbone's call: its 4 levels
        outs = [features[i] for i in self.stages]                            # deepest first
        if self.mca:  # one 128-d channel descriptor per level, their product gates every level
            a = [F.relu(self._layer("bn{}1", i)(self._layer("fc{}1", i)(F.adaptive_avg_pool2d(out, 1))))
                 for i, out in zip(self.stages, outs)]                        # each B x 128 x 1 x 1
            v = a[0]
            for a_i in a[1:]:
                v = v * a_i
            outs = [torch.sigmoid(self._layer("fc{}2", i)(v)) * out for i, out in zip(self.stages, outs)]

        size = outs[-1].shape[2:]  # the shallowest fused level's H x W (SPOL: layer2's, H/8 x W/8)
        f = []
        for i, out in zip(self.stages, outs):
            f_i = F.relu(self._layer("bn{}", i)(self._layer("linear{}", i)(out)))
            if i != self.stages[-1]:
                f_i = F.interpolate(f_i, size=size, mode="bilinear", align_corners=True)
            f.append(f_i)                                                     # f5, f4, f3, f2: B x 128 x h x w
        fused = FUSIONS[self.fusion].combine(f)                              # SPOL: f5 * f4 * f3

        out = self.linear(self._dropout(fused))   # B x K x h x w
        if self.seg:
            return out
        maps = F.relu(out)
        if self.dual and self.training:
            deep = self._dropout(f[0])
            if FUSIONS[self.fusion].stacked:  # `linear` reads f5 through its first 128 input channels (others zeroed)
                deep = F.conv2d(deep, self.linear.weight[:, :HIDDEN], self.linear.bias)
            else:
                deep = self.linear(deep)
            return F.relu(deep), maps        # maps_deep (shares `linear`), maps_fused
        return maps


def _record_architecture(module: MFFNet, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the ablation switches go into the model's own entry of `_metadata`."""
    local_metadata[METADATA_KEY] = module.architecture


def build_mffnet(out_channels: int, backbone: str = "resnet50", pretrained: str | None = None,
                 dual: bool = False, seg: bool = False, fusion: str = "mul", levels: int = 3,
                 mca: bool = True) -> MFFNet:
    """MFF-Net with the backbone initialised from its ImageNet file (a torchvision ResNet file for the ResNets),
    or from scratch if None."""
    model = MFFNet(out_channels, backbone, dual=dual, seg=seg, fusion=fusion, levels=levels, mca=mca)
    if pretrained:
        load_backbone_weights(model.bkbone, pretrained)
    return model


# ---------------------------------------------------------------------------- snapshot architecture
def recorded_architecture(state: dict) -> Optional[dict]:
    """The switches a state dict saved from an MFFNet records (None: the authors' snapshots, or a dict
    rebuilt without its `_metadata`). The outermost module's entry wins (`""` before `"module"`)."""
    meta = getattr(state, "_metadata", None) or {}
    for key in sorted(meta, key=len):
        entry = meta[key]
        if isinstance(entry, dict) and isinstance(entry.get(METADATA_KEY), dict):
            return dict(entry[METADATA_KEY])
    return None


def inferred_architecture(state: dict) -> dict:
    """What the keys and shapes show: the fused levels, MCA, and concat (the output layer's input width).
    mul and add have the same weights, so a snapshot without a record counts as SPOL's mul."""
    levels = 0
    while levels < len(STAGES) and f"linear{STAGES[levels]}.weight" in state:
        levels += 1
    width = state["linear.weight"].shape[1] if "linear.weight" in state else HIDDEN
    fusion = "concat" if levels > 1 and width == HIDDEN * levels else "mul"
    return {"fusion": fusion, "levels": levels or SPOL["levels"], "mca": "fc51.weight" in state}


def resolve_architecture(state: dict, path: str, fusion: Optional[str] = None, levels: Optional[int] = None,
                         mca: Optional[bool] = None) -> dict:
    """The network to build for the snapshot `state` (read from `path`): each switch as given, else as the
    snapshot records it, else as its keys show (SPOL's for the authors' snapshots). A given switch that
    contradicts the snapshot's record or its keys is an error: the weights were trained for another network.
    (mul vs add can only contradict a record: they have the same weights.)"""
    recorded = recorded_architecture(state)
    known = recorded if recorded is not None else inferred_architecture(state)
    given = {"fusion": fusion, "levels": levels, "mca": mca}
    arch = {k: (v if v is not None else known[k]) for k, v in given.items()}
    if recorded is None and fusion in FUSIONS and not FUSIONS[fusion].stacked and not FUSIONS[known["fusion"]].stacked:
        known = dict(known, fusion=fusion)  # without a record, the keys cannot tell mul from add
    wrong = [k for k, v in given.items() if v is not None and v != known[k]
             and not (k == "fusion" and known["levels"] == 1 == arch["levels"])]  # one level: nothing is fused
    if wrong:
        source = "records" if recorded is not None else "has the keys of"
        said = ", ".join(_flag(k, known[k]) for k in wrong)
        asked = ", ".join(_flag(k, given[k]) for k in wrong)
        raise UserError(f"{path} {source} an MFF-Net with {said}, but {asked} was given: drop the flag(s) "
                        f"(the snapshot's network is rebuilt from it) or pass the snapshot of that network")
    return arch


def _flag(name: str, value) -> str:
    if name == "mca":
        return "--mca" if value else "--no-mca"
    return f"--{name} {value}"


def load_mffnet(path: str, out_channels: Optional[int], backbone: str = "resnet50", dual: bool = False,
                seg: bool = False, fusion: Optional[str] = None, levels: Optional[int] = None,
                mca: Optional[bool] = None) -> MFFNet:
    """The MFF-Net of a snapshot, its weights loaded (strict): the switches not given come from the
    snapshot (`resolve_architecture`); `out_channels=None` takes the snapshot's output layer width."""
    state = read_state_dict(path)
    arch = resolve_architecture(state, path, fusion, levels, mca)
    if out_channels is None:
        out_channels = state["linear.weight"].shape[0] if "linear.weight" in state else 1
    model = MFFNet(out_channels, backbone, dual=dual, seg=seg, **arch)
    load_state(model, state, path)
    return model
