"""Data sets: the SPOL list files (docs/formats.md), robust image reading, and the torch Datasets of
every stage.

A list line becomes a `Sample`: the list's relative name (the key of every artefact: masks, boxes.csv,
top1top5.npy), the image path, the 0-based label and the ground-truth boxes in original pixels
(`x0 y0 x1 y1`, floats, as written in the list / XML). CUB lists carry one box per image; ImageNet
val boxes come from `box/<file>.xml` (only the boxes of the image's own class are kept). A list is read
into a `SampleTable`, which keeps its samples in a few numpy arrays and makes each `Sample` as it is
asked for: 1.28M Python objects would cost ~0.5 GB in the main process, and every forked loader worker
would copy their pages as it touched them (reference counts).

CUB-layout lists also serve class-folder data sets (`dataset/prepare.py folder`): there the box field
holds any number of boxes, 4 numbers each (`cat/a.jpg,0,1 2 30 40 50 2 90 40`), or none
(`cat/a.jpg,0`: no ground truth; training and mask generation need none, evaluation refuses such a
list). Such a data set is its own image folder: its root holds `classes.txt` and the class folders,
and the lists' relpaths start there, as CUB's start in `images/`.
"""
from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from array import array
from dataclasses import dataclass, field
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import UserError


# image files OpenCV decodes (GIF: its first frame): what class folders and localize.py's folders may hold
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# OpenImages30k's masks, which lie beside its images: `<id>_ignore.png`, `<id>_m<class>_<8 hex digits>.png`
OPENIMAGES_MASK_FILES = r"_(ignore|m[0-9a-z_]+_[0-9a-f]{8})\.png$"


@dataclass
class Sample:
    name: str                       # relpath as in the list file
    path: str                       # image file on disk
    label: int                      # 0-based class index
    boxes: list = field(default_factory=list)  # [[x0, y0, x1, y1], ...] in original pixels


