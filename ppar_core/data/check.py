"""Checking data: a dataset scanned (every pair decoded once, sizes and class pixels counted, bad samples listed as
problems), or a prepared copy verified against its manifest (every file present with its recorded hash).

`ppar data check` is a thin wrapper around `check_dataset` and `check_prepared`. Orphans (files without a partner)
are reported but are not problems: some official downloads (e.g. GTA5) ship a few of them, and pairing by name
already leaves them out.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import ppar_core.labels as labels
from ppar_core.data.base import SegDataset
from ppar_core.data.datasets.prepared import (
    MANIFEST_NAME,
    PARTIAL_NAME,
    manifest_digest,
    prepared_manifest,
    read_manifest,
)
from ppar_core.errors import PparError
from ppar_core.files import file_sha256
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


@dataclass
class PreparedCheckReport:
    """What `check_prepared` found: the copy (origin, split, format), how many files were verified, and problems,
    one sentence each naming the file (empty when every file is present with its recorded length and hash)."""

    root: str
    dataset: str
    split: str
    manifest_sha256: str
    image_format: str
    lossy: bool
    resize: list[int] | None
    samples: int
    files_checked: int
    skipped: list[str]  # source pairs the copy left out as corrupt (named in the manifest): not problems
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (`ppar data check DIR --json`)."""
        return {
            "root": self.root,
            "prepared": True,
            "dataset": self.dataset,
            "split": self.split,
            "manifest_sha256": self.manifest_sha256,
            "image_format": self.image_format,
            "lossy": self.lossy,
            "resize": self.resize,
            "samples": self.samples,
            "files_checked": self.files_checked,
            "skipped": self.skipped,
            "problems": self.problems,
            "ok": self.ok,
        }


def is_prepared_copy(root: Path) -> bool:
    """Whether `root` holds a ppar prepared copy (complete or not): a ppar `manifest.json` or partial manifest."""
    return any(read_manifest(root / name) is not None for name in (MANIFEST_NAME, PARTIAL_NAME))


def check_prepared(
    root: Path, *, name: str | None = None, progress: ProgressFn | None = None, workers: int | None = None
) -> PreparedCheckReport:
    """Verify the prepared copy at `root` against its manifest: its own hash, its counts, and every file present with
    its recorded length and sha256 (read on `workers` threads, default every core; hashing releases the GIL).

    `name`: the dataset the copy is expected to be (PparError if its origin is another). An unfinished copy, or a
    folder without a ppar manifest, is a PparError. `progress("check <root>", done, total)` after each pair.
    """
    manifest = prepared_manifest(root)
    if manifest is None:
        raise PparError(
            f"{root} holds no ppar manifest ({MANIFEST_NAME}): it is not a prepared copy; check a dataset as "
            "NAME or NAME=PATH, or make a copy with `ppar data prepare`."
        )
    try:
        origin, samples, counts = manifest["origin"], list(manifest["samples"]), manifest["counts"]
        skipped = [f"{s['name']}: {s['error']}" for s in manifest["skipped"]]
    except (KeyError, TypeError):
        raise PparError(
            f"{root / MANIFEST_NAME} lacks the fields of a prepared-copy manifest: prepare the dataset again "
            "(ppar data prepare ... --force)."
        ) from None
    if name is not None and name != origin["dataset"] and name not in manifest.get("parts", []):
        raise PparError(f"{root} is a prepared copy of {origin['dataset']}, not of {name}: check it as {root}.")
    problems: list[str] = []
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        problems.append(f"{root / MANIFEST_NAME} does not match its own hash: it was edited after it was written.")
    for key, found in (("samples", len(samples)), ("skipped", len(skipped))):
        if counts.get(key) != found:
            problems.append(f"{root / MANIFEST_NAME} counts {counts.get(key)} {key} but lists {found}.")

    def verify(entry: dict[str, Any]) -> list[str]:
        return [p for kind in ("image", "label") if (p := _verify_file(root, entry, kind))]

    with ThreadPoolExecutor(max_workers=workers or max(1, os.cpu_count() or 1)) as pool:
        for done, found_problems in enumerate(pool.map(verify, samples), start=1):
            problems += found_problems
            if progress is not None:
                progress(f"check {root.name}", done, len(samples))
    return PreparedCheckReport(
        root=str(root),
        dataset=str(origin["dataset"]),
        split=str(origin["split"]),
        manifest_sha256=str(manifest.get("manifest_sha256")),
        image_format=str(manifest["image_format"]),
        lossy=bool(manifest["lossy"]),
        resize=manifest["resize"],
        samples=len(samples),
        files_checked=2 * len(samples),
        skipped=skipped,
        problems=problems,
    )


def _verify_file(root: Path, entry: dict[str, Any], kind: str) -> str | None:
    """One problem sentence for the `kind` ("image"/"label") file of a manifest entry, or None when it is intact."""
    relative = entry[kind]
    path = root / relative
    fix = "delete it and rerun `ppar data prepare` with the same settings to rewrite it"
    if not path.is_file():
        return f"{path} is missing (listed in the manifest): rerun `ppar data prepare` with the same settings."
    size = path.stat().st_size
    if size != entry[f"{kind}_bytes"]:
        return f"{path} has {size} bytes but the manifest records {entry[f'{kind}_bytes']}: {fix}."
    digest = file_sha256(path)
    if digest != entry[f"{kind}_sha256"]:
        return f"{path} has sha256 {digest[:12]}..., the manifest records {entry[f'{kind}_sha256'][:12]}...: {fix}."
    return None
