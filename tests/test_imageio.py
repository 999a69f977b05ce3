"""Reading users' images for prediction: grey, RGBA, 16-bit, EXIF orientation, tiny and corrupt files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from ppar_core.errors import PparError
from ppar_core.imageio import _apply_orientation, read_user_image, write_png


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def test_rgb_png_reads_back_exactly(tmp_path: Path) -> None:
    image = _rgb()
    path = write_png(tmp_path / "a.png", image)
    out = read_user_image(path)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, image)


def test_grey_is_replicated_to_three_channels(tmp_path: Path) -> None:
    grey = np.array([[0, 10, 255]], dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_user_image(tmp_path / "g.png")
    assert out.shape == (1, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_is_composited_over_black(tmp_path: Path) -> None:
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 51]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_user_image(tmp_path / "a.png")
    # opaque: unchanged; transparent: black; alpha 51 = 0.2: 200*0.2 = 40, 100*0.2 = 20, 50*0.2 = 10
    np.testing.assert_array_equal(out[0], [[200, 100, 50], [0, 0, 0], [40, 20, 10]])


def test_16bit_grey_is_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 10, 65535, 257 * 128]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    out = read_user_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 10, 255, 128]])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_colour_is_scaled_per_channel_in_rgb_order(tmp_path: Path) -> None:
    rgb16 = np.array([[[257 * 200, 257 * 100, 257 * 3], [65535, 0, 257]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1].copy())  # OpenCV writes BGR
    out = read_user_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(out, [[[200, 100, 3], [255, 0, 1]]])


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    stored = _rgb(2, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif)
    out = read_user_image(tmp_path / "r.png")
    assert out.shape == (3, 2, 3)
    # after a clockwise turn the stored bottom-left pixel is at the top-left, the stored top-left at the top-right
    np.testing.assert_array_equal(out[0, 0], stored[1, 0])
    np.testing.assert_array_equal(out[0, 1], stored[0, 0])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pil_exif_transpose(orientation: int) -> None:
    # Our numpy version (used for 16-bit colour files) against PIL's own exif_transpose.
    stored = _rgb(2, 3)
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(_apply_orientation(stored, orientation), expected)


def test_one_pixel_image(tmp_path: Path) -> None:
    write_png(tmp_path / "p.png", np.array([[[1, 2, 3]]], dtype=np.uint8))
    np.testing.assert_array_equal(read_user_image(tmp_path / "p.png"), [[[1, 2, 3]]])


def test_corrupt_and_missing_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(PparError, match="broken.jpg"):
        read_user_image(bad)
    truncated = tmp_path / "cut.png"
    write_png(tmp_path / "full.png", np.full((64, 64, 3), 7, dtype=np.uint8))
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    with pytest.raises(PparError, match="cut.png"):
        read_user_image(truncated)
    with pytest.raises(PparError, match="nothere.png"):
        read_user_image(tmp_path / "nothere.png")


def test_write_png_ids_are_single_channel_8bit(tmp_path: Path) -> None:
    ids = np.array([[0, 18, 255]], dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "ids.png", ids)
    with Image.open(path) as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), ids)
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", ids.astype(np.int32))
