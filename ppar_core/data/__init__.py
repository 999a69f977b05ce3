"""Datasets: every loader yields `Sample(image (H,W,3) uint8 RGB, label (H,W) uint8 trainIds, name)`.

`build_dataset("gta5", data_root=...)` or `build_dataset("cityscapes=/data/cs", split="val")`; `DATASETS` lists
the loaders. Transforms live in `ppar_core.data.transforms`, the synthetic generator in `ppar_core.data.synth`.
"""

from __future__ import annotations

from ppar_core.data.base import Sample, SegDataset
from ppar_core.data.registry import DATASETS, DatasetInfo, build_dataset

__all__ = ["DATASETS", "DatasetInfo", "Sample", "SegDataset", "build_dataset"]
