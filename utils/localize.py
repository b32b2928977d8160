"""Boxes and masks for any images: the seg model on files or folders that need no list and no labels
(`localize.py` of cub200-seg/ and imagenet-seg/), optionally with the cls stage's classifier.

Geometry, the convention of every output:
  * the image (W x H, original pixels) is normalised, then resized to `size` x `size` (INTER_LINEAR, as
    docs/method.md §6 but without the centre crop: the whole image is seen, so a box can reach the border);
  * the seg model's logits (size/8 x size/8) are upsampled bilinearly with align_corners=True straight to
    H x W (the evaluation's rule, applied to the original frame) and p = sigmoid(logits); mask = p > threshold;
  * a box is `x0 y0 x1 y1` in original pixels, integers on pixel edges: x0 the first column of the region,
    x1 the last column + 1 (`cv2.boundingRect`'s x + w), likewise y; a region touching the right border has
    x1 = W. Default: the box of the largest contour (`RETR_TREE`, as docs/method.md §6); `--all-boxes`: one box per
    outer contour (holes get none), largest region first;
  * score = the mean of p over the region's mask pixels (in (threshold, 1]).
The masks written by `--masks` are these H x W masks (0 / 255 PNG), so the box is also the bounding box
of the mask's largest region.

Outputs in `<savepath>/localize/`: boxes.csv (`path,xmin,ymin,xmax,ymax,score`, one row per box, a row
with an empty box for an empty mask; with `--classifier`: `class_index,class,class_score` too),
boxes.json with `--json`, masks/ with `--masks`, vis/ with `--vis` (every image with its box and mask
outline, and grid.jpg with the first GRID of them). Under torchrun every process takes its share of the
images and writes their masks and pictures; process 0 writes the tables.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from collections import Counter, defaultdict
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from network import load_mffnet
from utils.stages import cli
from utils.engine import distributed, outputs
from utils.data import validate
from utils.engine.checkpoint import load_weights
from utils.data.images import IMAGE_EXTENSIONS, BadImage, read_image
from utils.data.datasets import DATASETS, DataSet
from utils.engine.loop import (HostPipe, amp_dtype, autocast, channels_last_for, handle_bad, inference_batches,
                               place_model, to_device)
from utils.errors import UserError
from utils.engine.log import maybe_tqdm, write_json
from utils.data.transforms import cls_test_transform, resize_transform
from utils.stages.vis import PANEL, RED, WHITE, caption, grid

GRID = 16        # images in vis/grid.jpg
GRID_COLUMNS = 4
JPEG_QUALITY = 90


# ------------------------------------------------------------------------------------------ inputs
def find_images(inputs: list, exclude: Optional[str] = None, quiet: bool = False,
                annotations: Optional[str] = None) -> list:
    """Image files from files and folders (folders recursively, sorted); each file once. A file given by
    name is taken whatever its extension. In folders, links to folders are not followed (a loop would never
    end), and hidden entries (`.*`, `__MACOSX`), files that are not regular (a FIFO would block the read for
    ever), the folder `exclude` (localize's own output, when it lies inside an input) and files whose name
    matches the regular expression `annotations` (a data set's masks beside its images, as OpenImages') are
    left out, counted and named on stderr unless `quiet`."""
    found, seen, skipped = [], set(), defaultdict(list)
    exclude = os.path.realpath(exclude) if exclude else None
    annotation = re.compile(annotations) if annotations else None

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(path)

    for item in inputs:
        if os.path.isfile(item):
            add(item)
        elif os.path.isdir(item):
            before = len(found)
            for folder, dirs, files in os.walk(item):
                keep = []
                for d in sorted(dirs):
                    path = os.path.join(folder, d)
                    reason = ("hidden" if d.startswith(".") or d == "__MACOSX" else
                              "links to folders, not followed" if os.path.islink(path) else
                              "output folder of this run" if os.path.realpath(path) == exclude else None)
                    if reason:
                        skipped[reason].append(path)
                    else:
                        keep.append(d)
                dirs[:] = keep
                for f in sorted(files):
                    path = os.path.join(folder, f)
                    if not f.lower().endswith(IMAGE_EXTENSIONS):
                        continue  # notes, list files ...: not images, as ever
                    if f.startswith("."):
                        skipped["hidden"].append(path)
                    elif annotation is not None and annotation.search(f):
                        skipped["annotation masks"].append(path)
                    elif os.path.isfile(path):
                        add(path)
                    else:
                        skipped["not a regular file"].append(path)
            if len(found) == before:
                raise UserError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) in {item}")
        elif os.path.exists(item):
            raise UserError(f"{item}: not a regular file")
        else:
            raise UserError(f"not found: {item}")
    if skipped and not quiet:
        print("left out " + "; ".join(f"{len(v)} {reason}: {_head(v)}" for reason, v in skipped.items()),
              file=sys.stderr)
    return found


def _head(items: list, n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown if len(items) <= n else f"{shown}, ... ({len(items)} in all)"


def output_names(paths: list) -> list:
    """Names of the per-image outputs (masks, pictures): the path from the images' common folder with the
    extension replaced by .png; where two would clash (a.jpg and a.png in one folder) every name keeps
    its extension (a.jpg.png)."""
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath([os.path.dirname(p) for p in absolute])
    rel = [os.path.relpath(p, common) for p in absolute]
    stems = [os.path.splitext(r)[0] for r in rel]
    clash = len(set(stems)) < len(stems)
    return [(r if clash else s) + ".png" for r, s in zip(rel, stems)]


class ImageFiles(Dataset):
    """Images from paths: the seg input (normalised, resized to size x size) and, for a classifier, its own
    input (normalised, resized to cls_size x cls_size); a bad file comes back as {"bad", "reason"}."""

    def __init__(self, paths: list, size: int, cls_size: int = 0):
        self.paths, self.transform = paths, resize_transform(size)
        self.cls_transform = cls_test_transform(cls_size) if cls_size else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            image = read_image(self.paths[index])
        except BadImage as e:
            return {"bad": self.paths[index], "reason": str(e)}
        item = {"image": self.transform(image)[0], "index": index, "size": torch.tensor(image.shape[:2])}
        if self.cls_transform is not None:
            item["cls_image"] = self.cls_transform(image)[0]
        return item


# ---------------------------------------------------------------------------------------- geometry
def probability_map(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """h x w seg logits -> H x W foreground probability (bilinear, align_corners=True, then sigmoid)."""
    up = F.interpolate(logits.float()[None, None], size=(height, width), mode="bilinear", align_corners=True)
    return torch.sigmoid(up[0, 0])


def mask_boxes(mask: np.ndarray, prob: np.ndarray, all_boxes: bool = False) -> list:
    """[(box, score), ...] of a binary H x W mask: box `[x0, y0, x1, y1]` (ints, pixel edges, x1 = last
    column + 1), score = mean `prob` over the region's mask pixels. Default: the largest contour only (docs/method.md
    §6's choice, RETR_TREE); `all_boxes`: every outer contour, largest first. [] for an empty mask."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    mode = cv2.RETR_EXTERNAL if all_boxes else cv2.RETR_TREE
    contours, _ = cv2.findContours(mask, mode, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    areas = [cv2.contourArea(c) for c in contours]
    # max() takes the first of equal areas, as utils.method.boxes.largest_box does; sorted() is stable
    order = sorted(range(len(contours)), key=lambda k: -areas[k]) if all_boxes else \
        [max(range(len(contours)), key=lambda k: areas[k])]
    out = []
    for k in order:
        x, y, w, h = cv2.boundingRect(contours[k])
        region = np.zeros((h, w), np.uint8)
        cv2.drawContours(region, contours, k, 1, thickness=-1, offset=(-x, -y))
        inside = (region > 0) & (mask[y:y + h, x:x + w] > 0)
        score = float(prob[y:y + h, x:x + w][inside].mean()) if inside.any() else 0.0
        out.append(([x, y, x + w, y + h], score))
    return out


# ---------------------------------------------------------------------------------------- pictures
def _thickness(image: np.ndarray) -> int:
    return max(1, round(max(image.shape[:2]) / 300))


def draw(image: np.ndarray, mask: np.ndarray, boxes: list) -> np.ndarray:
    """The RGB image with the mask outline (white) and the boxes (red), lines thick enough to see."""
    out, thick = image.copy(), _thickness(image)
    contours = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                cv2.CHAIN_APPROX_SIMPLE)[-2]
    cv2.drawContours(out, contours, -1, WHITE, thick)
    for x0, y0, x1, y1 in boxes:  # edges -> the rectangle through the outermost pixels
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), RED, thick)
    return out


