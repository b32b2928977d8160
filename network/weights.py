"""Fetching the ImageNet weight files that live in resource/: torchvision's ResNets and efficientnet_pytorch's
EfficientNets, each downloaded once, when absent and the machine is online, by one function.

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

RESOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resource")
TORCHVISION_URL = "https://download.pytorch.org/models/"
# torchvision's ResNet files (resnet50-19c8e357.pth, resnet50-0676ba61.pth, resnet18-f37072fd.pth, ...)
TORCHVISION_RESNET = re.compile(r"^resnet(18|34|50|101|152)-([0-9a-f]{8,})\.pth$")


def hash_prefix(path: str) -> Optional[str]:
    """The SHA-256 prefix in a torch.hub-style file name (the hex digits after the last '-'), or None."""
    m = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", os.path.basename(path))
    return m.group(1) if m else None


def in_resource(path: str) -> bool:
    return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(RESOURCE)


def torchvision_url(path: str) -> Optional[str]:
    """torchvision's URL for `path` when it is resource/<a torchvision ResNet file>; None otherwise."""
    name = os.path.basename(path)
    if in_resource(path) and TORCHVISION_RESNET.match(name):
        return TORCHVISION_URL + name
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
    import torch.hub

    from utils.errors import UserError
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
    """Fetch `path` when it is absent and a URL is known for it (`url`, or torchvision's for a ResNet file in
    resource/). True when the file is there afterwards; False when absent with no URL (the caller's error)."""
    if os.path.isfile(path):
        return True
    url = url or torchvision_url(path)
    if url is None:
        return False
    fetch(url, path, check_hash)
    return True
