"""User image/label folders (`folder`): `<root>/images/*` and `<root>/labels/*.png`, paired by file stem.

The label encoding is chosen with `id_map`: `trainid` (labels already in the 19-class trainIds, the default),
`labelid` (Cityscapes labelIds) or the path of a JSON file `{"raw_value": trainId}` for any other encoding.
"""

from __future__ import annotations

from pathlib import Path

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
from ppar_core.data.io import LABELID_MAP, TRAINID_MAP, IdMap, load_id_map_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LAYOUT = "images/*.{png,jpg} and labels/*.png paired by file stem"
ID_MAPS = ("trainid", "labelid")


def resolve_id_map(id_map: str) -> IdMap:
    """`trainid`, `labelid` or a JSON file path -> the IdMap it names."""
    if id_map.lower() == "trainid":
        return TRAINID_MAP
    if id_map.lower() == "labelid":
        return LABELID_MAP
    return load_id_map_file(Path(id_map).expanduser())


def build_flat(
    root: Path, *, dataset: str, split: str, skip_bad: bool, id_map: IdMap, layout: str = LAYOUT
) -> SegDataset:
    """A dataset from `<root>/images` + `<root>/labels` (flat, no official split: every split name returns all
    pairs; a split ending in `.txt` is a list file selecting a subset)."""
    require_dirs(root, dataset, layout, "images", "labels")
    images, dup_images = index_files(root / "images", extensions=IMAGE_EXTENSIONS)
    label_files, dup_labels = index_files(root / "labels", extensions=(".png",))
    pairs, orphans = pair_files(images, label_files, root=root, duplicates=[*dup_images, *dup_labels])
    if is_list_split(split):
        pairs, missing = select_by_list(pairs, Path(split).expanduser())
        orphans += missing
    require_pairs(pairs, orphans, root=root, dataset=dataset, layout=layout, split=split)
    return SegDataset(
        name=dataset,
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=id_map),
        skip_bad=skip_bad,
    )


def build_folder(root: Path, *, split: str = "all", skip_bad: bool = False, id_map: str = "trainid") -> SegDataset:
    """User folders `<root>/images`, `<root>/labels`; `id_map` is trainid, labelid or a JSON file path."""
    return build_flat(root, dataset="folder", split=split, skip_bad=skip_bad, id_map=resolve_id_map(id_map))