def label_corner(image: np.ndarray, label: str) -> np.ndarray:
    """`label` in white on black in the top-left corner (in place), scaled with the image."""
    thick, scale = _thickness(image), max(0.4, max(image.shape[:2]) / 700)
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.rectangle(image, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
    cv2.putText(image, label, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, WHITE, thick, cv2.LINE_AA)
    return image


def letterbox(image: np.ndarray) -> np.ndarray:
    """The image scaled to fit a PANEL x PANEL square (aspect kept), on white."""
    h, w = image.shape[:2]
    s = PANEL / max(h, w)
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    panel = np.full((PANEL, PANEL, 3), 255, np.uint8)
    y, x = (PANEL - small.shape[0]) // 2, (PANEL - small.shape[1]) // 2
    panel[y:y + small.shape[0], x:x + small.shape[1]] = small
    return panel


def write_jpeg(path: str, rgb: np.ndarray) -> None:
    outputs.write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


def write_mask_png(path: str, mask: np.ndarray) -> None:
    outputs.write_image(path, mask.astype(np.uint8) * 255)


# --------------------------------------------------------------------------------------- classifier
def class_names(dataset: DataSet, datapath: str, clsnum: Optional[int]) -> list:
    """Names of the classifier's classes: the data set's class list (CUB layout: classes.txt; ImageNet: the
    synset order), else the indices 0..clsnum-1."""
    try:
        names = dataset.class_names(datapath)
    except UserError:
        if clsnum is None:
            raise UserError(f"--classifier needs its number of classes: pass --clsnum K, or --datapath with the "
                            f"data set it was trained on (its {dataset.class_list} names the classes)") from None
        return [str(k) for k in range(clsnum)]
    if clsnum is not None and clsnum != len(names):
        raise UserError(f"--clsnum {clsnum}, but {datapath} lists {len(names)} classes")
    return names


def build_classifier_model(arch: str, snapshot: str, num_classes: int) -> nn.Module:
    """The cls stage's classifier, loaded as its test.py loads it."""
    from network.classifier import build_classifier  # imported here: the seg-only path needs no classifier code
    model = build_classifier(arch, num_classes)
    try:
        load_weights(model, snapshot)
    except UserError as e:
        raise UserError(f"{e}\n  (--classifier is loaded as a {arch} with {num_classes} classes: pass the "
                        f"--classifier_arch it was trained with and the --datapath of its data set)") from None
    return model


# --------------------------------------------------------------------------------------------- run
def localize_images(d: distributed.Dist, model: nn.Module, paths: list, names: list, *, outdir: str, size: int,
                    threshold: float, batch_size: int, num_workers: int, on_bad_image: str,
                    dtype: Optional[torch.dtype], channels_last: bool, all_boxes: bool = False, masks: bool = False,
                    vis: bool = False, classifier: Optional[nn.Module] = None, classifier_size: int = 0,
                    classes: Optional[list] = None) -> list:
    """Run the (placed, eval-mode) seg model and classifier on this rank's share of `paths`: each whole image
    resized to `size` x `size` (the classifier's to `classifier_size`), mask = p > `threshold`, the largest
    region's box (every region's with `all_boxes`); with `masks` / `vis`, write each mask / picture under
    `outdir`. `dtype`: autocast's (None: float32). Returns the records of this rank: {index, path, width, height,
    boxes: [(box, score)], class_index, class_score, grid panel or None} (a bad file under `on_bad_image` skip:
    {index, path, error})."""
    data = ImageFiles(paths, size, classifier_size if classifier is not None else 0)
    position = {p: i for i, p in enumerate(paths)}
    records = []

    def hand_on(host: list, indices: list, sizes: list) -> None:
        # host: the batch's seg logits (B x 1 x size/8 x size/8), then, with a classifier, its class indices and
        # scores. Each image's map is upsampled to its original size here, one at a time, and boxed at once: a
        # 48-MP photo's float map is ~190 MB, and a batch of them would be held together on the device and here.
        cls_index, cls_score = (host[1].tolist(), host[2].tolist()) if classifier is not None else (None, None)
        for j, (index, (h, w)) in enumerate(zip(indices, sizes)):
            prob = probability_map(host[0][j, 0], h, w)
            mask = (prob > threshold).to(torch.uint8).numpy()
            prob = prob.numpy()
            boxes = mask_boxes(mask, prob, all_boxes)
            rec = {"index": index, "path": paths[index], "width": w, "height": h, "boxes": boxes, "panel": None}
            if cls_index is not None:
                rec.update(class_index=cls_index[j], class_score=cls_score[j])
            if masks:
                write_mask_png(os.path.join(outdir, "masks", names[index]), mask)
            if vis:
                picture, label = draw(read_image(paths[index]), mask, [b for b, _ in boxes]), _label(rec, classes)
                if index < GRID:  # before the corner label, which the panel's caption replaces
                    text = f"{_short(names[index])}  " + label.replace("  ", "\n")  # class on a line of its own
                    rec["panel"] = caption(letterbox(picture), text)
                write_jpeg(os.path.join(outdir, "vis", os.path.splitext(names[index])[0] + ".jpg"),
                           label_corner(picture, label))
            records.append(rec)

    pipe = HostPipe(d.device, hand_on)
    with torch.inference_mode():
        for batch in maybe_tqdm(inference_batches(data, distributed.shard(len(paths), d), batch_size, num_workers,
                                                  d), d.main, desc="localize"):
            handle_bad(batch, on_bad_image, d)
            records += [{"index": position[p], "path": p, "error": reason} for p, reason in batch["bad"]]
            if "image" not in batch:
                continue
            with autocast(d.device, dtype):
                logits = model(to_device(batch["image"], d, channels_last))           # B x 1 x size/8 x size/8
                cls_logits = (classifier(to_device(batch["cls_image"], d, channels_last))
                              if classifier is not None else None)                  # B x K
            tensors = [logits]
            if cls_logits is not None:
                top = F.softmax(cls_logits.float(), 1).max(1)
                tensors += [top.indices, top.values]
            pipe.put(tensors, batch["index"].tolist(), batch["size"].tolist())
        pipe.drain()
    return records


def _label(rec: dict, classes: Optional[list]) -> str:
    parts = [f"{rec['boxes'][0][1]:.2f}" if rec["boxes"] else "empty mask"]
    if "class_index" in rec:
        parts.append(f"{classes[rec['class_index']]} {rec['class_score']:.2f}")
    return "  ".join(parts)


def _short(name: str, n: int = 24) -> str:
    name = os.path.splitext(name)[0]
    return name if len(name) <= n else "..." + name[-(n - 3):]


def write_tables(outdir: str, records: list, classes: Optional[list], as_json: bool, meta: dict) -> None:
    """boxes.csv (and boxes.json) from the records of every rank, in input order."""
    with_cls = classes is not None
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["path", "xmin", "ymin", "xmax", "ymax", "score"]
               + (["class_index", "class", "class_score"] if with_cls else []))
    for r in records:
        if "error" in r:
            continue
        extra = [r["class_index"], classes[r["class_index"]], f"{r['class_score']:.4f}"] if with_cls else []
        for box, score in r["boxes"] or [(["", "", "", ""], None)]:
            w.writerow([r["path"], *box, "" if score is None else f"{score:.4f}", *extra])
    outputs.write_text(os.path.join(outdir, "boxes.csv"), text.getvalue())
    if as_json:
        images = []
        for r in records:
            if "error" in r:
                images.append({"path": r["path"], "error": r["error"]})
                continue
            item = {"path": r["path"], "width": r["width"], "height": r["height"],
                    "boxes": [dict(zip(("xmin", "ymin", "xmax", "ymax"), box), score=round(s, 6))
                              for box, s in r["boxes"]]}
            if with_cls:
                item.update(class_index=r["class_index"], **{"class": classes[r["class_index"]]},
                            class_score=round(r["class_score"], 6))
            images.append(item)
        write_json(os.path.join(outdir, "boxes.json"), dict(meta, images=images))


