"""Your own images: a folder of class folders becomes a data set the CUB stage scripts read unchanged.

    python dataset/prepare.py folder --root DIR [--val-fraction 0.1 --seed 0] [--boxes boxes.csv]

DIR holds one folder per class, images in it at any depth (`DIR/cat/a.jpg`, `DIR/cat/2021/b.png`);
the class of an image is its top folder (which may be a link to a folder elsewhere). Links to folders
inside a class folder are not followed, each file is listed once (by its real path: the first class in
sorted order keeps it), and hidden entries (`.*`, `__MACOSX`), files that are not images and files that
are not regular (a FIFO) are left out; all of these are counted and named on stderr.
Written into DIR, in the CUB layout (docs/formats.md):
  classes.txt          `<id> <class folder>` per line, id 1-based in sorted folder-name order; label = id - 1
  train.txt, val.txt   `relpath,label[,x0 y0 x1 y1 ...]`: relpaths start at DIR (DIR is its own image
                       folder, as CUB's lists start in images/); zero, one or more boxes, 4 numbers each
Every stage script then runs with `--datapath DIR` (the number of classes is read from classes.txt).

The split is drawn per class with numpy's default_rng(seed): round(fraction x images) val images, at
least one when the fraction is > 0 and the class has two or more images, never all of them.
Boxes are optional. `boxes.csv` rows are `relpath,xmin,ymin,xmax,ymax` (relpath as in the lists,
original pixels, x1/y1 the pixel edges after the object: a box over columns 10..19 has xmin 10, xmax
20), one row per box, an optional header row; with them the val images are drawn among the images that
have a box, and the seg stage's test.py can evaluate. Without boxes, training, pseudo masks and
localize.py work; evaluation says it needs boxes.
"""
from __future__ import annotations

import argparse
import math
import os
import posixpath
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from utils.data.images import IMAGE_EXTENSIONS, BadImage, read_image
from utils.data.lists import csv_rows, normal_name
from utils.errors import UserError
from utils.engine.outputs import write_text

# names the stage scripts give a meaning to in a data folder (cub_image_dir takes images/ or image/)
RESERVED = ("images", "image")
OUTPUTS = ("classes.txt", "train.txt", "val.txt")


@dataclass
class FolderImage:
    relpath: str                               # from DIR, '/'-separated: `<class>/.../<file>`
    label: int
    size: tuple = (0, 0)                       # (width, height), once read
    boxes: list = field(default_factory=list)  # [[x0, y0, x1, y1], ...] original pixels


