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
from ppar_core.data.registry import source_class_table
from ppar_core.engine.distributed import DistContext, cleanup_distributed, init_distributed
from ppar_core.engine.interrupt import StopFlag
from ppar_core.engine.optim import build_optimizer
from ppar_core.engine.reporting import eval_record, evaluate_run, log_record
from ppar_core.engine.run_folder import RunFolder
from ppar_core.engine.sampling import StreamSampler, TrainSamples, WaitClock
from ppar_core.engine.start import checkpoint_to_resume, plan, prepared_copies, start_prototypes
from ppar_core.engine.step import check_losses, train_step
from ppar_core.engine.tensorboard import TensorBoardLog, require_tensorboard
from ppar_core.errors import PparError
from ppar_core.evaluation.targets import build_targets, check_targets
from ppar_core.files import check_output_folder, remove_stale_temporaries
from ppar_core.labels import CLASS_NAMES
from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config
from ppar_core.progress import ProgressFn
from ppar_core.prototypes import save_prototypes
from ppar_core.runtime import data_workers, one_opencv_thread, restore_rng_state, seed_everything

log = logging.getLogger("ppar.train")

# A stop request (Ctrl-C, SIGTERM) under DDP takes effect within this many steps, at the same step on every rank.
STOP_AGREE_EVERY = 10


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
    if cfg.log == "tensorboard":
        require_tensorboard()  # before any work: one line naming the install
    dist = init_distributed(cfg.device)
    run = RunFolder(cfg.out)
    tb: TensorBoardLog | None = None
    try:
        with run.locked() if dist.is_main else contextlib.nullcontext():
            if cfg.log == "tensorboard" and dist.is_main:
                tb = TensorBoardLog(run.out, w_max=cfg.loss.w_max)
            return _train(cfg, run, dist, resume, on_log, on_eval_progress, on_start, tb)
    finally:
        if tb is not None:
            tb.close()
        cleanup_distributed(dist)