@distributed.entry
def localize(args, d) -> dict:
    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold is a probability in [0, 1], got {args.threshold}")
    if args.classifier is None and args.classifier_arch_given:
        raise UserError("--classifier_arch is for --classifier SNAPSHOT, which was not given")
    out, outdir = outputs.Folder(args.savepath, "--savepath"), os.path.join(args.savepath, "localize")
    out.check_folder("localize")  # before it is created: not through a link that leads elsewhere
    validate.check_writable(outdir, "--savepath")
    dataset = DATASETS[args.dataset]
    paths = find_images(args.images, exclude=outdir, quiet=not d.main,
                        annotations=dataset.annotation_files)
    names = output_names(paths)
    for wanted, sub in ((args.masks, "masks"), (args.vis, "vis")):
        if wanted:
            out.check_folders(os.path.join("localize", sub, os.path.dirname(n)) for n in names)
    classes = class_names(dataset, args.datapath, args.classifier_clsnum) if args.classifier else None
    model = load_mffnet(args.snapshot, 1, args.backbone, seg=True)  # the network the snapshot records (ablations)
    model = place_model(model.eval(), d, channels_last=args.channels_last, compile=args.compile)
    classifier = None
    if args.classifier:
        classifier = place_model(build_classifier_model(args.classifier_arch, args.classifier, len(classes)).eval(),
                                 d, channels_last=args.channels_last, compile=args.compile)
    if d.main:
        print(f"{len(paths)} images; seg model {args.snapshot} ({args.backbone}), input {args.size} x {args.size}, "
              f"mask = p > {args.threshold:g}" + (f"; classifier {args.classifier} ({args.classifier_arch}, "
                                                   f"{len(classes)} classes)" if classifier is not None else ""))
    records = localize_images(d, model, paths, names, outdir=outdir, size=args.size, threshold=args.threshold,
                              batch_size=args.batch_size, num_workers=args.num_workers,
                              on_bad_image=args.on_bad_image, dtype=amp_dtype(args.amp, d.device),
                              channels_last=channels_last_for(args.channels_last, d.device), all_boxes=args.all_boxes,
                              masks=args.masks, vis=args.vis, classifier=classifier,
                              classifier_size=args.classifier_size, classes=classes)
    records = sorted((r for part in distributed.gather_objects(d, records) for r in part), key=lambda r: r["index"])
    if not d.main:
        return {}
    os.makedirs(outdir, exist_ok=True)
    meta = {"snapshot": args.snapshot, "backbone": args.backbone, "size": args.size, "threshold": args.threshold,
            "all_boxes": args.all_boxes, "classifier": args.classifier,
            "box_convention": "x0 y0 x1 y1 in original pixels, pixel edges (x1 = last column + 1)"}
    write_tables(outdir, records, classes, args.json, meta)
    done = [r for r in records if "error" not in r]
    counts = Counter("empty" if not r["boxes"] else "boxed" for r in done)
    print(f"wrote {os.path.join(outdir, 'boxes.csv')}" + (" and boxes.json" if args.json else "")
          + f": {counts['boxed']} images boxed, {counts['empty']} with an empty mask (blank box)"
          + (f", {len(records) - len(done)} unreadable skipped" if len(done) < len(records) else ""))
    if args.masks:
        print(f"wrote {len(done)} masks to {os.path.join(outdir, 'masks')}/ (0/255 PNG, original size)")
    if args.vis:
        panels = [r["panel"] for r in done if r["panel"] is not None]
        if panels:
            rows = [panels[i:i + GRID_COLUMNS] for i in range(0, len(panels), GRID_COLUMNS)]
            sheet = grid(rows, footer=[f"red: box (largest region of p > {args.threshold:g}"
                                       f"{'; all regions' if args.all_boxes else ''})   white: mask outline   "
                                       f"corner: box score{' / class score' if classifier is not None else ''}"])
            write_jpeg(os.path.join(outdir, "vis", "grid.jpg"), sheet)
        print(f"wrote {len(done)} pictures and grid.jpg to {os.path.join(outdir, 'vis')}/")
    return {"images": len(records), "boxed": counts["boxed"], "empty": counts["empty"],
            "unreadable": len(records) - len(done)}


