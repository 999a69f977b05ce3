"""The dataset registry (a plain dict) and `build_dataset`, which turns `NAME` or `NAME=PATH` into a `SegDataset`.

Roots: `NAME=PATH` uses PATH; otherwise `<data_root>/<folder>`, where `data_root` is the argument or $PPAR_DATA and
`folder` is the registry entry's `folder` (the dataset name, except `acdc-*` which share `acdc`). A root holding a
ppar `manifest.json` is a prepared copy (`ppar data prepare`): it is read by the prepared loader, as dataset NAME.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ppar_core.labels as labels
from ppar_core.data.base import SegDataset
from ppar_core.data.datasets import (
    acdc,
    bdd100k,
    cityscapes,
    folder,
    gta5,
    mapillary,
    prepared,
    synth_folder,
    synthia,
)
from ppar_core.errors import PparError

# The styles `ppar data synth` writes by default; a user's style file adds more (any `synth-<style>` name loads).
SYNTH_BUILTIN_DOMAINS: tuple[str, ...] = ("synth-source", "synth-real", "synth-night", "synth-fog")


@dataclass(frozen=True)
class LoadOptions:
    """What `build_dataset` passes to every builder; each builder reads the fields that concern it."""

    name: str  # the dataset name as asked, e.g. "synth-night"
    split: str = "train"
    mapillary_map: str = "id"  # Mapillary 66->19 map: "id" (RobustNet/HRDA) or "name" (Rein/openseg)
    id_map: str = "trainid"  # `folder` only: "trainid", "labelid" or a JSON file path


@dataclass(frozen=True)
class DatasetInfo:
    """One loader: its name, a one-line description, the layout it expects, how to build it, and the protocol facts
    evaluation and training need about it (labels.md), so that no other module decides by name."""

    name: str
    description: str
    layout: str
    builder: Callable[[Path, LoadOptions], SegDataset]
    splits: str  # the split names it accepts, in words
    folder: str = ""  # sub-folder of the data root when no path is given (default: the name)
    eval_long_side: int | None = None  # evaluated resized to this long side unless a scale is given (Mapillary)
    classes: tuple[int, ...] | None = None  # the trainIds its labels use; None = all 19 (SYNTHIA: 16)
    parts: tuple[str, ...] = ()  # as a target: evaluated on each part, confusion pooled (ACDC: its 4 conditions)


def _acdc(conditions: tuple[str, ...]) -> Callable[[Path, LoadOptions], SegDataset]:
    def build(root: Path, opts: LoadOptions) -> SegDataset:
        return acdc.build_acdc(root, conditions=conditions, split=opts.split)

    return build


def _synth(root: Path, opts: LoadOptions) -> SegDataset:
    return synth_folder.build_synth(root, name=opts.name, split=opts.split)


_FLAT_SPLITS = "train, val, all (the same pairs), or a .txt list of file names"

DATASETS: dict[str, DatasetInfo] = {
    "gta5": DatasetInfo(
        "gta5",
        "GTA5 (Playing for Data): 24,966 synthetic frames, palettised labelIds",
        gta5.LAYOUT,
        lambda root, o: gta5.build_gta5(root, split=o.split),
        _FLAT_SPLITS,
    ),
    "synthia": DatasetInfo(
        "synthia",
        "SYNTHIA-RAND-CITYSCAPES: 9,400 synthetic frames, 16-bit labels",
        synthia.LAYOUT,
        lambda root, o: synthia.build_synthia(root, split=o.split),
        _FLAT_SPLITS,
        classes=labels.SYNTHIA16_TRAIN_IDS,
    ),
    "cityscapes": DatasetInfo(
        "cityscapes",
        "Cityscapes: 2,975 train / 500 val, German cities",
        cityscapes.LAYOUT,
        lambda root, o: cityscapes.build_cityscapes(root, split=o.split),
        "train, val, test",
    ),
    "bdd100k": DatasetInfo(
        "bdd100k",
        "BDD100K semantic segmentation 10K: 7,000 train / 1,000 val, trainId masks",
        bdd100k.LAYOUT,
        lambda root, o: bdd100k.build_bdd100k(root, split=o.split),
        "train, val",
    ),
    "mapillary": DatasetInfo(
        "mapillary",
        "Mapillary Vistas v1.2: 18,000 train / 2,000 val, 66 classes mapped to 19 (--mapillary-map id|name)",
        mapillary.LAYOUT,
        lambda root, o: mapillary.build_mapillary(root, split=o.split, mapillary_map=o.mapillary_map),
        "train (training), val (validation)",
        eval_long_side=2048,
    ),
    "acdc": DatasetInfo(
        "acdc",
        "ACDC, all four adverse conditions (as a target: one pooled score, conditions as sub-rows)",
        acdc.LAYOUT,
        _acdc(acdc.CONDITIONS),
        "train, val",
        "acdc",
        parts=tuple(f"acdc-{c}" for c in acdc.CONDITIONS),
    ),
    **{
        f"acdc-{c}": DatasetInfo(f"acdc-{c}", f"ACDC, {c} only", acdc.LAYOUT, _acdc((c,)), "train, val", "acdc")
        for c in acdc.CONDITIONS
    },
    "folder": DatasetInfo(
        "folder",
        "your own image/label folders (id map: trainid, labelid or a JSON file)",
        folder.LAYOUT,
        lambda root, o: folder.build_folder(root, split=o.split, id_map=o.id_map),
        _FLAT_SPLITS,
    ),
    "synth": DatasetInfo(
        "synth",
        "a synthetic domain written by `ppar data synth` (any synth-<style> name)",
        synth_folder.LAYOUT,
        _synth,
        _FLAT_SPLITS,
    ),
    **{
        name: DatasetInfo(name, f"built-in synthetic domain {name}", synth_folder.LAYOUT, _synth, _FLAT_SPLITS)
        for name in SYNTH_BUILTIN_DOMAINS
    },
}

# The names people write for the datasets (papers, other codebases) -> the registry's name.
ALIASES: dict[str, str] = {
    "bdd": "bdd100k",
    "cs": "cityscapes",
    "city": "cityscapes",
    "gtav": "gta5",
    "gta": "gta5",
    "vistas": "mapillary",
    "syn": "synthia",
}


def canonical_name(name: str) -> str:
    """The registry name of `name` or its alias; PparError with the closest names when it is unknown."""
    text = name.strip()
    key = ALIASES.get(text.lower(), text.lower())
    if key in DATASETS:
        return key
    if text.startswith("synth-") and len(text) > len("synth-"):
        return text  # a user's style name, kept as written
    close = difflib.get_close_matches(key, [*DATASETS, *ALIASES], n=3, cutoff=0.6)
    names = dict.fromkeys(ALIASES.get(c, c) for c in close)  # an alias suggests the dataset it names, once
    hint = f"did you mean {' or '.join(repr(n) for n in names)}? " if close else ""
    raise PparError(
        f"Unknown dataset {name!r}: {hint}Known: {', '.join(DATASETS)} (or synth-<style>, NAME=PATH); "
        "`ppar data list` shows each layout."
    )


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for `name` (or an alias); any `synth-<style>` resolves to the synthetic-folder loader."""
    key = canonical_name(name)
    if key in DATASETS:
        return DATASETS[key]
    return DatasetInfo(key, f"synthetic domain {key}", synth_folder.LAYOUT, _synth, _FLAT_SPLITS)


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """`NAME` or `NAME=PATH` -> (registry name, path or None); aliases (`bdd`, `cs`, ...) resolve here."""
    name, sep, path = spec.partition("=")
    name = name.strip()
    if not name or (sep and not path.strip()):
        raise PparError(f"Dataset argument {spec!r} is malformed: write NAME or NAME=PATH, e.g. gta5=/data/gta5.")
    return canonical_name(name), Path(path.strip()).expanduser() if sep else None


