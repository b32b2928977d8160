"""A training run's state on disk: `Checkpoints` writes `<savepath>/checkpoint.pth` (what `--resume` continues
from) and the `model-<N>.pth` snapshots, and `read_state` / `resume` bring a saved state back into a new run,
refusing one written for another model or another list. `engine.fit` uses both.

checkpoint.pth is a dict: "model" and "optimizer" (state dicts), "scaler" (fp16's GradScaler, or None),
"epoch" and "batch" (the position: batches done in that 0-based epoch), "step" (global), "args" (every flag
of the run) and "list" (`list_fingerprint`, with the batch size and seed that the position counts in). A snapshot
holds the model's state dict alone.

What a resumed run takes from its flags and what from the checkpoint: the model's shape flags must match; the
optimiser's values (--lr, --backbone_lr, --weight_decay, --momentum, --nesterov) live in the optimiser's state,
which would override new ones, so they must match too (never a value recorded that was not used); mid-epoch, the
list, --batch_size and --seed must match (the position counts batches of that list's order under that seed).
Everything else (--epoch, --amp, --sync_bn, workers, saving and logging) is taken from the flags as given.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from utils.engine.checkpoint import save_atomic, torch_load
from utils.data.lists import SampleTable
from utils.engine import distributed
from utils.engine.distributed import Dist
from utils.errors import Stopped, UserError
from utils.engine.log import LossLog


class Checkpoints:
    """The saves of a training run in `folder`, written whole (`save_atomic`) by rank 0; every rank calls each
    save at the same point of the run.

    Nothing unsound is saved. Before a save, the loss logged last but not read yet is read (`LossLog.flush`: a
    non-finite one stops the run), and every loss so far (`watch`, kept on the device so that no step waits for
    it), the weights and BatchNorm's statistics must be finite: a finite loss can still be followed by an update
    that blew the weights up, and the running statistics can overflow while the loss, on batch statistics, looks
    fine. Before a state, the files skipped so far are listed too (`list_skipped`): a resumed run repeats only
    the steps after its state. `record` (the flags under "args", the list's fingerprint under "list") goes into
    every state; `saved_at` is the step of the state on disk (a resumed run's), or None.
    """

    def __init__(self, folder: str, d: Dist, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Optional[torch.amp.GradScaler], record: dict, losses: LossLog,
                 list_skipped: Callable[[], None], saved_at: Optional[int]):
        self.folder, self.d, self.model, self.optimizer, self.scaler = folder, d, model, optimizer, scaler
        self.record, self.losses, self.list_skipped, self.saved_at = record, losses, list_skipped, saved_at
        self.path = os.path.join(folder, "checkpoint.pth")
        self.finite = torch.ones((), dtype=torch.bool, device=d.device)

    def watch(self, loss: torch.Tensor) -> None:
        self.finite &= torch.isfinite(loss)

    def state(self, epoch: int, batch: int, step: int) -> None:
        """checkpoint.pth at `batch` batches into the 0-based `epoch`, after `step` steps."""
        self.losses.flush()
        self.list_skipped()
        self._check_finite(step)
        if self.d.main:
            save_atomic({"model": cpu_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler else None, "epoch": epoch, "batch": batch,
                         "step": step, **self.record}, self.path)
        self.saved_at = step

    def snapshot(self, tag: int, step: int) -> str:
        """model-`tag`.pth (an epoch or a step number), after `step` steps; returns its path."""
        path = os.path.join(self.folder, f"model-{tag}.pth")
        self.losses.flush()
        self._check_finite(step)
        if self.d.main:
            save_atomic(cpu_state_dict(self.model), path)
        return path

    def stopped(self, e: Stopped, step: int) -> Stopped:
        """`e` (SIGTERM, at `step`) saying what is kept and how to go on."""
        kept = (f"continue with --resume (from {self.path}, the state of step {self.saved_at})"
                if self.saved_at is not None else
                "nothing was saved yet (--save_every N keeps the state every N steps): run it again")
        return Stopped(e.signum, f"at step {step}: {kept}")

    def _check_finite(self, step: int) -> None:
        ok = self.finite.clone()
        for t in self.model.state_dict().values():
            if t.is_floating_point():
                ok &= torch.isfinite(t).all()
        if not distributed.all_true(self.d, ok):  # the losses differ by rank: every rank stops, or none
            raise UserError(f"non-finite loss or weights before step {step}: stopped; the last good state is "
                            f"{self.path} (lower --lr, or --amp off)")


def cpu_state_dict(model: nn.Module) -> OrderedDict:
    """`model`'s state dict with its tensors copied to the CPU (a bare torch.load of the file then works on a
    machine without CUDA) and its `_metadata` kept (the per-module versions load_state_dict reads)."""
    state = model.state_dict()
    out = OrderedDict((k, v.cpu()) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out


def read_state(path: str, own: str) -> Optional[dict]:
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


def resume(state: dict, path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
           scaler: Optional[torch.amp.GradScaler], flags: dict, listed: dict, main: bool) -> tuple:
    """Load `state` (read from `path`) into the model, optimizer and scaler of a run with `flags` on the list
    `listed` (`list_fingerprint`); returns its position (epoch, batch, step). The model must be placed already:
    Optimizer.load_state_dict casts the state to each parameter's device and dtype."""
    _resume_model(model, state, path, flags)
    given = [{k: g.get(k) for k in _OPTIMISER_VALUES} for g in optimizer.param_groups]
    kernels = [(g["fused"], g["foreach"]) for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:  # other parameter groups (e.g. another --freeze_stem): torch's words, one line
        raise UserError(f"--resume: the optimiser state in {path} does not fit this run's parameters ({e}): "
                        f"resume with the flags it was written with, or start anew without --resume") from None
    for g, (fused, foreach) in zip(optimizer.param_groups, kernels):
        # this run's kernels, not the saving run's (a CPU run's unfused groups under CUDA's fused SGD fail to step)
        g["fused"], g["foreach"] = fused, foreach
    _check_same_optimiser(given, optimizer, state, flags, path)
    _lay_out_like_parameters(optimizer)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    epoch, batch, step = state["epoch"], state["batch"], state["step"]
    if main:
        print(f"resumed from {path}: epoch {epoch + 1}, batch {batch}, step {step}")
    _check_same_list(state, listed, path)
    return epoch, batch, step


def remove_torn_saves(folder: str) -> None:
    """Remove the `.tmp-*.pth` a run killed while saving (SIGKILL, a power cut) left in its output folder: the
    folder's lock (utils.engine.lock) makes this run its only writer, so none of them is being written now."""
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
    # mid-epoch, the position counts batches of this size in this seed's order (records from before these
    # were kept cannot tell); at an epoch's end any batch size and seed go on from the next epoch's start
    differ = [k for k in ("batch_size", "seed") if saved and k in saved and saved[k] != listed[k]]
    if differ and state["batch"] > 0:
        there = ", ".join(f"--{k} {saved[k]}" for k in differ)
        here = ", ".join(f"--{k} {listed[k]}" for k in differ)
        raise UserError(f"--resume: {path} stopped mid-epoch (epoch {state['epoch'] + 1}, batch {state['batch']}) "
                        f"with {there}; this run has {here}: the rest of that epoch would train some images twice "
                        f"and others not at all. Resume with {there}")


# what Optimizer.load_state_dict restores into each parameter group (the scheduled "lr" is set anew each epoch
# from "initial_lr"), and the flags they come from
_OPTIMISER_VALUES = ("initial_lr", "momentum", "weight_decay", "nesterov")
_OPTIMISER_FLAGS = ("lr", "backbone_lr", "weight_decay", "momentum", "nesterov")


def _check_same_optimiser(given: list, optimizer: torch.optim.Optimizer, state: dict, flags: dict, path: str) -> None:
    """The optimiser's values of this run (`given`, per group, before the load) must be those the checkpoint
    restored: the loaded ones would be used while the new flags are recorded."""
    loaded = [{k: g.get(k) for k in _OPTIMISER_VALUES} for g in optimizer.param_groups]
    if loaded == given:
        return
    saved = state.get("args") or {}
    differ = [k for k in _OPTIMISER_FLAGS if k in saved and k in flags and saved[k] != flags[k]]
    if differ:
        there = ", ".join(f"--{k} {saved[k]}" for k in differ)
        here = ", ".join(f"--{k} {flags[k]}" for k in differ)
    else:  # values that no flag of the record explains: name them per parameter group
        there, here = (", ".join(f"group {i}: {g}" for i, g in enumerate(groups)) for groups in (loaded, given))
    raise UserError(f"--resume: {path} was trained with {there}; this run has {here}. Its optimiser state would "
                    f"go on with the checkpoint's values while the new ones are recorded: resume with the values it "
                    f"was trained with, or start anew without --resume (--snapshot <its model-N.pth> starts from "
                    f"its weights)")


def _lay_out_like_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded state tensor of a parameter's shape (momentum) that parameter's memory layout: the
    state comes contiguous from the file, a channels-last parameter would otherwise step in two layouts."""
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p).copy_(v)


# flags that change the model's shape: a checkpoint written with other values cannot be resumed
_SHAPE_FLAGS = ("clsnum", "backbone", "arch", "fusion", "levels", "mca")


def _resume_model(model: nn.Module, state: dict, path: str, flags: dict) -> None:
    """Load the checkpoint's model, or say which of the run's `flags` differ from those of the run that wrote it."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        saved = state.get("args") or {}
        differ = [f"--{k} {saved[k]} there, {flags[k]} here" for k in _SHAPE_FLAGS
                  if k in saved and k in flags and saved[k] != flags[k]]
        raise UserError(f"--resume: {path} holds another model than this run builds"
                        f"{' (' + '; '.join(differ) + ')' if differ else ''}: resume with the flags it was "
                        f"written with, or start anew without --resume") from None
