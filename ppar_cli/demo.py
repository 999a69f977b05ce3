"""`ppar demo`: the whole pipeline on the built-in synthetic domains, on the CPU, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ppar_cli.options import console, err_console
from ppar_cli.render import report_table, setup_logging, training_progress

HELP = """Run the built-in demo: make the synthetic domains, build `tiny` prototypes, train PPAR on synth-source,
evaluate on synth-real, synth-night and synth-fog, write overlays and print the table.

The `tiny` preset is a random-init CLIP-shaped tower: the demo shows the pipeline working end to end, and its
numbers are measured on this run, not a claim about CLIP or the paper.

Example: [bold]ppar demo --compare erm[/bold]
"""


def command(
    out: Annotated[Path, typer.Option(help="Demo folder (data and prototypes are reused, runs are replaced).")] = Path(
        "demo"
    ),
    compare: Annotated[str | None, typer.Option(help="Also train this baseline and compare: erm.")] = None,
    iters: Annotated[int | None, typer.Option(help="Training steps (default: the synth-tiny preset's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    from ppar_core.demo import run_demo
    from ppar_core.errors import PparError

    if compare not in (None, "erm"):
        raise PparError(f"--compare {compare!r} is not a baseline ppar knows; use --compare erm.")
    setup_logging()
    start = time.perf_counter()
    result = run_demo(
        out,
        compare=compare,
        iters=iters,
        device=device,
        on_stage=lambda message: err_console.print(f"[bold cyan]==>[/bold cyan] {message}"),
        make_progress=lambda cfg: training_progress(cfg.iters),
    )
    runs = {method: run.report for method, run in result.runs.items()}
    console.print(report_table(runs, title="Synthetic-domain generalisation, mIoU (%), trained on synth-source"))
    for method, run in result.runs.items():
        console.print(f"{method}: {run.checkpoint}")
    console.print(f"Overlays: {out / 'overlays'} ({len(result.overlays)} images)")
    console.print(f"Demo finished in {time.perf_counter() - start:.0f} s.")
