"""What the training loop's own costs do as the list grows to ImageNet's 1,281,167 images (`python -m utils.bench
--scale`): the time per step around the model step, the start-up to the first step, and the memory of the main
process and of each loader worker.

Each size runs in a process of its own (its memory is its own): an ImageNet-layout train.txt of n lines
(1,000 classes) goes through the ImageNet stages' own path: `read_list`, `validate.check_names` (with the
mask-name check of the seg stage), `ImageSet`, and `engine.fit` with its sampler and loader. Two things are
stand-ins, so that only the loop's bookkeeping is left to measure: every image is one small array held in
memory (no file is read: the list's names need not exist), and the model is a 1 x 1 convolution. A step's
overhead is its wall time minus the time inside `train_step`, over the steps after the first few.

Memory: the main process's resident set (VmRSS) and each loader worker's private memory (its pages that
are not shared with the main process: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup), both read
after the timed steps. Forked workers share the main process's pages until they write them; reading a
Python object writes its reference count, so per-sample Python objects would be copied page by page into
every worker as the epoch touched them (`data.SampleTable` keeps the samples in numpy arrays instead).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np
import torch

from utils.stages import cli
from utils.data import validate
import utils.engine.loop as engine
from utils.data.images import ImageSet
from utils.data.datasets import IMAGENET
from utils.engine.distributed import Dist

SIZES = (12_810, 128_100, 1_281_167)   # ImageNet's train list and a tenth and a hundredth of it
CLASSES = 1000
TARGETS = {"overhead_ratio": 1.1, "overhead_ms": 5.0, "startup_s": 60.0, "worker_memory_ratio": 1.2}


def write_imagenet_list(root: str, n: int) -> None:
    """`root`/train.txt of `n` ImageNet-style lines (`nSYNSET/nSYNSET_k.JPEG label`, classes in turn) and
    an empty train/ (the names need no files here)."""
    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    with open(os.path.join(root, "train.txt"), "w") as f:
        for i in range(n):
            c = i % CLASSES
            f.write(f"n{c:08d}/n{c:08d}_{i // CLASSES}.JPEG {c}\n")


def private_mb(pid: int) -> float:
    """The pages of process `pid` that are its own (not shared with another process), in MB."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        kb = sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return kb / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def children() -> list:
    """The pids of this process's child processes (the loader workers)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


class TinyModel(torch.nn.Module):
    """A 1 x 1 convolution and BatchNorm: a model step of well under a millisecond."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, CLASSES, 1), torch.nn.BatchNorm2d(CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


