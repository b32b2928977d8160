"""The fast transforms (Normalize as float32 arithmetic, OpenCV called directly for
resize + centre crop) give bit for bit the tensors of the plain albumentations pipeline:
A.Compose([A.Normalize, ...ops])."""
from typing import Optional

import albumentations as A
import numpy as np
import pytest
import torch

from utils.data import transforms
from utils.engine.distributed import Dist
from utils.engine.loop import to_device
from utils.data.transforms import (MEAN, STD, Pipeline, eval_transform, mask_transform, normalise, resize_transform,
                              train_transform)

SIZES = [(1, 1), (1, 9), (7, 1), (2, 3), (256, 256), (224, 224), (300, 200), (375, 500), (333, 517), (640, 481)]


def reference(ops: list, image: np.ndarray, mask=None, seed: int = 0):
    """The albumentations pipeline written out (what the transforms were before the fast paths)."""
    compose = A.Compose([A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0)] + ops)
    compose.set_random_seed(seed)
    out = compose(image=image, mask=mask) if mask is not None else compose(image=image)
    image_t = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
    if mask is None:
        return image_t, None
    fore, gaus = out["mask"][..., 0], out["mask"][..., 1]
    target = (fore > 0.25) | (gaus > 0.25)
    return image_t, torch.from_numpy(np.stack([target, target | (fore < 0.01)]).astype(np.float32))


def images():
    """Noise (every value, every neighbour) and smooth photographs-like gradients, at awkward sizes."""
    rng = np.random.default_rng(3)
    for k, (h, w) in enumerate(SIZES):
        if k % 2:
            yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            smooth = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
            yield smooth.astype(np.uint8)


