"""Cityscapes: `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` + `gtFine/<split>/<city>/<name>_gtFine_*.png`.

Labels are the official `_gtFine_labelIds.png` (mapped with `labels.LABELID_TO_TRAINID`), or `_gtFine_labelTrainIds.png`
where a user converted them (taken as they are; preferred when both exist). Sample names drop `_leftImg8bit`.
"""

from __future__ import annotations

from pathlib import Path

from ppar_core.data.base import (
    LabelDecoder,
    SegDataset,
    check_split,
    index_files,
    index_labels_preferring,
    pair_files,
    require_dirs,
    require_pairs,
)
from ppar_core.data.io import LABELID_MAP, TRAINID_MAP

SPLITS = ("train", "val", "test")
LAYOUT = (
    "leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/<name>_gtFine_labelIds.png "
    "(or _gtFine_labelTrainIds.png)"
)
_IMAGE_SUFFIX = "_leftImg8bit"
_TRAINID_SUFFIX = "_gtFine_labelTrainIds"
_LABELID_SUFFIX = "_gtFine_labelIds"


def build_cityscapes(root: Path, *, split: str = "train") -> SegDataset:
    """Cityscapes split `split` (train, val or test) under `root`."""
    check_split(split, SPLITS, "Cityscapes")
    require_dirs(root, "Cityscapes", LAYOUT, f"leftImg8bit/{split}", f"gtFine/{split}")
    images, dup_images = index_files(
        root / "leftImg8bit" / split, extensions=(".png",), suffixes=(_IMAGE_SUFFIX,), recursive=True
    )
    label_files = index_labels_preferring(root / "gtFine" / split, suffixes=(_TRAINID_SUFFIX, _LABELID_SUFFIX))
    pairs, orphans = pair_files(images, label_files, root=root, duplicates=dup_images)
    require_pairs(pairs, orphans, root=root, dataset="Cityscapes", layout=LAYOUT, split=split)
    return SegDataset(
        name="cityscapes",
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=LABELID_MAP, by_suffix=((_TRAINID_SUFFIX + ".png", TRAINID_MAP),)),
        key_suffixes=(_IMAGE_SUFFIX,),
    )
