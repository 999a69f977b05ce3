"""Reliability analysis: which source pixels did a PPAR run trust, and which did it discount?

Two sources, one report shape (`WeightReport`):

- `source="checkpoint"`: the statistics training kept (model buffers `weight_hist`, `weight_sum`, `weight_count`,
  `weight_low`, `weight_high`, saved in every checkpoint), read without building the model. They cover every
  applied weight, including the warm-up steps, during which training applies (and records) w = 1.
- `source="data"`: weights computed afresh by the model for labelled images, with exactly the loss's own functions
  (`losses.reliability`, `losses.reliability_weights`) and the run's loss options, fully ramped in (ramp = 1, as after
  the warm-up). Each image is its own batch, so the mean normalisation `r / mean_valid(r)` runs over one image where
  training ran it over a batch of crops.

A run trained without reweighting (`reweight none` or `method erm`) applied no weights: its statistics are empty, and
its data analysis shows what the OTP reliability would have been (mode `otp` with the run's `tau_w`, `eta`, `w_min`,
`w_max`, which are LossConfig's defaults unless the run changed them).

Images: `ppar_core.data` dataset specs; your own images are `folder=PATH`, with `PATH/images/*` and `PATH/labels/*.png`
(trainIds, or another encoding via `id_map`), paired by file stem. Each image is resized as training resized it
(`data.augment.resize` of the run, when set; `resize` changes that), then zero-padded at the bottom/right to a multiple
of the backbone's stride (image 0, label 255, as training pads its crops); the weight map is cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppar_core.analysis.plots import write_class_plots, write_weight_overlay
from ppar_core.analysis.report import PLOTS_HINT, ImageWeights, StepSchedule, WeightReport
from ppar_core.config import parse_hxw
from ppar_core.data import build_dataset
from ppar_core.data.base import spread_indices
from ppar_core.data.registry import parse_spec, source_class_table
from ppar_core.data.transforms import pad_to
from ppar_core.data.transforms import resize as resize_pair
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES, IGNORE_INDEX
from ppar_core.loading import load_segmentor, read_run_config
from ppar_core.losses import LossConfig, reliability, reliability_weights, schedule
from ppar_core.normalize import image_to_tensor
from ppar_core.progress import ProgressFn
from ppar_core.reliability import LOW_WEIGHT, WeightStats
from ppar_core.runtime import autocast, resolve_device


@dataclass(frozen=True)
class AnalysisConfig:
    """What `analyze_weights` computes. With `data` None only the checkpoint's statistics are read."""

    data: str | None = None  # dataset spec NAME or NAME=PATH; your own images: folder=PATH (images/, labels/)
    split: str = "train"  # the split the images come from (the source domain's training split by default)
    num_images: int = 8  # images analysed, evenly spaced over the split (all of them when it has fewer)
    data_root: str | None = None  # default: the run's data.data_root, else $PPAR_DATA
    id_map: str = "trainid"  # label encoding of `folder` datasets: trainid, labelid or a JSON file
    resize: str = "train"  # "train" (the run's data.augment.resize), "none", or "HxW" (e.g. 720x1280)
    device: str = "auto"  # auto, cpu, cuda, cuda:N

    def validate(self) -> AnalysisConfig:
        """Raise `PparError` naming the first bad field; returns self so it chains."""
        if self.num_images < 1:
            raise PparError(f"--num must be at least 1, got {self.num_images}.")
        parse_resize(self.resize, run_resize=None)
        return self


def analysis_loss_config(loss: LossConfig) -> tuple[LossConfig, bool]:
    """The loss options the analysis computes weights with -> (config, weights_applied).

    A run with reweighting keeps its own options; a run without (`reweight none`, `method erm`) gets mode `otp`
    with its other options, to show what the OTP reliability would have been.
    """
    applied = loss.method != "erm" and loss.reweight != "none"
    if applied:
        return loss, True
    return replace(loss, method="ppar", reweight="otp"), False


def step_schedule(loss: LossConfig, *, iters: int, steps: int) -> StepSchedule:
    """Count the first `steps` of an `iters`-step run by their weight ramp, with the trainer's own `schedule`."""
    warmup = ramp = full = 0
    for step in range(max(0, steps)):
        rho = schedule(step / iters, loss)[2]
        if rho <= 0:
            warmup += 1
        elif rho < 1:
            ramp += 1
        else:
            full += 1
    return StepSchedule(warmup=warmup, ramp=ramp, full=full)


