"""`python dataset/prepare.py openimages`: OpenImages30k (Choe et al., CVPR 2020) as wsolevaluation publishes it.

    python dataset/prepare.py openimages --root dataset/OpenImages --metadata <wsolevaluation>/metadata/OpenImages

Reads their metadata (`<metadata>/{train,val,test}/image_ids.txt`, `class_labels.txt`, and for val and test
`localization.txt`: `id,mask_path,ignore_path`, one line per instance mask, the ignore mask named on an image's
first line only) and checks it against the images and masks under `--root` (their `OpenImages/` folder: ids and
mask paths are relative to it). Writes `<root>/{train,val,test}.txt` (`id,label`: the stages' lists, CUB's
format without a box) and a checked copy of the val and test metadata in `<root>/wsol_metadata/OpenImages/<split>/`,
which the seg stage's test.py evaluates with. Existing outputs are kept unless --force.
"""
from __future__ import annotations

import argparse
import os
from utils.data.datasets import OPENIMAGES
from utils.errors import UserError
from utils.engine.outputs import write_text
from utils.wsol_eval import _image_ids, _relative, _rows

SPLITS = ("train", "val", "test")
META_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt")

LAYOUT = """\
ROOT is wsolevaluation's dataset/OpenImages folder:
  ROOT/{train,val,test}/<class>/<id>.jpg          class folders are Open Images ids (01226z, ...)
  ROOT/{val,test}/<class>/<id>_m<class>_<n>.png   instance masks, beside the images
  ROOT/{val,test}/<class>/<id>_ignore.png         ignore masks
METADATA is their metadata/OpenImages folder (or one holding OpenImages/):
  METADATA/<split>/image_ids.txt                  test/01226z/7af766bd43da900b.jpg
  METADATA/<split>/class_labels.txt               id,label (0-based)
  METADATA/{val,test}/localization.txt            id,mask_path,ignore_path (paths relative to ROOT)
Writes ROOT/train.txt, val.txt, test.txt (id,label) and ROOT/wsol_metadata/OpenImages/{val,test}/."""


def _split_folder(metadata: str, split: str) -> str:
    for folder in (os.path.join(metadata, split), os.path.join(metadata, "OpenImages", split)):
        if os.path.isfile(os.path.join(folder, "image_ids.txt")):
            return folder
    raise UserError(f"metadata file not found: {os.path.join(metadata, split, 'image_ids.txt')} (give --metadata "
                    f"wsolevaluation's metadata/OpenImages folder)")


def read_split(root: str, metadata: str, split: str) -> dict:
    """One split's metadata, checked: {"folder", "ids": [id], "labels": {id: int}, "lines": [(id, mask, ignore)]}.
    Every id is `<split>/<class>/<file>` with its image under `root`; every id has a label; every mask file
    named exists under `root`. Raises UserError naming the file and line."""
    folder = _split_folder(metadata, split)
    ids_path, labels_path = os.path.join(folder, "image_ids.txt"), os.path.join(folder, "class_labels.txt")
    ids = _image_ids(ids_path)
    line_of = {iid: no for no, (iid,) in _rows(ids_path, 1)}
    for iid in ids:
        parts = iid.split("/")
        if len(parts) != 3 or parts[0] != split:
            raise UserError(f"{ids_path}:{line_of[iid]}: image id {iid} is not in its split's folder (expected "
                            f"{split}/<class>/<file>.jpg)")
        if not os.path.isfile(os.path.join(root, iid)):
            nested = os.path.join(root, "OpenImages")
            hint = (f" (give --root {nested}: ids are relative to their OpenImages folder)"
                    if os.path.isfile(os.path.join(nested, iid)) else "")
            raise UserError(f"{ids_path}:{line_of[iid]}: image not found: {os.path.join(root, iid)}{hint}")
    labels, label_line = {}, {}
    for no, (iid, label) in _rows(labels_path, 2):
        iid = _relative(labels_path, no, iid)
        try:
            labels[iid] = int(label)
        except ValueError:
            raise UserError(f"{labels_path}:{no}: label {label!r} of {iid} is not an integer") from None
        label_line[iid] = no
    unlabelled = [i for i in ids if i not in labels]
    if unlabelled:
        raise UserError(f"{labels_path}: no label for {len(unlabelled)} image(s) of image_ids.txt, e.g. "
                        f"{unlabelled[0]}")
    meta = {"folder": folder, "ids": ids, "labels": labels, "label_line": label_line, "lines": []}
    if split == "train":
        return meta
    loc = os.path.join(folder, "localization.txt")
    known, first_line = set(ids), {}
    for no, (iid, mask, ignore) in _rows(loc, 3):
        iid = _relative(loc, no, iid)
        if iid not in known:
            raise UserError(f"{loc}:{no}: image id {iid} is not in {ids_path}")
        if not mask:
            raise UserError(f"{loc}:{no}: {iid} has no mask path (expected id,mask_path,ignore_path)")
        first = first_line.setdefault(iid, no) == no
        if first and not ignore:
            raise UserError(f"{loc}:{no}: the first line of {iid} names no ignore mask (wsolevaluation's format: "
                            f"an image's first line names its <id>_ignore.png, its other lines leave it empty)")
        if ignore and not first:
            raise UserError(f"{loc}:{no}: a second ignore mask for {iid} (line {first_line[iid]} names its first; "
                            f"only an image's first line names one, wsolevaluation's reader refuses others)")
        mask, ignore = _relative(loc, no, mask, "mask path"), ignore and _relative(loc, no, ignore, "ignore-mask path")
        for rel in (mask, ignore):
            if rel and not os.path.isfile(os.path.join(root, rel)):
                raise UserError(f"{loc}:{no}: mask not found: {os.path.join(root, rel)}")
        meta["lines"].append((iid, mask, ignore))
    masked = {iid for iid, _, _ in meta["lines"]}
    missing = [i for i in ids if i not in masked]
    if missing:
        raise UserError(f"{loc} has no mask for {len(missing)} image(s), e.g. {missing[0]}")
    return meta


