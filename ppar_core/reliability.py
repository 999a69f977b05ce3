"""Reliability statistics: per class, a histogram of the weights training applied, their running mean, and exact
counts of low (< 0.5) and high (> 2.0) weights.

The statistics are plain float64 tensors so that checkpoints can carry them as safetensors entries:
`hist (K, NUM_BINS)`, `sums (K,)`, `counts (K,)`, `low (K,)`, `high (K,)`. float64 because a long run on
512x512 crops passes billions of pixels through each counter, beyond float32's exact integer range (2^24).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NUM_BINS = 20
LOW_WEIGHT = 0.5  # a pixel is "down-weighted" below this
HIGH_WEIGHT = 2.0  # and "up-weighted" above this


def hist_edges(w_max: float) -> Tensor:
    """Bin edges (NUM_BINS + 1,) float64, uniform over [0, w_max]; the last bin is closed (w == w_max falls in it).

    Built as `i * (w_max / NUM_BINS)` with the last edge set to w_max exactly, the same arithmetic as
    `numpy.linspace`, so our bins and `numpy.histogram(range=(0, w_max))` agree to the last bit.
    """
    edges = torch.arange(NUM_BINS + 1, dtype=torch.float64) * (float(w_max) / NUM_BINS)
    edges[-1] = float(w_max)
    return edges


# The model buffers that hold the statistics (in every checkpoint), in the order of `empty_weight_stats`' values.
WEIGHT_STAT_BUFFERS = ("weight_hist", "weight_sum", "weight_count", "weight_low", "weight_high")


def empty_weight_stats(num_classes: int, *, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Zeroed statistics: {"hist": (K, NUM_BINS), "sums": (K,), "counts": (K,), "low": (K,), "high": (K,)}, float64."""
    stats = {"hist": torch.zeros(num_classes, NUM_BINS, dtype=torch.float64, device=device)}
    for name in ("sums", "counts", "low", "high"):
        stats[name] = torch.zeros(num_classes, dtype=torch.float64, device=device)
    return stats


def update_weight_stats(
    hist: Tensor,
    sums: Tensor,
    counts: Tensor,
    low: Tensor | None,
    high: Tensor | None,
    weights: Tensor,
    labels: Tensor,
    *,
    w_max: float,
    ignore_index: int = 255,
) -> None:
    """Add one batch of applied weights to the statistics, in place; vectorised (bincount, one device sync).

    hist (K, NUM_BINS), sums (K,), counts (K,), low (K,), high (K,): float64 accumulators on any device, in the order
    of `empty_weight_stats` (low / high may be None to skip the exact counters).
    weights (B,H,W) float; labels (B,H,W) long. Only pixels with a label in [0, K) count (so `ignore_index`
    and any stray value are skipped). Weights above w_max (possible only when w_max < 1) go to the last bin.
    """
    num_classes = hist.shape[0]
    device = hist.device
    w = weights.detach().reshape(-1).to(device=device, dtype=torch.float64)
    y = labels.detach().reshape(-1).to(device=device, dtype=torch.long)
    keep = (y != ignore_index) & (y >= 0) & (y < num_classes)
    w, y = w[keep], y[keep]
    edges = hist_edges(w_max).to(device)
    # bucketize(right=True) - 1 puts w in bin i when edges[i] <= w < edges[i+1]; clamping closes the last bin.
    bins = (torch.bucketize(w, edges, right=True) - 1).clamp_(0, NUM_BINS - 1)
    size = num_classes * NUM_BINS
    hist += torch.bincount(y * NUM_BINS + bins, minlength=size)[:size].view(num_classes, NUM_BINS).to(hist.dtype)
    sums += torch.bincount(y, weights=w, minlength=num_classes).to(sums.dtype)
    counts += torch.bincount(y, minlength=num_classes).to(counts.dtype)
    if low is not None:
        low += torch.bincount(y, weights=(w < LOW_WEIGHT).double(), minlength=num_classes).to(low.dtype)
    if high is not None:
        high += torch.bincount(y, weights=(w > HIGH_WEIGHT).double(), minlength=num_classes).to(high.dtype)


def _fraction_from_bins(hist_row: Tensor, edges: Tensor, *, below: float | None, above: float | None) -> float:
    # Bin-edge approximation, used only when exact counters are absent: a bin counts as "low" when its upper edge is
    # <= LOW_WEIGHT and as "high" when its lower edge is >= HIGH_WEIGHT; bins straddling a threshold are left out,
    # so both fractions are lower bounds of the exact ones.
    total = float(hist_row.sum())
    if total == 0:
        return 0.0
    if below is not None:
        return float(hist_row[edges[1:] <= below].sum()) / total
    assert above is not None
    return float(hist_row[edges[:-1] >= above].sum()) / total


def summarize_weight_stats(
    hist: Tensor,
    sums: Tensor,
    counts: Tensor,
    class_names: Sequence[str],
    *,
    w_max: float,
    low: Tensor | None = None,
    high: Tensor | None = None,
) -> dict[str, dict]:
    """Per-class summary, JSON-ready: {name: {"mean", "hist", "low_fraction", "high_fraction", "pixels"}}.

    `mean` is the mean applied weight (None for a class never seen), `hist` the NUM_BINS pixel counts over
    `hist_edges(w_max)`, `low_fraction` / `high_fraction` the share of pixels with weight < 0.5 / > 2.0: exact when
    the `low` / `high` counters are given, otherwise the bin-edge lower bounds described in `_fraction_from_bins`.
    """
    if len(class_names) != hist.shape[0]:
        raise ValueError(f"{len(class_names)} class names for statistics of {hist.shape[0]} classes")
    edges = hist_edges(w_max)
    hist, sums, counts = hist.detach().cpu(), sums.detach().cpu(), counts.detach().cpu()
    summary: dict[str, dict] = {}
    for k, name in enumerate(class_names):
        n = float(counts[k])
        if low is not None:
            low_fraction = float(low[k]) / n if n > 0 else 0.0
        else:
            low_fraction = _fraction_from_bins(hist[k], edges, below=LOW_WEIGHT, above=None)
        if high is not None:
            high_fraction = float(high[k]) / n if n > 0 else 0.0
        else:
            high_fraction = _fraction_from_bins(hist[k], edges, below=None, above=HIGH_WEIGHT)
        summary[name] = {
            "mean": float(sums[k]) / n if n > 0 else None,
            "hist": [int(c) for c in hist[k].tolist()],
            "low_fraction": low_fraction,
            "high_fraction": high_fraction,
            "pixels": int(n),
        }
    return summary
