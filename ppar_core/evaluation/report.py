"""The evaluation report: one builder for training's evaluation, `ppar eval` and saved predictions.

The report is the JSON shape of `ppar eval --json` and of `eval.json`, IoU in percent, NaN written as null:

    {"targets": {name: {"miou", "per_class": {class: iou | null}, "acc", "macc", "images", ...}},
     "mean_miou": float | null,
     "sources": [spec, ...] (the training sources of the evaluated model; absent for saved predictions),
     "protocol": {"checkpoint", "step", "sha256", "split", "mapillary_map", "mode", "crop_size", "stride", "scale",
                  "long_side", "tta", "ms_scales", "batch_size", "size_divisor", "max_images", "per_target": {...},
                  "mean_over": "..."}}

`mean_miou` is the mean over the targets of their mIoU (`mean_over_targets`): a target whose mIoU is undefined is
left out and named in `mean_skipped`. A target with parts (ACDC's `acdc`) counts ONCE: its `miou`, `acc`, `macc` and
`per_class` come from the confusion matrices of its parts summed over all their images ("ACDC all"), `images` is
their sum, `pooled` lists the parts, and `conditions` holds each part's own entry (sub-rows, not in the mean).
Targets whose labels use a subset of the classes (SYNTHIA's 16), and every target of a model trained on such a
source, also get `miou_16` and `miou_19` (and `mean_miou_16` at the top). `protocol.per_target` lists the inference
fields a target ran with that differ from the common protocol (Mapillary's long side of 2048, labels.md); samples
skipped as unreadable (`data.skip_bad`) are listed per target in `skipped`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ppar_core.config import TrainConfig
from ppar_core.data.registry import dataset_info, parse_spec
from ppar_core.evaluation.targets import Target
from ppar_core.files import atomic_write, file_sha256
from ppar_core.labels import CLASS_NAMES
from ppar_core.metrics import SegMetrics, pooled_metrics
from ppar_core.protocol import InferenceConfig

REPORT_FILE = "eval.json"  # the report a training run writes into its folder
MEAN_OVER = (
    "mean_miou is the mean over targets of their mIoU (targets with an undefined mIoU are left out and listed in "
    "mean_skipped); a target with conditions (acdc) counts once, its figures pooled over all its images"
)


def mean_over_targets(mious: Mapping[str, float | None]) -> tuple[float | None, list[str]]:
    """The mean of the targets' mIoU -> (mean or None when none is defined, names of the targets left out).

    The one mean over targets: reports, training's log records and every table use it. None and NaN are undefined.
    """
    defined = {n: float(v) for n, v in mious.items() if v is not None and not math.isnan(float(v))}
    skipped = [n for n in mious if n not in defined]
    return (sum(defined.values()) / len(defined) if defined else None), skipped


def build_eval_report(
    targets: Sequence[Target],
    results: Mapping[str, SegMetrics],
    *,
    inference: InferenceConfig | None,
    split: str,
    mapillary_map: str,
    checkpoint: Path | None = None,
    step: int | None = None,
    sources: Sequence[str] = (),
    max_images: int | None = None,
    extra_protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict (module docstring) of `results` ({target name: metrics}) on `targets`.

    `inference` None leaves the inference fields out (saved predictions). `checkpoint` is hashed (sha256) here.
    `sources`: the specs the model was trained on (recorded as `sources`); when one labels a subset of the classes
    (SYNTHIA's 16), every target reports that subset's mIoU too.
    """
    trained_classes = source_classes(sources) if sources else None
    groups: dict[str, list[Target]] = {}
    for target in targets:
        groups.setdefault(target.group, []).append(target)
    entries: dict[str, Any] = {}
    for group, members in groups.items():
        subset = members[0].classes or trained_classes
        entry = _group_entry(group, members, results)
        if subset is not None:
            entry[f"miou_{len(subset)}"] = _mean_over(entry["per_class"], [CLASS_NAMES[i] for i in subset])
            entry[f"miou_{len(CLASS_NAMES)}"] = _mean_over(entry["per_class"], list(CLASS_NAMES))
        entries[group] = entry
    base = asdict(inference) if inference is not None else {}
    if inference is not None:
        base["ms_scales"] = list(inference.ms_scales)
    per_target = {
        t.name: {k: v for k, v in asdict(t.protocol).items() if k != "ms_scales" and base.get(k) != v}
        for t in targets
        if inference is not None and t.protocol is not None and t.protocol != inference
    }
    mean, mean_skipped = mean_over_targets({name: entry["miou"] for name, entry in entries.items()})
    protocol: dict[str, Any] = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "step": step,
        "sha256": None if checkpoint is None else file_sha256(Path(checkpoint)),
        "split": split,
        "mapillary_map": mapillary_map,
        **base,
        "max_images": max_images,
        "per_target": per_target,
        "mean_over": MEAN_OVER,
        **(extra_protocol or {}),
    }
    report: dict[str, Any] = {"targets": entries, "mean_miou": mean, "protocol": protocol}
    if sources:
        report["sources"] = list(sources)
    if mean_skipped:
        report["mean_skipped"] = mean_skipped
    subsets = {key for entry in entries.values() for key in entry if key.startswith("miou_")}
    for key in sorted(k for k in subsets if k != f"miou_{len(CLASS_NAMES)}"):
        report[f"mean_{key}"] = mean_over_targets({n: e.get(key) for n, e in entries.items() if key in e})[0]
    return report


