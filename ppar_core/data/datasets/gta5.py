"""GTA5 (Playing for Data): `<root>/images/*.png` + `<root>/labels/*.png`, labels palettised Cityscapes labelIds.

The labels are 8-bit palettised PNGs whose palette INDEX is the Cityscapes labelId; they are read by index (never by
colour) and mapped with `labels.LABELID_TO_TRAINID`. GTA5 has no official split: `train`, `val` and `all` return
every pair; a split ending in `.txt` is a list of file names (e.g. the RobustNet training split).
"""

from __future__ import annotations

from pathlib import Path

from ppar_core.data.base import SegDataset
from ppar_core.data.datasets.folder import build_flat
from ppar_core.data.io import LABELID_MAP

LAYOUT = "images/*.png and labels/*.png (palettised labelIds), paired by file name"


def build_gta5(root: Path, *, split: str = "train") -> SegDataset:
    """GTA5 under `root`: every pair for train/val/all, or those named in a `.txt` list file."""
    return build_flat(root, dataset="gta5", split=split, id_map=LABELID_MAP, layout=LAYOUT, palettised=True)
