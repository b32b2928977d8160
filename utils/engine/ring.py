"""Inference batches that the loader workers write in place into a ring of shared-memory slots.

DataLoader's workers collate every batch into fresh shared memory, and the main process maps it again:
on a virtual machine the fresh pages cost more than the decode (~1 ms per 786 KB image for the worker
here, mostly the kernel allocating and zeroing shared pages; docs/speed.md). Pseudo-mask generation
(1.28M images on ImageNet, where the GPU leaves the CPU the bound) uses this ring instead: a fixed set of
`slots` batches of images in shared memory, allocated once; a worker decodes and transforms each image
of batch m straight into slot m % slots (no collate copy), and the main process reads the batch there.

Why it never hands out a slot in use: the workers write batch m only once the main process has released
batch m - slots, the slot's previous occupant (`BatchRing.claim` waits for it). `RingBatches` releases a
batch when the next one is asked for, so a batch's images are valid until then, as the loop body uses
them. DataLoader has at most prefetch_factor x workers batches on their way, so with two slots more
the workers never wait in a steady state. Memory: `slots` x batch x 786 KB of shared memory (256 x 256
images), held for the whole pass; the same order as DataLoader's own batches in flight.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterator, Optional

import torch
from torch.utils.data import Dataset

import utils.engine.loop as engine
from utils.data.images import BadImage, read_image
from utils.engine.distributed import Dist, local_world
from utils.errors import UserError


class BatchRing:
    """`slots` batches of `batch_size` float32 arrays of `shape` in shared memory, and per slot the number of
    the last batch released from it (shared too: the workers see the main process's releases)."""

    POLL_S = 2e-4

    def __init__(self, slots: int, batch_size: int, shape: tuple):
        self.images = torch.empty(slots, batch_size, *shape).share_memory_()
        self.released = (torch.arange(slots, dtype=torch.int64) - slots).share_memory_()  # "batch -k is done"
        self.closed = torch.zeros(1, dtype=torch.bool).share_memory_()
        self._parent = None  # (this process, its parent) as first seen by `claim`: a changed parent has died

    def __len__(self) -> int:
        return len(self.images)

    def claim(self, batch: int) -> torch.Tensor:
        """The slot of batch number `batch` (0, 1, ... in the loader's order), once its previous occupant has
        been released; in a loader worker (or the main process, without workers). Raises RuntimeError when the
        ring was closed or the worker's parent is gone."""
        slot = batch % len(self)
        if self._parent is None or self._parent[0] != os.getpid():
            self._parent = os.getpid(), os.getppid()  # a fork, spawn or forkserver worker's own parent
        while True:
            if bool(self.closed[0]) or os.getppid() != self._parent[1]:
                raise RuntimeError("the batch ring was closed (the main process stopped reading)")
            if int(self.released[slot]) == batch - len(self):
                return self.images[slot]
            time.sleep(self.POLL_S)

    def release(self, batch: int) -> None:
        """The main process is done with batch number `batch`: its slot may take batch + len(self)."""
        self.released[batch % len(self)] = batch

    def close(self) -> None:
        self.closed[0] = True


class RingImageSet(Dataset):
    """The images of `samples` as batches written into `ring` (`__getitems__` of keys (batch number, index)).

    `fill(image, out)` writes a decoded image's tensor into `out` (one slot row, e.g.
    `transforms.ResizeCrop.into`). A batch is a dict as `data.collate`'s: "image" (n x shape, a view of the
    slot, packed: bad files take no row), "label", "index", "size" (original H, W), "bad" [(name, reason)],
    and "batch" (its number, for `BatchRing.release`); without "image" when every file was bad.
    """

    def __init__(self, samples: list, fill: Callable, ring: BatchRing, read: Callable = read_image):
        self.samples, self.fill, self.ring, self.read = samples, fill, ring, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, keys: list) -> dict:
        number = keys[0][0]
        images = self.ring.claim(number)
        good, bad, sizes = [], [], []
        for _, index in keys:
            s = self.samples[index]
            try:
                image = self.read(s.path)
            except BadImage as e:
                bad.append((s.name, str(e)))
                continue
            self.fill(image, images[len(good)].numpy())
            good.append(index)
            sizes.append(image.shape[:2])
        batch = {"bad": bad, "batch": number}
        if good:
            batch.update(image=images[:len(good)], label=torch.tensor([self.samples[i].label for i in good]),
                         index=torch.tensor(good), size=torch.tensor(sizes))
        return batch

    def __getitem__(self, key):
        raise TypeError("RingImageSet is read in batches (DataLoader calls __getitems__)")


