"""Segmentation metrics: a confusion matrix by bincount, IoU and accuracies as pure functions, and an accumulator.

Conventions (shared/reference/labels.md, "Evaluation protocol"):
- The confusion matrix `cm` is (K,K) int64 with rows = ground truth and columns = prediction.
- mIoU is dataset-level: intersections and unions are summed over the whole split (by summing confusion matrices),
  then averaged over the classes that occur in the ground truth OR the prediction. A class absent from both has an
  undefined IoU (NaN) and is left out of the mean rather than counted as 0 or 100.
- The pure functions return fractions (0-1); `SegMetrics` holds percentages, as every report prints them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

import ppar_core.labels as labels
from ppar_core.errors import PparError


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """Count (ground truth, prediction) pairs.

    pred: (...) integer class ids, any integer dtype, same shape as target; target: (...) integer trainIds.
    Pixels whose target equals `ignore_index`, is negative or is >= num_classes are skipped.
    Returns (K,K) int64 on the tensors' device, rows = ground truth, columns = prediction.

    A prediction outside 0..K-1 on a labelled pixel raises PparError: a K x K matrix cannot count it as a miss
    without shrinking that class's ground-truth total (which would inflate its IoU), so it is refused loudly.
    """
    if pred.shape != target.shape:
        raise PparError(
            f"Prediction of shape {tuple(pred.shape)} does not match the label of shape {tuple(target.shape)}: "
            "predictions must be at the label's resolution."
        )
    k = int(num_classes)
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    valid = (target != ignore_index) & (target >= 0) & (target < k)
    target = target[valid]
    pred = pred[valid]
    if pred.numel() and bool(((pred < 0) | (pred >= k)).any()):
        bad = sorted({int(v) for v in pred[(pred < 0) | (pred >= k)].unique()[:8].tolist()})
        raise PparError(
            f"Prediction holds class ids {bad} outside 0..{k - 1} on labelled pixels: predictions must be trainIds "
            "(convert labelId predictions to trainIds first)."
        )
    # One flat index per pixel, gt-major, so the bincount reshapes straight into (gt, pred).
    return torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)


def iou_from_confusion(cm: Tensor) -> Tensor:
    """Per-class IoU: cm (K,K) integer -> (K,) float64 in 0-1; NaN for a class absent from both gt and prediction."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp
    iou = tp / union.clamp(min=1)
    return torch.where(union > 0, iou, torch.full_like(iou, math.nan))


