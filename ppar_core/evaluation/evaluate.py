"""Evaluate a model on segmentation datasets: normalise, infer, argmax, accumulate a confusion matrix.

Used by the trainer's periodic evaluation and by `ppar eval`. The model is a plain callable
`model_fn(images (B,3,h,w) float) -> logits (B,K,h,w)` (see `ppar_core.inference`), so evaluation does not
depend on how the model was built. Under DistributedDataParallel each rank takes every world_size-th image and the
confusion matrices are summed once at the end, so every image is counted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ppar_core.data.transforms import CLIP_MEAN, CLIP_STD
from ppar_core.inference import InferenceConfig, ModelFn, infer_logits
from ppar_core.errors import PparError
from ppar_core.metrics import ConfusionAccumulator, SegMetrics

if TYPE_CHECKING:
    from ppar_core.data import Sample, SegDataset


class DistReducer(Protocol):
    """What evaluation needs from a process group: this process's rank, their number, and a summing all-reduce."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Return the element-wise sum of `tensor` over all ranks (may work in place)."""
        ...


def image_to_tensor(image: np.ndarray, *, device: torch.device | str) -> Tensor:
    """(H,W,3) uint8 RGB -> (1,3,H,W) float32 on `device`, normalised with the CLIP mean/std.

    The uint8 pixels are moved first and converted on the device: a quarter of the bytes cross the bus, and the
    float image is made where the model needs it. Same values as `transforms.to_clip_tensor_layout` (to float
    rounding).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H,W,3) uint8 image, got {image.shape} {image.dtype}")
    pixels = torch.from_numpy(_writable(image)).to(device)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1) * 255.0
    return (pixels.permute(2, 0, 1).unsqueeze(0).float() - mean) / std


def _writable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable view or copy: torch warns on read-only arrays (PIL's decoded images are read-only)."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def _load(dataset: Any, index: int) -> Sample | None:
    """Sample `index`, or None when it is bad and the dataset skips bad samples.

    `SegDataset.__getitem__` with skip_bad returns the NEXT good sample in place of a bad one, which is right for
    training but would count that image twice here; so a bad sample is recorded in `dataset.bad` and skipped.
    """
    if not getattr(dataset, "skip_bad", False) or not hasattr(dataset, "load"):
        return dataset[index]
    try:
        return dataset.load(index)
    except PparError:
        dataset.bad.append(dataset.sample_name(index) if hasattr(dataset, "sample_name") else str(index))
        return None


def evaluate_dataset(
    model_fn: ModelFn,
    dataset: SegDataset | Sequence[Sample],
    cfg: InferenceConfig,
    *,
    num_classes: int,
    device: torch.device | str,
    max_images: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dist: DistReducer | None = None,
    accumulate_device: torch.device | str | None = None,
) -> SegMetrics:
    """Dataset-level metrics (percent) of `model_fn` on `dataset` (a `SegDataset` or any sequence of `Sample`).

    Each sample's image (H,W,3) uint8 is normalised on `device`, scored by `infer_logits` at its original size,
    argmaxed, and compared with its label (H,W) uint8 trainIds on `device`. `max_images` evaluates the first N
    images only. `progress(done, total)` is called after each image of this rank. With `dist`, rank r takes images
    r, r + world_size, ... and the matrices (and image counts) are summed over ranks: every rank returns the same
    totals. `accumulate_device` (default `device`) holds the full-resolution scores; pass the CPU for very large
    images on a small GPU.
    """
    cfg.validate()
    device = torch.device(device)
    total = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    rank, world_size = (0, 1) if dist is None else (int(dist.rank), int(dist.world_size))
    indices = range(rank, total, world_size)
    accumulator = ConfusionAccumulator(num_classes, device=device)
    for done, index in enumerate(indices, start=1):
        sample = _load(dataset, index)
        if sample is not None:
            if sample.label.shape != sample.image.shape[:2]:
                raise PparError(
                    f"Sample {sample.name} of {getattr(dataset, 'name', 'the dataset')} has an image of "
                    f"{sample.image.shape[1]}x{sample.image.shape[0]} but a label of {sample.label.shape[1]}x"
                    f"{sample.label.shape[0]}: fix or remove the pair."
                )
            image = image_to_tensor(sample.image, device=device)
            scores = infer_logits(model_fn, image, cfg, num_classes=num_classes, accumulate_device=accumulate_device)
            pred = scores[0].argmax(dim=0)
            label = torch.from_numpy(_writable(sample.label)).to(device)
            accumulator.update(pred, label)
        if progress is not None:
            progress(done, len(indices))
    if dist is not None:
        accumulator.reduce(dist.all_reduce_sum)
    return accumulator.compute()


def evaluate_targets(
    model_fn: ModelFn,
    datasets: Mapping[str, SegDataset | Sequence[Sample]],
    cfg: InferenceConfig,
    *,
    num_classes: int,
    device: torch.device | str,
    max_images: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    dist: DistReducer | None = None,
    accumulate_device: torch.device | str | None = None,
) -> dict[str, SegMetrics]:
    """`evaluate_dataset` on each target, keyed like `datasets` (in its order).

    `progress(target, done, total)` reports per target. Take the mean over targets with `mean_miou`.
    """
    results: dict[str, SegMetrics] = {}
    for name, dataset in datasets.items():
        report = None if progress is None else _bind_progress(progress, name)
        results[name] = evaluate_dataset(
            model_fn,
            dataset,
            cfg,
            num_classes=num_classes,
            device=device,
            max_images=max_images,
            progress=report,
            dist=dist,
            accumulate_device=accumulate_device,
        )
    return results


def _bind_progress(progress: Callable[[str, int, int], None], name: str) -> Callable[[int, int], None]:
    # A named function rather than a lambda in the loop, so each target keeps its own name.
    def report(done: int, total: int) -> None:
        progress(name, done, total)

    return report


def mean_miou(results: Mapping[str, SegMetrics] | Sequence[SegMetrics]) -> float:
    """Mean of the targets' mIoU (percent), skipping targets whose mIoU is undefined; NaN if none is defined."""
    values = list(results.values()) if isinstance(results, Mapping) else list(results)
    defined = [m.miou for m in values if not math.isnan(m.miou)]
    return sum(defined) / len(defined) if defined else math.nan