def load_weight_stats(path: str | Path) -> WeightReport:
    """The reliability statistics stored in a checkpoint, per class (source "checkpoint"); builds no model."""
    path = Path(path)
    cfg, checkpoint = read_run_config(path)
    missing = [name for name in WeightStats.buffer_names() if name not in checkpoint.tensors]
    if missing:
        raise PparError(
            f"Checkpoint {path} has no reliability statistics ({', '.join(missing)} missing): it was not written by "
            "`ppar train`; analyse images with --data instead."
        )
    _, applied = analysis_loss_config(cfg.loss)
    classes = WeightStats.from_buffers(checkpoint.tensors).summarize(CLASS_NAMES, w_max=cfg.loss.w_max)
    return WeightReport(
        source="checkpoint",
        sources=list(cfg.data.source),
        checkpoint=path,
        step=checkpoint.step,
        method=cfg.loss.method,
        reweight=cfg.loss.reweight,
        weights_applied=applied,
        mode=cfg.loss.reweight if applied else "none",
        w_max=cfg.loss.w_max,
        classes=classes,
        schedule=step_schedule(cfg.loss, iters=cfg.iters, steps=checkpoint.step) if applied else None,
    )


def weight_maps(
    model: Any, images: Tensor, labels: Tensor, *, loss: LossConfig, class_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The loss's own per-pixel weights for a batch, fully ramped in -> (weights, reliability), (B,H,W) float32.

    model: a `PPARSegmentor` in eval mode; images (B,3,H,W) float CLIP-normalised, H and W multiples of the stride;
    labels (B,H,W) long, 255 ignored; class_mask (B,K) bool, the classes the images' source labels, as the loss of
    a run on sources that label different classes used it (None: all). `loss.reweight` must be `otp` or `ratio`.
    Weights and reliability are 0 at ignored pixels; the mean normalisation runs over the whole batch, as in
    `ppar_loss`.
    """
    if loss.reweight not in ("otp", "ratio"):
        raise ValueError(f"weight maps need reweight 'otp' or 'ratio', got {loss.reweight!r}")
    with torch.inference_mode(), autocast(images.device):
        output = model(images)
    # The same inputs the trainer hands to ppar_loss: float32 dense embeddings and VTP, the model's OTP buffer.
    r = reliability(
        output.dense.float(),
        labels,
        model.otp,
        output.vtp.float(),
        mode=loss.reweight,
        tau_w=loss.tau_w,
        ignore_index=loss.ignore_index,
        class_mask=class_mask,
    )
    valid = labels != loss.ignore_index
    weights = reliability_weights(r, valid, eta=loss.eta, w_min=loss.w_min, w_max=loss.w_max, ramp=1.0)
    return weights, r


def parse_resize(text: str, *, run_resize: tuple[int, int] | None) -> tuple[int, int] | None:
    """`train` -> the run's resize, `none` -> None, `HxW` -> (H, W)."""
    value = text.strip().lower()
    if value == "train":
        return run_resize
    if value == "none":
        return None
    size = parse_hxw(value)
    if size is None:
        raise PparError(f"--resize {text!r} is not understood: use train, none, or HxW such as 720x1280.")
    return size


def prepare_pair(
    image: np.ndarray, label: np.ndarray, *, stride: int, resize: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Resize (optional) and pad a pair to multiples of `stride` -> (image, label, (h, w) before padding).

    image (H,W,3) uint8, label (H,W) uint8; padding is at the bottom/right, image 0 and label 255 (ignored), as
    training pads its crops, so padded pixels get no weight and take no part in the normalisation.
    """
    if resize is not None:
        image, label = resize_pair(image, label, size=resize)
    height, width = label.shape
    padded = (math.ceil(height / stride) * stride, math.ceil(width / stride) * stride)
    image, label = pad_to(image, label, size=padded)
    return image, label, (height, width)


def image_summary(weights: np.ndarray, label: np.ndarray, *, file: str, name: str) -> ImageWeights:
    """Mean weight and low-weight share over the labelled pixels of one image; weights (H,W) float, label (H,W)."""
    valid = label != IGNORE_INDEX
    n = int(valid.sum())
    w = weights[valid].astype(np.float64)
    low = int((w < LOW_WEIGHT).sum())
    return ImageWeights(
        file=file,
        name=name,
        mean=float(w.mean()) if n else None,
        low_fraction=low / n if n else 0.0,
        low_pixels=low,
        pixels=n,
    )


def analyze_images(
    path: str | Path,
    *,
    config: AnalysisConfig,
    out: Path | None = None,
    progress: ProgressFn | None = None,
) -> WeightReport:
    """Compute weight maps afresh for `config.num_images` labelled images (source "data").

    With `out`, writes one heat-map overlay per image to `out/images/<name>.png`. `progress("weights", done,
    total)` reports progress.
    """
    config.validate()
    path = Path(path)
    if config.data is None:
        raise PparError("No images to analyse: pass --data DATASET or a folder with images/ and labels/.")
    model, cfg, checkpoint = load_segmentor(path, device=resolve_device(config.device))
    data_root = config.data_root or cfg.data.data_root  # the run's own data root unless told otherwise
    dataset = build_dataset(config.data, split=config.split, data_root=data_root, id_map=config.id_map)
    loss, applied = analysis_loss_config(cfg.loss)
    resize = parse_resize(config.resize, run_resize=cfg.data.augment.resize)
    device = next(model.parameters()).device
    stride = int(model.encoder.stride)
    class_mask = _training_class_mask(cfg.data.source, config.data, device)

    stats = WeightStats.zeros(len(CLASS_NAMES))
    images: list[ImageWeights] = []
    reliability_sum, reliability_pixels = 0.0, 0
    indices = spread_indices(len(dataset), config.num_images)
    for done, index in enumerate(indices, start=1):
        sample = dataset[index]
        image, label, (height, width) = prepare_pair(sample.image, sample.label, stride=stride, resize=resize)
        batch = image_to_tensor(image, device=device)
        labels = torch.from_numpy(label.astype(np.int64))[None].to(device)
        weights, r = weight_maps(model, batch, labels, loss=loss, class_mask=class_mask)
        w = weights[0, :height, :width].float().cpu()
        y = labels[0, :height, :width].cpu()
        valid = y != loss.ignore_index
        reliability_sum += float(r[0, :height, :width].cpu()[valid].double().sum())
        reliability_pixels += int(valid.sum())
        # The trainer's own accumulator, so bins and counts mean exactly what the checkpoint statistics mean.
        stats.update(w, y, w_max=loss.w_max, ignore_index=loss.ignore_index)
        shown_image, shown_label = image[:height, :width], label[:height, :width]
        images.append(image_summary(w.numpy(), shown_label, file=str(dataset.pairs[index][0]), name=sample.name))
        if out is not None:
            write_weight_overlay(
                Path(out) / "images" / f"{sample.name}.png", shown_image, shown_label, w.numpy(), w_max=loss.w_max
            )
        if progress is not None:
            progress("weights", done, len(indices))
    classes = stats.summarize(CLASS_NAMES, w_max=loss.w_max)
    # Most down-weighted first: the images a user should look at.
    images.sort(key=lambda item: (-item.low_fraction, item.mean if item.mean is not None else math.inf))
    files = [Path(out) / "images" / f"{item.name}.png" for item in images] if out is not None else []
    return WeightReport(
        source="data",
        sources=list(cfg.data.source),
        checkpoint=path,
        step=checkpoint.step,
        method=cfg.loss.method,
        reweight=cfg.loss.reweight,
        weights_applied=applied,
        mode=loss.reweight,
        w_max=loss.w_max,
        classes=classes,
        images=images,
        files=files,
        mean_reliability=reliability_sum / reliability_pixels if reliability_pixels else None,
    )


def _training_class_mask(sources: Sequence[str], spec: str, device: torch.device) -> Tensor | None:
    """(1, K) bool: the classes training's loss let `spec`'s images use, when `spec` is one of the run's `sources`
    and those label different classes (`source_class_table`); None otherwise (all classes, as in training)."""
    table = source_class_table(sources, len(CLASS_NAMES))
    if table is None or spec not in sources:
        return None
    return torch.from_numpy(table[list(sources).index(spec)][None]).to(device)


def analyze_by_source(
    path: str | Path,
    *,
    config: AnalysisConfig | None = None,
    out: Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, WeightReport]:
    """Weights computed afresh on `config.num_images` images of each of the run's training sources -> {spec:
    report}: which source's pixels the reliability trusted less. Each source is read from its training split;
    `out/<n>-<name>/` gets each source's PNGs."""
    config = (config or AnalysisConfig()).validate()
    cfg, _ = read_run_config(Path(path))
    reports: dict[str, WeightReport] = {}
    for number, spec in enumerate(cfg.data.source):
        one = replace(config, data=spec, split=cfg.data.source_split)
        where = None if out is None else Path(out) / f"{number}-{parse_spec(spec)[0]}"
        reports[spec] = analyze_weights(path, config=one, out=where, progress=progress)
    return reports


def analyze_weights(
    path: str | Path,
    *,
    config: AnalysisConfig | None = None,
    out: Path | None = None,
    progress: ProgressFn | None = None,
) -> WeightReport:
    """The whole analysis of one checkpoint: its statistics, or (with `config.data`) weights computed afresh.

    With `out`, writes the PNGs there: per-class histogram grid and mean-weight bar chart (matplotlib; when it is
    missing `plots_note` says how to get them) and, for data, one heat-map overlay per image.
    """
    config = (config or AnalysisConfig()).validate()
    if config.data is None:
        report = load_weight_stats(path)
    else:
        report = analyze_images(path, config=config, out=out, progress=progress)
    if out is not None:
        try:
            report.files = [*write_class_plots(report, Path(out)), *report.files]
        except ImportError:
            report.plots_note = (
                f"matplotlib is not installed, so no class plots were written: {PLOTS_HINT} to get them."
            )
    return report
