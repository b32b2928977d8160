"""The bad-input files of tests/bad_files.py are what they claim: a loader's error path is only tested by them
if a grayscale JPEG is grayscale, a CMYK one CMYK, a cut one cut and the random bytes no image."""
import os

import cv2
import pytest

import bad_files


def test_grayscale_jpeg(tmp_path):
    p = bad_files.write_grayscale_jpeg(str(tmp_path / "gray.jpg"), 70, 90, seed=1)
    img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
    assert img is not None and img.shape == (70, 90)


def test_cmyk_jpeg(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    p = bad_files.write_cmyk_jpeg(str(tmp_path / "cmyk.jpg"), 70, 90, seed=1)
    with Image.open(p) as im:
        assert im.mode == "CMYK" and im.format == "JPEG" and im.size == (90, 70)


def test_truncated_jpeg(tmp_path):
    full = bad_files.write_truncated_jpeg(str(tmp_path / "full.jpg"), 80, 100, seed=2, keep=1.0)
    cut = bad_files.write_truncated_jpeg(str(tmp_path / "cut.jpg"), 80, 100, seed=2)
    with open(full, "rb") as f:
        full_bytes = f.read()
    with open(cut, "rb") as f:
        cut_bytes = f.read()
    assert full_bytes.endswith(b"\xff\xd9") and cv2.imread(full) is not None
    assert cut_bytes[:2] == b"\xff\xd8" and not cut_bytes.endswith(b"\xff\xd9")
    assert full_bytes.startswith(cut_bytes) and 0.4 <= len(cut_bytes) / len(full_bytes) <= 0.6
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(cut) as im, pytest.raises(OSError):
        im.load()  # Pillow refuses truncated data unless told otherwise


def test_corrupt_file(tmp_path):
    p = bad_files.write_corrupt_file(str(tmp_path / "bad.jpg"))
    assert os.path.getsize(p) > 0
    assert cv2.imread(p) is None
