"""The cam stage: train the MFF-Net classifier on image labels, then write the pseudo mask of every
training image (docs/method.md §3, §4).

Mask generation is batched on the device while a pool of worker processes turns each CAM into its
PNG (the post-processing is CPU work of a few ms per image). The three overlap: loader workers
decode ahead, the pool (started while the model loads) takes one task per worker and batch, the
loop blocks only when ~8 batches are queued, and on CUDA the next batch's forward is queued before
this batch's CAMs are handed on (`python -m utils.bench` measures the result). Each PNG is written
atomically, masks already on disk are skipped (an interrupted run resumes), and under torchrun rank 0 lists
the masks to write and each rank writes its own shard of that one list, so every mask is written exactly once.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, wait
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from network import build_mffnet, load_mffnet
from network.backbones import get_backbone
from utils.stages import cli
from utils.engine import distributed, outputs
from utils.data import png, validate
from utils.engine.checkpoint import load_weights
from utils.data.images import ImageSet, mask_name
from utils.data.datasets import DATASETS
from utils.engine.loop import (HostPipe, Pending, Throughput, amp_dtype, autocast, channels_last_for, fit, handle_bad,
                          place_model, to_device)
from utils.errors import UserError
from utils.engine.log import maybe_tqdm
from utils.method.losses import dual_head_loss, single_head_loss
from utils.method.pseudo_mask import EPS
from utils.engine.masks import write_masks
from utils.engine.ring import ring_batches
from utils.data.transforms import mask_transform, train_transform
from utils.stages.vis import pseudo_mask_pictures, tensorboard_hook
from utils.engine.workers import post_pool


@distributed.entry
def train(args, d) -> str:
    torch.manual_seed(args.seed)  # the head (and a scratch backbone) start the same on every rank and run
    dataset = DATASETS[args.dataset]
    samples = dataset.read_list(args.datapath, args.list, with_boxes=False)
    samples = validate.check_names(samples, validate.list_file(args.datapath, args.list), args.clsnum,
                                   skip=args.on_bad_image == "skip", main=d.main)
    validate.check_writable(args.savepath, "--savepath", lock=d.main)
    validate.check_stage_folder(args.savepath, args.stage, args.force)
    dual = dataset.dual_head
    model = build_mffnet(args.clsnum, args.backbone, args.pretrained, dual=dual,
                         **cli.architecture(args.fusion, args.levels, args.mca))
    if args.snapshot:
        load_weights(model, args.snapshot)
    if args.freeze_stem:  # ImageNet recipe: the backbone's stem (ResNet: conv1 + bn1) stays as pretrained
        get_backbone(args.backbone).freeze_stem(model.bkbone)

    def groups(m):
        # the layers a backbone's WSOL form adds (VGG16's conv6, ...) start from scratch like the head, and
        # train at its rate, as wsolevaluation trains them at its classifier's
        new = tuple(getattr(m.bkbone, "new_layers", ()))
        scratch = [p for n, p in m.bkbone.named_parameters() if new and n.startswith(new)]
        backbone = [p for n, p in m.bkbone.named_parameters() if p.requires_grad and not (new and n.startswith(new))]
        return [(m.head_parameters() + scratch, args.lr), (backbone, args.backbone_lr)]

    data = ImageSet(samples, train_transform(args.size, args.crop), seed=args.seed)
    last = fit(cli.train_config(args), d, model, data, dual_head_loss if dual else single_head_loss, groups,
               on_epoch_end=tensorboard_hook(samples, args.size, args.crop, "cam", _gt_class_cam))
    if d.main:
        print(f"done; last snapshot: {last}")
    return last


def _gt_class_cam(model, images: torch.Tensor, labels: torch.Tensor) -> tuple:
    """TensorBoard pictures: the ground-truth class's CAM (eval mode), / max as for the pseudo masks."""
    maps = model(images).float()                                                  # B x K x h x w
    cam = maps[torch.arange(len(labels), device=maps.device), labels][:, None]    # B x 1 x h x w
    cam = cam / (cam.amax((2, 3), keepdim=True) + EPS)
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0], None


