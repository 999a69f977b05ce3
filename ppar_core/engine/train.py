"""`train(cfg) -> TrainResult`: the one training loop, top to bottom.

build data -> build model and prototypes -> (resume) -> for each step: lr from a pure function, micro-batches under
autocast, PPAR loss, backward, clip, step, VTP memory and reliability statistics -> log, checkpoint, evaluate.

Determinism: on CPU a run is a pure function of its config; a run resumed from `last.safetensors` reproduces the
uninterrupted run (same samples, same augmentation, same dropout draws, same optimizer state).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.checkpoint import (
    load_checkpoint,
    load_into_module,
    load_training_state,
    save_checkpoint,
    save_training_state,
    sibling_state_path,
)
from ppar_core.config import RESUMABLE_FIELDS, TrainConfig, config_diff, from_dict, to_dict
from ppar_core.data import build_dataset
from ppar_core.engine.distributed import DistContext, cleanup_distributed, init_distributed
from ppar_core.evaluation.evaluate import evaluate_targets, mean_miou
from ppar_core.inference import InferenceConfig
from ppar_core.engine.optim import build_optimizer, lr_at, set_lr
from ppar_core.engine.sampling import StreamSampler, TrainSamples
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES
from ppar_core.losses import ppar_loss
from ppar_core.metrics import SegMetrics
from ppar_core.modeling.segmentor import PPARSegmentor, build_segmentor, resolve_model_config
from ppar_core.reliability import update_weight_stats
from ppar_core.evaluation.report import build_target_datasets, target_inference, training_eval_report, write_eval_report
from ppar_core.runtime import autocast, capture_rng_state, restore_rng_state, seed_everything

log = logging.getLogger("ppar.train")

MODEL_FILE = "last.safetensors"


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    step: int  # optimizer steps completed
    interrupted: bool
    metrics: dict[str, SegMetrics] = field(default_factory=dict)  # final evaluation per target (rank 0)
    mean_miou: float | None = None


def _model_extra(cfg: TrainConfig, protos_meta: dict[str, Any]) -> dict[str, Any]:
    return {"class_names": list(CLASS_NAMES), "preset": cfg.model.preset, "prototypes": protos_meta}


def _check_resume_config(saved: TrainConfig, cfg: TrainConfig, path: Path) -> None:
    changed = [k for k in config_diff(saved, cfg) if k not in RESUMABLE_FIELDS]
    if changed:
        raise PparError(
            f"Cannot resume {path}: the run was started with other values for {', '.join(changed)}; "
            "drop those options (the run's own config.json is used) or start a new run with another --out."
        )


class _StopFlag:
    """Ctrl-C asks the loop to stop at the next step boundary (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _save(
    cfg: TrainConfig, model: PPARSegmentor, optimizer: torch.optim.Optimizer, step: int, protos_meta: dict
) -> Path:
    out = Path(cfg.out)
    path = out / MODEL_FILE
    config = to_dict(cfg)
    # Model first, then state: a crash between the two leaves a model newer than its state, which resume detects.
    save_checkpoint(path, tensors=model.state_dict(), config=config, step=step, extra=_model_extra(cfg, protos_meta))
    rng_tensors, rng_meta = capture_rng_state()
    save_training_state(
        sibling_state_path(path), step=step, optimizer=optimizer, extra_tensors=rng_tensors, meta={"rng": rng_meta}
    )
    return path


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: Path, *, after_step: int) -> None:
    """On resume, drop log lines of steps the resumed run will repeat."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= after_step]
    path.write_text("".join(line + "\n" for line in keep))


def _build_targets(cfg: TrainConfig) -> dict[str, Any]:
    """name -> dataset; ACDC (`acdc`) is evaluated per condition (`acdc-fog`, ...), as `ppar eval` does."""
    targets: dict[str, Any] = {}
    for spec in cfg.data.targets:
        built = build_target_datasets(
            spec, split=cfg.data.target_split, data_root=cfg.data.data_root, mapillary_map=cfg.data.mapillary_map
        )
        if isinstance(built, dict):
            targets.update({f"acdc-{condition}": dataset for condition, dataset in built.items()})
        else:
            targets[spec.split("=", 1)[0]] = built
    return targets


def _target_protocols(cfg: TrainConfig, targets: dict[str, Any]) -> dict[str, InferenceConfig]:
    """The inference protocol of each target: `cfg.eval`, except Mapillary's long side 2048 (as `ppar eval`)."""
    scale_given = cfg.eval.scale != 1.0 or cfg.eval.long_side is not None
    return {name: target_inference(name, cfg.eval, scale_given=scale_given) for name in targets}


