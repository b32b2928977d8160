"""The training engine shared by every stage: mixed precision, the optimiser, one training step, the
epoch loop with snapshots, resumable state and logging, and the batched inference loader.

Resumability: the training state (`<savepath>/checkpoint.pth`: model, optimiser, scaler, epoch,
batch within the epoch, global step, args) is written atomically at every epoch end and every
`--save_every` steps. Shuffling and augmentation are seeded by (seed, epoch, index) and dropout by
(seed, step), so a resumed run continues exactly where the interrupted one stopped.

Under torchrun, a global batch is split over the processes, every sample keeps its augmentation and
dropout mask, BatchNorm uses the whole batch's statistics (`--sync_bn`, the default) and DDP averages
the gradients: up to floating-point summation order, the run is the single-process one.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from utils.checkpoint import save_atomic, torch_load
from utils.outputs import write_error
from utils.data import SampleTable, collate
from utils import distributed
from utils.distributed import Dist, EpochBatchSampler, sync_batchnorm
from utils.errors import Stopped, UserError
from utils.log import RunLog, maybe_tqdm
from utils.workers import init_loader_worker, loader_threads


# --------------------------------------------------------------------------------- precision/model
def amp_dtype(arg: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of `--amp arg` on `device` (None: float32). auto: bf16 on a CUDA GPU that has it in
    hardware (compute capability 8.0 on), fp16 (with `train_step`'s GradScaler) on older GPUs, which only
    emulate bf16, and float32 on the CPU. off on CUDA also turns TF32 off, so float32 is float32 there as on
    the CPU."""
    if arg == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if arg == "off":
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return None
    if arg == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device (use bf16 or off on the CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[arg]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def channels_last_for(args, device: torch.device) -> bool:
    """--channels_last as given, else on for CUDA (faster convolutions there) and off on the CPU."""
    return args.channels_last if args.channels_last is not None else device.type == "cuda"


def place_model(model: nn.Module, args, d: Dist, train: bool) -> nn.Module:
    """Move to the device (channels-last on CUDA), wrap in DDP when distributed, compile if asked."""
    channels_last = channels_last_for(args, d.device)
    model = model.to(d.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if train and d.enabled and args.sync_bn:
        model = sync_batchnorm(model, d)  # in place for the children: snapshots keep working
    if train and d.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def sgd(groups: list, args) -> torch.optim.SGD:
    """SGD with the authors' settings; `groups` = [(params, lr), ...]."""
    return torch.optim.SGD([{"params": p, "lr": lr, "initial_lr": lr} for p, lr in groups if p],
                           lr=groups[0][1], momentum=args.momentum, weight_decay=args.weight_decay,
                           nesterov=args.nesterov and args.momentum > 0)


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
    (`utils.workers`), and batch in shared memory (pinned on CUDA); `persistent`: the workers stay for
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
def fit(args, d: Dist, model: nn.Module, dataset, loss_fn: Callable, groups: Callable,
        on_epoch_end: Optional[Callable] = None,
        lr_factor: Optional[Callable[[int], float]] = None) -> str:
    """Train `model` (unwrapped, on the CPU) on `dataset`; returns the path of the last snapshot.

    `groups(model) -> [(params, lr), ...]` builds the optimiser's parameter groups;
    epochs from `--snapshot_from` on, and the last, leave a model-<epoch>.pth (without `--snapshot_every`);
    `lr_factor(epoch) -> float` scales every group's initial lr for that 0-based epoch (default: constant).
    """
    if args.batch_size % d.world:
        raise UserError(f"--batch_size {args.batch_size} is not divisible by the {d.world} processes")
    dtype = amp_dtype(args.amp, d.device)
    channels_last = channels_last_for(args, d.device)
    raw = model
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    start_epoch, start_batch, step = 0, 0, 0
    state = _load_state(args.resume, os.path.join(args.savepath, "checkpoint.pth")) if args.resume else None
    if hasattr(raw, "batch_split"):  # dropout masks per global batch (see MFFNet._dropout)
        raw.batch_split = (d.rank, d.world)
    model = place_model(raw, args, d, train=True)
    # the state goes into the placed parameters (the same objects as raw's): load_state_dict casts it to each
    # parameter's device and dtype, so the optimiser's, loaded before the model moved, would stay on the CPU
    optimizer = sgd(groups(raw), args)
    if state is not None:
        _resume_model(raw, state, args.resume, vars(args))
        optimizer.load_state_dict(state["optimizer"])
        _lay_out_like_parameters(optimizer)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        if d.main:
            print(f"resumed from {args.resume}: epoch {start_epoch + 1}, batch {start_batch}, step {step}")
    listed = list_fingerprint(args.list, getattr(dataset, "samples", None) or [])
    if state is not None:
        _check_same_list(state, listed, args.resume)
    if d.main:
        remove_torn_saves(args.savepath)
    log = RunLog(args.savepath, args, enabled=d.main, resumed_at=step if state is not None else None)
    sampler = EpochBatchSampler(len(dataset), args.batch_size // d.world, d, seed=args.seed)
    batches = len(sampler)  # per epoch, the same every epoch
    if start_batch >= batches:  # a state saved after an epoch's last batch (older runs): the next epoch
        start_epoch, start_batch = start_epoch + 1, 0
    data = loader(dataset, sampler, args.num_workers, d)
    bad_log = os.path.join(args.savepath, "skipped.txt")
    last_snapshot, skipped, bad, dropped = None, 0, [], []
    finite = torch.ones((), dtype=torch.bool, device=d.device)
    first_step, shown, saved_at = step, None, step if state is not None else None

    def show() -> None:
        # the loss of a logged step, read one step later: its copy to the host ran while the next step was
        # queued, so logging never waits for the GPU to finish a step
        nonlocal shown
        if shown is None:
            return
        at, loss_copy, lr, epoch, seen, t0 = shown
        shown, value = None, loss_copy.get().item()
        if not math.isfinite(value):
            raise UserError(f"loss is {value} at step {at}: stopped; the last good state is "
                            f"{os.path.join(args.savepath, 'checkpoint.pth')} (lower --lr, or --amp off)")
        rate = seen * d.world / max(time.time() - t0, 1e-9)
        log.scalars(at, loss=value, lr=lr, epoch=epoch, images_per_s=round(rate, 1))
        if d.main and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.0f}")

    def count_bad() -> None:
        # every rank's skipped files, counted and written to skipped.txt by rank 0 (a collective: every rank
        # calls it at the same points, the saves)
        nonlocal skipped, bad
        lines = [line for part in distributed.gather_objects(d, bad) for line in part]
        skipped, bad = skipped + len(lines), []
        if lines and d.main:
            try:
                with open(bad_log, "a") as f:
                    f.writelines(f"{name}\t{reason}\n" for name, reason in lines)
            except OSError as e:
                raise write_error(bad_log, e) from None

    def check_finite() -> None:
        # a finite loss can still be followed by an update that blew the weights up, and BatchNorm's running
        # statistics (buffers) can overflow while the loss, on batch statistics, looks fine: check all three
        if not bool(finite) or not all(bool(torch.isfinite(t).all()) for t in raw.state_dict().values()
                                       if t.is_floating_point()):
            raise UserError(f"non-finite loss or weights before step {step}: stopped; the last good state is "
                            f"{os.path.join(args.savepath, 'checkpoint.pth')} (lower --lr, or --amp off)")

    def save_state(epoch: int, batch: int) -> None:
        nonlocal saved_at
        show()
        count_bad()
        check_finite()
        if d.main:
            save_atomic({"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler else None, "epoch": epoch, "batch": batch,
                         "step": step, "args": {k: v for k, v in vars(args).items()}, "list": listed},
                        os.path.join(args.savepath, "checkpoint.pth"))
        saved_at = step

    def snapshot(tag: int) -> str:
        path = os.path.join(args.savepath, f"model-{tag}.pth")
        show()
        check_finite()
        if d.main:
            save_atomic(raw.state_dict(), path)
        return path

    try:
        done = False
        for epoch in range(start_epoch, args.epoch):
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            if lr_factor is not None:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * lr_factor(epoch)
            batch_idx = start_batch if epoch == start_epoch else 0
            model.train()
            seen, t0 = 0, time.time()
            bar = maybe_tqdm(data, d.main, desc=f"epoch {epoch + 1}/{args.epoch}", initial=batch_idx, total=batches)
            for batch in bar:
                bad += batch["bad"]
                handle_bad(batch, args.on_bad_image, d)
                batch_idx += 1
                if "image" not in batch or len(batch["image"]) < 2:
                    if d.enabled:
                        raise UserError("a batch lost all (or all but one) of its images to bad files under "
                                        "torchrun; fix or remove them from the list")
                    # BatchNorm cannot train on one image: the good one left goes too, named and counted
                    good = [dataset.samples[i].name for i in batch["index"].tolist()] if "image" in batch else []
                    dropped += good
                    if good and d.main:
                        print(f"dropped with its batch (the rest were bad files): {', '.join(good)}", flush=True)
                    continue
                batch["image"] = to_device(batch["image"], d, channels_last)
                for k in ("label", "mask"):
                    if k in batch:
                        batch[k] = to_device(batch[k], d)
                torch.manual_seed(args.seed * 1_000_003 + step)  # dropout: resumable, drawn per global batch
                loss = train_step(model, loss_fn, batch, optimizer, scaler, d.device, dtype)
                show()
                finite &= torch.isfinite(loss)
                step += 1
                seen += len(batch["image"])
                if step % args.print_freq == 0 or batch_idx == batches:
                    # over the global batch, not rank 0's share
                    shown = (step, HostCopy(distributed.mean(d, loss)), optimizer.param_groups[0]["lr"], epoch + 1,
                             seen, t0)
                if args.snapshot_every and step % args.snapshot_every == 0:
                    last_snapshot = snapshot(step)
                if args.save_every and step % args.save_every == 0:
                    save_state(epoch, batch_idx)
                if args.max_steps and step >= args.max_steps:
                    done = True
                    break
            show()
            if step == first_step:  # before any file is written: a snapshot of untrained weights helps no one
                count_bad()
                raise UserError(f"no training step ran: every batch of {args.list} was lost to bad files "
                                f"({skipped} skipped, listed in {bad_log}); fix or remove them, then run again")
            if done and batch_idx < batches:
                save_state(epoch, batch_idx)
                break
            # the epoch's last batch (--max_steps there too): the epoch ends as any other, its snapshot included
            save_state(epoch + 1, 0)
            if not args.snapshot_every and (epoch + 1 >= args.snapshot_from or epoch + 1 == args.epoch):
                last_snapshot = snapshot(epoch + 1)
            if on_epoch_end is not None:
                on_epoch_end(unwrap(model), epoch + 1, log)
            if done:
                break
        if args.snapshot_every and (last_snapshot is None or not last_snapshot.endswith(f"-{step}.pth")):
            last_snapshot = snapshot(step)
        if last_snapshot is None:
            last_snapshot = snapshot(step if args.snapshot_every else min(args.epoch, epoch + 1))
        if skipped and d.main:
            print(f"{skipped} bad files were skipped (listed in {bad_log})")
        if dropped and d.main:
            print(f"{len(dropped)} good images were dropped with batches that bad files left with fewer than 2 images")
        log.close()
        return last_snapshot
    except Stopped as e:  # SIGTERM (errors.run_main): say what is kept and how to go on
        kept = (f"continue with --resume (from {os.path.join(args.savepath, 'checkpoint.pth')}, the state of step "
                f"{saved_at})" if saved_at is not None else
                "nothing was saved yet (--save_every N keeps the state every N steps): run it again")
        raise Stopped(e.signum, f"at step {step}: {kept}") from None


def remove_torn_saves(folder: str) -> None:
    """Remove the `.tmp-*.pth` a run killed while saving (SIGKILL, a power cut) left in its output folder: the
    folder's lock (utils.lock) makes this run its only writer, so none of them is being written now."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(".tmp-") and name.endswith(".pth"):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def list_fingerprint(name: str, samples) -> dict:
    """What a training position (epoch, batch) refers to: the list's name, length and a SHA-1 of its names and
    labels in order (a `SampleTable` or a list of `Sample`s)."""
    if isinstance(samples, SampleTable):
        names, labels = samples.names(), samples.labels
    else:
        names, labels = [s.name for s in samples], np.array([s.label for s in samples], dtype=np.int64)
    digest = hashlib.sha1("".join(n + "\n" for n in names).encode("utf-8"))
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return {"list": name, "images": len(names), "sha1": digest.hexdigest()}


def _check_same_list(state: dict, listed: dict, path: str) -> None:
    """A resumed run trains on the list the checkpoint's position refers to (checkpoints written before the
    list was recorded cannot tell, and are taken as they are)."""
    saved = state.get("list")
    if saved and saved.get("sha1") != listed["sha1"]:
        how = "other names or labels" if saved["images"] == listed["images"] else f"{listed['images']} images"
        raise UserError(f"--resume: {path} stopped at epoch {state['epoch'] + 1}, batch {state['batch']} of "
                        f"{saved['list']} as it was then ({saved['images']} images); {listed['list']} now has {how}: "
                        f"that position would be other images. Resume with the list it was trained on, or start "
                        f"anew without --resume")


def _lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor of a parameter's shape (momentum) that parameter's memory layout: the
    state comes contiguous from the file, a channels-last parameter would otherwise step in two layouts."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p).copy_(v)


def _load_state(path: str, own: str) -> Optional[dict]:
    """The training state to resume from; None when `path` is this run's own checkpoint (`own`, what a bare
    --resume names) and it does not exist yet. Any other missing file is an error, never a fresh start."""
    if not os.path.exists(path):
        if os.path.abspath(path) == os.path.abspath(own):
            print(f"--resume: no {path} yet, starting from the beginning")
            return None
        raise UserError(f"--resume: {path} not found (a bare --resume continues from {own})")
    state = torch_load(path)
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "batch", "step"} <= set(state):
        raise UserError(f"--resume: {path} is not a training-state file (a model-*.pth snapshot holds only "
                        f"weights; resume from <savepath>/checkpoint.pth)")
    return state


# flags that change the model's shape: a checkpoint written with other values cannot be resumed
_SHAPE_FLAGS = ("clsnum", "backbone", "arch", "fusion", "levels", "mca")


def _resume_model(model: nn.Module, state: dict, path: str, args: dict) -> None:
    """Load the checkpoint's model, or say which flags differ from the run that wrote it."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        saved = state.get("args") or {}
        differ = [f"--{k} {saved[k]} there, {args[k]} here" for k in _SHAPE_FLAGS
                  if k in saved and k in args and saved[k] != args[k]]
        raise UserError(f"--resume: {path} holds another model than this run builds"
                        f"{' (' + '; '.join(differ) + ')' if differ else ''}: resume with the flags it was "
                        f"written with, or start anew without --resume") from None
