"""Evaluate saved prediction PNGs (from ppar or any other method) against a dataset's labels.

Predictions are matched to samples by name: a file's key is its stem without a format suffix (`_trainid`,
`_labelid`, as `ppar predict` writes them) and without the dataset's own image suffix (e.g. Cityscapes'
`_leftImg8bit`), so `aachen_000000_000019_leftImg8bit_trainid.png`, `aachen_000000_000019_leftImg8bit.png` and
`aachen_000000_000019.png` all match the Cityscapes sample `aachen_000000_000019`. Folders are searched recursively.

The metrics are the same code as model evaluation (`metrics.confusion_matrix`, `metrics_from_confusion`). One
difference is needed for files written by other tools: a labelId prediction may hold ids outside the 19 classes
(e.g. 0 "unlabeled"); such pixels are counted as wrong (an extra "void" prediction column), never dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import ppar_core.labels as labels
from ppar_core.data.base import SegDataset, strip_suffixes
from ppar_core.data.io import read_label_index
from ppar_core.errors import PparError
from ppar_core.evaluation.report import build_eval_report
from ppar_core.evaluation.targets import build_targets
from ppar_core.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from ppar_core.progress import ProgressFn

log = logging.getLogger("ppar.eval")

PREDICTION_FORMATS: tuple[str, ...] = ("trainid", "labelid")
# Suffixes of `ppar predict` outputs that hold ids; colour and overlay images are never evaluated.
_ID_SUFFIXES = {"trainid": "_trainid", "labelid": "_labelid"}
_IMAGE_SUFFIXES = ("_color", "_overlay")


@dataclass(frozen=True)
class PredictionIndex:
    """Prediction files of a folder keyed by sample name; `duplicates` lists files whose key was already taken."""

    files: dict[str, Path]
    duplicates: list[Path]


def index_predictions(folder: Path, *, fmt: str = "trainid", key_suffixes: tuple[str, ...] = ()) -> PredictionIndex:
    """Find prediction PNGs under `folder` (recursively) and key them by sample name.

    A file named with the requested format's suffix (`<name>_trainid.png` for fmt trainid) wins over a plain
    `<name>.png`; files with the other format's suffix, `_color` or `_overlay` are ignored.
    """
    if fmt not in PREDICTION_FORMATS:
        raise PparError(f"Prediction format {fmt!r} is unknown: use one of {', '.join(PREDICTION_FORMATS)}.")
    if not folder.is_dir():
        raise PparError(f"Predictions folder {folder} does not exist or is not a folder: pass the --out of predict.")
    wanted = _ID_SUFFIXES[fmt]
    skipped = [s for f, s in _ID_SUFFIXES.items() if f != fmt] + list(_IMAGE_SUFFIXES)
    preferred: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    duplicates: list[Path] = []
    for path in sorted(folder.rglob("*.png")):
        stem = path.stem
        if any(stem.endswith(s) for s in skipped):
            continue
        target = preferred if stem.endswith(wanted) else plain
        key = strip_suffixes(strip_suffixes(stem, (wanted,)), key_suffixes)
        if key in target:
            duplicates.append(path)
        else:
            target[key] = path
    return PredictionIndex(files={**plain, **preferred}, duplicates=duplicates)


def read_prediction(path: Path, *, fmt: str = "trainid") -> tuple[np.ndarray, int]:
    """Read one prediction PNG -> ((H,W) int64 trainIds with ids outside the 19 classes as 255, how many pixels
    held such an id)."""
    raw = read_label_index(path)
    if fmt == "labelid":
        lut = np.full(65536, labels.IGNORE_INDEX, dtype=np.uint8)
        lut[:256] = labels.LABELID_TO_TRAINID
        ids = lut[raw].astype(np.int64)
        return ids, int((ids == labels.IGNORE_INDEX).sum())
    ids = raw.astype(np.int64)
    outside = ids >= labels.NUM_CLASSES
    ids[outside] = labels.IGNORE_INDEX
    return ids, int((outside & (raw != labels.IGNORE_INDEX)).sum())


def evaluate_predictions(
    folder: Path,
    dataset: SegDataset,
    *,
    fmt: str = "trainid",
    max_images: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "eval",
) -> SegMetrics:
    """Dataset-level metrics (percent) of the prediction PNGs in `folder` against `dataset`'s labels.

    Every sample (the first `max_images` if given) needs a prediction of the label's size; missing ones are one
    PparError listing the first few names and the count. Prediction values that are not trainIds (trainid format:
    19-254; labelid format: ids of no class) count as wrong and are reported in the log with their count.
    """
    index = index_predictions(folder, fmt=fmt, key_suffixes=dataset.key_suffixes)
    total = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    names = [dataset.sample_name(i) for i in range(total)]
    missing = [n for n in names if n not in index.files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PparError(
            f"{len(missing)} of {total} {dataset.name} samples have no {fmt} prediction in {folder} ({shown}): "
            f"predict them (ppar predict ... --format {fmt}) or check --format and the folder."
        )
    k = labels.NUM_CLASSES
    # One extra column, k, counts predictions that are no class at all (see the module docstring).
    cm = torch.zeros(k + 1, k + 1, dtype=torch.int64)
    not_trainids = 0
    for done, (i, name) in enumerate(zip(range(total), names, strict=True), start=1):
        label = dataset.load(i).label
        pred, outside = read_prediction(index.files[name], fmt=fmt)
        not_trainids += outside
        if pred.shape != label.shape:
            raise PparError(
                f"Prediction {index.files[name]} is {pred.shape[0]}x{pred.shape[1]} but the label of {name} is "
                f"{label.shape[0]}x{label.shape[1]} (HxW): predictions must be at the label's resolution."
            )
        pred[pred == labels.IGNORE_INDEX] = k
        cm += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label.astype(np.int64)), k + 1)
        if progress is not None:
            progress(task, done, total)
    if not_trainids and fmt == "trainid":
        log.warning(
            "%d prediction pixels in %s hold values that are not trainIds (19-254); they count as wrong. If the "
            "files hold Cityscapes labelIds, pass --format labelid.",
            not_trainids,
            folder,
        )
    return metrics_from_confusion(cm, images=total, num_classes=k)


def evaluate_prediction_folder(
    folder: str | Path,
    *,
    target: str,
    data_root: str | Path | None = None,
    split: str = "val",
    mapillary_map: str = "id",
    fmt: str = "trainid",
    max_images: int | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Evaluate the prediction PNGs in `folder` against target `target` (`NAME` or `NAME=PATH`) -> the report dict.

    The report has the shape of `ppar eval` (`ppar_core.evaluation.report`); its protocol names the folder and the
    format instead of a checkpoint and has no inference fields (the predictions were made elsewhere).
    """
    folder = Path(folder)
    if fmt not in PREDICTION_FORMATS:
        raise PparError(f"Prediction format {fmt!r} is unknown: use one of {', '.join(PREDICTION_FORMATS)}.")
    targets = build_targets([target], split=split, data_root=data_root, mapillary_map=mapillary_map, protocol=None)
    results = {
        t.name: evaluate_predictions(
            folder, t.dataset, fmt=fmt, max_images=max_images, progress=progress, task=f"eval {t.name}"
        )
        for t in targets
    }
    return build_eval_report(
        targets,
        results,
        inference=None,
        split=split,
        mapillary_map=mapillary_map,
        max_images=max_images,
        extra_protocol={"predictions": str(folder), "format": fmt},
    )
