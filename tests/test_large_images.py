"""Images over the large-image bounds (lowered here by monkeypatch): the transforms resize before they normalise,
within float rounding of the authors' order and without a full-size float image; the pseudo masks are made in
bands of columns, bit for bit the masks of the one resize."""
import tracemalloc

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from utils.data import transforms
from utils.data.transforms import (cls_test_transform, eval_transform, mask_transform, normalise, normalise_resize,
                                   shorter_side_size, train_transform)
from utils.engine import masks

TOL = 2e-6  # normalised values lie in [-2.2, 2.7]: a few float32 ulps


@pytest.fixture(params=[True, False], ids=["ipp", "no-ipp"])
def opencv_ipp(request):
    """Both of OpenCV's resize codes: IPP's and its own map the row coordinate at different precisions."""
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(request.param)
    yield
    cv2.ipp.setUseIPP(before)


def large_images():
    """Noise and a smooth gradient; a tall one whose row coordinates pass 2048 (where float32 and double part)."""
    rng = np.random.default_rng(7)
    yield rng.integers(0, 256, (600, 410, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:333, 0:517]
    yield np.stack([xx * 255 // 516, yy * 255 // 332, (xx + yy) % 256], -1).astype(np.uint8)
    yield rng.integers(0, 256, (5000, 9, 3), dtype=np.uint8)
    yield rng.integers(0, 256, (40, 300, 3), dtype=np.uint8)  # fewer rows than the output: rows blended upwards


def test_large_images_are_the_authors_order_within_rounding(monkeypatch, opencv_ipp):
    monkeypatch.setattr(transforms, "LARGE_IMAGE", 100)
    for image in large_images():
        for size in (256, 224, 37):
            want = cv2.resize(normalise(image), (size, size), interpolation=cv2.INTER_LINEAR)
            got = normalise_resize(image, size)
            assert got.dtype == np.float32 and got.shape == (size, size, 3)
            assert np.abs(got - want).max() <= TOL, (image.shape, size)
        got, _ = eval_transform(256, 224)(image)
        want = cv2.resize(normalise(image), (256, 256), interpolation=cv2.INTER_LINEAR)[16:240, 16:240]
        assert (got - torch.from_numpy(want.transpose(2, 0, 1))).abs().max() <= TOL
        out = np.empty((256, 256, 3), np.float32)
        mask_transform(256).into(image, out)
        assert np.abs(out - cv2.resize(normalise(image), (256, 256), interpolation=cv2.INTER_LINEAR)).max() <= TOL


def test_large_images_resized_by_their_shorter_side(monkeypatch, opencv_ipp):
    """The ImageNet classifier's evaluation (A.SmallestMaxSize, A.CenterCrop): the size albumentations gives,
    and its values within rounding, without the full-size float image."""
    rng = np.random.default_rng(5)
    for shape in ((600, 410), (333, 517), (1000, 999), (5000, 9)):
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        for size, crop in ((256, 224), (37, 0), (100, 64)):
            reference = A.Compose([A.SmallestMaxSize(size)])(image=normalise(image))["image"]
            assert shorter_side_size(*shape, size) == reference.shape[1::-1], (shape, size)
            want, _ = cls_test_transform(size, crop, shorter_side=True)(image)
            monkeypatch.setattr(transforms, "LARGE_IMAGE", 100)
            got, _ = cls_test_transform(size, crop, shorter_side=True)(image)
            monkeypatch.undo()
            assert got.shape == want.shape and (got - want).abs().max() <= TOL, (shape, size, crop)


def test_large_training_images_keep_the_masks_geometry(monkeypatch):
    """The image is resized first and A.Resize hands it on; the mask is resized NEAREST as A.Resize does: the
    same crop, flip and mask, bit for bit."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)
    mask = (rng.integers(0, 256, (300, 410, 3)) / 255.0).astype(np.float32)
    for seed in range(4):
        want, want_mask = train_transform(64, 56)(image, mask, seed)
        monkeypatch.setattr(transforms, "LARGE_IMAGE", 100)
        got, got_mask = train_transform(64, 56)(image, mask, seed)
        monkeypatch.undo()
        assert torch.equal(got_mask, want_mask) and (got - want).abs().max() <= TOL, seed
    compose = A.Compose([A.Resize(64, 64)])
    small = np.ascontiguousarray(image[:64, :64])
    assert compose(image=small)["image"] is small  # what "hands it on" means: not even a copy


def test_large_images_make_no_full_size_float_array(monkeypatch):
    image = np.zeros((6000, 6000, 3), dtype=np.uint8)
    image[::7] = 200
    monkeypatch.setattr(transforms, "LARGE_IMAGE", 6000 * 6000 - 1)
    tracemalloc.start()
    try:
        for transform in (eval_transform(256, 224), train_transform(256, 224),
                          cls_test_transform(256, 224, shorter_side=True)):
            tracemalloc.reset_peak()
            transform(image, None, 0)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 6000 * 6000 * 12 / 8, f"{peak:,} bytes traced"  # a float copy would be 432 MB
    finally:
        tracemalloc.stop()


def test_below_the_bound_nothing_changes():
    # the module's bound is far above the benchmarks' images, whose tensors the albumentations tests pin bit for bit
    assert transforms.LARGE_IMAGE == 2 ** 25 and masks.BANDED == 2 ** 25
    image = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    want = cv2.resize(normalise(image), (256, 256), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(normalise_resize(image, 256).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("height,width,band", [(1000, 700, 5000), (257, 3000, 1), (999, 1, 64), (3, 2000, 700)])
def test_banded_masks_are_the_masks_of_the_one_resize(monkeypatch, opencv_ipp, height, width, band):
    cams = np.random.default_rng(height).random((3, 32, 32)).astype(np.float32) ** 3
    for cam in cams:
        for rgb in (False, True):
            want = masks.make_pseudo_mask(cam, width, height, rgb=rgb)
            monkeypatch.setattr(masks, "BANDED", 0)
            monkeypatch.setattr(masks, "_BAND", band)
            got = masks.make_pseudo_mask(cam, width, height, rgb=rgb)
            monkeypatch.undo()
            assert got.shape == want.shape and np.array_equal(got, want), rgb


def test_banded_masks_hold_no_full_size_float_array(monkeypatch):
    monkeypatch.setattr(masks, "BANDED", 3000 * 3000 - 1)
    monkeypatch.setattr(masks, "_BAND", 2 ** 16)  # bands of 21 columns: 0.5 MB
    cam = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    tracemalloc.start()
    try:
        masks.make_pseudo_mask(cam, 3000, 3000, rgb=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the mask, 3 bytes a pixel, and the 256 x 3000 x 2 floats resized across (6 MB); the one resize: 17 a pixel
    assert peak < 3000 * 3000 * 4, f"{peak:,} bytes traced"


def test_pseudo_masks_stay_bytes_until_the_transforms_have_cut_them(tmp_path):
    """read_pseudo_mask gives the PNG's bytes (3 a pixel, not a 12-byte float copy at full size); the seg stage's
    sample, converted after the resize, crop and flip, is bit for bit the one made from the float mask."""
    from utils.data.images import ImageSet, mask_name, read_pseudo_mask
    from utils.data.lists import Sample
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / mask_name("a.png")), mask)
    stored = read_pseudo_mask(str(tmp_path / "masks" / mask_name("a.png")))
    assert stored.dtype == np.uint8 and np.array_equal(stored, mask)
    transform = train_transform(64, 48)
    item = ImageSet([Sample("a.png", str(tmp_path / "a.png"), 0)], transform, maskpath=str(tmp_path / "masks"))[0]
    # the float mask the reader gave before, through the same pipeline with the same seed (ImageSet's, seed 0)
    reference = transform(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), stored.astype(np.float32) / 255.0, 0)
    assert torch.equal(item["mask"], reference[1]) and torch.equal(item["image"], reference[0])
