"""Throughput of every stage on one device, in one run, on synthetic CUB-like data it writes itself
(or on your own CUB_200_2011 folder, with your trained cam model's CAMs).

    python -m utils.bench                                  # auto device, ResNet-50, the paper's input sizes
    python -m utils.bench --device cpu --json bench.json   # under 2 minutes on 2 CPU cores
    python -m utils.bench --device cuda --images 4096 --compile
    python -m utils.bench --datapath /data/CUB_200_2011 --cam_snapshot cub200-cam/out/model-32.pth
    python -m utils.bench --scale                          # the training loop at 12.8k, 128k and 1.28M images

What is measured, on JPEGs of ~500 x 375 like CUB's (a temporary folder, removed afterwards; with
--datapath, --images images of each of its lists, spread evenly over them):
  data_loading    JPEG decode + normalise + resize 256 in the --num_workers loader workers, through the
                  mask stage's loader (`utils.engine.ring`)
  cam_forward     the bare batched forward of the CAM model (200 classes or --cam_snapshot's, 256 x 256)
  pseudo_masks    mask generation end to end, through `stage_cam.make_masks` itself: decode, forward,
                  post-processing and PNG writes in the --post_workers pool
  seg_forward     the bare batched forward of the seg model (224 x 224 centre crop, as evaluation)
  seg_eval        evaluation end to end, through `stage_seg.evaluate` itself (largest contour, IoU)
  cpu_per_mask    the CPU work of one pseudo mask on one core, ms per image, on the list's images and
                  the ground-truth CAMs of cam_forward: JPEG decode (`read_image`), normalise + resize
                  (the stage's transform), post-processing (`make_pseudo_mask`) and PNG encoding by the
                  stage's writer; their sum `cpu_ms_per_mask`. Beside them, in the same run and on the
                  same masks, OpenCV's PNG writer at its defaults (`opencv_png_ms`, zlib level 1: the
                  stage's writer before fpng): machines differ by up to 2x in speed, so the targets are
                  ratios to it. Then the hand-off of the batches from the loader workers to the main
                  process (the stage's ring of shared batches, `utils.engine.ring`; per image: the workers' and
                  the main process's CPU); the two kinds of worker measured whole (a loader worker from
                  decode to hand-off, a post worker from CAM to written PNG: what the steps cost
                  together, memory and file writes included); and the masks/s that the cores of a
                  16-core node reach when this CPU work is the bound (a GPU node, whose forward is
                  cheap): 16 / (loader + post + main process), at most 1 / the main process's share
                  (one core)
  cam_train_step  forward + backward + SGD step of the CUB cam model (dual head) at 224
  seg_train_step  the same for the seg model and its loss
The end-to-end figures count the images after the first batch (loader start-up and the first batch
are left out, as the bare forwards leave out their warm-up) and are given as a ratio to the bare
forward over the same images. Each end-to-end stage runs --rounds times, each run between two passes
of its bare forward (bare, stage, bare, stage, bare): cam_forward and seg_forward are all their passes
together and the end-to-end figures all their rounds (total images over total time; the JSON lists
each pass and round), so that a ratio is not the draw of a shared machine whose speed drifts by 10-30 %
from one pass to the next. The models have random weights. Speed does not depend on them, except the
post-processing's, which depends on the CAMs: a random model's are noisy, with many small regions (~80 us
each on one core; `regions_per_cam` says how many there were: ~15 per map with the default ResNet-50's
random weights, ~8 with ResNet-18's), a trained model's have a few large ones, whose Gaussians cost by
their area (~10-20 ns per pixel of their boxes): the demo's trained ResNet-18 maps (~3 regions) cost
about three quarters of the random ResNet-50 maps' post-processing.
--cam_snapshot takes the CAMs (cam_forward, pseudo_masks, cpu_per_mask) from a trained cam model instead.

Settings follow the stages: on CUDA bf16 autocast, channels-last and pinned memory (--amp,
--channels_last); --compile compiles every model. Peak memory: on CUDA
`torch.cuda.max_memory_allocated` during each stage; on the CPU the peak RSS of this process so far
(`getrusage`; it only grows) and of its largest finished child process.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional

import cv2
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # `python utils/bench.py` as well as `python -m utils.bench`
    sys.path.insert(0, REPO)

from dataset.prepare import prepare_cub  # noqa: E402
from dataset.synthetic import make_cub  # noqa: E402
from network import build_mffnet, load_mffnet  # noqa: E402
from utils.stages import cli, stage_cam, stage_seg  # noqa: E402
from utils.data import png  # noqa: E402
from utils import scale  # noqa: E402
import utils.engine.loop as engine  # noqa: E402
from utils.method import losses  # noqa: E402
from utils.data.images import read_image  # noqa: E402
from utils.data.datasets import CUB  # noqa: E402
from utils.data.lists import list_lines  # noqa: E402
from utils.engine.distributed import Dist, setup  # noqa: E402
from utils.engine.loop import amp_dtype, autocast, channels_last_for, sgd, train_step  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.method.pseudo_mask import normalise_cam  # noqa: E402
from utils.engine.masks import make_pseudo_mask, regions, write_masks  # noqa: E402
from utils.engine.ring import RingBatches, ring_batches, slots_for  # noqa: E402
from utils.engine.workers import post_pool  # noqa: E402
from utils.data.transforms import mask_transform  # noqa: E402

CLASSES = 200        # CUB: the CAM model's output channels
SIZE, CROP = 256, 224
UNIQUE = 256         # distinct synthetic images per list; more are hard links to them (same decode cost)
DEFAULTS = {         # device type -> (images per measurement, batch size, timed training steps, warm-up)
    "cpu": (32, 4, 1, 1),      # ResNet-50 runs at ~2-6 images/s on 2 cores: the whole run stays < 2 min
    "cuda": (2048, 128, 20, 5),
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # a None default is device-dependent: the help says how
        return action.help if action.default is None else super()._get_help_string(action)


def _per_device(i: int) -> str:
    return f"(default: {DEFAULTS['cpu'][i]} on the CPU, {DEFAULTS['cuda'][i]} on CUDA)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    cli.add_backbone_arg(p)
    p.add_argument("--images", type=int, help=f"images per list, measured by every inference stage {_per_device(0)}")
    p.add_argument("--batch_size", type=int, help=f"images per forward / training step {_per_device(1)}")
    p.add_argument("--train_steps", type=int, help=f"timed training steps per model {_per_device(2)}")
    p.add_argument("--warmup", type=int, help=f"untimed batches before each bare forward, untimed steps (at least "
                                              f"one) before the timed training steps {_per_device(3)}")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of each end-to-end stage, each between two passes of its bare forward")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers")
    p.add_argument("--post_workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="pseudo-mask post-processing processes")
    p.add_argument("--png_writer", choices=png.WRITERS, default="auto", help="the mask stage's PNG encoder")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision; auto: bf16 on CUDA, off on the CPU")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--datapath", help="a prepared CUB_200_2011 folder (its train.txt and val.txt, from "
                                      "dataset/prepare.py cub; or your own folder, prepared with boxes): measure on "
                                      "--images of its images instead of synthetic ones")
    p.add_argument("--cam_snapshot", help="a trained cam model (a cub200-cam model-N.pth, or the authors' snapshot) "
                                          "for the CAMs, whose post-processing cost depends on them (default: random "
                                          "weights, 200 classes); --backbone must be its backbone")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--workdir", help="where the synthetic data and outputs go (default: a temporary folder, "
                                     "removed at the end)")
    p.add_argument("--verbose", action="store_true", help="show the stages' own output")
    p.add_argument("--scale", action="store_true",
                   help="instead: the training loop's own costs (per-step overhead, start-up, memory of the main "
                        "process and the loader workers) with ImageNet-layout lists of --scale_sizes images "
                        "(utils/scale.py; CPU, about a minute)")
    p.add_argument("--scale_sizes", type=int, nargs="+", default=list(scale.SIZES), help="--scale: list lengths")
    return p


# ------------------------------------------------------------------------------------------- helpers
class Timer:
    """Wall-clock seconds of a block, synchronising CUDA on both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


