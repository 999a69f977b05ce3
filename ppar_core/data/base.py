"""The dataset every loader returns: image/label pairs on disk, decoded on access into trainId samples.

A loader module only finds files (the layout of its dataset) and chooses how labels are decoded; `SegDataset` does
the rest: decoding and size checks. It imports no torch, yet is a valid map-style dataset for
`torch.utils.data.DataLoader` (it is picklable, so DataLoader workers can receive it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppar_core.data.io import IdMap, read_image, read_label_index, read_synthia_label
from ppar_core.errors import PparError


@dataclass(frozen=True)
class Sample:
    """One decoded pair: `image` (H,W,3) uint8 RGB, `label` (H,W) uint8 trainIds (0-18, 255 ignore), `name`."""

    image: np.ndarray
    label: np.ndarray
    name: str


@dataclass(frozen=True, eq=False)
class LabelDecoder:
    """Reads one label file and maps it to trainIds.

    `id_map` applies to every file, except files whose name ends with a suffix in `by_suffix` (used where one
    dataset mixes encodings, e.g. Cityscapes `_labelTrainIds.png` next to `_labelIds.png`). `synthia16bit` selects
    the 16-bit, 3-channel SYNTHIA reader instead of the single-channel reader; `palettised` accepts palettised PNGs
    only (GTA5).
    """

    id_map: IdMap
    by_suffix: tuple[tuple[str, IdMap], ...] = ()
    synthia16bit: bool = False
    palettised: bool = False

    def __call__(self, path: Path) -> np.ndarray:
        """Label file -> (H,W) uint8 trainIds; PparError naming the file if it cannot be used."""
        raw = read_synthia_label(path) if self.synthia16bit else read_label_index(path, palettised=self.palettised)
        id_map = next((m for suffix, m in self.by_suffix if path.name.endswith(suffix)), self.id_map)
        return id_map.apply(raw, path=path)


@dataclass(eq=False)
class SegDataset:
    """A map-style segmentation dataset: `len(ds)`, `ds[i] -> Sample`.

    Pure: a bad sample (unreadable image or label, sizes that differ, unknown label values) raises `PparError` naming
    the file. What to do about it is the caller's choice: the training sampler substitutes the next good sample and
    counts the bad one, evaluation skips and counts it (`data.skip_bad`).
    """

    name: str
    split: str
    root: Path
    pairs: list[tuple[Path, Path]]
    decoder: LabelDecoder
    orphans: list[str] = field(default_factory=list)
    key_suffixes: tuple[str, ...] = ()
    # Set on a prepared copy (`ppar data prepare`) only: what runs record about it, JSON-ready (root, manifest_sha256,
    # origin, split, resize, image_format, jpeg_quality, lossy); None for a dataset read from its original layout.
    prepared: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_name(self, index: int) -> str:
        """The name of pair `index`: the image file stem without the dataset's suffix (e.g. `_leftImg8bit`)."""
        return strip_suffixes(self.pairs[index][0].stem, self.key_suffixes)

    def load(self, index: int) -> Sample:
        """Decode pair `index` -> Sample; `PparError` naming the file on a bad sample."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.decoder(label_path)
        if label.shape != image.shape[:2]:
            raise PparError(
                f"Label {label_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path.name} is "
                f"{image.shape[0]}x{image.shape[1]} (HxW): the pair does not match; re-extract it or set "
                "data.skip_bad."
            )
        return Sample(image=image, label=label, name=self.sample_name(index))

    def __getitem__(self, index: int) -> Sample:
        n = len(self.pairs)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return self.load(index % n)


def strip_suffixes(stem: str, suffixes: Iterable[str]) -> str:
    """`stem` without the first of `suffixes` it ends with (the pairing key of a file)."""
    for suffix in suffixes:
        if suffix and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def index_files(
    folder: Path, *, extensions: tuple[str, ...], suffixes: tuple[str, ...] = (), recursive: bool = False
) -> tuple[dict[str, Path], list[Path]]:
    """Files of `folder` keyed by name -> ({key: path}, duplicates).

    The key is the file stem with the first matching suffix removed (e.g. `aachen_000000_000019_leftImg8bit` ->
    `aachen_000000_000019`). Where `suffixes` is given, files ending with none of them are ignored. Two files with
    one key (e.g. `a.png` and `a.jpg`) keep the first in sorted order; the others are returned as duplicates.
    """
    files = folder.rglob("*") if recursive else folder.iterdir()
    found: dict[str, Path] = {}
    duplicates: list[Path] = []
    for path in sorted(files):
        if path.suffix.lower() not in extensions or not path.is_file():
            continue
        if suffixes and not any(path.stem.endswith(s) for s in suffixes):
            continue
        key = strip_suffixes(path.stem, suffixes)
        if key in found:
            duplicates.append(path)
        else:
            found[key] = path
    return found, duplicates


def pair_files(
    images: dict[str, Path], label_files: dict[str, Path], *, root: Path, duplicates: Iterable[Path] = ()
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair image and label files by key -> (pairs sorted by key, orphans as paths relative to `root`)."""
    pairs = [(images[k], label_files[k]) for k in sorted(images.keys() & label_files.keys())]
    lonely = [images[k] for k in images.keys() - label_files.keys()]
    lonely += [label_files[k] for k in label_files.keys() - images.keys()]
    lonely += list(duplicates)
    return pairs, sorted(_relative(p, root) for p in lonely)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def describe_folder(root: Path, *, limit: int = 8) -> str:
    """A short account of what `root` holds, for wrong-root messages: "a/, b/, c.png and 4 more" or why not."""
    if not root.exists():
        return "the folder does not exist"
    if not root.is_dir():
        return "it is a file, not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return "the folder is empty"
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def require_dirs(root: Path, dataset: str, layout: str, *relative: str) -> None:
    """Fail with the expected layout and what was found unless every `root/<relative>` folder exists."""
    if not root.is_dir():
        raise PparError(
            f"{root} is not a {dataset} root: {describe_folder(root)}; expected a folder holding {layout}. Pass the "
            "right path (NAME=PATH or --data-root)."
        )
    missing = [r for r in relative if not (root / r).is_dir()]
    if missing:
        raise PparError(
            f"{root} is not a {dataset} root: expected {layout}, but {missing[0]}/ is missing (found: "
            f"{describe_folder(root)}); pass the folder that holds this layout."
        )


