"""`ppar demo`: the whole pipeline on the built-in synthetic domains, on the CPU, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ppar_cli.options import console, err_console
from ppar_cli.render import progress_bars, report_table, setup_logging, training_progress

HELP = """Run the built-in demo on the CPU: PPAR trained on one synthetic domain, evaluated on three it never sees.

It builds (or reuses) the embedded CLIP prior, makes the synthetic domains, checks the prior zero-shot, builds `tiny` text prototypes with it, trains PPAR on synth-source, evaluates on synth-real, synth-night and synth-fog, writes overlays and prints the table.

The prior is a tiny CLIP that ppar pretrains itself on synthetic image-text pairs (a few minutes on 2 CPU cores the first time, then cached in ~/.cache/ppar or $PPAR_CACHE). It is a miniature of CLIP made from synthetic data, not CLIP: the numbers are measured on this run, not a claim about CLIP, real data or the paper. --prior none runs the random-init tower instead.

--compare adds variants of the method (erm, align-none, align-direct, reweight-none, reweight-ratio, vtp-ema, vtp-mix), --seeds N repeats every run with seeds 0..N-1 and prints mean and spread. The demo folder carries a .ppar-demo marker: a folder with other content is refused, never emptied.

Example: [bold]ppar demo --compare erm[/bold]
Ablation: [bold]ppar demo --compare erm,align-none,reweight-none,vtp-ema,vtp-mix --seeds 3[/bold]
"""  # noqa: E501


def command(
    out: Annotated[Path, typer.Option(help="Demo folder (data and prototypes are reused, runs are replaced).")] = Path(
        "demo"
    ),
    compare: Annotated[str | None, typer.Option(help="Also train these variants, comma-separated: erm, ...")] = None,
    seeds: Annotated[int, typer.Option(help="Runs per variant (seeds 0..N-1); >1 prints mean and spread.")] = 1,
    iters: Annotated[int | None, typer.Option(help="Training steps (default: the synth-tiny preset's).")] = None,
    prior: Annotated[str, typer.Option(help="auto (the cached prior), none (random init) or a prior file.")] = "auto",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Score the prior zero-shot first.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    from ppar_core.demo import run_demo, summarize

    variants = [v.strip() for v in (compare or "").split(",") if v.strip()]
    setup_logging()
    start = time.perf_counter()
    with progress_bars() as progress:
        result = run_demo(
            out,
            compare=variants,
            seeds=seeds,
            iters=iters,
            device=device,
            prior=prior,
            check=check,
            on_stage=lambda message: err_console.print(f"[bold cyan]==>[/bold cyan] {message}"),
            make_progress=lambda cfg: training_progress(cfg.iters),
            progress=progress,
        )
    if result.pretraining is not None:
        console.print(f"Prior: {result.prior} (built: {result.pretraining.step} steps in "
                      f"{result.pretraining.seconds:.0f} s)")  # fmt: skip
    elif result.prior is not None:
        console.print(f"Prior: {result.prior} (reused)")
    if result.checks is not None:
        console.print(zero_shot_table(result.checks, prior=result.prior is not None))
    title = "Synthetic-domain generalisation, mIoU (%), trained on synth-source"
    if seeds == 1:
        console.print(report_table({v: runs[0].report for v, runs in result.runs.items()}, title=title))
    else:
        console.print(spread_table(summarize(result.runs), title=f"{title}, mean ± std over {seeds} seeds"))
    for variant, runs in result.runs.items():
        console.print(f"{variant}: {', '.join(str(r.checkpoint) for r in runs)}")
    console.print(f"Overlays: {out / 'overlays'} ({len(result.overlays)} images)")
    console.print(f"Demo finished in {time.perf_counter() - start:.0f} s.")


def zero_shot_table(checks: dict[str, Any], *, prior: bool) -> Table:
    """Dense zero-shot mIoU per domain (patch tokens against the text prototypes, no head trained)."""
    table = Table(title=f"Zero-shot dense mIoU (%) of the {'prior' if prior else 'random tower'}, no training")
    table.add_column("domain")
    table.add_column("mIoU", justify="right")
    for domain, miou in checks["zero_shot"].items():
        table.add_row(domain, f"{miou:.2f}")
    return table


def spread_table(summary: dict[str, dict[str, dict[str, float]]], *, title: str) -> Table:
    """One column per variant, one row per target (and the mean over targets): mean ± std over seeds."""
    table = Table(title=title)
    table.add_column("target")
    for variant in summary:
        table.add_column(variant, justify="right")
    rows = list(dict.fromkeys(key for stats in summary.values() for key in stats if key != "mean")) + ["mean"]
    for row in rows:
        cells = [
            f"{s[row]['mean']:.2f} ± {s[row]['std']:.2f}" if row in s else "-" for s in summary.values()
        ]  # fmt: skip
        table.add_row(f"[bold]{row}[/bold]" if row == "mean" else row, *cells)
    return table