def child_peak_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2 ** 20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def quiet(verbose: bool):
    """The stages print progress bars and figures: keep them out of the benchmark's table."""
    if verbose:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


# ---------------------------------------------------------------------------------------------- data
def synthetic_cub(root: str, images: int, seed: int = 0, classes: int = 8) -> str:
    """A CUB_200_2011 folder with `images` train and `images` val images (~500 x 375 JPEGs) and lists, of
    up to `classes` classes."""
    unique = min(images, UNIQUE)
    classes = min(classes, unique)
    per_class = math.ceil(unique / classes)
    make_cub(root, num_classes=classes, train_per_class=per_class, val_per_class=per_class, seed=seed,
             min_size=375, max_size=500, segmentations=False)
    prepare_cub(root, force=True)
    for split in ("train", "val"):
        path = os.path.join(root, f"{split}.txt")
        lines = [line for line in open(path).read().splitlines() if line.strip()][:unique]
        extra = []
        for k in range(images - len(lines)):  # more images: hard links to the same files, other names
            name, rest = lines[k % len(lines)].split(",", 1)
            stem, ext = os.path.splitext(name)
            copy = f"{stem}_{k}{ext}"
            src, dst = (os.path.join(root, "images", n) for n in (name, copy))
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            extra.append(f"{copy},{rest}")
        with open(path, "w") as f:
            f.write("\n".join(lines + extra) + "\n")
    return root


