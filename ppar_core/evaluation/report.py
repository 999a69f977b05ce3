"""Evaluating a checkpoint on target datasets, and the evaluation report (`eval.json`, `eval_per_class.csv`).

The report is the JSON shape of `ppar eval --json` (issue 5), IoU in percent, NaN written as null:

    {"targets": {name: {"miou", "per_class": {class: iou | null}, "acc", "macc", "images", ...}},
     "mean_miou": float | null,
     "protocol": {"checkpoint", "step", "sha256", "split", "mapillary_map", "mode", "crop_size", "stride", "scale",
                  "long_side", "tta", "ms_scales", "batch_size", "size_divisor", "max_images", "per_target": {...}}}

Extra keys appear only where the protocol needs them: SYNTHIA (a target named `synthia`, or any target of a model
trained on SYNTHIA) adds `miou_16` and `miou_19` to the target (and `mean_miou_16` at the top); ACDC (`acdc`, all
conditions) is evaluated per condition: its `miou`, `acc`, `macc` and `per_class` are means over the conditions,
`images` their sum, and `conditions` holds each condition's own entry. `protocol.per_target` lists the inference
fields a target ran with that differ from the common protocol (Mapillary's long side of 2048, labels.md).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppar_core.inference import InferenceConfig
from ppar_core.files import atomic_write, file_sha256
from ppar_core.labels import CLASS_NAMES, SYNTHIA16_TRAIN_IDS
from ppar_core.metrics import SegMetrics

if TYPE_CHECKING:
    from ppar_core.config import TrainConfig
    from ppar_core.data import SegDataset

REPORT_FILE = "eval.json"
PER_CLASS_FILE = "eval_per_class.csv"
MAPILLARY_LONG_SIDE = 2048  # labels.md: Mapillary is resized so its long side is 2048 unless told otherwise

# A target's result: one SegMetrics, or one per condition (ACDC) keyed by condition name.
TargetResult = SegMetrics | Mapping[str, SegMetrics]
ProgressFn = Callable[[str, int, int], None]


def target_inference(name: str, base: InferenceConfig, *, scale_given: bool) -> InferenceConfig:
    """The inference protocol for target `name`: Mapillary gets long side 2048 unless a scale or long side was given."""
    if name == "mapillary" and not scale_given:
        return replace(base, long_side=MAPILLARY_LONG_SIDE)
    return base


def build_target_datasets(
    spec: str, *, split: str, data_root: str | Path | None, mapillary_map: str
) -> SegDataset | dict[str, SegDataset]:
    """Datasets of one target spec (`NAME` or `NAME=PATH`): ACDC `acdc` gives one dataset per condition."""
    from ppar_core.data import build_dataset
    from ppar_core.data.datasets.acdc import CONDITIONS
    from ppar_core.data.registry import parse_spec

    name, path = parse_spec(spec)
    if name == "acdc":
        suffix = f"={path}" if path is not None else ""
        return {
            c: build_dataset(f"acdc-{c}{suffix}", split=split, data_root=data_root, mapillary_map=mapillary_map)
            for c in CONDITIONS
        }
    return build_dataset(spec, split=split, data_root=data_root, mapillary_map=mapillary_map)


def evaluate_checkpoint(
    path: str | Path,
    *,
    targets: list[str] | None = None,
    data_root: str | Path | None = None,
    split: str | None = None,
    mapillary_map: str | None = None,
    inference: Mapping[str, Any] | None = None,
    device: str = "auto",
    max_images: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on `targets` (default: its config's `data.targets`) -> the report dict.

    `inference` replaces fields of the checkpoint's `eval` InferenceConfig (mode, crop_size, stride, scale,
    long_side, tta, batch_size). `split` / `mapillary_map` default to the checkpoint's data config. Every target's
    dataset is built (and its layout checked) before the first image is evaluated. `progress(target, done, total)`.
    """
    from ppar_core.data.registry import parse_spec
    from ppar_core.evaluation.evaluate import evaluate_dataset
    from ppar_core.predict import load_segmentor
    from ppar_core.runtime import resolve_device

    dev = resolve_device(device)
    model, cfg, checkpoint = load_segmentor(path, device=dev)
    changes = {k: v for k, v in (inference or {}).items() if v is not None}
    base = replace(cfg.eval, **changes).validate()
    split = split or cfg.data.target_split
    mapillary_map = mapillary_map or cfg.data.mapillary_map
    specs = list(targets) if targets else list(cfg.data.targets)
    datasets = {
        parse_spec(s)[0]: build_target_datasets(s, split=split, data_root=data_root or cfg.data.data_root,
                                                mapillary_map=mapillary_map)
        for s in specs
    }  # fmt: skip
    scale_given = "scale" in changes or "long_side" in changes
    protocols = {name: target_inference(name, base, scale_given=scale_given) for name in datasets}

    results: dict[str, TargetResult] = {}
    for name, ds in datasets.items():
        parts = ds if isinstance(ds, dict) else {name: ds}
        scored: dict[str, SegMetrics] = {}
        for label, dataset in parts.items():
            shown = label if label == name else f"{name}-{label}"
            scored[label] = evaluate_dataset(
                model.infer, dataset, protocols[name], num_classes=model.num_classes, device=dev, max_images=max_images,
                progress=None if progress is None else _named(progress, shown),
            )  # fmt: skip
        results[name] = scored if isinstance(ds, dict) else scored[name]
    trained_on_synthia = parse_spec(cfg.data.source)[0] == "synthia"
    return build_eval_report(
        results,
        inference=base,
        split=split,
        mapillary_map=mapillary_map,
        checkpoint=Path(path),
        step=checkpoint.step,
        synthia=trained_on_synthia,
        per_target={n: p for n, p in protocols.items() if p != base},
        max_images=max_images,
    )