def source_classes(specs: Sequence[str]) -> tuple[int, ...] | None:
    """The classes a run's sources label, when one of them labels a subset (SYNTHIA's 16): the figures every target
    then reports too (labels.md); None when every source labels all 19."""
    subsets = [info.classes for info in (dataset_info(parse_spec(spec)[0]) for spec in specs) if info.classes]
    return min(subsets, key=len) if subsets else None


def training_report(
    cfg: TrainConfig, targets: Sequence[Target], results: Mapping[str, SegMetrics], *, checkpoint: Path, step: int
) -> dict[str, Any]:
    """The report of a training run's evaluation (the run's own protocol), as `eval.json` holds it."""
    return build_eval_report(
        targets,
        results,
        inference=cfg.eval,
        split=cfg.data.target_split,
        mapillary_map=cfg.data.mapillary_map,
        checkpoint=checkpoint,
        step=step,
        sources=cfg.data.source,
        max_images=cfg.data.eval_max_images,
    )


def _entry(metrics: SegMetrics) -> dict[str, Any]:
    entry = metrics.to_dict(list(CLASS_NAMES))
    if metrics.skipped:
        entry["skipped"] = list(metrics.skipped)
    return entry


def _group_entry(group: str, members: list[Target], results: Mapping[str, SegMetrics]) -> dict[str, Any]:
    if len(members) == 1 and members[0].name == group:
        return _entry(results[group])
    parts = [results[m.name] for m in members]
    entry = _entry(pooled_metrics(parts))
    entry["pooled"] = [m.name for m in members]
    entry["conditions"] = {m.name.removeprefix(f"{group}-"): _entry(results[m.name]) for m in members}
    return entry


def _mean_over(per_class: Mapping[str, float | None], names: Iterable[str]) -> float | None:
    values = [per_class.get(n) for n in names]
    defined = [float(v) for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def per_class_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-class IoU table: (header, rows); one row per class then `mIoU`, one column per target (ACDC
    conditions as `acdc-<condition>` columns after `acdc`); values in percent with 2 decimals, "" when undefined."""
    columns: list[tuple[str, Mapping[str, Any]]] = []
    for name, entry in report["targets"].items():
        columns.append((name, entry))
        columns += [(f"{name}-{c}", e) for c, e in entry.get("conditions", {}).items()]
    header = ["class", *(name for name, _ in columns)]
    rows = [[cls, *(_cell(e["per_class"].get(cls)) for _, e in columns)] for cls in CLASS_NAMES]
    rows.append(["mIoU", *(_cell(e["miou"]) for _, e in columns)])
    return header, rows


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def report_name(report: Mapping[str, Any]) -> str:
    """A file name saying what a report measured: `eval_<targets>_<protocol>.json`, e.g.
    `eval_cityscapes+bdd100k_slide512s341.json`, `eval_acdc_whole_flip_val_first40.json`,
    `eval_cityscapes_labelid-predictions.json`; never `eval.json`, the name of a training run's own report."""
    protocol = report["protocol"]
    parts = ["eval", "+".join(report["targets"]) or "none"]
    if "format" in protocol:
        parts.append(f"{protocol['format']}-predictions")
    else:
        mode = protocol["mode"]
        parts.append(f"slide{protocol['crop_size']}s{protocol['stride']}" if mode == "slide" else mode)
        if protocol["long_side"] is not None:
            parts.append(f"long{protocol['long_side']}")
        elif protocol["scale"] != 1.0:
            parts.append(f"x{protocol['scale']:g}")
        if protocol["tta"] != "none":
            parts.append(protocol["tta"])
    if protocol["split"] != "val":
        parts.append(Path(protocol["split"]).stem)
    if protocol.get("max_images") is not None:
        parts.append(f"first{protocol['max_images']}")
    return "_".join(parts) + ".json"


def per_class_path(json_path: Path) -> Path:
    """The per-class CSV written beside a report: `eval.json` -> `eval_per_class.csv`."""
    return json_path.with_name(f"{json_path.stem}_per_class.csv")


def write_eval_report(json_path: str | Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write the report as `json_path` and its per-class table beside it, each atomically -> both paths."""
    json_path = Path(json_path)
    csv_path = per_class_path(json_path)
    text = json.dumps(report, indent=2) + "\n"
    header, rows = per_class_table(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write(csv_path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    return json_path, csv_path
