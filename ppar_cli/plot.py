"""`ppar plot`: the training curves of one or more runs, overlaid, as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ppar_cli.options import JsonOption, console, err_console, print_json

HELP = """Draw the training curves of one or more runs, overlaid: the loss terms, the mIoU per target over steps, the progressive schedule (beta, q, weight ramp) and the mean reliability weight.

Writes loss.png, miou.png, schedule.png and mean_weight.png into --out (created if needed), each replacing an earlier plot of the same name there; nothing else in the folder is touched. A figure no run has data for (no evaluation, say) is skipped with a note. Needs matplotlib: pip install 'ppar\\[plots]'.

Example: [bold]ppar plot runs/erm runs/ppar --out plots/[/bold]
"""  # noqa: E501


def command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of `ppar train` (holding metrics.jsonl).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")],
    json_out: JsonOption = False,
) -> None:
    from ppar_core.experiments.plots import write_run_plots

    result = write_run_plots(runs, out)
    if json_out:
        print_json(
            {
                "files": [
                    {"path": str(f.path), "what": f.what, "width": f.width, "height": f.height} for f in result.files
                ],
                "skipped": list(result.skipped),
            }
        )
        return
    for file in result.files:
        console.print(f"{escape(str(file.path))}: {escape(file.what)} ({file.width}x{file.height} px)")
    for note in result.skipped:
        err_console.print(f"[yellow]{escape(note)}[/yellow]")
