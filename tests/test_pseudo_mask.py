"""The optimised pseudo mask (windowed Gaussians, reused buffers, float32 prior) against docs/method.md §4
written out the plain way: moments and Gaussians over the whole 256 x 256 grid, no windowing."""
import cv2
import numpy as np
import pytest

from utils import pseudo_mask
from utils.pseudo_mask import gaussian_prior, make_pseudo_mask, normalise_cam


def spec_pseudo_mask(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """docs/method.md §4 step by step, float64, full grid (the reference: slow and obvious)."""
    cam = cam.astype(np.float32)
    cam = cv2.resize(cam / (cam.max() + 1e-6), (256, 256), interpolation=cv2.INTER_LINEAR)
    w = np.where((cam >= 0.1) & (cam <= 0.5), cam, 0).astype(np.float64)
    ys, xs = np.mgrid[0:256, 0:256].astype(np.float64)
    prior = np.zeros((256, 256))
    contours, _ = cv2.findContours((w > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        if cv2.contourArea(contour) < 20:
            continue
        region = np.zeros((256, 256), np.uint8)
        cv2.drawContours(region, [contour], -1, 1, thickness=-1)
        p = region * w
        p = p / p.sum()
        ux, uy = (p * xs).sum(), (p * ys).sum()
        vx, vy = (p * (xs - ux) ** 2).sum() / 10, (p * (ys - uy) ** 2).sum() / 10
        vxy = (p * (xs - ux) * (ys - uy)).sum() / 10
        c = -1 / (2 * (1 - vxy ** 2 / (vx * vy)))
        g = np.exp(c * ((xs - ux) ** 2 / vx - 2 * (xs - ux) * (ys - uy) * vxy / (vx * vy) + (ys - uy) ** 2 / vy))
        prior = np.maximum(prior, g)
    fused = np.dstack([cam * 255, prior * 255, np.zeros_like(prior)]).astype(np.float32)
    return cv2.resize(fused, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.uint8)


def varied_cams() -> list:
    """~20 (cam, width, height): smooth blobs of every shape and place, rings, flat and empty maps."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    sizes = [(500, 375), (375, 500), (256, 256), (640, 427), (37, 611), (300, 40)]
    out = []
    for i in range(16):
        cam = np.zeros((32, 32), np.float32)
        for _ in range(1 + i % 4):
            cx, cy = rng.uniform(-2, 34, 2)
            sx, sy = rng.uniform(1.5, 9, 2)
            t = rng.uniform(0, np.pi)     # rotated blobs: correlated x-y, the covariance term matters
            u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
            v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
            cam += rng.uniform(0.3, 3) * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        cam += 0.05 * np.abs(rng.normal(size=(32, 32))).astype(np.float32)
        out.append((cam, *sizes[i % len(sizes)]))
    r = np.hypot(xx - 15.5, yy - 15.5)
    out.append((np.exp(-0.5 * ((r - 9) / 2) ** 2).astype(np.float32), 500, 333))   # a ring: a region with a hole
    out.append((np.zeros((32, 32), np.float32), 500, 375))                          # no activation at all
    out.append((np.ones((32, 32), np.float32), 200, 150))                           # flat: all above 0.5
    out.append((np.maximum(15 - np.abs(xx - yy), 0).astype(np.float32), 480, 360))   # a diagonal ridge
    return out


def test_pseudo_mask_equals_the_spec_written_out():
    worst = {0: 0, 1: 0}
    for cam, width, height in varied_cams():
        got, ref = make_pseudo_mask(cam, width, height), spec_pseudo_mask(cam, width, height)
        assert got.shape == ref.shape == (height, width, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff[..., 0].mean() <= 0.05 and diff[..., 1].mean() <= 0.05, (width, height)
        assert diff[..., 2].max() == 0
        worst = {k: max(worst[k], diff[..., k].max()) for k in worst}
    # channel 0: OpenCV's 2- and 3-channel resizes round differently in the last float bit; channel 1:
    # also the windowing (Gaussian tails under 1/1000 grey level are not computed)
    assert worst[0] <= 1 and worst[1] <= 2


def test_float32_prior_buffer_is_the_rounded_float64_prior():
    for cam, _, _ in varied_cams()[:8]:
        cam256 = normalise_cam(cam)
        out = np.full((256, 256), 7, np.float32)  # stale contents must not leak through
        assert np.array_equal(gaussian_prior(cam256, out=out), gaussian_prior(cam256).astype(np.float32))


def test_pseudo_mask_of_a_large_image_and_repeated_calls_agree():
    cam, _, _ = varied_cams()[3]
    big = make_pseudo_mask(cam, 1400, 900)          # over the reused buffers' limit: fresh arrays
    small = make_pseudo_mask(cam, 500, 375)
    assert np.array_equal(make_pseudo_mask(cam, 1400, 900), big)
    assert np.array_equal(make_pseudo_mask(cam, 500, 375), small)
    assert not np.shares_memory(small, make_pseudo_mask(cam, 500, 375))  # every call returns its own array


@pytest.mark.parametrize("width,height", [(1, 1), (2, 700)])
def test_pseudo_mask_of_tiny_sizes(width, height):
    cam, _, _ = varied_cams()[0]
    assert np.abs(make_pseudo_mask(cam, width, height).astype(int)
                  - spec_pseudo_mask(cam, width, height).astype(int)).max() <= 2


def test_narrow_gaussians_together_give_the_bits_of_one_by_one(monkeypatch):
    """`_add_gaussians` evaluates the Gaussians of narrow boxes in one stacked array: the prior must be the
    one of evaluating each alone (`_NARROW = 0`), bit for bit, float32 and float64."""
    rng = np.random.default_rng(11)
    cams = [cam for cam, _, _ in varied_cams()]
    cams += [np.abs(rng.normal(size=(32, 32))).astype(np.float32) ** rng.uniform(0.5, 3) for _ in range(12)]
    cams += [cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (0, 0), s) for s in (0.4, 0.8, 1.5, 3)]
    batches = []
    real = pseudo_mask._add_narrow_gaussians
    monkeypatch.setattr(pseudo_mask, "_add_narrow_gaussians", lambda prior, narrow: (batches.append(len(narrow)),
                                                                                    real(prior, narrow)))
    together = [(gaussian_prior(c), gaussian_prior(c, out=np.empty((256, 256), np.float32)))
                for c in map(normalise_cam, cams)]
    assert sum(n > 1 for n in batches) >= 10     # noisy maps have many small regions: batches of several
    assert sum(p64.max() > 0 for p64, _ in together) >= len(cams) - 4
    monkeypatch.setattr(pseudo_mask, "_NARROW", 0)
    for cam, (p64, p32) in zip(map(normalise_cam, cams), together):
        assert np.array_equal(gaussian_prior(cam).view(np.uint64), p64.view(np.uint64))
        assert np.array_equal(gaussian_prior(cam, out=np.empty((256, 256), np.float32)).view(np.uint32),
                              p32.view(np.uint32))


def test_fill_poly_fills_what_draw_contours_fills():
    """`gaussian_prior` fills each region with `cv2.fillPoly` (less overhead) where the authors' code has
    `drawContours` with thickness -1: the pixels must be the same, for every contour of noisy maps (holes, islands,
    lines, single pixels) and smooth ones, drawn at the region's offset as there."""
    rng = np.random.default_rng(5)
    cams = [rng.random((32, 32)).astype(np.float32) for _ in range(6)]
    cams += [cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (0, 0), s) for s in (0.5, 1, 2)]
    cams += [cam for cam, _, _ in varied_cams()]
    contours = 0
    for cam in map(normalise_cam, cams):
        inside = cv2.inRange(cam, pseudo_mask.LOW, pseudo_mask.HIGH)
        for contour in cv2.findContours(inside, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]:  # small ones too
            x, y, w, h = cv2.boundingRect(contour)
            drawn, filled = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
            cv2.drawContours(drawn, [contour], -1, 1, thickness=-1, offset=(-x, -y))
            cv2.fillPoly(filled, (contour,), 1, cv2.LINE_8, 0, (-x, -y))
            assert np.array_equal(drawn, filled)
            contours += 1
    assert contours > 200
