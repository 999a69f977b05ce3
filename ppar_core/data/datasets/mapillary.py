"""Mapillary Vistas v1.2: `<split>/images/*.jpg` + `<split>/v1.2/labels/*.png` (or `<split>/labels`), with
`config_v1.2.json` at the root. Splits: train (`training`) and val (`validation`).

Labels are 8-bit palettised PNGs whose palette index is the class (0-65), mapped to trainIds by one of the two
maps in use (`id`: RobustNet/HRDA, the default; `name`: Rein/openseg), see `labels.mapillary_lut`. The loader reads
`config_v1.2.json` and checks that the classes it maps carry the names it expects, so a v2.0 config or a relabelled
copy fails at once instead of training on wrong classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import ppar_core.labels as labels
from ppar_core.data.base import (
    LabelDecoder,
    SegDataset,
    describe_folder,
    index_files,
    pair_files,
    require_dirs,
    require_pairs,
)
from ppar_core.data.io import id_map_from_lut
from ppar_core.errors import PparError

SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
CONFIG_NAME = "config_v1.2.json"
LAYOUT = f"{CONFIG_NAME}, <training|validation>/images/*.jpg and <training|validation>/v1.2/labels/*.png"


def build_mapillary(root: Path, *, split: str = "train", mapillary_map: str = "id") -> SegDataset:
    """Mapillary Vistas v1.2 split train or val under `root`, mapped to trainIds with the `id` or `name` map."""
    if split not in SPLIT_FOLDERS:
        raise PparError(f"Unknown Mapillary split {split!r}: use one of train, val.")
    lut = labels.mapillary_lut(mapillary_map)
    folder = SPLIT_FOLDERS[split]
    check_config(root)
    require_dirs(root, "Mapillary Vistas", LAYOUT, f"{folder}/images")
    label_dir = root / folder / "v1.2" / "labels"
    if not label_dir.is_dir():
        label_dir = root / folder / "labels"  # layout of the older v1.x releases
    require_dirs(root, "Mapillary Vistas", LAYOUT, str(label_dir.relative_to(root)))
    images, dup_images = index_files(root / folder / "images", extensions=(".jpg", ".jpeg", ".png"))
    label_files, dup_labels = index_files(label_dir, extensions=(".png",))
    pairs, orphans = pair_files(images, label_files, root=root, duplicates=[*dup_images, *dup_labels])
    require_pairs(pairs, orphans, root=root, dataset="Mapillary Vistas", layout=LAYOUT, split=split)
    id_map = id_map_from_lut(f"Mapillary v1.2 ({mapillary_map})", lut, range(len(labels.MAPILLARY_V12_NAMES)))
    return SegDataset(
        name="mapillary",
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=id_map),
    )


def check_config(root: Path) -> None:
    """Verify `<root>/config_v1.2.json` names the 66 v1.2 classes as `labels.MAPILLARY_V12_NAMES` does."""
    path = root / CONFIG_NAME
    if not path.is_file():
        raise PparError(
            f"{root} is not a Mapillary Vistas v1.2 root: {CONFIG_NAME} is missing (found: {describe_folder(root)}); "
            f"expected {LAYOUT}."
        )
    try:
        entries = json.loads(path.read_text())["labels"]
        names = [str(entry["readable"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError):
        raise PparError(
            f"{path} is not a Mapillary config (a JSON object whose `labels` entries carry `readable` names): "
            "use the config_v1.2.json shipped with Vistas v1.2."
        ) from None
    expected = labels.MAPILLARY_V12_NAMES
    if len(names) != len(expected):
        raise PparError(
            f"{path} defines {len(names)} classes, but Mapillary Vistas v1.2 has {len(expected)}: use the v1.2 "
            "labels and config (v2.0 is not supported)."
        )
    for class_id in sorted(labels.MAPILLARY_TO_TRAINID_PAIRS):
        if names[class_id] != expected[class_id]:
            raise PparError(
                f"{path} names class {class_id} {names[class_id]!r}, but the v1.2 mapping expects "
                f"{expected[class_id]!r}: use the config_v1.2.json and labels of Mapillary Vistas v1.2."
            )