def require_pairs(
    pairs: list[tuple[Path, Path]], orphans: list[str], *, root: Path, dataset: str, layout: str, split: str
) -> None:
    """Fail clearly when a layout check passed but no image/label pair was found."""
    if pairs:
        return
    detail = f"{len(orphans)} unpaired files, e.g. {', '.join(orphans[:3])}" if orphans else "no files"
    raise PparError(
        f"No image/label pairs for {dataset} split {split!r} under {root} ({detail}): expected {layout}; check "
        "the root, the split and the file names."
    )


def select_by_list(
    pairs: list[tuple[Path, Path]], list_file: Path, *, key_suffixes: tuple[str, ...] = ()
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Keep the pairs whose image is named in `list_file` (one file name or stem per line, `#` comments).

    Used for fixed training subsets such as the RobustNet GTA5 split. Returns (kept pairs in list order, listed names
    that have no pair, each reported as an orphan).
    """
    try:
        lines = list_file.read_text().splitlines()
    except OSError as exc:
        raise PparError(
            f"Split list {list_file} cannot be read ({exc.strerror}): pass an existing text file."
        ) from None
    by_key = {strip_suffixes(img.stem, key_suffixes): (img, lab) for img, lab in pairs}
    kept: list[tuple[Path, Path]] = []
    missing: list[str] = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        key = strip_suffixes(Path(Path(entry).name).stem if "." in Path(entry).name else entry, key_suffixes)
        if key in by_key:
            kept.append(by_key[key])
        else:
            missing.append(f"{entry} (listed in {list_file.name}, no pair found)")
    return kept, missing


def is_list_split(split: str) -> bool:
    """True when `split` names a list file (a path ending in .txt) rather than a split name."""
    return split.lower().endswith(".txt")


def index_labels_preferring(folder: Path, *, suffixes: tuple[str, ...], recursive: bool = True) -> dict[str, Path]:
    """Label files of `folder` keyed by name, where a key has files with several `suffixes` the earlier suffix wins.

    E.g. suffixes ("_gtFine_labelTrainIds", "_gtFine_labelIds") takes a user's converted trainId file where present
    and the official labelId file otherwise; the file not chosen is not an orphan.
    """
    chosen: dict[str, Path] = {}
    for suffix in reversed(suffixes):
        found, _ = index_files(folder, extensions=(".png",), suffixes=(suffix,), recursive=recursive)
        chosen.update(found)
    return chosen


def check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    """PparError naming the allowed split names unless `split` is one of them."""
    if split not in allowed:
        raise PparError(f"Unknown {dataset} split {split!r}: use one of {', '.join(allowed)}.")


def spread_indices(total: int, num: int) -> list[int]:
    """`num` indices evenly spaced over `range(total)` (all of them when total <= num), first and last included.

    Spread rather than the first `num`: consecutive frames of one driving sequence would say little about a split.
    """
    if total <= num:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, num)})