def source_class_table(specs: Sequence[str], num_classes: int) -> np.ndarray | None:
    """(S, K) bool, row s the classes the dataset `specs[s]` labels; None when every one labels the same classes.

    For training on several sources: the loss leaves out, per image, the classes its source never labels (SYNTHIA's
    16 of 19 next to GTA5's 19). None covers one source (SYNTHIA alone keeps its plain 19-way loss) and mixes of
    full-label sources, so those runs are bit-identical to a run without the table.
    """
    table = np.zeros((len(specs), num_classes), dtype=bool)
    for row, spec in zip(table, specs, strict=True):
        classes = dataset_info(parse_spec(spec)[0]).classes
        row[list(classes) if classes is not None else slice(None)] = True
    return None if len(table) == 0 or bool((table == table[0]).all()) else table


def resolve_root(name: str, path: Path | None, data_root: str | Path | None) -> Path:
    """Where dataset `name` lives: `path`, else `<data_root or $PPAR_DATA>/<folder>`."""
    if path is not None:
        return path
    base = data_root if data_root not in (None, "") else os.environ.get("PPAR_DATA")
    if not base:
        raise PparError(
            f"No location for dataset {name!r}: pass {name}=PATH, pass --data-root, or set PPAR_DATA to the folder "
            "holding one sub-folder per dataset."
        )
    return Path(base).expanduser() / (dataset_info(name).folder or name)


def build_dataset(
    spec: str,
    *,
    split: str = "train",
    data_root: str | Path | None = None,
    mapillary_map: str = "id",
    id_map: str = "trainid",
) -> SegDataset:
    """Build the dataset named by `spec` (`NAME` or `NAME=PATH`; NAME may be an alias such as `bdd`).

    `split`: train or val for every dataset (flat datasets return all pairs for both), plus dataset-specific names
    (cityscapes test; all; a `.txt` list for flat datasets). `mapillary_map`: id|name. `id_map` (folder only):
    trainid, labelid or a JSON file path. Raises PparError on an unknown name, a missing root or a wrong layout.
    A root holding a prepared copy of NAME (`ppar data prepare`) is read from the copy (`dataset.prepared` says so).
    """
    name, path = parse_spec(spec)
    info = dataset_info(name)
    root = resolve_root(name, path, data_root)
    manifest = prepared.prepared_manifest(root)
    if manifest is not None:
        return prepared.build_prepared(root, manifest, name=name, split=split, mapillary_map=mapillary_map)
    opts = LoadOptions(name=name, split=split, mapillary_map=mapillary_map, id_map=id_map)
    return info.builder(root, opts)