def _as_is(batch: dict) -> dict:
    return batch


class RingBatches:
    """One pass over batches of a `RingImageSet` through the stages' loader (`engine.loader`): iterating gives
    its batches in order; each batch's slot goes back to the workers when the next batch is asked for (or
    the pass ends)."""

    def __init__(self, data: RingImageSet, batches: engine.InOrder, num_workers: int, d: Dist):
        self.data, self.loader = data, engine.loader(data, batches, num_workers, d, persistent=False, collate_fn=_as_is)
        self.started = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        if self.started:  # its ring's batch numbers and slots are spent (and closed)
            raise RuntimeError("RingBatches gives one pass; make another with ring_batches")
        self.started = True
        held: Optional[int] = None
        batches = iter(self.loader)
        try:
            for batch in batches:
                if held is not None:
                    self.data.ring.release(held)
                held = batch["batch"]
                yield batch
        finally:
            # a pass cut short: workers waiting for a slot stop, before the loader's shutdown waits for them
            self.data.ring.close()
            del batches


def slots_for(num_workers: int) -> int:
    """Slots that keep every worker busy: the batches DataLoader has on their way (`engine.PREFETCH` per
    worker), one that the main process holds and one that it has just released."""
    return engine.PREFETCH * max(0, num_workers) + 2


def ring_batches(samples: list, indices: list, batch_size: int, fill: Callable, shape: tuple, num_workers: int,
                 d: Dist, read: Callable = read_image) -> RingBatches:
    """One pass over `indices` of `samples` in batches of `batch_size`, in order, each image read by `read(path)`
    and written by `fill(image, out)` into a `shape` float32 row of a ring of shared batches."""
    batches = engine.InOrder(indices, batch_size, numbered=True)
    slots, rows = slots_for(num_workers), max(1, min(batch_size, len(indices)))
    check_shared_memory(slots, rows, shape, local_world())
    ring = BatchRing(slots, rows, shape)
    return RingBatches(RingImageSet(samples, fill, ring, read), batches, num_workers, d)


SHM = "/dev/shm"  # where torch's shared memory lives on Linux (shm_open)


def shared_memory_free() -> Optional[int]:
    """Bytes free in /dev/shm, or None where there is none to ask (not Linux)."""
    try:
        st = os.statvfs(SHM)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_shared_memory(slots: int, rows: int, shape: tuple, processes: int = 1) -> None:
    """A ring of `slots` batches of `rows` float32 `shape` images in each of the node's `processes` (torchrun's
    ranks there, which all check the same free space before any allocates) larger than the shared memory free
    would crash a worker with a bus error when it reaches the missing pages (a container's /dev/shm is 64 MB by
    default): say so before any work."""
    need = processes * slots * rows * math.prod(shape) * 4
    free = shared_memory_free()
    if free is not None and need > free:
        each = f"{processes} processes on this node, {slots} batches of {rows} each" if processes > 1 else \
            f"{slots} batches of {rows}"
        raise UserError(f"pseudo masks: the loader's batches need {need / 2 ** 20:.0f} MB of shared memory "
                        f"({each}), {SHM} has {free / 2 ** 20:.0f} MB "
                        f"free: lower --batch_size or --num_workers, or give it more (docker run --shm-size 8g)")