def measure(root: str, n: int, steps: int, warmup: int, batch_size: int, workers: int, savepath: str) -> dict:
    """One size, in this process: start-up, per-step overhead and memory of ImageNet cam-stage training. The
    `steps` timed steps (after `warmup` untimed ones) stay inside the first epoch."""
    steps = min(steps, -(-n // batch_size) - warmup - 2)
    t0 = time.perf_counter()
    samples = IMAGENET.read_list(root, "train.txt", with_boxes=False)
    t_read = time.perf_counter()
    samples = validate.check_names(samples, os.path.join(root, "train.txt"), CLASSES, masks=True)
    t_check = time.perf_counter()
    image = np.full((2, 2, 3), 128, np.uint8)
    data = ImageSet(samples, lambda im, mask, seed: (torch.from_numpy(im).permute(2, 0, 1).float(), None),
                    read=lambda path: image)
    starts, inside, cpu_starts, cpu_inside, memory = [], [], [], [], {}
    step_fn = engine.train_step

    def timed_step(*args, **kwargs):
        starts.append(time.perf_counter())
        cpu_starts.append(time.thread_time())
        loss = step_fn(*args, **kwargs)
        inside.append(time.perf_counter() - starts[-1])
        cpu_inside.append(time.thread_time() - cpu_starts[-1])
        if len(starts) == warmup + steps:  # after the timed steps: the memory the epoch has made so far
            memory.update(main_rss_mb=rss_mb(), worker_private_mb=[private_mb(p) for p in children()])
        return loss

    args = argparse.Namespace(
        batch_size=batch_size, amp="off", channels_last=False, compile=False, sync_bn=False, resume=None, seed=0,
        epoch=1, num_workers=workers, print_freq=20, snapshot_every=0, snapshot_from=1, save_every=0,
        max_steps=warmup + steps + 1, on_bad_image="stop", list="train.txt", momentum=0.9, weight_decay=1e-4,
        nesterov=True, savepath=savepath)
    engine.train_step = timed_step
    try:
        engine.fit(cli.train_config(args), Dist(), TinyModel(), data, lambda m, b: torch.nn.functional.cross_entropy(
            m(b["image"]), b["label"]), lambda m: [(list(m.parameters()), 0.01)])
    finally:
        engine.train_step = step_fn
    # a step's time around the model step: from the end of one train_step to the start of the next
    gaps = [starts[i + 1] - starts[i] - inside[i] for i in range(warmup, warmup + steps)]
    cpu_gaps = [cpu_starts[i + 1] - cpu_starts[i] - cpu_inside[i] for i in range(warmup, warmup + steps)]
    return {"images": n, "read_list_s": t_read - t0, "check_names_s": t_check - t_read,
            "startup_s": starts[0] - t0, "overhead_ms": 1e3 * float(np.median(gaps)),
            "overhead_ms_mean": 1e3 * float(np.mean(gaps)),
            "overhead_cpu_ms": 1e3 * float(np.median(cpu_gaps)), "model_step_ms": 1e3 * float(np.median(inside)),
            "main_rss_mb": memory["main_rss_mb"], "worker_private_mb": memory["worker_private_mb"]}


def run(sizes: tuple = SIZES, steps: int = 80, warmup: int = 10, batch_size: int = 128, workers: int = 2,
        workdir: Optional[str] = None, verbose: bool = False) -> dict:
    """Every size in a process of its own; the figures and whether each target is met."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="spol-scale-", dir=workdir) as work:
        for n in sizes:
            root = os.path.join(work, f"ImageNet-{n}")
            write_imagenet_list(root, n)
            cmd = [sys.executable, "-m", "utils.scale", root, str(n), str(steps), str(warmup), str(batch_size),
                   str(workers), os.path.join(work, f"out-{n}")]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))), env=dict(os.environ, PYTHONUNBUFFERED="1"))
            if p.returncode != 0:
                raise RuntimeError(f"the scale measurement of {n} images failed:\n"
                                   f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
            if verbose:
                print(p.stdout + p.stderr)
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    small, large = rows[0], rows[-1]
    worker_small = max(small["worker_private_mb"] or [float("nan")])
    worker_large = max(large["worker_private_mb"] or [float("nan")])
    checks = {
        "overhead_ratio": large["overhead_ms"] / small["overhead_ms"],
        "overhead_ms": large["overhead_ms"],
        "startup_s": large["startup_s"],
        "worker_memory_ratio": worker_large / worker_small,
    }
    return {"batch_size": batch_size, "num_workers": workers, "steps": steps, "sizes": rows, "ratios": checks,
            "targets": TARGETS, "met": {k: bool(checks[k] <= TARGETS[k]) for k in TARGETS}}


def table(r: dict) -> str:
    lines = [f"scale: ImageNet cam-stage training loop, batch {r['batch_size']}, {r['num_workers']} loader workers, "
             f"{r['steps']} timed steps (images held in memory, a 1 x 1 conv model: the loop's own costs)",
             f"{'images':>10s} {'start-up s':>10s} {'(list':>7s} {'check)':>7s} {'overhead ms':>12s} "
             f"{'(its CPU)':>9s} {'model ms':>9s} {'main RSS MB':>12s} {'worker private MB':>18s}"]
    for s in r["sizes"]:
        workers = ", ".join(f"{m:.0f}" for m in s["worker_private_mb"]) or "-"
        lines.append(f"{s['images']:10d} {s['startup_s']:10.1f} {s['read_list_s']:7.1f} {s['check_names_s']:7.1f} "
                     f"{s['overhead_ms']:12.2f} {s['overhead_cpu_ms']:9.2f} {s['model_step_ms']:9.2f} "
                     f"{s['main_rss_mb']:12.0f} {workers:>18s}")
    c, t, met = r["ratios"], r["targets"], r["met"]
    mark = {True: "met", False: "NOT met"}
    lines.append(f"targets at {r['sizes'][-1]['images']} images: overhead {c['overhead_ratio']:.2f} x the "
                 f"smallest (<= {t['overhead_ratio']}, {mark[met['overhead_ratio']]}) and {c['overhead_ms']:.2f} ms "
                 f"(< {t['overhead_ms']:g}, {mark[met['overhead_ms']]}); start-up {c['startup_s']:.1f} s "
                 f"(<= {t['startup_s']:g}, {mark[met['startup_s']]}); loader-worker memory "
                 f"{c['worker_memory_ratio']:.2f} x (<= {t['worker_memory_ratio']}, "
                 f"{mark[met['worker_memory_ratio']]})")
    return "\n".join(lines)


if __name__ == "__main__":  # one size, as run() calls it: python -m utils.scale ROOT N STEPS WARMUP BATCH WORKERS OUT
    root, n, steps, warmup, batch, workers, out = sys.argv[1:8]
    torch.set_num_threads(1)
    result = measure(root, int(n), int(steps), int(warmup), int(batch), int(workers), out)
    print(json.dumps(result))