def linked_cub(source: str, root: str, images: int) -> str:
    """A CUB_200_2011 folder at `root` that is the prepared folder `source` with `images` lines of each list
    (train.txt, val.txt), spread evenly over it (the lists run class by class); the rest is linked to `source`."""
    lists = {}
    for split in ("train", "val"):
        path = os.path.join(source, f"{split}.txt")
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing: --datapath must be a prepared CUB_200_2011 folder (python "
                            f"dataset/prepare.py cub --root {source})")
        lines = [line.rstrip("\r\n") for _, line in list_lines(path)]  # the lists' reading rule: UTF-8, a BOM fine
        if len(lines) < images:
            raise UserError(f"{path} lists {len(lines)} images, fewer than --images {images}")
        lists[split] = [lines[i * len(lines) // images] for i in range(images)]
    if os.path.lexists(root):
        raise UserError(f"{root} exists: with --datapath, --workdir must not hold a CUB_200_2011 folder")
    os.makedirs(root)
    for name in os.listdir(source):
        if name not in ("train.txt", "val.txt"):
            os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(root, name))
    for split, lines in lists.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def cam_model(snapshot: str, backbone: str) -> torch.nn.Module:
    """The CAM model of the mask stage, as the stage loads it: `snapshot`'s weights and classes (--cam_snapshot,
    or the bench's random weights, written to a file before the run)."""
    return load_mffnet(snapshot, None, backbone)


def stage_args(kind: str, a, root: str, snapshot: str, out: str) -> argparse.Namespace:
    """The stage's own parser, as its test.py builds it, with the benchmark's settings."""
    p = cli.make_parser("", train=False)
    cli.add_network_args(p, train=False)
    if kind == "cam":
        cli.add_mask_args(p)
        p.set_defaults(list="train.txt", clsnum=a.classes)
        extra = ["--maskpath", os.path.join(out, "masks"), "--post_workers", str(a.post_workers), "--overwrite",
                 "--png_writer", a.png_writer]
    else:
        cli.add_eval_args(p)
        p.set_defaults(list="val.txt", threshold=CUB.threshold)
        extra = ["--savepath", out]
    argv = ["--datapath", root, "--snapshot", snapshot, "--device", str(a.device), "--backbone", a.backbone,
            "--batch_size", str(a.batch_size), "--num_workers", str(a.num_workers), "--amp", a.amp,
            "--size", str(SIZE), "--crop", str(CROP)] + extra
    if a.channels_last is not None:
        argv.append("--channels_last" if a.channels_last else "--no-channels_last")
    if a.compile:
        argv.append("--compile")
    args = p.parse_args(argv)
    args.dataset, args.stage = CUB.name, f"cub200-{kind}"  # as cli.parse records a stage script's data set and stage
    return args


def handoff_ms(image: np.ndarray, samples: list, a, n: int = 512) -> tuple:
    """CPU ms per image, (loader workers, main process), of handing batches on as the mask stage's loader
    does (`utils.engine.ring`): claim a slot, send the batch's small tensors and a view of the slot, receive it
    (and pin it on CUDA). The images are decoded once beforehand (`image`) and not transformed: only the
    hand-off is left.

    Two passes, of a start-up's worth of batches and of `n` images more; the difference leaves out the
    workers' start-up. The workers' CPU time is the kernel's account of the finished children.
    """
    workers = max(1, a.num_workers)

    def cpu(images: int) -> tuple:
        return children_cpu_ms(lambda: stage_loader(samples, images, workers, a, read=lambda path: image,
                                                    fill=lambda decoded, out: None))

    base = slots_for(workers) * a.batch_size
    with one_thread():
        (k0, m0), (k1, m1) = cpu(base), cpu(base + n)
    return max(0.0, k1 - k0) / n, max(0.0, m1 - m0) / n


def stage_loader(samples: list, images: int, workers: int, a, read: Callable = read_image,
                 fill: Optional[Callable] = None) -> None:
    """One pass of the mask stage's own loader (`ring.ring_batches`, filled by the stage's transform unless
    `fill` is given) with `workers` workers over `images` images of `samples`, repeated as needed; the
    exhausted loader has joined its workers (their CPU time is then in RUSAGE_CHILDREN)."""
    for _ in stage_batches(samples, images, workers, a, read, fill):
        pass


def stage_batches(samples: list, images: int, workers: int, a, read: Callable = read_image,
                  fill: Optional[Callable] = None) -> RingBatches:
    data = [samples[i % len(samples)] for i in range(images)]
    return ring_batches(data, list(range(images)), a.batch_size, fill or mask_transform(SIZE).into, (SIZE, SIZE, 3),
                        workers, Dist(device=a.device), read=read)


def children_cpu_ms(run: Callable[[], None]) -> tuple:
    """CPU ms of (the finished child processes, this process) while `run()` runs: the kernel's account of
    the children, so `run` must have joined them."""
    kids, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    run()
    kids2, me2 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return ((kids2.ru_utime + kids2.ru_stime - kids.ru_utime - kids.ru_stime) * 1e3,
            (me2.ru_utime + me2.ru_stime - me.ru_utime - me.ru_stime) * 1e3)


def worker_ms(samples: list, cams: list, sizes: list, writer: str, work: str, a, n: int = 0) -> tuple:
    """CPU ms per image of the mask stage's two kinds of worker, measured whole, as `cpu_per_mask`'s steps
    are not: (a loader worker: decode, transform, collate, hand-off and whatever their memory costs; a
    post worker: post-processing, PNG encoding and the atomic write, as `write_masks` tasks of a batch).

    Loader: the stage's own (`stage_loader`), over `samples` repeated; post: one pool worker
    writing the masks of `cams` (of images of `sizes`) into `work`. Each runs twice, on a start-up's worth
    of images and on `n` more (default: 128 or 4 batches); the difference per image leaves start-up out.
    """
    n = n or max(128, 4 * a.batch_size)
    workers = max(1, a.num_workers)

    def load(images: int) -> None:
        stage_loader(samples, images, workers, a)

    def post(masks: int) -> None:
        items = [(cams[i % len(cams)], *sizes[i % len(cams)], os.path.join(work, "masks", f"{i % len(cams)}.png"))
                 for i in range(masks)]
        with post_pool(1) as pool:
            for task in [pool.submit(write_masks, items[i:i + a.batch_size], writer)
                         for i in range(0, masks, a.batch_size)]:
                task.result()  # a worker's error is raised here

    base = slots_for(workers) * a.batch_size  # every slot of the ring written once: the pages are in
    with one_thread():
        loader = (children_cpu_ms(lambda: load(base + n))[0] - children_cpu_ms(lambda: load(base))[0]) / n
        posted = (children_cpu_ms(lambda: post(a.batch_size + n))[0] - children_cpu_ms(lambda: post(a.batch_size))[0])
    return max(0.0, loader), max(0.0, posted / n)


# -------------------------------------------------------------------------------------- measurements
def prepare_model(model: torch.nn.Module, a) -> torch.nn.Module:
    model = model.to(a.device, memory_format=torch.channels_last if a.cl else torch.preserve_format)
    return torch.compile(model) if a.compile else model


def bare_forward(model: torch.nn.Module, batches: list, a, keep: Optional[Callable] = None) -> tuple:
    """(images/s, [keep(i, output of batch i)]) of the forward alone over device-resident batches."""
    model.eval()
    with torch.inference_mode():
        for i in range(a.warmup):
            with autocast(a.device, a.dtype):
                model(batches[i % len(batches)])
        kept = []
        with Timer(a.device) as t:
            for i, x in enumerate(batches):
                with autocast(a.device, a.dtype):
                    out = model(x)
                if keep is not None:
                    kept.append(keep(i, out))
    return sum(len(x) for x in batches) / t.seconds, kept


def training(model: torch.nn.Module, loss_fn: Callable, batch: dict, a) -> float:
    """Images/s of train_step (forward, backward, SGD step) on one device-resident batch."""
    model.train()
    optimizer = sgd([(list(model.parameters()), 1e-4)], 0.9, 1e-4, True, a.device)  # the stages' step: fused on CUDA
    scaler = torch.amp.GradScaler("cuda") if a.dtype == torch.float16 else None
    for _ in range(max(1, a.warmup)):
        train_step(model, loss_fn, batch, optimizer, scaler, a.device, a.dtype)
    with Timer(a.device) as t:
        for _ in range(a.train_steps):
            train_step(model, loss_fn, batch, optimizer, scaler, a.device, a.dtype)
    return a.train_steps * len(batch["image"]) / t.seconds


@contextlib.contextmanager
def one_thread():
    """One OpenCV and one torch thread, as in the loader and pool workers (and no idle torch threads
    spinning on this process's CPU clock)."""
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])