def normalize_table() -> np.ndarray:
    """256 x 1 x 3 float32: albumentations' Normalize of every uint8 value in each channel."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
    return A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0)(image=values)["image"]


def affine_constants(table: np.ndarray) -> Optional[np.ndarray]:
    """2 x 3 float32 (mean, scale) per channel such that the float32 `(v - mean) * scale` has the bits of
    `table[v, 0, c]` (256 x 1 x 3) for every uint8 v, or None: how `transforms._AFFINE` was found. Tried:
    float32(mean * 255) and float32(1 / (std * 255)) and their neighbours up to 2 ulps, each checked on all
    256 values."""
    values = np.arange(256, dtype=np.float32)
    steps = sorted(((i, j) for i in range(-2, 3) for j in range(-2, 3)), key=lambda ij: abs(ij[0]) + abs(ij[1]))
    constants = []
    for c in range(3):
        want = table[:, 0, c].view(np.uint32)
        start = np.float32(MEAN[c] * 255.0), np.float32(1.0 / (STD[c] * 255.0))
        for i, j in steps:
            mean, scale = (x + np.spacing(x) * k for x, k in zip(start, (i, j)))  # ~k ulps from x
            if np.array_equal(((values - mean) * scale).view(np.uint32), want):
                constants.append((mean, scale))
                break
        else:
            return None
    return np.array(constants, dtype=np.float32).T


def test_normalise_is_albumentations_normalize():
    # the fixed constants are the ones the search finds in this albumentations' table
    assert np.array_equal(affine_constants(normalize_table()).view(np.uint32),
                          transforms._AFFINE.view(np.uint32))
    norm = A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0)
    every = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)          # each value in each channel
    every = np.concatenate([every, np.roll(every, 1, axis=2), np.roll(every, 2, axis=2)])
    wide = np.random.default_rng(1).integers(0, 256, (3, 2000, 3), dtype=np.uint8)  # longer rows than first built
    for image in [every, *images(), wide, wide[:, ::3], every[::-1, 3:]]:  # the last two: not contiguous
        got, want = normalise(image), norm(image=image)["image"]
        assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), image.shape  # the bits, signs of 0 too
    floats = np.random.default_rng(0).uniform(0, 255, (5, 6, 3)).astype(np.float32)  # not a table's job
    assert np.array_equal(normalise(floats), norm(image=floats)["image"])


@pytest.mark.parametrize("size", [256, 224, 37])
def test_resize_transform_is_the_albumentations_pipeline(size):
    for image in images():
        got, _ = resize_transform(size)(image)
        want, _ = reference([A.Resize(size, size)], image)
        assert got.shape == (3, size, size) and got.is_contiguous() and torch.equal(got, want), image.shape


def test_mask_transform_is_the_resize_transform_channels_last():
    for image in images():
        got, _ = mask_transform(256)(image)
        want, _ = resize_transform(256)(image)
        assert got.shape == (256, 256, 3) and got.is_contiguous() and torch.equal(got.permute(2, 0, 1), want)
    # the stage puts the channels first on the device: contiguous, or channels-last without a copy
    batch = torch.stack([mask_transform(32)(image)[0] for image in images()])
    want = torch.stack([resize_transform(32)(image)[0] for image in images()])
    d = Dist(device=torch.device("cpu"))
    plain, last = to_device(batch, d, False, hwc=True), to_device(batch, d, True, hwc=True)
    assert plain.is_contiguous() and torch.equal(plain, want)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, want)
    assert last.data_ptr() == batch.data_ptr()


@pytest.mark.parametrize("size,crop", [(256, 224), (255, 224), (64, 63), (32, 32)])
def test_eval_transform_is_the_albumentations_pipeline(size, crop):
    for image in images():
        got, _ = eval_transform(size, crop)(image)
        want, _ = reference([A.Resize(size, size), A.CenterCrop(crop, crop)], image)
        assert got.shape == (3, crop, crop) and torch.equal(got, want), image.shape


def test_with_a_mask_every_pipeline_is_the_albumentations_one():
    rng = np.random.default_rng(5)
    for seed, image in enumerate(images()):
        h, w = image.shape[:2]
        mask = (rng.integers(0, 256, (h, w, 3)) / 255.0).astype(np.float32)
        cases = [(train_transform(256, 224), [A.Resize(256, 256), A.RandomCrop(224, 224), A.HorizontalFlip(p=0.5)]),
                 (resize_transform(256), [A.Resize(256, 256)]),
                 (eval_transform(256, 224), [A.Resize(256, 256), A.CenterCrop(224, 224)])]
        for transform, ops in cases:
            got, got_mask = transform(image, mask, seed)
            want, want_mask = reference(ops, image, mask, seed)
            assert torch.equal(got, want) and torch.equal(got_mask, want_mask), (image.shape, ops)


def test_random_pipelines_follow_the_seed_as_before():
    image = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ops = lambda: [A.Resize(256, 256), A.RandomCrop(224, 224), A.HorizontalFlip(p=0.5)]  # noqa: E731
    outputs = [Pipeline(lambda A: ops())(image, None, seed)[0] for seed in range(6)]
    for seed, got in enumerate(outputs):
        assert torch.equal(got, reference(ops(), image, None, seed)[0])
    assert len({o.sum().item() for o in outputs}) > 1  # the seeds do pick different crops


def test_read_image_is_the_bgr_decode_in_rgb_order(tmp_path):
    """read_image may decode straight to RGB (newer OpenCV): the pixels of cv2's BGR decode + cvtColor, for
    every kind of file a data set holds (colour, grayscale, CMYK and EXIF-rotated JPEGs, PNGs with alpha or
    16 bits)."""
    import cv2

    from bad_files import write_cmyk_jpeg, write_grayscale_jpeg
    from utils.data.images import read_image
    rng = np.random.default_rng(5)
    smooth = next(images())
    paths = [write_grayscale_jpeg(str(tmp_path / "gray.jpg"), 40, 50, seed=1)]
    for name, array in (("colour.jpg", smooth), ("alpha.png", rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)),
                        ("deep.png", rng.integers(0, 65536, (30, 20, 3), dtype=np.uint16)),
                        ("noise.bmp", rng.integers(0, 256, (17, 9, 3), dtype=np.uint8))):
        cv2.imwrite(str(tmp_path / name), array)
        paths.append(str(tmp_path / name))
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        paths.append(write_cmyk_jpeg(str(tmp_path / "cmyk.jpg"), 40, 50, seed=2))
        im = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
        exif = im.getexif()
        exif[0x0112] = 6   # rotate 90 degrees clockwise to display: both decodes apply it
        im.save(tmp_path / "rotated.jpg", "JPEG", exif=exif)
        paths.append(str(tmp_path / "rotated.jpg"))
    for path in paths:
        bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        got = read_image(path)
        assert got.dtype == np.uint8 and np.array_equal(got, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), path
    assert read_image(paths[-1]).shape[:2] == (50, 30) or "rotated" not in paths[-1]


def test_classifier_pipelines_and_pickled_pipelines_are_the_albumentations_ones():
    import pickle

    from utils.data.transforms import cls_test_transform, cls_train_transform
    image = next(images())
    cases = [(cls_test_transform(64, 56, shorter_side=True), [A.SmallestMaxSize(64), A.CenterCrop(56, 56)]),
             (cls_test_transform(48), [A.Resize(48, 48)]),
             (cls_train_transform(64, 56), [A.Resize(64, 64), A.RandomCrop(56, 56), A.HorizontalFlip(p=0.5)])]
    for transform, ops in cases:
        # an albumentations pipeline is built where it is made: forked loader workers inherit albumentations
        # rather than each import it (ResizeCrop, without albumentations on its inference path, builds it late)
        assert (transform._compose is not None) == (type(transform) is Pipeline), transform
        for t in (transform, pickle.loads(pickle.dumps(transform))):   # as a spawned loader worker gets it
            for seed in range(3):
                assert torch.equal(t(image, None, seed)[0], reference(ops, image, None, seed)[0]), ops


def test_inference_never_imports_albumentations():
    """The stages' inference paths (masks, evaluation, both protocols, localize, the CUB classifier's test) run
    without albumentations, whose import costs ~1.2 s in every process that starts (it pulls in scipy)."""
    import os
    import subprocess
    import sys
    code = ("import sys, numpy as np; import utils.stages.stage_cam, utils.stages.stage_cls, utils.stages.stage_seg\n"
            "import utils.evaluation.wsol_protocol\n"
            "import utils.localize, utils.bench\n"
            "from utils.data.transforms import cls_test_transform, eval_transform, mask_transform, resize_transform\n"
            "image = np.zeros((30, 40, 3), np.uint8); row = np.empty((32, 32, 3), np.float32)\n"
            "eval_transform(64, 56)(image); resize_transform(32)(image); mask_transform(32).into(image, row)\n"
            "cls_test_transform(64, 56)(image); cls_test_transform(48)(image)\n"
            "assert 'albumentations' not in sys.modules and 'scipy' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   check=True)
