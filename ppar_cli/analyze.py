"""`ppar analyze-weights`: which source pixels did a PPAR run trust, and which did it discount?"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ppar_cli.options import DataRootOption, DeviceOption, JsonOption, console, err_console, print_json
from ppar_cli.render import progress_bars

if TYPE_CHECKING:
    from ppar_core.analysis.report import WeightReport

HELP = """Show the reliability weights of a PPAR run, per class: mean, histogram, share below 0.5 and above 2.

Without --data it reads the statistics training stored in the checkpoint (warm-up steps recorded w = 1). With --data DATASET (or a FOLDER holding images/ and labels/ with trainId PNGs, i.e. --data folder=FOLDER) it computes the weights afresh, fully ramped in, for --num images evenly spread over the split: per-class statistics, the images with the most down-weighted pixels and, with --out, one heat map per image (lowest-weight decile outlined). --out also gets class_histograms.png and class_mean_weights.png (needs matplotlib: pip install 'ppar\\[plots]').

--by-source does that for each of the run's training sources (--num images from each, its training split): which source's pixels the reliability trusted less, one row per source (its mean reliability, comparable across sources, and its weights, normalised per image), then each source's classes.

--json prints {"source", "sources", "classes": {name: {"mean", "hist", "low_fraction", "high_fraction", "pixels"}}, "images"} (and "mean_reliability" with --data); with --compare it prints {"runs": {"A": {"checkpoint", "source", "sources", "classes", "images"}, "B": {...}}} and --out gets sub-folders A/ and B/; with --by-source {"by_source": {SOURCE: {...}}}.

