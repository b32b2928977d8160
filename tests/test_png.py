"""The pseudo-mask PNG writers (utils/data/png.py): fpng and OpenCV's give masks that `cv2.imread` returns
exactly as the masks written before fpng (`cv2.imencode` of make_pseudo_mask's BGR array); a missing or
failing fpng falls back to OpenCV's writer."""
import os

import cv2
import numpy as np
import pytest

from test_pseudo_mask import varied_cams
from utils.data import png
from utils.errors import UserError
from utils.engine.masks import make_pseudo_mask
from utils.engine.masks import write_mask, write_masks

HAVE_FPNG = png._fpng is not None
# odd sizes, one-pixel-wide, and one over the pseudo-mask buffers' reuse limit (fresh arrays)
SIZES = [(1, 1), (1, 613), (587, 1), (2, 3), (500, 375), (375, 500), (37, 611), (1401, 901)]


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which fpng has not been checked nor failed yet."""
    monkeypatch.setattr(png._State, "checked", False)
    monkeypatch.setattr(png._State, "failed", False)
    return monkeypatch


def today(cam, width, height) -> np.ndarray:
    """What cv2.imread returned for a mask written before fpng: OpenCV's PNG of the BGR mask."""
    ok, data = cv2.imencode(".png", make_pseudo_mask(cam, width, height))
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def cases():
    cams = [c for c, _, _ in varied_cams()]
    rng = np.random.default_rng(11)
    for k, cam in enumerate(cams):
        if k < len(SIZES):
            yield cam, *SIZES[k]
        else:
            yield cam, int(rng.integers(1, 700)), int(rng.integers(1, 700))
    for k in range(6):  # noisy maps: many small regions, many Gaussians
        yield np.maximum(rng.normal(size=(32, 32)), 0).astype(np.float32), *SIZES[(k + 3) % len(SIZES)]


@pytest.mark.parametrize("writer", ["fpng", "opencv"])
def test_masks_read_back_exactly_as_before(tmp_path, fresh, writer):
    if writer == "fpng" and not HAVE_FPNG:
        pytest.skip("fpng is not installed")
    for k, (cam, width, height) in enumerate(cases()):
        path = str(tmp_path / "sub" / f"{k}.png")
        write_mask(cam, width, height, path, writer=writer)
        got = cv2.imread(path)  # 3 channels: ch0 = CAM, ch1 = prior, ch2 = 0 (docs/method.md §4)
        assert got.shape == (height, width, 3) and np.array_equal(got, today(cam, width, height)), (width, height)
        assert not got[..., 2].any()
        with open(path, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[25] == 2  # IHDR colour type 2: RGB, no alpha
    assert sorted(os.listdir(tmp_path / "sub")) == sorted(f"{k}.png" for k in range(k + 1))  # no .tmp left
    assert not png._State.failed


def test_opencv_writer_writes_the_same_bytes_as_before(tmp_path, fresh):
    cam, width, height = varied_cams()[1]
    write_mask(cam, width, height, str(tmp_path / "m.png"), writer="opencv")
    ok, before = cv2.imencode(".png", make_pseudo_mask(cam, width, height))
    assert (tmp_path / "m.png").read_bytes() == before.tobytes()


@pytest.mark.skipif(not HAVE_FPNG, reason="fpng is not installed")
def test_fpng_on_every_byte_value_and_large_images(fresh):
    rng = np.random.default_rng(0)
    for shape in [(16, 16, 3), (1, 1, 3), (1, 4097, 3), (3000, 2000, 3)]:
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        back = cv2.imdecode(np.frombuffer(png.encode_rgb(rgb, "fpng"), np.uint8), cv2.IMREAD_UNCHANGED)
        assert back.shape == shape and np.array_equal(back[..., ::-1], rgb)  # imread gives BGR
    assert png._State.checked and not png._State.failed


def test_without_fpng_auto_is_opencv_and_fpng_is_refused(fresh):
    fresh.setattr(png, "_fpng", None)
    assert png.resolve("auto") == "opencv" and png.resolve("opencv") == "opencv"
    with pytest.raises(UserError, match="fpng package is not installed"):
        png.resolve("fpng")
    with pytest.raises(UserError, match="expected one of"):
        png.resolve("libpng")
    cam, width, height = varied_cams()[2]
    rgb = make_pseudo_mask(cam, width, height, rgb=True)
    ok, want = cv2.imencode(".png", make_pseudo_mask(cam, width, height))
    assert bytes(png.encode_rgb(rgb, "auto")) == want.tobytes()


class BrokenFpng:
    """A stand-in for the fpng module whose encoder fails in one of the ways a young binding might."""
    __version__ = "0.0-broken"

    def __init__(self, mode: str):
        self.mode, self.calls = mode, 0

    def from_ndarray(self, rgb):
        self.calls += 1
        if self.mode == "raises":
            raise RuntimeError("boom")
        if self.mode == "empty":
            return b""
        ok, data = cv2.imencode(".png", cv2.cvtColor(255 - rgb, cv2.COLOR_RGB2BGR))  # a PNG of another image
        return data.tobytes()


@pytest.mark.parametrize("mode", ["raises", "empty", "wrong pixels"])
def test_a_failing_fpng_falls_back_to_opencv_for_good(tmp_path, fresh, capsys, mode):
    fake = BrokenFpng(mode)
    fresh.setattr(png, "_fpng", fake)
    assert png.resolve("auto") == "fpng"
    items = [(cam, w, h, str(tmp_path / f"{k}.png")) for k, (cam, w, h) in enumerate(list(cases())[:4])]
    write_masks(items, "auto")
    for cam, width, height, path in items:
        assert np.array_equal(cv2.imread(path), today(cam, width, height))
    assert fake.calls == 1 and png._State.failed          # tried once, then OpenCV's writer for good
    assert png.resolve("auto") == "opencv"
    err = capsys.readouterr().err
    assert err.count("warning: fpng failed") == 1 and "OpenCV" in err


def test_encode_rejects_what_is_not_a_3_channel_uint8_image(fresh):
    for bad in [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 8, 3), np.uint8)[:, ::2]]:
        with pytest.raises(ValueError, match="H x W x 3 uint8"):
            png.encode_rgb(bad, "auto")
