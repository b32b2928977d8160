"""SPOL's segmentation target (docs/method.md §5): which pixels of a pseudo mask the seg stage learns as object,
which as background, and which it ignores.

A pseudo mask's channel 0 is the normalised CAM (`fore`), channel 1 the prior (`gaus`), both in [0, 1] after
reading the PNG / 255. A pixel is object where either is confident, background where the CAM is near 0, and
ignored (loss weight 0) in between: there the CAM neither claims the object nor rules it out.
"""
from __future__ import annotations

import numpy as np

OBJECT = 0.25      # fore > OBJECT or gaus > OBJECT: object (target 1)
BACKGROUND = 0.01  # fore < BACKGROUND and not object: background (target 0, weight 1); the rest has weight 0


def seg_target(fore: np.ndarray, gaus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(target, weight), bool arrays of the shape of `fore` and `gaus` (CAM and prior channels, floats in
    [0, 1]): target = fore > OBJECT or gaus > OBJECT; weight = target or fore < BACKGROUND."""
    target = (fore > OBJECT) | (gaus > OBJECT)
    return target, target | (fore < BACKGROUND)


def pseudo_mask_floats(mask: np.ndarray) -> np.ndarray:
    """A pseudo mask's PNG bytes as float32 in [0, 1] (`fore`, `gaus` above; floats are returned as they are).
    Resizing (NEAREST), cropping and flipping pick values and compute none, so converting after them, as the
    transforms do, gives the same floats as converting before them, without a float copy at full size."""
    return mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask
