"""Paired image/label transforms for training (numpy + OpenCV, no torch).

Images are (H,W,3) uint8 RGB, labels (H,W) uint8 trainIds with 255 = ignore. Labels are only ever resampled by
nearest neighbour, so no value appears that was not in the input. All randomness comes from an explicit
`rng: np.random.Generator`, so a training run is reproducible from its seed, also across DataLoader workers
(give each worker its own generator spawned from the run's seed).

The pipeline follows the usual DGSS recipe (mmsegmentation's): resize, random scale, random crop with a maximum
single-class ratio, horizontal flip, photometric distortion.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ppar_core.errors import PparError
from ppar_core.labels import IGNORE_INDEX

_CROP_TRIES = 10


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation settings, applied in field order by `apply_train_augment`."""

    resize: tuple[int, int] | None = None  # (H,W) applied first, e.g. (720, 1280) for GTA5; None keeps the size
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor range, relative to the resized image
    crop_size: tuple[int, int] = (512, 512)  # (H,W) of the crop; smaller images are padded (image 0, label 255)
    cat_max_ratio: float = 0.75  # crop retried (up to 10 times) while one class covers more of the valid pixels
    flip_prob: float = 0.5  # probability of a horizontal flip
    photometric: bool = True  # brightness, contrast, saturation and hue jitter (image only)

    def validate(self) -> TrainAugment:
        """Raise PparError naming the first bad field (as `data.augment.<field>`); returns self."""
        if min(self.crop_size) < 1:
            raise PparError(f"The training crop must be at least 1x1 pixels, got {self.crop_size} (--crop).")
        if self.resize is not None and min(self.resize) < 1:
            raise PparError(f"Config field data.augment.resize must be positive (H, W), got {self.resize}.")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise PparError(f"Config field data.augment.scale_range must satisfy 0 < low <= high, got {low}, {high}.")
        if not 0 < self.cat_max_ratio <= 1:
            raise PparError(f"Config field data.augment.cat_max_ratio must lie in (0, 1], got {self.cat_max_ratio}.")
        if not 0 <= self.flip_prob <= 1:
            raise PparError(f"Config field data.augment.flip_prob must lie in [0, 1], got {self.flip_prob}.")
        return self


def resize(image: np.ndarray, label: np.ndarray, *, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize a pair to `size` (H,W): image bilinear, label nearest. (H,W,3) uint8, (H,W) uint8 -> same dtypes."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image, label
    new_image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    # INTER_NEAREST_EXACT samples at pixel centres (like PIL and torch "nearest-exact"); plain INTER_NEAREST is
    # shifted by half a pixel, which misaligns labels with the bilinear image.
    new_label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return new_image, new_label


def random_scale(
    image: np.ndarray, label: np.ndarray, *, scale_range: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale a pair by a factor drawn uniformly from `scale_range` (aspect ratio kept)."""
    factor = float(rng.uniform(scale_range[0], scale_range[1]))
    height, width = image.shape[:2]
    return resize(image, label, size=(max(1, round(height * factor)), max(1, round(width * factor))))


def pad_to(image: np.ndarray, label: np.ndarray, *, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad a pair at the bottom/right up to at least `size` (H,W): image with 0, label with 255 (ignored)."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, size[0] - height), max(0, size[1] - width)
    if not pad_h and not pad_w:
        return image, label
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    *,
    size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a pair to `size` (H,W), padding first when it is smaller.

    With `cat_max_ratio` < 1 a crop is accepted only if no single class covers more than that fraction of its valid
    (non-ignored) pixels, and it has some; up to 10 crops are drawn and the last one is kept if none qualifies.
    """
    image, label = pad_to(image, label, size=size)
    height, width = image.shape[:2]
    crop_h, crop_w = size
    for _ in range(_CROP_TRIES):
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop_label = label[top : top + crop_h, left : left + crop_w]
        if cat_max_ratio >= 1.0 or _class_ratio_ok(crop_label, cat_max_ratio):
            break
    return image[top : top + crop_h, left : left + crop_w], crop_label


def _class_ratio_ok(label: np.ndarray, cat_max_ratio: float) -> bool:
    counts = np.bincount(label.ravel(), minlength=256)
    counts[IGNORE_INDEX] = 0
    valid = counts.sum()
    return bool(valid > 0 and counts.max() <= cat_max_ratio * valid)


def random_flip(
    image: np.ndarray, label: np.ndarray, *, prob: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip a pair left-right with probability `prob` (one draw from `rng` whatever `prob` is)."""
    if rng.random() < prob:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    return image, label


def photometric_distortion(
    image: np.ndarray,
    *,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (each applied with probability 1/2), mmseg's recipe.

    (H,W,3) uint8 RGB -> (H,W,3) uint8 RGB. Contrast comes before or after the HSV changes, at random. Hue is in
    OpenCV's 0-179 units (2 degrees each).
    """
    out = image.astype(np.float32)
    if rng.integers(2):
        out += float(rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        out *= float(rng.uniform(*contrast_range))
    do_saturation, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if do_saturation or do_hue:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_saturation:
            hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(*saturation_range)), 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.integers(2):
        out *= float(rng.uniform(*contrast_range))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def apply_train_augment(
    image: np.ndarray, label: np.ndarray, aug: TrainAugment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The full training pipeline: (H,W,3) uint8, (H,W) uint8 -> (crop_h,crop_w,3) uint8, (crop_h,crop_w) uint8."""
    if aug.resize is not None:
        image, label = resize(image, label, size=aug.resize)
    image, label = random_scale(image, label, scale_range=aug.scale_range, rng=rng)
    image, label = random_crop(image, label, size=aug.crop_size, rng=rng, cat_max_ratio=aug.cat_max_ratio)
    image, label = random_flip(image, label, prob=aug.flip_prob, rng=rng)
    if aug.photometric:
        image = photometric_distortion(image, rng=rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