# -------------------------------------------------------------------------------------------- CLI
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def get_args_parser(doc: str) -> argparse.ArgumentParser:
    """The flags of localize.py; the stage script sets its data set's defaults (threshold, datapath) and passes
    its data set to `parse`."""
    p = argparse.ArgumentParser(description=doc, formatter_class=_Formatter)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    m = p.add_argument_group("model")
    m.add_argument("--snapshot", help="the seg stage's model (e.g. out/model-2.pth); not given: as test.py, the "
                                      "authors' released name in --savepath, else the last model-<N> there")
    cli.add_backbone_arg(m)
    m.add_argument("--size", type=int, default=256, help="each whole image is resized to size x size (no crop)")
    m.add_argument("--threshold", type=float, help="foreground probability threshold of the mask")
    o = p.add_argument_group("outputs")
    o.add_argument("--savepath", default="out", help="outputs go to <savepath>/localize/")
    o.add_argument("--all-boxes", dest="all_boxes", action="store_true",
                   help="one box per region of the mask (default: the largest region's, as the paper)")
    o.add_argument("--masks", action="store_true", help="write each mask as <savepath>/localize/masks/<name>.png "
                                                        "(0/255, the original size)")
    o.add_argument("--vis", action="store_true", help="draw box and mask outline on each image to "
                                                      "<savepath>/localize/vis/ (and grid.jpg)")
    o.add_argument("--json", action="store_true", help="also write boxes.json")
    c = p.add_argument_group("classifier (optional: adds the predicted class and its probability)")
    c.add_argument("--classifier", help="the cls stage's snapshot (e.g. ../cub200-cls/out/model-20.pth)")
    default_arch = argparse.ArgumentParser()
    cli.add_cls_args(default_arch)
    c.add_argument("--classifier_arch", default=None,
                   help=f"its architecture, as the cls stage's --arch (not given: "
                        f"{default_arch.get_default('arch')}, the cls stage's default)")
    c.add_argument("--classifier_size", type=int, default=685,
                   help="its input: the whole image resized to N x N, as the cls stage's test.py")
    c.add_argument("--datapath", help="the data set it was trained on: its class list names the classes "
                                      "(CUB layout: classes.txt; ImageNet: synsets.txt)")
    c.add_argument("--clsnum", dest="classifier_clsnum", type=int,
                   help="its number of classes (not given: the length of that class list)")
    r = p.add_argument_group("runtime")
    r.add_argument("--batch_size", type=int, default=32, help="images per forward pass (per process)")
    r.add_argument("--num_workers", type=int, default=min(8, cli.per_process_cpus()),
                   help="data-loading worker processes per rank (0: load in the main process)")
    r.add_argument("--on-bad-image", dest="on_bad_image", choices=("stop", "skip"), default="stop",
                   help="an unreadable image: stop naming the file, or skip it (left out of boxes.csv)")
    cli.add_max_pixels_arg(r)
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    r.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="mixed precision; auto: bf16 on CUDA, off on the CPU")
    r.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CUDA)")
    r.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.set_defaults(mode="test", default_classifier_arch=default_arch.get_default("arch"))
    return p


def parse(parser: argparse.ArgumentParser, script: str, argv=None, dataset: Optional[DataSet] = None,
          released: Optional[str] = None) -> argparse.Namespace:
    """cli.parse (default paths relative to the script's folder; the script's data set, and its released snapshot
    name, taken without --snapshot), then the classifier's defaults."""
    args = cli.parse(parser, script, argv, dataset, released=released)
    args.classifier_arch_given = args.classifier_arch is not None
    if args.classifier_arch is None:
        args.classifier_arch = args.default_classifier_arch
    return args
