"""Reliability statistics: per-class histograms against numpy, exact low/high counters, the summary, buffers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ppar_core.reliability import NUM_BINS, WeightStats, hist_edges

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
    stats = WeightStats.zeros(K)
    batches = [_random_batch(0), _random_batch(1)]
    for weights, labels in batches:
        stats.update(weights, labels, w_max=W_MAX)
    w = np.concatenate([b[0].numpy().ravel() for b in batches]).astype(np.float64)
    y = np.concatenate([b[1].numpy().ravel() for b in batches])
    for k in range(K):
        ref, _ = np.histogram(w[y == k], bins=NUM_BINS, range=(0.0, W_MAX))
        assert np.array_equal(stats.hist[k].numpy(), ref)
        assert stats.count[k].item() == (y == k).sum()
        assert stats.sum[k].item() == pytest.approx(w[y == k].sum(), rel=1e-12)
        assert stats.low[k].item() == (w[y == k] < 0.5).sum()
        assert stats.high[k].item() == (w[y == k] > 2.0).sum()
    assert stats.hist.sum().item() == (y != 255).sum()  # ignored pixels are not counted


def test_summary_fractions_means_and_json() -> None:
    stats = WeightStats.zeros(K)
    weights = torch.tensor([[[0.2, 0.6, 2.5, 1.0], [0.46, 2.05, 3.0, 9.0]]])
    labels = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 255]]])
    stats.update(weights, labels, w_max=W_MAX)
    exact = stats.summarize(["road", "sidewalk", "building"], w_max=W_MAX)
    assert exact["road"]["low_fraction"] == pytest.approx(0.25)
    assert exact["road"]["high_fraction"] == pytest.approx(0.25)
    assert exact["road"]["mean"] == pytest.approx((0.2 + 0.6 + 2.5 + 1.0) / 4) and exact["road"]["pixels"] == 4
    # sidewalk: 0.46 < 0.5 is low, 2.05 and 3.0 are high
    assert exact["sidewalk"]["low_fraction"] == pytest.approx(1 / 3)
    assert exact["sidewalk"]["high_fraction"] == pytest.approx(2 / 3)
    empty = {"mean": None, "hist": [0] * NUM_BINS, "low_fraction": 0.0, "high_fraction": 0.0, "pixels": 0}
    assert exact["building"] == empty
    assert exact["sidewalk"]["hist"][NUM_BINS - 1] == 1  # w == w_max is in the last (closed) bin
    json.dumps(exact)


def test_summary_rejects_wrong_class_count() -> None:
    with pytest.raises(ValueError):
        WeightStats.zeros(K).summarize(["a"], w_max=W_MAX)


def test_buffers_round_trip_by_name_and_updates_reach_them() -> None:
    stats = WeightStats.zeros(K)
    stats.update(*_random_batch(0), w_max=W_MAX)
    buffers = stats.buffers()
    assert set(buffers) == set(WeightStats.buffer_names())
    view = WeightStats.from_buffers(buffers)
    for name in ("hist", "sum", "count", "low", "high"):
        assert torch.equal(getattr(view, name), getattr(stats, name))  # each field is found under its own name
    before = stats.count.clone()
    view.update(*_random_batch(1), w_max=W_MAX)  # a view writes through to the tensors it was built on
    assert torch.equal(buffers["weight_count"], stats.count) and stats.count.sum() > before.sum()


def test_add_and_all_reduce_sum_every_field() -> None:
    a, b = WeightStats.zeros(K), WeightStats.zeros(K)
    a.update(*_random_batch(0), w_max=W_MAX)
    b.update(*_random_batch(1), w_max=W_MAX)
    total = WeightStats.zeros(K)
    total.add_(a)
    total.add_(b)
    both = WeightStats.zeros(K)
    both.update(*_random_batch(0), w_max=W_MAX)
    both.update(*_random_batch(1), w_max=W_MAX)
    pooled = WeightStats.zeros(K)
    pooled.add_(a)
    pooled.all_reduce(lambda flat: flat + torch.cat([t.reshape(-1) for t in b.buffers().values()]))  # two "ranks"
    for name in ("hist", "sum", "count", "low", "high"):
        assert torch.allclose(getattr(total, name), getattr(both, name))
        assert torch.allclose(getattr(pooled, name), getattr(both, name))


def test_update_skips_ignored_and_stray_labels_like_numpy() -> None:
    g = torch.Generator().manual_seed(7)
    weights = torch.rand(2, 8, 8, generator=g) * W_MAX
    labels = torch.randint(0, K, (2, 8, 8), generator=g)
    labels[0, 0, :3] = torch.tensor([255, 7, -1])  # ignored, beyond K, negative: none of them counts
    stats = WeightStats.zeros(K)
    stats.update(weights, labels, w_max=W_MAX)
    w, y = weights.numpy().ravel().astype(np.float64), labels.numpy().ravel()
    for k in range(K):
        ref, _ = np.histogram(w[y == k], bins=NUM_BINS, range=(0.0, W_MAX))
        assert np.array_equal(stats.hist[k].numpy(), ref) and stats.count[k].item() == (y == k).sum()
        assert stats.sum[k].item() == pytest.approx(w[y == k].sum(), rel=1e-12)
    assert stats.count.sum().item() == ((y >= 0) & (y < K)).sum()


def test_hist_edges_are_made_on_the_device_asked_for() -> None:
    assert torch.equal(hist_edges(2.7, device="cpu"), hist_edges(2.7))
    on_meta = hist_edges(2.7, device="meta")  # made there, not copied from the host (which "meta" could not do)
    assert on_meta.device.type == "meta" and on_meta.shape == (NUM_BINS + 1,)
