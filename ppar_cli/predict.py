"""`ppar predict`: segment your own images with a checkpoint and write overlays, colour masks and id maps.

The library does the work (`ppar_core.predict.collect_inputs`, `predict_files`); this module parses flags, shows a
progress bar on stderr and prints the table of classes found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import DeviceOption, ForceOption, JsonOption, console, err_console, print_json
from ppar_cli.render import progress_bars

HELP = """Segment images: files, folders (recursively) or glob patterns.

The model: --checkpoint/-c, else a first argument that is a checkpoint or an exported .onnx file (ppar predict CKPT IMAGES...), else $PPAR_CHECKPOINT, else the newest runs/*/last.safetensors under the working folder; the one used is printed. An .onnx file (`ppar export`) runs under onnxruntime.

Writes <out>/<name>_<format>.png per image and format: overlay (image blended with class colours, legend strip of the classes present below it), color (class colours), trainid (0-18) and labelid (Cityscapes labelIds, the benchmark's submission format); masks have the input's size. Without --out each call writes a new folder runs/predict, runs/predict-2, ...; an --out that already holds outputs of the same names needs --force. Images found in a folder keep their sub-folder path; same names from different folders mirror their folders. Grey, RGBA (composited on black), 16-bit and EXIF-rotated images are handled; an unreadable file is reported and skipped, and the exit code is 1 at the end if any failed.

Example: [bold]ppar predict img.png[/bold]
Example: [bold]ppar predict -c runs/g2cbm/last.safetensors img.png street/ "frames/*.jpg" --out preds/[/bold]
"""  # noqa: E501


def command(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Image files, folders or glob patterns (a checkpoint may come first).", show_default=False),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", "-c", help="The model: a .safetensors checkpoint or an .onnx file.", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: a new runs/predict-N).", show_default=False)
    ] = None,
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: overlay,color,trainid,labelid.")] = (
        "overlay,color,trainid,labelid"
    ),
    alpha: Annotated[float, typer.Option(help="Opacity of the class colours in the overlay, 0-1.")] = 0.5,
    inference: Annotated[
        str | None, typer.Option(help="slide or whole (default: the checkpoint's).", show_default=False)
    ] = None,
    crop: Annotated[int | None, typer.Option(help="Sliding-window size, pixels.", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option(help="Sliding-window step, pixels.", show_default=False)] = None,
    tta: Annotated[str | None, typer.Option(help="none, flip or ms-flip.", show_default=False)] = None,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.errors import PparError
    from ppar_core.labels import CLASS_NAMES
    from ppar_core.predict import (
        Predictor,
        choose_model,
        choose_out,
        collect_inputs,
        existing_outputs,
        parse_formats,
        predict_files,
    )

    chosen = parse_formats(formats)
    model, how, images = choose_model(inputs, checkpoint)
    folder = choose_out(out, images)
    items = collect_inputs(images, exclude=folder)
    clash = existing_outputs(items, folder, chosen)
    if clash and not force:
        raise PparError(
            f"{folder} already holds {len(clash)} output(s) of these images (e.g. {clash[0].name}): pass --force to "
            "replace them, or choose another --out."
        )
    flags = {"mode": inference, "crop_size": crop, "stride": stride, "tta": tta}
    changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if model.suffix.lower() == ".onnx":
        from ppar_core.onnx_predict import OnnxPredictor  # onnxruntime, no torch model: an exported network

        predictor: Any = OnnxPredictor.from_file(model, device=device, **changes)
    else:
        predictor = Predictor.from_checkpoint(model, device=device, **changes)
    if not json_out:
        err_console.print(f"Model: {escape(str(model))} ({how})")
    with progress_bars(enabled=not json_out) as bars:
        summary = predict_files(predictor, items, folder, formats=chosen, alpha=alpha, progress=bars)
    classes: list[dict[str, Any]] = [
        {"class": CLASS_NAMES[k], "pixels": int(summary.class_pixels[k]), "images": int(summary.class_images[k])}
        for k in range(len(CLASS_NAMES))
        if summary.class_images[k] > 0
    ]
    if json_out:
        print_json(
            {
                "model": str(model),
                "out": str(folder),
                "images": summary.done,
                "outputs": {str(p): [str(o) for o in outs] for p, outs in summary.outputs.items()},
                "classes": classes,
                "failed": [{"path": str(p), "error": msg} for p, msg in summary.failed],
            }
        )
    else:
        table = Table(title=f"Classes found in {summary.done} image(s)")
        for name in ("class", "pixels", "images"):
            table.add_column(name, justify="left" if name == "class" else "right")
        for row in classes:
            table.add_row(escape(row["class"]), f"{row['pixels']:,}", str(row["images"]))
        console.print(table)
        console.print(f"Wrote {len(summary.written)} file(s) under {escape(str(folder))}")
    for path, message in summary.failed:
        err_console.print(f"[red]skipped {escape(str(path))}: {escape(message)}[/red]")
    if summary.failed:
        err_console.print(f"[red]{len(summary.failed)} of {len(items)} input(s) failed.[/red]")
        raise typer.Exit(1)
