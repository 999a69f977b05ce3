"""Reading a user's own images for prediction, and writing prediction PNGs.

Dataset images go through `ppar_core.data.io.read_image`, which must NOT apply EXIF orientation (labels are stored in
raw pixel order). A user's photo is different: there is no label, and a phone picture shot in portrait is stored
sideways with an EXIF tag, so `read_user_image` applies the orientation and predictions come out the way the user
sees the picture. Odd formats are normalised to (H,W,3) uint8 RGB:

- grey (L, 1-bit, LA): replicated to three channels;
- RGBA / LA / palette with transparency: composited over BLACK (`rgb * alpha`), so transparent areas become black
  rather than whatever colour the encoder left under them;
- 16-bit (I;16*, I, and 16-bit RGB read through OpenCV): scaled to 8 bits by `value / 257` (65535 -> 255);
- float (F): values in 0-1 scaled by 255, anything else clipped to 0-255.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from ppar_core.errors import PparError
from ppar_core.files import atomic_write

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_user_image(path: str | Path) -> np.ndarray:
    """Decode any common image file -> (H,W,3) uint8 RGB, EXIF orientation applied.

    Raises PparError naming `path` when the file is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # full decode now: a truncated file fails here, not later as grey pixels
            if _png_colour_bit_depth(path) == 16:
                orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
                return _apply_orientation(_read_16bit_colour(path), orientation)
            return _to_rgb8(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise PparError(f"Image {path} does not exist: check the path.") from None
    except IsADirectoryError:
        raise PparError(f"{path} is a folder, not an image: pass image files, folders or globs.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PparError(
            f"Image {path} cannot be decoded ({_short(exc)}): the file is corrupt or not an image; replace or "
            "remove it."
        ) from None


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H,W,3) uint8 RGB (see the module docstring for each case)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img).astype(np.float64)
        # "I" may hold 8-bit values (some TIFFs); only values above 255 mean a 16-bit range.
        scale = 257.0 if mode != "I" or grey.max(initial=0) > 255 else 1.0
        grey8 = np.clip(np.rint(grey / scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey8 = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)  # composite over black
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    rgb_img = img if mode == "RGB" else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb_img, dtype=np.uint8))


def _png_colour_bit_depth(path: Path) -> int:
    """Bit depth of a truecolour PNG from its IHDR chunk; 0 for grey/palette PNGs and other formats.

    PIL decodes 16-bit-per-channel colour PNGs to 8-bit RGB by keeping the high byte; OpenCV reads all 16 bits, so
    those files go through OpenCV and are scaled exactly like 16-bit grey ones.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return 0
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0
    bit_depth, colour_type = head[24], head[25]
    return bit_depth if colour_type in (2, 6) else 0  # 2: RGB, 6: RGBA


def _read_16bit_colour(path: Path) -> np.ndarray:
    """16-bit RGB(A) file -> (H,W,3) uint8 RGB, alpha composited over black, EXIF orientation NOT yet applied."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3:
        raise PparError(f"Image {path} cannot be decoded as a 16-bit colour image: replace or remove it.")
    values = raw.astype(np.float64) / (257.0 if raw.dtype == np.uint16 else 1.0)
    rgb = values[..., 2::-1]  # OpenCV gives BGR(A)
    if raw.shape[2] == 4:
        rgb = rgb * (values[..., 3:4] / 255.0)
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


# EXIF orientation tag -> the numpy operation that shows the image upright (as PIL's exif_transpose does).
_EXIF_ORIENTATION = 0x0112


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip (H,W,C) `pixels` upright for EXIF `orientation` 1-8 (others are left as they are)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, k=1),
    }
    op = ops.get(orientation)
    return pixels if op is None else np.ascontiguousarray(op(pixels))


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write (H,W) uint8 ids or (H,W,3) uint8 RGB as a PNG, creating the folder. Returns the path.

    Id maps are written as plain 8-bit grey PNGs (not palettised), the format of Cityscapes labelId submissions. The
    write is atomic: a reader (or an interruption) never sees half a PNG.
    """
    path = Path(path)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"write_png expects (H,W) or (H,W,3) uint8, got {array.shape} {array.dtype}")
    picture = Image.fromarray(np.ascontiguousarray(array), mode="L" if array.ndim == 2 else "RGB")
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
