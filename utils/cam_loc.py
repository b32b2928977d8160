"""CAM-only localisation: GT-known Loc of a cam-stage model's own class maps, boxed by the seg stage's rule.

The paper's Figure 1(b) scores CAMs themselves, before any pseudo mask or segmentation model. Here each
test image goes through the seg stage's evaluation transform (normalise, resize to --size, centre crop
--crop: docs/method.md §6); the map of its ground-truth class is normalised as for the pseudo masks
(`cam / (max + 1e-6)`, §4), upsampled to the crop (bilinear, align_corners=True, as the seg logits are),
thresholded at --threshold, and the box of the largest contour counts when its IoU with a GT box is > 0.5
(§6; an empty mask is a failure). The default threshold, 0.2 of the map's maximum, is the original CAM
paper's box rule (Zhou et al. 2016: regions above 20 % of the maximum) and SPOL's CUB mask threshold.

A fixed threshold favours maps of one shape over another (a product of features is peakier than a sum),
so GT-known Loc is also reported at every threshold 0.05, 0.10, ..., 0.95 with the best of them, a
threshold-free view in the spirit of wsolevaluation's MaxBoxAcc.

    python -m utils.cam_loc --snapshot cub200-cam/out/model-32.pth          # -> cub200-cam/out/cam_loc.json
    python -m utils.cam_loc --snapshot out/model-12.pth --datapath demo/CUB_200_2011 --backbone resnet18 \\
        --size 144 --crop 128

The network is rebuilt from the snapshot (its recorded --fusion/--levels/--mca), its class count from its
output layer.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `python utils/cam_loc.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from network import load_mffnet  # noqa: E402
from utils.stages import cli  # noqa: E402
from utils.engine import distributed  # noqa: E402
from utils.method.boxes import best_iou, largest_box, localisation_metrics  # noqa: E402
from utils.data.images import ImageSet  # noqa: E402
from utils.data.datasets import DATASETS  # noqa: E402
from utils.engine.loop import (HostPipe, amp_dtype, autocast, channels_last_for, handle_bad, inference_batches,  # noqa: E402
                          place_model, to_device)
from utils.errors import UserError, run_main  # noqa: E402
from utils.data.lists import subset  # noqa: E402
from utils.engine.log import maybe_tqdm, write_json  # noqa: E402
from utils.method.pseudo_mask import EPS  # noqa: E402
from utils.stages.stage_seg import eval_samples  # noqa: E402
from utils.data.transforms import boxes_to_eval_frame, eval_transform  # noqa: E402

CURVE = tuple(round(0.05 * k, 2) for k in range(1, 20))  # thresholds of the threshold-free view


def normalised_cams(maps: torch.Tensor, labels: torch.Tensor, crop: int) -> torch.Tensor:
    """B x K x h x w class maps -> B x crop x crop float32 (on their device): each image's GT-class map /
    (its max + EPS, as the pseudo masks'), upsampled bilinearly (align_corners=True)."""
    cam = maps[torch.arange(len(labels), device=maps.device), labels].float()[:, None]   # B x 1 x h x w
    cam = cam / (cam.amax((2, 3), keepdim=True) + EPS)
    return F.interpolate(cam, size=(crop, crop), mode="bilinear", align_corners=True)[:, 0]


def ious_at(cam: np.ndarray, gt: np.ndarray, thresholds: list) -> list:
    """Best IoU with the GT boxes of the largest contour's box of `cam > t`, for each threshold t."""
    return [best_iou(largest_box((cam > t).astype(np.uint8)), gt) for t in thresholds]


@distributed.entry
def evaluate(args, d) -> dict:
    if not args.snapshot:
        raise UserError("--snapshot is required: the cam stage's model (e.g. cub200-cam/out/model-32.pth)")
    if not 0 < args.threshold < 1:
        raise UserError(f"--threshold is a fraction of the map's maximum in (0, 1), got {args.threshold}")
    dataset = DATASETS[args.dataset]
    samples, bad_boxes = eval_samples(dataset, args.datapath, args.list, skip=args.on_bad_image == "skip",
                                      main=d.main, workers=max(1, args.num_workers), num_classes=args.clsnum)
    samples = subset(samples, [i for i, name in enumerate(samples.names())
                               if os.path.basename(name) not in dataset.excluded])
    thresholds = sorted(set(CURVE) | {args.threshold})
    architecture = cli.architecture(args.fusion, args.levels, args.mca)
    model = load_mffnet(args.snapshot, args.clsnum, args.backbone, **architecture)
    model = place_model(model.eval(), d, channels_last=args.channels_last, compile=args.compile)
    channels_last = channels_last_for(args.channels_last, d.device)
    dtype = amp_dtype(args.amp, d.device)
    data = ImageSet(samples, eval_transform(args.size, args.crop))
    records, position = [], {s.name: i for i, s in enumerate(samples)}

    def hand_on(host: list, indices: list, sizes: list) -> None:
        for cam, index, (h, w) in zip(host[0].numpy(), indices, sizes):
            gt = boxes_to_eval_frame(samples[index].boxes, w, h, args.size, args.crop)
            records.append((index, ious_at(cam, gt, thresholds), not (cam > args.threshold).any()))

    pipe = HostPipe(d.device, hand_on)
    with torch.inference_mode():
        for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(samples), d), args.batch_size,
                                                  args.num_workers, d), d.main, desc="CAM localisation"):
            for name, reason in batch["bad"]:  # unreadable under --on-bad-image skip: a failure, still counted
                handle_bad({"bad": [(name, reason)]}, args.on_bad_image, d)
                records.append((position[name], [0.0] * len(thresholds), True))
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                maps = model(to_device(batch["image"], d, channels_last))                  # B x K x h x w
            cams = normalised_cams(maps, batch["label"].to(d.device, non_blocking=True), args.crop)
            pipe.put([cams], batch["index"].tolist(), batch["size"].tolist())
        pipe.drain()
    records = sorted(r for part in distributed.gather_objects(d, records) for r in part)
    if not d.main:
        return {}
    metrics = summarise(samples, records, thresholds, args.threshold)
    metrics.update(snapshot=args.snapshot, list=args.list, size=args.size, crop=args.crop, unscorable_boxes=bad_boxes)
    savepath = args.savepath or os.path.dirname(os.path.abspath(args.snapshot))
    os.makedirs(savepath, exist_ok=True)
    write_json(os.path.join(savepath, "cam_loc.json"), metrics)
    print(f"CAM-only GT-known Loc on {metrics['count']} images: {metrics['gt_known_loc']:.2f} at threshold "
          f"{args.threshold:g} (class mean {metrics['gt_known_loc_class_mean']:.2f}; empty masks {metrics['empty']}); "
          f"best {metrics['best_gt_known_loc']:.2f} at {metrics['best_threshold']:g}")
    print(f"wrote {os.path.join(savepath, 'cam_loc.json')}")
    return metrics


