"""Built-in synthetic domains (`synth-<style>`, `synth=PATH`): `<root>/images/*.png` + `<root>/labels/*.png`.

Written by `ppar data synth` (ppar_core.data.synth); labels are already trainIds. There is no official split: every
split name returns all pairs.
"""

from __future__ import annotations

from pathlib import Path

from ppar_core.data.base import SegDataset
from ppar_core.data.datasets.folder import build_flat
from ppar_core.data.io import TRAINID_MAP

LAYOUT = "images/*.png and labels/*.png (trainIds), as written by `ppar data synth`"


def build_synth(root: Path, *, name: str = "synth", split: str = "train") -> SegDataset:
    """A synthetic domain folder under `root`, reported as dataset `name` (e.g. `synth-night`)."""
    return build_flat(root, dataset=name, split=split, id_map=TRAINID_MAP, layout=LAYOUT)