def _evaluate(
    model: PPARSegmentor,
    targets: dict[str, Any],
    cfg: TrainConfig,
    dist: DistContext,
    on_eval_progress: Callable[[str, int, int], None] | None,
) -> dict[str, SegMetrics]:
    protocols = _target_protocols(cfg, targets)
    model.eval()
    results: dict[str, SegMetrics] = {}
    for name, dataset in targets.items():
        results |= evaluate_targets(
            model.infer,
            {name: dataset},
            protocols[name],
            num_classes=model.num_classes,
            device=dist.device,
            max_images=cfg.data.eval_max_images,
            progress=on_eval_progress,
            dist=dist if dist.enabled else None,
        )
    model.train()
    return results


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_eval_progress: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train PPAR (or the ERM baseline) as `cfg` says; returns where the checkpoint is and the final metrics.

    `on_log(record)` receives every metrics.jsonl record (rank 0), for progress display.
    """
    cfg = replace(cfg, model=resolve_model_config(cfg.model)).validate()
    out = Path(cfg.out)
    model_path = out / MODEL_FILE
    dist = init_distributed(cfg.device)
    try:
        return _train(cfg, out, model_path, dist, resume, on_log, on_eval_progress)
    finally:
        cleanup_distributed(dist)


def _train(
    cfg: TrainConfig,
    out: Path,
    model_path: Path,
    dist: DistContext,
    resume: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
    on_eval_progress: Callable[[str, int, int], None] | None,
) -> TrainResult:
    device = dist.device
    checkpoint = None
    if resume:
        if not model_path.exists() or not sibling_state_path(model_path).exists():
            raise PparError(f"Nothing to resume in {out}: {MODEL_FILE} and its .state file are missing; drop --resume.")
        checkpoint = load_checkpoint(model_path)
        saved = from_dict(TrainConfig, checkpoint.config)
        _check_resume_config(saved, cfg, model_path)
    elif model_path.exists():
        raise PparError(f"{model_path} already exists: pass --resume to continue that run, or choose another --out.")

    # Data first: a wrong dataset root should fail before minutes of model building.
    source = build_dataset(
        cfg.data.source, split=cfg.data.source_split, data_root=cfg.data.data_root, skip_bad=cfg.data.skip_bad
    )
    if len(source) == 0:
        raise PparError(f"The source dataset {cfg.data.source} has no image/label pairs; run `ppar data check` on it.")
    targets = _build_targets(cfg)

    seed_everything(cfg.seed + dist.rank)
    model, protos = build_segmentor(
        cfg.model,
        otp=None if checkpoint is None else checkpoint.tensors["otp"],
        pretrained=True if checkpoint is None else None,
    )
    if cfg.model.freeze_backbone:
        model.encoder.requires_grad_(False)
        log.info("CLIP image tower frozen (--freeze-backbone): it receives no gradient.")
    else:
        log.info("CLIP image tower trainable with lr multiplier %g.", cfg.model.backbone_lr_mult)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim, backbone_lr_mult=cfg.model.backbone_lr_mult)

    start_step = 0
    protos_meta = dict(protos.meta)
    if checkpoint is not None:
        load_into_module(model, checkpoint.tensors, source=str(model_path))
        start_step, rng_tensors, state_meta = load_training_state(sibling_state_path(model_path), optimizer)
        if start_step != checkpoint.step:
            raise PparError(
                f"{model_path} (step {checkpoint.step}) and its state file (step {start_step}) disagree; "
                "the last save was interrupted between them: delete both to restart, or restore a backup."
            )
        protos_meta = checkpoint.meta.get("prototypes", protos_meta)
        restore_rng_state(rng_tensors, state_meta["rng"])
        log.info("Resuming %s at step %d of %d.", model_path, start_step, cfg.iters)
    elif dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        if not cfg.model.prototypes:
            from ppar_core.prototypes import save_prototypes

            save_prototypes(out / "prototypes.safetensors", protos)
    if dist.is_main:
        _truncate_jsonl(out / "metrics.jsonl", after_step=start_step)

    core = model
    wrapped: nn.Module = model
    if dist.enabled:
        # Buffers (VTP memory, reliability statistics) are kept equal across ranks by explicit all-reduces.
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        TrainSamples(source, cfg.data.augment, seed=cfg.seed),  # type: ignore[arg-type]
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
    with _StopFlag() as stop:
        while step < cfg.iters:
            if _should_stop(stop, dist):
                interrupted = True
                break
            record = _train_step(wrapped, core, optimizer, batches, cfg, step, dist)
            step += 1
            window_images += cfg.batch_size * cfg.optim.accum_steps * dist.world_size
            if dist.is_main and (step % cfg.log_every == 0 or step == cfg.iters or step == start_step + 1):
                elapsed = time.perf_counter() - window_start
                record.update(step=step, img_per_s=window_images / max(elapsed, 1e-9))
                window_start, window_images = time.perf_counter(), 0
                _append_jsonl(out / "metrics.jsonl", record)
                if on_log is not None:
                    on_log(record)
            if step % max(cfg.checkpoint_every, 1) == 0 and cfg.checkpoint_every and step < cfg.iters:
                if dist.is_main:
                    _save(cfg, core, optimizer, step, protos_meta)
                dist.barrier()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iters and targets:
                results = _evaluate(core, targets, cfg, dist, on_eval_progress)
                if dist.is_main:
                    mious = {name: m.miou for name, m in results.items()}
                    rec = {"step": step, "eval": mious, "mean_miou": mean_miou(results)}
                    _append_jsonl(out / "metrics.jsonl", rec)
                    if on_log is not None:
                        on_log(rec)
    if dist.is_main:
        _save(cfg, core, optimizer, step, protos_meta)
    dist.barrier()
    result = TrainResult(out_dir=out, checkpoint=model_path, step=step, interrupted=interrupted)
    if not interrupted and targets:
        result.metrics = _evaluate(core, targets, cfg, dist, on_eval_progress)
        result.mean_miou = mean_miou(result.metrics)
        if dist.is_main:
            protocols = _target_protocols(cfg, targets)
            report = training_eval_report(cfg, result.metrics, checkpoint=model_path, step=step, per_target=protocols)
            write_eval_report(out, report)
    return result


def _should_stop(stop: _StopFlag, dist: DistContext) -> bool:
    if not dist.enabled:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=dist.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)


def _train_step(
    model: nn.Module,
    core: PPARSegmentor,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    cfg: TrainConfig,
    step: int,
    dist: DistContext,
) -> dict[str, Any]:
    """One optimizer step over `accum_steps` micro-batches; returns the averaged loss terms for logging."""
    lr = lr_at(step, total=cfg.iters, cfg=cfg.optim)
    set_lr(optimizer, lr)
    progress = step / cfg.iters
    accum = cfg.optim.accum_steps
    sums: dict[str, float] = {}
    # VTP memory and statistics updates are applied after the optimizer step, so a step is all or nothing.
    pending: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []
    for micro in range(accum):
        images, labels = next(batches)
        images = images.to(dist.device, non_blocking=True)
        labels = labels.to(dist.device, non_blocking=True)
        sync = micro == accum - 1 or not dist.enabled
        ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        with ctx:
            with autocast(dist.device):
                output = model(images)
            logits = F.interpolate(output.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            terms = ppar_loss(
                logits, labels, output.dense.float(), core.otp, output.vtp.float(), cfg=cfg.loss, progress=progress
            )
            _check_finite(terms.total, step, cfg, dist)
            (terms.total / accum).backward()
        for key, value in terms.as_floats().items():
            sums[key] = sums.get(key, 0.0) + value / accum
        labels_small = F.interpolate(labels[:, None].float(), size=output.dense.shape[-2:], mode="nearest")[:, 0]
        pending.append((output.dense.detach().float(), labels_small.long(), terms.weights, labels))
    grad_norm = _clip(core, cfg)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    reducer = dist.all_reduce_sum if dist.enabled else None
    for dense, labels_small, weights, labels in pending:
        core.vtp.update(dense, labels_small, ignore_index=cfg.loss.ignore_index, all_reduce=reducer)
        if weights is not None:
            _update_stats(core, weights, labels, cfg, reducer)
    return {"lr": lr, **sums, "grad_norm": grad_norm}


def _clip(core: PPARSegmentor, cfg: TrainConfig) -> float:
    params = [p for p in core.parameters() if p.grad is not None]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")  # inf: measure, no clip
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0


def _check_finite(total: Tensor, step: int, cfg: TrainConfig, dist: DistContext) -> None:
    finite = torch.isfinite(total.detach()).float().reshape(1)
    if dist.enabled:
        finite = dist.all_reduce_sum(finite) / dist.world_size
    if finite.item() < 1.0:
        kept = Path(cfg.out) / MODEL_FILE
        where = f"the last good checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
        raise PparError(
            f"The loss became {total.item()} at step {step + 1}; training stopped and {where}. "
            "Lower the learning rate (--set optim.lr=...) or check the data with `ppar data check`."
        )


def _update_stats(
    core: PPARSegmentor, weights: Tensor, labels: Tensor, cfg: TrainConfig, reducer: Callable | None
) -> None:
    hist, sums, counts, low, high = (torch.zeros_like(t) for t in core.weight_stats())
    update_weight_stats(
        hist, sums, counts, low, high, weights, labels, w_max=cfg.loss.w_max, ignore_index=cfg.loss.ignore_index
    )
    # Increments are all-reduced so every rank (and so rank 0's checkpoint) holds the statistics of all pixels.
    for total, inc in zip(core.weight_stats(), (hist, sums, counts, low, high), strict=True):
        total += reducer(inc) if reducer is not None else inc