def cpu_per_mask(paths: list, cams: list, sizes: list, writer: str, repeats: int = 5) -> dict:
    """ms per image on one core of each step of a pseudo mask, the median of `repeats` rounds.

    Each image goes through the steps as in the workers: decode then transform (a loader worker),
    post-process then encode (a pool worker), its arrays freed before the next image (keeping them
    would add page faults the workers do not pay); in a loop of its own, each mask is made again (in
    OpenCV's channel order) and encoded by OpenCV's writer, as the stage's workers did before fpng.
    Each step is timed on its own with this process's CPU clock (under `one_thread`), which
    other load on a shared machine inflates less than wall time, and every round passes over all the
    images (each up to 8 times) in each loop, so a drift in the machine's speed reaches every step
    alike. `cams[i]` is the CAM of `paths[i]`, whose image is `sizes[i]` = (width, height).
    """
    transform, row = mask_transform(SIZE), np.empty((SIZE, SIZE, 3), dtype=np.float32)  # as into a ring slot
    passes = max(1, math.ceil(min(256, 8 * len(paths)) / len(paths)))  # >= 256 calls a step, or 8 per image
    steps = ("decode_ms", "transform_ms", "postprocess_ms", "png_encode_ms", "opencv_png_ms")
    times = {k: [] for k in steps}
    clock = time.process_time
    with one_thread():
        for _ in range(repeats):
            spent = dict.fromkeys(steps, 0.0)
            for _ in range(passes):
                for path in paths:
                    t0 = clock()
                    image = read_image(path)
                    t1 = clock()
                    transform.into(image, row)
                    spent["decode_ms"] += t1 - t0
                    spent["transform_ms"] += clock() - t1
                for cam, (width, height) in zip(cams, sizes):
                    t0 = clock()
                    mask = make_pseudo_mask(cam, width, height, rgb=True)
                    t1 = clock()
                    png.encode_rgb(mask, writer)
                    spent["postprocess_ms"] += t1 - t0
                    spent["png_encode_ms"] += clock() - t1
                for cam, (width, height) in zip(cams, sizes):
                    mask = make_pseudo_mask(cam, width, height)
                    t0 = clock()
                    png.encode_opencv(mask)
                    spent["opencv_png_ms"] += clock() - t0
            for key in steps:
                times[key].append(spent[key] / (passes * len(paths)) * 1e3)
    r = {k: float(np.median(v)) for k, v in times.items()}
    r["cpu_ms_per_mask"] = r["decode_ms"] + r["transform_ms"] + r["postprocess_ms"] + r["png_encode_ms"]
    bgr = [make_pseudo_mask(cam, w, h) for cam, (w, h) in zip(cams, sizes)]
    r.update(png_writer=png.describe(writer), images=len(paths),
             regions_per_cam=float(np.mean([len(regions(normalise_cam(cam))[1]) for cam in cams])),
             png_ratio_to_opencv=r["png_encode_ms"] / r["opencv_png_ms"],
             cpu_ratio_to_opencv_png=r["cpu_ms_per_mask"] / r["opencv_png_ms"],
             png_kb_per_mask=float(np.mean([len(png.encode_rgb(m[..., ::-1].copy(), writer)) for m in bgr])) / 1e3,
             opencv_png_kb_per_mask=float(np.mean([png.encode_opencv(m).size for m in bgr])) / 1e3)
    return r