def summarise(samples: list, records: list, thresholds: list, threshold: float) -> dict:
    """Figures from (sample index, IoUs at `thresholds`, mask empty at `threshold`) records: SPOL's metrics
    at `threshold`, and GT-known Loc at every threshold with the best one."""
    ious = np.array([r[1] for r in records]).reshape(len(records), len(thresholds))
    at = thresholds.index(threshold)
    per_image = [{"name": samples[i].name, "label": samples[i].label, "iou": float(row[at]), "empty": empty,
                  "top1": None, "top5": None} for (i, _, empty), row in zip(records, ious)]
    metrics = localisation_metrics(per_image)
    curve = {f"{t:g}": float(100.0 * (ious[:, k] > 0.5).mean()) for k, t in enumerate(thresholds)}
    best = max(curve, key=lambda t: (curve[t], -float(t)))
    metrics.update(threshold=threshold, gt_known_loc_by_threshold=curve, best_gt_known_loc=curve[best],
                   best_threshold=float(best))
    return metrics


def main(argv=None) -> dict:
    parser = cli.make_parser(__doc__, train=False)
    cli.add_network_args(parser, train=False)
    g = parser.add_argument_group("CAM localisation")
    g.add_argument("--threshold", type=float, default=0.2,
                   help="box the region above this fraction of the CAM's maximum (0.2: the CAM paper's rule)")
    # the data sets with boxes (utils/data/datasets.py), which GT-known Loc needs
    g.add_argument("--dataset", choices=[name for name, d in DATASETS.items() if d.boxes], default="cub",
                   help="layout of --datapath")
    # --savepath: the folder of cam_loc.json; not given, the snapshot's own folder
    parser.set_defaults(datapath="../dataset/CUB_200_2011", list="val.txt", savepath=None)
    return evaluate(cli.parse(parser, __file__, argv))


if __name__ == "__main__":
    run_main(main)
