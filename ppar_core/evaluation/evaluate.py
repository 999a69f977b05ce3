"""Score a model on targets: normalise, infer, argmax, accumulate a confusion matrix per target.

One path for every caller: training's periodic and final evaluation and `ppar eval` (`evaluate_checkpoint`) both
iterate `build_targets(...)` with `evaluate_targets` and build their report with `build_eval_report`. The model is a
plain callable `model_fn(images (B,3,h,w) float) -> logits (B,K,h',w')` (see `ppar_core.inference`), so evaluation
does not depend on how the model was built. Under DistributedDataParallel each rank takes every world_size-th image
and the confusion matrices are summed once at the end, so every image is counted exactly once.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from ppar_core.errors import PparError
from ppar_core.evaluation.report import build_eval_report
from ppar_core.evaluation.targets import Target, build_targets
from ppar_core.inference import ModelFn, infer_logits
from ppar_core.loading import read_run_config, segmentor_from_checkpoint
from ppar_core.metrics import ConfusionAccumulator, SegMetrics
from ppar_core.normalize import image_to_tensor, writable
from ppar_core.progress import ProgressFn
from ppar_core.protocol import InferenceConfig
from ppar_core.runtime import data_workers, resolve_device


class DistReducer(Protocol):
    """What evaluation needs from a process group: this process's rank, their number, and a summing all-reduce."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Return the element-wise sum of `tensor` over all ranks (may work in place)."""
        ...


def evaluate_dataset(
    model_fn: ModelFn,
    dataset: Any,
    cfg: InferenceConfig,
    *,
    num_classes: int,
    device: torch.device | str,
    max_images: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "eval",
    dist: DistReducer | None = None,
    accumulate_device: torch.device | str | None = None,
    skip_bad: bool = False,
    workers: int = 0,
) -> SegMetrics:
    """Dataset-level metrics (percent) of `model_fn` on `dataset` (a `SegDataset` or any sequence of `Sample`).

    Each sample's image (H,W,3) uint8 is normalised on `device`, scored by `infer_logits` at its original size,
    reduced to labels with `max(dim).indices` (the same result as argmax, several times faster on the CPU) and
    compared with its label (H,W) uint8 trainIds on `device`. `max_images` evaluates the first N images only.
    `progress(task, done, total)` is called after each image of this rank. With `dist`, rank r takes images
    r, r + world_size, ... and the matrices (and image counts) are summed over ranks: every rank returns the same
    totals. `accumulate_device` (default `device`) holds the full-resolution scores; pass the CPU for very large
    images on a small GPU. `skip_bad`: a sample that cannot be read is left out and named in `skipped` instead of
    stopping the evaluation. `workers` > 0 decodes the next images in that many threads while the model runs.
    """
    cfg.validate()
    device = torch.device(device)
    total = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    rank, world_size = (0, 1) if dist is None else (int(dist.rank), int(dist.world_size))
    indices = range(rank, total, world_size)
    accumulator = ConfusionAccumulator(num_classes, device=device)
    skipped: list[str] = []
    for done, (name, sample, problem) in enumerate(_samples(dataset, indices, workers=workers), start=1):
        if problem is not None:
            if not skip_bad:
                raise PparError(problem)
            skipped.append(name)
        else:
            image = image_to_tensor(sample.image, device=device)
            scores = infer_logits(model_fn, image, cfg, num_classes=num_classes, accumulate_device=accumulate_device)
            pred = scores[0].max(dim=0).indices
            accumulator.update(pred, torch.from_numpy(writable(sample.label)).to(device))
        if progress is not None:
            progress(task, done, len(indices))
    if dist is not None:
        accumulator.reduce(dist.all_reduce_sum)
    return accumulator.compute(skipped=skipped)


def _load(dataset: Any, index: int) -> tuple[str, Any, str | None]:
    """(name, sample or None, the one-sentence reason it could not be read or None)."""
    name = dataset.sample_name(index) if hasattr(dataset, "sample_name") else str(index)
    try:
        return name, dataset[index], None
    except PparError as exc:
        return name, None, str(exc)


