"""Several sources in one run: the sampling rules over many draws, determinism, exact resume with two sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_train_config

from ppar_core.checkpoint import load_checkpoint
from ppar_core.data import build_dataset
from ppar_core.data.registry import source_class_table
from ppar_core.data.transforms import TrainAugment, apply_train_augment
from ppar_core.engine.sampling import TrainSamples, WaitClock
from ppar_core.engine.train import train
from ppar_core.errors import PparError
from ppar_core.labels import SYNTHIA16_TRAIN_IDS
from ppar_core.losses import LossConfig, ppar_loss

AUG = TrainAugment(scale_range=(1.0, 1.0), crop_size=(16, 32), flip_prob=0.0, photometric=False)


class Sized:
    """A stand-in dataset of `n` items (only its length and the index map are exercised)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _draws(sizes: list[int], sampling: str, count: int) -> Counter[int]:
    samples = TrainSamples([Sized(n) for n in sizes], AUG, seed=3, sampling=sampling)  # type: ignore[misc]
    return Counter(samples.source_index(k)[0] for k in range(count))


def test_balanced_gives_every_source_the_same_share_and_proportional_follows_size() -> None:
    balanced = _draws([10, 90], "balanced", 10_000)
    assert balanced[0] == balanced[1] == 5_000  # sources take turns: exactly equal shares
    proportional = _draws([10, 90], "proportional", 10_000)
    assert proportional[0] == 1_000 and proportional[1] == 9_000  # one permutation per epoch of all 100 images


def test_each_source_is_visited_once_per_epoch_in_its_own_order() -> None:
    samples = TrainSamples([Sized(4), Sized(6)], AUG, seed=1, sampling="balanced")  # type: ignore[list-item]
    first = [samples.source_index(k) for k in range(12)]  # 6 draws each: 4 of source 0 is one epoch and 2 more
    zero = [i for s, i in first if s == 0]
    one = [i for s, i in first if s == 1]
    assert sorted(zero[:4]) == [0, 1, 2, 3] and sorted(one) == [0, 1, 2, 3, 4, 5]
    again = TrainSamples([Sized(4), Sized(6)], AUG, seed=1, sampling="balanced")  # type: ignore[list-item]
    assert [again.source_index(k) for k in range(12)] == first  # a pure function of (seed, k)


def test_one_source_keeps_the_order_of_a_single_dataset(synth_root: Path) -> None:
    dataset = build_dataset("synth-source", data_root=synth_root)
    alone = TrainSamples(dataset, AUG, seed=5)
    listed = TrainSamples([dataset], AUG, seed=5, sampling="proportional")
    assert [alone.dataset_index(k) for k in range(20)] == [listed.source_index(k)[1] for k in range(20)]
    with pytest.raises(PparError, match="Unknown source sampling"):
        TrainSamples(dataset, AUG, seed=5, sampling="random")


def _two_sources(synth_root: Path, out: Path, **changes: Any) -> Any:
    return tiny_train_config(
        synth_root, out, iters=6, checkpoint_every=0, data={"targets": [], "source": ["synth-source", "synth-night"]},
        **changes,
    )  # fmt: skip


def test_two_sources_train_record_and_resume_exactly(synth_root: Path, tmp_path: Path) -> None:
    import os
    import signal

    full = train(_two_sources(synth_root, tmp_path / "full"))
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert (
        config["data"]["source"] == ["synth-source", "synth-night"] and config["data"]["source_sampling"] == "balanced"
    )
    stops: list[int] = []

    def stop_after_three(record: dict[str, Any]) -> None:
        if record.get("step") == 3 and not stops:
            stops.append(3)
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the loop stops at the next step boundary

    cut = _two_sources(synth_root, tmp_path / "cut")
    first = train(cut, on_log=stop_after_three)
    assert first.interrupted and first.step == 3
    resumed = train(cut, resume=True)
    assert resumed.step == 6
    a, b = load_checkpoint(full.checkpoint).tensors, load_checkpoint(resumed.checkpoint).tensors
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_a_mixed_batch_holds_both_sources(synth_root: Path) -> None:
    sources = [build_dataset("synth-source", data_root=synth_root), build_dataset("synth-night", data_root=synth_root)]
    samples = TrainSamples(sources, AUG, seed=0, sampling="balanced")
    batch = [samples[k] for k in range(4)]
    assert [item[3] for item in batch] == [0, 1, 0, 1]
    _, index = samples.source_index(1)
    expected, _ = apply_train_augment(
        sources[1][index].image, sources[1][index].label, AUG, np.random.default_rng([0, 1])
    )
    assert np.array_equal(batch[1][0].permute(1, 2, 0).numpy(), expected)  # sample 1 is the night image it names


# ---------------------------------------------------------------- partial labels (SYNTHIA's 16 classes)
UNLABELLED_BY_SYNTHIA = [k for k in range(19) if k not in SYNTHIA16_TRAIN_IDS]  # terrain, truck, train


def test_the_class_table_marks_synthias_16_classes_only_in_a_mix() -> None:
    table = source_class_table(["gta5", "synthia=/data/synthia"], 19)
    assert table is not None and table.shape == (2, 19) and bool(table[0].all())
    assert [k for k in range(19) if not table[1, k]] == UNLABELLED_BY_SYNTHIA == [9, 14, 16]
    # One source, or sources that all label the same classes: no table, so the loss is the one it always was.
    for specs in (["gta5"], ["synthia"], ["gta5", "cityscapes"], ["synthia", "synthia=/other/copy"]):
        assert source_class_table(specs, 19) is None


