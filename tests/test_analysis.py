"""The reliability analysis library: statistics read back from a real run, weight maps equal to the loss's own,
per-class statistics against an independent numpy computation, and plots that are real pictures."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import safetensors
import torch
import torch.nn.functional as F

from ppar_core.analysis.weights import (
    AnalysisConfig,
    StepSchedule,
    analyze_weights,
    image_summary,
    load_weight_stats,
    parse_resize,
    prepare_pair,
    step_schedule,
    weight_maps,
)
from ppar_core.data.base import spread_indices
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES
from ppar_core.losses import LossConfig, ppar_loss
from ppar_core.reliability import WeightStats, hist_edges

PIXELS_PER_CROP = 64 * 128  # the fixture's crops are whole 64x128 synthetic images, which have no ignored pixel


def _batch(root: Path, names: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    from ppar_core.data import build_dataset
    from ppar_core.normalize import image_to_tensor

    ds = build_dataset("synth-source", data_root=root)
    images = torch.cat([image_to_tensor(ds[i].image, device="cpu") for i in names])
    labels = torch.stack([torch.from_numpy(ds[i].label.astype(np.int64)) for i in names])
    return images, labels


@pytest.fixture(scope="module")
def tiny_model(tiny_run):
    from ppar_core.loading import load_segmentor

    return load_segmentor(tiny_run.checkpoint, device="cpu")[0]


def test_checkpoint_statistics_round_trip(tiny_run) -> None:
    report = load_weight_stats(tiny_run.checkpoint)
    # An independent reader of the same file: safetensors itself, no ppar code.
    with safetensors.safe_open(str(tiny_run.checkpoint), framework="np") as handle:
        names = ("weight_hist", "weight_sum", "weight_count", "weight_low", "weight_high")
        hist, sums, counts, low, high = (handle.get_tensor(name) for name in names)
    assert report.source == "checkpoint" and report.weights_applied and report.mode == "otp"
    assert report.images == [] and report.w_max == 3.0
    for k, name in enumerate(CLASS_NAMES):
        entry = report.classes[name]
        assert entry["hist"] == [int(c) for c in hist[k]] and sum(entry["hist"]) == entry["pixels"] == counts[k]
        if counts[k]:
            assert entry["mean"] == pytest.approx(sums[k] / counts[k], rel=1e-12)
            assert entry["low_fraction"] == pytest.approx(low[k] / counts[k])
            assert entry["high_fraction"] == pytest.approx(high[k] / counts[k])
        else:
            assert entry["mean"] is None
    # 4 steps x batch 2 x one 64x128 crop each, every pixel labelled: all of them were recorded.
    assert report.total_pixels == 4 * 2 * PIXELS_PER_CROP
    # progress 0, .25, .5, .75 with warm-up .1 and ramp .1: step 0 recorded w = 1, the others the full weights.
    assert report.schedule == StepSchedule(warmup=1, ramp=0, full=3)
    one_bin = int(np.searchsorted(hist_edges(3.0).numpy(), 1.0, side="right")) - 1
    assert hist[:, one_bin].sum() >= 2 * PIXELS_PER_CROP  # the warm-up step's w = 1 pixels
    assert hist.sum() - hist[:, one_bin].sum() > 0  # and the later steps applied weights other than 1
    assert low.sum() > 0 and high.sum() > 0


def test_step_schedule_hand_computed() -> None:
    loss = LossConfig(weight_warmup=0.1, weight_ramp=0.1)
    # progress s/20: s = 0, 1, 2 have rho 0 (2/20 = .1 starts the ramp at 0), s = 3 has rho .5, s >= 4 rho 1.
    assert step_schedule(loss, iters=20, steps=20) == StepSchedule(warmup=3, ramp=1, full=16)
    assert step_schedule(loss, iters=20, steps=3) == StepSchedule(warmup=3, ramp=0, full=0)


@pytest.mark.parametrize(
    "loss",
    [
        LossConfig(reweight="otp"),
        LossConfig(reweight="otp", tau_w=0.2, eta=2.0, w_min=0.3, w_max=2.5),
        LossConfig(reweight="ratio", eta=0.5),
    ],
    ids=["otp", "otp-options", "ratio"],
)
def test_weight_maps_match_the_loss_weights(tiny_run, tiny_model, loss: LossConfig) -> None:
    model = tiny_model
    images, labels = _batch(tiny_run.data_root, [0, 3])
    labels[0, :10, :20] = 255  # ignored pixels must get weight 0 and stay out of the normalisation
    with torch.no_grad():
        output = model(images)
        logits = F.interpolate(output.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        terms = ppar_loss(logits, labels, output.dense.float(), model.otp, output.vtp.float(), cfg=loss, progress=1.0)
    assert terms.weight_ramp == 1.0 and terms.weights is not None
    weights, r = weight_maps(model, images, labels, loss=loss)
    torch.testing.assert_close(weights, terms.weights, rtol=0, atol=1e-6)
    assert (weights[0, :10, :20] == 0).all() and (r[0, :10, :20] == 0).all()
    valid = labels != 255
    assert weights[valid].min() >= loss.w_min - 1e-6 and weights[valid].max() <= loss.w_max + 1e-6
    if loss.reweight == "otp":  # (ratio is ~1 here: the decoder VTP starts as the OTP, gamma 1e-4)
        assert weights[valid].std() > 0.01  # not a trivial all-ones map


@pytest.fixture(scope="module")
def data_report(tiny_run, tmp_path_factory):
    """Weights computed afresh on 3 of the 6 source images, with every PNG written (shared: plots are slow)."""
    config = AnalysisConfig(data="synth-source", data_root=str(tiny_run.data_root), num_images=3, device="cpu")
    out = tmp_path_factory.mktemp("analysis")
    return analyze_weights(tiny_run.checkpoint, config=config, out=out), out


def test_data_statistics_match_an_independent_numpy_computation(tiny_run, tiny_model, data_report) -> None:
    from ppar_core.data import build_dataset
    from ppar_core.normalize import image_to_tensor

    report = data_report[0]
    assert report.source == "data" and report.mode == "otp" and len(report.images) == 3

    model = tiny_model
    ds = build_dataset("synth-source", data_root=tiny_run.data_root)
    loss = LossConfig()  # the fixture's run uses the default loss options
    edges = hist_edges(loss.w_max).numpy()
    hist = np.zeros((len(CLASS_NAMES), len(edges) - 1), dtype=np.int64)
    sums = np.zeros(len(CLASS_NAMES))
    low_by_file = {}
    for index in spread_indices(len(ds), 3):  # 6 images -> 0, 2, 5
        sample = ds[index]
        image = image_to_tensor(sample.image, device="cpu")
        label = torch.from_numpy(sample.label.astype(np.int64))[None]
        w = weight_maps(model, image, label, loss=loss)[0][0].numpy().astype(np.float64)
        for k in range(len(CLASS_NAMES)):
            wk = w[sample.label == k]
            hist[k] += np.histogram(wk, bins=edges)[0]
            sums[k] += wk.sum()
        low_by_file[str(ds.pairs[index][0])] = (w < 0.5).mean()
    for k, name in enumerate(CLASS_NAMES):
        entry = report.classes[name]
        assert entry["hist"] == hist[k].tolist()
        if hist[k].sum():
            assert entry["mean"] == pytest.approx(sums[k] / hist[k].sum(), rel=1e-6)
    assert {item.file: item.low_fraction for item in report.images} == pytest.approx(low_by_file)
    fractions = [item.low_fraction for item in report.images]
    assert fractions == sorted(fractions, reverse=True)  # most down-weighted first


def test_prepare_pair_pads_to_the_stride_and_resizes() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (50, 70, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (50, 70), dtype=np.uint8)
    padded_image, padded_label, size = prepare_pair(image, label, stride=16, resize=None)
    assert size == (50, 70) and padded_image.shape == (64, 80, 3) and padded_label.shape == (64, 80)
    assert (padded_image[:50, :70] == image).all() and (padded_label[:50, :70] == label).all()
    assert (padded_image[50:] == 0).all() and (padded_label[:, 70:] == 255).all()
    resized_image, resized_label, size = prepare_pair(image, label, stride=16, resize=(32, 40))
    assert size == (32, 40) and resized_image.shape == (32, 48, 3)
    assert set(np.unique(resized_label[:32, :40])) <= set(np.unique(label))  # nearest: no new label value


def test_small_helpers_hand_computed() -> None:
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(3, 8) == [0, 1, 2]
    assert parse_resize("train", run_resize=(720, 1280)) == (720, 1280)
    assert parse_resize("none", run_resize=(720, 1280)) is None
    assert parse_resize("64x128", run_resize=None) == (64, 128)
    with pytest.raises(PparError, match="--resize"):
        parse_resize("big", run_resize=None)
    weights = np.array([[0.2, 1.0], [3.0, 9.9]])
    label = np.array([[1, 2], [3, 255]], dtype=np.uint8)
    summary = image_summary(weights, label, file="a.png", name="a")
    assert summary.pixels == 3 and summary.low_pixels == 1
    assert summary.mean == pytest.approx(4.2 / 3) and summary.low_fraction == pytest.approx(1 / 3)
    assert summary.to_dict() == {"file": "a.png", "mean": summary.mean, "low_fraction": summary.low_fraction}
    empty = image_summary(weights, np.full((2, 2), 255, np.uint8), file="b.png", name="b")
    assert empty.mean is None and empty.low_fraction == 0.0


def _assert_picture(path: Path) -> None:
    picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert picture is not None, f"{path} is not a decodable PNG"
    assert picture.shape[0] > 50 and picture.shape[1] > 50
    packed = picture.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])  # one int per colour: fast unique
    assert picture.std() > 10 and len(np.unique(packed)) > 20, f"{path} looks blank"


def test_plots_and_overlays_written_and_not_blank(tiny_run, data_report, tmp_path: Path) -> None:
    report, out = data_report
    names = sorted(p.relative_to(out).as_posix() for p in report.files)
    assert names == sorted(
        ["class_histograms.png", "class_mean_weights.png"] + [f"images/{i.name}.png" for i in report.images]
    )
    for path in report.files:
        _assert_picture(path)
    overlay = cv2.imread(str(out / "images" / f"{report.images[0].name}.png"))
    assert overlay.shape[1] == 2 * 3 * 128 + 4  # heat map and label colours side by side, 64x128 enlarged x3
    checkpoint_report = analyze_weights(tiny_run.checkpoint, out=tmp_path / "ckpt")
    assert [p.name for p in checkpoint_report.files] == ["class_histograms.png", "class_mean_weights.png"]
    for path in checkpoint_report.files:
        _assert_picture(path)


def test_without_matplotlib_overlays_still_written(tiny_run, tmp_path: Path, monkeypatch) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import` raise ImportError
    config = AnalysisConfig(data="synth-source", data_root=str(tiny_run.data_root), num_images=1, device="cpu")
    report = analyze_weights(tiny_run.checkpoint, config=config, out=tmp_path)
    assert report.plots_note is not None and "pip install 'ppar[plots]'" in report.plots_note
    assert [p.parent.name for p in report.files] == ["images"] and report.files[0].exists()


def test_checkpoint_without_statistics_is_a_clear_error(tiny_run, tmp_path: Path) -> None:
    from ppar_core.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(tiny_run.checkpoint)
    tensors = {k: v for k, v in ck.tensors.items() if k not in WeightStats.buffer_names()}
    path = tmp_path / "old.safetensors"
    save_checkpoint(path, tensors=tensors, config=ck.config, step=ck.step)
    with pytest.raises(PparError, match=r"old\.safetensors has no reliability statistics"):
        load_weight_stats(path)


def test_overall_weights_are_the_pixel_weighted_means_of_the_classes() -> None:
    from ppar_core.analysis.report import WeightReport

    classes = {
        "road": {"mean": 1.5, "low_fraction": 0.0, "high_fraction": 0.5, "pixels": 30, "hist": []},
        "car": {"mean": 0.5, "low_fraction": 0.4, "high_fraction": 0.0, "pixels": 10, "hist": []},
        "bus": {"mean": None, "low_fraction": 0.0, "high_fraction": 0.0, "pixels": 0, "hist": []},
    }
    report = WeightReport("data", ["gta5"], Path("x"), 1, "ppar", "otp", True, "otp", 3.0, classes)
    # mean (1.5*30 + 0.5*10) / 40 = 1.25; below 0.5: 4 of 40 pixels; above 2: 15 of 40.
    assert report.overall() == {"mean": 1.25, "low_fraction": 0.1, "high_fraction": 0.375}
