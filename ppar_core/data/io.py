"""Reading images and label maps from disk, and mapping raw label values to trainIds.

Images are decoded with PIL because it detects truncated PNG and JPEG files (OpenCV's JPEG decoder silently returns
a partly grey image). Label maps are read by palette INDEX, never by colour, so a palettised GTA5 or Mapillary PNG
yields its class ids. SYNTHIA's 16-bit, 3-channel labels are the one case PIL cannot read; OpenCV does.

Every function raises `PparError` naming the file when the file cannot be used, so a data loader can either stop
with one clear sentence or skip the sample and count it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import ppar_core.labels as labels
from ppar_core.errors import PparError

# PIL modes whose pixel values are class indices (P: palette index, L: 8-bit grey, I;16*: 16-bit grey, I: 32-bit).
_INDEX_MODES = {"P", "L", "I;16", "I;16B", "I;16L", "I;16N", "I"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "HSV", "LAB"}


def read_image(path: Path) -> np.ndarray:
    """Decode an image file -> (H,W,3) uint8 RGB.

    EXIF orientation is deliberately NOT applied: labels are stored in the raw pixel order, and rotating only the
    image would misalign the pair. Grey, palette and RGBA images are converted to RGB. 8-bit PNGs (every PNG
    dataset ppar reads) are decoded by OpenCV, about 20% faster than PIL and the same pixels, which refuses a
    truncated PNG as PIL does; everything else (JPEG, where OpenCV would return a truncated file's missing part as
    grey) by PIL.
    """
    if _png_bit_depth(path) == 8:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is not None:
            return np.ascontiguousarray(bgr[..., ::-1])
    try:
        with Image.open(path) as img:
            img.load()  # forces the full decode, so truncated files fail here rather than later as grey pixels
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            array = np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise PparError(f"Image {path} does not exist: check the dataset root or re-extract the archive.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PparError(
            f"Image {path} cannot be decoded ({_short(exc)}): the file is truncated or corrupt; re-download it "
            "(training and evaluation skip such a sample and count it)."
        ) from None
    return np.ascontiguousarray(array)


def _png_bit_depth(path: Path) -> int:
    """The bit depth in a PNG's header (0 for other files or an unreadable one)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(26)
    except OSError:
        return 0
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 0


