"""The cls stage: the classifier whose top-1/top-5 correctness turns GT-known Loc into Top-1/Top-5 Loc.

Default classifier: the authors' EfficientNet-B7 (efficientnet_pytorch), with their recipe (docs/method.md §3): CUB
fine-tunes it from the ImageNet weights with a new `_fc`, ImageNet uses the ImageNet weights as released.
`--arch resnet50` (the project's ResNet, torchvision layout) and `--arch timm:<name>` are the options
(network/classifier.py). `test.py` writes out/top1top5.npy: per image of the list, is the class right at
top-1 / top-5.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from network.classifier import (build_classifier, imagenet_weights_file, load_imagenet_weights, param_groups,
                                resolve_imagenet_weights)
from utils.stages import cli
from utils.engine import distributed
from utils.data import validate
from utils.engine.checkpoint import load_weights
from utils.data.images import ImageSet
from utils.data.datasets import DATASETS, DataSet
from utils.engine.loop import (HostPipe, amp_dtype, autocast, channels_last_for, fit, handle_bad, inference_batches,
                          place_model, to_device)
from utils.engine.log import maybe_tqdm
from utils.results import write_top1top5
from utils.data.transforms import cls_test_transform, cls_train_transform


def pretrained_path(arch: str, pretrained: str) -> str:
    """--pretrained auto: the architecture's ImageNet file in resource/ (downloaded for EfficientNet when
    absent and online); a path: that file, which must exist."""
    return resolve_imagenet_weights(arch, imagenet_weights_file(arch) if pretrained == "auto" else pretrained)


def _checked_list(dataset: DataSet, datapath: str, listname: str, num_classes: int, skip: bool, savepath: str,
                  main: bool) -> list:
    """The samples of the list, checked (names, labels < `num_classes`; `skip`: --on-bad-image skip), once
    `savepath` is known to be writable (and taken for this run)."""
    samples = dataset.read_list(datapath, listname, with_boxes=False)
    samples = validate.check_names(samples, validate.list_file(datapath, listname), num_classes, skip=skip, main=main)
    validate.check_writable(savepath, "--savepath", lock=main)
    return samples


def cls_loss(model, batch) -> torch.Tensor:
    return F.cross_entropy(model(batch["image"]).float(), batch["label"])


@distributed.entry
def train(args, d) -> str:
    torch.manual_seed(args.seed)  # the head (and a scratch backbone) start the same on every rank and run
    samples = _checked_list(DATASETS[args.dataset], args.datapath, args.list, args.clsnum, args.on_bad_image == "skip",
                            args.savepath, d.main)
    validate.check_stage_folder(args.savepath, args.stage, args.force)
    model = build_classifier(args.arch, args.clsnum)
    if args.pretrained:
        load_imagenet_weights(model, args.arch, pretrained_path(args.arch, args.pretrained))
    if args.snapshot:
        load_weights(model, args.snapshot)

    def groups(m):
        return param_groups(m, args.arch, args.lr, args.backbone_lr)

    data = ImageSet(samples, cls_train_transform(args.size, args.crop), seed=args.seed)
    last = fit(cli.train_config(args), d, model, data, cls_loss, groups,
               lr_factor=lambda e: 1.0 - e / args.epoch)  # the recipe's poly decay, per epoch
    if d.main:
        print(f"done; last snapshot: {last}\nNext: python test.py --snapshot {last}")
    return last


@distributed.entry
def test(args, d) -> dict:
    if not args.snapshot:  # ImageNet: the ImageNet weights as released (CUB's default comes from out/)
        args.snapshot = pretrained_path(args.arch, "auto")
        if d.main:
            print(f"--snapshot not given: using {args.snapshot} ({args.arch}'s ImageNet weights)")
    samples = _checked_list(DATASETS[args.dataset], args.datapath, args.list, args.clsnum, args.on_bad_image == "skip",
                            args.savepath, d.main)
    validate.check_stage_folder(args.savepath, args.stage, args.force, replaced="its top1top5.npy")
    model = build_classifier(args.arch, args.clsnum)
    load_weights(model, args.snapshot)
    model = place_model(model.eval(), d, channels_last=args.channels_last, compile=args.compile)
    channels_last = channels_last_for(args.channels_last, d.device)
    dtype = amp_dtype(args.amp, d.device)
    data = ImageSet(samples, cls_test_transform(args.size, args.crop, shorter_side=args.resize == "shorter"))
    k = min(5, args.clsnum)
    rows = {}

    def hand_on(host: list, indices: list) -> None:
        for index, h in zip(indices, host[0].tolist()):
            rows[samples[index].name] = (h[0], any(h))

    pipe = HostPipe(d.device, hand_on)
    with torch.inference_mode():
        for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(samples), d), args.batch_size,
                                                  args.num_workers, d), d.main, desc="classify"):
            handle_bad(batch, args.on_bad_image, d)
            for name, _ in batch["bad"]:
                rows[name] = (False, False)  # an unreadable image is a wrong classification, counted
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                logits = model(to_device(batch["image"], d, channels_last)).float()
            labels = batch["label"].to(d.device, non_blocking=True)
            pipe.put([logits.topk(k, 1).indices == labels[:, None]], batch["index"].tolist())   # B x k hits
        pipe.drain()
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