def check_labels(splits: dict) -> int:
    """The number of classes: the class folders of the train ids; every label must lie in 0..K-1 and each class
    folder keep one label in every split. Returns K."""
    folders = sorted({iid.split("/")[1] for iid in splits["train"]["ids"]})
    label_of: dict = {}
    for split, meta in splits.items():
        path = os.path.join(meta["folder"], "class_labels.txt")
        for iid in meta["ids"]:
            label, no = meta["labels"][iid], meta["label_line"][iid]
            if not 0 <= label < len(folders):
                raise UserError(f"{path}:{no}: label {label} of {iid} is outside 0..{len(folders) - 1} (the "
                                f"{len(folders)} class folders of the train split)")
            cls = iid.split("/")[1]
            if label_of.setdefault(cls, (label, path, no))[0] != label:
                first = label_of[cls]
                raise UserError(f"{path}:{no}: class folder {cls} has label {label}, but {first[0]} at "
                                f"{first[1]}:{first[2]}")
    return len(folders)


def _write(path: str, lines: list, force: bool) -> None:
    if os.path.exists(path) and not force:
        print(f"kept existing {path} (rerun with --force to rewrite it)")
        return
    # no half-written list after an interrupted run, a temporary of this process, a failed write in one line
    write_text(path, "".join(line + "\n" for line in lines))
    print(f"wrote {path} ({len(lines)} lines)")


def prepare_openimages(root: str, metadata: str, force: bool = False) -> dict:
    """Check wsolevaluation's OpenImages metadata against `root` and write the lists and the metadata copy.
    Returns {split: number of images}. Nothing is written unless every split is sound."""
    if not os.path.isdir(root):
        raise UserError(f"OpenImages folder not found: {root}")
    if not os.path.isdir(metadata):
        raise UserError(f"metadata folder not found: {metadata}")
    splits = {split: read_split(root, metadata, split) for split in SPLITS}
    classes = check_labels(splits)
    for split, meta in splits.items():
        _write(os.path.join(root, f"{split}.txt"), [f"{i},{meta['labels'][i]}" for i in meta["ids"]], force)
        if split == "train":
            continue
        out = os.path.join(root, "wsol_metadata", OPENIMAGES.wsol_name, split)
        _write(os.path.join(out, "image_ids.txt"), meta["ids"], force)
        _write(os.path.join(out, "class_labels.txt"), [f"{i},{meta['labels'][i]}" for i in meta["ids"]], force)
        _write(os.path.join(out, "localization.txt"), [",".join(line) for line in meta["lines"]], force)
    counts = {split: len(meta["ids"]) for split, meta in splits.items()}
    print(f"OpenImages: {counts['train']} train / {counts['val']} val / {counts['test']} test images, "
          f"{classes} classes, {sum(len(m['lines']) for m in splits.values())} instance masks")
    return counts


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("openimages", help="OpenImages30k (wsolevaluation's layout and metadata)",
                       description=LAYOUT, formatter_class=formatter)
    p.add_argument("--root", required=True, default=argparse.SUPPRESS, help="their dataset/OpenImages folder")
    p.add_argument("--metadata", required=True, default=argparse.SUPPRESS,
                   help="their metadata/OpenImages folder (holding train/, val/, test/)")
    p.add_argument("--force", action="store_true", help="rewrite lists and wsol_metadata/ that already exist")
