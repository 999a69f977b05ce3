"""Dataset evaluation: perfect and constant models with hand-computed scores, targets, DDP sharding, bad samples."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from ppar_core.data import Sample, build_dataset
from ppar_core.errors import PparError
from ppar_core.evaluation.evaluate import evaluate_dataset, evaluate_targets
from ppar_core.evaluation.report import mean_over_targets
from ppar_core.evaluation.targets import Target
from ppar_core.normalize import CLIP_MEAN, CLIP_STD
from ppar_core.protocol import InferenceConfig

K = 3
CFG = InferenceConfig(crop_size=32, stride=24)


def image_for(label: np.ndarray) -> np.ndarray:
    """An image whose red channel spells out the label (class * 10; ignored pixels get class 0's value)."""
    red = np.where(label < K, label, 0).astype(np.uint8) * 10
    rng = np.random.default_rng(int(label.sum()))
    image = rng.integers(0, 256, size=(*label.shape, 3), dtype=np.uint8)
    image[..., 0] = red
    return image


def oracle_model(batch: Tensor) -> Tensor:
    """Reads the class back from the normalised red channel: one-hot logits (B,K,h,w), so argmax = the label."""
    red = batch[:, 0] * (CLIP_STD[0] * 255.0) + CLIP_MEAN[0] * 255.0
    cls = torch.round(red / 10).long().clamp(0, K - 1)
    return torch.nn.functional.one_hot(cls, K).permute(0, 3, 1, 2).float()


def zero_model(batch: Tensor) -> Tensor:
    """Always predicts class 0."""
    logits = torch.zeros(batch.shape[0], K, *batch.shape[2:])
    logits[:, 0] = 1.0
    return logits


class FakeDataset:
    """A list of Samples with a record of which indices were read."""

    def __init__(self, label_maps: list[np.ndarray], name: str = "fake") -> None:
        self.name = name
        self.samples = [Sample(image_for(lab), lab, f"s{i}") for i, lab in enumerate(label_maps)]
        self.read: list[int] = []
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        with self.lock:
            self.read.append(index)
        return self.samples[index]


# Image A: 8 px class 0, 4 px class 1, 4 ignored. Image B: 4 px class 0, 4 px class 1, 8 px class 2.
LABEL_A = np.array([[0] * 4, [0] * 4, [1] * 4, [255] * 4], dtype=np.uint8)
LABEL_B = np.array([[0] * 4, [1] * 4, [2] * 4, [2] * 4], dtype=np.uint8)


def test_perfect_model_scores_100() -> None:
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, K, size=(40, 50)).astype(np.uint8) for _ in range(3)]
    labels[0][:5] = 255
    result = evaluate_dataset(oracle_model, FakeDataset(labels), CFG, num_classes=K, device="cpu")
    assert result.miou == pytest.approx(100.0)
    assert result.acc == pytest.approx(100.0) and result.macc == pytest.approx(100.0)
    assert result.per_class_iou == pytest.approx([100.0] * K)
    assert result.images == 3


def test_all_zero_model_hand_value() -> None:
    # gt totals: class 0 12 px, class 1 8 px, class 2 8 px; everything predicted as 0.
    # IoU0 = 12 / (12 + 28 - 12) = 3/7; IoU1 = IoU2 = 0 -> mIoU = 1/7; acc = 12/28; macc = (1 + 0 + 0) / 3.
    result = evaluate_dataset(zero_model, FakeDataset([LABEL_A, LABEL_B]), CFG, num_classes=K, device="cpu")
    assert result.per_class_iou == pytest.approx([300 / 7, 0.0, 0.0])
    assert result.miou == pytest.approx(100 / 7)
    assert result.acc == pytest.approx(300 / 7)
    assert result.macc == pytest.approx(100 / 3)
    assert result.images == 2


def test_max_images_and_progress() -> None:
    calls: list[tuple[int, int]] = []
    dataset = FakeDataset([LABEL_A, LABEL_B, LABEL_B])
    result = evaluate_dataset(
        zero_model,
        dataset,
        CFG,
        num_classes=K,
        device="cpu",
        max_images=1,
        progress=lambda _, d, t: calls.append((d, t)),
    )
    # Image A alone: IoU0 = 8/12, IoU1 = 0, class 2 absent from gt and prediction -> left out of the mean.
    assert result.per_class_iou[:2] == pytest.approx([200 / 3, 0.0]) and result.per_class_iou[2] is None
    assert result.miou == pytest.approx(100 / 3)
    assert result.images == 1 and dataset.read == [0] and calls == [(1, 1)]


