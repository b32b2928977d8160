"""Pictures for people: qualitative figures of the evaluation (`--vis N` of the seg stage's test.py), of
the pseudo masks (`--vis N` of the cam stage's test.py), and the images logged to TensorBoard at every
epoch end of training. OpenCV only (matplotlib is not a dependency).

Every panel is PANEL x PANEL RGB uint8, drawn from maps and boxes of one frame (the evaluation frame, or
the original image for pseudo masks) scaled to the panel. Boxes are `x0 y0 x1 y1` in pixels of that
frame. Colours: predicted box red, ground-truth boxes green, predicted mask outline white; pseudo masks
(the seg stage's classes, `utils.method.seg_target`, docs/method.md §5) red where the CAM makes the pixel
object, yellow where only the prior does, grey where the loss ignores the pixel, the image darkened where it
is background.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch

from utils.engine import distributed, outputs
from utils.data.images import BadImage, ImageSet, collate, mask_name, read_image, read_pseudo_mask
from utils.method.seg_target import OBJECT, pseudo_mask_floats, seg_target
from utils.data.transforms import MEAN, STD, eval_transform

PANEL = 224
RED, GREEN, WHITE, YELLOW, GREY = (255, 0, 0), (0, 255, 0), (255, 255, 255), (255, 220, 0), (150, 150, 150)
BOX_LEGEND = "red: predicted box   green: ground truth   white: predicted mask"
PSEUDO_LEGEND = f"pseudo mask: red CAM > {OBJECT:g}, yellow prior > {OBJECT:g} (target), grey ignored, dark background"
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# ------------------------------------------------------------------------------------------- panels
def denormalise(image) -> np.ndarray:
    """3 x H x W image normalised with the ImageNet mean/std (tensor or array) -> H x W x 3 uint8 RGB."""
    x = np.asarray(image, dtype=np.float32).transpose(1, 2, 0) * np.float32(STD) + np.float32(MEAN)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _fit(image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.resize(np.ascontiguousarray(image), (PANEL, PANEL), interpolation=interpolation)


def image_panel(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB image -> panel."""
    return _fit(image)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image (H x W x 3 uint8 RGB) blended with a JET colour map of `heat` (h x w, values in [0, 1])."""
    heat = _fit(np.asarray(heat, dtype=np.float32))
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(_fit(image), 1 - alpha, cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), alpha, 0)


def draw_boxes(panel: np.ndarray, boxes, frame: tuple[int, int], colour: tuple, thickness: int = 2) -> np.ndarray:
    """Draw x0y0x1y1 boxes given in a `frame` = (width, height) picture onto the panel (in place)."""
    sx, sy = PANEL / frame[0], PANEL / frame[1]
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        p0 = (int(round(x0 * sx)), int(round(y0 * sy)))
        p1 = (min(int(round(x1 * sx)), PANEL - 1), min(int(round(y1 * sy)), PANEL - 1))
        cv2.rectangle(panel, p0, p1, colour, thickness)
    return panel


def draw_outline(panel: np.ndarray, mask: np.ndarray, colour: tuple = WHITE) -> np.ndarray:
    """Outline the regions of a binary mask (any size; scaled to the panel) on the panel (in place)."""
    big = _fit(np.asarray(mask, dtype=np.uint8), cv2.INTER_NEAREST)
    contours = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
    cv2.drawContours(panel, contours, -1, colour, 1)
    return panel


def pseudo_mask_panel(image: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """The image with the classes of its pseudo mask (H x W x 3 float in [0, 1]: ch0 CAM, ch1 prior) painted on.

    The classes are the seg stage's (`seg_target`): target (red where the CAM > OBJECT, else yellow: the prior
    alone), background, ignored = weight 0 (grey).
    """
    pseudo = _fit(np.asarray(pseudo, dtype=np.float32), cv2.INTER_NEAREST)
    target, weight = seg_target(pseudo[..., 0], pseudo[..., 1])
    by_cam = pseudo[..., 0] > OBJECT
    by_prior = target & ~by_cam
    ignored = ~weight
    base = _fit(image).astype(np.float32)
    out = base * 0.4  # background: darkened image
    for region, colour in ((by_cam, RED), (by_prior, YELLOW), (ignored, GREY)):
        out[region] = 0.45 * base[region] + 0.55 * np.float32(colour)
    return out.astype(np.uint8)


def blank_panel(text: str) -> np.ndarray:
    panel = np.full((PANEL, PANEL, 3), 235, dtype=np.uint8)
    cv2.putText(panel, text, (10, PANEL // 2), _FONT, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    return panel


def caption(panel: np.ndarray, text: str) -> np.ndarray:
    """White text on black strips in the panel's top-left corner (in place), a strip per line of `text`."""
    y = 0
    for line in text.split("\n"):
        (w, h), base = cv2.getTextSize(line, _FONT, 0.4, 1)
        cv2.rectangle(panel, (0, y), (w + 6, y + h + base + 4), (0, 0, 0), -1)
        cv2.putText(panel, line, (3, y + h + 2), _FONT, 0.4, WHITE, 1, cv2.LINE_AA)
        y += h + base + 4
    return panel


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] = (), footer: Sequence[str] = (),
         gap: int = 4) -> np.ndarray:
    """Rows of panels on a white sheet, column titles above and footer lines below (RGB uint8)."""
    columns = max(len(r) for r in rows)
    title_h, line_h = (20 if titles else 0), 18
    width = gap + columns * (PANEL + gap)
    height = title_h + gap + len(rows) * (PANEL + gap) + line_h * len(footer) + (4 if footer else 0)
    sheet = np.full((height, width, 3), 255, dtype=np.uint8)
    for c, title in enumerate(titles):
        cv2.putText(sheet, title, (gap + c * (PANEL + gap) + 2, 15), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for r, row in enumerate(rows):
        y = title_h + gap + r * (PANEL + gap)
        for c, panel in enumerate(row):
            x = gap + c * (PANEL + gap)
            sheet[y:y + PANEL, x:x + PANEL] = panel
    y = title_h + gap + len(rows) * (PANEL + gap)
    for i, line in enumerate(footer):
        cv2.putText(sheet, line, (gap + 2, y + 13 + i * line_h), _FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    return sheet


def write_png(path: str, rgb: np.ndarray) -> None:
    outputs.write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def picture_name(index: int, name: str) -> str:
    """`0003_<file stem>.png`: list order first, so a folder listing shows the pictures in list order."""
    return f"{index:04d}_{os.path.splitext(os.path.basename(name))[0]}.png"


def write_pictures(outdir: str, rows: list, titles: Sequence[str], footer: Sequence[str]) -> list:
    """One PNG per (index, name, panels) row and `grid.png` with all rows; returns the written paths."""
    paths = []
    for index, name, panels in rows:
        paths.append(os.path.join(outdir, picture_name(index, name)))
        write_png(paths[-1], grid([panels], titles, [name, *footer]))
    if rows:
        paths.append(os.path.join(outdir, "grid.png"))
        write_png(paths[-1], grid([panels for _, _, panels in rows], titles, footer))
    return paths


# ------------------------------------------------------------------------------------ seg evaluation
@dataclass
class Shown:
    """One evaluated image kept for the pictures, in its evaluation frame (frame x frame pixels)."""
    index: int
    name: str
    image: np.ndarray            # frame x frame x 3 uint8 RGB
    heat: np.ndarray             # frame x frame float32 in [0, 1]: foreground probability or score map
    gt: np.ndarray               # m x 4 GT boxes x0y0x1y1 in the frame
    pseudo: Optional[np.ndarray]  # frame x frame x 3 float pseudo mask, or None


class EvalPictures:
    """Collects the first `count` images of an evaluation and draws them once the run is over.

    The frame is `size` x `size` cut to the centre `crop` (crop 0: no crop), as the evaluation's
    transform; pseudo masks from `maskpath` (optional) are brought into the same frame (NEAREST).
    """

    def __init__(self, count: int, maskpath: Optional[str], size: int, crop: int = 0) -> None:
        self.count, self.maskpath, self.size, self.crop = count, maskpath, size, crop
        self.items: list[Shown] = []

    def wants(self, index: int) -> bool:
        return index < self.count

    def add(self, index: int, name: str, image: torch.Tensor, heat: np.ndarray, gt: np.ndarray) -> None:
        """`image`: the normalised 3 x frame x frame input; `heat` and `gt` in the same frame."""
        self.items.append(Shown(index, name, denormalise(image.float().cpu()), np.asarray(heat, np.float32),
                                np.asarray(gt, np.float64).reshape(-1, 4), self._pseudo(name)))

    def _pseudo(self, name: str) -> Optional[np.ndarray]:
        if not self.maskpath:
            return None
        try:
            mask = read_pseudo_mask(os.path.join(self.maskpath, mask_name(name)))
        except BadImage:
            return None
        mask = cv2.resize(mask, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        if self.crop:
            off = (self.size - self.crop) // 2
            mask = mask[off:off + self.crop, off:off + self.crop]
        return pseudo_mask_floats(mask)

    def gather(self, d: distributed.Dist) -> None:
        """Bring every rank's items to every rank, in list order (each rank saw its own shard)."""
        self.items = sorted((it for part in distributed.gather_objects(d, self.items) for it in part),
                            key=lambda it: it.index)

    def write(self, outdir: str, decide: Callable, how: str) -> list:
        """Draw and write the pictures. `decide(heat, gt) -> (binary mask, box or None, IoU)`; `how` says
        which threshold made the mask. Returns the written paths."""
        pseudo = self.maskpath is not None
        rows = []
        for it in self.items:
            frame = (it.image.shape[1], it.image.shape[0])
            mask, box, iou = decide(it.heat, it.gt)
            boxed = draw_outline(image_panel(it.image), mask)
            draw_boxes(boxed, it.gt, frame, GREEN)
            if box is not None:
                draw_boxes(boxed, [box], frame, RED)
            panels = [draw_boxes(image_panel(it.image), it.gt, frame, GREEN), heat_overlay(it.image, it.heat),
                      caption(boxed, f"IoU {iou:.2f}")]
            if pseudo:
                panels.append(pseudo_mask_panel(it.image, it.pseudo) if it.pseudo is not None
                              else blank_panel("no pseudo mask"))
            rows.append((it.index, it.name, panels))
        titles = ["input + GT box", "foreground score", f"mask & box, {how}"] + (["pseudo mask"] if pseudo else [])
        return write_pictures(outdir, rows, titles, [BOX_LEGEND] + ([PSEUDO_LEGEND] if pseudo else []))


# -------------------------------------------------------------------------------------- pseudo masks
def pseudo_mask_pictures(samples: list, maskpath: str, count: int, outdir: str) -> list:
    """For the first `count` samples: image, CAM, Gaussian prior and the pseudo mask's classes; returns paths."""
    rows = []
    for index, s in enumerate(samples[:count]):
        try:
            image = read_image(s.path)
            pseudo = pseudo_mask_floats(read_pseudo_mask(os.path.join(maskpath, mask_name(s.name))))
        except BadImage as e:
            print(f"--vis: {e}; not drawn")
            continue
        rows.append((index, s.name, [image_panel(image), heat_overlay(image, pseudo[..., 0]),
                                     heat_overlay(image, pseudo[..., 1]), pseudo_mask_panel(image, pseudo)]))
    titles = ["image", "CAM (channel 0)", "Gaussian prior (channel 1)", "pseudo mask"]
    return write_pictures(outdir, rows, titles, [PSEUDO_LEGEND])


# --------------------------------------------------------------------------------------- TensorBoard
def tensorboard_hook(samples: list, size: int, crop: int, tag: str, heat_fn: Callable,
                     count: int = 8) -> Callable:
    """An `on_epoch_end(model, epoch, log)` for `utils.engine.loop.fit`: logs the first `count` images of the
    list (evaluation transform) with `heat_fn(model, images, labels) -> (B x h x w heat in [0, 1],
    B x h x w masks or None)` overlaid, under `tag`. Eval mode and no_grad, then back to train mode;
    nothing runs where nothing is logged (ranks other than 0, no TensorBoard)."""
    fixed: dict = {}

    def hook(model: torch.nn.Module, epoch: int, log) -> None:
        if not log.enabled or log.tb is None:
            return
        if "batch" not in fixed:
            data = ImageSet(samples[:count], eval_transform(size, crop))
            fixed["batch"] = collate([data[i] for i in range(len(data))])
        batch = fixed["batch"]
        if "image" not in batch:
            return
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                heat, masks = heat_fn(model, batch["image"].to(device), batch["label"].to(device))
        finally:
            model.train(was_training)
        panels = []
        for i, image in enumerate(batch["image"]):
            rgb = denormalise(image)
            panel = heat_overlay(rgb, heat[i].float().cpu().numpy())
            if masks is not None:
                draw_outline(panel, masks[i].cpu().numpy())
            panels.append(panel)
        log.images(tag, epoch, torch.from_numpy(np.stack(panels)).permute(0, 3, 1, 2).float() / 255)

    return hook
