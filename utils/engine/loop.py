"""The training engine shared by every stage: mixed precision, the optimiser, one training step, the
epoch loop (`fit`, configured by a `TrainConfig`), and the batched inference loader with its host copies.

`fit` reads as a loop: for each epoch, for each batch: leave out bad files (`BadFiles`), move to the device,
step, log (`log.LossLog`), save (`train_state.Checkpoints`). Resumability: the training state
(`<savepath>/checkpoint.pth`: model, optimiser, scaler, epoch, batch within the epoch, global step, args) is
written atomically at every epoch end and every `--save_every` steps. Shuffling and augmentation are seeded by
(seed, epoch, index) and dropout by (seed, step), so a resumed run continues exactly where the interrupted one
stopped.

Under torchrun, a global batch is split over the processes, every sample keeps its augmentation and
dropout mask, BatchNorm uses the whole batch's statistics (`--sync_bn`, the default) and DDP averages
the gradients: up to floating-point summation order, the run is the single-process one.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from utils.engine.outputs import write_error
from utils.data.images import collate
from utils.engine import distributed
from utils.engine.distributed import Dist, EpochBatchSampler, sync_batchnorm
from utils.errors import Stopped, UserError
from utils.engine.log import LossLog, RunLog, maybe_tqdm
from utils.engine.train_state import Checkpoints, list_fingerprint, read_state, remove_torn_saves, resume
from utils.engine.workers import init_loader_worker, loader_threads


# --------------------------------------------------------------------------------- precision/model
def amp_dtype(arg: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of `--amp arg` on `device` (None: float32). auto: bf16 on a CUDA GPU that has it in
    hardware (compute capability 8.0 on), fp16 (with `train_step`'s GradScaler) on older GPUs, which only
    emulate bf16, and float32 on the CPU; bf16 on such older GPUs is refused. off on CUDA also turns TF32 off, so
    float32 is float32 there as on the CPU."""
    if arg == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if _bf16_in_hardware(device) else torch.float16
    if arg == "bf16" and device.type == "cuda" and not _bf16_in_hardware(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise UserError(f"--amp bf16: the GPU {device} (compute capability {major}.{minor}, below 8.0) has no bf16 "
                        f"in hardware; torch would emulate it and run its convolutions in a fallback kernel many "
                        f"times slower. Use --amp fp16 (what auto picks on this GPU) or --amp off")
    if arg == "off":
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return None
    if arg == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (use bf16 or off on the CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[arg]


def _bf16_in_hardware(device: torch.device) -> bool:
    """Whether the CUDA `device` computes in bf16 itself: NVIDIA GPUs from compute capability 8.0 (Ampere) on, and
    ROCm's. Asked of `device`, not of the current GPU as torch.cuda.is_bf16_supported does."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def channels_last_for(flag: Optional[bool], device: torch.device) -> bool:
    """`--channels_last` as given (`flag`), else on for CUDA (faster convolutions there) and off on the CPU."""
    return flag if flag is not None else device.type == "cuda"


def place_model(model: nn.Module, d: Dist, *, channels_last: Optional[bool], compile: bool, train: bool = False,
                sync_bn: bool = False) -> nn.Module:
    """Move to the device (channels-last where `channels_last_for(channels_last)`), compile if asked; for
    training under torchrun also wrap in DDP, BatchNorm over the global batch first where `sync_bn`."""
    model = model.to(d.device, memory_format=torch.channels_last if channels_last_for(channels_last, d.device)
                     else torch.preserve_format)
    if train and d.enabled and sync_bn:
        model = sync_batchnorm(model, d)  # in place for the children: snapshots keep working
    if train and d.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if compile:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def sgd(groups: list, momentum: float, weight_decay: float, nesterov: bool,
        device: torch.device = torch.device("cpu")) -> torch.optim.SGD:
    """SGD with the authors' settings for parameters on `device`; `groups` = [(params, lr), ...] (empty ones left
    out). Nesterov needs momentum: without it, plain SGD. On CUDA the fused step: one kernel per group, which also
    takes fp16's GradScaler flag on the device, where the unfused step reads it on the host (`.item()`) every step.
    The CPU keeps torch's default step."""
    return torch.optim.SGD([{"params": p, "lr": lr, "initial_lr": lr} for p, lr in groups if p],
                           lr=groups[0][1], momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0, fused=True if device.type == "cuda" else None)


def train_step(model: nn.Module, loss_fn: Callable, batch: dict, optimizer: torch.optim.Optimizer,
               scaler: Optional[torch.amp.GradScaler], device: torch.device,
               dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One optimisation step: forward under autocast, backward (scaled for fp16), step. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        loss = loss_fn(model, batch)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------- loaders
PREFETCH = 4  # batches on their way per loader worker


def loader(dataset, batch_sampler, num_workers: int, d: Dist, persistent: bool = True,
           collate_fn: Callable = collate) -> DataLoader:
    """The stages' loader: its workers get one OpenCV thread and a malloc that keeps what it frees
    (`utils.engine.workers`), and batch in shared memory (pinned on CUDA); `persistent`: the workers stay for
    the next pass (training's epochs)."""
    workers = max(0, num_workers)
    loader_threads()
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=d.device.type == "cuda", persistent_workers=persistent and workers > 0,
                      prefetch_factor=PREFETCH if workers > 0 else None, worker_init_fn=init_loader_worker)


class InOrder:
    """Batches of `batch_size` of `indices`, in order, made as they are asked for (a list of 1.28M index lists
    would be Python objects that every forked loader worker copies as its garbage collector walks them);
    `numbered`: each key is (batch number, index), as `ring.RingImageSet` takes them."""

    def __init__(self, indices, batch_size: int, numbered: bool = False):
        self.indices, self.batch_size, self.numbered = np.asarray(indices, dtype=np.int64), batch_size, numbered

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for number in range(len(self)):
            batch = self.indices[number * self.batch_size:(number + 1) * self.batch_size].tolist()
            yield [(number, i) for i in batch] if self.numbered else batch


def inference_batches(dataset, indices, batch_size: int, num_workers: int, d: Dist) -> DataLoader:
    """One pass over `indices` of `dataset` in batches of `batch_size`, in order, loaded by `num_workers`."""
    return loader(dataset, InOrder(indices, batch_size), num_workers, d, persistent=False)


def to_device(x: torch.Tensor, d: Dist, channels_last: bool = False, hwc: bool = False) -> torch.Tensor:
    """`x` on the device; a batch of images in channels-last memory format where `channels_last`.
    `hwc`: `x` is B x H x W x C (`transforms.mask_transform`) and comes back as B x C x H x W, contiguous,
    or channels-last (then a view: no copy)."""
    x = x.to(d.device, non_blocking=True)
    if hwc:
        x = x.permute(0, 3, 1, 2)
        return x if channels_last else x.contiguous()
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class HostCopy:
    """A result on its way to the host: the copy starts now, `get()` waits for it.

    On CUDA the copy goes to pinned memory behind an event recorded on the stream of the result's own
    device, so an inference loop can queue the next batch's forward before it uses this batch's results
    (the GPU does not idle while the CPU turns them into masks or boxes); on the CPU it is the tensor itself.
    """

    def __init__(self, x: torch.Tensor):
        self.tensor = x.to("cpu", non_blocking=True)
        self.event = None
        if x.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(x.device))

    def get(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor


def host_lag(device: torch.device) -> int:
    """Batches an inference loop keeps in flight before using their results: 1 on CUDA (see
    HostCopy), 0 on the CPU, whose forward is synchronous anyway."""
    return 1 if device.type == "cuda" else 0


class HostPipe:
    """The results of an inference loop's batches on their way to the host, handed on one batch late on CUDA.

    `put(tensors, *context)` starts the copies of a batch's device `tensors` (`HostCopy`); once `host_lag`
    newer batches are queued, `hand_on([host tensors], *context)` runs on it, so the GPU computes the next
    batch while the CPU uses this one's results; `drain()` hands on the rest. No blocking copy, `.item()` or
    `.tolist()` of a device tensor belongs between a forward and its `put`: it would wait for the forward.
    """

    def __init__(self, device: torch.device, hand_on: Callable):
        self.queue, self.lag, self.hand_on = deque(), host_lag(device), hand_on

    def put(self, tensors: list, *context) -> None:
        self.queue.append(([HostCopy(t) for t in tensors], context))
        while len(self.queue) > self.lag:
            self._next()

    def drain(self) -> None:
        while self.queue:
            self._next()

    def _next(self) -> None:
        copies, context = self.queue.popleft()
        self.hand_on([c.get() for c in copies], *context)


class Throughput:
    """Images per second of an inference loop in its steady state.

    The clock starts when the first batch's results are handed on (so worker start-up, the first
    decode and the first forward's one-time costs are left out, as a benchmark's warm-up is) and
    stops at `stop()`; only the images handed on after the first batch are counted.
    """

    def __init__(self):
        self.start, self.images, self.seconds = None, 0, 0.0

    def handed_on(self, n: int) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.images += n

    def stop(self) -> None:
        if self.start is not None:
            self.seconds = time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.images and self.seconds > 0 else float("nan")


class Pending:
    """Tasks of a process pool whose results are taken as they finish, not in submission order (a slow
    task then holds back none of the others' results, nor the loop that waits for room).

    `take(result)` receives each result; a task's exception is raised from `settle`.
    """

    def __init__(self, take: Callable = lambda result: None):
        self.futures, self.take = set(), take

    def add(self, future: Future) -> None:
        self.futures.add(future)

    def settle(self, limit: int) -> None:
        """Take every finished result, then wait for more until at most `limit` tasks are pending."""
        while self.futures:
            done = {f for f in self.futures if f.done()}
            for f in done:
                self.take(f.result())
            self.futures -= done
            if len(self.futures) <= limit:
                return
            wait(self.futures, return_when=FIRST_COMPLETED)


def handle_bad(batch: dict, policy: str, d: Dist) -> int:
    """Stop on the first bad file, or name the skipped ones (on stdout) and count them."""
    for name, reason in batch["bad"]:
        if policy == "stop":
            raise UserError(f"{reason}\n  (pass --on-bad-image skip to leave such files out and count them)")
        print(f"skipped: {reason}", flush=True)
    return len(batch["bad"])


# --------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """What `fit` takes from a stage's training flags; `cli.train_config` builds it from the parsed arguments.

    `flags` holds every flag of the run (name -> value): checkpoint.pth records them under "args", args.json and
    the start-up print show them, and `--resume` names those that change the model's shape where they differ.
    """
    epochs: int                     # --epoch
    batch_size: int                 # over all processes
    savepath: str
    list_name: str                  # --list: the position in a checkpoint refers to it
    momentum: float
    weight_decay: float
    nesterov: bool
    amp: str                        # auto | bf16 | fp16 | off (amp_dtype)
    channels_last: Optional[bool]   # None: on for CUDA (channels_last_for)
    compile: bool
    sync_bn: bool
    seed: int                       # shuffling, augmentation (the data set's own) and dropout
    resume: Optional[str]           # a training-state file
    save_every: int                 # steps between states (0: at epoch ends only)
    snapshot_every: int             # steps between model-<step>.pth (0: model-<epoch>.pth)
    snapshot_from: int              # the first epoch whose model-<epoch>.pth is kept
    print_freq: int                 # steps between log lines
    max_steps: int                  # 0: no limit
    on_bad_image: str               # stop | skip
    num_workers: int                # loader workers per process
    flags: dict = field(default_factory=dict)


class BadFiles:
    """A training run's bad files (unreadable images, missing or mismatched masks).

    `policy` stop ends the run at the first; skip names each on stdout and leaves it out. At each `flush`, a
    collective that every rank calls at the same points (the saves of the state), every rank's skipped files
    are counted and rank 0 appends them to `path` (skipped.txt). A batch that bad files leave with fewer than 2 images
    is dropped whole, its good image named (BatchNorm cannot train on one image); under torchrun that is an
    error, since every process must take every step. `samples`: the data set's, to name dropped images.
    """

    def __init__(self, path: str, policy: str, d: Dist, samples):
        self.path, self.policy, self.d, self.samples = path, policy, d, samples
        self.unlisted, self.skipped, self.dropped = [], 0, []

    def keep(self, batch: dict) -> bool:
        """Take the batch's bad files; False when it has too few images left to train on."""
        self.unlisted += batch["bad"]
        handle_bad(batch, self.policy, self.d)
        if "image" in batch and len(batch["image"]) >= 2:
            return True
        if self.d.enabled:
            raise UserError("a batch lost all (or all but one) of its images to bad files under "
                            "torchrun; fix or remove them from the list")
        good = [self.samples[i].name for i in batch["index"].tolist()] if "image" in batch else []
        self.dropped += good
        if good and self.d.main:
            print(f"dropped with its batch (the rest were bad files): {', '.join(good)}", flush=True)
        return False

    def flush(self) -> None:
        lines = [line for part in distributed.gather_objects(self.d, self.unlisted) for line in part]
        self.skipped, self.unlisted = self.skipped + len(lines), []
        if lines and self.d.main:
            try:
                with open(self.path, "a") as f:
                    f.writelines(f"{name}\t{reason}\n" for name, reason in lines)
            except OSError as e:
                raise write_error(self.path, e) from None

    def report(self) -> None:
        """The run's totals, said once at its end."""
        if self.skipped and self.d.main:
            print(f"{self.skipped} bad files were skipped (listed in {self.path})")
        if self.dropped and self.d.main:
            print(f"{len(self.dropped)} good images were dropped with batches that bad files left with fewer than "
                  f"2 images")


def batch_to_device(batch: dict, d: Dist, channels_last: bool) -> None:
    """A training batch's image (in the model's memory format), label and mask on the device, in place."""
    batch["image"] = to_device(batch["image"], d, channels_last)
    for k in ("label", "mask"):
        if k in batch:
            batch[k] = to_device(batch[k], d)


def fit(cfg: TrainConfig, d: Dist, model: nn.Module, dataset, loss_fn: Callable, groups: Callable,
        on_epoch_end: Optional[Callable] = None,
        lr_factor: Optional[Callable[[int], float]] = None) -> str:
    """Train `model` (unwrapped, on the CPU) on `dataset` as `cfg` says; returns the path of the last snapshot.

    `loss_fn(model, batch) -> loss`; `groups(model) -> [(params, lr), ...]` builds the optimiser's parameter
    groups; `lr_factor(epoch) -> float` scales every group's initial lr for that 0-based epoch (default:
    constant); `on_epoch_end(model, epoch, log)` runs after each epoch's save (1-based epoch, the RunLog).
    Epochs from `snapshot_from` on, and the last, leave a model-<epoch>.pth (without `snapshot_every`).
    """
    if cfg.batch_size % d.world:
        raise UserError(f"--batch_size {cfg.batch_size} is not divisible by the {d.world} processes")
    dtype = amp_dtype(cfg.amp, d.device)
    channels_last = channels_last_for(cfg.channels_last, d.device)
    raw = model
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    own = os.path.join(cfg.savepath, "checkpoint.pth")
    state = read_state(cfg.resume, own) if cfg.resume else None
    if hasattr(raw, "batch_split"):  # dropout masks per global batch (see MFFNet._dropout)
        raw.batch_split = (d.rank, d.world)
    model = place_model(raw, d, channels_last=cfg.channels_last, compile=cfg.compile, train=True,
                        sync_bn=cfg.sync_bn)
    # the state goes into the placed parameters (the same objects as raw's): load_state_dict casts it to each
    # parameter's device and dtype, so the optimiser's, loaded before the model moved, would stay on the CPU
    optimizer = sgd(groups(raw), cfg.momentum, cfg.weight_decay, cfg.nesterov, d.device)
    listed = dict(list_fingerprint(cfg.list_name, getattr(dataset, "samples", None) or []),
                  batch_size=cfg.batch_size, seed=cfg.seed)  # what a position (epoch, batch) counts in
    start_epoch, start_batch, step = 0, 0, 0
    if state is not None:
        start_epoch, start_batch, step = resume(state, cfg.resume, raw, optimizer, scaler, cfg.flags, listed, d.main)
        if (start_epoch, start_batch) > (cfg.epochs, 0):
            raise UserError(f"--resume: {cfg.resume} stopped at epoch {start_epoch + 1}, batch {start_batch}: past "
                            f"--epoch {cfg.epochs}; resume with the --epoch it was trained with, or more")
    if d.main:
        remove_torn_saves(cfg.savepath)
    log = RunLog(cfg.savepath, cfg.flags, enabled=d.main, resumed_at=step if state is not None else None)
    losses = LossLog(log, d.world, own)
    bad = BadFiles(os.path.join(cfg.savepath, "skipped.txt"), cfg.on_bad_image, d, getattr(dataset, "samples", None))
    saves = Checkpoints(cfg.savepath, d, raw, optimizer, scaler, {"args": cfg.flags, "list": listed}, losses,
                        bad.flush, saved_at=step if state is not None else None)
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size // d.world, d, seed=cfg.seed)
    batches = len(sampler)  # per epoch, the same every epoch
    if start_batch >= batches:  # a state saved after an epoch's last batch (older runs): the next epoch
        start_epoch, start_batch = start_epoch + 1, 0
    data = loader(dataset, sampler, cfg.num_workers, d)
    first_step, last_snapshot, done = step, None, False
    epoch = start_epoch - 1  # the last epoch entered; none when a finished run is resumed
    try:
        for epoch in range(start_epoch, cfg.epochs):
            batch_idx = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, batch_idx)
            if lr_factor is not None:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * lr_factor(epoch)
            model.train()
            bar = losses.epoch(maybe_tqdm(data, d.main, desc=f"epoch {epoch + 1}/{cfg.epochs}", initial=batch_idx,
                                          total=batches))
            for batch in bar:
                batch_idx += 1
                if not bad.keep(batch):
                    continue
                batch_to_device(batch, d, channels_last)
                torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: resumable, drawn per global batch
                loss = train_step(model, loss_fn, batch, optimizer, scaler, d.device, dtype)
                losses.flush()  # the loss marked a step ago: its copy ran while this step was queued
                saves.watch(loss)
                step += 1
                losses.count(len(batch["image"]))
                if step % cfg.print_freq == 0 or batch_idx == batches:  # over the global batch, not this rank's
                    losses.mark(step, HostCopy(distributed.mean(d, loss)).get, optimizer.param_groups[0]["lr"],
                                epoch + 1)
                if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                    last_snapshot = saves.snapshot(step, step)
                if cfg.save_every and step % cfg.save_every == 0:
                    saves.state(epoch, batch_idx, step)
                if cfg.max_steps and step >= cfg.max_steps:
                    done = True
                    break
            losses.flush()
            if step == first_step:  # before any file is written: a snapshot of untrained weights helps no one
                bad.flush()
                raise UserError(f"no training step ran: every batch of {cfg.list_name} was lost to bad files "
                                f"({bad.skipped} skipped, listed in {bad.path}); fix or remove them, then run again")
            if done and batch_idx < batches:  # --max_steps mid-epoch: the state says where to go on
                saves.state(epoch, batch_idx, step)
                break
            # the epoch's last batch (--max_steps there too): the epoch ends as any other, its snapshot included
            saves.state(epoch + 1, 0, step)
            if not cfg.snapshot_every and (epoch + 1 >= cfg.snapshot_from or epoch + 1 == cfg.epochs):
                last_snapshot = saves.snapshot(epoch + 1, step)
            if on_epoch_end is not None:
                on_epoch_end(unwrap(model), epoch + 1, log)
            if done:
                break
        if cfg.snapshot_every and (last_snapshot is None or not last_snapshot.endswith(f"-{step}.pth")):
            last_snapshot = saves.snapshot(step, step)
        if last_snapshot is None:  # stopped by --max_steps before any epoch's snapshot: the weights so far
            last_snapshot = saves.snapshot(epoch + 1, step)
        bad.report()
        log.close()
        return last_snapshot
    except Stopped as e:  # SIGTERM (errors.run_main): say what is kept and how to go on
        raise saves.stopped(e, step) from None
