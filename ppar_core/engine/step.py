"""One optimizer step: micro-batches under autocast, the PPAR loss, backward, clip, step, then the VTP memory and
the reliability statistics (applied after the optimizer step, so that a step is all or nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.config import TrainConfig
from ppar_core.engine.distributed import DistContext
from ppar_core.engine.optim import lr_at, set_lr
from ppar_core.errors import PparError
from ppar_core.losses import ppar_loss
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.normalize import normalize
from ppar_core.reliability import WeightStats
from ppar_core.runtime import autocast

Batch = tuple[Tensor, Tensor, list[str]]  # images (B,3,h,w) uint8, labels (B,h,w) uint8, bad names per sample


def train_step(
    model: nn.Module,
    core: PPARSegmentor,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    cfg: TrainConfig,
    step: int,
    dist: DistContext,
    *,
    checkpoint: Path,
) -> tuple[dict[str, Any], list[str]]:
    """One optimizer step over `accum_steps` micro-batches -> (averaged loss terms for the log, bad sample names).

    `model` is what runs the forward (the DDP wrapper, or `core` itself); `core` owns the OTP, the VTP memory and the
    statistics. `checkpoint` is named in the error when the loss stops being finite.
    """
    lr = lr_at(step, total=cfg.iters, cfg=cfg.optim)
    set_lr(optimizer, lr)
    progress = step / cfg.iters
    accum = cfg.optim.accum_steps
    sums: dict[str, float] = {}
    bad: list[str] = []
    pending: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []
    for micro in range(accum):
        pixels, labels_u8, passed = next(batches)
        bad += [name for names in passed for name in names.split("\n") if name]
        images = normalize(pixels.to(dist.device, non_blocking=True))
        labels = labels_u8.to(dist.device, non_blocking=True).long()
        sync = micro == accum - 1 or not dist.enabled
        ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        with ctx:
            with autocast(dist.device):
                output = model(images)
            logits = F.interpolate(output.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            terms = ppar_loss(
                logits, labels, output.dense.float(), core.otp, output.vtp.float(), cfg=cfg.loss, progress=progress
            )
            _check_finite(terms.total, step, dist, checkpoint)
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
            increment = WeightStats.zeros(core.num_classes, device=dist.device)
            increment.update(weights, labels, w_max=cfg.loss.w_max, ignore_index=cfg.loss.ignore_index)
            # All-reduced, so every rank (and so rank 0's checkpoint) holds the statistics of all pixels.
            if reducer is not None:
                increment.all_reduce(reducer)
            core.weight_stats.add_(increment)
    return {"lr": lr, **sums, "grad_norm": grad_norm}, bad


def _clip(core: PPARSegmentor, cfg: TrainConfig) -> float:
    params = [p for p in core.parameters() if p.grad is not None]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")  # inf: measure, no clip
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0


def _check_finite(total: Tensor, step: int, dist: DistContext, checkpoint: Path) -> None:
    finite = torch.isfinite(total.detach()).float().reshape(1)
    if dist.enabled:
        finite = dist.all_reduce_sum(finite) / dist.world_size
    if finite.item() < 1.0:
        where = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
        raise PparError(
            f"The loss became {total.item()} at step {step + 1}; training stopped and {where}. "
            "Lower the learning rate (--set optim.lr=...) or check the data with `ppar data check`."
        )
