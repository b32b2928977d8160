"""The cls stage: the classifier whose top-1/top-5 correctness turns GT-known Loc into Top-1/Top-5 Loc.

Default classifier: the project's ResNet-50 (torchvision layout) from the torchvision weights file,
with a new `fc` for CUB (trained with the recipe of SPEC §3) or torchvision's own `fc` for ImageNet.
`--arch timm:<name>` (e.g. timm:efficientnet_b7, the paper's) uses a timm model when timm is installed.
`test.py` writes out/top1top5.npy: per image of the list, is the class right at top-1 / top-5.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from network.resnet import BACKBONES, build_resnet, load_backbone_weights
from utils import distributed
from utils.checkpoint import load_weights
from utils.data import ImageSet, read_list
from utils.engine import (amp_dtype, autocast, channels_last_for, fit, handle_bad, inference_batches, place_model,
                          to_device)
from utils.errors import UserError
from utils.log import maybe_tqdm
from utils.results import write_top1top5
from utils.transforms import cls_test_transform, cls_train_transform


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    if arch.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise UserError(f"--arch {arch} needs timm (pip install timm; it also needs torchvision)") from None
        return timm.create_model(arch[5:], pretrained=False, num_classes=num_classes)
    if arch not in BACKBONES:
        raise UserError(f"--arch {arch!r}: choose one of {', '.join(BACKBONES)} or timm:<model name>")
    return build_resnet(arch, num_classes)


def classifier_head(model: nn.Module) -> list:
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    return list(head.parameters())


def load_pretrained(model: nn.Module, arch: str, path: str) -> None:
    """Backbone weights from an ImageNet file; the classifier stays new when its class count differs."""
    if not arch.startswith("timm:"):
        load_backbone_weights(model, path, keep_fc=True)
        return
    from utils.checkpoint import read_state_dict
    state = read_state_dict(path)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in state]
    head = {n for n, p in model.named_parameters() if any(p is q for q in classifier_head(model))}
    if set(missing) - head:
        raise UserError(f"{path} does not fit {arch}: missing {sorted(set(missing) - head)[:5]}")
    model.load_state_dict(state, strict=False)


def cls_loss(model, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch["image"]).float(), batch["label"])


@distributed.entry
def train(args, d) -> str:
    torch.manual_seed(args.seed)  # the head (and a scratch backbone) start the same on every rank and run
    samples = read_list(args.dataset, args.datapath, args.list, with_boxes=False)
    model = build_classifier(args.arch, args.clsnum)
    if args.pretrained:
        load_pretrained(model, args.arch, args.pretrained)
    if args.snapshot:
        load_weights(model, args.snapshot)

    def groups(m):
        head = classifier_head(m)
        ids = {id(p) for p in head}
        return [(head, args.lr), ([p for p in m.parameters() if id(p) not in ids], args.backbone_lr)]

    data = ImageSet(samples, cls_train_transform(args.size, args.crop), seed=args.seed)
    last = fit(args, d, model, data, cls_loss, groups,
               lr_factor=lambda e: 1.0 - e / args.epoch)  # the recipe's poly decay, per epoch
    if d.main:
        print(f"done; last snapshot: {last}\nNext: python test.py --snapshot {last}")
    return last


@distributed.entry
def test(args, d) -> dict:
    if not args.snapshot:
        raise UserError("--snapshot is required: the classifier weights (e.g. out/model-20.pth)")
    samples = read_list(args.dataset, args.datapath, args.list, with_boxes=False)
    model = build_classifier(args.arch, args.clsnum)
    load_weights(model, args.snapshot)
    model = place_model(model.eval(), args, d, train=False)
    channels_last = channels_last_for(args, d.device)
    dtype = amp_dtype(args.amp, d.device)
    data = ImageSet(samples, cls_test_transform(args.size, args.crop, shorter_side=args.resize == "shorter"))
    k = min(5, args.clsnum)
    rows = {}
    with torch.inference_mode():
        for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(samples), d), args.batch_size,
                                                  args, d), d.main, desc="classify"):
            for name, _ in batch["bad"]:
                handle_bad({"bad": batch["bad"][:1]}, args.on_bad_image, None, d)
                rows[name] = (False, False)  # an unreadable image is a wrong classification, counted
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                logits = model(to_device(batch["image"], d, channels_last)).float()
            top = logits.topk(k, 1).indices.cpu()
            hit = top == batch["label"][:, None]
            for index, h in zip(batch["index"].tolist(), hit):
                rows[samples[index].name] = (bool(h[0]), bool(h.any()))
    merged = {}
    for part in distributed.gather_objects(d, rows):
        merged.update(part)
    if not d.main:
        return {}
    names = [s.name for s in samples]
    top1 = [merged[n][0] for n in names]
    top5 = [merged[n][1] for n in names]
    path = os.path.join(args.savepath, "top1top5.npy")
    write_top1top5(path, names, top1, top5)
    result = {"count": len(names), "top1": 100.0 * sum(top1) / len(names), "top5": 100.0 * sum(top5) / len(names)}
    print(f"images: {result['count']}   top-1 accuracy: {result['top1']:.2f}   top-{k} accuracy: {result['top5']:.2f}")
    print(f"wrote {path}")
    return result
