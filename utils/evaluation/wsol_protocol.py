"""The community protocol (Choe et al., CVPR 2020, clovaai/wsolevaluation; docs/method.md §7) applied to
the seg model: `test.py --protocol wsol`.

Each image is normalised and resized to 224 x 224 (no crop); its score map is the sigmoid of the logits
upsampled to 224 x 224 (bilinear, align_corners=True), min-max normalised per image (a constant map becomes
zeros), saved as float32 `<savepath>/scoremaps/<image_id>.npy` under wsolevaluation's image ids (CUB: the list
name; ImageNet: `val/<file>.JPEG`: the data-set table's wsol_image_id), so `python -m utils.wsol_eval`, or
wsolevaluation itself, gives the same figures from the files, with their published metadata or ours. GT boxes
are scaled to 224 from the original pixels with int truncation. Figures, all from utils.wsol_eval's evaluators:
MaxBoxAcc (largest contour, IoU 50), MaxBoxAccV2 (all contours, mean over IoU 30/50/70) and, on CUB when
`<datapath>/segmentations/` exists, PxAP. OpenImages30k has masks and no boxes: PxAP alone, its GT from
`<datapath>/wsol_metadata/OpenImages/<split>/localization.txt` (instance masks, ignore mask), score maps under
their ids (`scoremaps/test/<class>/<file>.jpg.npy`). Every image of the list is evaluated, as wsolevaluation does.

Scoring a map (up to 100 contour searches per evaluator) is CPU work, done by `--post_workers` processes;
under torchrun each rank scores its shard and the evaluators' counts are merged on rank 0.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from utils.engine import distributed
from utils.data import validate
from utils.data.images import ImageSet
from utils.data.datasets import DATASETS
from utils.engine.loop import (HostPipe, Pending, amp_dtype, autocast, channels_last_for, handle_bad, inference_batches,
                          to_device)
from utils.errors import UserError
from utils.engine.log import maybe_tqdm, write_json
from utils.engine.outputs import Folder, name_too_long
from utils.data.transforms import resize_transform
from utils.stages.vis import EvalPictures
from utils.engine.workers import post_pool
from utils.wsol_eval import (RESIZE_LENGTH, V2_IOUS, BoxEvaluator, PxAPEvaluator, boxes_at_thresholds, iou_plus1,
                             read_metadata, resize_box_224, score_image)


def scoremaps(logits: torch.Tensor) -> torch.Tensor:
    """B x 1 x h x w logits -> B x 224 x 224 float32 score maps in [0, 1] (min-max normalised per image), on
    the logits' device."""
    p = torch.sigmoid(F.interpolate(logits.float(), size=(RESIZE_LENGTH, RESIZE_LENGTH), mode="bilinear",
                                    align_corners=True))[:, 0]
    lo = p.amin((1, 2), keepdim=True)
    span = p.amax((1, 2), keepdim=True) - lo
    # a constant map says nothing about where the object is: zeros, as wsolevaluation's normalisation
    maps = torch.where(span > 0, (p - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return maps.clamp_(0, 1)


class WsolScores:
    """The three evaluators of the protocol; per-rank instances merge into one."""

    def __init__(self, interval: float, pxap: bool, boxes: bool = True) -> None:
        self.boxes = boxes  # OpenImages: masks only, PxAP is its figure
        self.v1 = BoxEvaluator(interval, (50,), multi_contour=False)
        self.v2 = BoxEvaluator(interval, V2_IOUS, multi_contour=True)
        self.pxap = PxAPEvaluator(interval) if pxap else None
        self.count = 0

    def add(self, result: tuple) -> None:
        best_v1, best_v2, hists = result
        self.count += 1
        if self.boxes:
            self.v1.add(best_v1)
            self.v2.add(best_v2)
        if self.pxap is not None:
            self.pxap.add(*hists)

    def merge(self, other: "WsolScores") -> None:
        self.count += other.count
        self.v1.merge(other.v1)
        self.v2.merge(other.v2)
        if self.pxap is not None:
            self.pxap.merge(other.pxap)

    def compute(self) -> dict:
        out = {"pxap": self.pxap.compute() if self.pxap is not None else None}
        if self.boxes:
            v1, v2 = self.v1.compute(), self.v2.compute()
            out.update(maxboxacc=v1["maxboxacc"]["50"], maxboxacc_best_threshold=v1["best_threshold"]["50"],
                       maxboxacc_v2={**v2["maxboxacc"], "mean": v2["mean"]},
                       maxboxacc_v2_best_threshold=v2["best_threshold"])
        return out


def openimages_masks(datapath: str, wsol_name: str, split: str, samples) -> dict:
    """{list name: (instance mask paths, ignore path)} of OpenImages' `<datapath>/wsol_metadata/OpenImages/<split>/`
    (`wsol_name`: OpenImages; written by dataset/prepare.py openimages); every listed image must have its masks
    there."""
    meta = read_metadata(os.path.join(datapath, "wsol_metadata"), wsol_name, split)
    names = samples.names()
    missing = [n for n in names if n not in meta["mask_paths"]]
    if missing:
        raise UserError(f"{meta['folder']}/localization.txt has no mask for {len(missing)} listed image(s), e.g. "
                        f"{missing[0]}: rerun python dataset/prepare.py openimages --force")
    return {n: (meta["mask_paths"][n], meta["ignore_paths"][n]) for n in names}


def evaluate(args, d: distributed.Dist, model: torch.nn.Module, samples: list, split: Optional[str] = None) -> dict:
    """Score every image of `samples` with the eval-mode, placed `model`; rank 0 returns the figures.
    A data set without boxes (OpenImages; `split` = its metadata split): PxAP on the instance masks."""
    dataset = DATASETS[args.dataset]
    masks_only = not dataset.boxes  # OpenImages
    instance_masks = openimages_masks(args.datapath, dataset.wsol_name, split, samples) if masks_only else None
    segmentations = os.path.join(args.datapath, dataset.segmentations) if dataset.segmentations else None
    mask_root = segmentations if segmentations and os.path.isdir(segmentations) else None
    if masks_only:  # ids and mask paths are relative to their OpenImages/ folder: our datapath
        mask_root = args.datapath
    root = os.path.join(args.savepath, "scoremaps") if args.save_scoremaps else None
    if root:  # each image id's folder (CUB: 200 classes), before any map is written through a link
        Folder(args.savepath, "--savepath").check_folders(
            os.path.join("scoremaps", os.path.dirname(dataset.wsol_image_id(s.name))) for s in samples)
        _check_scoremap_names([dataset.wsol_image_id(name) for name in samples.names()])
    channels_last = channels_last_for(args.channels_last, d.device)
    dtype = amp_dtype(args.amp, d.device)
    data = ImageSet(samples, resize_transform(RESIZE_LENGTH))
    scores = WsolScores(args.cam_curve_interval, pxap=mask_root is not None, boxes=not masks_only)
    pictures = EvalPictures(args.vis, args.maskpath, RESIZE_LENGTH) if args.vis else None
    pool = None
    if args.post_workers > 0:
        pool = post_pool(args.post_workers)
    pending, bad = Pending(scores.add), 0  # scores are integer counts: they add up in any order

    def submit(*job) -> None:
        if pool is None:
            scores.add(score_image(*job))
        else:
            pending.add(pool.submit(score_image, *job))

    def hand_on(host: list, batch: dict) -> None:
        maps, finite = host[0].numpy(), host[1]                                     # B x 224 x 224
        validate.check_finite_maps(finite, batch["index"].tolist(), samples, args.snapshot)
        for j, (scoremap, index, (h, w)) in enumerate(zip(maps, batch["index"].tolist(), batch["size"].tolist())):
            s = samples[index]
            gt = None if masks_only else np.array([resize_box_224(b, w, h) for b in s.boxes])
            submit(scoremap, gt, args.cam_curve_interval, mask_root, s.name,
                   os.path.join(root, dataset.wsol_image_id(s.name) + ".npy") if root else None, False,
                   instance_masks[s.name] if masks_only else None)
            if pictures is not None and pictures.wants(index):
                pictures.add(index, s.name, batch["image"][j], scoremap, gt)
        pending.settle(8 * max(1, args.post_workers) * args.batch_size)  # the device must not outrun the pool

    pipe = HostPipe(d.device, hand_on)
    try:
        with torch.inference_mode():
            for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(samples), d), args.batch_size,
                                                      args.num_workers, d), d.main, desc="evaluate (wsol)"):
                for name, reason in batch["bad"]:
                    handle_bad({"bad": [(name, reason)]}, args.on_bad_image, d)
                    gt = None if masks_only else np.zeros((1, 4))  # unused: a failed image scores zero IoU
                    submit(np.zeros((RESIZE_LENGTH, RESIZE_LENGTH)), gt, args.cam_curve_interval, mask_root,
                           name, None, True, instance_masks[name] if masks_only else None)
                    bad += 1
                if "image" not in batch:
                    continue
                with autocast(d.device, dtype):
                    logits = model(to_device(batch["image"], d, channels_last))             # B x 1 x h x w
                pipe.put([scoremaps(logits), torch.isfinite(logits).flatten(1).all(1)], batch)
            pipe.drain()
            pending.settle(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    parts = distributed.gather_objects(d, (scores, bad))
    if pictures is not None:
        pictures.gather(d)
    if not d.main:
        return {}
    for other, _ in parts[1:]:
        scores.merge(other)
    assert scores.count == len(samples), (scores.count, len(samples))
    metrics = {"protocol": "wsol", "count": len(samples), "bad_images": sum(b for _, b in parts),
               "cam_curve_interval": args.cam_curve_interval, **scores.compute(), "scoremaps": root,
               "snapshot": args.snapshot, "list": args.list, **({"split": split} if masks_only else {})}
    os.makedirs(args.savepath, exist_ok=True)
    write_json(os.path.join(args.savepath, "metrics.json"), metrics)
    print_metrics(metrics, segmentations)
    if pictures is not None and not masks_only:
        _write_pictures(pictures, metrics["maxboxacc_best_threshold"], args.savepath)
    print(f"wrote {os.path.join(args.savepath, 'metrics.json')}"
          + (f" and {len(samples) - metrics['bad_images']} score maps to {root}" if root else ""))
    if root:
        _print_wsol_eval_command(root, args.datapath, dataset.wsol_name, split or dataset.wsol_split,
                                 args.cam_curve_interval, masks_only)
    return metrics


def _check_scoremap_names(image_ids: list) -> None:
    """Every score map's name, `<image_id>.npy` (wsolevaluation's), is a name the file system takes: checked
    before the forward, not at the first write of a long name (a legal 255-byte image name)."""
    long = [iid for iid in image_ids if name_too_long(iid + ".npy")]
    if long:
        raise UserError(f"the score map of {long[0]} ({len(long)} such images), {os.path.basename(long[0])}.npy, "
                        f"would be longer than a file name may be (255 bytes): rename the image, or pass "
                        f"--no-save_scoremaps")


def _print_wsol_eval_command(root: str, datapath: str, wsol_name: str, split: str, interval: float,
                             masks_only: bool) -> None:
    """The `python -m utils.wsol_eval` command that scores the saved maps again, where the metadata it reads
    exists (`dataset/prepare.py cub|imagenet|openimages` writes it; `prepare.py folder` does not: a class-folder
    data set has no wsolevaluation metadata), else what it would need."""
    metadata = os.path.join(datapath, "wsol_metadata")
    if not os.path.isdir(os.path.join(metadata, wsol_name, split)):
        print(f"note: python -m utils.wsol_eval scores these maps from wsolevaluation's metadata (image_ids.txt, "
              f"image_sizes.txt, localization.txt), which {datapath} does not have ({metadata}/{wsol_name}/{split}/ "
              f"is missing; dataset/prepare.py folder writes none): the figures above are already its figures")
    elif masks_only:
        print(f"PxAP from these maps: python -m utils.wsol_eval --scoremap_root {root} --metadata_root {metadata} "
              f"--mask_root {datapath} --dataset_name {wsol_name} --split {split} --cam_curve_interval {interval} "
              f"(or wsolevaluation's metadata/ as published)")
    else:
        print(f"MaxBoxAccV2 from these maps: python -m utils.wsol_eval --scoremap_root {root} --metadata_root "
              f"{metadata} --dataset_name {wsol_name} --split {split} --cam_curve_interval {interval} "
              f"--multi_contour_eval true (or wsolevaluation's metadata/ as published)")


def _write_pictures(pictures: EvalPictures, threshold: float, savepath: str) -> None:
    """Masks and boxes at MaxBoxAcc's best CAM threshold, found as the evaluator finds them."""
    def decide(scoremap: np.ndarray, gt: np.ndarray):
        image = (scoremap.astype(np.float64) * 255).astype(np.uint8)
        mask = image > int(threshold * int(image.max()))
        box = boxes_at_thresholds(scoremap, [threshold], multi_contour=False)[0][0]
        return mask, (box if mask.any() else None), float(iou_plus1(box, gt).max()) if mask.any() else 0.0

    paths = pictures.write(Folder(savepath, "--savepath").check_folder("vis"), decide, f"t = {threshold:.2f}")
    print(f"wrote {len(paths)} pictures to {os.path.join(savepath, 'vis')}")


def print_metrics(m: dict, segmentations: Optional[str]) -> None:
    """The figures of `evaluate` as printed; `segmentations`: the folder of pixel masks whose absence explains a
    missing PxAP (CUB's)."""
    print(f"images: {m['count']} (resized to 224 x 224, no crop; CAM thresholds every {m['cam_curve_interval']})"
          f"   unreadable (counted as failures): {m['bad_images']}")
    if "maxboxacc" not in m:  # OpenImages: masks only
        print(f"{'PxAP':12s} {m['pxap']:8.2f}   (OpenImages {m.get('split', '')}, wsolevaluation's MaskEvaluator)")
        return
    print(f"{'':12s} {'IoU':>5s} {'value':>8s} {'best CAM threshold':>19s}")
    print(f"{'MaxBoxAcc':12s} {'50':>5s} {m['maxboxacc']:8.2f} {m['maxboxacc_best_threshold']:19.2f}")
    for i, d in enumerate(map(str, V2_IOUS)):
        print(f"{'MaxBoxAccV2' if i == 0 else '':12s} {d:>5s} {m['maxboxacc_v2'][d]:8.2f} "
              f"{m['maxboxacc_v2_best_threshold'][d]:19.2f}")
    print(f"{'':12s} {'mean':>5s} {m['maxboxacc_v2']['mean']:8.2f}")
    if m["pxap"] is not None:
        print(f"{'PxAP':12s} {'':5s} {m['pxap']:8.2f}")
    elif segmentations:
        print(f"PxAP: not computed, no {segmentations}/ (CUB's masks come as a separate archive, segmentations.tgz)")
