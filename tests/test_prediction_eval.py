"""Evaluating saved prediction PNGs: matching by name, trainId and labelId formats, hand-computed metrics, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ppar_core.data import build_dataset
from ppar_core.errors import PparError
from ppar_core.evaluation.predictions import evaluate_prediction_folder, evaluate_predictions, index_predictions
from ppar_core.imageio import write_png
from ppar_core.labels import LABELID_TO_TRAINID, TRAINID_TO_LABELID

# Two 2x3 labels (255 = ignore) and predictions with a known confusion.
LABELS = [
    np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8),
    np.array([[2, 2, 2], [0, 1, 1]], dtype=np.uint8),
]
PREDS = [
    np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8),
    np.array([[2, 2, 0], [0, 1, 1]], dtype=np.uint8),
]


def _dataset_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for i, label in enumerate(LABELS):
        write_png(root / "images" / f"img{i}.png", np.full((*label.shape, 3), 100, dtype=np.uint8))
        write_png(root / "labels" / f"img{i}.png", label)
    return root


def _reference_iou(preds: list[np.ndarray], labels: list[np.ndarray], k: int = 19) -> dict[int, float]:
    """Independent IoU: per class, summed over images, by set counting."""
    inter = np.zeros(k)
    union = np.zeros(k)
    for p, t in zip(preds, labels, strict=True):
        valid = t != 255
        for c in range(k):
            inter[c] += np.sum((p == c) & (t == c) & valid)
            union[c] += np.sum(((p == c) | (t == c)) & valid)
    return {c: 100.0 * inter[c] / union[c] for c in range(k) if union[c] > 0}


def test_trainid_predictions_match_an_independent_iou(tmp_path: Path) -> None:
    dataset = build_dataset(f"synth-test={_dataset_root(tmp_path)}", split="val")
    preds = tmp_path / "preds"
    for i, pred in enumerate(PREDS):
        write_png(preds / f"img{i}_trainid.png", pred)
    metrics = evaluate_predictions(preds, dataset, fmt="trainid")
    ref = _reference_iou(PREDS, LABELS)
    # by hand, road (0): gt pixels img0 (0,0) (0,1), img1 (1,0); predicted img0 (0,0) (1,2: ignored), img1 (0,2) (1,0)
    # -> intersection 2, union 4
    assert ref[0] == pytest.approx(100 * 2 / 4)
    for c in range(19):
        if c in ref:
            assert metrics.per_class_iou[c] == pytest.approx(ref[c])
        else:
            assert metrics.per_class_iou[c] is None
    assert metrics.miou == pytest.approx(np.mean(list(ref.values())))
    assert metrics.acc == pytest.approx(100 * 9 / 11)  # 11 labelled pixels: 4 of 5 right, then 5 of 6
    assert metrics.images == 2


def test_labelid_predictions_give_the_same_numbers_and_map_back(tmp_path: Path) -> None:
    dataset = build_dataset(f"synth-test={_dataset_root(tmp_path)}", split="val")
    by_train, by_label = tmp_path / "t", tmp_path / "l"
    for i, pred in enumerate(PREDS):
        write_png(by_train / f"img{i}.png", pred)
        write_png(by_label / f"img{i}.png", TRAINID_TO_LABELID[pred])
        np.testing.assert_array_equal(LABELID_TO_TRAINID[TRAINID_TO_LABELID[pred]], pred)
    a = evaluate_predictions(by_train, dataset, fmt="trainid")
    b = evaluate_predictions(by_label, dataset, fmt="labelid")
    assert a == b


def test_a_labelid_that_is_no_class_counts_as_wrong(tmp_path: Path) -> None:
    dataset = build_dataset(f"synth-test={_dataset_root(tmp_path)}", split="val")
    preds = tmp_path / "p"
    for i, label in enumerate(LABELS):
        ids = TRAINID_TO_LABELID[label].copy()
        if i == 0:
            ids[0, 0] = 0  # "unlabeled" on a road pixel: a miss for road, a hit for nothing
        write_png(preds / f"img{i}.png", ids)
    metrics = evaluate_predictions(preds, dataset, fmt="labelid")
    assert metrics.per_class_iou[0] == pytest.approx(100 * 2 / 3)  # road: 3 gt pixels, 2 predicted
    assert metrics.per_class_iou[1] == pytest.approx(100.0)
    assert metrics.acc == pytest.approx(100 * 10 / 11)  # all right but the one


def test_missing_predictions_are_listed_with_a_count(tmp_path: Path) -> None:
    dataset = build_dataset(f"synth-test={_dataset_root(tmp_path)}", split="val")
    preds = tmp_path / "p"
    write_png(preds / "img0_trainid.png", PREDS[0])
    with pytest.raises(PparError, match=r"1 of 2 .*img1"):
        evaluate_predictions(preds, dataset)


def test_prediction_of_the_wrong_size_is_an_error_naming_it(tmp_path: Path) -> None:
    dataset = build_dataset(f"synth-test={_dataset_root(tmp_path)}", split="val")
    preds = tmp_path / "p"
    write_png(preds / "img0.png", PREDS[0])
    write_png(preds / "img1.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(PparError, match="img1.png is 3x3"):
        evaluate_predictions(preds, dataset)


def test_index_prefers_the_format_suffix_and_ignores_colour_images(tmp_path: Path) -> None:
    for name in ("a.png", "a_trainid.png", "a_labelid.png", "a_color.png", "b_overlay.png", "sub/c_leftImg8bit.png"):
        write_png(tmp_path / name, np.zeros((1, 1), dtype=np.uint8))
    index = index_predictions(tmp_path, fmt="trainid", key_suffixes=("_leftImg8bit",))
    assert {k: p.name for k, p in index.files.items()} == {"a": "a_trainid.png", "c": "c_leftImg8bit.png"}
    labelid = index_predictions(tmp_path, fmt="labelid")
    assert labelid.files["a"].name == "a_labelid.png"
    with pytest.raises(PparError, match="rgb"):
        index_predictions(tmp_path, fmt="rgb")


def test_folder_report_has_the_eval_shape(tmp_path: Path) -> None:
    root = _dataset_root(tmp_path)
    preds = tmp_path / "p"
    for i, pred in enumerate(PREDS):
        write_png(preds / f"img{i}_trainid.png", pred)
    seen: list[tuple[str, int, int]] = []
    report = evaluate_prediction_folder(preds, target=f"synth-test={root}", progress=lambda *a: seen.append(a))
    assert set(report) == {"targets", "mean_miou", "protocol"}
    assert report["mean_miou"] == pytest.approx(report["targets"]["synth-test"]["miou"])
    assert report["protocol"]["predictions"] == str(preds) and report["protocol"]["format"] == "trainid"
    assert seen[-1] == ("eval synth-test", 2, 2)
