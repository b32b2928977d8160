"""The ImageNet weight files that live in resource/: fetching them (the registered backbones' files, e.g.
torchvision's ResNets, and efficientnet_pytorch's EfficientNets), each downloaded once, when absent and the
machine is online, by one function; and loading one into a backbone.

A torchvision file is named `<arch>-<hash>.pth`, where `<hash>` is the first 8 or more hex digits of the
file's SHA-256 (torch.hub's convention, which torchvision checks): the download is checked against it, and a
file that does not match is deleted, never left in resource/. Every download goes to a temporary file beside
the target and is renamed into place only when complete, so an interrupted one leaves no torn file.
Offline, or when the download fails, the error names the file and the URL to fetch it from by hand.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Optional

import torch
import torch.hub
import torch.nn as nn

from network.backbones import BACKBONES
from utils.engine.checkpoint import fill_batchnorm_counters, read_state_dict
from utils.errors import UserError

RESOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resource")


def hash_prefix(path: str) -> Optional[str]:
    """The SHA-256 prefix in a torch.hub-style file name (the hex digits after the last '-'), or None."""
    m = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", os.path.basename(path))
    return m.group(1) if m else None


def in_resource(path: str) -> bool:
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(RESOURCE)


def weights_url(path: str) -> Optional[str]:
    """Where `path` is downloaded from when it is resource/<a weight file of a registered backbone>: the
    backbone's own ImageNet file, or another file its site publishes under its name (`<name>-<SHA-256
    prefix><ext>`, e.g. torchvision's resnet50-0676ba61.pth beside resnet50-19c8e357.pth); None otherwise."""
    name = os.path.basename(path)
    if not in_resource(path):
        return None
    for entry in BACKBONES.values():
        if entry.weights_url:
            site, own = entry.weights_url.rsplit("/", 1)
            ext = os.path.splitext(own)[1]
            if name == own or re.fullmatch(re.escape(entry.name) + r"-[0-9a-f]{8,}" + re.escape(ext), name):
                return f"{site}/{name}"
    return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, path: str, check_hash: bool = True) -> str:
    """Download `url` to `path` (a temporary beside it, then a rename); with `check_hash`, the file's SHA-256
    must start with the prefix in its name. Any failure is one UserError naming the file and the URL."""
    expected = hash_prefix(path) if check_hash else None
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.partial")
    print(f"{path} not found: downloading {url}", flush=True)
    try:
        try:
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(url, tmp, progress=True)
        except Exception as e:  # offline, proxy, disk: whichever, the user needs the file and the URL
            raise UserError(f"pretrained weights not found: {path}, and downloading {url} failed "
                            f"({type(e).__name__}: {str(e)[:100]}).\n  Download that file on a machine with "
                            f"internet and put it at {path} (see resource/README.md), or pass --pretrained "
                            f"PATH / none") from None
        if expected:
            digest = _sha256(tmp)
            if not digest.startswith(expected):
                raise UserError(f"downloaded {url}, but its SHA-256 {digest[:16]}... does not start with "
                                f"{expected}, the hash in its name: deleted, nothing written to {path}. "
                                f"Download it again, or by hand from that URL")
        os.chmod(tmp, 0o666 & ~_umask())  # readable like any other file the user writes (mkstemp-style 0600 is not)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure(path: str, url: Optional[str] = None, check_hash: bool = True) -> bool:
    """Fetch `path` when it is absent and a URL is known for it (`url`, or `weights_url`'s for a backbone's file
    in resource/). True when the file is there afterwards; False when absent with no URL (the caller's error)."""
    if os.path.isfile(path):
        return True
    url = url or weights_url(path)
    if url is None:
        return False
    fetch(url, path, check_hash)
    return True


def load_backbone_weights(model: nn.Module, path: str, keep_fc: bool = False) -> None:
    """Load an ImageNet state-dict file of a backbone (a torchvision ResNet file for the ResNets) into `model`.

    Only `fc.*` may be left out (the localisation backbone has no fc; a classifier with a new
    number of classes gets a fresh one), and the layers the backbone's WSOL form changes (its `new_layers`,
    trained from scratch, and its `dropped`, in the file only: network/registry.py); any other missing or
    unexpected key is an error, so a file of the wrong depth never loads half-way.
    """
    if not ensure(path):  # resource/<a backbone's file>: downloaded from its site when absent and online
        raise UserError(
            f"pretrained weights not found: {path}\n"
            f"  Put torchvision's ImageNet weights there (e.g. resnet50-19c8e357.pth, see resource/README.md),"
            f" or pass --pretrained none to train from scratch.")
    state = read_state_dict(path)
    fc = getattr(model, "fc", None)
    if not keep_fc or fc is None or state.get("fc.weight", torch.empty(0)).shape != fc.weight.shape:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    dropped, new = tuple(getattr(model, "dropped", ())), tuple(getattr(model, "new_layers", ()))
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    state = fill_batchnorm_counters(model, state)  # torchvision's pre-0.4.1 files have none
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(("fc.",) + new)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} ({'x'.join(map(str, state[k].shape))} in the file, {'x'.join(map(str, own[k].shape))} here)"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"{path} does not fit the {type(model).__name__} backbone: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]} "
                        f"(is it torchvision's ImageNet file of the chosen --backbone?)")
    model.load_state_dict(state, strict=False)
