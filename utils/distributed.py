"""Single process, or DistributedDataParallel when launched by torchrun (one node or several).

`setup(device_arg)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), picks the device,
initialises the process group (NCCL on CUDA, gloo on the CPU) and returns a `Dist` record. Without
torchrun it is a plain single process and every collective below is a no-op.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(arg: str, local_rank: int = 0) -> torch.device:
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    if arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {arg}: no CUDA device is available (use --device cpu)")
        if arg == "cuda":
            return torch.device("cuda", local_rank)
    try:
        return torch.device(arg)
    except RuntimeError:
        raise UserError(f"--device {arg!r}: expected auto, cpu, cuda or cuda:N") from None


def setup(device_arg: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        d = Dist(device=pick_device(device_arg))
    else:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_arg, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        d = Dist(rank, world, local_rank, device)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return d


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def entry(fn: Callable) -> Callable:
    """Turn `fn(args, d)` into a stage entry point `fn(args)`: the device and process group are set up
    from `args.device` before, and the process group is torn down after, also on an error."""
    @functools.wraps(fn)
    def run(args):
        d = setup(args.device)
        try:
            return fn(args, d)
        finally:
            cleanup()
    return run


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def gather_objects(d: Dist, obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank (a one-item list without torchrun)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(d: Dist, obj: object) -> object:
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int, d: Dist) -> list:
    """Indices 0..n-1 of this rank for inference: every index on exactly one rank, no padding."""
    return list(range(d.rank, n, d.world))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Training batches of one rank: a seeded permutation per epoch, padded to a multiple of the
    world size like DistributedSampler, cut into batches of (epoch, index) keys (the epoch reaches
    persistent workers this way); `start_batch` skips the batches a resumed run already trained on.
    A final batch of one image is dropped (BatchNorm cannot train on it).
    """

    def __init__(self, n: int, batch_size: int, d: Dist, seed: int = 0, shuffle: bool = True):
        if n == 0:
            raise UserError("the training list is empty")
        self.n, self.batch_size, self.d, self.seed, self.shuffle = n, batch_size, d, seed, shuffle
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _batches(self) -> list:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        per_rank = -(-self.n // self.d.world)
        order = np.resize(order, per_rank * self.d.world)  # pad by wrapping around
        mine = [(self.epoch, i) for i in order[self.d.rank::self.d.world].tolist()]
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list]:
        return iter(self._batches()[self.start_batch:])
