"""Reliability statistics: per-class histograms against numpy, exact low/high counters, the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppar_core.reliability import (
    NUM_BINS,
    empty_weight_stats,
    hist_edges,
    summarize_weight_stats,
    update_weight_stats,
)

K, W_MAX = 3, 3.0


def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(2, 16, 16, generator=g) * W_MAX
    # values exactly on edges, at 0 and at w_max must land where numpy puts them
    weights[0, 0, :4] = torch.tensor([0.0, W_MAX, float(hist_edges(W_MAX)[7]), 0.5])
    labels = torch.randint(0, K, (2, 16, 16), generator=g)
    labels[torch.rand(2, 16, 16, generator=g) < 0.2] = 255
    return weights, labels


def test_hist_edges_equal_numpy_linspace() -> None:
    for w_max in (3.0, 2.7, 1.0):
        assert np.array_equal(hist_edges(w_max).numpy(), np.linspace(0, w_max, NUM_BINS + 1))


def test_update_equals_numpy_histogram_per_class_and_accumulates() -> None:
    stats = empty_weight_stats(K)
    batches = [_random_batch(0), _random_batch(1)]
    for weights, labels in batches:
        update_weight_stats(*stats.values(), weights, labels, w_max=W_MAX)
    w = np.concatenate([b[0].numpy().ravel() for b in batches]).astype(np.float64)
    y = np.concatenate([b[1].numpy().ravel() for b in batches])
    for k in range(K):
        ref, _ = np.histogram(w[y == k], bins=NUM_BINS, range=(0.0, W_MAX))
        assert np.array_equal(stats["hist"][k].numpy(), ref)
        assert stats["counts"][k].item() == (y == k).sum()
        assert stats["sums"][k].item() == pytest.approx(w[y == k].sum(), rel=1e-12)
        assert stats["low"][k].item() == (w[y == k] < 0.5).sum()
        assert stats["high"][k].item() == (w[y == k] > 2.0).sum()
    assert stats["hist"].sum().item() == (y != 255).sum()  # ignored pixels are not counted
    assert list(stats) == ["hist", "sums", "counts", "low", "high"]  # the positional order of update_weight_stats
    no_exact = empty_weight_stats(K)
    update_weight_stats(no_exact["hist"], no_exact["sums"], no_exact["counts"], None, None, *batches[0], w_max=W_MAX)
    assert no_exact["counts"].sum().item() == (batches[0][1] != 255).sum()


def test_summary_fractions_means_and_json() -> None:
    stats = empty_weight_stats(K)
    weights = torch.tensor([[[0.2, 0.6, 2.5, 1.0], [0.46, 2.05, 3.0, 9.0]]])
    labels = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 255]]])
    update_weight_stats(*stats.values(), weights, labels, w_max=W_MAX)
    names = ["road", "sidewalk", "building"]
    exact = summarize_weight_stats(
        stats["hist"], stats["sums"], stats["counts"], names, w_max=W_MAX, low=stats["low"], high=stats["high"]
    )
    assert exact["road"]["low_fraction"] == pytest.approx(0.25)
    assert exact["road"]["high_fraction"] == pytest.approx(0.25)
    assert exact["road"]["mean"] == pytest.approx((0.2 + 0.6 + 2.5 + 1.0) / 4) and exact["road"]["pixels"] == 4
    # sidewalk: 0.46 < 0.5 is low, 2.05 and 3.0 are high
    assert exact["sidewalk"]["low_fraction"] == pytest.approx(1 / 3)
    assert exact["sidewalk"]["high_fraction"] == pytest.approx(2 / 3)
    assert exact["building"] == {"mean": None, "hist": [0] * NUM_BINS, "low_fraction": 0.0, "high_fraction": 0.0,
                                 "pixels": 0}  # fmt: skip
    assert exact["sidewalk"]["hist"][NUM_BINS - 1] == 1  # w == w_max is in the last (closed) bin
    json.dumps(exact)
    # Without exact counters: bin-edge lower bounds (bins of width 0.15; 0.46 sits in the bin [0.45, 0.6) which
    # straddles 0.5, and 2.05 in [1.95, 2.1) which straddles 2.0, so both are left out).
    approx = summarize_weight_stats(stats["hist"], stats["sums"], stats["counts"], names, w_max=W_MAX)
    assert approx["road"]["low_fraction"] == pytest.approx(0.25)
    assert approx["sidewalk"]["low_fraction"] == 0.0 and approx["sidewalk"]["high_fraction"] == pytest.approx(1 / 3)


def test_summary_rejects_wrong_class_count() -> None:
    stats = empty_weight_stats(K)
    with pytest.raises(ValueError):
        summarize_weight_stats(stats["hist"], stats["sums"], stats["counts"], ["a"], w_max=W_MAX)
