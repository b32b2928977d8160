"""List files: the samples a stage reads, in the list formats of each data-set layout (the authors' CUB and
ImageNet lists, docs/formats.md; OpenImages' `id,label`), and the class lists beside them. Torch-free: the
data-set table (utils/data/datasets.py) names these readers, and wsolevaluation's evaluator, which must not import
torch in its worker processes, reads that table.

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

Every reader takes (datapath, list name, with_boxes) and returns a `SampleTable`; `with_boxes`: the caller
evaluates, so every image needs its ground-truth boxes.
"""
from __future__ import annotations

import codecs
import csv
import os
import posixpath
import xml.etree.ElementTree as ET
from array import array
from dataclasses import dataclass, field

import numpy as np

from utils.errors import UserError


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


# ------------------------------------------------------------------------------------------ names
def normal_name(name: str) -> str:
    """A relative name (a list's relpath, a wsolevaluation image id or mask path) in its one written form:
    `./001.X/a.jpg` and `001.X//a.jpg` are `001.X/a.jpg`, so a repeat or a clash is seen whichever way the
    name is written, and an artefact keyed by it is one file. Raises ValueError for a name that leaves its
    folder (absolute, or with a `..` component; a backslash counts as a separator, as on Windows) or names
    no file (empty, `.`)."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"{name!r} leaves its folder (an absolute path or '..')")
    normal = posixpath.normpath(name)
    if normal == "." or name.endswith("/"):
        raise ValueError(f"{name!r} names no file")
    return normal


def _list_name(path: str, n: int, name: str) -> str:
    """`normal_name` of the name on line `n` of the list `path`; an error names the line."""
    try:
        return normal_name(name)
    except ValueError as e:
        raise UserError(f"{path}:{n}: {e}: list paths relative to the data set's image folder") from None


# ------------------------------------------------------------------------------------------ lists
def list_path(datapath: str, listname: str) -> str:
    """The list file `listname` (relative to `datapath`, or absolute), which must exist."""
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
    lines = [line.strip() for _, line in list_lines(path)]
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


def text_lines(path: str):
    """(line number, line) of each line of a text file from elsewhere (a list, a class list, wsolevaluation's
    metadata, an annotation table): UTF-8, a leading byte-order mark ignored (a spreadsheet's, Notepad's), lines
    ending at `\n` (a `\r` before it is left to the caller's strip). Any other encoding is one UserError naming
    the file, the line and the byte, never a UnicodeDecodeError, nor a BOM kept in the first name."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line: "
                                f"{raw[e.start:e.start + 4]!r}): save the file as UTF-8") from None
            yield n, line


def csv_rows(path: str):
    """(line number, fields) of each row of a CSV file from elsewhere (`--boxes`, Kaggle's LOC_val_solution.csv),
    read by `text_lines`' rule (UTF-8, a byte-order mark is fine); the number is the line the row ends on."""
    rows = csv.reader(line for _, line in text_lines(path))
    for row in rows:
        yield rows.line_num, row


def list_lines(path: str):
    """(line number, line) of each non-blank line of a list file (`text_lines`: UTF-8, a byte-order mark is fine)."""
    for n, line in text_lines(path):
        if line.strip():
            yield n, line


def read_cub_list(datapath: str, listname: str, require_boxes: bool = False) -> SampleTable:
    """CUB-layout list: `relpath,label,xmin ymin xmax ymax` per line (label 0-based); the box field may
    hold more boxes (4 numbers each) or be left out (`relpath,label`). `require_boxes`: every image
    must have one (evaluation), else one error line says what to do."""
    check_datapath(datapath)
    path, root = list_path(datapath, listname), cub_image_dir(datapath)
    samples = TableBuilder()
    for n, line in list_lines(path):
        try:
            fields = line.strip().split(",")
            if len(fields) not in (2, 3):
                raise ValueError(f"{len(fields)} comma-separated fields")
            name, label = fields[0], int(fields[1])
            boxes = _parse_boxes(fields[2] if len(fields) == 3 else "")
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'relpath,label,xmin ymin xmax ymax' (more boxes: 4 more "
                            f"numbers each; none: 'relpath,label'), got {line.strip()!r}") from None
        samples.add(_list_name(path, n, name), root, label, boxes)
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
            return [line.split()[0] for _, line in list_lines(p)]
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


def imagenet_box_file(datapath: str, name: str) -> str:
    """The PASCAL-VOC file of an ImageNet val image's boxes: `box/<file>.xml`, whatever folder the image is in."""
    return os.path.join(datapath, "box", os.path.splitext(os.path.basename(name))[0] + ".xml")


def read_imagenet_list(datapath: str, listname: str, with_boxes: bool = True) -> SampleTable:
    """ImageNet list: `relpath label` per line; a list whose file name starts with `train` lists train/
    images, any other val/ images (flat or per-synset). Val boxes of the image's own class come from
    box/<file>.xml."""
    check_datapath(datapath)
    path = list_path(datapath, listname)
    split = "train" if os.path.basename(listname).startswith("train") else "val"
    synsets = read_synsets(datapath) if split == "val" else None
    folder = os.path.join(datapath, split)
    samples = TableBuilder()
    for n, line in list_lines(path):
        try:
            name, label = line.split()
            label = int(label)
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'relpath label', got {line.strip()!r}") from None
        name = _list_name(path, n, name)
        if synsets is not None and not 0 <= label < len(synsets):
            raise UserError(f"{path}:{n}: label {label} of {name} is outside 0..{len(synsets) - 1} (the "
                            f"{len(synsets)} synsets of {datapath}): fix the list")
        where, boxes = folder, []
        if split == "val":
            if not os.path.exists(os.path.join(folder, name)):  # val/<synset>/<file> layout
                where = os.path.join(folder, synsets[label])
            if with_boxes:
                xml = imagenet_box_file(datapath, name)
                boxes = [b for s, b in read_voc_boxes(xml) if s == synsets[label]]
                if not boxes:
                    raise UserError(f"{xml}: no box of the image's class {synsets[label]}")
        samples.add(name, where, label, boxes)
    samples = samples.table()
    if not len(samples):
        raise UserError(f"{path} is empty")
    return samples


def read_openimages_list(datapath: str, listname: str, with_boxes: bool = False) -> SampleTable:
    """OpenImages30k list (`dataset/prepare.py openimages`): `relpath,label` per line, relpath = wsolevaluation's
    image id (`train/01226z/7af766bd43da900b.jpg`) under `datapath`. No boxes: its ground truth is pixel masks,
    read from `<datapath>/wsol_metadata/OpenImages/<split>/localization.txt` by the evaluation, so a caller
    that needs boxes (`with_boxes`) is refused."""
    if with_boxes:
        raise UserError(f"{listname}: OpenImages has no ground-truth boxes, only masks: it is evaluated by PxAP "
                        f"(openimages-seg/test.py)")
    check_datapath(datapath)
    path = list_path(datapath, listname)
    samples = TableBuilder()
    for n, line in list_lines(path):
        fields = line.strip().split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            label = int(fields[1])
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'relpath,label', got {line.strip()!r}") from None
        samples.add(_list_name(path, n, fields[0]), datapath, label, [])
    samples = samples.table()
    if not len(samples):
        raise UserError(f"{path} is empty")
    return samples


