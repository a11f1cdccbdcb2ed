"""PNG / JPEG / BMP: read for analyze (uncalibrated, grey), never picked up by the folder watcher."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from emstream.errors import IncompleteFile, UnreadableFile
from emstream.sources.readers import SUPPORTED_SUFFIXES, check_complete, is_supported, read_frames


def _image(dtype=np.uint8):
    rng = np.random.default_rng(0)
    hi = 255 if dtype == np.uint8 else 4000
    return rng.integers(0, hi, (48, 64)).astype(dtype)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_plain_images_read_as_uncalibrated_grey_frames(tmp_path, suffix):
    img = _image()
    p = tmp_path / f"a{suffix}"
    cv2.imwrite(str(p), img)
    check_complete(p)
    (f,) = read_frames(p)
    assert f.pixels.shape == (48, 64) and f.pixels.dtype == np.uint8
    if suffix != ".jpg":  # lossless
        assert np.array_equal(f.pixels, img)
    assert not f.calibration.calibrated and "--pixel-size" in f.calibration.detail
    assert not is_supported(p) and suffix not in SUPPORTED_SUFFIXES  # not watched


def test_sixteen_bit_png_and_grey_stored_as_colour(tmp_path):
    img16 = _image(np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), img16)
    assert np.array_equal(read_frames(tmp_path / "b.png")[0].pixels, img16)
    grey = _image()
    cv2.imwrite(str(tmp_path / "c.png"), np.dstack([grey] * 3))
    (f,) = read_frames(tmp_path / "c.png")
    assert np.array_equal(f.pixels, grey) and "colour_converted" not in f.metadata
    colour = np.dstack([grey, grey // 2, 255 - grey])
    cv2.imwrite(str(tmp_path / "d.png"), colour)
    (f,) = read_frames(tmp_path / "d.png")
    assert f.pixels.ndim == 2 and f.metadata["colour_converted"]


def test_half_written_and_corrupt_plain_images(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), _image())
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompleteFile):
        check_complete(tmp_path / "half.png")
    with pytest.raises(IncompleteFile):
        read_frames(tmp_path / "half.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40 + b"IEND\xaeB`\x82")
    with pytest.raises(UnreadableFile):
        read_frames(tmp_path / "junk.png")
