"""The pseudo mask: the fast path (utils/engine/masks.py: windowed and stacked Gaussians, reused buffers, float32
prior) gives the masks of the plain definition (utils/method/pseudo_mask.py) bit for bit, and the definition
is the authors' formula (docs/method.md §4) written out once more here, with no shortcut, to within its
documented grey level."""
import cv2
import numpy as np
import pytest

import utils.engine.masks as pseudo_mask
from utils.method import pseudo_mask as method
from utils.engine.masks import gaussian_prior, make_pseudo_mask


def authors_pseudo_mask(cam: np.ndarray, width: int, height: int) -> np.ndarray:
    """The authors' steps as they wrote them: float64, full grid, Gaussians with their tails, 3-channel resize."""
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


def many_cams() -> list:
    """(cam, width, height) of every kind a CAM model gives, and of the odd ones: random-weight-like noise (many
    small regions), trained-like smooth blobs, sharp peaks, thin lines, stripes, checkerboards (many regions at
    the minimal area), all-zero, constant and one-pixel maps, at 32 x 32 and other map sizes; the output sizes
    odd, tiny, thin and over the fast path's reused-buffer limit."""
    rng = np.random.default_rng(2021)
    sizes = [(500, 375), (333, 500), (1, 1), (2, 700), (31, 17), (257, 255), (1400, 901), (640, 480)]
    cams = [cam for cam, _, _ in varied_cams()]
    for s in (0.5, 0.7, 0.9, 1.2, 1.6, 2.5):             # random-weight-like: blurred noise, ReLU
        for _ in range(10):
            cam = cv2.GaussianBlur(rng.normal(size=(32, 32)).astype(np.float32), (0, 0), s)
            cams.append(np.maximum(cam + rng.uniform(0, 0.4), 0) ** rng.uniform(1, 2.5))
    cams += [rng.random((32, 32)).astype(np.float32) ** k for k in (1, 3)]       # raw noise: dozens of regions
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    for k in range(30):                                    # trained-like: a few smooth blobs, any orientation
        cam = np.zeros((32, 32), np.float32)
        for cx, cy, sx, sy, t, a in rng.uniform([0, 0, 1, 1, 0, 0.3], [31, 31, 8, 8, np.pi, 3], (1 + k % 3, 6)):
            u, v = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t), (yy - cy) * np.cos(t) - (xx - cx) * np.sin(t)
            cam += a * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
        cams.append(cam + 0.05 * rng.random((32, 32)).astype(np.float32))
    for k in range(6):                                     # sharp peaks: tiny regions, very narrow Gaussians
        cam = np.zeros((32, 32), np.float32)
        for cx, cy in rng.uniform(0, 31, (1 + 2 * k, 2)):
            cam += np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.2, 1.0) ** 2)
        cams.append(cam)
    line = np.zeros((32, 32), np.float32)
    line[:, 16] = 1.0                                      # a vertical line: its flanks are thin regions
    line[5, :] = 0.3
    cams.append(line)
    cams.append(np.fromfunction(lambda y, x: ((x + y) % 8 < 4) * 0.3 + (x % 16 == 0) * 1.0, (32, 32),
                                dtype=np.float32))        # diagonal stripes
    cams.append(np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((4, 4))).astype(np.float32) * 0.3 + 0.01)
    cams += [np.full((32, 32), 0.7, np.float32), np.zeros((32, 32), np.float32), np.ones((1, 1), np.float32)]
    for shape in ((28, 28), (7, 7), (64, 48)):            # other CAM sizes (crop 224, tiny inputs, non-square)
        cam = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 1.0)
        cams.append(cam - cam.min())
    return [(cam, *sizes[i % len(sizes)]) for i, cam in enumerate(cams)]


def test_fast_path_gives_the_definitions_masks_bit_for_bit():
    """Every mask of the fast path is the plain definition's, byte for byte, in both channel orders.

    The two sum a region's moments in different orders (its bounding rectangle and marginals; the whole grid),
    so their float64 moments can differ in the last bit, and so a float32 prior pixel by one unit in a few
    million: the truncation to whole grey levels makes that invisible unless a value sits on a whole level to
    ~1e-5, which no map here (nor any of the bench's) does. Everything else is the same operations in the same
    order: Gaussian boxes, float32 rounding, the 2-channel resize."""
    cams = many_cams()
    kinds = {"regions": 0, "narrow": 0, "wide": 0}
    for cam, width, height in cams:
        want = method.pseudo_mask(cam, width, height)
        got = make_pseudo_mask(cam, width, height)
        assert want.shape == got.shape == (height, width, 3) and want.dtype == got.dtype == np.uint8
        assert np.array_equal(got, want), (cam.shape, width, height, np.argwhere(got != want)[:5])
        assert np.array_equal(make_pseudo_mask(cam, width, height, rgb=True), want[..., ::-1])
        w = method.mid_confidence(method.normalise_cam(cam))
        for contour in method.regions(w):
            kinds["regions"] += 1
            x0, x1, _, _ = method.gaussian_box(*method.moments(w, contour)[:4])
            kinds["narrow" if x1 - x0 < pseudo_mask._NARROW else "wide"] += 1
    assert len(cams) >= 120 and kinds["regions"] > 1500 and kinds["wide"] > 50, kinds  # both kinds of group