def _named(progress: ProgressFn, name: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress(name, done, total)

    return report


def build_eval_report(
    results: Mapping[str, TargetResult],
    *,
    inference: InferenceConfig | None,
    split: str,
    mapillary_map: str,
    checkpoint: Path | None = None,
    step: int | None = None,
    synthia: bool = False,
    per_target: Mapping[str, InferenceConfig] | None = None,
    max_images: int | None = None,
    extra_protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict (module docstring) of per-target `results`.

    `inference` None leaves the inference fields out (saved predictions). `checkpoint` is hashed (sha256) here;
    `synthia` adds the 16-class figures to every target (a target named `synthia` always gets them).
    `per_target` maps target -> the InferenceConfig it actually ran with.
    """
    base = asdict(inference) if inference is not None else {}
    if inference is not None:
        base["ms_scales"] = list(inference.ms_scales)
    targets: dict[str, Any] = {}
    for name, result in results.items():
        entry = _target_entry(result)
        if synthia or name == "synthia":
            entry["miou_16"] = _mean_over(entry["per_class"], [CLASS_NAMES[i] for i in SYNTHIA16_TRAIN_IDS])
            entry["miou_19"] = _mean_over(entry["per_class"], list(CLASS_NAMES))
        targets[name] = entry
    protocol: dict[str, Any] = {
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "step": step,
        "sha256": None if checkpoint is None else file_sha256(Path(checkpoint)),
        "split": split,
        "mapillary_map": mapillary_map,
        **base,
        "max_images": max_images,
        "per_target": {
            name: {k: v for k, v in asdict(cfg).items() if k != "ms_scales" and base.get(k) != v}
            for name, cfg in (per_target or {}).items()
        },
        **(extra_protocol or {}),
    }
    report: dict[str, Any] = {
        "targets": targets,
        "mean_miou": _finite_mean([t["miou"] for t in targets.values()]),
        "protocol": protocol,
    }
    if synthia or any("miou_16" in t for t in targets.values()):
        report["mean_miou_16"] = _finite_mean([t.get("miou_16") for t in targets.values()])
    return report


def training_eval_report(
    cfg: TrainConfig,
    results: Mapping[str, TargetResult],
    *,
    checkpoint: Path,
    step: int,
    per_target: Mapping[str, InferenceConfig] | None = None,
) -> dict[str, Any]:
    """The report of a training run's final evaluation, for `eval.json`; `per_target` as in `build_eval_report`."""
    from ppar_core.data.registry import parse_spec

    return build_eval_report(
        results,
        inference=cfg.eval,
        split=cfg.data.target_split,
        mapillary_map=cfg.data.mapillary_map,
        checkpoint=checkpoint,
        step=step,
        synthia=parse_spec(cfg.data.source)[0] == "synthia",
        per_target=per_target,
        max_images=cfg.data.eval_max_images,
    )


def _target_entry(result: TargetResult) -> dict[str, Any]:
    if isinstance(result, SegMetrics):
        return result.to_dict(list(CLASS_NAMES))
    conditions = {c: m.to_dict(list(CLASS_NAMES)) for c, m in result.items()}
    entries = list(conditions.values())
    return {
        "miou": _finite_mean([e["miou"] for e in entries]),
        "per_class": {c: _finite_mean([e["per_class"].get(c) for e in entries]) for c in entries[0]["per_class"]},
        "acc": _finite_mean([e["acc"] for e in entries]),
        "macc": _finite_mean([e["macc"] for e in entries]),
        "images": sum(int(e["images"]) for e in entries),
        "conditions": conditions,
    }


def _finite_mean(values: list[float | None]) -> float | None:
    defined = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(defined) / len(defined) if defined else None


def _mean_over(per_class: Mapping[str, float | None], names: list[str]) -> float | None:
    return _finite_mean([per_class.get(n) for n in names])


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


def write_eval_report(out_dir: str | Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `eval.json` and `eval_per_class.csv` into `out_dir` atomically -> their paths."""
    out = Path(out_dir)
    json_path, csv_path = out / REPORT_FILE, out / PER_CLASS_FILE
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    header, rows = per_class_table(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(csv_path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))
    return json_path, csv_path