def _train(
    cfg: TrainConfig,
    run: RunFolder,
    dist: DistContext,
    resume: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
    on_eval_progress: ProgressFn | None,
    on_start: Callable[[dict[str, str]], None] | None,
    tb: TensorBoardLog | None,
) -> TrainResult:
    device = dist.device
    removed = remove_stale_temporaries(run.out)
    if removed:
        log.info("Removed %d temporary file(s) left by an interrupted write in %s.", len(removed), run.out)
    checkpoint = checkpoint_to_resume(cfg, run) if resume else None
    if checkpoint is None and run.model.exists():
        raise PparError(f"{run.model} already exists: pass --resume to continue that run, or choose another --out.")

    # Data first: a wrong dataset root should fail before minutes of model building.
    sources = [
        build_dataset(
            spec, split=cfg.data.source_split, data_root=cfg.data.data_root, mapillary_map=cfg.data.mapillary_map
        )
        for spec in cfg.data.source
    ]
    for spec, source in zip(cfg.data.source, sources, strict=True):
        if len(source) == 0:
            raise PparError(f"The source dataset {spec} has no image/label pairs; run `ppar data check` on it.")
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
    copies = prepared_copies(sources, cfg.data.source, targets, augment_resize=cfg.data.augment.resize)
    if copies:
        extra["prepared_copies"] = copies  # the checkpoint (and eval.json) say which data were prepared copies

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
    workers = data_workers(cfg.data.workers)
    log.info("Loading training samples with %d worker process(es).", workers)
    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        TrainSamples(  # type: ignore[arg-type]
            sources, cfg.data.augment, seed=cfg.seed, skip_bad=cfg.data.skip_bad, sampling=cfg.data.source_sampling
        ),
        batch_size=cfg.batch_size,
        sampler=StreamSampler(
            batch_size=cfg.batch_size,
            accum_steps=cfg.optim.accum_steps,
            rank=dist.rank,
            world_size=dist.world_size,
            start_step=start_step,
        ),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched by worker seeding
    )
    with one_opencv_thread():  # the workers start here, and keep OpenCV on one thread each
        batches = WaitClock(iter(loader))
    table = source_class_table(cfg.data.source, len(CLASS_NAMES))  # None unless the sources label different classes
    source_classes = None if table is None else torch.from_numpy(table).to(device)
    if table is not None:
        log.info(
            "The sources label different classes: each image's loss leaves out the classes its source never labels."
        )
    step = start_step
    interrupted = False
    window_start, window_images = time.perf_counter(), 0
    wrapped.train()
    with StopFlag() as stop:
        while step < cfg.iters:
            if _should_stop(stop, dist, step):
                interrupted = True
                break
            done = step + 1  # the steps done once this one is: what the log, checkpoint and evaluation go by
            log_now = done % cfg.log_every == 0 or done in (cfg.iters, start_step + 1)
            save_now = _due(cfg.checkpoint_every, done) and done < cfg.iters
            eval_now = _due(cfg.eval_every, done) and done < cfg.iters and bool(targets)
            record, passed = train_step(
                wrapped,
                model,
                optimizer,
                batches,
                cfg,
                step,
                dist,
                checkpoint=run.model,
                log=log_now,  # every rank reads at the same steps (the read is collective under DDP's all-reduce)
                check_finite=save_now or eval_now,
                source_classes=source_classes,
            )
            if passed and not bad.issuperset(passed):
                bad.update(passed)
                extra["bad_samples"]["source"] = sorted(bad)
                log.warning("Source sample(s) replaced by the next good one (unreadable): %s", ", ".join(passed))
            step += 1
            window_images += cfg.batch_size * cfg.optim.accum_steps * dist.world_size
            if dist.is_main and log_now:
                elapsed = time.perf_counter() - window_start
                # data_wait: the share of the window's wall time the loop waited for training samples
                record.update(
                    step=step,
                    img_per_s=window_images / max(elapsed, 1e-9),
                    data_wait=min(1.0, batches.take() / max(elapsed, 1e-9)),
                )
                if bad:
                    record["bad_source"] = len(bad)
                window_start, window_images = time.perf_counter(), 0
                log_record(run, record, on_log, tb)
            if save_now:
                if dist.is_main:
                    run.save(cfg, model, optimizer, step, extra)
                dist.barrier()
            if eval_now:
                report = evaluate_run(model, targets, cfg, dist, on_eval_progress, step=step, tb=tb)
                if dist.is_main:
                    log_record(run, eval_record(step, report), on_log, tb)
    if bad:
        log.warning("%d unreadable source sample(s) were replaced by the next good one: %s", len(bad), sorted(bad))
    check_losses(model)  # nothing unread may go into the last checkpoint
    if dist.is_main:
        run.save(cfg, model, optimizer, step, extra)
    dist.barrier()
    result = TrainResult(out_dir=run.out, checkpoint=run.model, step=step, interrupted=interrupted)
    if not interrupted and targets:
        result.report = evaluate_run(
            model,
            targets,
            cfg,
            dist,
            on_eval_progress,
            step=step,
            final=run,
            bad_samples=extra["bad_samples"],
            prepared=copies,
            tb=tb,
        )
        if tb is not None:
            tb.record(eval_record(step, result.report))
    return result


def _should_stop(stop: StopFlag, dist: DistContext, step: int) -> bool:
    """Whether to stop before `step`. Alone, at once. Under DDP the ranks must stop at the same step, which takes
    an all-reduce and a host read; they agree every STOP_AGREE_EVERY steps, so a step that does not log still waits
    for the device at most once."""
    if not dist.enabled:
        return stop.requested
    if step % STOP_AGREE_EVERY:
        return False
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=dist.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)


def _due(every: int, done: int) -> bool:
    """Whether a periodic action (`every` steps; 0: never) falls after `done` steps."""
    return every > 0 and done % every == 0
