"""Checks every stage runs before any work: a list whose labels, names or boxes are wrong, or an output
folder that cannot be written, stops the run at once with one line naming the file, the line and what
to do; nothing is found wrong hours later, and no figure is computed over the wrong set of images.

What is always an error (the list or the flags must be fixed): a label outside the model's classes, two
names that would share one pseudo-mask file, an output folder that cannot be written (a name that leaves
its folder, absolute or with `..`, is refused by the list's reader, which gives every name one normal form:
`./a/b.jpg` and `a//b.jpg` are `a/b.jpg`, so a repeat is seen however it is written). What is an error by
default and, with `--on-bad-image skip`, a counted and named skip: a name listed twice (each image is then
used once) and a ground-truth box that cannot be scored (NaN, inverted, empty, or entirely outside its
image: the image leaves the evaluation).
What is only said: images with an EXIF orientation tag (decoded rotated, as the authors' `cv2.imread`
does, while their boxes stay in the stored frame).
"""
from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from utils.engine.checkpoint import torch_load
from utils.data.images import mask_name
from utils.data.pixels import pixel_limit
from utils.errors import UserError
from utils.data.lists import normal_name, subset
from utils.engine.outputs import name_too_long

if TYPE_CHECKING:
    import torch

    from utils.data.lists import SampleTable


def _line_finder(list_path: str) -> Callable[[str], str]:
    """name -> 'list:line' of its first line in the list file (read only when a message needs it)."""
    lines = {}

    def where(name: str, nth: int = 1) -> str:
        if not lines:
            with open(list_path, encoding="utf-8-sig", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    text = line.strip()
                    key = text.split(",")[0] if "," in text else (text.split() or [""])[0]
                    try:
                        key = normal_name(key)  # as the reader wrote it: `./a.jpg` is the line of `a.jpg`
                    except ValueError:
                        pass
                    lines.setdefault(key, []).append(n)
        found = lines.get(name, [])
        return f"{list_path}:{found[nth - 1]}" if len(found) >= nth else list_path
    return where


def _say(message: str, main: bool) -> None:
    if main:
        print(message, flush=True)


def check_names(samples: "SampleTable", list_path: str, num_classes: Optional[int] = None, masks: bool = False,
                skip: bool = False, main: bool = True) -> "SampleTable":
    """Names and labels of a list (see the module doc). Returns the samples to use: the list itself, or,
    with `skip`, without the repeats of a name listed twice."""
    where = _line_finder(list_path)
    names = samples.names()  # in their normal form (utils/data/lists.py refuses names that leave their folder)
    if num_classes is not None:
        outside = np.flatnonzero((samples.labels < 0) | (samples.labels >= num_classes))
        if len(outside):
            name, label = names[outside[0]], samples.label(outside[0])
            raise UserError(f"{where(name)}: label {label} of {name} is outside 0..{num_classes - 1} "
                            f"(--clsnum {num_classes}): check --clsnum, or the list's labels (0-based)")
    first = dict(zip(reversed(names), range(len(names) - 1, -1, -1)))  # name -> its first index
    if len(first) < len(names):
        repeats = [i for i, name in enumerate(names) if first[name] != i]
        name = names[repeats[0]]
        if not skip:
            raise UserError(f"{where(name, 2)}: {name} is listed again (first at {where(name)}); {len(repeats)} "
                            f"lines repeat a name: remove them, or pass --on-bad-image skip to use each image once")
        _say(f"skipped {len(repeats)} repeated list lines (each image is used once), e.g. {name}", main)
        keep = sorted(first.values())
        samples, names = subset(samples, keep), [names[i] for i in keep]
    if masks:
        owners = {}
        for name in names:
            if name_too_long(mask_name(name)):  # found before the forward, not at the mask's write
                raise UserError(f"{where(name)}: the pseudo mask of {name}, {os.path.basename(mask_name(name))}, "
                                f"would be longer than a file name may be (255 bytes): rename the image")
            other = owners.setdefault(mask_name(name), name)
            if other != name:
                raise UserError(f"{where(name)}: {name} and {other} ({where(other)}) would share the pseudo "
                                f"mask {mask_name(name)}: rename one of the two images")
    return samples


def _box_problem(box: list, width: Optional[int] = None, height: Optional[int] = None) -> Optional[str]:
    """Why a ground-truth box (x0 y0 x1 y1, original pixels) cannot be scored; None if it can."""
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        return "is not 4 finite numbers"
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return "is inverted or empty (xmax <= xmin or ymax <= ymin)"
    if width is not None and (min(x1, width - 1) <= max(x0, 0) or min(y1, height - 1) <= max(y0, 0)):
        return f"lies outside the {width} x {height} image"
    return None


def check_boxes(samples: "SampleTable", list_path: str, box_source: Callable[[str], str], skip: bool = False,
                main: bool = True, workers: int = 8) -> tuple:
    """Ground-truth boxes of an evaluation list, against their image's size (read from the file header).
    Returns (samples to evaluate, names left out). `box_source(name)` says where a box comes from (the list
    line, or an ImageNet XML). Images whose header cannot be read are left to the loader's --on-bad-image."""
    headers = read_headers([s.path for s in samples], workers)
    bad, rotated = [], []
    for s, header in zip(samples, headers):
        width, height, orientation = header if header is not None else (None, None, 1)
        if orientation not in (None, 1):
            rotated.append(s.name)
        for box in s.boxes:
            problem = _box_problem(box, width, height)
            if problem is not None:
                if not skip:
                    raise UserError(f"{box_source(s.name)}: the ground-truth box {box} of {s.name} {problem}: fix it, "
                                    f"or pass --on-bad-image skip to leave such images out of the evaluation")
                bad.append(s.name)
                break
    if rotated:
        _say(f"warning: {len(rotated)} images carry an EXIF orientation tag (e.g. {rotated[0]}); they are decoded "
             f"rotated, as the authors' cv2.imread does, while their boxes are in the stored frame, so their "
             f"localisation may be scored against a turned box", main)
    if bad:
        _say(f"left out of the evaluation: {len(bad)} images whose ground-truth box cannot be scored, e.g. "
             f"{', '.join(bad[:3])}", main)
        out = set(bad)
        samples = subset(samples, [i for i, name in enumerate(samples.names()) if name not in out])
        if not len(samples):
            raise UserError(f"{list_path}: no image has a box that can be scored")
    return samples, bad


def read_headers(paths: list, workers: int = 8) -> list:
    """(width, height, EXIF orientation or None) of each image from its header (no decoding), or None
    where the file cannot be opened as an image (the loader reports it)."""
    from PIL import Image
    limit = pixel_limit()

    def header(path: str):
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open: the loader names it
                return None
            with Image.open(path) as im:
                # Pillow decodes a whole PNG to look for EXIF after its pixels: never one over the limit, which
                # the loader refuses from its header (a 15000 x 15000 PNG of 0.7 MB would take 0.7 GB here)
                exif = im.format in ("JPEG", "TIFF", "WEBP", "PNG") and im.size[0] * im.size[1] <= limit
                orientation = im.getexif().get(0x0112) if exif else None
                return im.size[0], im.size[1], orientation
        except Exception:  # unreadable here: the loader names it and applies --on-bad-image
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(header, paths, chunksize=64))


