"""Checkpoint I/O: plain state dicts (the original code's format and our snapshots), training-state
files for --resume, and atomic writes.

Accepted on load, always with `weights_only=True` (a weights file from elsewhere never runs code):
  * a plain state dict (`torch.save(model.state_dict())`, the original's snapshots);
  * our training-state file (`{"model": state_dict, "optimizer": ..., ...}`);
  * weights saved under apex O2 (fp16 tensors, cast back to float32);
  * keys with one leading `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile) prefix.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections import OrderedDict

import torch
import torch.nn as nn

from utils.errors import UserError
from utils.engine.outputs import write_error

_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict) -> dict:
    """Remove leading wrapper prefixes (`module.`, `_orig_mod.`, in any nesting), never inner ones."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def torch_load(path: str) -> object:
    """`torch.load` with `weights_only=True` of a file from elsewhere: any failure is one line naming it, and a
    file that needs more than tensors to load (a pickle calling a function) is refused, with no advice to load
    it the unsafe way."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a weights file: name the .pth file in it")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes): an interrupted copy or save? Copy or write it again")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise UserError(f"cannot read checkpoint {path}: {_first_line(e)} (truncated or not a PyTorch weights "
                            f"file?)") from None
        called = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise UserError(f"cannot read checkpoint {path}: not a weights file (or not a safe one): refused"
                        + (f": it would call {called.group(1)}" if called else "")
                        + ". Expected a PyTorch state dict or training-state file, read as tensors only; "
                          "nothing in a file from elsewhere is run") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise UserError(f"cannot read checkpoint {path}: {_first_line(e)} (truncated or not a PyTorch weights "
                        f"file?)") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def read_state_dict(path: str) -> dict:
    """Tensor state dict from any accepted checkpoint format, prefixes stripped, fp16 cast to fp32."""
    obj = torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no state dict (expected a dict of tensors)")
    state = OrderedDict((k, v.float() if v.dtype in (torch.float16, torch.bfloat16) else v)
                        for k, v in strip_prefixes(obj).items())
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a diverged run's weights: every map would be NaN, every mask empty
        raise UserError(f"{path} has non-finite (NaN/inf) values in {len(broken)} tensors, e.g. {broken[0]}: "
                        f"the run that wrote it diverged; use an earlier snapshot, or train again with a lower --lr")
    metadata = getattr(obj, "_metadata", None)
    if isinstance(metadata, dict):  # module versions, and the MFF-Net switches (network/mffnet.py)
        # its keys are module names ("" = the root, "module" = a DDP wrapper's root): strip them alike
        state._metadata = OrderedDict((next(iter(strip_prefixes({k + ".": None})))[:-1], v)
                                      for k, v in metadata.items())
    return state


def fill_batchnorm_counters(model: nn.Module, state: dict) -> dict:
    """`state` with each BatchNorm `num_batches_tracked` buffer it lacks set to 0, as BatchNorm's own
    `load_state_dict` does. Files written before PyTorch 0.4.1 have no such buffers: among them torchvision's
    `resnet50-19c8e357.pth`, the file SPOL's stages start from, and the other ResNet depths of that era. Every
    other key stays as it was, so a loader that works out missing keys itself sees only real mismatches."""
    counters = [f"{name}.num_batches_tracked" if name else "num_batches_tracked"
                for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None]
    absent = [k for k in counters if k not in state]
    if not absent:
        return state
    filled = OrderedDict(state)
    for k in absent:
        filled[k] = torch.tensor(0, dtype=torch.long)
    if hasattr(state, "_metadata"):
        filled._metadata = state._metadata
    return filled


def load_weights(model: nn.Module, path: str) -> None:
    """Load a snapshot with strict=True, turning a key mismatch into a readable error."""
    load_state(model, read_state_dict(path), path)


def load_state(model: nn.Module, state: dict, path: str) -> None:
    """`load_weights` of a state dict already read from `path` (named in the errors). A model that defines
    `check_snapshot(state, path)` checks the snapshot first: an MFF-Net refuses one whose recorded or visible
    switches (fusion, levels, MCA) differ from its own, naming them (a clearer error than a list of keys)."""
    if hasattr(model, "check_snapshot"):
        model.check_snapshot(state, path)
    state = fill_batchnorm_counters(model, state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        hint = ""
        if "linear.weight" in shapes:
            hint = (f" (its output layer has {tuple(state['linear.weight'].shape)[0]} channels, the model "
                    f"{tuple(own['linear.weight'].shape)[0]}: check --clsnum, and that a CAM snapshot is not "
                    f"given to a seg stage or the reverse)")
        elif any(k.startswith("bkbone.") for k in missing + unexpected + shapes):
            hint = " (check --backbone: the snapshot was trained with another depth)"
        elif any(k in ("_fc.weight", "fc.weight") for k in shapes):
            fc = next(k for k in shapes if k in ("_fc.weight", "fc.weight"))
            hint = (f" (its classifier has {tuple(state[fc].shape)[0]} outputs, the model "
                    f"{tuple(own[fc].shape)[0]}: check --clsnum)")
        elif missing or unexpected:
            hint = " (check --arch / --backbone: the snapshot is of another architecture)"
        raise UserError(f"{path} does not fit the model: {len(missing)} missing keys {missing[:3]}, "
                        f"{len(unexpected)} unexpected {unexpected[:3]}, wrong shapes {shapes[:3]}{hint}")
    model.load_state_dict(state, strict=True)


def save_atomic(obj: object, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: no torn file after a crash."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: readable like any other output instead
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's writer turns a full disk into "[enforce fail at inline_container.cc]"
            if "inline_container" not in str(e) and "write" not in str(e).lower():
                raise
            raise write_error(path, OSError(errno.ENOSPC if _full(folder) else errno.EIO,
                                            os.strerror(errno.ENOSPC if _full(folder) else errno.EIO))) from None
        except OSError as e:
            raise write_error(path, e) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _full(folder: str) -> bool:
    """Whether the file system of `folder` has no space left for this user (the reason torch's writer hides)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def find_snapshot(folder: str, released: str) -> tuple:
    """(path, why) of the snapshot a test.py uses when --snapshot is not given, as the original's defaults:
    the authors' released name in `folder` (`released` with or without `.pth`), else the `model-<N>` file of
    the largest N (the last one training wrote). (None, why) when there is none."""
    for name in (released, released + ".pth"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path, "the released snapshot's name"
    numbered = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            stem = name[:-4] if name.endswith(".pth") else name
            if stem.startswith("model-") and stem[6:].isdigit() and os.path.isfile(os.path.join(folder, name)):
                numbered.append((int(stem[6:]), name.endswith(".pth"), name))
    if not numbered:
        return None, f"no {released}(.pth) and no model-<N>(.pth) in {folder}"
    return os.path.join(folder, max(numbered)[2]), "the last model-<N> in its folder"