class Stages(dict):
    """name -> figures of one measurement, with the peak memory of its window (see `peak`)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        reset_peak(device)

    def peak(self) -> tuple:
        """(peak MB, peak MB of a finished child process or None on CUDA) since the last `peak` or `add`;
        starts the next window (on the CPU the figures only grow: peak RSS so far)."""
        window = peak_mb(self.device), child_peak_mb() if self.device.type == "cpu" else None
        reset_peak(self.device)
        return window

    def add(self, name: str, images_per_s: float, images: int, peak: Optional[tuple] = None, **extra) -> None:
        """Record a stage; `peak`: its memory window when not the one just ending (`peak()`)."""
        mb, child_mb = peak or self.peak()
        self[name] = {"images_per_s": images_per_s, "images": images, "peak_memory_mb": mb, **extra}
        if child_mb is not None:
            self[name]["peak_child_memory_mb"] = child_mb


def most(*windows: tuple) -> tuple:
    """The larger of each figure of some `Stages.peak` windows."""
    return tuple(None if None in v else max(v) for v in zip(*windows))


def measure_inputs(a, root: str, stages: Stages) -> tuple:
    """Data loading: the mask stage's loader over the list once and five times (the difference leaves the
    workers' start-up out); returns the batches of a first pass, on the device: ([B x 3 x 256 x 256 images],
    [B labels], [(width, height)] of every image)."""
    samples = CUB.read_list(root, "train.txt", with_boxes=False)
    d = Dist(device=a.device)
    images, labels, sizes = [], [], []
    for b in stage_batches(samples, len(samples), a.num_workers, a):
        # a copy: the batch's slot takes a later batch once the next one is asked for. On CUDA the device tensor is
        # that copy, made from the pinned slot without a pageable clone, and waited for before the slot goes back
        cuda = a.device.type == "cuda"
        images.append(engine.to_device(b["image"] if cuda else b["image"].clone(), d, a.cl, hwc=True))
        if cuda:
            torch.cuda.current_stream(a.device).synchronize()
        labels.append(b["label"].to(a.device))
        sizes += [(w, h) for h, w in b["size"].tolist()]
    seconds = []
    for times in (1, 5):
        with Timer(a.device) as t:
            stage_loader(samples, times * len(samples), a.num_workers, a)
        seconds.append(t.seconds)
    n = 4 * len(samples)
    stages.add("data_loading", n / max(seconds[1] - seconds[0], 1e-9), n, workers=a.num_workers)
    return images, labels, sizes


def alternate(bare: Callable[[bool], float], stage: Callable[[], tuple], rounds: int, stages: Stages) -> tuple:
    """bare, stage, bare, ..., stage, bare: `rounds` runs of an end-to-end stage, each between two passes of
    the bare forward over the same images, so that the stage's ratio to the bare forward is not a draw of
    a shared machine whose speed drifts by 10-30 % from one pass to the next.

    `bare(first)` -> images/s of one pass; `stage()` -> (images/s after its first batch, its seconds).
    Returns (bare images/s: all passes' images over their time, [each pass's], stage images/s: likewise
    over the rounds, [each round's], peak-memory windows (bare, stage)).
    """
    bare_rates, bare_peaks, runs, stage_peaks = [], [], [], []
    for k in range(rounds + 1):
        bare_rates.append(bare(k == 0))
        bare_peaks.append(stages.peak())
        if k < rounds:
            runs.append(stage())
            stage_peaks.append(stages.peak())
    bare_rate = len(bare_rates) / sum(1 / r for r in bare_rates)          # equal images per pass
    stage_rate = sum(r * t for r, t in runs) / sum(t for _, t in runs)    # images over seconds
    return bare_rate, bare_rates, stage_rate, [r for r, _ in runs], most(*bare_peaks), most(*stage_peaks)


def measure_masks(a, work: str, images: list, labels: list, stages: Stages) -> np.ndarray:
    """Bare CAM forward and `make_masks` end to end, alternating (`alternate`); returns the GT-class CAMs
    of the first pass (N x 32 x 32). Both use the same weights (--cam_snapshot's, or the bench's cam.pth): the
    post-processing's cost depends on the CAMs."""
    snapshot = a.cam_snapshot or os.path.join(work, "cam.pth")
    kept = []

    def bare(first: bool) -> float:
        model = prepare_model(cam_model(snapshot, a.backbone), a)   # not held during the stage
        keep = (lambda i, maps: maps[torch.arange(len(maps), device=a.device), labels[i]]) if first else None
        rate, cams = bare_forward(model, images, a, keep=keep)
        kept.extend(cams)
        return rate

    def stage() -> tuple:
        with quiet(a.verbose):  # --overwrite: each round writes every mask
            r = stage_cam.make_masks(stage_args("cam", a, os.path.join(work, "CUB_200_2011"), snapshot,
                                                os.path.join(work, "cam")))
        return r["images_per_s"], r["seconds"]

    bare_rate, passes, rate, rounds, bare_peak, stage_peak = alternate(bare, stage, a.rounds, stages)
    cams = torch.cat(kept).float().cpu().numpy()
    stages.add("cam_forward", bare_rate, len(passes) * len(cams), peak=bare_peak, input=[SIZE, SIZE], passes=passes,
               classes=a.classes)
    stages.add("pseudo_masks", rate, a.rounds * len(cams), peak=stage_peak, rounds=rounds,
               post_workers=a.post_workers, ratio_to_cam_forward=rate / bare_rate)
    return cams


def measure_eval(a, work: str, images: list, stages: Stages) -> list:
    """Bare seg forward on the centre crops and `evaluate` end to end, alternating; returns the crops."""
    off = (SIZE - CROP) // 2
    memory_format = torch.channels_last if a.cl else torch.contiguous_format
    crops = [x[:, :, off:off + CROP, off:off + CROP].contiguous(memory_format=memory_format) for x in images]

    def bare(first: bool) -> float:
        model = load_mffnet(os.path.join(work, "seg.pth"), 1, a.backbone, seg=True)   # the stage's weights
        return bare_forward(prepare_model(model, a), crops, a)[0]

    def stage() -> tuple:
        with quiet(a.verbose):
            m = stage_seg.evaluate(stage_args("seg", a, os.path.join(work, "CUB_200_2011"),
                                              os.path.join(work, "seg.pth"), os.path.join(work, "seg")))
        return m["images_per_s"], m["seconds"]

    bare_rate, passes, rate, rounds, bare_peak, stage_peak = alternate(bare, stage, a.rounds, stages)
    n = sum(len(x) for x in crops)
    stages.add("seg_forward", bare_rate, len(passes) * n, peak=bare_peak, input=[CROP, CROP], passes=passes)
    stages.add("seg_eval", rate, a.rounds * n, peak=stage_peak, rounds=rounds, ratio_to_seg_forward=rate / bare_rate)
    return crops


def measure_training(a, image: torch.Tensor, label: torch.Tensor, stages: Stages) -> None:
    """train_step of the CUB cam model (dual head) and of the seg model on one 224 x 224 batch."""
    batch = {"image": image, "label": label}
    model = prepare_model(build_mffnet(CLASSES, a.backbone, dual=True), a)
    stages.add("cam_train_step", training(model, losses.dual_head_loss, batch, a), len(image) * a.train_steps,
               steps=a.train_steps)
    del model
    target = (torch.rand(len(image), CROP, CROP, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    batch["mask"] = torch.stack([target, torch.ones_like(target)], 1).to(a.device)   # B x 2 x 224 x 224
    model = prepare_model(build_mffnet(1, a.backbone, seg=True), a)
    stages.add("seg_train_step", training(model, losses.seg_loss, batch, a), len(image) * a.train_steps,
               steps=a.train_steps)


def run(a) -> dict:
    images, batch_size, train_steps, warmup = DEFAULTS[a.device.type if a.device.type in DEFAULTS else "cuda"]
    a.images, a.batch_size = a.images or images, a.batch_size or batch_size
    a.train_steps = a.train_steps or train_steps
    a.warmup = warmup if a.warmup is None else a.warmup
    if a.images < 2 * a.batch_size:
        raise UserError(f"--images {a.images} < 2 x --batch_size {a.batch_size}: the end-to-end figures leave "
                        f"the first batch out and need at least one more")
    a.dtype = amp_dtype(a.amp, a.device)
    a.cl = channels_last_for(a.channels_last, a.device)
    # a snapshot's classes; loading it here stops a bad one before any work
    a.classes = cam_model(a.cam_snapshot, a.backbone).linear.out_channels if a.cam_snapshot else CLASSES
    work = a.workdir or tempfile.mkdtemp(prefix="spol-bench-")
    try:
        root = os.path.join(work, "CUB_200_2011")
        if a.datapath:
            linked_cub(a.datapath, root, a.images)
        else:
            with quiet(a.verbose):
                synthetic_cub(root, a.images, classes=min(8, a.classes))
        torch.manual_seed(0)  # random weights: the stages load them from these files
        if not a.cam_snapshot:
            torch.save(build_mffnet(CLASSES, a.backbone).state_dict(), os.path.join(work, "cam.pth"))
        torch.save(build_mffnet(1, a.backbone, seg=True).state_dict(), os.path.join(work, "seg.pth"))
        stages = Stages(a.device)
        images, labels, sizes = measure_inputs(a, root, stages)
        cams = measure_masks(a, work, images, labels, stages)       # bare forward, then the stage: close in time
        crops = measure_eval(a, work, images, stages)
        n = min(len(cams), UNIQUE)  # further images are links to these files: the same work
        samples = CUB.read_list(root, "train.txt", with_boxes=False)[:n]  # the loader's order: cams[i] is theirs
        cpu = cpu_per_mask([s.path for s in samples], list(cams[:n]), sizes[:n], png.resolve(a.png_writer))
        cpu["handoff_workers_ms"], cpu["handoff_main_ms"] = handoff_ms(read_image(samples[0].path), samples, a)
        cpu["loader_worker_ms"], cpu["post_worker_ms"] = worker_ms(samples, list(cams[:n]), sizes[:n],
                                                                   png.resolve(a.png_writer), work, a)
        # all the CPU work per mask, the workers' measured whole, over 16 cores; the main process's share is
        # also a serial bound
        total = cpu["loader_worker_ms"] + cpu["post_worker_ms"] + cpu["handoff_main_ms"]
        cpu["node16_masks_per_s"] = min(16e3 / total, 1e3 / max(cpu["handoff_main_ms"], 1e-9))
        stages["cpu_per_mask"] = dict(cpu, images_per_s_per_core=1e3 / cpu["cpu_ms_per_mask"])
        measure_training(a, crops[0], labels[0], stages)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "device": str(a.device), "device_name": device_name(a.device), "backbone": a.backbone,
        "batch_size": a.batch_size, "images": a.images, "rounds": a.rounds, "num_workers": a.num_workers,
        "post_workers": a.post_workers, "amp": str(a.dtype).replace("torch.", "") if a.dtype else "off",
        "channels_last": a.cl, "compile": a.compile, "torch": torch.__version__, "opencv": cv2.__version__,
        "data": os.path.abspath(a.datapath) if a.datapath else "synthetic",
        "cam_weights": os.path.abspath(a.cam_snapshot) if a.cam_snapshot else "random",
        "postprocess_ms_per_image": cpu["postprocess_ms"], "cpu_ms_per_mask": cpu["cpu_ms_per_mask"],
        "png_encode_ms": cpu["png_encode_ms"], "opencv_png_ms": cpu["opencv_png_ms"], "png_writer": cpu["png_writer"],
        "node16_masks_per_s": cpu["node16_masks_per_s"], "stages": dict(stages),
    }


def table(r: dict) -> str:
    lines = [f"SPOL bench: {r['device']} ({r['device_name']}), {r['backbone']}, batch {r['batch_size']}, "
             f"{r['images']} images, amp {r['amp']}, channels_last {r['channels_last']}, compile {r['compile']}, "
             f"torch {r['torch']}",
             f"data: {r['data']}; CAM model weights: {r['cam_weights']}",
             f"{'stage':16s} {'images/s':>10s} {'peak MB':>9s}  notes"]
    s = r["stages"]
    n = len(s["pseudo_masks"]["rounds"])
    rounds = f"{n} rounds, each between bare passes" if n > 1 else "1 round, between bare passes"
    notes = {"data_loading": f"{r['num_workers']} loader workers, decode + normalise + resize {SIZE}",
             "cam_forward": f"{s['cam_forward']['classes']} classes, {SIZE} x {SIZE}",
             "pseudo_masks": f"{s['pseudo_masks']['ratio_to_cam_forward']:.2f} x cam_forward (make_masks, "
                             f"{r['post_workers']} post worker{'s' if r['post_workers'] != 1 else ''}, {rounds})",
             "seg_forward": f"{CROP} x {CROP}",
             "seg_eval": f"{s['seg_eval']['ratio_to_seg_forward']:.2f} x seg_forward (evaluate, {rounds})",
             "cam_train_step": "dual head, 224", "seg_train_step": "224"}
    for name, note in notes.items():
        lines.append(f"{name:16s} {s[name]['images_per_s']:10.2f} {s[name]['peak_memory_mb']:9.0f}  {note}")
    c = s["cpu_per_mask"]
    lines.append(f"{'cpu_per_mask':16s} {c['images_per_s_per_core']:10.1f} {'':9s}  {c['cpu_ms_per_mask']:.2f} ms per "
                 f"image per core = decode {c['decode_ms']:.2f} + normalise/resize {c['transform_ms']:.2f} + "
                 f"post-processing {c['postprocess_ms']:.2f} ({c['regions_per_cam']:.1f} regions per CAM) + PNG "
                 f"{c['png_encode_ms']:.2f} ({c['png_writer']})")
    lines.append(f"{'':16s} {'':10s} {'':9s}  yardstick, OpenCV's PNG writer: {c['opencv_png_ms']:.2f} ms; PNG "
                 f"{c['png_ratio_to_opencv']:.2f} x it, CPU per mask {c['cpu_ratio_to_opencv_png']:.2f} x it; "
                 f"{c['png_kb_per_mask']:.0f} KB per mask ({c['opencv_png_kb_per_mask']:.0f} KB by OpenCV)")
    lines.append(f"{'':16s} {'':10s} {'':9s}  hand-off from the loader workers: {c['handoff_workers_ms']:.2f} ms "
                 f"(workers) + {c['handoff_main_ms']:.2f} ms (main process) more")
    lines.append(f"{'':16s} {'':10s} {'':9s}  the workers measured whole, per image: loader "
                 f"{c['loader_worker_ms']:.2f} ms (decode to hand-off), post {c['post_worker_ms']:.2f} ms (CAM to "
                 f"written PNG)")
    lines.append(f"{'':16s} {c['node16_masks_per_s']:10.0f} {'':9s}  masks/s of a 16-core node where the CPU work is "
                 f"the bound (a GPU node): 16 / (loader + post + main process), at most 1 / the main process's share")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> dict:
    a = get_args_parser().parse_args(argv)
    if a.scale:
        if len(a.scale_sizes) < 2 or min(a.scale_sizes) < 1024:
            raise UserError("--scale_sizes: two list lengths or more, each of at least 1024 images")
        result = scale.run(tuple(sorted(a.scale_sizes)), workers=min(a.num_workers, 2), workdir=a.workdir,
                           verbose=a.verbose)
        print(scale.table(result))
        _write_json(result, a.json)
        return result
    a.device = setup(a.device).device  # on CUDA also the current device, as in the stages
    for flag in ("batch_size", "images", "train_steps", "warmup", "rounds"):
        if getattr(a, flag) is not None and getattr(a, flag) < (0 if flag == "warmup" else 1):
            raise UserError(f"--{flag} {getattr(a, flag)} is out of range")
    result = run(a)
    print(table(result))
    _write_json(result, a.json)
    return result


def _write_json(result: dict, path: Optional[str]) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
