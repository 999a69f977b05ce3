"""SYNTHIA-RAND-CITYSCAPES: `<root>/RGB/*.png` + `<root>/GT/LABELS/*.png` (16-bit, 3-channel).

The class id is the first (R) channel of the 16-bit PNG, i.e. the last channel of OpenCV's BGR array, mapped with
`labels.SYNTHIA_ID_TO_TRAINID`. Raw ids 0-22 are SYNTHIA's classes (0 void, 13 parking-slot, 14 road-work and
22 lane-marking map to 255); any other value is an unknown id. No official split: every split returns all pairs.
"""

from __future__ import annotations

from pathlib import Path

import ppar_core.labels as labels
from ppar_core.data.base import (
    LabelDecoder,
    SegDataset,
    index_files,
    is_list_split,
    pair_files,
    require_dirs,
    require_pairs,
    select_by_list,
)
from ppar_core.data.io import id_map_from_lut

LAYOUT = "RGB/*.png and GT/LABELS/*.png (16-bit, class id in the R channel), paired by file name"
_NUM_SYNTHIA_IDS = 23  # SYNTHIA-RAND-CITYSCAPES class ids 0-22
SYNTHIA_MAP = id_map_from_lut("SYNTHIA", labels.SYNTHIA_ID_TO_TRAINID, range(_NUM_SYNTHIA_IDS))


def build_synthia(root: Path, *, split: str = "train") -> SegDataset:
    """SYNTHIA under `root`: every pair for train/val/all, or those named in a `.txt` list file."""
    require_dirs(root, "SYNTHIA", LAYOUT, "RGB", "GT/LABELS")
    images, dup_images = index_files(root / "RGB", extensions=(".png",))
    label_files, dup_labels = index_files(root / "GT" / "LABELS", extensions=(".png",))
    pairs, orphans = pair_files(images, label_files, root=root, duplicates=[*dup_images, *dup_labels])
    if is_list_split(split):
        pairs, missing = select_by_list(pairs, Path(split).expanduser())
        orphans += missing
    require_pairs(pairs, orphans, root=root, dataset="SYNTHIA", layout=LAYOUT, split=split)
    return SegDataset(
        name="synthia",
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=SYNTHIA_MAP, synthia16bit=True),
    )
