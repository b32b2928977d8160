"""Run logging: the sorted arguments and git commit at start-up (also saved as args.json next to the
outputs), a JSON-lines metrics log that plotting scripts can read, TensorBoard scalars/images, and the
training loss on its way there (`LossLog`: read one step late, so that logging never waits for the device).
Only rank 0 writes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Callable

import torch

from utils.errors import UserError
from utils.engine.outputs import Folder, write_error, write_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLog:
    def __init__(self, outdir: str, flags: dict, enabled: bool = True, tensorboard: bool = True,
                 resumed_at: int | None = None, flag: str = "--savepath"):
        """`flags`: the run's command-line flags (name -> value), printed sorted and saved in args.json.
        `resumed_at`: the step a resumed run starts after; the log keeps its records up to that
        step (later ones were not saved in the state and are trained again). A new run starts a new log.
        `flag` names `outdir` in messages."""
        self.enabled, self.outdir, self.tb = enabled, outdir, None
        if not enabled:
            return
        os.makedirs(outdir, exist_ok=True)
        config = {k: v for k, v in sorted(flags.items())}
        config["git"] = git_sha()
        config["command"] = " ".join(sys.argv)
        print("arguments:\n" + "\n".join(f"  {k}: {v}" for k, v in config.items()), flush=True)
        write_text(os.path.join(outdir, "args.json"), json.dumps(config, indent=1, default=str))
        self.path = path = os.path.join(outdir, "log.jsonl")
        kept = []
        if resumed_at is not None and os.path.isfile(path):
            with open(path) as f:
                kept = [line for line in f if _step(line) <= resumed_at]
        write_text(path, "".join(kept))  # replaces the file (or a link in its place), then appended to
        self.jsonl = open(path, "a")
        if tensorboard:
            tb = Folder(outdir, flag).check_folder("tb")
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(tb)
            except ImportError:  # tensorboard is in requirements.txt; tolerate an environment without it
                self.tb = None

    def scalars(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "step": step, **values}
        try:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        except OSError as e:  # a full disk
            raise write_error(self.path, e) from None
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def images(self, tag: str, step: int, images: torch.Tensor) -> None:
        """B x 3 x H x W images in [0, 1] as one TensorBoard grid."""
        if self.enabled and self.tb is not None:
            self.tb.add_images(tag, images.clamp(0, 1), step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


class LossLog:
    """The training loss of every `print_freq`-th step on its way to the RunLog and the progress bar.

    A logged step's loss is `mark`ed with a function that reads it on the host (`engine.HostCopy.get`, whose
    copy starts at once) and read by the next `flush`: the loop flushes after the next step is queued, so
    logging never waits for the device to finish a step. A non-finite loss stops the run there, naming the
    last good state. The images per second are those of the epoch so far (`epoch`, `count`), over all
    `world` processes.
    """

    def __init__(self, run: RunLog, world: int, checkpoint: str):
        self.run, self.world, self.checkpoint = run, world, checkpoint
        self.marked, self.bar, self.seen, self.t0 = None, None, 0, time.time()

    def epoch(self, bar):
        """Start an epoch whose batches come from `bar` (a tqdm bar on rank 0): returns it."""
        self.bar, self.seen, self.t0 = bar, 0, time.time()
        return bar

    def count(self, images: int) -> None:
        self.seen += images

    def mark(self, step: int, read: Callable[[], torch.Tensor], lr: float, epoch: int) -> None:
        """Log step `step` (of 1-based `epoch`) at the next flush; `read()` returns its loss on the host."""
        self.marked = (step, read, lr, epoch, self.seen, self.t0)

    def flush(self) -> None:
        if self.marked is None:
            return
        at, read, lr, epoch, seen, t0 = self.marked
        self.marked, value = None, read().item()
        if not math.isfinite(value):
            raise UserError(f"loss is {value} at step {at}: stopped; the last good state is {self.checkpoint} "
                            f"(lower --lr, or --amp off)")
        rate = seen * self.world / max(time.time() - t0, 1e-9)
        self.run.scalars(at, loss=value, lr=lr, epoch=epoch, images_per_s=round(rate, 1))
        if self.run.enabled and hasattr(self.bar, "set_postfix"):
            self.bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}")


def _step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # an unreadable (cut-off) line is dropped


def write_json(path: str, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=1))


def maybe_tqdm(iterable, enabled: bool, **kw):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, **kw)
