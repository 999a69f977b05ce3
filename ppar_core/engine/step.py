"""One optimizer step: micro-batches under autocast, the PPAR loss, backward, clip, step, then the VTP memory and
the reliability statistics (applied after the optimizer step, so that a step is all or nothing).

A step that does not log never waits for the device (DESIGN.md section 6: the GPU step is 20-90 ms, and every read
of a device value stalls the host until the queued work is done, leaving the GPU idle while the host catches up).
The loss terms and the gradient norm stay device tensors, added up over micro-batches, and are read in ONE transfer
on steps that log. The finiteness of the loss is checked on the device at every micro-batch; the first non-finite
step and its loss are remembered there (`_NonFinite`) and read with the terms, on steps that log or that a checkpoint
or an evaluation follows, and by `check_losses` before every checkpoint. So training stops with today's message at
the next read, and no checkpoint ever holds the weights of a step whose loss was not finite.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.config import TrainConfig
from ppar_core.data.device_photometric import photometric_on_device
from ppar_core.engine.distributed import DistContext
from ppar_core.engine.optim import lr_at, set_lr
from ppar_core.errors import PparError
from ppar_core.losses import TENSOR_TERMS, ppar_loss
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.normalize import normalize
from ppar_core.reliability import WeightStats
from ppar_core.runtime import autocast

# images (B,3,h,w) uint8, labels (B,h,w) uint8, bad names per sample, source index per sample (B,) int64,
# photometric parameters (B,5) float32 for the device (`TrainSamples`)
Batch = tuple[Tensor, Tensor, list[str], Tensor, Tensor]


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
    log: bool,
    check_finite: bool = False,
    source_classes: Tensor | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """One optimizer step over `accum_steps` micro-batches -> (the log record, bad sample names).

    `model` is what runs the forward (the DDP wrapper, or `core` itself); `core` owns the OTP, the VTP memory and the
    statistics. `log`: the record holds lr, the loss terms averaged over the micro-batches and the gradient norm;
    otherwise it is empty and the step does not wait for the device. `check_finite`: a checkpoint or an evaluation
    follows this step, so whether the loss stayed finite is read even though the step does not log. Either read
    raises PparError (before the optimizer step) if the loss was not finite at this step or at any earlier step not
    read yet, naming the first such step and `checkpoint`. Every rank must pass the same `log` and `check_finite`.
    `source_classes` (S,K) bool on the device (`ppar_core.data.registry.source_class_table`): the classes each
    source labels, so that the loss masks the others per image; None when every source labels the same classes.
    """
    lr = lr_at(step, total=cfg.iters, cfg=cfg.optim)
    set_lr(optimizer, lr)
    progress = step / cfg.iters
    accum = cfg.optim.accum_steps
    non_finite = _non_finite_record(core, dist.device, checkpoint)
    # The averaged tensor terms, float64 on the device: the float32 terms / accum summed in float64 are the sums the
    # log always had (it added Python floats), and nothing is read until the step logs.
    sums = torch.zeros(len(TENSOR_TERMS), dtype=torch.float64, device=dist.device)
    schedule_sums: dict[str, float] = {}  # beta, q, weight_ramp: host floats already
    bad: list[str] = []
    pending: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []
    for micro in range(accum):
        pixels, labels_u8, passed, source, photometric = next(batches)
        bad += [name for names in passed for name in names.split("\n") if name]
        pixels = pixels.to(dist.device, non_blocking=True)
        if cfg.data.augment.photometric_by_device:
            pixels = photometric_on_device(pixels, photometric.to(dist.device, non_blocking=True))
        images = normalize(pixels)
        labels = labels_u8.to(dist.device, non_blocking=True).long()
        class_mask = None if source_classes is None else source_classes[source.to(dist.device, non_blocking=True)]
        sync = micro == accum - 1 or not dist.enabled
        ctx = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
        with ctx:
            with autocast(dist.device):
                output = model(images)
            logits = F.interpolate(output.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            terms = ppar_loss(
                logits, labels, output.dense.float(), core.otp, output.vtp.float(), cfg=cfg.loss, progress=progress,
                class_mask=class_mask,
            )  # fmt: skip
            non_finite.record(terms.total, step, dist)
            (terms.total / accum).backward()
        sums += terms.stacked().double() / accum
        for key, value in terms.schedule_floats().items():
            schedule_sums[key] = schedule_sums.get(key, 0.0) + value / accum
        labels_small = F.interpolate(labels[:, None].float(), size=output.dense.shape[-2:], mode="nearest")[:, 0]
        pending.append((output.dense.detach().float(), labels_small.long(), terms.weights, labels))
    grad_norm = _clip(core, cfg, dist.device)
    record: dict[str, Any] = {}
    if log or check_finite:
        # The step's one device->host transfer. Before the optimizer step: a non-finite loss found here stops the step
        # before its update is applied.
        values = torch.cat([sums, grad_norm.detach().double().reshape(1), non_finite.packed()]).tolist()
        non_finite.check(values[-2:])
        if log:
            logged = dict(zip(TENSOR_TERMS, values[: len(TENSOR_TERMS)], strict=True))
            record = {"lr": lr, **logged, **schedule_sums, "grad_norm": values[len(TENSOR_TERMS)]}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    reducer = dist.all_reduce_sum if dist.enabled else None
    for dense, labels_small, weights, labels in pending:
        # check_labels=False: the loss's cross-entropy has already rejected any label outside [0, K) and the ignore
        # value; the check would be a host sync per micro-batch.
        core.vtp.update(dense, labels_small, ignore_index=cfg.loss.ignore_index, all_reduce=reducer, check_labels=False)
        if weights is not None:
            increment = WeightStats.zeros(core.num_classes, device=dist.device)
            increment.update(weights, labels, w_max=cfg.loss.w_max, ignore_index=cfg.loss.ignore_index)
            # All-reduced, so every rank (and so rank 0's checkpoint) holds the statistics of all pixels.
            if reducer is not None:
                increment.all_reduce(reducer)
            core.weight_stats.add_(increment)
    return record, bad


def _clip(core: PPARSegmentor, cfg: TrainConfig, device: torch.device) -> Tensor:
    # The total gradient norm as a device scalar (clip_grad_norm_ computes and applies the clip on the device).
    params = [p for p in core.parameters() if p.grad is not None]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf")  # inf: measure, no clip
    if not params:
        return torch.zeros((), device=device)
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


@dataclass
class _NonFinite:
    """The first non-finite loss of one model's training, kept on the device until a step reads it.

    step: float64 scalar, the 1-based number of the first step whose loss was not finite (0 while every loss was);
    loss: float64 scalar, that loss (this rank's). `unread`: a loss was recorded since the last read; `seen`: what a
    read found, (step, loss), once one found a non-finite loss. `checkpoint` is named in the error.
    """

    step: Tensor
    loss: Tensor
    checkpoint: Path
    unread: bool = False
    seen: tuple[int, float] | None = None

    def record(self, total: Tensor, step: int, dist: DistContext) -> None:
        """Note `total` of one micro-batch of step `step` (0-based), on the device: no host sync."""
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if dist.enabled:  # every rank stops, whichever rank's loss was not finite
            finite = dist.all_reduce_sum(finite) / dist.world_size
        first = (finite[0] < 1.0) & (self.step == 0)
        self.step = torch.where(first, float(step + 1), self.step)
        self.loss = torch.where(first, total.detach().double(), self.loss)
        self.unread = True

    def packed(self) -> Tensor:
        """(2,) float64 [step, loss], to read with other values in one transfer."""
        return torch.stack([self.step, self.loss])

    def check(self, packed: list[float] | None = None) -> None:
        """Raise PparError if a recorded loss was not finite. `packed`: what `packed()` held, read by the caller with
        its own values; None: read it here (one transfer), if anything was recorded since the last read."""
        if packed is None and self.unread:
            packed = self.packed().tolist()
        if packed is not None:
            self.unread = False
            if packed[0] > 0:
                self.seen = (int(packed[0]), packed[1])
        if self.seen is None:
            return
        step, loss = self.seen
        checkpoint = self.checkpoint
        # Nothing is saved after a non-finite step (see check_losses), so an existing checkpoint is a good one.
        where = f"the last good checkpoint is {checkpoint}" if checkpoint.exists() else "no checkpoint was written yet"
        raise PparError(
            f"The loss became {loss} at step {step}; training stopped and {where}. "
            "Lower the learning rate (--set optim.lr=...) or check the data with `ppar data check`."
        )


# One record per model (weakly held: it goes with the model); made by the model's first training step.
_NON_FINITE: weakref.WeakKeyDictionary[nn.Module, _NonFinite] = weakref.WeakKeyDictionary()


def _non_finite_record(core: nn.Module, device: torch.device, checkpoint: Path) -> _NonFinite:
    record = _NON_FINITE.get(core)
    if record is None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        record = _NON_FINITE[core] = _NonFinite(step=zero, loss=zero.clone(), checkpoint=checkpoint)
    record.checkpoint = checkpoint
    return record


def check_losses(core: nn.Module) -> None:
    """Raise PparError if a loss of `core`'s training was not finite: call it before every checkpoint, so that none
    holds weights trained on such a loss (e.g. a run stopped by Ctrl-C right after a step that did not log). Reads
    the device only if a step recorded a loss since the last read; every rank must call it."""
    record = _NON_FINITE.get(core)
    if record is not None:
        record.check()
