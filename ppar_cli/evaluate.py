"""`ppar eval` (a checkpoint on target datasets) and `ppar eval-predictions` (saved prediction PNGs of any method).

The library does the work (`ppar_core.evaluation`); this module parses flags, shows progress bars on stderr, prints
the per-class and summary tables, then writes the report (a JSON file and its per-class CSV). The tables are printed
before anything is written, so a failed write loses no result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import DataRootOption, DeviceOption, ForceOption, JsonOption, console, print_json
from ppar_cli.render import progress_bars
from ppar_core.errors import PparError

HELP = """Evaluate a checkpoint on target datasets: per-class IoU, mIoU per target, the mean over targets.

Defaults come from the checkpoint: its targets (data.targets) and its evaluation protocol (eval); flags override. Mapillary runs with its long side at 2048 unless a scale or long side is given; ACDC (acdc) is one target, its confusion pooled over the four conditions, which are shown as sub-rows; SYNTHIA prints mIoU-16 and mIoU-19.

The report goes beside the checkpoint as eval_<targets>_<protocol>.json (and _per_class.csv), never over the training run's own eval.json; --out names another folder or a .json file. The path is printed.

Example: [bold]ppar eval runs/g2cbm/last.safetensors --targets cityscapes,bdd,mapillary --data-root /data[/bold]
"""  # noqa: E501

PREDICTIONS_HELP = """Evaluate saved prediction PNGs (of ppar or any other method) against a dataset's labels.

Files are matched to samples by name (<name>_trainid.png, <name>_labelid.png or <name>.png, searched recursively); --format says whether they hold trainIds (0-18) or Cityscapes labelIds. The report has the shape of `ppar eval`'s and goes into the predictions folder as eval_<target>_<format>-predictions.json (or where --out says).

Example: [bold]ppar eval-predictions preds/ --target cityscapes --format labelid --data-root /data[/bold]
"""  # noqa: E501


def command(
    checkpoint: Annotated[Path, typer.Argument(help="A ppar checkpoint (.safetensors).", show_default=False)],
    targets: Annotated[
        str | None, typer.Option(help="Targets, comma-separated NAME or NAME=PATH (default: the checkpoint's).")
    ] = None,
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
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Threads decoding images ahead of the model (default: the run's).", show_default=False
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the report, or the report's .json path.")] = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.evaluation.evaluate import evaluate_checkpoint

    _check_out(out, force=force)
    chosen = _split_list(targets)
    if targets is not None and not chosen:
        raise PparError("--targets is empty: name at least one dataset, e.g. --targets cityscapes.")
    changes = {
        "mode": inference,
        "crop_size": crop,
        "stride": stride,
        "scale": scale,
        "long_side": long_side,
        "tta": tta,
        "batch_size": batch_size,
    }
    with progress_bars(enabled=not json_out) as progress:
        report = evaluate_checkpoint(
            checkpoint,
            targets=chosen,
            data_root=data_root,
            split=split,
            mapillary_map=mapillary_map,
            inference=changes,
            device=device,
            max_images=max_images,
            progress=progress,
            workers=workers,
        )
    _finish(report, out=out, default_folder=checkpoint.parent, force=force, json_out=json_out)


def predictions_command(
    folder: Annotated[Path, typer.Argument(help="The folder of prediction PNGs.", show_default=False)],
    target: Annotated[str, typer.Option(help="The dataset they predict: NAME or NAME=PATH.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="What the PNGs hold: trainid or labelid.")] = "trainid",
    data_root: DataRootOption = None,
    split: Annotated[str, typer.Option(help="Split of the dataset.")] = "val",
    mapillary_map: Annotated[str, typer.Option(help="Mapillary 66->19 map: id or name.")] = "id",
    max_images: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N images.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the report, or the report's .json path.")] = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.evaluation.predictions import evaluate_prediction_folder

    _check_out(out, force=force)
    with progress_bars(enabled=not json_out) as progress:
        report = evaluate_prediction_folder(
            folder,
            target=target,
            data_root=data_root,
            split=split,
            mapillary_map=mapillary_map,
            fmt=fmt,
            max_images=max_images,
            progress=progress,
        )
    _finish(report, out=out, default_folder=folder, force=force, json_out=json_out)


def _check_out(out: Path | None, *, force: bool) -> None:
    """An --out the user named is checked before the evaluation starts (the default folder is tried at the end)."""
    from ppar_core.files import check_output_file, check_output_folder

    if out is not None and out.suffix.lower() == ".json":
        check_output_file(out, force=force)
    elif out is not None:
        check_output_folder(out)


def _finish(report: dict[str, Any], *, out: Path | None, default_folder: Path, force: bool, json_out: bool) -> None:
    """Print the report, then write it (and say where): a failed write loses no result, the tables are out."""
    from ppar_core.evaluation.report import report_name, write_eval_report

    if json_out:
        print_json(report)
    else:
        _render(report)
    path = out if out is not None and out.suffix.lower() == ".json" else (out or default_folder) / report_name(report)
    try:
        json_path, csv_path = write_eval_report(path, report)
    except OSError as exc:
        raise PparError(f"Could not write the report to {path} ({exc.strerror}): pass a writable --out.") from None
    if not json_out:
        console.print(f"Wrote {escape(str(json_path))} and {escape(str(csv_path))}")


def _split_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text is not None else None


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
        for key in (k for k in entry if k.startswith("miou_")):
            summary.add_row(f"  mIoU-{key[5:]}", _fmt(entry[key]), "", "", "")
    summary.add_row("[bold]mean[/bold]", f"[bold]{_fmt(report['mean_miou'])}[/bold]", "", "", "")
    for key in (k for k in report if k.startswith("mean_miou_")):
        summary.add_row(f"[bold]mean mIoU-{key[10:]}[/bold]", f"[bold]{_fmt(report[key])}[/bold]", "", "", "")
    console.print(summary)
    if report.get("mean_skipped"):
        console.print(f"Left out of the mean (mIoU undefined): {escape(', '.join(report['mean_skipped']))}")
    protocol = report["protocol"]
    keys = ("mode", "crop_size", "stride", "scale", "long_side", "tta", "split", "mapillary_map", "step", "format")
    shown = ", ".join(f"{k}={protocol[k]}" for k in keys if k in protocol)
    console.print(f"Protocol: {escape(shown)}")
