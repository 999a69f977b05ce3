"""`ppar train`: train PPAR (or the ERM baseline) on a source domain, evaluate on unseen targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ppar_cli.options import DataRootOption, console, err_console
from ppar_cli.render import report_table, training_progress

# Flag -> the dotted config field it sets. `--crop N` sets both crop sides.
FLAG_FIELDS: dict[str, str] = {
    "source": "data.source",
    "targets": "data.targets",
    "data_root": "data.data_root",
    "model": "model.preset",
    "pretrained": "model.pretrained",
    "prototypes": "model.prototypes",
    "freeze_backbone": "model.freeze_backbone",
    "method": "loss.method",
    "vtp": "model.vtp.kind",
    "align": "loss.align",
    "reweight": "loss.reweight",
    "iters": "iters",
    "batch_size": "batch_size",
    "crop": "data.augment.crop_size",
    "out": "out",
    "device": "device",
    "seed": "seed",
    "checkpoint_every": "checkpoint_every",
    "eval_every": "eval_every",
    "log_every": "log_every",
    "workers": "data.workers",
    "log": "log",
}

HELP = """Train on a source domain; evaluate on target domains it never sees.

Settings come from defaults (or --preset), then --config FILE.toml, then the flags, then --set overrides. Dataset names take the usual aliases (bdd, cs, gtav, vistas, syn). Without --out each run gets a new folder (runs/ppar, runs/ppar-2, ...). Ctrl-C or SIGTERM saves a checkpoint; `ppar train --out RUN --resume` continues it exactly, with the run's own config. Sizes are HxW.

Example: [bold]ppar train --source gta5 --targets cityscapes,bdd[/bold]
Example: [bold]ppar train --source gta5 --targets cityscapes,bdd100k,mapillary --model vit-b16 --out runs/g2cbm[/bold]
Two sources: [bold]ppar train --source gta5,synthia --targets cityscapes,bdd[/bold] (or --preset gta5+synthia-vit-b16)
CPU demo: [bold]ppar train --preset synth-tiny --data-root demo/data --iters 100[/bold]
Several GPUs: [bold]torchrun --nproc-per-node 4 -m ppar_cli train ...[/bold]
"""  # noqa: E501


def command(
    config: Annotated[Path | None, typer.Option("--config", help="A TOML config file (see examples/).")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Start from a preset: gta5-vit-b16, gta5+synthia-vit-b16 or synth-tiny.")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Source dataset(s), NAME or NAME=PATH, comma-separated.")] = None,
    targets: Annotated[str | None, typer.Option(help="Target datasets, comma-separated.")] = None,
    data_root: DataRootOption = None,
    model: Annotated[str | None, typer.Option("--model", help="CLIP preset (`ppar models list`).")] = None,
    pretrained: Annotated[str | None, typer.Option(help="open_clip tag (openai) or a local weights file.")] = None,
    prototypes: Annotated[Path | None, typer.Option(help="Prototypes file from `ppar prototypes build`.")] = None,
    method: Annotated[str | None, typer.Option(help="ppar or erm (the plain cross-entropy baseline).")] = None,
    vtp: Annotated[str | None, typer.Option(help="Visual text prototypes: decoder, ema or mix.")] = None,
    align: Annotated[str | None, typer.Option(help="Alignment: none, direct or progressive.")] = None,
    reweight: Annotated[str | None, typer.Option(help="Reweighting: none, otp or ratio.")] = None,
    freeze_backbone: Annotated[
        bool | None,
        typer.Option(
            "--freeze-backbone",
            help="Freeze the CLIP image tower (--set model.freeze_backbone=false undoes a config file's).",
            show_default=False,
        ),
    ] = None,
    iters: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step per process.")] = None,
    crop: Annotated[int | None, typer.Option(help="Square training crop size.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: a new runs/ppar-N each time).", show_default=False)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out, with its own saved config.")
    ] = False,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config field: a.b=value.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between evaluations (0: at the end only).")] = None,
    log_every: Annotated[int | None, typer.Option(help="Steps between metrics.jsonl lines.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (default: the cores minus one, at most 16).")
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log", help="Also log to: none, or tensorboard (event files in the run folder, under tensorboard/)."
        ),
    ] = None,
) -> None:
    from dataclasses import replace

    from ppar_core.config import resolve_config
    from ppar_core.engine.run_folder import RunFolder
    from ppar_core.engine.train import train
    from ppar_core.errors import PparError
    from ppar_core.files import next_free_folder

    flags: dict[str, Any] = {
        "source": source,
        "targets": targets,
        "data_root": str(data_root) if data_root else None,
        "model": model,
        "pretrained": pretrained,
        "prototypes": str(prototypes) if prototypes else None,
        "method": method,
        "vtp": vtp,
        "align": align,
        "reweight": reweight,
        "freeze_backbone": freeze_backbone,
        "iters": iters,
        "batch_size": batch_size,
        "crop": crop,
        "out": str(out) if out else None,
        "device": device,
        "seed": seed,
        "checkpoint_every": checkpoint_every,
        "eval_every": eval_every,
        "log_every": log_every,
        "workers": workers,
        "log": log,
    }
    fields = {FLAG_FIELDS[name]: [v, v] if name == "crop" and v is not None else v for name, v in flags.items()}
    base = None
    if resume:
        if out is None:
            raise PparError("--resume needs --out RUN, the run folder to continue (e.g. --out runs/ppar).")
        # The run's own config is the base: `--out RUN --resume` alone continues it; options given must agree.
        base = None if preset or config else RunFolder(out).read_config()
    cfg = resolve_config(preset=preset, config_file=config, fields=fields, overrides=overrides or [], base=base)
    if not resume and out is None and not any(o.split("=", 1)[0].strip() == "out" for o in overrides or []):
        cfg = replace(cfg, out=str(next_free_folder(cfg.out)))  # a new run folder, never the last one's
    with training_progress(cfg.iters) as progress:
        result = train(
            cfg, resume=resume, on_log=progress.on_log, on_eval_progress=progress.on_eval, on_start=progress.on_start
        )
    if result.interrupted:
        err_console.print(
            f"[yellow]Interrupted at step {result.step}; saved {result.checkpoint}. "
            f"Continue with: ppar train --out {result.out_dir} --resume[/yellow]"
        )
        raise typer.Exit(130)
    console.print(f"Checkpoint: {result.checkpoint} (step {result.step})")
    if result.report is not None:
        console.print(report_table({cfg.loss.method: result.report}, title=f"mIoU (%) at step {result.step}"))
        console.print(f"Report: {result.out_dir / 'eval.json'}")
