"""Synthetic scenes written in the layout and label encoding of a real dataset (GTA5, Cityscapes, BDD100K, ACDC).

For trying the real-data workflow without the data (`ppar data synth --layout gta5`), for the tests of the real
loaders end to end, and for benchmarks that need GTA5-sized frames as GTA5 stores them:

- gta5: `images/<name>.png`, `labels/<name>.png` 8-bit palettised, palette index = Cityscapes labelId;
- cityscapes: `leftImg8bit/<split>/synth/<name>_leftImg8bit.png`, `gtFine/<split>/synth/<name>_gtFine_labelIds.png`;
- bdd100k: `images/10k/<split>/<name>.jpg` (quality 95), `labels/sem_seg/masks/<split>/<name>.png` (trainIds);
- acdc: `rgb_anon/<condition>/<split>/synth/<name>_rgb_anon.png` and
  `gt/<condition>/<split>/synth/<name>_gt_labelTrainIds.png`, the samples dealt over the four conditions in turn.

Ignored pixels (trainId 255) become labelId 0 ("unlabeled") in the labelId encodings, which every loader maps back
to 255.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ppar_core.data.synth.generate import make_sample
from ppar_core.errors import PparError
from ppar_core.files import atomic_write
from ppar_core.labels import IGNORE_INDEX, TRAINID_TO_LABELID
from ppar_core.progress import ProgressFn

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
# A fixed palette whose colours are not the indices: a loader that read colours instead of indices would fail.
_PALETTE = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8).ravel().tolist()


def _label_ids(train_ids: np.ndarray) -> np.ndarray:
    ids = TRAINID_TO_LABELID[train_ids]
    ids[train_ids == IGNORE_INDEX] = 0
    return ids


def _save(path: Path, picture: Image.Image, **options: object) -> None:
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    atomic_write(path, lambda tmp: picture.save(tmp, format=fmt, **options))


def _gta5(root: Path, name: str, index: int, image: np.ndarray, labels: np.ndarray, split: str) -> None:
    _save(root / "images" / f"{name}.png", Image.fromarray(image))
    palettised = Image.fromarray(_label_ids(labels))
    palettised.putpalette(_PALETTE)
    _save(root / "labels" / f"{name}.png", palettised)


def _cityscapes(root: Path, name: str, index: int, image: np.ndarray, labels: np.ndarray, split: str) -> None:
    _save(root / "leftImg8bit" / split / "synth" / f"{name}_leftImg8bit.png", Image.fromarray(image))
    _save(root / "gtFine" / split / "synth" / f"{name}_gtFine_labelIds.png", Image.fromarray(_label_ids(labels)))


def _bdd100k(root: Path, name: str, index: int, image: np.ndarray, labels: np.ndarray, split: str) -> None:
    _save(root / "images" / "10k" / split / f"{name}.jpg", Image.fromarray(image), quality=95)
    _save(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", Image.fromarray(labels))


def _acdc(root: Path, name: str, index: int, image: np.ndarray, labels: np.ndarray, split: str) -> None:
    condition = ACDC_CONDITIONS[index % len(ACDC_CONDITIONS)]
    _save(root / "rgb_anon" / condition / split / "synth" / f"{name}_rgb_anon.png", Image.fromarray(image))
    _save(root / "gt" / condition / split / "synth" / f"{name}_gt_labelTrainIds.png", Image.fromarray(labels))


Writer = Callable[[Path, str, int, np.ndarray, np.ndarray, str], None]
_OWN_NAME = re.compile(r"synth_[0-9]{5}[_.]")  # the files the writers above name, and no others
LAYOUT_WRITERS: dict[str, Writer] = {"gta5": _gta5, "cityscapes": _cityscapes, "bdd100k": _bdd100k, "acdc": _acdc}


def write_in_layout(
    layout: str,
    root: str | Path,
    *,
    domain: str = "synth-source",
    num: int = 8,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    split: str = "val",
    replace: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write `num` scenes of synthetic `domain` under `root` as dataset `layout` stores them -> `root`.

    size is (H, W); `split` names the split folder of the layouts that have one (gta5 has none). The scenes are
    `make_sample(domain, i, size=size, seed=seed)`, named `synth_<i:05d>`. `replace` first deletes every file named
    `synth_<5 digits>...` under `root` (an earlier write's, in any layout or split), so the folder never mixes two
    writes; other files stay.
    """
    if layout not in LAYOUT_WRITERS:
        raise PparError(f"Unknown layout {layout!r}: use one of {', '.join(LAYOUT_WRITERS)}.")
    root = Path(root)
    if replace and root.is_dir():
        for path in root.rglob("synth_*"):
            if path.is_file() and _OWN_NAME.match(path.name):
                path.unlink()
    for index in range(num):
        image, labels = make_sample(domain, index, size=size, seed=seed)
        LAYOUT_WRITERS[layout](root, f"synth_{index:05d}", index, image, labels, split)
        if progress is not None:
            progress(f"synth {layout}", index + 1, num)
    return root
