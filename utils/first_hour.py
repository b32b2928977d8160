"""The first hour on a GPU node: every stage's model at the paper's sizes, trained and run for a few dozen steps on
synthetic full-size inputs, after the GPU suite (tests/test_cuda.py). A few minutes on one H100 (10 at most).

    python -m utils.first_hour                          # every stage, on cuda (cuda:0)
    python -m utils.first_hour --only cls --json first_hour.json

For each stage script's training (`engine.train_step`: forward, backward, the fused SGD step, the stage's loss)
and inference (the forward under inference mode), at the script's batch size: images/s over --steps steps after
--warmup ones, the peak GPU memory (`torch.cuda.max_memory_allocated`), and the largest batch that fits this GPU:
from the script's batch, doubled while one step fits (up to --growth times it: then "at least"), halved while it
does not. The inputs are random tensors of the stage's size made on the GPU: the loader is left out
(`python -m utils.bench` measures it). Precision and memory format are the stages' (`--amp auto`: bf16 from
compute capability 8.0 on, else fp16 with the loss scaler; channels-last); --compile compiles every model. One
process: SyncBatchNorm never synchronises here (docs/speed.md says how to measure it under torchrun).

Without CUDA it says so and exits 0. SPOL_GPU_SUITE_DEVICE=cpu (as for the GPU suite) is a dry run on the CPU at
tiny sizes (ResNet-18, EfficientNet-B0, 32 px, batch 2, one step, the search up to 2x): the same code.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from network import build_mffnet  # noqa: E402
from network.classifier import build_classifier  # noqa: E402
from utils.engine.distributed import Dist  # noqa: E402
from utils.engine.loop import amp_dtype, autocast, channels_last_for, place_model, sgd, train_step  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.method.losses import dual_head_loss, seg_loss, single_head_loss  # noqa: E402
from utils.stages.stage_cls import cls_loss  # noqa: E402



@dataclass(frozen=True)
class Case:
    """One stage script's model at its sizes: `loss` trains it (None: inference), on `batch` images of
    `size` x `size` with labels of `classes` classes (a seg loss: pseudo masks)."""
    script: str
    build: Callable[[], nn.Module]
    loss: Optional[Callable]
    size: int
    batch: int
    classes: int


def cases(dry: bool) -> list:
    """The stages at the paper's sizes (the scripts' defaults), or tiny ones for the CPU dry run."""
    backbone, arch = ("resnet18", "efficientnet-b0") if dry else ("resnet50", "efficientnet-b7")
    small = (lambda size, batch: (32, 2)) if dry else (lambda size, batch: (size, batch))

    def mff(classes: int, **kw) -> Callable[[], nn.Module]:
        return lambda: build_mffnet(classes, backbone, **kw)

    out = []
    for prefix, classes, dual, batch in (("cub200", 200, True, 64), ("imagenet", 1000, False, 128),
                                         ("openimages", 100, False, 64)):
        loss = dual_head_loss if dual else single_head_loss
        out += [Case(f"{prefix}-cam/train.py", mff(classes, dual=dual), loss, *small(224, batch), classes),
                Case(f"{prefix}-cam/test.py", mff(classes, dual=dual), None, *small(256, 64), classes)]
    seg = mff(1, seg=True)
    out += [Case("*-seg/train.py", seg, seg_loss, *small(224, 128), 1),
            Case("*-seg/test.py", seg, None, *small(224, 64), 1),
            Case("cub200-cls/train.py", lambda: build_classifier(arch, 200), cls_loss, *small(600, 16), 200),
            Case("cub200-cls/test.py", lambda: build_classifier(arch, 200), None, *small(685, 16), 200),
            Case("imagenet-cls/test.py", lambda: build_classifier(arch, 1000), None, *small(685, 16), 1000)]
    return out


def out_of_memory(e: BaseException) -> bool:
    """A CUDA allocation that failed (torch's OutOfMemoryError, or cuBLAS's / cuDNN's own words for it)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")))


class Runner:
    """A case's model placed as the stages place it, and steps of it on random inputs of any batch size."""

    def __init__(self, case: Case, device: torch.device, dtype: Optional[torch.dtype], compile: bool):
        self.case, self.device, self.dtype = case, device, dtype
        self.model = place_model(case.build(), Dist(device=device), channels_last=None, compile=compile)
        self.channels_last = channels_last_for(None, device)
        if case.loss is not None:
            self.optimizer = sgd([(list(self.model.parameters()), 1e-4)], 0.9, 1e-4, True, device)
            self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    def batch(self, n: int) -> dict:
        g = torch.Generator(self.device).manual_seed(n)
        image = torch.randn(n, 3, self.case.size, self.case.size, device=self.device, generator=g)
        image = image.contiguous(memory_format=torch.channels_last) if self.channels_last else image
        batch = {"image": image, "label": torch.randint(self.case.classes, (n,), device=self.device, generator=g)}
        if self.case.loss is seg_loss:  # target and weight, B x 2 x H x W
            target = (torch.rand(n, self.case.size, self.case.size, device=self.device, generator=g) > 0.5).float()
            batch["mask"] = torch.stack([target, torch.ones_like(target)], 1)
        return batch

    def steps(self, batch: dict, steps: int) -> None:
        if self.case.loss is None:
            self.model.eval()
            with torch.inference_mode(), autocast(self.device, self.dtype):
                for _ in range(steps):
                    self.model(batch["image"])
            return
        self.model.train()
        for _ in range(steps):
            train_step(self.model, self.case.loss, batch, self.optimizer, self.scaler, self.device, self.dtype)

    def fits(self, n: int) -> bool:
        """Whether one step at batch `n` fits the GPU's memory (the memory is given back either way)."""
        try:
            self.steps(self.batch(n), 1)
            sync(self.device)
            return True
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not out_of_memory(e):
                raise
            return False
        finally:
            release(self.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_batch(runner: Runner, start: int, fits_start: bool, growth: int) -> tuple:
    """(the largest batch that fits, whether it is only a lower bound: `growth` x `start` fit too)."""
    if not fits_start:
        n = start // 2
        while n >= 1 and not runner.fits(n):
            n //= 2
        return n, False
    n = start
    while n < growth * start:
        if not runner.fits(2 * n):
            return n, False
        n *= 2
    return n, True


def measure(case: Case, a) -> dict:
    """images/s, peak memory and the largest batch of one case."""
    runner = Runner(case, a.device, a.dtype, a.compile)
    row = {"script": case.script, "batch": case.batch, "size": case.size, "images_per_s": float("nan"),
           "peak_gib": float("nan")}
    try:
        batch = runner.batch(case.batch)
        runner.steps(batch, a.warmup)
        if a.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(a.device)
        sync(a.device)
        t0 = time.perf_counter()
        runner.steps(batch, a.steps)
        sync(a.device)
        row["images_per_s"] = a.steps * case.batch / (time.perf_counter() - t0)
        if a.device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(a.device) / 2 ** 30
        fits = True
        del batch
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not out_of_memory(e):
            raise
        fits = False
    release(a.device)
    row["largest_batch"], row["at_least"] = largest_batch(runner, case.batch, fits, a.growth)
    del runner
    release(a.device)
    return row


def table(r: dict) -> str:
    lines = [f"SPOL first hour: {r['device']} ({r['device_name']}), torch {r['torch']}, amp {r['amp']}, "
             f"channels_last {r['channels_last']}, compile {r['compile']}, {r['steps']} steps after {r['warmup']}",
             f"{'stage':24s} {'batch':>6s} {'size':>5s} {'images/s':>9s} {'peak GiB':>9s}  largest batch that fits"]
    for row in r["stages"]:
        rate = "no fit" if math.isnan(row["images_per_s"]) else f"{row['images_per_s']:.1f}"
        largest = (f">= {row['largest_batch']} (searched up to {r['growth']}x)" if row["at_least"] else
                   str(row["largest_batch"]) if row["largest_batch"] else "none: not even 1")
        lines.append(f"{row['script']:24s} {row['batch']:6d} {row['size']:5d} {rate:>9s} {row['peak_gib']:9.1f}  "
                     f"{largest}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (the CPU dry run: SPOL_GPU_SUITE_DEVICE=cpu)")
    p.add_argument("--only", help="the stages whose script's path contains this text (e.g. cam, cls, train.py)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per stage")
    p.add_argument("--warmup", type=int, default=3, help="steps before the timed ones (cuDNN's autotuning)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="as the stages' --amp")
    p.add_argument("--growth", type=int, default=8, help="the largest batch is searched up to this times the script's")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (minutes more)")
    p.add_argument("--json", help="also write the figures to this file")
    return p


def main(argv: Optional[list] = None) -> Optional[dict]:
    a = get_args_parser().parse_args(argv)
    dry = os.environ.get("SPOL_GPU_SUITE_DEVICE") == "cpu"
    if dry:
        a.device, a.steps, a.warmup, a.growth = "cpu", 1, 0, 2
    elif not torch.cuda.is_available():
        print(f"first hour: no CUDA GPU here (torch {torch.__version__}): nothing to measure "
              f"(SPOL_GPU_SUITE_DEVICE=cpu runs a dry run on the CPU)")
        return None
    a.device = torch.device(a.device)
    if a.device.type == "cuda":
        torch.cuda.set_device(a.device)
        torch.backends.cudnn.benchmark = True  # as the stages (distributed.setup)
    a.dtype = amp_dtype(a.amp, a.device)
    chosen = [c for c in cases(dry) if not a.only or a.only in c.script]
    rows = []
    for case in chosen:
        rows.append(measure(case, a))
        print(f"{case.script}: done", file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else "CPU dry run, tiny sizes"
    result = {"device": str(a.device), "device_name": name, "torch": torch.__version__,
              "amp": str(a.dtype).replace("torch.", "") if a.dtype else "off",
              "channels_last": channels_last_for(None, a.device), "compile": a.compile, "steps": a.steps,
              "warmup": a.warmup, "growth": a.growth, "stages": rows}
    print(table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    run_main(main)