def _nanmean(values: Tensor) -> float:
    """Mean of the non-NaN entries of a 1-D tensor; NaN when there are none (never a warning)."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def _select(values: Tensor, classes: Sequence[int] | None) -> Tensor:
    if classes is None:
        return values
    index = torch.as_tensor(list(classes), dtype=torch.long, device=values.device)
    return values.index_select(0, index)


def mean_iou(cm: Tensor, *, classes: Sequence[int] | None = None) -> float:
    """mIoU (0-1) over `classes` (default all K) that occur in the ground truth or the prediction; NaN if none do."""
    return _nanmean(_select(iou_from_confusion(cm), classes))


def pixel_accuracy(cm: Tensor) -> float:
    """Fraction (0-1) of labelled pixels predicted correctly; NaN when the matrix is empty."""
    total = float(cm.sum())
    return float(cm.diagonal().sum()) / total if total > 0 else math.nan


def class_accuracy(cm: Tensor) -> Tensor:
    """Per-class recall: cm (K,K) -> (K,) float64 in 0-1, NaN for a class absent from the ground truth."""
    cm = cm.double()
    gt = cm.sum(dim=1)
    acc = cm.diagonal() / gt.clamp(min=1)
    return torch.where(gt > 0, acc, torch.full_like(acc, math.nan))


def mean_class_accuracy(cm: Tensor, *, classes: Sequence[int] | None = None) -> float:
    """Mean per-class recall (0-1) over `classes` (default all) present in the ground truth; NaN if none are."""
    return _nanmean(_select(class_accuracy(cm), classes))


def _percent_or_none(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


@dataclass
class SegMetrics:
    """One evaluation's results, in percent.

    per_class_iou: K entries indexed by trainId (None where the IoU is undefined, or the class is outside
    `class_ids`); miou: mean over `class_ids` of the defined IoUs (NaN if none is defined); acc: pixel accuracy;
    macc: mean class accuracy over `class_ids` present in the ground truth; images: how many images were counted;
    class_ids: the classes the mean is taken over (None = all K); confusion: the (K,K) int64 matrix (CPU) the
    figures come from, or (K+1,K+1) with a last "no class" prediction column, so results can be pooled by summing;
    skipped: names of the samples left out because they could not be read (evaluation with `data.skip_bad`).
    """

    per_class_iou: list[float | None]
    miou: float
    acc: float
    macc: float
    images: int
    class_ids: tuple[int, ...] | None = None
    # Where the figures come from, not what they are: left out of equality.
    confusion: Tensor | None = field(default=None, repr=False, compare=False)
    skipped: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """The JSON shape of `ppar eval --json` for one target (issue 5): NaN becomes null, IoU in percent.

        `class_names` are indexed by trainId (default: the 19 Cityscapes names when K is 19, else "class_<i>").
        Only the classes in `class_ids` are listed, so a 16-class SYNTHIA result lists 16 classes.
        """
        k = len(self.per_class_iou)
        if class_names is None:
            class_names = labels.CLASS_NAMES if k == labels.NUM_CLASSES else [f"class_{i}" for i in range(k)]
        if len(class_names) != k:
            raise ValueError(f"{len(class_names)} class names given for {k} classes")
        ids = range(k) if self.class_ids is None else self.class_ids
        return {
            "miou": _finite_or_none(self.miou),
            "per_class": {class_names[i]: self.per_class_iou[i] for i in ids},
            "acc": _finite_or_none(self.acc),
            "macc": _finite_or_none(self.macc),
            "images": self.images,
        }


def _finite_or_none(value: float) -> float | None:
    # json.dumps would write NaN, which is not JSON.
    return None if math.isnan(value) else value


def metrics_from_confusion(
    cm: Tensor,
    *,
    classes: Sequence[int] | None = None,
    images: int = 0,
    num_classes: int | None = None,
    skipped: Sequence[str] = (),
) -> SegMetrics:
    """Summarise a confusion matrix into `SegMetrics` (percent), averaging over `classes` (default all K).

    cm (M,M) int64 with M = num_classes (default) or num_classes + 1: the extra last row/column counts predictions
    that are no class at all (a saved labelId prediction such as 0 "unlabeled"). Such pixels are wrong for their
    ground-truth class (they enter its union and the pixel accuracy) but the "no class" entry is never reported.
    """
    k = int(cm.shape[0] if num_classes is None else num_classes)
    if cm.shape[0] not in (k, k + 1):
        raise ValueError(f"a confusion matrix of {tuple(cm.shape)} for {k} classes")
    chosen = tuple(range(k)) if classes is None else tuple(int(c) for c in classes)
    iou = iou_from_confusion(cm).cpu()
    per_class = [_percent_or_none(float(iou[i])) if i in chosen else None for i in range(k)]
    return SegMetrics(
        per_class_iou=per_class,
        miou=100.0 * mean_iou(cm, classes=chosen),
        acc=100.0 * pixel_accuracy(cm),
        macc=100.0 * mean_class_accuracy(cm, classes=chosen),
        images=int(images),
        class_ids=None if classes is None else chosen,
        confusion=cm.detach().cpu(),
        skipped=tuple(skipped),
    )


def pooled_metrics(parts: Sequence[SegMetrics], *, classes: Sequence[int] | None = None) -> SegMetrics:
    """One result for several evaluations of the same classes: their confusion matrices summed, their images and
    skipped samples added up (dataset-level mIoU over the union of the parts, e.g. "ACDC all")."""
    if not parts or any(p.confusion is None for p in parts):
        raise ValueError("pooling needs results that carry their confusion matrices")
    cm = torch.stack([p.confusion for p in parts if p.confusion is not None]).sum(dim=0)
    return metrics_from_confusion(
        cm,
        classes=classes,
        images=sum(p.images for p in parts),
        num_classes=len(parts[0].per_class_iou),
        skipped=[name for p in parts for name in p.skipped],
    )


class ConfusionAccumulator:
    """Sums confusion matrices over images (and, with `reduce`, over processes).

    The matrix lives on `device` (default: the device of the first prediction), so accumulating a GPU prediction
    never copies pixels to the host; only the (K,K) matrix moves when metrics are computed.
    """

    def __init__(self, num_classes: int, *, device: torch.device | str | None = None, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._device_fixed = device is not None
        self._cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        self.images = 0

    @property
    def cm(self) -> Tensor:
        """The summed (K,K) int64 confusion matrix, rows = ground truth."""
        return self._cm

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one image (pred, target: (H,W)) or a batch ((B,H,W) each; counted as B images)."""
        if not self._device_fixed:
            self._cm = self._cm.to(pred.device)
            self._device_fixed = True
        pred = pred.to(self._cm.device)
        target = target.to(self._cm.device)
        self._cm += confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        self.images += int(pred.shape[0]) if pred.dim() == 3 else 1

    def reduce(self, all_reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Sum the matrix and the image count over processes; call once, after the last update, on every rank.

        `all_reduce_sum(t)` must return the element-wise sum of `t` over all ranks (it may work in place, as
        `torch.distributed.all_reduce` does). Matrix and count travel in one tensor: one collective, not two.
        """
        packed = torch.cat([self._cm.reshape(-1), self._cm.new_tensor([self.images])])
        summed = all_reduce_sum(packed)
        k = self.num_classes
        self._cm = summed[: k * k].reshape(k, k).to(torch.int64)
        self.images = int(summed[k * k])

    def compute(self, *, classes: Sequence[int] | None = None, skipped: Sequence[str] = ()) -> SegMetrics:
        """Metrics (percent) over `classes` (default all K) from everything accumulated so far."""
        return metrics_from_confusion(self._cm, classes=classes, images=self.images, skipped=skipped)
