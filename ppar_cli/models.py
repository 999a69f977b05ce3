"""`ppar models`: the CLIP backbone presets ppar can build.

torch and open_clip are imported inside the command body so that `ppar --help` stays instant.
"""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ppar_cli.options import JsonOption, console, print_json

app = typer.Typer(
    help="Backbone presets: list them with their sizes.\n\nExample: [bold]ppar models list[/bold]", no_args_is_help=True
)


@app.command("list")
def list_models(json_out: JsonOption = False) -> None:
    """List the backbone presets: joint-space width D, patch/stride, input sizes, parameter count, default weights.

    Example: [bold]ppar models list --json[/bold]
    """
    from ppar_core.clip.presets import CLIP_PRESETS
    from ppar_core.clip.weights import count_parameters

    rows: list[dict[str, Any]] = []
    for preset in CLIP_PRESETS.values():
        image, text = count_parameters(preset)
        rows.append(
            {
                "name": preset.name,
                "arch": preset.arch or "own",
                "kind": preset.kind,
                "embed_dim": preset.embed_dim,
                "patch_size": preset.patch_size,
                "image_size": preset.image_size,
                "native_image_size": preset.native_image_size,
                "out_indices": list(preset.out_indices),
                "params_image": image,
                "params_total": image + text,
                "default_pretrained": preset.default_pretrained,
            }
        )
    if json_out:
        print_json({"models": rows})
        return
    table = Table(title="Backbone presets (--model)", box=box.SIMPLE_HEAD)
    for column in ("name", "arch", "D", "patch", "input", "image", "total", "weights"):
        numeric = column in ("D", "patch", "input", "image", "total")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(
            escape(row["name"]),
            escape(row["arch"]),
            str(row["embed_dim"]),
            str(row["patch_size"]),
            f"{row['image_size']}/{row['native_image_size']}",
            f"{row['params_image'] / 1e6:.1f}M",
            f"{row['params_total'] / 1e6:.1f}M",
            escape(row["default_pretrained"] or "none"),
        )
    console.print(table)
    console.print("input: training side / the side the weights were made at; params: image tower / with text tower")