def check_writable(folder: str, flag: str, lock: bool = False) -> None:
    """Create `folder` if needed and make sure a file can be written there, before any work is done; `lock`:
    also take the folder for this run (`utils.engine.lock`: a second run into it stops, naming the first)."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"cannot write to {folder} ({reason}): pass a writable {flag}") from None
    if lock:
        import utils.engine.lock as locks
        locks.hold(folder, flag)


def check_stage_folder(folder: str, stage: str, force: bool, flag: str = "--savepath",
                       replaced: str = "its model-*.pth, checkpoint.pth and logs", named: Optional[str] = None) -> None:
    """A run of `stage` (a stage folder's name, e.g. cub200-seg) writes into `folder`: a training run its snapshots,
    checkpoint.pth and logs, a test.py its results (`replaced`: what of another run it would replace). Refuse a
    folder holding another stage's training run (as its args.json, else its checkpoint.pth, says), unless
    `force`. A run of the same stage, a rerun, a --resume or its test.py, goes on as before. `named`: how the
    message names the folder (default: `flag folder`)."""
    other, source = _run_stage(folder)
    if other is not None and other != stage and not force:
        raise UserError(f"{named or f'{flag} {folder}'} holds a run of {other} (its {source}), not of {stage}: this "
                        f"run would replace {replaced}. Pass another {flag}, or --force to write over it")


def _run_stage(folder: str) -> tuple:
    """(the stage whose training run wrote `folder`, the file that says so), or (None, None) when no file tells:
    no run, or files too damaged to say. args.json without a "stage" (older runs) names its script's folder
    in its command line, when it was started from outside that folder."""
    try:
        with open(os.path.join(folder, "args.json"), encoding="utf-8") as f:
            config = json.load(f)
        if isinstance(config, dict):
            stage = config.get("stage")
            script = str(config.get("command", "")).split(" ")[0]
            if stage is None and os.path.basename(script) in ("train.py", "test.py"):
                stage = os.path.basename(os.path.dirname(script)) or None
            if isinstance(stage, str):
                return stage, "args.json"
    except (OSError, ValueError):
        pass
    checkpoint = os.path.join(folder, "checkpoint.pth")
    if os.path.isfile(checkpoint):
        try:
            state = torch_load(checkpoint)
        except UserError:  # a damaged state: --resume names it; a new run may write over it
            return None, None
        stage = (state.get("args") or {}).get("stage") if isinstance(state, dict) else None
        if isinstance(stage, str):
            return stage, "checkpoint.pth"
    return None, None


def list_file(datapath: str, listname: str) -> str:
    return listname if os.path.isabs(listname) else os.path.join(datapath, listname)


def box_source(box_file: Optional[Callable[[str, str], str]], datapath: str, list_path: str) -> Callable[[str], str]:
    """Where an image's ground-truth boxes come from, for messages: `box_file(datapath, name)` (the data set's
    table entry: ImageNet's box/<file>.xml), or, without one, its list line (CUB layout)."""
    if box_file is not None:
        return lambda name: box_file(datapath, name)
    return _line_finder(list_path)


def check_finite_maps(finite: "torch.Tensor", indices: list, samples: list, snapshot: str) -> None:
    """Stop at the first image whose maps are NaN/inf: its mask would be silently empty (or full)."""
    if not bool(finite.all()):
        name = samples[indices[int((~finite).nonzero()[0])]].name
        raise UserError(f"the model {snapshot} gives non-finite (NaN/inf) maps for {name}: its weights are broken "
                        f"(a diverged training run?); use another snapshot")
