"""`ppar prototypes`: build the class prototypes file (text, optionally visual) and show what one holds.

torch, open_clip and the library are imported inside the command bodies so that `ppar --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import DataRootOption, DeviceOption, ForceOption, JsonOption, console, print_json
from ppar_cli.render import progress_bars

if TYPE_CHECKING:
    from ppar_core.prototypes import Prototypes

app = typer.Typer(
    help="Class prototypes: build them with CLIP, inspect a prototypes file.\n\n"
    "Example: [bold]ppar prototypes build --model vit-b16 --out runs/protos.safetensors[/bold]",
    no_args_is_help=True,
)


def _summary(protos: Prototypes) -> dict[str, Any]:
    """JSON-ready view of a prototypes file: classes, dims, metadata, and each class's nearest other class."""
    from ppar_core.prototypes import nearest_classes

    names = protos.class_names
    nearest = {
        name: [other, None if cosine is None else round(cosine, 4)]
        for name, (other, cosine) in nearest_classes(protos).items()
    }
    counts = protos.visual_counts.tolist() if protos.visual_counts is not None else None
    return {
        "classes": names,
        "dim": protos.dim,
        "num_classes": protos.num_classes,
        "model": protos.meta.get("model"),
        "pretrained": protos.meta.get("pretrained"),
        "label_space": protos.meta.get("label_space"),
        "templates": protos.meta.get("templates"),
        "format_version": protos.meta.get("format_version"),
        "norms": {name: round(float(n), 6) for name, n in zip(names, protos.otp.norm(dim=-1).tolist(), strict=True)},
        "nearest": nearest,
        "has_visual": protos.visual is not None,
        "visual_counts": dict(zip(names, counts, strict=True)) if counts is not None else None,
        "data": protos.meta.get("data", []),
    }


@app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="The .safetensors file to write.")],
    model: Annotated[str, typer.Option("--model", help="Backbone preset (see `ppar models list`).")] = "vit-b16",
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            help="open_clip tag (openai, laion2b_s34b_b88k, ...), a local weights file, or 'none' for random "
            "weights. Default: the preset's (openai; none for tiny).",
            show_default=False,
        ),
    ] = None,
    classes: Annotated[
        str, typer.Option("--classes", help="Label space: cityscapes (19) or synthia16.")
    ] = "cityscapes",
    templates: Annotated[
        str,
        typer.Option("--templates", help="street (8), imagenet (80), or a text file: one template with {} per line."),
    ] = "street",
    synonyms: Annotated[
        bool, typer.Option(help="Also prompt with class synonyms (e.g. pedestrian for person).")
    ] = True,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", help="Also compute visual prototypes on this source dataset (NAME or NAME=PATH); repeat."
        ),
    ] = None,
    data_root: DataRootOption = None,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="Images per --data dataset.")] = 100,
    device: DeviceOption = "auto",
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Build the Original Text Prototypes with CLIP's text encoder (and visual prototypes with --data).

    Example: [bold]ppar prototypes build --model vit-b16 --out runs/protos.safetensors[/bold]

    Offline, with visual prototypes:
    [bold]ppar prototypes build --model tiny --data synth-source=data/synth --out p.safetensors[/bold]
    """
    from ppar_core.clip.presets import get_preset
    from ppar_core.files import check_output_file
    from ppar_core.loading import describe_file
    from ppar_core.prototypes import build_prototypes, save_prototypes

    check_output_file(out, force=force, kind="a prototypes file", describe=describe_file)
    weights = get_preset(model).default_pretrained if pretrained is None else pretrained
    weights = None if weights is not None and weights.lower() == "none" else weights
    with progress_bars(enabled=bool(data)) as bars:
        protos = build_prototypes(
            model,
            pretrained=weights,
            label_space=classes,
            templates=templates,
            device=device,
            data_specs=tuple(data or ()),
            data_root=data_root,
            max_images=max_images,
            synonyms=synonyms,
            progress=bars,
        )
    path = save_prototypes(out, protos)
    if json_out:
        print_json({"path": str(path), **_summary(protos)})
        return
    visual = " and visual prototypes" if protos.visual is not None else ""
    console.print(
        f"Wrote {protos.num_classes} text prototypes{visual} (D={protos.dim}, model {escape(model)}, "
        f"weights {escape(str(protos.meta['pretrained']))}) to [bold]{escape(str(path))}[/bold]"
    )


@app.command("show")
def show(
    file: Annotated[Path, typer.Argument(help="A prototypes .safetensors file.")],
    json_out: JsonOption = False,
) -> None:
    """Show a prototypes file: per class its norm and most similar other class, and the metadata.

    Example: [bold]ppar prototypes show runs/protos.safetensors --json[/bold]
    """
    from ppar_core.prototypes import load_prototypes

    summary = _summary(load_prototypes(file))
    if json_out:
        print_json(summary)
        return
    counts = summary["visual_counts"]
    table = Table(title=f"{escape(str(file))}: {summary['num_classes']} classes, D={summary['dim']}")
    for column in ("class", "norm", "nearest class", "cosine") + (("visual cells",) if counts else ()):
        table.add_column(column, justify="left" if "class" in column else "right")
    for name in summary["classes"]:
        other, cosine = summary["nearest"][name]
        row = [escape(name), f"{summary['norms'][name]:.4f}", escape(other), "-" if cosine is None else f"{cosine:.4f}"]
        table.add_row(*row, *((str(counts[name]),) if counts else ()))
    console.print(table)
    for key in ("model", "pretrained", "label_space", "format_version"):
        console.print(f"{key}: {escape(str(summary[key]))}")
    console.print(f"templates ({len(summary['templates'])}): {escape(str(summary['templates'][:3]))}...")
    if summary["data"]:
        console.print(f"visual prototypes from: {escape(', '.join(summary['data']))}")
