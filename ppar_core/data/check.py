"""Scanning a dataset: every pair decoded once, sizes and class pixels counted, bad samples listed as problems.

`ppar data check` is a thin wrapper around `check_dataset`. Orphans (files without a partner) are reported but are
not problems: some official downloads (e.g. GTA5) ship a few of them, and pairing by name already leaves them out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ppar_core.labels as labels
from ppar_core.data.base import SegDataset
from ppar_core.errors import PparError
from ppar_core.progress import ProgressFn


@dataclass
class CheckReport:
    """What a scan found. `class_pixels` counts trainIds 0-18 by class name; `ignored_pixels` counts 255."""

    dataset: str
    split: str
    root: str
    pairs: int
    scanned: int
    orphans: list[str]
    image_sizes: dict[str, int]  # "WxH" -> number of images
    class_pixels: dict[str, int]
    ignored_pixels: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (orphans alone do not count)."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict with the keys `ppar data check --json` documents."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "root": self.root,
            "pairs": self.pairs,
            "scanned": self.scanned,
            "orphans": self.orphans,
            "image_sizes": self.image_sizes,
            "class_pixels": self.class_pixels,
            "ignored_pixels": self.ignored_pixels,
            "problems": self.problems,
            "ok": self.ok,
        }


def check_dataset(dataset: SegDataset, *, limit: int | None = None, progress: ProgressFn | None = None) -> CheckReport:
    """Decode every pair of `dataset` (the first `limit` if given) and report what was found.

    Bad samples never stop the scan: each becomes one entry of `problems` (the loader's message, naming the file).
    `progress("check <name>", done, total)` is called after each sample.
    """
    total = len(dataset) if limit is None else min(limit, len(dataset))
    sizes: Counter[str] = Counter()
    counts = np.zeros(256, dtype=np.int64)
    problems: list[str] = []
    for index in range(total):
        try:
            sample = dataset.load(index)
        except PparError as exc:
            problems.append(str(exc))
        else:
            height, width = sample.label.shape
            sizes[f"{height}x{width}"] += 1  # HxW, the order of every size ppar prints
            counts += np.bincount(sample.label.ravel(), minlength=256)
        if progress is not None:
            progress(f"check {dataset.name}", index + 1, total)
    return CheckReport(
        dataset=dataset.name,
        split=dataset.split,
        root=str(dataset.root),
        pairs=len(dataset),
        scanned=total,
        orphans=list(dataset.orphans),
        image_sizes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        class_pixels={name: int(counts[i]) for i, name in enumerate(labels.CLASS_NAMES)},
        ignored_pixels=int(counts[labels.IGNORE_INDEX]),
        problems=problems,
    )
