"""`ppar eval`: evaluate a checkpoint on target datasets, or saved prediction PNGs against one dataset.

The library does the work (`ppar_core.evaluation.report.evaluate_checkpoint`, `ppar_core.evaluation.predictions`); this module parses
flags, shows a progress bar on stderr, prints per-class tables and writes `eval.json` + `eval_per_class.csv`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import DataRootOption, DeviceOption, JsonOption, console, print_json
from ppar_cli.render import progress_bars
from ppar_core.errors import PparError

HELP = """Evaluate a checkpoint on target datasets (per-class IoU, mIoU per target, mean over targets).

Defaults come from the checkpoint: its targets (data.targets) and its evaluation protocol (eval); flags override.
Mapillary runs with its long side at 2048 unless --scale/--long-side is given; ACDC (acdc) is evaluated per
condition and averaged; SYNTHIA prints mIoU-16 and mIoU-19. Writes eval.json and eval_per_class.csv to --out
(default: the checkpoint's folder; with --predictions, the predictions folder).

Example: [bold]ppar eval runs/g2cbm/last.safetensors --targets cityscapes,bdd100k,mapillary --data-root /data[/bold]
Saved predictions: [bold]ppar eval --predictions preds/ --target cityscapes --format labelid[/bold]
"""


def command(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="A ppar checkpoint (.safetensors).", show_default=False)
    ] = None,
    targets: Annotated[str | None, typer.Option(help="Targets, comma-separated NAME or NAME=PATH.")] = None,
    data_root: DataRootOption = None,
    split: Annotated[
        str | None, typer.Option(help="Split to evaluate (default: the checkpoint's, usually val).")
    ] = None,
    inference: Annotated[str | None, typer.Option(help="slide or whole.")] = None,
    crop: Annotated[int | None, typer.Option(help="Sliding-window size, pixels.")] = None,
    stride: Annotated[int | None, typer.Option(help="Sliding-window step, pixels.")] = None,
    scale: Annotated[float | None, typer.Option(help="Resize factor before inference.")] = None,
    long_side: Annotated[int | None, typer.Option(help="Resize so the long side is N pixels.")] = None,
    tta: Annotated[str | None, typer.Option(help="none, flip or ms-flip.")] = None,
    mapillary_map: Annotated[str | None, typer.Option(help="Mapillary 66->19 map: id or name.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass.")] = None,
    max_images: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N images per target.")] = None,
    device: DeviceOption = "auto",
    out: Annotated[Path | None, typer.Option(help="Folder for eval.json and eval_per_class.csv.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Evaluate saved prediction PNGs in this folder.")] = None,
    target: Annotated[str | None, typer.Option(help="With --predictions: the dataset, NAME or NAME=PATH.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="With --predictions: trainid or labelid.")] = "trainid",
    json_out: JsonOption = False,
) -> None:
    from ppar_core.evaluation.report import write_eval_report

    with progress_bars() as progress:
        if predictions is not None:
            from ppar_core.evaluation.predictions import evaluate_prediction_folder

            if checkpoint is not None or target is None:
                raise PparError("With --predictions pass --target DATASET and no checkpoint, e.g. --target cityscapes.")
            report = evaluate_prediction_folder(
                predictions, target=target, data_root=data_root, split=split or "val",
                mapillary_map=mapillary_map or "id", fmt=fmt, max_images=max_images, progress=progress,
            )  # fmt: skip
            folder = out or predictions
        else:
            from ppar_core.evaluation.report import evaluate_checkpoint

            if checkpoint is None:
                raise PparError(
                    "Pass a checkpoint (ppar eval runs/x/last.safetensors) or --predictions DIR --target DS."
                )
            changes = {"mode": inference, "crop_size": crop, "stride": stride, "scale": scale, "long_side": long_side,
                       "tta": tta, "batch_size": batch_size}  # fmt: skip
            report = evaluate_checkpoint(
                checkpoint, targets=_split_list(targets), data_root=data_root, split=split,
                mapillary_map=mapillary_map, inference=changes, device=device, max_images=max_images,
                progress=progress,
            )  # fmt: skip
            folder = out or checkpoint.parent
    json_path, csv_path = write_eval_report(folder, report)
    if json_out:
        print_json(report)
        return
    _render(report)
    console.print(f"Wrote {escape(str(json_path))} and {escape(str(csv_path))}")


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _render(report: dict[str, Any]) -> None:
    from ppar_core.evaluation.report import per_class_table

    header, rows = per_class_table(report)
    table = Table(title="IoU per class (%)")
    for i, name in enumerate(header):
        table.add_column(escape(name), justify="left" if i == 0 else "right")
    for row in rows:
        cells = [c or "-" for c in row]
        table.add_row(*(f"[bold]{c}[/bold]" for c in cells) if row[0] == "mIoU" else cells)
    console.print(table)
    summary = Table(title="Summary")
    for name in ("target", "mIoU", "acc", "mAcc", "images"):
        summary.add_column(name, justify="left" if name == "target" else "right")
    for name, entry in report["targets"].items():
        summary.add_row(
            escape(name), _fmt(entry["miou"]), _fmt(entry["acc"]), _fmt(entry["macc"]), str(entry["images"])
        )
        for cond, sub in entry.get("conditions", {}).items():
            summary.add_row(
                f"  {escape(cond)}", _fmt(sub["miou"]), _fmt(sub["acc"]), _fmt(sub["macc"]), str(sub["images"])
            )
        if "miou_16" in entry:
            summary.add_row("  mIoU-16", _fmt(entry["miou_16"]), "", "", "")
            summary.add_row("  mIoU-19", _fmt(entry["miou_19"]), "", "", "")
    summary.add_row("[bold]mean[/bold]", f"[bold]{_fmt(report['mean_miou'])}[/bold]", "", "", "")
    if "mean_miou_16" in report:
        summary.add_row("[bold]mean mIoU-16[/bold]", f"[bold]{_fmt(report['mean_miou_16'])}[/bold]", "", "", "")
    console.print(summary)
    protocol = report["protocol"]
    shown = ", ".join(
        f"{k}={protocol[k]}" for k in ("mode", "crop_size", "stride", "scale", "long_side", "tta", "split",
                                       "mapillary_map", "step") if k in protocol
    )  # fmt: skip
    console.print(f"Protocol: {escape(shown)}")