# ------------------------------------------------------------------------------------ pseudo masks
def missing_masks(maskpath: str, names: list) -> tuple:
    """(todo, broken, removed): the indices of the `names` whose mask is not yet a whole PNG in `maskpath`, how
    many of those were files that are not (zero bytes, cut off, another format: written again), and how many
    temporaries of killed runs (`<mask>.<pid>.tmp`) were removed. Each folder is listed once (ImageNet's 1.28M
    masks lie in 1,000 folders: 1,000 listings instead of 1.28M stat calls, which a network file system answers
    one round trip at a time); each mask found is checked by its first and last bytes (`png.whole_pngs`)."""
    listed, removed = {}, 0

    def files(folder: str) -> set:
        nonlocal removed
        if folder not in listed:
            try:
                with os.scandir(os.path.join(maskpath, folder)) as entries:
                    found = [(e.name, e.is_file()) for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                found = []
            removed += outputs.remove_temporaries(os.path.join(maskpath, folder),
                                                  [n for n, _ in found if outputs.is_temporary(n)])
            listed[folder] = {n for n, is_file in found if is_file}
        return listed[folder]

    todo, present = [], []
    for i, name in enumerate(names):
        mask = mask_name(name)
        (present if os.path.basename(mask) in files(os.path.dirname(mask)) else todo).append(i)
    whole = png.whole_pngs([os.path.join(maskpath, mask_name(names[i])) for i in present])
    broken = [i for i, ok in zip(present, whole) if not ok]
    return sorted(todo + broken), len(broken), removed


def _start_pool(workers: int) -> tuple:
    """(pool or None, futures done once its workers are up). Started before the model is built, the
    workers import their modules meanwhile, not during the first batches on the cores the forward needs."""
    if workers <= 0:
        return None, []
    pool = post_pool(workers)
    # the executor starts a worker per task while none is idle; an empty task imports the mask code
    return pool, [pool.submit(write_masks, []) for _ in range(workers)]


@distributed.entry
def make_masks(args, d) -> dict:
    if not args.snapshot:
        raise UserError("--snapshot is required: the cam model to take the CAMs from (e.g. out/model-32.pth)")
    samples = DATASETS[args.dataset].read_list(args.datapath, args.list, with_boxes=False)
    samples = validate.check_names(samples, validate.list_file(args.datapath, args.list), args.clsnum, masks=True,
                                   skip=args.on_bad_image == "skip", main=d.main)
    validate.check_writable(args.maskpath, "--maskpath", lock=d.main)
    # the masks sit beside a run of this stage (out/masks), whose folder takes the --vis pictures too
    beside = os.path.dirname(os.path.abspath(args.maskpath))
    validate.check_stage_folder(beside, args.stage, args.force, "--maskpath", "its vis/ pictures",
                                named=f"the folder of --maskpath {args.maskpath}, {beside},")
    out = args.maskpath
    folder = outputs.Folder(out, "--maskpath")
    folder.check_folders(os.path.dirname(mask_name(name)) for name in samples.names())
    if args.overwrite:
        todo, broken, removed = list(range(len(samples))), 0, 0
    else:
        # rank 0 scans, every rank takes its list: a rank scanning for itself could count masks that rank 0 has
        # written since, and the shards of lists that differ leave some images in no rank's shard
        todo, broken, removed = distributed.broadcast_object(d, missing_masks(out, samples.names()) if d.main else None)
    writer = png.resolve(args.png_writer)
    if d.main:
        print(f"{len(samples)} images in {args.list}; {len(samples) - len(todo)} masks already in {out}, "
              f"{len(todo)} to write (PNG writer: {png.describe(writer)})"
              + (f"; {broken} files there were not whole PNGs (cut off, empty or of another format) and are "
                 f"written again" if broken else "")
              + (f"; {removed} temporaries of an interrupted run removed" if removed else ""))
    pool, ready = _start_pool(args.post_workers)
    try:
        model = load_mffnet(args.snapshot, args.clsnum, args.backbone,
                            **cli.architecture(args.fusion, args.levels, args.mca))
        model = place_model(model.eval(), d, channels_last=args.channels_last, compile=args.compile)
        channels_last, dtype = channels_last_for(args.channels_last, d.device), amp_dtype(args.amp, d.device)
        # decoded and transformed by the loader workers straight into a ring of shared batches (utils.engine.ring)
        batches = ring_batches(samples, todo[d.rank::d.world], args.batch_size, mask_transform(args.size).into,
                               (args.size, args.size, 3), args.num_workers, d)
        masks = MaskWriter(samples, out, args.prior, writer, args.snapshot, pool, ready,
                           args.post_workers, args.batch_size, d.device)
        bad = _run_masks(model, batches, masks, d, args.on_bad_image, channels_last, dtype)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    written, rate = masks.written, masks.rate
    counts = np.array(distributed.gather_objects(d, (written, bad))).sum(0).tolist()
    if d.main:
        print(f"wrote {counts[0]} pseudo masks to {out}" + (f"; {counts[1]} bad images skipped" if counts[1] else "")
              + (f" ({rate.images_per_s:.1f} images/s after the first batch)" if rate.images else ""))
        if args.vis > 0:  # drawn from the PNGs: what the seg stage will read, masks written earlier included
            vis = outputs.Folder(os.path.dirname(os.path.normpath(out)), "--maskpath's parent").check_folder("vis")
            paths = pseudo_mask_pictures(samples, out, args.vis, vis)
            print(f"wrote {len(paths)} pictures to {vis}")
    return {"written": counts[0], "bad": counts[1], "existing": len(samples) - len(todo),
            "images_per_s": rate.images_per_s, "seconds": rate.seconds}


class MaskWriter:
    """The mask loop's CAMs on their way to PNGs, so that the device, the loader and the pool overlap.

    `put(cams, indices, sizes)` starts the copy of a batch's B x h x w CAMs to the host (`HostPipe`: on CUDA
    the batch is handed on one batch late, after the next forward is queued). Once on the host, they must be
    finite (a broken snapshot would give empty masks silently) and the mask of each sample (`indices` into
    `samples`, of original `sizes` H, W) goes to `maskpath` (`pseudo_mask.write_masks` by the PNG `writer`;
    `prior`: the name of channel 1's prior, `--prior`): in `pool`, one task per worker (of `workers`) and batch (of
    `batch_size`), or here without a pool. The pool's `ready` futures are awaited first; the loop blocks only
    when ~8 batches' tasks are pending (a fast GPU must not outrun the pool forever). `finish()` hands on and
    writes the rest; `written` counts the masks, `rate` their throughput.
    """

    def __init__(self, samples, maskpath: str, prior: str, writer: str, snapshot: str,
                 pool: Optional[ProcessPoolExecutor], ready: list, workers: int, batch_size: int,
                 device: torch.device):
        self.samples, self.maskpath, self.prior, self.writer, self.snapshot = samples, maskpath, prior, writer, snapshot
        self.pool = pool
        self.chunk = math.ceil(batch_size / max(1, workers))    # one task per worker and batch
        self.backlog = 8 * math.ceil(batch_size / self.chunk)   # tasks: ~8 batches queued at most
        self.pending, self.written, self.rate = Pending(), 0, Throughput()
        wait(ready)
        self.pipe = HostPipe(device, self._hand_on)

    def put(self, cams: torch.Tensor, indices: list, sizes: list) -> None:
        self.pipe.put([cams], indices, sizes)

    def finish(self) -> None:
        self.pipe.drain()
        self.pending.settle(0)
        self.rate.stop()

    def _hand_on(self, host: list, indices: list, sizes: list) -> None:
        cams = host[0]
        validate.check_finite_maps(torch.isfinite(cams).flatten(1).all(1), indices, self.samples, self.snapshot)
        items = [(cam, w, h, os.path.join(self.maskpath, mask_name(self.samples[i].name)), self.prior)
                 for cam, i, (h, w) in zip(cams.numpy(), indices, sizes)]
        self.rate.handed_on(len(items))
        self.written += len(items)
        if self.pool is None:
            write_masks(items, self.writer)
            return
        for k in range(0, len(items), self.chunk):
            self.pending.add(self.pool.submit(write_masks, items[k:k + self.chunk], self.writer))
        self.pending.settle(self.backlog)


def _run_masks(model: torch.nn.Module, batches, masks: MaskWriter, d, on_bad_image: str, channels_last: bool,
               dtype: Optional[torch.dtype]) -> int:
    """The mask loop: each batch's CAMs of the labelled class from the placed, eval-mode `model`, handed to
    `masks`; returns how many bad files were skipped."""
    bad = 0
    with torch.inference_mode():
        for batch in maybe_tqdm(batches, d.main, desc="pseudo masks"):
            bad += handle_bad(batch, on_bad_image, d)
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                maps = model(to_device(batch["image"], d, channels_last, hwc=True))   # B x K x h x w
            labels = batch["label"].to(d.device, non_blocking=True)                  # pinned on CUDA: no wait
            cams = maps[torch.arange(len(labels), device=d.device), labels].float()   # B x h x w
            masks.put(cams, batch["index"].tolist(), batch["size"].tolist())
        masks.finish()
    return bad