Example: [bold]ppar analyze-weights runs/g2cbm/last.safetensors --data gta5 --num 16 --out weights/[/bold]
Compare: [bold]ppar analyze-weights runs/otp/last.safetensors --compare runs/ratio/last.safetensors[/bold]
Per source: [bold]ppar analyze-weights runs/gta5+synthia/last.safetensors --by-source --num 16[/bold]
"""  # noqa: E501

_SPARK = " ▁▂▃▄▅▆▇█"


def command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="A model checkpoint written by `ppar train` (default: $PPAR_CHECKPOINT, else the newest run).",
            show_default=False,
        ),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="Your own labelled images: a folder with images/ and labels/ (same as --data folder=PATH)."
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Compute weights on this dataset: NAME or NAME=PATH.")] = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "train",
    num: Annotated[int, typer.Option("--num", help="Images to analyse, evenly spread over the split.")] = 8,
    data_root: DataRootOption = None,
    id_map: Annotated[str, typer.Option(help="Label encoding of folder data: trainid, labelid or a JSON file.")] = (
        "trainid"
    ),
    resize: Annotated[str, typer.Option(help="Resize images: train (as the run did), none, or HxW.")] = "train",
    out: Annotated[Path | None, typer.Option(help="Folder for the PNG plots and heat maps.")] = None,
    compare: Annotated[Path | None, typer.Option(help="A second checkpoint to put side by side (B).")] = None,
    by_source: Annotated[
        bool, typer.Option("--by-source", help="Weights afresh on --num images of each training source.")
    ] = False,
    device: DeviceOption = "auto",
    as_json: JsonOption = False,
) -> None:
    from ppar_core.analysis.weights import AnalysisConfig, analyze_by_source, analyze_weights
    from ppar_core.errors import PparError
    from ppar_core.files import check_output_folder
    from ppar_core.loading import find_checkpoint

    if checkpoint is not None and checkpoint.is_dir() and folder is None:
        checkpoint, folder = None, checkpoint  # `ppar analyze-weights FOLDER`: the images, with the newest run
    if folder is not None and data is not None:
        raise PparError(f"Both a FOLDER ({folder}) and --data {data} were given: pass one of them.")
    spec = f"folder={folder}" if folder is not None else data
    if by_source and (spec is not None or compare is not None):
        given = "--compare" if compare is not None else ("a FOLDER" if folder is not None else "--data")
        raise PparError(f"--by-source reads the run's own sources, so {given} cannot go with it: pass one of them.")
    config = AnalysisConfig(
        data=spec,
        split=split,
        num_images=num,
        data_root=str(data_root) if data_root else None,
        id_map=id_map,
        resize=resize,
        device=device,
    ).validate()
    if out is not None:
        check_output_folder(out)
    checkpoint, how = find_checkpoint(checkpoint)
    if how != "given" and not as_json:
        err_console.print(f"Analysing {checkpoint} ({how}).")
    if by_source:
        with progress_bars() as bars:
            per_source = analyze_by_source(checkpoint, config=config, out=out, progress=bars)
        if as_json:
            print_json({"by_source": {name: report.to_dict() for name, report in per_source.items()}})
            return
        first = next(iter(per_source.values()))
        _describe(first, None)
        console.print(_source_table(per_source))
        for name, report in per_source.items():
            console.print(_class_table(report, title=f"Weights per class, source {name}"))
        if out is not None:
            console.print(f"Wrote {sum(len(r.files) for r in per_source.values())} PNG files to {out}.")
        return
    runs = {"A": checkpoint} if compare is None else {"A": checkpoint, "B": compare}
    reports: dict[str, WeightReport] = {}
    outs = {key: out if (out is None or compare is None) else out / key for key in runs}
    for key, path in runs.items():
        with progress_bars(enabled=spec is not None) as bars:
            reports[key] = analyze_weights(path, config=config, out=outs[key], progress=bars)
    if as_json:
        if compare is None:
            print_json(reports["A"].to_dict())
        else:
            print_json({"runs": {k: {"checkpoint": str(r.checkpoint), **r.to_dict()} for k, r in reports.items()}})
        return
    for key, report in reports.items():
        _describe(report, key if compare is not None else None)
    console.print(_class_table(reports["A"]) if compare is None else _compare_table(reports))
    for key, report in reports.items():
        if report.images:
            console.print(_image_table(report, key if compare is not None else None))
        if report.files:
            console.print(f"Wrote {len(report.files)} PNG files to {outs[key]}.")
        if report.plots_note:
            err_console.print(f"[yellow]{report.plots_note}[/yellow]")


def _describe(report: WeightReport, key: str | None) -> None:
    name = f"{key}: {report.checkpoint}" if key else str(report.checkpoint)
    sources = " + ".join(report.sources)
    run = f"trained on {sources}, method {report.method}, reweight {report.reweight}, step {report.step}"
    if report.source == "checkpoint":
        if not report.weights_applied:
            console.print(
                f"{name} ({run}): trained without reweighting, so no weights were applied and its statistics are "
                "empty. Add --data DATASET to see what the OTP reliability would have been."
            )
        elif report.total_pixels == 0:
            console.print(f"{name} ({run}): no weights recorded yet (no training step).")
        else:
            s = report.schedule
            assert s is not None
            console.print(
                f"{name} ({run}): weights applied in training, {report.total_pixels:,} labelled pixels over "
                f"{report.step} steps ({s.warmup} warm-up steps recorded w = 1, {s.ramp} ramp-in, {s.full} full)."
            )
    else:
        what = "the run's own" if report.weights_applied else "what the OTP reliability would have been (none applied)"
        console.print(
            f"{name} ({run}): weights computed afresh on {len(report.images)} images, {what}, mode "
            f"{report.mode}, fully ramped in (ramp = 1), each image normalised on its own."
        )


def _spark(hist: list[int]) -> str:
    top = max(hist) if hist else 0
    if top == 0:
        return ""
    return "".join(_SPARK[0 if c == 0 else max(1, round(c / top * (len(_SPARK) - 1)))] for c in hist)


def _pct(value: float, pixels: int) -> str:
    return f"{100 * value:.1f}" if pixels else "-"


def _mean(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _sorted_names(classes: dict[str, dict[str, Any]]) -> list[str]:
    # Least trusted first; classes never seen go last.
    return sorted(classes, key=lambda n: (classes[n]["mean"] is None, classes[n]["mean"] or 0.0))


def _class_table(report: WeightReport, *, title: str | None = None) -> Table:
    title = title or f"Weights per class ({report.source})"
    table = Table(title=f"{title}; histogram over [0, {report.w_max:g}]")
    for column in ("class", "pixels", "mean", "< 0.5 %", "> 2 %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    table.add_column("histogram")
    for name in _sorted_names(report.classes):
        c = report.classes[name]
        table.add_row(
            name,
            f"{c['pixels']:,}",
            _mean(c["mean"]),
            _pct(c["low_fraction"], c["pixels"]),
            _pct(c["high_fraction"], c["pixels"]),
            _spark(c["hist"]),
        )
    return table


def _source_table(reports: dict[str, WeightReport]) -> Table:
    """One row per training source: mean reliability r (before normalisation, so comparable across sources), mean
    weight w, low and high weight shares, and its three least trusted classes."""
    images = {len(r.images) for r in reports.values()}
    table = Table(title=f"Per training source ({', '.join(map(str, sorted(images)))} images each)")
    table.add_column("source", no_wrap=True)
    for column in ("pixels", "r", "w", "< 0.5 %", "> 2 %"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("least trusted classes")
    table.caption = "r: mean reliability, comparable across sources; w: mean weight (normalised per image)"
    for name, report in reports.items():
        overall, pixels = report.overall(), report.total_pixels
        seen = [n for n in _sorted_names(report.classes) if report.classes[n]["mean"] is not None]
        table.add_row(
            name,
            f"{pixels:,}",
            _mean(report.mean_reliability),
            _mean(overall["mean"]),
            _pct(overall["low_fraction"] or 0.0, pixels),
            _pct(overall["high_fraction"] or 0.0, pixels),
            ", ".join(seen[:3]),
        )
    return table


def _compare_table(reports: dict[str, WeightReport]) -> Table:
    a, b = reports["A"], reports["B"]
    table = Table(title=f"Weights per class: A = {a.checkpoint} ({a.mode}), B = {b.checkpoint} ({b.mode})")
    table.add_column("class")
    for column in ("mean A", "mean B", "B - A", "< 0.5 % A", "< 0.5 % B", "> 2 % A", "> 2 % B"):
        table.add_column(column, justify="right")
    for name in _sorted_names(a.classes):
        ca, cb = a.classes[name], b.classes[name]
        diff = "-" if ca["mean"] is None or cb["mean"] is None else f"{cb['mean'] - ca['mean']:+.3f}"
        table.add_row(
            name,
            _mean(ca["mean"]),
            _mean(cb["mean"]),
            diff,
            _pct(ca["low_fraction"], ca["pixels"]),
            _pct(cb["low_fraction"], cb["pixels"]),
            _pct(ca["high_fraction"], ca["pixels"]),
            _pct(cb["high_fraction"], cb["pixels"]),
        )
    return table


def _image_table(report: WeightReport, key: str | None, *, rows: int = 10) -> Table:
    title = "Images with the most down-weighted pixels" + (f" ({key})" if key else "")
    table = Table(title=title)
    for column in ("image", "mean", "< 0.5 %", "pixels < 0.5"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for item in report.images[:rows]:
        table.add_row(item.name, _mean(item.mean), _pct(item.low_fraction, item.pixels), f"{item.low_pixels:,}")
    return table
