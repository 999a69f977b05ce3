"""Optional TensorBoard logging of a training run (`--log tensorboard`, the `tensorboard` extra).

metrics.jsonl stays the source of truth; the event files in `<run>/tensorboard/` mirror it: every logged scalar
(losses, lr, mean weight, beta, q, weight ramp, throughput) under `train/`, every evaluation's per-target mIoU and
their mean under `eval/`, and at each evaluation a few overlays per target (`overlays/<target>`) and the
reliability-weight histogram of each class (`weights/<class>`). `tensorboard --logdir runs/` shows every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppar_core.errors import PparError
from ppar_core.inference import infer_logits
from ppar_core.labels import CLASS_NAMES
from ppar_core.normalize import image_to_tensor
from ppar_core.reliability import WeightStats, hist_edges
from ppar_core.visualize import overlay

TENSORBOARD_HINT = "pip install 'ppar[tensorboard]'"
FOLDER = "tensorboard"


def require_tensorboard() -> None:
    """PparError naming the install when the tensorboard package is missing (checked when a run starts)."""
    try:
        import tensorboard  # noqa: F401  (optional: only `--log tensorboard` needs it)
    except ImportError:
        raise PparError(
            f"--log tensorboard needs the tensorboard package, which is not installed: {TENSORBOARD_HINT}."
        ) from None


class TensorBoardLog:
    """Writes one run's event files (rank 0 only)."""

    def __init__(self, run: Path, *, w_max: float) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: lazily, as it is optional

        self.writer = SummaryWriter(log_dir=str(Path(run) / FOLDER))
        self.w_max = w_max  # the histograms' range (the loss's w_max)

    def record(self, record: Mapping[str, Any]) -> None:
        """A metrics.jsonl record: a training step's scalars, or an evaluation's mIoU per target and mean."""
        step = int(record["step"])
        if "eval" in record:
            for target, miou in record["eval"].items():
                if miou is not None:
                    self.writer.add_scalar(f"eval/{target}", miou, step)
            if record.get("mean_miou") is not None:
                self.writer.add_scalar("eval/mean_miou", record["mean_miou"], step)
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(f"train/{key}", value, step)

    def overlays(self, step: int, target: str, pictures: Sequence[np.ndarray]) -> None:
        """A few (H,W,3) uint8 pictures of one target (image, prediction), padded to one size."""
        if not pictures:
            return
        height = max(p.shape[0] for p in pictures)
        width = max(p.shape[1] for p in pictures)
        batch = np.zeros((len(pictures), height, width, 3), dtype=np.uint8)
        for i, picture in enumerate(pictures):
            batch[i, : picture.shape[0], : picture.shape[1]] = picture
        self.writer.add_images(f"overlays/{target}", batch, step, dataformats="NHWC")

    def weights(self, step: int, stats: WeightStats, class_names: Sequence[str], *, w_max: float) -> None:
        """The applied-weight histogram of every class with pixels (the statistics the checkpoint carries)."""
        edges = hist_edges(w_max).numpy()
        hist, total, count = (t.detach().cpu().double().numpy() for t in (stats.hist, stats.sum, stats.count))
        for k, name in enumerate(class_names):
            if count[k] <= 0:
                continue
            centres = (edges[:-1] + edges[1:]) / 2
            self.writer.add_histogram_raw(
                f"weights/{name}",
                min=float(edges[0]),
                max=float(edges[-1]),
                num=float(count[k]),
                sum=float(total[k]),
                sum_squares=float((hist[k] * centres**2).sum()),  # from bin centres: the counts keep no more
                bucket_limits=edges[1:].tolist(),
                bucket_counts=hist[k].tolist(),
                global_step=step,
            )

    def evaluation(self, step: int, model: Any, targets: Sequence[Any], *, device: Any, per_target: int = 2) -> None:
        """At an evaluation: the overlays of the first `per_target` images of each target (ground truth above the
        prediction) and the model's reliability-weight histograms."""
        for target in targets:
            pictures = []
            for index in range(min(per_target, len(target.dataset))):
                sample = target.dataset[index]
                scores = infer_logits(
                    model.infer,
                    image_to_tensor(sample.image, device=device),
                    target.protocol,
                    num_classes=model.num_classes,
                )
                prediction = scores[0].max(dim=0).indices.to(torch.uint8).cpu().numpy()
                pictures.append(
                    np.concatenate([overlay(sample.image, sample.label), overlay(sample.image, prediction)])
                )
            self.overlays(step, target.name, pictures)
        self.weights(step, model.weight_stats, CLASS_NAMES, w_max=self.w_max)

    def close(self) -> None:
        self.writer.close()