def test_evaluate_targets_and_mean_over_targets() -> None:
    datasets = {"mixed": FakeDataset([LABEL_A, LABEL_B]), "roads": FakeDataset([np.zeros((6, 9), np.uint8)])}
    targets = [Target(name, dataset, CFG, name) for name, dataset in datasets.items()]
    seen: list[tuple[str, int, int]] = []
    results = evaluate_targets(zero_model, targets, num_classes=K, device="cpu", progress=lambda *a: seen.append(a))
    assert list(results) == ["mixed", "roads"]
    assert results["roads"].miou == pytest.approx(100.0)  # only class 0 occurs, predicted everywhere
    mean, skipped = mean_over_targets({name: m.miou for name, m in results.items()})
    assert mean == pytest.approx((100 / 7 + 100) / 2) and skipped == []
    assert seen == [("eval mixed", 1, 2), ("eval mixed", 2, 2), ("eval roads", 1, 1)]
    # An undefined mIoU (NaN or None) is left out of the mean, and named.
    assert mean_over_targets({"a": 40.0, "b": float("nan"), "c": None}) == (40.0, ["b", "c"])
    assert mean_over_targets({"a": None}) == (None, ["a"])


class FakeProcessGroup:
    """A 2-rank group run as two threads: all_reduce_sum sums the ranks' tensors after a barrier."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size)
        self.slots: list[Tensor | None] = [None] * world_size
        self.calls = 0

    def rank_view(self, rank: int) -> RankView:
        return RankView(self, rank)


class RankView:
    def __init__(self, group: FakeProcessGroup, rank: int) -> None:
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        self.group.slots[self.rank] = tensor.clone()
        self.group.barrier.wait()
        total = torch.stack([t for t in self.group.slots if t is not None]).sum(0)
        self.group.barrier.wait()  # nobody overwrites a slot before everyone has summed
        self.group.calls += 1
        return total


def test_dist_shards_cover_each_image_once_and_sum() -> None:
    rng = np.random.default_rng(2)
    labels = [rng.integers(0, K, size=(10 + i, 12)).astype(np.uint8) for i in range(5)]  # 5: uneven split
    single = evaluate_dataset(zero_model, FakeDataset(labels), CFG, num_classes=K, device="cpu")

    dataset = FakeDataset(labels)
    group = FakeProcessGroup(2)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = evaluate_dataset(
                zero_model, dataset, CFG, num_classes=K, device="cpu", dist=group.rank_view(rank)
            )
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(dataset.read) == [0, 1, 2, 3, 4]  # every image read exactly once over both ranks
    assert group.calls == 2  # one collective per rank, not one per image
    for rank in (0, 1):
        assert results[rank] == single  # both ranks return the full-dataset totals


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_real_dataset_with_a_bad_sample_skips_it_without_double_counting(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, label in [("a", LABEL_A), ("b", LABEL_B), ("c", LABEL_B)]:
        write_png(tmp_path / "images" / f"{name}.png", image_for(label))
        write_png(tmp_path / "labels" / f"{name}.png", label)
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")  # broken image

    strict = build_dataset(f"synth={tmp_path}", split="val")
    from ppar_core.errors import PparError

    with pytest.raises(PparError, match="b.png"):
        evaluate_dataset(zero_model, strict, CFG, num_classes=K, device="cpu")

    result = evaluate_dataset(zero_model, strict, CFG, num_classes=K, device="cpu", skip_bad=True)
    expected = evaluate_dataset(zero_model, FakeDataset([LABEL_A, LABEL_B]), CFG, num_classes=K, device="cpu")
    # Images a and c (c has b's label): the same totals as A + B, and b is reported, not replaced by c.
    assert result == expected and result.images == 2
    assert result.skipped == ("b",)


def test_decoding_ahead_in_workers_gives_the_same_totals_and_skips_alike(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, label in [("a", LABEL_A), ("b", LABEL_B), ("c", LABEL_B), ("d", LABEL_A)]:
        write_png(tmp_path / "images" / f"{name}.png", image_for(label))
        write_png(tmp_path / "labels" / f"{name}.png", label)
    dataset = build_dataset(f"synth={tmp_path}", split="val")
    inline = evaluate_dataset(zero_model, dataset, CFG, num_classes=K, device="cpu")
    ahead = evaluate_dataset(zero_model, dataset, CFG, num_classes=K, device="cpu", workers=2)
    assert ahead == inline and torch.equal(ahead.confusion, inline.confusion)
    (tmp_path / "images" / "c.png").write_bytes(b"not a png")  # broken: a worker reports it by name
    with pytest.raises(PparError, match="c.png"):
        evaluate_dataset(zero_model, dataset, CFG, num_classes=K, device="cpu", workers=2)
    skipped = evaluate_dataset(zero_model, dataset, CFG, num_classes=K, device="cpu", workers=2, skip_bad=True)
    assert skipped.skipped == ("c",) and skipped.images == 3
