"""The seg stage: train the class-agnostic MFF-Net on the pseudo masks (docs/method.md §5), then
localise: mask -> largest contour -> box -> IoU with the ground truth (§6). `--protocol wsol` evaluates
the same model with the community's protocol instead (§7, utils/evaluation/wsol_protocol.py).

Evaluation is batched; under torchrun each rank takes every world-th image (no padding, so no image
is counted twice) and rank 0 gathers the per-image records. An image whose mask is empty, or whose
file is unreadable under `--on-bad-image skip`, is a failed localisation that stays in the count.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from network import build_mffnet, load_mffnet
from utils.stages import cli
from utils.engine import distributed
from utils.data import validate
from utils.evaluation import wsol_protocol
from utils.method.boxes import best_iou, largest_box, localisation_metrics
from utils.engine.checkpoint import load_weights
from utils.data.images import ImageSet
from utils.data.datasets import DATASETS, DataSet
from utils.engine.loop import (HostPipe, Throughput, amp_dtype, autocast, channels_last_for, fit, handle_bad,
                          inference_batches, place_model, to_device)
from utils.errors import UserError
from utils.data.lists import count_classes, subset
from utils.engine.log import maybe_tqdm, write_json
from utils.method.losses import seg_loss
from utils.engine.outputs import Folder
from utils.results import match_top1top5, read_top1top5, write_boxes_csv
from utils.data.transforms import boxes_to_eval_frame, eval_transform, train_transform
from utils.stages.vis import EvalPictures, tensorboard_hook


@distributed.entry
def train(args, d) -> str:
    torch.manual_seed(args.seed)  # the head (and a scratch backbone) start the same on every rank and run
    dataset = DATASETS[args.dataset]
    if not os.path.isdir(args.maskpath):
        raise UserError(f"pseudo-mask folder not found: {args.maskpath}\n  Make the masks first: "
                        f"python ../{dataset.stage_prefix}-cam/test.py --snapshot <cam model>, or pass --maskpath")
    samples = dataset.read_list(args.datapath, args.list, with_boxes=False)
    samples = validate.check_names(samples, validate.list_file(args.datapath, args.list), masks=True,
                                   skip=args.on_bad_image == "skip", main=d.main)
    validate.check_writable(args.savepath, "--savepath", lock=d.main)
    validate.check_stage_folder(args.savepath, args.stage, args.force)
    model = build_mffnet(1, args.backbone, args.pretrained, seg=True,
                         **cli.architecture(args.fusion, args.levels, args.mca))
    if args.snapshot:
        load_weights(model, args.snapshot)

    def groups(m):
        return [(m.head_parameters(), args.lr), (list(m.bkbone.parameters()), args.backbone_lr)]

    data = ImageSet(samples, train_transform(args.size, args.crop), maskpath=args.maskpath, seed=args.seed)
    last = fit(cli.train_config(args), d, model, data, seg_loss, groups,
               on_epoch_end=tensorboard_hook(samples, args.size, args.crop, "predicted_mask", _predicted_mask))
    if d.main:
        print(f"done; last snapshot: {last}")
    return last


def _predicted_mask(model, images: torch.Tensor, labels: torch.Tensor) -> tuple:
    """TensorBoard pictures: the foreground probability (B x H x W) and its mask at 0.5."""
    prob = torch.sigmoid(F.interpolate(model(images).float(), size=images.shape[-2:], mode="bilinear",
                                       align_corners=True))[:, 0]
    return prob, prob > 0.5


# -------------------------------------------------------------------------------------- evaluation
def eval_samples(dataset: DataSet, datapath: str, listname: str, skip: bool, main: bool, workers: int,
                 num_classes: Optional[int] = None) -> tuple:
    """The evaluation list's samples with their boxes, checked (names, labels when `num_classes` is given,
    boxes: utils/data/validate.py). Returns (samples to evaluate, names left out for unscorable boxes)."""
    samples = dataset.read_list(datapath, listname, with_boxes=True)
    list_path = validate.list_file(datapath, listname)
    samples = validate.check_names(samples, list_path, num_classes, skip=skip, main=main)
    return validate.check_boxes(samples, list_path, validate.box_source(dataset.box_file, datapath, list_path),
                                skip=skip, main=main, workers=workers)


@distributed.entry
def evaluate(args, d) -> dict:
    if not args.snapshot:
        raise UserError("--snapshot is required: the seg model to evaluate (e.g. out/model-2.pth)")
    if args.vis < 0:
        raise UserError(f"--vis takes a number of images >= 0, got {args.vis}")
    dataset = DATASETS[args.dataset]
    architecture = cli.architecture(args.fusion, args.levels, args.mca)
    if dataset.boxes:
        samples, bad_boxes = eval_samples(dataset, args.datapath, args.list, skip=args.on_bad_image == "skip",
                                          main=d.main, workers=max(1, args.num_workers),
                                          num_classes=_class_count(dataset, args.datapath, args.clsnum))
    else:  # OpenImages: wsolevaluation's protocol on the --split (val: where choices are made; test: reported)
        _refuse_box_flags(args.protocol, args.vis, args.threshold, args.top1top5)
        args.list = args.list or f"{args.split}.txt"  # recorded in metrics.json
        samples = dataset.read_list(args.datapath, args.list, with_boxes=False)
        samples = validate.check_names(samples, validate.list_file(args.datapath, args.list), args.clsnum,
                                       skip=args.on_bad_image == "skip", main=d.main)
    validate.check_writable(args.savepath, "--savepath", lock=d.main)
    validate.check_stage_folder(args.savepath, args.stage, args.force,
                                replaced="its metrics.json, boxes.csv, vis/ and scoremaps/")
    if args.protocol == "wsol":
        if d.main:
            _wsol_notes(samples, args.top1top5, dataset.excluded)
        model = place_model(_seg_model(args.snapshot, args.backbone, architecture), d,
                            channels_last=args.channels_last, compile=args.compile)
        return wsol_protocol.evaluate(args, d, model, samples, split=None if dataset.boxes else args.split)
    excluded = [s.name for s in samples if os.path.basename(s.name) in dataset.excluded]
    samples = subset(samples, [i for i, name in enumerate(samples.names()) if name not in excluded])
    table = None
    if args.top1top5:
        table = match_top1top5(read_top1top5(args.top1top5, args.allow_pickle), [s.name for s in samples],
                               args.top1top5)
    model = place_model(_seg_model(args.snapshot, args.backbone, architecture), d, channels_last=args.channels_last,
                        compile=args.compile)
    channels_last = channels_last_for(args.channels_last, d.device)
    dtype = amp_dtype(args.amp, d.device)
    data = ImageSet(samples, eval_transform(args.size, args.crop))
    labels = {s.name: s.label for s in samples}
    pictures = EvalPictures(args.vis, args.maskpath, args.size, args.crop) if args.vis else None
    records, rate = [], Throughput()

    def hand_on(host: list, batch: dict) -> None:
        masks, finite = host[0].numpy(), host[1]                                       # B x crop x crop uint8
        probs = host[2] if len(host) > 2 else None                                     # a batch with pictures
        validate.check_finite_maps(finite, batch["index"].tolist(), samples, args.snapshot)
        rate.handed_on(len(masks))
        for j, (mask, index, (h, w)) in enumerate(zip(masks, batch["index"].tolist(), batch["size"].tolist())):
            s = samples[index]
            box = largest_box(mask)
            gt = boxes_to_eval_frame(s.boxes, w, h, args.size, args.crop)
            records.append(_record(labels, s.name, box, best_iou(box, gt), table))
            if pictures is not None and pictures.wants(index):
                pictures.add(index, s.name, batch["image"][j], probs[j].numpy(), gt)

    pipe = HostPipe(d.device, hand_on)
    with torch.inference_mode():
        for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(samples), d), args.batch_size,
                                                  args.num_workers, d), d.main, desc="evaluate"):
            for name, reason in batch["bad"]:
                handle_bad({"bad": [(name, reason)]}, args.on_bad_image, d)
                records.append(_record(labels, name, None, 0.0, table, bad=True))
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                logits = model(to_device(batch["image"], d, channels_last))             # B x 1 x h x w
            prob = torch.sigmoid(F.interpolate(logits.float(), size=(args.crop, args.crop), mode="bilinear",
                                               align_corners=True))[:, 0]
            # the probabilities come to the host only for a batch with pictures, in the same copies as the masks
            drawn = pictures is not None and any(pictures.wants(i) for i in batch["index"].tolist())
            pipe.put([(prob > args.threshold).to(torch.uint8), torch.isfinite(logits).flatten(1).all(1)]
                     + ([prob] if drawn else []), batch)
        pipe.drain()
    rate.stop()
    records = [r for part in distributed.gather_objects(d, records) for r in part]
    if pictures is not None:
        pictures.gather(d)
    if not d.main:
        return {}
    order = {s.name: i for i, s in enumerate(samples)}
    records.sort(key=lambda r: order[r["name"]])
    metrics = localisation_metrics(records)
    metrics.update(threshold=args.threshold, bad_images=sum(r["bad"] for r in records), excluded=excluded,
                   unscorable_boxes=bad_boxes,
                   snapshot=args.snapshot, list=args.list)
    os.makedirs(args.savepath, exist_ok=True)
    write_json(os.path.join(args.savepath, "metrics.json"), metrics)
    write_boxes_csv(os.path.join(args.savepath, "boxes.csv"), records)
    print_metrics(metrics)
    print(f"wrote {os.path.join(args.savepath, 'metrics.json')} and boxes.csv"
          + (f" ({rate.images_per_s:.1f} images/s after the first batch)" if rate.images else ""))
    if pictures is not None:
        def decide(prob: np.ndarray, gt: np.ndarray) -> tuple:
            mask = prob > args.threshold
            box = largest_box(mask.astype(np.uint8))
            return mask, box, best_iou(box, gt)

        paths = pictures.write(Folder(args.savepath, "--savepath").check_folder("vis"), decide,
                               f"p > {args.threshold:g}")
        print(f"wrote {len(paths)} pictures to {os.path.join(args.savepath, 'vis')}")
    return dict(metrics, images_per_s=rate.images_per_s, seconds=rate.seconds)  # speed: not in metrics.json


def _class_count(dataset: DataSet, datapath: str, clsnum: Optional[int]) -> Optional[int]:
    """The number of classes the evaluation's labels must lie below: --clsnum, else, for a data set that counts
    its classes (CUB layout), the lines of its classes.txt; None where neither is known (the ImageNet reader
    checks its labels against the synsets). A label outside would be a class of its own in the class means."""
    if clsnum is not None or not dataset.count_classes:
        return clsnum
    return count_classes(datapath) if os.path.isfile(os.path.join(datapath, "classes.txt")) else None


def _refuse_box_flags(protocol: str, vis: int, threshold: Optional[float], top1top5: Optional[str]) -> None:
    """A data set without boxes (OpenImages) is scored by PxAP alone: the flags of the box protocols would be
    ignored, so they are refused rather than silently dropped."""
    unused = [flag for flag, given in (("--protocol spol", protocol != "wsol"), ("--vis", vis > 0),
                                       ("--threshold", threshold is not None),
                                       ("--top1top5", top1top5 is not None)) if given]
    if unused:
        raise UserError(f"{', '.join(unused)}: not used on OpenImages, which is scored by PxAP alone (no mask "
                        f"threshold, no boxes, no classifier); to look at masks, run localize.py --vis on the val "
                        f"images")


def _seg_model(snapshot: str, backbone: str, architecture: dict) -> torch.nn.Module:
    """The seg model of `snapshot`, in eval mode; `architecture`: the MFF-Net switches given (cli.architecture),
    which must match the network the snapshot records."""
    return load_mffnet(snapshot, 1, backbone, seg=True, **architecture).eval()


def _wsol_notes(samples: list, top1top5: Optional[str], excluded: tuple) -> None:
    """What --protocol wsol does differently from the default (`excluded`: the files the SPOL protocol leaves
    out), said once."""
    if top1top5:
        print("note: --top1top5 is not used by --protocol wsol (its figures are class-agnostic)")
    left_out = [s.name for s in samples if os.path.basename(s.name) in excluded]
    if left_out:
        print(f"note: --protocol wsol evaluates every listed image, as wsolevaluation does "
              f"({', '.join(left_out)} included)")


def _record(labels: dict, name: str, box, iou: float, table, bad: bool = False) -> dict:
    top1, top5 = table[name] if table is not None else (None, None)
    return {"name": name, "label": labels[name], "box": box, "iou": iou, "correct": iou > 0.5,
            "empty": box is None, "bad": bad, "top1": top1, "top5": top5}


def print_metrics(m: dict) -> None:
    print(f"images: {m['count']}   empty masks (counted as failures): {m['empty']}   "
          f"unreadable (counted as failures): {m.get('bad_images', 0)}")
    if m.get("excluded"):
        print(f"left out as in the original (wrong label): {', '.join(m['excluded'])}")
    if m.get("unscorable_boxes"):
        print(f"left out (--on-bad-image skip): {len(m['unscorable_boxes'])} images whose box cannot be scored")
    rows = [("GT-known Loc", "gt_known_loc")]
    if "top1_loc" in m:
        rows = [("Top-1 Loc", "top1_loc"), ("Top-5 Loc", "top5_loc"), ("GT-known Loc", "gt_known_loc"),
                ("Top-1 Cls", "top1_cls"), ("Top-5 Cls", "top5_cls")]
    print(f"{'':14s} {'image-level':>12s} {'class mean':>12s}")
    for label, key in rows:
        print(f"{label:14s} {m[key]:12.2f} {m[key + '_class_mean']:12.2f}")
