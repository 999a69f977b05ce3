"""`ppar pretrain`: build the embedded CLIP prior (a tiny CLIP trained on synthetic image-text pairs) and check it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ppar_cli.options import JsonOption, console, err_console, print_json
from ppar_cli.render import progress_bars, setup_logging

HELP = """Pretrain the embedded CLIP prior (a tiny CLIP made from synthetic image-text pairs) and check it zero-shot.

open_clip's `tiny` image and text towers are trained with the CLIP objective (open_clip's ClipLoss) on synthetic street scenes rendered in a broad random distribution of looks, captioned from their layouts, plus region crops captioned with their main class. Then the prior is checked with no training at all: image-text retrieval on held-out scenes and dense zero-shot segmentation (patch tokens against the text prototypes) on every synthetic domain.

The prior is a miniature of CLIP made from synthetic data, not CLIP, and says nothing about real images. Every command takes it as --model tiny --pretrained FILE. The default budget (600 steps) takes a few minutes on 2 CPU cores; Ctrl-C saves, and the same command with --resume continues exactly where it stopped.

Example: [bold]ppar pretrain --out priors/tiny.safetensors[/bold]
Checks only: [bold]ppar pretrain --out priors/tiny.safetensors --check-only[/bold]
Then: [bold]ppar prototypes build --model tiny --pretrained priors/tiny.safetensors --out protos.safetensors[/bold]
"""  # noqa: E501


def command(
    out: Annotated[Path, typer.Option("--out", help="The prior file to write (.safetensors).")],
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: the recipe's 600).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the initialisation and of every scene drawn.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run at --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Run the prior's checks at the end.")] = True,
    check_only: Annotated[bool, typer.Option("--check-only", help="Only check the existing --out prior.")] = False,
    json_output: JsonOption = False,
) -> None:
    from ppar_core.errors import PparError
    from ppar_core.prior.pretrain import PretrainConfig, pretrain, read_prior_info
    from ppar_core.prior.zeroshot import check_prior

    if resume and force:
        raise PparError("--resume and --force contradict each other: pass one of them.")
    if out.suffix != ".safetensors":
        raise PparError(f"--out {out} must end in .safetensors (the prior is a safetensors file).")
    setup_logging()
    summary: dict[str, Any] = {"prior": str(out)}
    if not check_only:
        cfg = PretrainConfig(seed=seed, steps=PretrainConfig.steps if steps is None else steps).validate()
        with progress_bars(enabled=not json_output) as progress:
            result = pretrain(cfg, out, resume=resume, force=force, progress=progress)
        if result.interrupted:
            err_console.print(
                f"[yellow]Interrupted at step {result.step}; saved {out}. "
                "Continue with the same command plus --resume.[/yellow]"
            )
            raise typer.Exit(130)
        last = result.history[-1] if result.history else {}
        summary.update(step=result.step, seconds=result.seconds, final_loss=last.get("loss"))
        if not json_output:
            console.print(
                f"Prior: {out} ({result.step} steps in {result.seconds:.0f} s, loss {_fmt(last.get('loss'))})"
            )
    if check_only:
        read_prior_info(out)  # one clear sentence if it is missing or not a prior
    if check or check_only:
        with progress_bars(enabled=not json_output) as progress:
            summary["checks"] = check_prior(str(out), progress=progress)
        if not json_output:
            console.print(checks_table(summary["checks"]))
    if json_output:
        print_json(summary)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def checks_table(checks: dict[str, Any]) -> Table:
    """The prior's checks (`ppar_core.prior.zeroshot.check_prior`) as one table: measured value and chance level."""
    table = Table(title="Checks of the prior (no training of any head)")
    table.add_column("check")
    table.add_column("measured", justify="right")
    table.add_column("chance", justify="right")
    retrieval = checks["retrieval"]
    num = retrieval["num"]
    for key, label in (("image_to_text", "image -> text"), ("text_to_image", "text -> image")):
        for k in (1, 5):
            table.add_row(
                f"retrieval {label} R@{k} (%, {num} held-out scenes)",
                _fmt(retrieval[f"{key}_r{k}"]),
                _fmt(retrieval[f"chance_r{k}"]),
            )
    for domain, entry in checks["zero_shot"].items():
        table.add_row(f"zero-shot dense mIoU (%), {domain}", _fmt(entry["miou"]), _fmt(checks["chance"].get(domain)))
    table.add_row("[bold]zero-shot mean mIoU[/bold]", f"[bold]{_fmt(checks['zero_shot_mean_miou'])}[/bold]", "")
    return table