def _mixed_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels, dense embeddings and the class mask of a GTA5 image (all 19 classes in its labels) and a
    SYNTHIA image (only its 16, some pixels ignored)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 19, 8, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 19, (2, 8, 16), generator=g)
    synthia = torch.tensor(SYNTHIA16_TRAIN_IDS)
    labels[1] = synthia[torch.randint(0, 16, (8, 16), generator=g)]
    labels[1, :2] = 255
    dense = torch.randn(2, 8, 4, 8, generator=g, requires_grad=True)
    table = source_class_table(["gta5", "synthia"], 19)
    assert table is not None
    return logits, labels, dense, torch.from_numpy(table)


def test_synthias_unlabelled_classes_get_no_gradient_in_a_mixed_batch() -> None:
    logits, labels, dense, mask = _mixed_batch()
    otp, vtp = torch.randn(19, 8), torch.randn(2, 19, 8, requires_grad=True)
    # Late in training: reweighting on, alignment to the OTP and the VTP both active.
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3, class_mask=mask)
    terms.total.backward()
    assert torch.isfinite(terms.total) and torch.isfinite(dense.grad).all() and torch.isfinite(vtp.grad).all()
    assert logits.grad is not None
    assert torch.equal(logits.grad[1, UNLABELLED_BY_SYNTHIA], torch.zeros_like(logits.grad[1, UNLABELLED_BY_SYNTHIA]))
    assert bool((logits.grad[0, UNLABELLED_BY_SYNTHIA].abs() > 0).all())  # GTA5's pixels still push them down
    # Without the mask the SYNTHIA image pushes its unlabelled classes down like any other negative.
    logits.grad = None
    ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3).total.backward()
    assert bool((logits.grad[1, UNLABELLED_BY_SYNTHIA].abs() > 0).any())


def test_the_masked_segmentation_loss_is_cross_entropy_over_each_sources_classes() -> None:
    logits, labels, dense, mask = _mixed_batch(seed=1)
    terms = ppar_loss(logits, labels, dense, torch.randn(19, 8), None, cfg=LossConfig(method="erm"), progress=0.0,
                      class_mask=mask)  # fmt: skip
    # By hand: image 0 over all 19 classes; image 1 over its 16, its labels renumbered into that subset.
    subset = list(SYNTHIA16_TRAIN_IDS)
    renumber = torch.full((256,), 255, dtype=torch.long)
    renumber[torch.tensor(subset)] = torch.arange(16)
    ce0 = F.cross_entropy(logits[:1], labels[:1], ignore_index=255, reduction="sum")
    ce1 = F.cross_entropy(logits[1:, subset], renumber[labels[1:]], ignore_index=255, reduction="sum")
    expected = (ce0 + ce1) / (labels != 255).sum()
    torch.testing.assert_close(terms.seg, expected)
    # A mask that keeps every class is no mask at all, bit for bit.
    full = torch.ones_like(mask)
    cfg = LossConfig()
    a = ppar_loss(logits, labels, dense, torch.randn(19, 8, generator=torch.Generator().manual_seed(2)),
                  torch.ones(2, 19, 8), cfg=cfg, progress=0.4, class_mask=full)  # fmt: skip
    b = ppar_loss(logits, labels, dense, torch.randn(19, 8, generator=torch.Generator().manual_seed(2)),
                  torch.ones(2, 19, 8), cfg=cfg, progress=0.4)  # fmt: skip
    assert torch.equal(a.stacked(), b.stacked())


def _synthia_folder(root: Path, num: int = 4) -> Path:
    """A SYNTHIA-RAND-CITYSCAPES layout: RGB/*.png and 16-bit GT/LABELS/*.png, class id in the red channel."""
    rng = np.random.default_rng(0)
    (root / "RGB").mkdir(parents=True)
    (root / "GT" / "LABELS").mkdir(parents=True)
    synthia_ids = np.array([3, 4, 2, 1, 6, 7, 15, 9, 5])  # road, sidewalk, building, sky, vegetation, ...
    for i in range(num):
        image = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / "RGB" / f"{i:07d}.png"), image)
        bgr = np.zeros((64, 128, 3), dtype=np.uint16)
        bgr[..., 2] = synthia_ids[rng.integers(0, len(synthia_ids), (64, 128))]
        assert cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), bgr)
    return root


def test_a_gta5_and_synthia_run_masks_each_images_classes(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    from ppar_core.engine import step as step_module

    synthia = _synthia_folder(tmp_path / "synthia")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_loss = step_module.ppar_loss

    def spy(logits, labels, *args, class_mask=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((labels.clone(), class_mask))
        return real_loss(logits, labels, *args, class_mask=class_mask, **kwargs)

    monkeypatch.setattr(step_module, "ppar_loss", spy)
    cfg = tiny_train_config(
        synth_root, tmp_path / "run", iters=2, checkpoint_every=0,
        data={"targets": [], "source": ["synth-source", f"synthia={synthia}"]},
    )  # fmt: skip
    result = train(cfg)
    assert result.step == 2 and len(seen) == 2
    for labels, mask in seen:
        # Balanced sampling: sample k comes from source k mod 2, so each batch of 2 is (synth-source, SYNTHIA).
        assert mask is not None and bool(mask[0].all())
        assert [k for k in range(19) if not mask[1, k]] == UNLABELLED_BY_SYNTHIA
        assert not bool(torch.isin(labels[1], torch.tensor(UNLABELLED_BY_SYNTHIA)).any())


def test_the_wait_clock_adds_up_the_time_spent_in_next() -> None:
    import time

    def slow() -> Any:
        for item in range(3):
            time.sleep(0.05)
            yield item

    clock = WaitClock(slow())
    assert [next(clock), next(clock)] == [0, 1]
    first = clock.take()
    assert first >= 0.1 and clock.take() == 0.0  # take() starts again from zero
    assert list(clock) == [2] and clock.take() >= 0.05  # the final, exhausted next() is counted too