def test_definition_is_the_authors_formula_to_a_grey_level():
    """The definition against the authors' steps with no shortcut: their 3-channel resize rounds differently
    in the last float bit, and the Gaussians' tails under 1/1000 grey level are cut (method.gaussian_box)."""
    worst = {0: 0, 1: 0}
    for cam, width, height in varied_cams():
        got, ref = method.pseudo_mask(cam, width, height), authors_pseudo_mask(cam, width, height)
        assert got.shape == ref.shape == (height, width, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff[..., 0].mean() <= 0.05 and diff[..., 1].mean() <= 0.05, (width, height)
        assert diff[..., 2].max() == 0
        worst = {k: max(worst[k], diff[..., k].max()) for k in worst}
    assert worst[0] <= 1 and worst[1] <= 2


def test_float32_prior_buffer_is_the_rounded_float64_prior():
    for cam, _, _ in varied_cams()[:8]:
        cam256 = method.normalise_cam(cam)
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
                  - authors_pseudo_mask(cam, width, height).astype(int)).max() <= 2


def test_stacked_gaussians_give_the_bits_of_one_by_one():
    """`_add_gaussians` evaluates a group of Gaussians in one stacked array, padded to the widest box: the prior
    must be the one of evaluating each alone, bit for bit, float32 and float64, for groups of every width."""
    rng = np.random.default_rng(11)
    cams = [cam for cam, _, _ in varied_cams()]
    cams += [np.abs(rng.normal(size=(32, 32))).astype(np.float32) ** rng.uniform(0.5, 3) for _ in range(12)]
    cams += [cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (0, 0), s) for s in (0.4, 0.8, 1.5, 3)]
    groups = 0
    for cam in map(method.normalise_cam, cams):
        gaussians = []
        for m in pseudo_mask._moments(cam):
            c = method.exponent_factor(*m[2:])
            if c is not None:
                gaussians.append(m + (c,) + method.gaussian_box(*m[:4]))
        if not gaussians:
            continue
        # the whole map's Gaussians as one group: narrow and wide together, the most padding
        groups += len(gaussians) > 1
        for dtype, bits in ((np.float64, np.uint64), (np.float32, np.uint32)):
            together, alone = np.zeros((256, 256), dtype), np.zeros((256, 256), dtype)
            pseudo_mask._add_gaussians(together, gaussians)
            for g in gaussians:
                pseudo_mask._add_gaussians(alone, [g])
            assert np.array_equal(together.view(bits), alone.view(bits))
            assert together.max() > 0
    assert groups >= 20


def test_fill_poly_fills_what_draw_contours_fills():
    """The fast path fills each region with `cv2.fillPoly` (less overhead) where the definition uses
    `drawContours` with thickness -1: the pixels must be the same, for every contour of noisy maps (holes,
    islands, lines, single pixels) and smooth ones, drawn at the region's offset as there."""
    rng = np.random.default_rng(5)
    cams = [rng.random((32, 32)).astype(np.float32) for _ in range(6)]
    cams += [cv2.GaussianBlur(rng.random((32, 32)).astype(np.float32), (0, 0), s) for s in (0.5, 1, 2)]
    cams += [cam for cam, _, _ in varied_cams()]
    contours = 0
    for cam in map(method.normalise_cam, cams):
        inside = cv2.inRange(cam, method.LOW, method.HIGH)
        for contour in cv2.findContours(inside, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]:  # small ones too
            x, y, w, h = cv2.boundingRect(contour)
            drawn, filled = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
            cv2.drawContours(drawn, [contour], -1, 1, thickness=-1, offset=(-x, -y))
            cv2.fillPoly(filled, (contour,), 1, cv2.LINE_8, 0, (-x, -y))
            assert np.array_equal(drawn, filled)
            contours += 1
    assert contours > 200
