"""`ppar data`: list the dataset loaders, check a dataset on disk, prepare a fast copy, write the synthetic domains.

The library (numpy, PIL, OpenCV) is imported inside the command bodies so that `ppar --help` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import DataRootOption, ForceOption, JsonOption, console, print_json, report_interrupt
from ppar_cli.render import progress_bars
from ppar_core.errors import PparError

if TYPE_CHECKING:
    from ppar_core.data.check import CheckReport, PreparedCheckReport

app = typer.Typer(
    help="Datasets: list the loaders, check or prepare a dataset, write synthetic domains.\n\n"
    "Example: [bold]ppar data list[/bold], [bold]ppar data check cityscapes --data-root /data --split val[/bold]",
    no_args_is_help=True,
)


@app.command("list")
def list_datasets(
    name: Annotated[
        str | None, typer.Argument(help="One dataset (or alias): show its full layout.", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """List the datasets ppar reads; with NAME, one dataset's layout, splits, folder and protocol facts.

    Example: [bold]ppar data list[/bold], then [bold]ppar data list cityscapes[/bold]
    """
    from ppar_core.data.registry import ALIASES, DATASETS, dataset_info

    infos = [dataset_info(name)] if name is not None else list(DATASETS.values())
    rows: list[dict[str, Any]] = [
        {
            "name": i.name,
            "aliases": [alias for alias, target in ALIASES.items() if target == i.name],
            "description": i.description,
            "layout": i.layout,
            "splits": i.splits,
            "folder": i.folder or i.name,
            "eval_long_side": i.eval_long_side,
            "classes": None if i.classes is None else list(i.classes),
            "parts": list(i.parts),
        }
        for i in infos
    ]
    if json_out:
        print_json({"datasets": rows})
        return
    if name is None:
        table = Table(title="Datasets: NAME or NAME=PATH (default root <data-root>/<folder>)", box=box.SIMPLE_HEAD)
        table.add_column("name", no_wrap=True)
        table.add_column("what")
        for row in rows:
            aliases = f" ({', '.join(row['aliases'])})" if row["aliases"] else ""
            table.add_row(escape(row["name"] + aliases), escape(row["description"]))
        console.print(table)
        console.print("`ppar data list NAME` shows one dataset's layout.")
        return
    row = rows[0]
    for key in ("name", "description", "layout", "splits", "folder"):
        console.print(f"[bold]{key}[/bold]: {escape(str(row[key]))}")
    if row["aliases"]:
        console.print(f"[bold]aliases[/bold]: {escape(', '.join(row['aliases']))}")
    if row["eval_long_side"]:
        console.print(f"[bold]evaluated at[/bold]: long side {row['eval_long_side']} unless a scale is given")
    if row["classes"]:
        console.print(
            f"[bold]labels[/bold]: {len(row['classes'])} of the 19 classes (reports add mIoU-{len(row['classes'])})"
        )
    if row["parts"]:
        console.print(f"[bold]as a target[/bold]: one score pooled over {escape(', '.join(row['parts']))}")


@app.command("check")
def check(
    dataset: Annotated[str, typer.Argument(help="NAME or NAME=PATH, e.g. gta5 or cityscapes=/data/cityscapes.")],
    root: Annotated[Path | None, typer.Option("--root", help="Dataset root (same as NAME=PATH).")] = None,
    data_root: DataRootOption = None,
    split: Annotated[str, typer.Option("--split", help="train, val, or a dataset-specific split.")] = "train",
    mapillary_map: Annotated[str, typer.Option("--mapillary-map", help="Mapillary 66->19 map: id or name.")] = "id",
    id_map: Annotated[
        str, typer.Option("--id-map", help="folder only: trainid, labelid or a JSON file {raw: trainId}.")
    ] = "trainid",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Scan only the first N pairs.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Scan a dataset: pairs, orphans, image sizes, pixels per class, and problems (bad files); or verify a prepared copy.

    A prepared copy (a DIR holding a ppar manifest.json, given as DIR or NAME=DIR) is verified against its manifest instead: the manifest's own hash, its counts, and every file present with its recorded length and sha256.

    Exit code 1 when a problem was found (or the root is wrong), 0 otherwise; orphans alone are not problems.

    Example: [bold]ppar data check cityscapes --data-root /data --split val[/bold]
    Example: [bold]ppar data check /data/gta5-720p[/bold]
    """  # noqa: E501
    from ppar_core.data.check import PreparedCheckReport, check_dataset, check_prepared
    from ppar_core.data.registry import build_dataset

    if root is not None:
        if "=" in dataset:
            raise PparError(f"Dataset {dataset!r} already names a path: drop --root or the =PATH part.")
        dataset = f"{dataset}={root}"
    copy = _prepared_copy(dataset, data_root)
    report: CheckReport | PreparedCheckReport
    if copy is not None:  # a prepared copy: every file against its manifest
        with progress_bars() as bars:
            report = check_prepared(copy[1], name=copy[0], progress=bars)
    else:
        ds = build_dataset(dataset, split=split, data_root=data_root, mapillary_map=mapillary_map, id_map=id_map)
        with progress_bars() as bars:
            report = check_dataset(ds, limit=limit, progress=bars)
    if json_out:
        print_json(report.to_json())
    elif isinstance(report, PreparedCheckReport):
        _render_prepared(report)
    else:
        _render_report(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command("prepare")
def prepare(
    dataset: Annotated[str, typer.Argument(help="NAME or NAME=PATH, e.g. gta5 or cityscapes=/data/cityscapes.")],
    out: Annotated[Path, typer.Option("--out", help="Folder of the copy; an unfinished copy is continued.")],
    split: Annotated[str, typer.Option("--split", help="train, val, or a dataset-specific split.")] = "train",
    resize: Annotated[
        str, typer.Option("--resize", help="HxW, none (keep the size), or preset:NAME (that preset's augment resize).")
    ] = "preset:gta5-vit-b16",
    image_format: Annotated[str, typer.Option("--format", help="png (lossless) or jpeg (lossy).")] = "png",
    quality: Annotated[
        int | None,
        typer.Option(
            "--quality", min=1, max=100, help="JPEG quality, --format jpeg only (default 95).", show_default=False
        ),
    ] = None,
    png_compression: Annotated[
        int | None,
        typer.Option(
            "--png-compression",
            min=0,
            max=9,
            help="PNG zlib level, --format png only: 0 (default) decodes fastest, 9 is smallest.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes (default: every usable core).", show_default=False)
    ] = None,
    data_root: DataRootOption = None,
    mapillary_map: Annotated[str, typer.Option("--mapillary-map", help="Mapillary 66->19 map: id or name.")] = "id",
    id_map: Annotated[
        str, typer.Option("--id-map", help="folder only: trainid, labelid or a JSON file {raw: trainId}.")
    ] = "trainid",
    force: Annotated[bool, typer.Option("--force", help="Start afresh in a non-empty --out (other settings).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write a prepared copy of a dataset, made once so that training decodes it fast; use it as NAME=DIR.

    The copy holds the images resized as the training augment's first step does (default: the gta5-vit-b16 preset's 720x1280), the labels already in trainIds (uint8 PNG), and a manifest.json with a hash per file. Use it wherever a dataset is accepted, as NAME=DIR (--source gta5=DIR): samples from a PNG copy are bit-identical to those from the original.

    Runs on every core. Interrupted (Ctrl-C, kill), the same command continues where it stopped. A corrupt source pair is skipped and named in the manifest. JPEG (--format jpeg) is about 6x smaller on disk but lossy: the manifest and every run that uses it say so. Prepare evaluation targets with --resize none, so that they are scored at their own resolution.

    Example: [bold]ppar data prepare gta5 --data-root /data --out /data/gta5-720p[/bold]
    Example: [bold]ppar data prepare cityscapes --split val --resize none --out /data/cs-val[/bold]
    """  # noqa: E501
    from ppar_core.data.prepare import prepare_dataset

    size = parse_resize(resize)
    ignored = {"png": ("--quality", quality), "jpeg": ("--png-compression", png_compression)}.get(image_format.lower())
    if ignored is not None and ignored[1] is not None:
        raise PparError(f"{ignored[0]} does not apply to --format {image_format.lower()}: drop it, or change --format.")
    formats = {"jpeg_quality": quality, "png_compression": png_compression}
    began = time.perf_counter()
    counts = [0, 0]  # pairs done and in all, as the progress last said
    interrupted = False

    def progress(task: str, done: int, total: int) -> None:
        counts[:] = [done, total]
        bars(task, done, total)

    with progress_bars() as bars:
        try:
            result = prepare_dataset(
                dataset,
                out,
                split=split,
                resize=size,
                image_format=image_format.lower(),
                **{name: value for name, value in formats.items() if value is not None},
                data_root=data_root,
                mapillary_map=mapillary_map,
                id_map=id_map,
                workers=workers,
                force=force,
                progress=progress,
            )
        except KeyboardInterrupt:  # said below, once the bars are closed and cannot draw over it
            interrupted = True
    if interrupted:
        report_interrupt(
            f"Interrupted with {counts[0]} of {counts[1]} pairs in {out}: run the same command again to continue "
            "where it stopped."
        )
        raise typer.Exit(130)
    seconds = time.perf_counter() - began
    manifest = result.manifest
    summary: dict[str, Any] = {
        "out": str(out),
        "manifest": str(result.path),
        "manifest_sha256": manifest["manifest_sha256"],
        **{key: manifest[key] for key in ("origin", "resize", "image_format", "jpeg_quality", "png_compression")},
        **{key: manifest[key] for key in ("lossy", "counts", "bytes", "skipped")},
        "written": result.written,
        "reused": result.reused,
        "seconds": round(seconds, 3),
    }
    if json_out:
        print_json(summary)
        return
    _render_prepared_summary(summary)


def parse_resize(text: str) -> tuple[int, int] | None:
    """`--resize`: 'HxW' -> (H, W); 'none' -> None; 'preset:NAME' -> that training preset's augment resize."""
    from ppar_core.config import TRAIN_PRESETS, parse_hxw

    value = text.strip()
    if value.lower() == "none":
        return None
    if value.lower().startswith("preset:"):
        preset = value.split(":", 1)[1].strip()
        if preset not in TRAIN_PRESETS:
            raise PparError(
                f"--resize {text!r} names no training preset: use preset:{' or preset:'.join(TRAIN_PRESETS)}, HxW or "
                "none."
            )
        return TRAIN_PRESETS[preset].data.augment.resize
    size = parse_hxw(value)
    if size is None:
        raise PparError(
            f"--resize {text!r} is not HxW, none or preset:NAME: write e.g. --resize 720x1280 (height x width)."
        )
    return size


def _prepared_copy(dataset: str, data_root: Path | None) -> tuple[str | None, Path] | None:
    """(expected dataset name or None, folder) when the `check` argument names a prepared copy, else None.

    A bare argument is a folder when it looks like a path or is no dataset name; NAME and NAME=PATH resolve as
    everywhere, and their root is a copy when it holds a ppar manifest.
    """
    from ppar_core.data.check import is_prepared_copy
    from ppar_core.data.registry import canonical_name, parse_spec, resolve_root

    if "=" not in dataset:
        folder = Path(dataset).expanduser()
        try:
            canonical_name(dataset)
            a_name = not any(c in dataset for c in "/\\~.")
        except PparError:
            a_name = False
        if not a_name:
            if is_prepared_copy(folder):
                return None, folder
            if folder.is_dir():
                raise PparError(
                    f"{folder} holds no ppar manifest.json, so it is not a prepared copy: check a dataset folder as "
                    f"NAME=PATH (e.g. gta5={folder}), or make a copy with `ppar data prepare`."
                )
            return None  # not a folder: the registry says why (an unknown name, with the closest ones)
    name, path = parse_spec(dataset)
    root = resolve_root(name, path, data_root)
    return (name, root) if is_prepared_copy(root) else None


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder; one sub-folder per domain is written.")],
    domains: Annotated[
        str | None, typer.Option("--domains", help="Comma-separated domains (default: the four built-in ones).")
    ] = None,
    num: Annotated[int, typer.Option("--num", min=1, help="Images per domain.")] = 100,
    size: Annotated[str, typer.Option("--size", help="Image size HxW.")] = "256x512",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same scenes).")] = 0,
    style_file: Annotated[
        Path | None, typer.Option("--style-file", help="JSON file of extra styles; its domains are added.")
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="Write one domain as a real dataset stores it instead: gta5, cityscapes, bdd100k or acdc.",
            show_default=False,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="With --layout: the split folder to write.")] = "val",
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Write the built-in synthetic domains (images/*.png, labels/*.png in trainIds), readable as synth-<style>. A domain already in --out is replaced completely with --force (never a mix of old and new images).

    With --layout the scenes of one domain (default synth-source) are written in that dataset's own layout and label encoding, so the real-data workflow can be tried without the data: `ppar train --source gta5=DIR`. With --force an earlier write's synth_* files in --out are deleted first (other files stay).

    Example: [bold]ppar data synth --out data --num 200 --domains synth-source,synth-night[/bold]
    Example: [bold]ppar data synth --out data/gta5 --layout gta5 --num 100[/bold]
    """  # noqa: E501
    from ppar_core.data.synth import BUILTIN_STYLES, DEFAULT_DOMAINS, load_style_file, write_domains
    from ppar_core.files import check_output_folder

    extra = load_style_file(style_file) if style_file is not None else {}
    chosen = [d.strip() for d in domains.split(",") if d.strip()] if domains else [*DEFAULT_DOMAINS, *extra]
    shape = parse_size(size)
    check_output_folder(out)
    if layout is not None:
        _synth_in_layout(
            layout,
            out,
            domain=domains or "synth-source",
            num=num,
            size=shape,
            seed=seed,
            split=split,
            force=force,
            json_out=json_out,
        )
        return
    with progress_bars() as bars:
        folders = write_domains(
            out,
            domains=chosen,
            num=num,
            size=shape,
            seed=seed,
            styles={**BUILTIN_STYLES, **extra},
            progress=bars,
            replace=force,
        )
    if json_out:
        print_json({"out": str(out), "domains": {k: str(v) for k, v in folders.items()}, "num": num, "seed": seed})
        return
    for domain, folder in folders.items():
        console.print(f"[green]{escape(domain)}[/green]: {num} images in {escape(str(folder))}")
    console.print(f"Check one with: ppar data check {escape(next(iter(folders), 'synth-source'))} --data-root {out}")


def _synth_in_layout(
    layout: str,
    out: Path,
    *,
    domain: str,
    num: int,
    size: tuple[int, int],
    seed: int,
    split: str,
    force: bool,
    json_out: bool,
) -> None:
    from ppar_core.data.synth.layouts import write_in_layout

    if out.exists() and any(out.iterdir()) and not force:
        raise PparError(f"{out} is not empty: pass --force to write the {layout} layout into it, or another --out.")
    with progress_bars() as bars:
        write_in_layout(
            layout, out, domain=domain, num=num, size=size, seed=seed, split=split, replace=force, progress=bars
        )
    if json_out:
        print_json({"out": str(out), "layout": layout, "domain": domain, "num": num, "seed": seed})
        return
    console.print(f"{num} images of {escape(domain)} written as {layout} in {escape(str(out))}")
    console.print(
        f"Use it as a dataset: --source {layout}={escape(str(out))} (or ppar data check {layout}={escape(str(out))})"
    )


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512) (H, W); PparError on anything else."""
    from ppar_core.config import parse_hxw

    size = parse_hxw(text)
    if size is None:
        raise PparError(f"Size {text!r} is not HxW with positive integers: write e.g. --size 256x512.")
    return size


def _render_report(report: CheckReport) -> None:
    console.print(
        f"[bold]{escape(report.dataset)}[/bold] ({escape(report.split)}) at {escape(report.root)}: "
        f"{report.pairs} pairs, {len(report.orphans)} orphans, scanned {report.scanned}"
    )
    sizes = ", ".join(f"{s} ({n})" for s, n in list(report.image_sizes.items())[:6]) or "none"
    console.print(f"image sizes (HxW): {escape(sizes)}")
    total = sum(report.class_pixels.values()) + report.ignored_pixels
    table = Table(title="pixels per class (trainIds)")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share", justify="right")
    for name, count in [*report.class_pixels.items(), ("(ignored, 255)", report.ignored_pixels)]:
        table.add_row(name, f"{count:,}", f"{100 * count / total:.2f}%" if total else "-")
    console.print(table)
    for orphan in report.orphans[:10]:
        console.print(f"[yellow]orphan[/yellow] {escape(orphan)}")
    if len(report.orphans) > 10:
        console.print(f"[yellow]... and {len(report.orphans) - 10} more orphans (--json lists them all)[/yellow]")
    for problem in report.problems[:20]:
        console.print(f"[red]problem[/red] {escape(problem)}")
    if len(report.problems) > 20:
        console.print(f"[red]... and {len(report.problems) - 20} more problems (--json lists them all)[/red]")
    console.print("[green]no problems found[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]")


def _render_prepared_summary(summary: dict[str, Any]) -> None:
    origin, counts = summary["origin"], summary["counts"]
    size = "original size" if summary["resize"] is None else "x".join(str(v) for v in summary["resize"])
    kind = f"jpeg q{summary['jpeg_quality']} (lossy)" if summary["lossy"] else "png (lossless)"
    console.print(
        f"[bold]{escape(origin['dataset'])}[/bold] ({escape(origin['split'])}) -> {escape(summary['out'])}: "
        f"{counts['samples']} pairs at {size}, {kind}, {_size_text(summary['bytes'])}; {summary['written']} "
        f"written, {summary['reused']} kept from an earlier run, {counts['skipped']} skipped, in "
        f"{summary['seconds']:.1f} s"
    )
    for item in summary["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {escape(item['name'])}: {escape(item['error'])}")
    if summary["lossy"]:
        console.print(
            "[yellow]JPEG is lossy: samples from this copy are close to, not equal to, the original's; runs that use "
            "it record that.[/yellow]"
        )
    console.print(f"manifest {escape(summary['manifest'])} (sha256 {summary['manifest_sha256']})")
    console.print(
        f"Use it as a dataset: {escape(origin['dataset'])}={escape(summary['out'])} (verify it: ppar data check "
        f"{escape(summary['out'])})"
    )


def _render_prepared(report: PreparedCheckReport) -> None:
    size = "original size" if report.resize is None else "x".join(str(v) for v in report.resize)
    kind = f"{report.image_format} ({'lossy' if report.lossy else 'lossless'})"
    console.print(
        f"prepared copy of [bold]{escape(report.dataset)}[/bold] ({escape(report.split)}) at {escape(report.root)}: "
        f"{report.samples} pairs at {size}, {kind}, {report.files_checked} files checked, manifest sha256 "
        f"{report.manifest_sha256}"
    )
    for item in report.skipped[:10]:
        console.print(f"[yellow]skipped when prepared[/yellow] {escape(item)}")
    for problem in report.problems[:20]:
        console.print(f"[red]problem[/red] {escape(problem)}")
    if len(report.problems) > 20:
        console.print(f"[red]... and {len(report.problems) - 20} more problems (--json lists them all)[/red]")
    console.print("[green]no problems found[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]")


def _size_text(num_bytes: int) -> str:
    """A byte count for people: '812 KiB', '64.2 GiB'."""
    value, unit = float(num_bytes), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.0f} {unit}" if unit in ("bytes", "KiB") else f"{value:.1f} {unit}"
