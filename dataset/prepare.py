"""Write the SPOL list files (docs/formats.md) and wsolevaluation metadata into a data folder.

    python dataset/prepare.py cub --root dataset/CUB_200_2011 [--check-images] [--force]
    python dataset/prepare.py imagenet --root dataset/ILSVRC2012 [--force]
    python dataset/prepare.py folder --root DIR [--val-fraction 0.1 --seed 0] [--boxes boxes.csv]   # your own images
    python dataset/prepare.py openimages --root dataset/OpenImages --metadata <wsolevaluation>/metadata/OpenImages

CUB-200-2011: from the official annotation files, `train.txt` / `val.txt` with lines
`relpath,label,xmin ymin xmax ymax` (label 0-based, box x0y0x1y1 = x, y, x + width, y + height in
original pixels, integral values written as integers as in the authors' lists: `60 27 385 331`), and
`wsol_metadata/CUB/test/` for the val (= official test) split.
ImageNet: `synsets.txt` (class order), `train.txt` (`synset/file.JPEG label`), `val.txt`
(`file.JPEG label`) and `wsol_metadata/ILSVRC/test/` (wsolevaluation's split name for ILSVRC2012 val).

The wsolevaluation metadata (Choe et al., CVPR 2020) is laid out as their published `metadata/`: four files
keyed by their image ids (CUB `<class>/<file>.jpg`, ImageNet `val/<file>.JPEG`): `image_ids.txt` (`id`),
`class_labels.txt` (`id,label`), `image_sizes.txt` (`id,width,height`) and `localization.txt`
(`id,x0,y0,x1,y1`, integers clipped to the image, one line per GT box).
Existing outputs are never overwritten unless --force is given.
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from utils.data.images import MAX_PIXELS, BadImage, read_image, set_max_pixels  # noqa: E402
from utils.data.datasets import CUB, IMAGENET  # noqa: E402
from utils.data.lists import csv_rows, cub_image_dir, list_lines, read_synsets, read_voc_boxes  # noqa: E402
from utils.errors import UserError, run_main  # noqa: E402
from utils.engine.lock import hold, release_all  # noqa: E402
from utils.engine.outputs import write_text  # noqa: E402
from dataset.folder import add_parser as add_folder_parser, is_utf8, prepare_folder  # noqa: E402
from dataset.openimages import add_parser as add_openimages_parser, prepare_openimages  # noqa: E402

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WSOL_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")


# ---------------------------------------------------------------------------------------- helpers
def _twice(items: list) -> list:
    return sorted(k for k, n in Counter(items).items() if n > 1)


def _head(items: list, n: int = 10) -> str:
    """The first n items, comma-separated, and how many there are when that is not all of them."""
    shown = ", ".join(str(i) for i in items[:n])
    return shown if len(items) <= n else f"{shown}, ... ({len(items)} in all)"


def _num(v: float) -> str:
    """A coordinate as text: `12` when integral (as the authors' lists), else the float's shortest repr, which
    parses back to the same float."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def wsol_box(box: list, width: int, height: int) -> tuple:
    """An x0y0x1y1 box as wsolevaluation's metadata holds it: integers clipped to [0, width - 1] x [0, height - 1].

    Their published CUB test boxes are x, y, x + width, y + height clipped so (checked line by line against the
    authors' val.txt: 36 of 5,794 reach the right or bottom border and are one less), their ILSVRC ones the XML
    values clipped so; their loader int()-parses every value. CUB's and ImageNet's official values are all
    integral, so their rule for a fraction cannot be read off their files: we truncate, as int() and their
    box rescaling do.
    """
    x0, y0, x1, y1 = (int(float(v)) for v in box)
    return (min(max(x0, 0), width - 1), min(max(y0, 0), height - 1),
            min(max(x1, 0), width - 1), min(max(y1, 0), height - 1))


def _write_lines(path: str, lines: Iterable[str]) -> None:
    """Write UTF-8 via a temporary file of this process and os.replace (utils.engine.outputs.write_text): an interrupted
    run leaves no half-written list, two runs never share a temporary, a failed write is one error line."""
    write_text(path, "".join(line + "\n" for line in lines))


def _exists(path: str, is_dir: bool = False) -> bool:
    """A list file, or a metadata folder holding any of its files (a partial one is kept whole too)."""
    return any(os.path.exists(os.path.join(path, f)) for f in WSOL_FILES) if is_dir else os.path.exists(path)


def _may_write(path: str, force: bool, is_dir: bool = False) -> bool:
    """False (and say so) when `path` exists and --force was not given."""
    exists = _exists(path, is_dir)
    if exists and not force:
        print(f"kept existing {path} (rerun with --force to rewrite it)")
    return force or not exists


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise UserError(f"{what} not found: {path}")


def _image_sizes(paths: list) -> list:
    """(width, height) of each image, decoded as the stages decode it. Raises UserError on bad files."""
    def size(path: str) -> tuple:
        try:
            h, w = read_image(path).shape[:2]
            return (w, h), None
        except BadImage as e:
            return None, str(e)

    if len(paths) > 100:
        print(f"reading the sizes of {len(paths)} images ...", flush=True)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # cv2 releases the GIL
        results = list(pool.map(size, paths))
    bad = [reason for _, reason in results if reason]
    if bad:
        raise UserError(f"{len(bad)} unusable image(s):\n  " + "\n  ".join(bad[:10]))
    return [s for s, _ in results]


def _write_wsol_metadata(folder: str, names: list, labels: list, sizes: list, boxes: list) -> None:
    """The four wsolevaluation metadata files; names are their image ids, sizes (width, height), boxes[i] the
    list of x0y0x1y1 GT boxes of names[i] in original pixels (written as `wsol_box`)."""
    _write_lines(os.path.join(folder, "image_ids.txt"), names)
    _write_lines(os.path.join(folder, "class_labels.txt"), (f"{n},{c}" for n, c in zip(names, labels)))
    _write_lines(os.path.join(folder, "image_sizes.txt"), (f"{n},{w},{h}" for n, (w, h) in zip(names, sizes)))
    _write_lines(os.path.join(folder, "localization.txt"),
                 (f"{n}," + ",".join(map(str, wsol_box(box, w, h)))
                  for n, (w, h), bs in zip(names, sizes, boxes) for box in bs))
    print(f"wrote {folder}/ ({', '.join(WSOL_FILES)}: {len(names)} images)")


# -------------------------------------------------------------------------------------------- CUB
@dataclass
class CubRecord:
    id: str
    relpath: str
    label: int      # 0-based
    box: list       # [x0, y0, x1, y1] in original pixels, floats
    train: bool


def _read_table(root: str, fname: str, ncols: int) -> dict:
    """`id v1 .. vn` lines of a CUB annotation file as {id: [v1, .., vn]}, in file order."""
    path = os.path.join(root, fname)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: is {root} the unpacked CUB_200_2011 folder?")
    table = {}
    for n, line in list_lines(path):
        parts = line.split()
        if len(parts) != ncols + 1:
            raise UserError(f"{path}:{n}: expected {ncols + 1} fields, got {line.strip()!r}")
        if parts[0] in table:
            raise UserError(f"{path}:{n}: image id {parts[0]} listed twice")
        table[parts[0]] = parts[1:]
    return table


def _check_same_ids(root: str, images: dict, fname: str, table: dict) -> None:
    missing = [i for i in images if i not in table]
    if missing:
        raise UserError(f"{os.path.join(root, fname)}: no line for image id(s) {_head(missing)} of images.txt")
    extra = [i for i in table if i not in images]
    if extra:
        raise UserError(f"{os.path.join(root, fname)}: image id(s) {_head(extra)} not in images.txt")


def _parse_cub_record(root: str, i: str, relpath: str, cls: str, is_train: str, box: list,
                      nclasses: int) -> CubRecord:
    try:
        label = int(cls)
    except ValueError:
        raise UserError(f"{os.path.join(root, 'image_class_labels.txt')}: image id {i}: class must be an "
                        f"integer, got {cls!r}") from None
    try:
        x, y, w, h = (float(v) for v in box)
    except ValueError:
        raise UserError(f"{os.path.join(root, 'bounding_boxes.txt')}: image id {i}: expected numbers "
                        f"'x y width height', got {' '.join(box)!r}") from None
    if not 1 <= label <= nclasses:
        raise UserError(f"{os.path.join(root, 'image_class_labels.txt')}: image id {i}: class {label} "
                        f"outside 1..{nclasses}")
    if is_train not in ("0", "1"):
        raise UserError(f"{os.path.join(root, 'train_test_split.txt')}: image id {i}: is_train must be 0 or 1, "
                        f"got {is_train!r}")
    if "," in relpath:
        raise UserError(f"{os.path.join(root, 'images.txt')}: image id {i}: a comma in {relpath!r} would "
                        f"break the list format")
    return CubRecord(i, relpath, label - 1, [x, y, x + w, y + h], is_train == "1")


def read_cub_annotations(root: str) -> tuple:
    """([CubRecord] in images.txt order, number of classes) from the official annotation files."""
    images = _read_table(root, "images.txt", 1)
    others = {f: _read_table(root, f, n) for f, n in
              (("image_class_labels.txt", 1), ("train_test_split.txt", 1), ("bounding_boxes.txt", 4))}
    for fname, table in others.items():
        _check_same_ids(root, images, fname, table)
    labels, split, boxes = others.values()
    classes = os.path.join(root, "classes.txt")
    if os.path.isfile(classes):
        nclasses = sum(1 for _ in list_lines(classes))
    else:  # optional for this script: the list files need only the labels
        nclasses = max(int(c[0]) for c in labels.values() if c[0].isdigit()) if labels else 0
    records = [_parse_cub_record(root, i, images[i][0], labels[i][0], split[i][0], boxes[i], nclasses)
               for i in images]
    if not records:
        raise UserError(f"{os.path.join(root, 'images.txt')} lists no image")
    return records, nclasses


def _check_cub_images(image_dir: str, records: list, check_sizes: bool) -> dict:
    """Every listed image must exist; with check_sizes also warn about boxes outside the image.
    Returns {relpath: (width, height)} for the images whose size was read."""
    missing = [r.relpath for r in records if not os.path.isfile(os.path.join(image_dir, r.relpath))]
    if missing:
        raise UserError(f"{len(missing)} image(s) listed in images.txt not found under {image_dir}: "
                        f"{_head(missing)}")
    empty = [r for r in records if r.box[2] <= r.box[0] or r.box[3] <= r.box[1]]
    for r in empty[:10]:
        print(f"warning: id {r.id} {r.relpath}: box {' '.join(map(str, r.box))} has zero area "
              f"(no prediction can localise it: it will count as a miss)", file=sys.stderr)
    if empty:
        print(f"warning: {len(empty)} box(es) with zero area (kept as they are)", file=sys.stderr)
    if not check_sizes:
        return {}
    sizes = dict(zip((r.relpath for r in records),
                     _image_sizes([os.path.join(image_dir, r.relpath) for r in records])))
    outside = [r for r in records if r.box[0] < 0 or r.box[1] < 0 or
               r.box[2] > sizes[r.relpath][0] or r.box[3] > sizes[r.relpath][1]]
    for r in outside[:10]:
        w, h = sizes[r.relpath]
        print(f"warning: id {r.id} {r.relpath}: box {' '.join(map(str, r.box))} reaches outside the "
              f"{w}x{h} image", file=sys.stderr)
    if outside:
        print(f"warning: {len(outside)} box(es) reach outside their image (kept as they are)", file=sys.stderr)
    return sizes


def cub_list_line(r: CubRecord) -> str:
    # byte-identical to the authors' train.txt / val.txt for CUB's integral boxes; a fraction keeps its float
    return f"{r.relpath},{r.label}," + " ".join(map(_num, r.box))


def prepare_cub(root: str, force: bool = False, check_images: bool = False) -> None:
    _require_dir(root, "CUB_200_2011 folder")
    image_dir = cub_image_dir(root)
    records, nclasses = read_cub_annotations(root)
    sizes = _check_cub_images(image_dir, records, check_images)
    splits = {"train": [r for r in records if r.train], "val": [r for r in records if not r.train]}
    val, meta = splits["val"], os.path.join(root, "wsol_metadata", CUB.wsol_name, CUB.wsol_split)
    if force or not _exists(meta, is_dir=True):  # before writing anything: a bad val image stops the run
        missing = [r for r in val if r.relpath not in sizes]
        sizes.update(zip((r.relpath for r in missing),
                         _image_sizes([os.path.join(image_dir, r.relpath) for r in missing])))
    for split, rows in splits.items():
        path = os.path.join(root, f"{split}.txt")
        if _may_write(path, force):
            _write_lines(path, map(cub_list_line, rows))
            print(f"wrote {path} ({len(rows)} images)")
    if _may_write(meta, force, is_dir=True):
        _write_wsol_metadata(meta, [CUB.wsol_image_id(r.relpath) for r in val], [r.label for r in val],
                             [sizes[r.relpath] for r in val], [[r.box] for r in val])
    print(f"CUB-200-2011: {len(splits['train'])} train / {len(val)} val images, {nclasses} classes")


# --------------------------------------------------------------------------------------- ImageNet
@dataclass
class ValImage:
    name: str       # the val.txt name: file.JPEG
    label: int
    path: str       # where the image is: val/<file> or val/<synset>/<file>


def _is_image(fname: str) -> bool:
    return fname.lower().endswith(IMAGE_EXTENSIONS)


def _image_files(folder: str) -> list:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def imagenet_classes(root: str) -> list:
    """The class order (synsets.txt / LOC_synset_mapping.txt, else sorted train/ folders), checked
    against the train/ folders."""
    synsets = read_synsets(root)
    dupes = _twice(synsets)
    if dupes or not synsets:
        raise UserError(f"class list of {root} is empty or names synsets twice: {_head(dupes)}")
    folders = [e.name for e in os.scandir(os.path.join(root, "train")) if e.is_dir()]
    unknown = sorted(set(folders) - set(synsets))
    if unknown:
        raise UserError(f"train/ folder(s) {_head(unknown)} not in the class list (synsets.txt or "
                        f"LOC_synset_mapping.txt in {root})")
    absent = sorted(set(synsets) - set(folders))
    if absent:
        print(f"warning: {len(absent)} class(es) without a train/ folder: {_head(absent)}", file=sys.stderr)
    return synsets


def imagenet_train_lines(root: str, synsets: list) -> list:
    """`synset/file label` for every image under train/, sorted by synset then file name."""
    index = {s: i for i, s in enumerate(synsets)}
    train = os.path.join(root, "train")
    lines = [f"{s}/{fname} {index[s]}" for s in sorted(synsets) if os.path.isdir(os.path.join(train, s))
             for fname in _image_files(os.path.join(train, s))]
    if not lines:
        raise UserError(f"no image (.jpeg/.jpg/.png) under {train}/<synset>/")
    return lines


def _check_names(root: str, names: list, split: str) -> None:
    """Names the `relpath label` lists can carry: no space, tab or line break (the stages split the line on
    whitespace), UTF-8 (what the lists are). Checked before anything is written."""
    spaced = [n for n in names if any(ch.isspace() for ch in n)]
    if spaced:
        raise UserError(f"{root}/{split}: file name(s) {_head([repr(n) for n in spaced])} hold a space, tab or line "
                        f"break, which the list lines (`relpath label`) cannot carry: rename them")
    foreign = [os.fsencode(n) for n in names if not is_utf8(n)]
    if foreign:
        raise UserError(f"{root}/{split}: file name(s) {_head(foreign)} are not UTF-8, which the lists are: "
                        f"rename them")


def _val_from_list(root: str, synsets: list) -> list:
    """The val images of an existing val.txt (`file.JPEG label`)."""
    path, val = os.path.join(root, "val.txt"), os.path.join(root, "val")
    out = []
    for n, line in list_lines(path):  # UTF-8, a byte-order mark ignored: as the stages read it
        try:
            name, label = line.split()
            label = int(label)
            if not 0 <= label < len(synsets):
                raise ValueError
        except ValueError:
            raise UserError(f"{path}:{n}: expected 'file.JPEG label' with label in 0..{len(synsets) - 1}, "
                            f"got {line.strip()!r}") from None
        image = os.path.join(val, name)
        out.append(ValImage(name, label, image if os.path.exists(image) else
                            os.path.join(val, synsets[label], name)))
    return out


def _val_from_folders(val: str, synsets: list, subdirs: list) -> list:
    """val/<synset>/<file> layout: the label is the folder's."""
    unknown = sorted(set(subdirs) - set(synsets))
    if unknown:
        raise UserError(f"{val}: folder(s) {_head(unknown)} are not among the classes")
    stray = _image_files(val)
    if stray:
        raise UserError(f"{val} mixes images ({_head(stray, 3)}) with per-synset folders: use one layout")
    index = {s: i for i, s in enumerate(synsets)}
    out = [ValImage(f, index[s], os.path.join(val, s, f))
           for s in subdirs for f in _image_files(os.path.join(val, s))]
    dupes = _twice([v.name for v in out])
    if dupes:
        raise UserError(f"{val}: file name(s) {_head(dupes)} in more than one folder (val.txt keys by name)")
    return out


def _val_from_csv(csv_path: str, val: str, synsets: list) -> list:
    """Flat val/ labelled by Kaggle's LOC_val_solution.csv (the first object's synset)."""
    index, first = {s: i for i, s in enumerate(synsets)}, {}
    rows = csv_rows(csv_path)  # UTF-8, a byte-order mark fine
    if next(rows, (1, None))[1] != ["ImageId", "PredictionString"]:
        raise UserError(f"{csv_path}: expected the header 'ImageId,PredictionString'")
    for n, row in rows:
        tokens = row[1].split() if len(row) == 2 else []
        if not tokens:
            raise UserError(f"{csv_path}:{n}: expected 'ImageId,synset x0 y0 x1 y1 ...', "
                            f"got {','.join(row)!r}")
        if tokens[0] not in index:
            raise UserError(f"{csv_path}:{n}: synset {tokens[0]} is not among the classes")
        first[row[0]] = index[tokens[0]]
    files = _image_files(val)
    unlabelled = [f for f in files if os.path.splitext(f)[0] not in first]
    if unlabelled:
        raise UserError(f"{csv_path}: no line for val image(s) {_head(unlabelled)}")
    return [ValImage(f, first[os.path.splitext(f)[0]], os.path.join(val, f)) for f in files]


def _val_from_xml(root: str, val: str, synsets: list) -> list:
    """Flat val/ labelled by the synset of the first object in box/<file>.xml."""
    index, out, files = {s: i for i, s in enumerate(synsets)}, [], _image_files(val)
    _require_xmls(root, files)
    for f in files:
        xml = _xml_path(root, f)
        objects = read_voc_boxes(xml)
        if not objects:
            raise UserError(f"{xml}: no <object>: cannot label val image {f}")
        if objects[0][0] not in index:
            raise UserError(f"{xml}: synset {objects[0][0]} is not among the classes")
        out.append(ValImage(f, index[objects[0][0]], os.path.join(val, f)))
    return out


def imagenet_val_images(root: str, synsets: list, use_list: bool) -> tuple:
    """([ValImage] sorted by name, where the labels came from)."""
    val = os.path.join(root, "val")
    subdirs = sorted(e.name for e in os.scandir(val) if e.is_dir())
    csv_path = os.path.join(root, "LOC_val_solution.csv")
    if use_list:
        images, source = _val_from_list(root, synsets), "the existing val.txt"
    elif subdirs:
        images, source = _val_from_folders(val, synsets, subdirs), "val/<synset>/ folders"
    elif os.path.isfile(csv_path):
        images, source = _val_from_csv(csv_path, val, synsets), f"{csv_path} (boxes: box/<file>.xml)"
    else:
        images, source = _val_from_xml(root, val, synsets), "the first object in box/<file>.xml"
    if not images:
        raise UserError(f"no val image (.jpeg/.jpg/.png) in {val}")
    missing = [v.name for v in images if not os.path.isfile(v.path)]
    if missing:
        raise UserError(f"{len(missing)} listed val image(s) not found under {val}: {_head(missing)}")
    return sorted(images, key=lambda v: v.name), source


def _xml_path(root: str, name: str) -> str:
    return os.path.join(root, "box", os.path.splitext(os.path.basename(name))[0] + ".xml")


def _require_xmls(root: str, names: list) -> None:
    missing = [_xml_path(root, n) for n in names if not os.path.isfile(_xml_path(root, n))]
    if missing:
        raise UserError(f"{len(missing)} val image(s) without a box file: {_head(missing)}\n  The val boxes "
                        f"must be in {os.path.join(root, 'box')}/<file>.xml (PASCAL-VOC, from ILSVRC2012's "
                        f"bounding box archive)")


def imagenet_val_boxes(root: str, images: list, synsets: list) -> list:
    """The boxes of each val image's own class, from box/<file>.xml; every object must name a class."""
    _require_xmls(root, [v.name for v in images])
    known, out = set(synsets), []
    for v in images:
        xml = _xml_path(root, v.name)
        objects = read_voc_boxes(xml)
        unknown = sorted({s for s, _ in objects if s not in known})
        if unknown:
            raise UserError(f"{xml}: synset(s) {_head(unknown)} not among the classes")
        own = [box for s, box in objects if s == synsets[v.label]]
        if not own:
            raise UserError(f"{xml}: no box of the image's class {synsets[v.label]} (label {v.label}) "
                            f"for val image {v.name}")
        out.append(own)
    return out


def _voc_size(xml: str) -> Optional[tuple]:
    """(width, height) from the XML's <size>, None when absent or unusable."""
    try:
        size = ET.parse(xml).getroot().find("size")
        w, h = int(size.find("width").text), int(size.find("height").text)
        return (w, h) if w > 0 and h > 0 else None
    except (ET.ParseError, AttributeError, ValueError, TypeError):
        return None


def imagenet_val_sizes(root: str, images: list) -> list:
    """(width, height) of each val image: the XML's <size>, else read from the image."""
    sizes = [_voc_size(_xml_path(root, v.name)) for v in images]
    unknown = [i for i, s in enumerate(sizes) if s is None]
    for i, s in zip(unknown, _image_sizes([images[i].path for i in unknown])):
        sizes[i] = s
    return sizes


def prepare_imagenet(root: str, force: bool = False) -> None:
    _require_dir(root, "ImageNet folder")
    for sub in ("train", "val"):
        _require_dir(os.path.join(root, sub), f"{sub}/ folder (expected {root}/{sub}/...)")
    synsets = imagenet_classes(root)
    train = imagenet_train_lines(root, synsets)
    val_list = os.path.join(root, "val.txt")
    keep_val = os.path.exists(val_list) and not force
    images, source = imagenet_val_images(root, synsets, use_list=keep_val)
    _check_names(root, [line.rsplit(" ", 1)[0] for line in train], "train")
    _check_names(root, [v.name for v in images], "val")
    meta = os.path.join(root, "wsol_metadata", IMAGENET.wsol_name, IMAGENET.wsol_split)  # their "val": ImageNetV2
    write_meta = force or not _exists(meta, is_dir=True)
    # derived labels are checked against the boxes now; a kept val.txt only when its metadata is written
    boxes = imagenet_val_boxes(root, images, synsets) if write_meta or not keep_val else None
    sizes = imagenet_val_sizes(root, images) if write_meta else None  # before writing anything
    path = os.path.join(root, "synsets.txt")
    if not os.path.exists(path):  # the class order of every later stage; never rewritten (it is an input)
        _write_lines(path, synsets)
        print(f"wrote {path} ({len(synsets)} classes)")
    path = os.path.join(root, "train.txt")
    if _may_write(path, force):
        _write_lines(path, train)
        print(f"wrote {path} ({len(train)} images)")
    if _may_write(val_list, force):
        _write_lines(val_list, (f"{v.name} {v.label}" for v in images))
        print(f"wrote {val_list} ({len(images)} images, labels from {source})")
    if _may_write(meta, force, is_dir=True):
        _write_wsol_metadata(meta, [IMAGENET.wsol_image_id(v.name) for v in images], [v.label for v in images],
                             sizes, boxes)
    old = os.path.join(root, "wsol_metadata", IMAGENET.wsol_name, IMAGENET.imagenetv2_split)
    if _exists(old, is_dir=True):  # what this script wrote before it followed wsolevaluation's split names
        print(f"note: {old}/ is not read by anything here: wsolevaluation's ILSVRC split 'val' is ImageNetV2, "
              f"the ILSVRC2012 val metadata is {meta}/", file=sys.stderr)
    print(f"ImageNet: {len(train)} train / {len(images)} val images, {len(synsets)} classes "
          f"(val labels from {source})")


# ------------------------------------------------------------------------------------------- main
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults printed by argparse, descriptions kept as laid out (they show folder trees)."""


CUB_LAYOUT = """\
ROOT is the unpacked official CUB_200_2011 folder:
  ROOT/images/<class>/<file>.jpg      (a folder named image/ is accepted too)
  ROOT/images.txt                     id relpath
  ROOT/image_class_labels.txt         id class          (1-based)
  ROOT/train_test_split.txt           id is_train       (1: train.txt, 0: val.txt)
  ROOT/bounding_boxes.txt             id x y width height
  ROOT/classes.txt                    id name
Writes ROOT/train.txt and ROOT/val.txt (`relpath,label,xmin ymin xmax ymax`, label 0-based,
xmax = x + width, ymax = y + height, as the authors' lists) and ROOT/wsol_metadata/CUB/test/ for the
val split, as wsolevaluation's metadata/CUB/test/ (reads the size of every val image)."""

IMAGENET_LAYOUT = """\
ROOT is the ILSVRC2012 folder:
  ROOT/train/<synset>/<file>.JPEG
  ROOT/val/<file>.JPEG  or  ROOT/val/<synset>/<file>.JPEG
  ROOT/box/<file>.xml                 PASCAL-VOC val boxes (<object><name>synset ...)
  ROOT/synsets.txt or ROOT/LOC_synset_mapping.txt   optional: the class order
                                      (default: sorted train/ folders, the standard 0..999)
  ROOT/LOC_val_solution.csv           optional (Kaggle): val labels for a flat val/
Writes ROOT/synsets.txt (if absent), ROOT/train.txt (`synset/file.JPEG label`), ROOT/val.txt
(`file.JPEG label`) and ROOT/wsol_metadata/ILSVRC/test/ (as wsolevaluation's metadata/ILSVRC/test/,
ids val/<file>.JPEG). The val labels come from, in this order:
an existing val.txt (kept), val/<synset>/ folders, LOC_val_solution.csv, the first object in
box/<file>.xml. Every val image needs box/<file>.xml with a box of its own class."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter,
                                     epilog="`prepare.py cub --help` / `prepare.py imagenet --help` / "
                                            "`prepare.py folder --help` / `prepare.py openimages --help` show the "
                                            "folder layout each expects.")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{cub,imagenet,folder,openimages}")
    cub = sub.add_parser("cub", help="CUB-200-2011 lists and metadata", description=CUB_LAYOUT,
                         formatter_class=_Formatter)
    inet = sub.add_parser("imagenet", help="ImageNet (ILSVRC2012) lists and metadata",
                          description=IMAGENET_LAYOUT, formatter_class=_Formatter)
    for p in (cub, inet):
        p.add_argument("--root", required=True, default=argparse.SUPPRESS, help="the data folder (see above)")
        p.add_argument("--force", action="store_true",
                       help="rewrite list files and wsol_metadata/ that already exist")
    cub.add_argument("--check-images", action="store_true",
                     help="read every image's size and warn about boxes reaching outside it (slow)")
    for p in (cub, inet, add_folder_parser(sub, _Formatter)):
        p.add_argument("--max-pixels", dest="max_pixels", type=int, default=MAX_PIXELS,
                       help="an image whose header claims more pixels is unreadable (the stages' --max-pixels)")
    add_openimages_parser(sub, _Formatter)
    return parser


def main(argv: Optional[list] = None) -> None:
    args = get_args_parser().parse_args(argv)
    set_max_pixels(getattr(args, "max_pixels", MAX_PIXELS))  # the limit of read_image, the size reads' decoder
    if os.path.isdir(args.root):  # one run per data folder: a second one would write the same lists at once
        hold(args.root, "--root")
    try:
        if args.dataset == "cub":
            prepare_cub(args.root, args.force, args.check_images)
        elif args.dataset == "openimages":
            prepare_openimages(args.root, args.metadata, args.force)
        elif args.dataset == "folder":
            prepare_folder(args.root, args.val_fraction, args.seed, args.boxes, args.force, args.skip_unreadable)
        else:
            prepare_imagenet(args.root, args.force)
    finally:
        release_all()  # as a stage's end does: a later run in this process may use the folder


if __name__ == "__main__":
    run_main(main)
