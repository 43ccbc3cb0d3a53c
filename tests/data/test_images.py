"""faceparse.images: one reader, pixel values scaled by their real range, errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceparse.errors import FaceParseError
from faceparse.images import array_to_rgb, read_image, to_rgb

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_is_scaled_not_saturated(tmp_path, suffix):
    a = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / f"g{suffix}")
    got = read_image(tmp_path / f"g{suffix}")
    assert got.shape == (20, 30, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got[..., 0].astype(float), a / 257.0, atol=0.51)
    assert (got == 255).mean() < 0.01  # PIL's convert("RGB") would clip ~99 % of pixels to white


def test_arrays_of_every_dtype_and_layout():
    base = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(array_to_rgb(base), base)
    np.testing.assert_array_equal(array_to_rgb(base.astype(np.uint16) * 257), base)
    np.testing.assert_array_equal(array_to_rgb(base / 255.0), base)
    np.testing.assert_array_equal(array_to_rgb(base.astype(np.float32)), base)  # 0..255 floats kept
    rgba = np.concatenate([base, np.zeros((5, 6, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(array_to_rgb(rgba), base)  # alpha dropped, not premultiplied
    gray = base[..., 0]
    assert (array_to_rgb(gray) == gray[..., None]).all()
    with pytest.raises(FaceParseError, match="NaN"):
        array_to_rgb(np.full((2, 2, 3), np.nan))
    with pytest.raises(FaceParseError, match="shape"):
        array_to_rgb(np.zeros((2, 2, 5)))


def test_modes_and_exif_orientation(tmp_path):
    base = RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    pal = Image.fromarray(base).convert("P")
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(base).convert("RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), base)
    # a photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base).save(tmp_path / "r.jpg", exif=exif, quality=100)
    upright = read_image(tmp_path / "r.jpg", exif=True)
    assert read_image(tmp_path / "r.jpg").shape == (8, 12, 3)  # dataset reads keep the stored order
    assert upright.shape == (12, 8, 3)
    assert to_rgb(str(tmp_path / "r.jpg")).shape == (12, 8, 3)  # photos given to predict are upright


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceParseError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(FaceParseError, match="x.jpg"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(FaceParseError, match="does not exist"):
        read_image(tmp_path / "none.png")