def read_label_index(path: Path, *, palettised: bool = False) -> np.ndarray:
    """Read a single-channel label map by value (palette index for palettised PNGs) -> (H,W) uint8 or uint16.

    Colour (3-channel) PNGs are refused with a message saying so: the commonest mistake is pointing a loader at a
    folder of colour visualisations (e.g. BDD100K `colormaps`) instead of label masks. `palettised` (GTA5, whose
    palette index is the labelId) refuses any other mode: a grey map there holds ids of some other encoding, most
    often trainIds (a converted GTA5, or a prepared copy that lost its manifest), which would be mapped wrongly.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in _COLOUR_MODES:
                raise PparError(
                    f"Label {path} is a {mode} colour image, not a single-channel label map: point the loader at "
                    "the folder of id masks (e.g. BDD100K labels/sem_seg/masks, not colormaps)."
                )
            if palettised and mode != "P":
                raise PparError(
                    f"Label {path} is not palettised (PIL mode {mode}) as GTA5 stores its labelIds: labels already "
                    "in trainIds are read as folder=ROOT; a prepared copy is read through its manifest.json (restore "
                    "it, or prepare the copy again)."
                )
            # 1-bit and other exotic single-channel modes: the values are what they show
            array = np.asarray(img if mode in _INDEX_MODES else img.convert("L"))
    except FileNotFoundError:
        raise PparError(f"Label {path} does not exist: check the dataset root or re-extract the archive.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PparError(
            f"Label {path} cannot be decoded ({_short(exc)}): the file is truncated or corrupt; re-download it "
            "(training and evaluation skip such a sample and count it)."
        ) from None
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 65535:
            raise PparError(f"Label {path} has values outside 0-65535: it is not a label map.")
        array = array.astype(np.uint16)
    return np.ascontiguousarray(array)


def read_synthia_label(path: Path) -> np.ndarray:
    """Read a SYNTHIA 16-bit multi-channel label PNG -> (H,W) uint16 SYNTHIA class ids.

    The class id is in the first (R) channel of the PNG; OpenCV returns BGR(A), so it is the channel at index 2.
    """
    if not path.is_file():
        raise PparError(f"Label {path} does not exist: check the dataset root or re-extract the archive.")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise PparError(
            f"Label {path} cannot be decoded: the file is truncated or corrupt; re-download it "
            "(training and evaluation skip such a sample and count it)."
        )
    if raw.ndim != 3 or raw.shape[2] not in (3, 4) or raw.dtype != np.uint16:
        found = f"{raw.shape[2] if raw.ndim == 3 else 1}-channel {raw.dtype}"
        raise PparError(
            f"Label {path} is a {found} image, but SYNTHIA labels are 16-bit 3-channel PNGs (GT/LABELS, not "
            "GT/COLOR): use the SYNTHIA-RAND-CITYSCAPES GT/LABELS folder."
        )
    return np.ascontiguousarray(raw[:, :, 2])


@dataclass(frozen=True, eq=False)
class IdMap:
    """A raw label value -> trainId table plus which raw values are known (have an entry).

    `lut` (N,) uint8 trainIds and `known` (N,) bool, N = 256 or 65536. A known value mapping to 255 is legitimate
    (e.g. Cityscapes "parking"); an unknown value means the file is not what the loader expects.
    """

    name: str
    lut: np.ndarray
    known: np.ndarray

    @property
    def _unknown_u8(self) -> np.ndarray:
        """(256,) uint8: 1 where an 8-bit raw value has no entry (the table of `apply`'s check)."""
        return (~self.known[:256]).astype(np.uint8)

    def apply(self, raw: np.ndarray, *, path: Path) -> np.ndarray:
        """Map raw values (H,W) uint8/uint16 -> (H,W) uint8 trainIds; PparError naming `path` on unknown values.

        8-bit labels (every 8-bit dataset) go through OpenCV lookup tables, about 10x faster than indexing in int64:
        one table maps the values, another flags the unknown ones, counted without a copy.
        """
        if raw.dtype == np.uint8 and cv2.countNonZero(cv2.LUT(raw, self._unknown_u8)) == 0:
            return cv2.LUT(raw, self.lut[:256])
        # The rare path (16-bit labels, or an unknown value to name): bincount, not np.unique, needs no sort.
        values = np.flatnonzero(np.bincount(raw.ravel()))
        bad = values[(values >= len(self.lut)) | ~self.known[np.minimum(values, len(self.lut) - 1)]]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise PparError(
                f"Label {path} contains values {shown} that the {self.name} id map does not define: the file "
                "is not in the expected encoding; check the dataset layout (or the id map)."
            )
        return self.lut[raw]


def id_map_from_lut(name: str, lut: np.ndarray, known_values: range | list[int]) -> IdMap:
    """Build an `IdMap` from a labels.py LUT and the raw values that are legitimate for the source."""
    known = np.zeros(len(lut), dtype=bool)
    known[list(known_values)] = True
    return IdMap(name=name, lut=lut, known=known)


def _trainid_lut() -> np.ndarray:
    lut = np.full(256, labels.IGNORE_INDEX, dtype=np.uint8)
    lut[: labels.NUM_CLASSES] = np.arange(labels.NUM_CLASSES, dtype=np.uint8)
    return lut


# Labels already in trainIds: 0-18 and 255.
TRAINID_MAP = id_map_from_lut("trainId", _trainid_lut(), [*range(labels.NUM_CLASSES), labels.IGNORE_INDEX])
# Cityscapes/GTA5 labelIds: 0-33 are defined; 255 is where some converters write labelId -1 (license plate).
_MAX_LABEL_ID = 33
LABELID_MAP = id_map_from_lut(
    "Cityscapes labelId", labels.LABELID_TO_TRAINID, [*range(_MAX_LABEL_ID + 1), labels.IGNORE_INDEX]
)


def load_id_map_file(path: Path) -> IdMap:
    """Read a JSON id map `{"raw_value": trainId, ...}` (raw 0-65535, trainId 0-18 or 255) -> IdMap."""
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise PparError(f"Id map file {path} does not exist: pass an existing JSON file, trainid or labelid.") from None
    except (OSError, ValueError) as exc:
        raise PparError(f"Id map file {path} is not valid JSON ({_short(exc)}): fix the file.") from None
    if not isinstance(entries, dict) or not entries:
        raise PparError(f'Id map file {path} must be a non-empty JSON object {{"raw_value": trainId}}: fix it.')
    lut = np.full(65536, labels.IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(65536, dtype=bool)
    for key, value in entries.items():
        try:
            raw = int(key)
        except ValueError:
            raw = -1
        valid_value = isinstance(value, int) and (0 <= value < labels.NUM_CLASSES or value == labels.IGNORE_INDEX)
        if not 0 <= raw <= 65535 or not valid_value:
            raise PparError(
                f"Id map file {path} has the entry {key!r}: {value!r}; keys must be raw values 0-65535 and values "
                "trainIds 0-18 or 255: fix the entry."
            )
        lut[raw] = value
        known[raw] = True
    return IdMap(name=f"{path.name}", lut=lut, known=known)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