class SampleTable:
    """The samples of a list in numpy arrays: a sequence of `Sample`s made on access (`table[i]`, iteration),
    whose memory is a few bytes per field and image and is never written by reading it (forked loader workers
    share its pages). Names are UTF-8, each followed by a newline (list lines cannot hold one); a path is
    `os.path.join(folder, name)` with one of a few folders; boxes are rows of one float64 array.
    """

    def __init__(self, names: np.ndarray, name_ends: np.ndarray, folders: list, folder: np.ndarray,
                 labels: np.ndarray, boxes: np.ndarray, box_ends: np.ndarray):
        self._names, self._name_ends, self._folders, self._folder = names, name_ends, folders, folder
        self.labels, self._boxes, self._box_ends = labels, boxes, box_ends

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        start = int(self._name_ends[i - 1]) + 1 if i > 0 else 0
        return self._names[start:int(self._name_ends[i])].tobytes().decode("utf-8")

    def names(self) -> list:
        """Every name, in order (one decode of the whole buffer)."""
        return self._names.tobytes().decode("utf-8").split("\n")[:-1] if len(self) else []

    def path(self, i: int) -> str:
        return os.path.join(self._folders[self._folder[i]], self.name(i))

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def boxes(self, i: int) -> list:
        start = int(self._box_ends[i - 1]) if i > 0 else 0
        return self._boxes[start:int(self._box_ends[i])].tolist()

    def box_counts(self) -> np.ndarray:
        """The number of ground-truth boxes of each sample."""
        return np.diff(self._box_ends, prepend=0)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(range(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        i = int(i) % len(self)
        return Sample(self.name(i), self.path(i), self.label(i), self.boxes(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, indices) -> "SampleTable":
        """The samples at `indices` (in that order) as a new table."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        name_starts = np.concatenate([[0], self._name_ends[:-1] + 1])
        box_starts = np.concatenate([[0], self._box_ends[:-1]])
        names = _gather(self._names, name_starts[indices], self._name_ends[indices] + 1)  # with the newlines
        boxes = _gather(self._boxes, box_starts[indices], self._box_ends[indices])
        name_ends = np.cumsum(self._name_ends[indices] + 1 - name_starts[indices]) - 1
        box_ends = np.cumsum(self._box_ends[indices] - box_starts[indices])
        return SampleTable(names, name_ends, self._folders, self._folder[indices], self.labels[indices], boxes,
                           box_ends)


def _gather(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """values[starts[0]:ends[0]], values[starts[1]:ends[1]], ... concatenated (rows of a 1-D or 2-D array)."""
    lengths = ends - starts
    if not len(lengths) or not lengths.sum():
        return values[:0].copy()
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return values[np.arange(int(lengths.sum())) + offsets]


class TableBuilder:
    """Collects samples line by line into compact buffers (no Python object per sample) for a `SampleTable`."""

    def __init__(self):
        self.names, self.name_ends, self.folder, self.labels = bytearray(), array("q"), array("l"), array("q")
        self.boxes, self.box_ends, self.folders = array("d"), array("q"), {}

    def add(self, name: str, folder: str, label: int, boxes: list) -> None:
        """A sample `name` whose image is `os.path.join(folder, name)`."""
        self.folder.append(self.folders.setdefault(folder, len(self.folders)))
        self.names += name.encode("utf-8") + b"\n"
        self.name_ends.append(len(self.names) - 1)
        self.labels.append(label)
        for box in boxes:
            self.boxes.extend(box)
        self.box_ends.append(len(self.boxes) // 4)

    def table(self) -> SampleTable:
        return SampleTable(np.frombuffer(bytes(self.names), dtype=np.uint8), np.array(self.name_ends, dtype=np.int64),
                           list(self.folders), np.array(self.folder, dtype=np.int32),
                           np.array(self.labels, dtype=np.int64), np.array(self.boxes, dtype=np.float64).reshape(-1, 4),
                           np.array(self.box_ends, dtype=np.int64))


def subset(samples, indices) -> "SampleTable | list":
    """The samples at `indices` of a `SampleTable` (a table) or of a list of `Sample`s (a list)."""
    if isinstance(samples, SampleTable):
        return samples.select(indices)
    return [samples[i] for i in indices]


class BadImage(Exception):
    """An image file that cannot be used (missing, unreadable, truncated, empty)."""


# ----------------------------------------------------------------------------------------- images
# Newer OpenCV (IMREAD_COLOR_RGB) decodes to RGB itself: the pixels of BGR + cvtColor (tests/test_transforms.py),
# ~0.1 ms less per image; older versions decode to BGR and convert afterwards
_DECODE = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


def read_image(path: str) -> np.ndarray:
    """RGB uint8 H x W x 3 image; grayscale and CMYK files are converted. Raises BadImage."""
    try:
        # a FIFO or device named x.jpg would block open() for ever: check what it is before opening it
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadImage(f"{path}: not a regular file")
        data = np.fromfile(path, dtype=np.uint8)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise BadImage(f"{path}: cannot open ({type(e).__name__})") from None
    if data.size == 0:
        raise BadImage(f"{path}: empty file")
    if data[:2].tobytes() == b"\xff\xd8" and jpeg_ends(data) is False:
        # a JPEG cut short decodes "successfully" with a grey bottom; its end-of-image marker is missing
        raise BadImage(f"{path}: truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(data, _DECODE)
    if image is None:
        raise BadImage(f"{path}: not a readable image")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadImage(f"{path}: zero-size image")
    return image if _DECODE != cv2.IMREAD_COLOR else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def jpeg_ends(data: np.ndarray) -> Optional[bool]:
    """Does a JPEG's marker structure reach its end-of-image marker? Walks the segments from SOI (skipping
    each by its length, so markers inside EXIF thumbnails do not count) and the entropy-coded data after
    every SOS (progressive files have several) to the next real marker. Bytes after EOI are allowed, as
    decoders allow them. None where the structure is not one this walk knows (the decoder decides)."""
    n = len(data)
    ffs = np.flatnonzero(data[:-1] == 0xFF)
    follow = data[ffs + 1]
    # real markers in entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart marker or a fill byte
    markers = ffs[(follow != 0x00) & (follow != 0xFF) & ((follow < 0xD0) | (follow > 0xD7))]
    i = 2
    while i + 1 < n:
        if data[i] != 0xFF:
            return None
        marker = int(data[i + 1])
        if marker == 0xFF:          # fill byte before a marker
            i += 1
        elif marker == 0xD9:        # EOI
            return True
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
        elif i + 3 >= n:
            return False
        else:
            end = i + 2 + (int(data[i + 2]) << 8 | int(data[i + 3]))
            if marker != 0xDA:      # a segment: skip its payload
                i = end
                continue
            k = np.searchsorted(markers, end)  # SOS: the scan's data runs to the next real marker
            if k == len(markers):
                return False
            i = int(markers[k])
    return False


def mask_name(name: str) -> str:
    """Relative path of a sample's pseudo mask: the list name with a .png extension."""
    return os.path.splitext(name)[0] + ".png"


def read_pseudo_mask(path: str) -> np.ndarray:
    """Pseudo mask as float32 H x W x 3 in [0, 1] (ch0 = CAM, ch1 = Gaussian prior). Raises BadImage."""
    if not os.path.isfile(path):
        raise BadImage(f"{path}: pseudo mask missing (run the cam stage's test.py, or check --maskpath)")
    mask = cv2.imread(path, cv2.IMREAD_COLOR)
    if mask is None:
        raise BadImage(f"{path}: unreadable pseudo mask")
    return mask.astype(np.float32) / 255.0


# ------------------------------------------------------------------------------------------ lists
def _list_path(datapath: str, listname: str) -> str:
    path = listname if os.path.isabs(listname) else os.path.join(datapath, listname)
    if not os.path.isfile(path):
        raise UserError(f"list file not found: {path}\n  Write it with: python dataset/prepare.py "
                        f"{{cub|imagenet|openimages}} --root {datapath}")
    return path


def check_datapath(datapath: str) -> None:
    if not os.path.isdir(datapath):
        raise UserError(f"data folder not found: {datapath}\n  Give --datapath (see README: Data), e.g. "
                        f"dataset/CUB_200_2011 unpacked from the official archive.")


def is_folder_dataset(datapath: str) -> bool:
    """A class-folder data set prepared by `dataset/prepare.py folder`: classes.txt, and no CUB images.txt."""
    return (os.path.isfile(os.path.join(datapath, "classes.txt"))
            and not os.path.isfile(os.path.join(datapath, "images.txt")))


def cub_image_dir(datapath: str) -> str:
    """Where a CUB-layout list's relpaths start: images/ (image/), or a class-folder data set's root."""
    for sub in ("images", "image"):  # the original repo renamed the folder to image/
        if os.path.isdir(os.path.join(datapath, sub)):
            return os.path.join(datapath, sub)
    if is_folder_dataset(datapath):
        return datapath
    raise UserError(f"no images/ folder in {datapath}: is it the unpacked CUB_200_2011 folder (or a folder of "
                    f"class folders? then run: python dataset/prepare.py folder --root {datapath})")


def read_class_names(datapath: str) -> list:
    """Class names in label order from `<datapath>/classes.txt` (`id name` lines, CUB's and
    `dataset/prepare.py folder`'s format)."""
    path = os.path.join(datapath, "classes.txt")
    if not os.path.isfile(path):
        raise UserError(f"no {path} to take the classes from: pass --clsnum, or write it with "
                        f"python dataset/prepare.py folder --root {datapath}")
    with open(path, encoding="utf-8-sig") as f:
        lines = [line.strip() for line in f if line.strip()]
    names = [line.split(None, 1)[1] if len(line.split(None, 1)) == 2 else "" for line in lines]
    if not names or not all(names):
        raise UserError(f"{path}: expected 'id name' lines (one per class), got {lines[:1] or 'nothing'}")
    return names


def count_classes(datapath: str) -> int:
    """The number of classes of a CUB-layout data set: the lines of its classes.txt."""
    return len(read_class_names(datapath))


def _parse_boxes(text: str) -> list:
    """'x0 y0 x1 y1 [x0 y0 x1 y1 ...]' (or nothing) -> [[x0, y0, x1, y1], ...]. Raises ValueError."""
    values = [float(v) for v in text.split()]
    if len(values) % 4:
        raise ValueError(f"{len(values)} box numbers, not a multiple of 4")
    return [values[i:i + 4] for i in range(0, len(values), 4)]


def read_cub_list(datapath: str, listname: str, require_boxes: bool = False) -> SampleTable:
    """CUB-layout list: `relpath,label,xmin ymin xmax ymax` per line (label 0-based); the box field may
    hold more boxes (4 numbers each) or be left out (`relpath,label`). `require_boxes`: every image
    must have one (evaluation), else one error line says what to do."""
    check_datapath(datapath)
    path, root = _list_path(datapath, listname), cub_image_dir(datapath)
    samples = TableBuilder()
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                fields = line.strip().split(",")
                if len(fields) not in (2, 3):
                    raise ValueError(f"{len(fields)} comma-separated fields")
                name, label = fields[0], int(fields[1])
                boxes = _parse_boxes(fields[2] if len(fields) == 3 else "")
                samples.add(name, root, label, boxes)
            except ValueError:
                raise UserError(f"{path}:{n}: expected 'relpath,label,xmin ymin xmax ymax' (more boxes: 4 more "
                                f"numbers each; none: 'relpath,label'), got {line.strip()!r}") from None
    samples = samples.table()
    if not len(samples):
        raise UserError(f"{path} is empty")
    unboxed = np.flatnonzero(samples.box_counts() == 0)
    if require_boxes and len(unboxed):
        raise UserError(f"{path}: {len(unboxed)} of {len(samples)} images have no ground-truth box (e.g. "
                        f"{samples.name(unboxed[0])}): evaluation needs boxes; give them with python "
                        f"dataset/prepare.py folder --boxes boxes.csv --force, or box new images with localize.py")
    return samples


def read_synsets(datapath: str) -> list:
    """The class order: synsets.txt / LOC_synset_mapping.txt if present, else sorted train/ folders."""
    for fname in ("synsets.txt", "LOC_synset_mapping.txt"):
        p = os.path.join(datapath, fname)
        if os.path.isfile(p):
            with open(p, encoding="utf-8-sig") as f:
                return [line.split()[0] for line in f if line.strip()]
    train = os.path.join(datapath, "train")
    if os.path.isdir(train):
        return sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    raise UserError(f"cannot tell the class order of {datapath}: no synsets.txt, LOC_synset_mapping.txt or train/")


def read_voc_boxes(xml_path: str) -> list:
    """[(synset, [x0, y0, x1, y1]), ...] from a PASCAL-VOC style ImageNet box file."""
    try:
        root = ET.parse(xml_path).getroot()
        out = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            out.append((obj.find("name").text.strip(),
                        [float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]))
        return out
    except FileNotFoundError:
        raise UserError(f"box file missing: {xml_path}") from None
    except (ET.ParseError, AttributeError, ValueError, TypeError) as e:
        raise UserError(f"{xml_path}: malformed box XML ({e})") from None


def read_imagenet_list(datapath: str, listname: str, split: str, with_boxes: bool = True) -> SampleTable:
    """ImageNet list: `relpath label` per line; train images under train/, val under val/ (flat or
    per-synset). Val boxes of the image's own class come from box/<file>.xml."""
    check_datapath(datapath)
    path = _list_path(datapath, listname)
    synsets = read_synsets(datapath) if split == "val" else None
    folder = os.path.join(datapath, split)
    samples = TableBuilder()
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                name, label = line.split()
                label = int(label)
            except ValueError:
                raise UserError(f"{path}:{n}: expected 'relpath label', got {line.strip()!r}") from None
            if synsets is not None and not 0 <= label < len(synsets):
                raise UserError(f"{path}:{n}: label {label} of {name} is outside 0..{len(synsets) - 1} (the "
                                f"{len(synsets)} synsets of {datapath}): fix the list")
            where, boxes = folder, []
            if split == "val":
                if not os.path.exists(os.path.join(folder, name)):  # val/<synset>/<file> layout
                    where = os.path.join(folder, synsets[label])
                if with_boxes:
                    xml = os.path.join(datapath, "box", os.path.splitext(os.path.basename(name))[0] + ".xml")
                    boxes = [b for s, b in read_voc_boxes(xml) if s == synsets[label]]
                    if not boxes:
                        raise UserError(f"{xml}: no box of the image's class {synsets[label]}")
            samples.add(name, where, label, boxes)
    samples = samples.table()
    if not len(samples):
        raise UserError(f"{path} is empty")
    return samples


def read_openimages_list(datapath: str, listname: str) -> SampleTable:
    """OpenImages30k list (`dataset/prepare.py openimages`): `relpath,label` per line, relpath = wsolevaluation's
    image id (`train/01226z/7af766bd43da900b.jpg`) under `datapath`. No boxes: its ground truth is pixel masks,
    read from `<datapath>/wsol_metadata/OpenImages/<split>/localization.txt` by the evaluation."""
    check_datapath(datapath)
    path = _list_path(datapath, listname)
    samples = TableBuilder()
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.strip().split(",")
            try:
                if len(fields) != 2:
                    raise ValueError
                samples.add(fields[0], datapath, int(fields[1]), [])
            except ValueError:
                raise UserError(f"{path}:{n}: expected 'relpath,label', got {line.strip()!r}") from None
    samples = samples.table()
    if not len(samples):
        raise UserError(f"{path} is empty")
    return samples


def read_list(dataset: str, datapath: str, listname: str, with_boxes: bool = True) -> SampleTable:
    """The samples of a list file (UTF-8, a leading byte-order mark ignored)."""
    try:
        if dataset == "openimages":
            return read_openimages_list(datapath, listname)
        if dataset == "cub":
            return read_cub_list(datapath, listname, require_boxes=with_boxes)
        split = "train" if os.path.basename(listname).startswith("train") else "val"
        return read_imagenet_list(datapath, listname, split, with_boxes)
    except UnicodeDecodeError as e:
        raise UserError(f"{_list_path(datapath, listname)} (or the class list beside it) is not UTF-8 text "
                        f"(byte {e.start}: {e.object[e.start:e.start + 4]!r}): save it as UTF-8") from None


# --------------------------------------------------------------------------------------- datasets
class ImageSet(Dataset):
    """Images of a list through a transform; optionally their pseudo masks (seg training).

    `samples`: a `SampleTable` (or a list of `Sample`s); `read(path)` decodes an image (`read_image`).
    `transform(image, mask, seed)` returns the transformed arrays. A bad file does not raise inside a
    worker (where the message would be buried in a re-raised traceback): the item comes back as
    `{"bad": name, "reason": ...}` and the caller decides (stop, or skip and count).
    """

    def __init__(self, samples, transform: Callable, maskpath: Optional[str] = None, seed: int = 0,
                 read: Callable[[str], np.ndarray] = read_image):
        self.samples, self.transform, self.maskpath, self.seed, self.read = samples, transform, maskpath, seed, read

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)  # training keys carry the epoch
        s = self.samples[index]
        try:
            image = self.read(s.path)
            mask = None
            if self.maskpath is not None:
                mask = read_pseudo_mask(os.path.join(self.maskpath, mask_name(s.name)))
                if mask.shape[:2] != image.shape[:2]:
                    raise BadImage(f"{os.path.join(self.maskpath, mask_name(s.name))}: pseudo mask is "
                                   f"{mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")
        except BadImage as e:
            return {"bad": s.name, "reason": str(e)}
        # per-sample seed: augmentation does not depend on worker count or on where a resumed run starts
        seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % (2 ** 32)
        image_t, mask_t = self.transform(image, mask, seed)
        item = {"image": image_t, "label": s.label, "index": index,
                "size": torch.tensor(image.shape[:2])}  # original H, W
        if mask_t is not None:
            item["mask"] = mask_t
        return item


def collate(items: list) -> dict:
    """Batch the good items; the bad ones are listed under "bad" as (name, reason)."""
    good = [it for it in items if "bad" not in it]
    batch = {"bad": [(it["bad"], it["reason"]) for it in items if "bad" in it]}
    if good:
        for key in good[0]:
            batch[key] = torch.utils.data.default_collate([it[key] for it in good])
    return batch
