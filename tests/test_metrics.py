"""Metrics: hand-computed confusion matrices and IoU, torchmetrics parity, the accumulator, the SYNTHIA protocol."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ppar_core import labels
from ppar_core.errors import PparError
from ppar_core.metrics import (
    ConfusionAccumulator,
    SegMetrics,
    confusion_matrix,
    iou_from_confusion,
    mean_class_accuracy,
    mean_iou,
    metrics_from_confusion,
    pixel_accuracy,
)

# A 3-class example, counted by hand. 255 marks ignored pixels; class 2 never appears in the ground truth.
TARGET = torch.tensor(
    [
        [0, 0, 0, 1],
        [0, 1, 1, 1],
        [255, 255, 1, 0],
    ]
)
PRED = torch.tensor(
    [
        [0, 0, 1, 1],
        [2, 1, 1, 0],
        [1, 2, 1, 0],
    ]
)
# rows = gt, cols = pred. gt 0 at (0,0)(0,1)(0,2)(1,0)(2,3) -> pred 0,0,1,2,0; gt 1 at (0,3)(1,1)(1,2)(1,3)(2,2)
# -> pred 1,1,1,0,1; the two ignored pixels are not counted.
EXPECTED_CM = torch.tensor(
    [
        [3, 1, 1],
        [1, 4, 0],
        [0, 0, 0],
    ]
)


def test_confusion_matrix_hand_example() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, EXPECTED_CM)
    assert int(cm.sum()) == 10  # 12 pixels minus 2 ignored


def test_iou_and_accuracies_hand_example() -> None:
    iou = iou_from_confusion(EXPECTED_CM)
    assert iou.dtype == torch.float64
    # class 0: tp 3, gt 5, pred 4 -> 3 / (5 + 4 - 3); class 1: tp 4, gt 5, pred 5 -> 4 / 6; class 2: tp 0, pred 1 -> 0.
    assert iou.tolist() == pytest.approx([3 / 6, 4 / 6, 0.0])
    assert mean_iou(EXPECTED_CM) == pytest.approx((0.5 + 4 / 6 + 0.0) / 3)
    assert pixel_accuracy(EXPECTED_CM) == pytest.approx(7 / 10)
    # class 2 is absent from the ground truth, so the mean class accuracy is over classes 0 and 1 only.
    assert mean_class_accuracy(EXPECTED_CM) == pytest.approx((3 / 5 + 4 / 5) / 2)


def test_ignore_and_out_of_range_targets_are_skipped() -> None:
    target = torch.tensor([0, 1, 255, 7, 1])
    pred = torch.tensor([0, 1, 1, 1, 0])
    cm = confusion_matrix(pred, target, 3)
    assert torch.equal(cm, torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0]]))
    # A custom ignore index: 0 is now ignored, 255 is >= K and skipped too.
    cm = confusion_matrix(pred, target, 3, ignore_index=0)
    assert torch.equal(cm, torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 0]]))


def test_prediction_out_of_range_is_an_error_and_shape_mismatch_too() -> None:
    with pytest.raises(PparError, match="outside 0..2"):
        confusion_matrix(torch.tensor([0, 255]), torch.tensor([0, 1]), 3)
    # ...but not where the label is ignored.
    assert int(confusion_matrix(torch.tensor([0, 255]), torch.tensor([0, 255]), 3).sum()) == 1
    with pytest.raises(PparError, match="does not match"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 3)


def test_classes_absent_from_gt_and_pred_are_excluded_from_miou() -> None:
    # 4 classes: class 3 appears nowhere -> NaN, left out; class 2 only predicted -> IoU 0, counted.
    cm = torch.zeros(4, 4, dtype=torch.int64)
    cm[:3, :3] = EXPECTED_CM
    iou = iou_from_confusion(cm)
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(mean_iou(EXPECTED_CM))
    metrics = metrics_from_confusion(cm, images=1)
    assert metrics.per_class_iou[3] is None
    assert metrics.per_class_iou[:3] == pytest.approx([50.0, 400 / 6, 0.0])
    assert metrics.miou == pytest.approx(100 * (0.5 + 4 / 6) / 3)
    # Restricting the mean to given classes.
    assert mean_iou(cm, classes=[0, 1]) == pytest.approx((0.5 + 4 / 6) / 2)
    assert math.isnan(mean_iou(cm, classes=[3]))


def test_empty_matrix_gives_nan_and_json_nulls() -> None:
    metrics = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(metrics.miou) and math.isnan(metrics.acc) and math.isnan(metrics.macc)
    d = metrics.to_dict(["a", "b", "c"])
    assert d == {"miou": None, "per_class": {"a": None, "b": None, "c": None}, "acc": None, "macc": None, "images": 0}
    json.loads(json.dumps(d))  # strict JSON round trip: no NaN literal


def test_to_dict_shape_default_names() -> None:
    cm = torch.eye(labels.NUM_CLASSES, dtype=torch.int64) * 5
    d = metrics_from_confusion(cm, images=3).to_dict()
    assert list(d) == ["miou", "per_class", "acc", "macc", "images"]
    assert list(d["per_class"]) == list(labels.CLASS_NAMES)
    assert d["miou"] == pytest.approx(100.0) and d["acc"] == pytest.approx(100.0) and d["images"] == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_torchmetrics_on_random_maps_with_ignore(seed: int) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    k = 7
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (2, 33, 41), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    # Biased predictions: right 60% of the time, so IoUs are spread out rather than all near 1/k.
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.6,
        target.clamp(max=k - 1),
        torch.randint(0, k, target.shape, generator=g),
    )
    cm = confusion_matrix(pred, target, k)
    reference_cm = multiclass_confusion_matrix(pred, target, num_classes=k, ignore_index=255)
    assert torch.equal(cm, reference_cm.long())
    jaccard = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="none")
    reference_iou = jaccard(pred, target).double()
    assert torch.allclose(iou_from_confusion(cm), reference_iou, atol=1e-6)
    macro = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="macro")(pred, target)
    assert mean_iou(cm) == pytest.approx(float(macro), abs=1e-6)


def test_accumulator_over_updates_equals_one_big_matrix() -> None:
    k = 5
    g = torch.Generator().manual_seed(3)
    preds = [torch.randint(0, k, (9, 13), generator=g) for _ in range(4)]
    targets = [torch.randint(0, k + 1, (9, 13), generator=g) for _ in range(4)]
    targets = [torch.where(t == k, torch.full_like(t, 255), t) for t in targets]
    acc = ConfusionAccumulator(k)
    for p, t in zip(preds, targets, strict=True):
        acc.update(p, t)
    big = confusion_matrix(torch.cat(preds), torch.cat(targets), k)
    assert torch.equal(acc.cm, big)
    assert acc.images == 4
    # A batched update counts B images and adds the same matrix.
    acc.update(torch.stack(preds[:2]), torch.stack(targets[:2]))
    assert acc.images == 6
    assert torch.equal(acc.cm, big + confusion_matrix(torch.cat(preds[:2]), torch.cat(targets[:2]), k))
    result = acc.compute()
    assert result.miou == pytest.approx(100 * mean_iou(acc.cm))
    assert result.images == 6


def test_accumulator_reduce_sums_matrix_and_images() -> None:
    acc = ConfusionAccumulator(3)
    acc.update(PRED, TARGET)
    other = ConfusionAccumulator(3)
    other.update(PRED[:1], TARGET[:1])
    other.update(PRED[1:], TARGET[1:])
    peer = torch.cat([other.cm.reshape(-1), torch.tensor([other.images])])

    def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        return t + peer  # a fake 2-rank group: this rank plus one peer

    acc.reduce(all_reduce_sum)
    assert torch.equal(acc.cm, 2 * EXPECTED_CM)
    assert acc.images == 3


def _synthia(cm: torch.Tensor) -> dict[str, SegMetrics]:
    """The SYNTHIA protocol: mIoU-16 over labels.SYNTHIA16_TRAIN_IDS and mIoU-19 over all, from one matrix."""
    return {
        "mIoU-16": metrics_from_confusion(cm, classes=labels.SYNTHIA16_TRAIN_IDS, images=2),
        "mIoU-19": metrics_from_confusion(cm, images=2),
    }


def test_synthia_16_and_19_by_hand() -> None:
    # Every class perfectly predicted on 10 pixels, except: road (0) has 10 more pixels predicted as sidewalk (1),
    # and terrain (9), truck (14), train (16) never occur (as in SYNTHIA).
    k = labels.NUM_CLASSES
    cm = torch.eye(k, dtype=torch.int64) * 10
    for absent in (9, 14, 16):
        cm[absent, absent] = 0
    cm[0, 1] = 10
    m = _synthia(cm)
    # road: 10 / (20 + 10 - 10) = 0.5; sidewalk: 10 / (10 + 20 - 10) = 0.5; 14 other present classes at 1.0.
    assert m["mIoU-16"].miou == pytest.approx(100 * (0.5 + 0.5 + 14) / 16)
    # 19-class: the three absent classes have NaN IoU and are left out, so the mean is over the same 16 classes.
    assert m["mIoU-19"].miou == pytest.approx(100 * (0.5 + 0.5 + 14) / 16)
    # Now the model predicts 5 sky pixels as terrain: terrain's IoU becomes 0 (predicted, never right) and counts in
    # mIoU-19 only; sky (10) now has 15 gt pixels, 10 right: 10 / (15 + 10 - 10) = 2/3.
    cm[10, 9] = 5
    m = _synthia(cm)
    assert m["mIoU-16"].miou == pytest.approx(100 * (0.5 + 0.5 + 2 / 3 + 13) / 16)
    assert m["mIoU-19"].miou == pytest.approx(100 * (0.5 + 0.5 + 2 / 3 + 13 + 0) / 17)
    d16 = m["mIoU-16"].to_dict()
    assert len(d16["per_class"]) == 16 and "terrain" not in d16["per_class"] and "truck" not in d16["per_class"]
    assert d16["images"] == 2
    assert m["mIoU-19"].to_dict()["per_class"]["terrain"] == pytest.approx(0.0)
    # Pixel accuracy is over all labelled pixels (both protocols): 160 right out of 175.
    assert m["mIoU-16"].acc == pytest.approx(100 * 160 / 175) == m["mIoU-19"].acc