def _samples(dataset: Any, indices: Sequence[int], *, workers: int) -> Iterator[tuple[str, Any, str | None]]:
    """The samples in order; with workers, decoded ahead by that many threads (two images each in flight).

    Threads, not processes: decoding (OpenCV, PIL) and the model both release the GIL, a thread starts at once (a
    DataLoader worker process costs seconds to start, more than it saves on a few hundred images), and nothing is
    pickled.
    """
    if workers <= 0 or len(indices) < 2:
        yield from (_load(dataset, i) for i in indices)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ppar-eval-decode") as pool:
        pending: deque[Future[tuple[str, Any, str | None]]] = deque()
        upcoming = iter(indices)
        for index in itertools.islice(upcoming, 2 * workers):
            pending.append(pool.submit(_load, dataset, index))
        while pending:
            done = pending.popleft().result()
            for index in itertools.islice(upcoming, 1):
                pending.append(pool.submit(_load, dataset, index))
            yield done


def evaluate_targets(
    model_fn: ModelFn,
    targets: Sequence[Target],
    *,
    num_classes: int,
    device: torch.device | str,
    max_images: int | None = None,
    progress: ProgressFn | None = None,
    dist: DistReducer | None = None,
    accumulate_device: torch.device | str | None = None,
    skip_bad: bool = False,
    workers: int = 0,
) -> dict[str, SegMetrics]:
    """`evaluate_dataset` on each target with its own protocol -> {target name: metrics}, in order.

    `progress` reports task `eval <name>`. `build_eval_report` turns the result into the report (groups, means).
    """
    results: dict[str, SegMetrics] = {}
    for target in targets:
        if target.protocol is None:
            raise ValueError(f"target {target.name} has no inference protocol")
        results[target.name] = evaluate_dataset(
            model_fn,
            target.dataset,
            target.protocol,
            num_classes=num_classes,
            device=device,
            max_images=max_images,
            progress=progress,
            task=f"eval {target.name}",
            dist=dist,
            accumulate_device=accumulate_device,
            skip_bad=skip_bad,
            workers=workers,
        )
    return results


def evaluate_checkpoint(
    path: str | Path,
    *,
    targets: Sequence[str] | None = None,
    data_root: str | Path | None = None,
    split: str | None = None,
    mapillary_map: str | None = None,
    inference: Mapping[str, Any] | None = None,
    device: str = "auto",
    max_images: int | None = None,
    progress: ProgressFn | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on `targets` (default: its config's `data.targets`) -> the report dict.

    `inference` replaces fields of the checkpoint's `eval` InferenceConfig (mode, crop_size, stride, scale,
    long_side, tta, batch_size). `split`, `mapillary_map` and `data_root` default to the checkpoint's data config.
    Every target's dataset is built (and its layout checked) before the model is loaded. `workers` decode images
    ahead of the model (default: the run's `data.workers`, unset = the usable cores minus one).
    """
    cfg, checkpoint = read_run_config(path)
    changes = {k: v for k, v in (inference or {}).items() if v is not None}
    base = replace(cfg.eval, **changes).validate()
    split = split or cfg.data.target_split
    mapillary_map = mapillary_map or cfg.data.mapillary_map
    chosen = build_targets(
        list(targets) if targets is not None else list(cfg.data.targets),
        split=split,
        data_root=data_root or cfg.data.data_root,
        mapillary_map=mapillary_map,
        protocol=base,
    )
    dev = resolve_device(device)
    model = segmentor_from_checkpoint(checkpoint, cfg, device=dev)
    if workers is None:
        workers = data_workers(cfg.data.workers)
    results = evaluate_targets(
        model.infer,
        chosen,
        num_classes=model.num_classes,
        device=dev,
        max_images=max_images,
        progress=progress,
        skip_bad=cfg.data.skip_bad,
        workers=workers,
    )
    return build_eval_report(
        chosen,
        results,
        inference=base,
        split=split,
        mapillary_map=mapillary_map,
        checkpoint=Path(path),
        step=checkpoint.step,
        sources=cfg.data.source,
        max_images=max_images,
    )
