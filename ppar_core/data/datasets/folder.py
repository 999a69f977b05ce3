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
from ppar_core.errors import PparError
from ppar_core.imageio import IMAGE_EXTENSIONS

LAYOUT = "images/*.{png,jpg} and labels/*.png paired by file stem"
# A flat dataset has no official split: each name returns every pair; a `.txt` list file selects a subset.
FLAT_SPLITS = ("train", "val", "all")


def resolve_id_map(id_map: str) -> IdMap:
    """`trainid`, `labelid` or a JSON file path -> the IdMap it names."""
    if id_map.lower() == "trainid":
        return TRAINID_MAP
    if id_map.lower() == "labelid":
        return LABELID_MAP
    return load_id_map_file(Path(id_map).expanduser())


def build_flat(
    root: Path, *, dataset: str, split: str, id_map: IdMap, layout: str = LAYOUT, palettised: bool = False
) -> SegDataset:
    """A dataset from `<root>/images` + `<root>/labels` (flat, no official split: train, val and all return every
    pair; a split ending in `.txt` is a list file selecting a subset; any other name is refused). `palettised`:
    labels must be palettised PNGs (`LabelDecoder`)."""
    if not is_list_split(split) and split not in FLAT_SPLITS:
        raise PparError(
            f"Unknown {dataset} split {split!r}: use one of {', '.join(FLAT_SPLITS)} (the same pairs) or a .txt "
            "list of file names."
        )
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
        decoder=LabelDecoder(id_map=id_map, palettised=palettised),
    )


def build_folder(root: Path, *, split: str = "all", id_map: str = "trainid") -> SegDataset:
    """User folders `<root>/images`, `<root>/labels`; `id_map` is trainid, labelid or a JSON file path."""
    return build_flat(root, dataset="folder", split=split, id_map=resolve_id_map(id_map))
