"""The photometric distortion on the device against the CPU's (`apply_photometric`, OpenCV), on the same parameters."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from conftest import tiny_train_config

from ppar_core.data import build_dataset
from ppar_core.data.device_photometric import _hsv_to_rgb, _rgb_to_hsv, photometric_on_device
from ppar_core.data.transforms import NO_PHOTOMETRIC, TrainAugment, apply_photometric, draw_photometric
from ppar_core.engine.sampling import TrainSamples
from ppar_core.engine.train import train


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    """(n,H,W,3) uint8: smooth colour ramps plus noise, so every hue, saturation and value range is covered."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:24, 0:32]
    base = np.stack([x * 8, y * 10, (x + y) * 4], axis=-1).astype(np.float32)
    return np.clip(base[None] + rng.normal(0, 40, (n, 24, 32, 3)), 0, 255).astype(np.uint8)


def _on_device(images: np.ndarray, params: np.ndarray) -> np.ndarray:
    out = photometric_on_device(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(params))
    return out.permute(0, 2, 3, 1).numpy()


def test_brightness_and_contrast_equal_the_cpu_bit_for_bit() -> None:
    full_range = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    images = np.concatenate([_images(3), _images(1, seed=9)])
    for seed in range(200):
        params = draw_photometric(np.random.default_rng(seed))
        params[2:4] = np.nan  # no HSV step: only the per-value arithmetic
        for picture in (*images, full_range[0]):
            ours = _on_device(picture[None], params[None])[0]
            np.testing.assert_array_equal(ours, apply_photometric(picture, params))


def test_the_hsv_conversions_are_opencvs() -> None:
    every = np.stack(np.meshgrid(*(np.arange(256),) * 3, indexing="ij"), -1).reshape(1, -1, 1, 3)[:, ::3]
    colours = np.ascontiguousarray(every.astype(np.uint8))  # every third of the 2^24 colours
    theirs = cv2.cvtColor(colours[0], cv2.COLOR_RGB2HSV)
    ours = _rgb_to_hsv(torch.from_numpy(colours).permute(0, 3, 1, 2).float()).permute(0, 2, 3, 1)[0].numpy()
    np.testing.assert_array_equal(ours, theirs)  # OpenCV's fixed-point arithmetic, exactly
    # HSV -> RGB on rows as wide as images (OpenCV's vector code, which truncates; a one-pixel row rounds).
    hsv = np.stack(np.meshgrid(np.arange(180), np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 3)
    hsv = np.ascontiguousarray(hsv[: len(hsv) // 2 // 64 * 64 * 2 : 2].reshape(-1, 64, 3).astype(np.uint8))
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.int64)
    back = _hsv_to_rgb(torch.from_numpy(hsv).permute(2, 0, 1)[None].float()).permute(0, 2, 3, 1)[0].numpy()
    diff = np.abs(back.astype(np.int64) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # about one colour in 20,000, by one grey level


def test_both_paths_give_the_same_distribution_of_colours() -> None:
    images = _images(4, seed=1)
    cpu, device = [], []
    for seed in range(64):  # every combination of the coin flips, several times
        params = draw_photometric(np.random.default_rng(seed))
        cpu.append(np.stack([apply_photometric(image, params) for image in images]))
        device.append(_on_device(images, np.repeat(params[None], len(images), axis=0)))
        # Per pixel, the two paths differ by a grey level at most, rarely (two after a contrast step stretches it).
        diff = np.abs(cpu[-1].astype(int) - device[-1].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.01
    a, b = np.concatenate(cpu).astype(np.float64), np.concatenate(device).astype(np.float64)
    for channel in range(3):
        assert abs(a[..., channel].mean() - b[..., channel].mean()) < 0.05
        assert abs(a[..., channel].std() - b[..., channel].std()) < 0.05


def test_a_sample_with_nothing_drawn_is_left_as_it_is() -> None:
    images = _images(2)
    assert np.array_equal(_on_device(images, np.stack([NO_PHOTOMETRIC, NO_PHOTOMETRIC])), images)


def test_the_workers_draw_the_parameters_the_cpu_path_would_apply(synth_root: Path, tmp_path: Path) -> None:
    dataset = build_dataset("synth-source", data_root=synth_root)
    cpu_aug = TrainAugment(scale_range=(1.0, 1.5), crop_size=(32, 64))
    device_aug = TrainAugment(scale_range=(1.0, 1.5), crop_size=(32, 64), photometric_on="device")
    on_cpu, deferred = TrainSamples(dataset, cpu_aug, seed=4), TrainSamples(dataset, device_aug, seed=4)
    for k in range(6):
        image_cpu, label_cpu, *_ = on_cpu[k]
        image_raw, label_raw, _, _, params = deferred[k]
        assert torch.equal(label_cpu, label_raw)  # the same crop and flip
        applied = photometric_on_device(image_raw[None], params[None])[0]
        assert (applied.int() - image_cpu.int()).abs().max() <= 2
    cfg = tiny_train_config(synth_root, tmp_path / "run", iters=2, data={"augment": {"photometric_on": "device"}})
    assert train(cfg).step == 2
