"""`train(cfg) -> TrainResult`: the one training loop, top to bottom.

build data and targets -> prototypes and model -> (resume) -> for each step: `train_step` (lr from a pure
function, micro-batches under autocast, PPAR loss, backward, clip, step, VTP memory and reliability statistics) ->
log, checkpoint, evaluate -> final checkpoint and evaluation report.

Determinism: on CPU a run is a pure function of its config; a run resumed from `last.safetensors` reproduces the
uninterrupted run (same samples, same augmentation, same dropout draws, same optimizer state).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppar_core.checkpoint import load_into_module, load_training_state
from ppar_core.config import TrainConfig
from ppar_core.data import build_dataset
from ppar_core.engine.distributed import DistContext, cleanup_distributed, init_distributed
from ppar_core.engine.interrupt import StopFlag
from ppar_core.engine.optim import build_optimizer
from ppar_core.engine.run_folder import RunFolder
from ppar_core.engine.sampling import StreamSampler, TrainSamples
from ppar_core.engine.start import checkpoint_to_resume, plan, start_prototypes
from ppar_core.engine.step import train_step
from ppar_core.errors import PparError
from ppar_core.evaluation.evaluate import evaluate_targets
from ppar_core.evaluation.report import build_eval_report, training_report, write_eval_report
from ppar_core.evaluation.targets import Target, build_targets, check_targets
from ppar_core.files import check_output_folder, remove_stale_temporaries
from ppar_core.labels import CLASS_NAMES
from ppar_core.modeling.segmentor import PPARSegmentor, build_segmentor, resolve_model_config
from ppar_core.progress import ProgressFn
from ppar_core.prototypes import save_prototypes
from ppar_core.runtime import restore_rng_state, seed_everything

log = logging.getLogger("ppar.train")


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    step: int  # optimizer steps completed
    interrupted: bool
    report: dict[str, Any] | None = None  # the final evaluation report, as written to eval.json (rank 0)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_eval_progress: ProgressFn | None = None,
    on_start: Callable[[dict[str, str]], None] | None = None,
) -> TrainResult:
    """Train PPAR (or the ERM baseline) as `cfg` says; returns where the checkpoint is and the final report.

    `on_start(plan)` receives the run's plan (`plan(...)`) once its data are checked, `on_log(record)` every
    metrics.jsonl record (rank 0), for progress display.
    """
    cfg = replace(cfg, model=resolve_model_config(cfg.model)).validate()
    check_output_folder(cfg.out)
    dist = init_distributed(cfg.device)
    run = RunFolder(cfg.out)
    try:
        with run.locked() if dist.is_main else contextlib.nullcontext():
            return _train(cfg, run, dist, resume, on_log, on_eval_progress, on_start)
    finally:
        cleanup_distributed(dist)


def _train(
    cfg: TrainConfig,
    run: RunFolder,
    dist: DistContext,
    resume: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
    on_eval_progress: ProgressFn | None,
    on_start: Callable[[dict[str, str]], None] | None,
) -> TrainResult:
    device = dist.device
    removed = remove_stale_temporaries(run.out)
    if removed:
        log.info("Removed %d temporary file(s) left by an interrupted write in %s.", len(removed), run.out)
    checkpoint = checkpoint_to_resume(cfg, run) if resume else None
    if checkpoint is None and run.model.exists():
        raise PparError(f"{run.model} already exists: pass --resume to continue that run, or choose another --out.")

    # Data first: a wrong dataset root should fail before minutes of model building.
    source = build_dataset(cfg.data.source, split=cfg.data.source_split, data_root=cfg.data.data_root)
    if len(source) == 0:
        raise PparError(f"The source dataset {cfg.data.source} has no image/label pairs; run `ppar data check` on it.")
    targets = build_targets(
        cfg.data.targets,
        split=cfg.data.target_split,
        data_root=cfg.data.data_root,
        mapillary_map=cfg.data.mapillary_map,
        protocol=cfg.eval,
    )
    bad_targets = check_targets(targets, max_images=cfg.data.eval_max_images, skip_bad=cfg.data.skip_bad)
    for name, problems in bad_targets.items():
        log.warning("Target %s: %d bad pair(s) will be skipped: %s", name, len(problems), "; ".join(problems))

    if on_start is not None and dist.is_main:
        on_start(plan(cfg, dist, resume_step=None if checkpoint is None else checkpoint.step))
    seed_everything(cfg.seed + dist.rank)
    protos = start_prototypes(cfg, checkpoint)
    model = build_segmentor(cfg.model, prototypes=protos, load_weights=checkpoint is None)
    if cfg.model.freeze_backbone:
        model.encoder.requires_grad_(False)
        log.info("CLIP image tower frozen (--freeze-backbone): it receives no gradient.")
    else:
        log.info("CLIP image tower trainable with lr multiplier %g.", cfg.model.backbone_lr_mult)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim, backbone_lr_mult=cfg.model.backbone_lr_mult)
    extra: dict[str, Any] = {"class_names": list(CLASS_NAMES), "preset": cfg.model.preset, "prototypes": protos.meta}
    # Bad samples are counted and named wherever a run reports (log, metrics.jsonl, checkpoint, eval.json).
    bad = set(checkpoint.meta.get("bad_samples", {}).get("source", [])) if checkpoint is not None else set()
    extra["bad_samples"] = {"source": sorted(bad), "targets": bad_targets}

    start_step = 0
    if checkpoint is not None:
        load_into_module(model, checkpoint.tensors, source=str(run.model))
        start_step, rng_tensors, state_meta = load_training_state(run.state, optimizer)
        if start_step != checkpoint.step:
            raise PparError(
                f"{run.model} (step {checkpoint.step}) and its state file (step {start_step}) disagree; "
                "the last save was interrupted between them: delete both to restart, or restore a backup."
            )
        restore_rng_state(rng_tensors, state_meta["rng"])
        log.info("Resuming %s at step %d of %d.", run.model, start_step, cfg.iters)
    elif dist.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        if not cfg.model.prototypes:
            save_prototypes(run.prototypes, protos)
    if dist.is_main:
        run.truncate_metrics(after_step=start_step)

    wrapped: nn.Module = model
    if dist.enabled:
        # Buffers (VTP memory, reliability statistics) are kept equal across ranks by explicit all-reduces.
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        TrainSamples(source, cfg.data.augment, seed=cfg.seed, skip_bad=cfg.data.skip_bad),  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        sampler=StreamSampler(
            batch_size=cfg.batch_size,
            accum_steps=cfg.optim.accum_steps,
            rank=dist.rank,
            world_size=dist.world_size,
            start_step=start_step,
        ),
        num_workers=cfg.data.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by worker seeding
    )
    batches = iter(loader)
    step = start_step
    interrupted = False
    window_start, window_images = time.perf_counter(), 0
    wrapped.train()
    with StopFlag() as stop:
        while step < cfg.iters:
            if _should_stop(stop, dist):
                interrupted = True
                break
            record, passed = train_step(wrapped, model, optimizer, batches, cfg, step, dist, checkpoint=run.model)
            if passed and not bad.issuperset(passed):
                bad.update(passed)
                extra["bad_samples"]["source"] = sorted(bad)
                log.warning("Source sample(s) replaced by the next good one (unreadable): %s", ", ".join(passed))
            step += 1
            window_images += cfg.batch_size * cfg.optim.accum_steps * dist.world_size
            if dist.is_main and (step % cfg.log_every == 0 or step == cfg.iters or step == start_step + 1):
                elapsed = time.perf_counter() - window_start
                record.update(step=step, img_per_s=window_images / max(elapsed, 1e-9))
                if bad:
                    record["bad_source"] = len(bad)
                window_start, window_images = time.perf_counter(), 0
                _log(run, record, on_log)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.iters:
                if dist.is_main:
                    run.save(cfg, model, optimizer, step, extra)
                dist.barrier()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iters and targets:
                report = _evaluate(model, targets, cfg, dist, on_eval_progress, step=step)
                if dist.is_main:
                    mious = {name: entry["miou"] for name, entry in report["targets"].items()}
                    _log(run, {"step": step, "eval": mious, "mean_miou": report["mean_miou"]}, on_log)
    if bad:
        log.warning("%d unreadable source sample(s) were replaced by the next good one: %s", len(bad), sorted(bad))
    if dist.is_main:
        run.save(cfg, model, optimizer, step, extra)
    dist.barrier()
    result = TrainResult(out_dir=run.out, checkpoint=run.model, step=step, interrupted=interrupted)
    if not interrupted and targets:
        result.report = _evaluate(
            model, targets, cfg, dist, on_eval_progress, step=step, final=run, bad_samples=extra["bad_samples"]
        )
    return result


def _evaluate(
    model: PPARSegmentor,
    targets: list[Target],
    cfg: TrainConfig,
    dist: DistContext,
    progress: ProgressFn | None,
    *,
    step: int,
    final: RunFolder | None = None,
    bad_samples: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate on every target -> the report (on every rank); the final one is written to the run's eval.json."""
    model.eval()
    results = evaluate_targets(
        model.infer,
        targets,
        num_classes=model.num_classes,
        device=dist.device,
        max_images=cfg.data.eval_max_images,
        progress=progress,
        dist=dist if dist.enabled else None,
        skip_bad=cfg.data.skip_bad,
    )
    model.train()
    if final is None or not dist.is_main:
        return build_eval_report(
            targets, results, inference=cfg.eval, split=cfg.data.target_split, mapillary_map=cfg.data.mapillary_map
        )
    report = training_report(cfg, targets, results, checkpoint=final.model, step=step)
    if bad_samples and (bad_samples["source"] or bad_samples["targets"]):
        report["bad_samples"] = bad_samples
    write_eval_report(final.report, report)
    return report


def _log(run: RunFolder, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None) -> None:
    run.append_metrics(record)
    if on_log is not None:
        on_log(record)


def _should_stop(stop: StopFlag, dist: DistContext) -> bool:
    if not dist.enabled:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=dist.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)
