"""Reliability statistics: per class, a histogram of the weights training applied, their running sum, the pixel
count, and exact counts of low (< 0.5) and high (> 2.0) weights.

`WeightStats` holds them as named float64 tensors. A model registers them as buffers named `weight_<field>`
(`weight_hist`, `weight_sum`, ...), so every checkpoint carries them as safetensors entries, and builds a
`WeightStats` view over its buffers when it needs one (`WeightStats.from_buffers`). float64 because a long run on
512x512 crops passes billions of pixels through each counter, beyond float32's exact integer range (2^24).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NUM_BINS = 20
LOW_WEIGHT = 0.5  # a pixel is "down-weighted" below this
HIGH_WEIGHT = 2.0  # and "up-weighted" above this
BUFFER_PREFIX = "weight_"


def hist_edges(w_max: float, *, device: torch.device | str = "cpu") -> Tensor:
    """Bin edges (NUM_BINS + 1,) float64, uniform over [0, w_max]; the last bin is closed (w == w_max falls in it).

    Built as `i * (w_max / NUM_BINS)` with the last edge set to w_max exactly, the same arithmetic as
    `numpy.linspace`, so our bins and `numpy.histogram(range=(0, w_max))` agree to the last bit. Made on `device`
    directly: a copy from the host would be a blocking host->device transfer in every training step.
    """
    edges = torch.arange(NUM_BINS + 1, dtype=torch.float64, device=device) * (float(w_max) / NUM_BINS)
    edges[-1:].fill_(float(w_max))  # fill_ takes the number as a kernel argument: no host tensor to copy
    return edges


@dataclass
class WeightStats:
    """Per-class statistics of applied weights, K classes; all float64 on one device.

    hist (K, NUM_BINS): pixels per weight bin over `hist_edges(w_max)`; sum (K,): summed weights; count (K,):
    pixels; low (K,) / high (K,): pixels with weight < LOW_WEIGHT / > HIGH_WEIGHT.
    """

    hist: Tensor
    sum: Tensor
    count: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def zeros(cls, num_classes: int, *, device: torch.device | str = "cpu") -> WeightStats:
        def zero(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        return cls(
            zero(num_classes, NUM_BINS), zero(num_classes), zero(num_classes), zero(num_classes), zero(num_classes)
        )

    @classmethod
    def from_buffers(cls, tensors: Mapping[str, Tensor]) -> WeightStats:
        """The statistics stored under `buffer_names()` in a module's buffers or a checkpoint's tensors (views)."""
        return cls(**{f.name: tensors[BUFFER_PREFIX + f.name] for f in dataclasses.fields(cls)})

    @staticmethod
    def buffer_names() -> tuple[str, ...]:
        """The buffer / checkpoint tensor names: `weight_hist`, `weight_sum`, `weight_count`, ..."""
        return tuple(BUFFER_PREFIX + f.name for f in dataclasses.fields(WeightStats))

    def buffers(self) -> dict[str, Tensor]:
        """name -> tensor, named as `buffer_names()`."""
        return {BUFFER_PREFIX + f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def num_classes(self) -> int:
        return int(self.hist.shape[0])

    def update(self, weights: Tensor, labels: Tensor, *, w_max: float, ignore_index: int = 255) -> None:
        """Add one batch of applied weights, in place; vectorised, fixed shapes, no host sync.

        weights (B,H,W) float; labels (B,H,W) long. Only pixels with a label in [0, K) count (so `ignore_index` and
        any stray value are skipped). Weights above w_max (possible only when w_max < 1) go to the last bin.
        """
        num_classes, device = self.num_classes, self.hist.device
        w = weights.detach().reshape(-1).to(device=device, dtype=torch.float64)
        y = labels.detach().reshape(-1).to(device=device, dtype=torch.long)
        keep = (y != ignore_index) & (y >= 0) & (y < num_classes)
        # The skipped pixels are not removed (a boolean selection waits for the device to count them): they are added
        # into an extra class row K, dropped at the end. index_add_ into (K+1, ...) replaces bincount, whose output
        # size is the largest label, read back to the host on CUDA.
        row = torch.where(keep, y, num_classes)
        edges = hist_edges(w_max, device=device)
        # bucketize(right=True) - 1 puts w in bin i when edges[i] <= w < edges[i+1]; clamping closes the last bin.
        bins = (torch.bucketize(w, edges, right=True) - 1).clamp_(0, NUM_BINS - 1)
        ones = torch.ones_like(w)
        hist = torch.zeros((num_classes + 1) * NUM_BINS, dtype=torch.float64, device=device)
        hist.index_add_(0, row * NUM_BINS + bins, ones)
        # Per class: pixels, summed weights, low and high counts, one column each, added in one pass.
        per_pixel = torch.stack([ones, w, (w < LOW_WEIGHT).double(), (w > HIGH_WEIGHT).double()], dim=1)
        per_class = torch.zeros(num_classes + 1, 4, dtype=torch.float64, device=device).index_add_(0, row, per_pixel)
        self.hist += hist[: num_classes * NUM_BINS].view(num_classes, NUM_BINS)
        self.count += per_class[:num_classes, 0]
        self.sum += per_class[:num_classes, 1]
        self.low += per_class[:num_classes, 2]
        self.high += per_class[:num_classes, 3]

    def add_(self, other: WeightStats) -> None:
        """Add `other`'s counts into these, in place (both on one device)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).add_(getattr(other, f.name))

    def all_reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Sum over processes in place, in one collective: every field travels in one flat tensor."""
        parts = [getattr(self, f.name) for f in dataclasses.fields(self)]
        summed = all_reduce_sum(torch.cat([p.reshape(-1) for p in parts]))
        offset = 0
        for part in parts:
            part.copy_(summed[offset : offset + part.numel()].view_as(part))
            offset += part.numel()

    def summarize(self, class_names: Sequence[str], *, w_max: float) -> dict[str, dict]:
        """Per-class summary, JSON-ready: {name: {"mean", "hist", "low_fraction", "high_fraction", "pixels"}}.

        `mean` is the mean applied weight (None for a class never seen), `hist` the NUM_BINS pixel counts over
        `hist_edges(w_max)`, `low_fraction` / `high_fraction` the exact share of pixels with weight < 0.5 / > 2.0.
        """
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for statistics of {self.num_classes} classes")
        hist, total, count, low, high = (getattr(self, f.name).detach().cpu() for f in dataclasses.fields(self))
        summary: dict[str, dict] = {}
        for k, name in enumerate(class_names):
            n = float(count[k])
            summary[name] = {
                "mean": float(total[k]) / n if n > 0 else None,
                "hist": [int(c) for c in hist[k].tolist()],
                "low_fraction": float(low[k]) / n if n > 0 else 0.0,
                "high_fraction": float(high[k]) / n if n > 0 else 0.0,
                "pixels": int(n),
            }
        return summary
