"""Paired transforms: labels stay nearest-neighbour, crops and padding, the class-ratio rule, flips, determinism,
CLIP normalisation."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from ppar_core.data.transforms import (
    TrainAugment,
    apply_train_augment,
    pad_to,
    photometric_distortion,
    random_flip,
    random_scale_crop,
    resize,
)

# --- references: the two-step scale-then-crop and the float32 photometric distortion, as ppar computed them before
# the sample path became one resampling and lookup tables; the library must give the same samples.


def reference_scale_crop(
    image: np.ndarray, label: np.ndarray, *, scale_range, size, rng, cat_max_ratio: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    factor = float(rng.uniform(scale_range[0], scale_range[1]))
    height, width = image.shape[:2]
    image, label = resize(image, label, size=(max(1, round(height * factor)), max(1, round(width * factor))))
    image, label = pad_to(image, label, size=size)
    height, width = image.shape[:2]
    for _ in range(10):
        top = int(rng.integers(0, height - size[0] + 1))
        left = int(rng.integers(0, width - size[1] + 1))
        crop_label = label[top : top + size[0], left : left + size[1]]
        counts = np.bincount(crop_label.ravel(), minlength=256)
        counts[255] = 0
        if cat_max_ratio >= 1.0 or (counts.sum() > 0 and counts.max() <= cat_max_ratio * counts.sum()):
            break
    return image[top : top + size[0], left : left + size[1]], crop_label


def reference_photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32)
    if rng.integers(2):
        out += float(rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        out *= float(rng.uniform(0.5, 1.5))
    do_saturation, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if do_saturation or do_hue:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_saturation:
            hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(0.5, 1.5)), 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-18, 19))) % 180
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.integers(2):
        out *= float(rng.uniform(0.5, 1.5))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def random_crop(image, label, *, size, rng, cat_max_ratio: float = 1.0):
    """The scale-1 case of the library's one-step scale-and-crop (a plain random crop)."""
    return random_scale_crop(image, label, scale_range=(1.0, 1.0), size=size, rng=rng, cat_max_ratio=cat_max_ratio)


def make_pair(height: int = 24, width: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 5, 13, 255], np.uint8), size=(height, width))
    return image, label


def test_resize_label_is_nearest_and_exact_on_integer_upscale() -> None:
    image, label = make_pair(4, 6)
    big_image, big_label = resize(image, label, size=(8, 12))
    assert big_image.shape == (8, 12, 3) and big_image.dtype == np.uint8
    # an exact 2x nearest upscale repeats each pixel: independent reference with np.repeat
    np.testing.assert_array_equal(big_label, label.repeat(2, axis=0).repeat(2, axis=1))
    _, odd = resize(image, label, size=(7, 5))
    assert set(np.unique(odd)) <= set(np.unique(label))


@pytest.mark.parametrize("cat_max_ratio", [1.0, 0.75])
def test_one_step_scale_crop_equals_resize_pad_crop(cat_max_ratio: float) -> None:
    # Natural-looking images (smooth, as scenes are): the one resampling equals the full resize to a grey level.
    from ppar_core.data.synth import make_sample

    for seed in range(40):
        image, label = make_sample("synth-source", seed % 7, size=(48, 80), seed=seed)
        args = {"scale_range": (0.5, 2.0), "size": (40, 56), "cat_max_ratio": cat_max_ratio}
        ours = random_scale_crop(image, label, rng=np.random.default_rng(seed), **args)
        ref = reference_scale_crop(image, label, rng=np.random.default_rng(seed), **args)
        np.testing.assert_array_equal(ours[1], ref[1])  # labels: the same pixels, exactly
        diff = np.abs(ours[0].astype(int) - ref[0].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.25, seed  # fixed-point rounding: at most one grey level


def test_crop_size_and_padding_values() -> None:
    image, label = make_pair(10, 40)
    out_image, out_label = random_crop(image, label, size=(16, 16), rng=np.random.default_rng(0))
    assert out_image.shape == (16, 16, 3) and out_label.shape == (16, 16)
    assert (out_image[10:] == 0).all() and (out_label[10:] == 255).all()  # padded rows: image 0, label ignored
    # the unpadded part is a window of the input at some offset
    left = next(x for x in range(25) if (image[:, x : x + 16] == out_image[:10]).all())
    np.testing.assert_array_equal(out_label[:10], label[:, left : left + 16])


def test_crop_respects_cat_max_ratio_on_a_crafted_label() -> None:
    # left half road, right half car; a 32-wide crop at offset x holds 32-x road columns, so it qualifies for
    # ratio 0.75 only when 8 <= x <= 24 (about half of the offsets), and ignored pixels do not count
    label = np.zeros((8, 64), np.uint8)
    label[:, 32:] = 13
    label[0] = 255
    image = np.zeros((8, 64, 3), np.uint8)
    for seed in range(20):
        _, crop = random_crop(image, label, size=(8, 32), rng=np.random.default_rng(seed), cat_max_ratio=0.75)
        counts = np.bincount(crop.ravel(), minlength=256)[:255]
        assert counts.max() <= 0.75 * counts.sum(), seed
    # without the rule, crops dominated by one class do happen with these seeds
    plain = [random_crop(image, label, size=(8, 32), rng=np.random.default_rng(s))[1] for s in range(20)]
    assert any(np.bincount(c.ravel(), minlength=256)[:255].max() > 0.75 * 7 * 32 for c in plain)


def test_flip_pairs_image_and_label() -> None:
    image, label = make_pair(5, 7)
    flipped = [random_flip(image, label, prob=0.5, rng=np.random.default_rng(s)) for s in range(10)]
    assert any(f[1] is not label for f in flipped) and any(f[1] is label for f in flipped)
    for out_image, out_label in flipped:
        if out_label is not label:
            np.testing.assert_array_equal(out_image, image[:, ::-1])
            np.testing.assert_array_equal(out_label, label[:, ::-1])
    out_image, out_label = random_flip(image, label, prob=1.0, rng=np.random.default_rng(0))
    assert out_label[0, 0] == label[0, -1] and (out_image[2, 1] == image[2, -2]).all()


def test_photometric_changes_image_only_within_uint8() -> None:
    image, _ = make_pair(16, 16)
    outs = [photometric_distortion(image, rng=np.random.default_rng(s)) for s in range(8)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


def test_photometric_lookup_tables_equal_the_float_arithmetic_bit_for_bit() -> None:
    image, _ = make_pair(40, 60, seed=3)
    full_range = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)  # every value in every channel
    for seed in range(300):  # every combination of the 6 coin flips occurs many times
        for picture in (image, full_range):
            ours = photometric_distortion(picture, rng=np.random.default_rng(seed))
            np.testing.assert_array_equal(ours, reference_photometric(picture, np.random.default_rng(seed)))


def test_full_pipeline_is_deterministic_per_seed_and_shapes() -> None:
    image, label = make_pair(30, 50)
    aug = TrainAugment(resize=(36, 60), crop_size=(32, 48))

    def run(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return apply_train_augment(image, label, aug, np.random.default_rng(seed))

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))
    assert a[0].shape == (32, 48, 3) and a[1].shape == (32, 48) and a[0].dtype == a[1].dtype == np.uint8
    assert set(np.unique(a[1])) <= {0, 5, 13, 255}
    with pytest.raises(dataclasses.FrozenInstanceError):
        aug.crop_size = (1, 1)  # type: ignore[misc]
