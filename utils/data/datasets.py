"""The data sets the stages know, one table: everything that differs between CUB-200-2011, ImageNet-1K and
OpenImages30k (how a list is read, how the classes are counted and named, the cam stage's head and loss, the
mask threshold, which figures can be computed, what wsolevaluation calls it) is a field of its `DataSet`
entry here, and the code asks the entry, never the name.

A stage script names its entry (`DATASET = CUB`); the entry's `name` is what `args.dataset` records (and
checkpoint.pth with it), and `DATASETS[name]` finds the entry again. A class-folder data set of
`dataset/prepare.py folder` needs no entry: its lists are CUB's format and the CUB stage scripts read it
(utils/data/lists.py `cub_image_dir` finds its images). A new layout of its own needs one list reader in
utils/data/lists.py and one entry below; every stage script then runs it with its own recipe: `--dataset <name>`
(tests/test_datasets.py does it). Torch-free: utils/wsol_eval.py, which runs in pool workers, reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from utils.errors import UserError
from utils.data.lists import (SampleTable, imagenet_box_file, read_class_names, read_cub_list,
                         read_imagenet_list, read_openimages_list, read_synsets)


def _as_listed(name: str) -> str:
    """A list name that is wsolevaluation's image id as it is (CUB's `<class>/<file>.jpg`)."""
    return name


@dataclass(frozen=True)
class DataSet:
    """One data set: its layout's reader and every property in which the stages treat it differently."""

    name: str                    # the key: `args.dataset`, checkpoint.pth's "args", utils.cam_loc's --dataset
    stage_prefix: str            # its stage folders: <prefix>-cam/, <prefix>-seg/, <prefix>-cls/ (a layout run
                                 # with another's scripts: theirs)
    reader: Callable[[str, str, bool], SampleTable]  # (datapath, list name, with_boxes): utils/data/lists.py
    count_classes: bool          # --clsnum not given: the lines of <datapath>/classes.txt (else the script's default)
    class_names: Callable[[str], list]  # datapath -> the class names in label order (localize.py --classifier)
    class_list: str              # the file that names them, for messages
    dual_head: bool              # cam stage: the dual head, the deep maps distilled into the fused ones (and its
                                 # loss: CE + distillation) instead of one head and CE (docs/method.md §3)
    threshold: float             # a mask is p > threshold: the SPOL evaluation's and localize.py's default
    boxes: bool                  # ground-truth boxes: the SPOL protocol and MaxBoxAcc; without, PxAP alone
    wsol_name: str               # wsolevaluation's name: metadata/<wsol_name>/, utils.wsol_eval --dataset_name
    excluded: tuple = ()         # image files the SPOL evaluation leaves out, as the authors' code does
    box_file: Optional[Callable[[str, str], str]] = None  # (datapath, name) -> the file of its boxes, for
                                 # messages; None: the list line
    segmentations: Optional[str] = None  # folder of pixel masks under datapath that adds PxAP, when present
    annotation_files: Optional[str] = None  # regex of annotation files beside the images (localize.py skips them)
    wsol_split: str = "test"     # the wsolevaluation split of the evaluated (val) list
    wsol_image_id: Callable[[str], str] = _as_listed  # list name -> wsolevaluation's image id (score-map name)
    imagenetv2_split: Optional[str] = None  # wsolevaluation's split that holds ImageNetV2, not this data set

    def read_list(self, datapath: str, listname: str, with_boxes: bool = True) -> SampleTable:
        """The samples of a list file (UTF-8, a leading byte-order mark ignored: utils.data.lists.text_lines);
        `with_boxes`: every image needs its ground-truth boxes (evaluation)."""
        return self.reader(datapath, listname, with_boxes)


CUB = DataSet(
    name="cub", stage_prefix="cub200", reader=read_cub_list,
    count_classes=True, class_names=read_class_names, class_list="classes.txt",
    dual_head=True,         # the authors' fine-grained recipe
    threshold=0.2,          # the authors' CUB evaluation
    boxes=True,             # in the list lines
    segmentations="segmentations",  # a separate archive (segmentations.tgz)
    wsol_name="CUB",
)

IMAGENET = DataSet(
    name="imagenet", stage_prefix="imagenet", reader=read_imagenet_list,
    count_classes=False,    # 1000: the scripts' --clsnum default
    class_names=read_synsets, class_list="synsets.txt",
    dual_head=False,
    threshold=0.8,          # the authors' ImageNet evaluation
    boxes=True, box_file=imagenet_box_file,
    excluded=("ILSVRC2012_val_00033202.JPEG",),  # its label is wrong
    wsol_name="ILSVRC",
    wsol_image_id=lambda name: "val/" + os.path.basename(name),  # their ids never name the synset folder
    imagenetv2_split="val",
)

OPENIMAGES = DataSet(
    name="openimages", stage_prefix="openimages", reader=read_openimages_list,
    count_classes=False,    # 100: the scripts' --clsnum default
    class_names=read_class_names, class_list="classes.txt",
    dual_head=False,        # generic objects, as ImageNet's (openimages-cam/train.py says why)
    threshold=0.5,          # PxAP needs none; localize.py takes the seg model's own decision boundary
    boxes=False,            # instance masks (wsol_metadata/OpenImages/<split>/localization.txt): PxAP alone
    annotation_files=r"_(ignore|m[0-9a-z_]+_[0-9a-f]{8})\.png$",  # `<id>_ignore.png`, `<id>_m<class>_<hex>.png`
    wsol_name="OpenImages",  # its list names are their ids: <split>/<class>/<file>.jpg
)

DATASETS = {d.name: d for d in (CUB, IMAGENET, OPENIMAGES)}


def by_wsol_name(wsol_name: str) -> DataSet:
    """The entry of wsolevaluation's data set name (CUB, ILSVRC, OpenImages)."""
    for d in DATASETS.values():
        if d.wsol_name == wsol_name:
            return d
    raise UserError(f"unknown wsolevaluation data set {wsol_name!r}: one of "
                    f"{', '.join(d.wsol_name for d in DATASETS.values())}")
