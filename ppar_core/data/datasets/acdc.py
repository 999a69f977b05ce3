"""ACDC (fog, night, rain, snow): `rgb_anon/<cond>/<split>/<seq>/<name>_rgb_anon.png` +
`gt/<cond>/<split>/<seq>/<name>_gt_labelTrainIds.png` (falling back to `_gt_labelIds.png`).

`acdc` reads all four conditions; `acdc-fog` etc. one. Results are reported per condition and averaged, so a
per-condition dataset is the usual evaluation unit. Test labels are withheld by the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from ppar_core.errors import PparError

CONDITIONS = ("fog", "night", "rain", "snow")
SPLITS = ("train", "val")
LAYOUT = (
    "rgb_anon/<condition>/<split>/<sequence>/<name>_rgb_anon.png and "
    "gt/<condition>/<split>/<sequence>/<name>_gt_labelTrainIds.png (or _gt_labelIds.png)"
)
_IMAGE_SUFFIX = "_rgb_anon"
_TRAINID_SUFFIX = "_gt_labelTrainIds"
_LABELID_SUFFIX = "_gt_labelIds"


def build_acdc(root: Path, *, conditions: Sequence[str] = CONDITIONS, split: str = "train") -> SegDataset:
    """ACDC `conditions` (default all four) of split train or val under `root`."""
    if split == "test":
        raise PparError("ACDC test labels are withheld by the benchmark: use split train or val (or `ppar predict`).")
    check_split(split, SPLITS, "ACDC")
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise PparError(f"Unknown ACDC condition {unknown[0]!r}: use one of {', '.join(CONDITIONS)}.")
    name = "acdc" if tuple(conditions) == CONDITIONS else "acdc-" + "+".join(conditions)
    pairs: list[tuple[Path, Path]] = []
    orphans: list[str] = []
    for condition in conditions:
        require_dirs(root, "ACDC", LAYOUT, f"rgb_anon/{condition}/{split}", f"gt/{condition}/{split}")
        images, dups = index_files(
            root / "rgb_anon" / condition / split, extensions=(".png",), suffixes=(_IMAGE_SUFFIX,), recursive=True
        )
        label_files = index_labels_preferring(
            root / "gt" / condition / split, suffixes=(_TRAINID_SUFFIX, _LABELID_SUFFIX)
        )
        found, lonely = pair_files(images, label_files, root=root, duplicates=dups)
        pairs += found
        orphans += lonely
    require_pairs(pairs, orphans, root=root, dataset=name, layout=LAYOUT, split=split)
    return SegDataset(
        name=name,
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=LABELID_MAP, by_suffix=((_TRAINID_SUFFIX + ".png", TRAINID_MAP),)),
        key_suffixes=(_IMAGE_SUFFIX,),
    )