def _head(items: list, n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown if len(items) <= n else f"{shown}, ... ({len(items)} in all)"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _write_lines(path: str, lines: list) -> None:
    """Via a temporary file of this process and os.replace (utils.engine.outputs.write_text): an interrupted run leaves
    no half-written list, two runs never share a temporary, a failed write is one error line."""
    write_text(path, "".join(line + "\n" for line in lines))


# ------------------------------------------------------------------------------------------- scan
def is_utf8(name: str) -> bool:
    """Is a name from os.listdir UTF-8? (Other bytes come back as surrogates.)"""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _walk_class(root: str, cls: str, seen: dict, skipped: dict) -> list:
    """Image relpaths under DIR/cls, sorted. Links to folders inside a class folder are not followed (a
    loop, or another class's folder, would list files again under this label); a file met before (by its
    real path, e.g. a link to another class's image) is left out. What is left out is added to `skipped`
    (reason -> relpaths; "not images" holds extensions); `seen` maps real paths to the relpath listed."""
    images = []

    def fail(e: OSError) -> None:
        raise UserError(f"cannot read folder {e.filename}: {e.strerror}")

    for folder, dirs, files in os.walk(os.path.join(root, cls), onerror=fail):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        keep = []
        for d in sorted(dirs):
            reason = ("hidden" if _hidden(d) else
                      "links to folders, not followed" if os.path.islink(os.path.join(folder, d)) else None)
            if reason:
                skipped[reason].append(posixpath.join(rel, d))
            else:
                keep.append(d)
        dirs[:] = keep
        for fname in sorted(files):
            path, relpath = os.path.join(folder, fname), posixpath.join(rel, fname)
            ext = os.path.splitext(fname)[1].lower()
            if _hidden(fname):
                skipped["hidden"].append(relpath)
            elif ext not in IMAGE_EXTENSIONS:  # other files (notes, ...) are ignored and counted
                skipped["not images"].append(ext or "(no extension)")
            elif not os.path.isfile(path):     # a FIFO, device or broken link would block or fail the stages
                skipped["not a regular file"].append(relpath)
            elif os.path.realpath(path) in seen:
                skipped["duplicate"].append(f"{relpath} (= {seen[os.path.realpath(path)]})")
            else:
                seen[os.path.realpath(path)] = relpath
                images.append(relpath)
    return sorted(images)


def _report_skipped(skipped: dict) -> None:
    """One stderr line counting and naming everything the scan left out."""
    parts = []
    if skipped["not images"]:
        parts.append(f"{len(skipped['not images'])} file(s) that are not images: "
                     + ", ".join(f"{ext} x{n}" for ext, n in Counter(skipped["not images"]).most_common()))
    for reason, label in (("hidden", "hidden (names starting with '.', __MACOSX)"),
                          ("not a regular file", "not a regular file"),
                          ("links to folders, not followed", "links to folders, not followed"),
                          ("duplicate", "duplicate(s) of an image listed already")):
        if skipped[reason]:
            parts.append(f"{len(skipped[reason])} {label}: {_head(skipped[reason])}")
    if parts:
        print("ignored " + "; ".join(parts), file=sys.stderr)


def scan_classes(root: str) -> tuple:
    """(class names sorted, [FolderImage] in class then path order). Raises UserError on a layout the
    stages cannot use: images outside class folders, reserved or empty class folders, a single class,
    names that break the list format, two images whose pseudo masks would share a name."""
    if not os.path.isdir(root):
        raise UserError(f"folder not found: {root}")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    # a class folder that is itself a link is taken as the class (data linked in from elsewhere); its files
    # are still listed once: one already listed under another class is a counted duplicate
    classes = [e.name for e in entries if e.is_dir() and not _hidden(e.name)]
    skipped = defaultdict(list)
    skipped["hidden"] += [e.name for e in entries if _hidden(e.name)]
    skipped["not a regular file"] += [e.name for e in entries if not e.is_dir() and not e.is_file()
                                      and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    stray = [e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    if stray:
        raise UserError(f"{root}: image(s) {_head(stray)} lie outside any class folder: put every image in "
                        f"{root}/<class>/")
    reserved = [c for c in classes if c in RESERVED]
    if reserved:
        raise UserError(f"{root}: a class folder may not be named {' or '.join(reserved)} (the stage scripts "
                        f"read <datapath>/images/ as CUB's image folder): rename it")
    if not classes:
        raise UserError(f"{root} holds no class folder: expected {root}/<class>/<image>")
    bad_names = [c for c in classes if c != c.strip() or any(ch in c for ch in ",\n\r")]
    if bad_names:
        raise UserError(f"{root}: class folder name(s) {_head([repr(c) for c in bad_names])} would break "
                        f"classes.txt or the lists (comma, line break, or spaces at either end): rename them")
    images, empty, seen = [], [], {}
    for label, cls in enumerate(classes):
        found = _walk_class(root, cls, seen, skipped)
        if not found:
            empty.append(cls)
        images += [FolderImage(rel, label) for rel in found]
    # a name in another encoding (Latin-1 from an old archive) cannot be written to the UTF-8 lists: refused now,
    # before any list is written (classes.txt alone, written before, blocked the rerun)
    foreign = [os.fsencode(n) for n in classes + [i.relpath for i in images] if not is_utf8(n)]
    if foreign:
        raise UserError(f"{root}: folder or file name(s) {_head(foreign)} are not UTF-8, which the lists are: "
                        f"rename them (e.g. convmv -f latin1 -t utf-8 -r --notest {root})")
    if empty:
        _report_skipped(skipped)  # an empty class may be one whose files were all left out
        raise UserError(f"{root}: class folder(s) {_head(empty)} hold no image ({', '.join(IMAGE_EXTENSIONS)}): "
                        f"add images or remove the folder(s)")
    if len(classes) == 1:
        raise UserError(f"{root}: only one class ({classes[0]}): the cam stage learns where objects are by telling "
                        f"classes apart, so it needs at least two class folders")
    _report_skipped(skipped)
    unusable = [i.relpath for i in images if any(ch in i.relpath for ch in ",\n\r")]
    if unusable:
        raise UserError(f"{root}: file name(s) {_head(unusable)} hold a comma or line break, which the list format "
                        f"(relpath,label,boxes) cannot carry: rename them")
    stems = defaultdict(list)
    for i in images:
        stems[os.path.splitext(i.relpath)[0]].append(i.relpath)
    clashes = [" and ".join(v) for v in stems.values() if len(v) > 1]
    if clashes:
        raise UserError(f"{root}: duplicate image names {_head(clashes, 3)}: files that differ only in their "
                        f"extension would share one pseudo mask (<name>.png); rename one of each")
    return classes, images


def read_sizes(root: str, images: list, skip_unreadable: bool) -> list:
    """Decode every image as the stages will (utils.data.images.read_image) and keep its size; an unreadable
    file stops with a list of them, or with `skip_unreadable` is left out and named. Returns the kept."""
    def size(item: FolderImage) -> Optional[str]:
        try:
            h, w = read_image(os.path.join(root, item.relpath)).shape[:2]
        except BadImage as e:
            return str(e)
        item.size = (w, h)
        return None

    if len(images) > 200:
        print(f"reading {len(images)} images ...", flush=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        reasons = list(pool.map(size, images))
    bad = [r for r in reasons if r]
    if bad and not skip_unreadable:
        raise UserError(f"{len(bad)} unreadable image(s) (rerun with --skip-unreadable to leave them out):\n  "
                        + "\n  ".join(bad[:10]) + ("\n  ..." if len(bad) > 10 else ""))
    for reason in bad:
        print(f"left out: {reason}", file=sys.stderr)
    return [i for i, r in zip(images, reasons) if not r]


# ------------------------------------------------------------------------------------------ boxes
def _norm_relpath(text: str) -> str:
    """A boxes.csv relpath in the lists' one form (`normal_name`; a Windows `\\` is a `/`); one that leaves --root
    (absolute, `..`) is kept as written: no image has it, so it is named as unknown."""
    text = text.strip().replace("\\", "/")
    try:
        return normal_name(text)
    except ValueError:
        return text


def read_boxes_csv(path: str, images: list, skipped: set) -> int:
    """Attach the boxes of `path` (`relpath,xmin,ymin,xmax,ymax` rows, optional header) to `images`;
    returns the number of boxes. Rows of images left out as unreadable (`skipped`) are dropped."""
    if not os.path.isfile(path):
        raise UserError(f"--boxes file not found: {path}")
    by_path = {i.relpath: i for i in images}
    unknown, count, outside = [], 0, []
    for n, row in csv_rows(path):  # UTF-8, a spreadsheet's byte-order mark fine
            if not row or not "".join(row).strip():
                continue
            if len(row) != 5:
                raise UserError(f"{path}:{n}: expected 'relpath,xmin,ymin,xmax,ymax', got {','.join(row)!r}")
            try:
                box = [float(v) for v in row[1:]]
            except ValueError:
                if n == 1:  # a header row
                    continue
                raise UserError(f"{path}:{n}: box values must be numbers, got {','.join(row[1:])!r}") from None
            x0, y0, x1, y1 = box
            if not all(math.isfinite(v) for v in box) or x1 <= x0 or y1 <= y0:
                raise UserError(f"{path}:{n}: box {','.join(row[1:])} is not xmin,ymin,xmax,ymax with xmax > xmin "
                                f"and ymax > ymin (original pixels; a box over columns 10..19 has xmin 10, xmax 20)")
            rel = _norm_relpath(row[0])
            if rel in skipped:
                continue
            if rel not in by_path:
                unknown.append(f"{row[0]} (line {n})")
                continue
            item = by_path[rel]
            w, h = item.size
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                outside.append(f"{rel} {_num(x0)} {_num(y0)} {_num(x1)} {_num(y1)} ({w}x{h})")
            item.boxes.append(box)
            count += 1
    if unknown:
        raise UserError(f"{path}: no such image in the class folders: {_head(unknown)}; relpaths are relative "
                        f"to --root, e.g. {images[0].relpath}")
    if outside:
        print(f"warning: {len(outside)} box(es) reach outside their image (kept; evaluation clips them): "
              f"{_head(outside, 3)}", file=sys.stderr)
    if not count:
        raise UserError(f"{path} holds no box")
    return count


# ------------------------------------------------------------------------------------------ split
def val_count(n: int, fraction: float) -> int:
    """Val images of a class of n: round(fraction * n), at least 1 when fraction > 0 and n >= 2, at most n - 1."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(round(fraction * n))))


def split(images: list, classes: list, fraction: float, seed: int, boxed_only: bool) -> tuple:
    """(train, val) image lists in class then path order. With `boxed_only` the val images are drawn
    among those with a box (a class with too few gets fewer)."""
    rng = np.random.default_rng(seed)
    by_class = defaultdict(list)
    for i in images:
        by_class[i.label].append(i)
    val, short = set(), []
    for label in range(len(classes)):
        members = by_class[label]
        want = val_count(len(members), fraction)
        pool = [i for i in members if i.boxes] if boxed_only else members
        order = rng.permutation(len(pool))  # drawn for every class: a class's split does not shift the next's
        chosen = [pool[k].relpath for k in order[:min(want, len(pool), len(members) - 1)]]
        if len(chosen) < want:
            short.append(f"{classes[label]} ({len(chosen)} of {want})")
        val.update(chosen)
    if short:
        print(f"warning: too few images with a box for the val share of class(es) {_head(short)}", file=sys.stderr)
    return [i for i in images if i.relpath not in val], [i for i in images if i.relpath in val]


def list_line(item: FolderImage) -> str:
    boxes = " ".join(_num(v) for box in item.boxes for v in box)
    return f"{item.relpath},{item.label}" + (f",{boxes}" if boxes else "")


# ------------------------------------------------------------------------------------------- main
def prepare_folder(root: str, val_fraction: float = 0.1, seed: int = 0, boxes: Optional[str] = None,
                   force: bool = False, skip_unreadable: bool = False) -> None:
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    root = os.path.normpath(root)
    present = [f for f in OUTPUTS if os.path.exists(os.path.join(root, f))]
    if present and not force:
        if {"classes.txt", "train.txt"} <= set(present):
            print(f"kept existing {', '.join(present)} in {root} (rerun with --force to rewrite them)")
            return
        raise UserError(f"{root} already has {' and '.join(present)} but not the rest of a prepared data set: "
                        f"rerun with --force to rewrite {', '.join(OUTPUTS)}")
    if os.path.isfile(os.path.join(root, "images.txt")):
        raise UserError(f"{root}/images.txt would make the stage scripts read {root} as the official CUB layout: "
                        f"move it away")
    classes, images = scan_classes(root)
    found = {i.relpath for i in images}
    images = read_sizes(root, images, skip_unreadable)
    skipped = found - {i.relpath for i in images}
    nboxes = read_boxes_csv(boxes, images, skipped) if boxes else 0
    left = Counter(i.label for i in images)
    gone = [c for k, c in enumerate(classes) if not left[k]]
    if gone:
        raise UserError(f"class folder(s) {_head(gone)} have no readable image left")
    train, val = split(images, classes, val_fraction, seed, boxed_only=bool(boxes))
    _write_lines(os.path.join(root, "classes.txt"), [f"{k + 1} {c}" for k, c in enumerate(classes)])
    _write_lines(os.path.join(root, "train.txt"), [list_line(i) for i in train])
    if val:
        _write_lines(os.path.join(root, "val.txt"), [list_line(i) for i in val])
    elif os.path.exists(os.path.join(root, "val.txt")):  # --force with no val share: no stale val.txt
        os.remove(os.path.join(root, "val.txt"))
    print(f"wrote {root}/classes.txt ({len(classes)} classes), train.txt ({len(train)} images)"
          + (f", val.txt ({len(val)} images)" if val else " (no val.txt: --val-fraction 0)"))
    if boxes:
        print(f"boxes: {nboxes} for {sum(bool(i.boxes) for i in images)} images "
              f"({sum(bool(i.boxes) for i in val)} of {len(val)} val images)")
    else:
        print("no boxes (--boxes boxes.csv): training, pseudo masks and localize.py work; evaluation needs boxes")
    print(f"next: python cub200-cam/train.py --datapath {root}   (see README: Your own data)")


def add_parser(sub: argparse._SubParsersAction, formatter: type) -> argparse.ArgumentParser:
    """The `folder` subcommand of dataset/prepare.py."""
    p = sub.add_parser("folder", help="your own images: a folder of class folders", description=__doc__,
                       formatter_class=formatter)
    p.add_argument("--root", required=True, default=argparse.SUPPRESS, help="the folder of class folders")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.1,
                   help="share of each class's images in val.txt (0: no val.txt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--boxes", help="CSV of ground-truth boxes, `relpath,xmin,ymin,xmax,ymax` per box (enables "
                                   "evaluation)")
    p.add_argument("--skip-unreadable", dest="skip_unreadable", action="store_true",
                   help="leave unreadable image files out of the lists (named on stderr) instead of stopping")
    p.add_argument("--force", action="store_true", help="rewrite classes.txt, train.txt and val.txt")
    return p
