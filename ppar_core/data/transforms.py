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
PHOTOMETRIC_PLACES = ("cpu", "device")  # where the photometric distortion runs (`TrainAugment.photometric_on`)
# The drawn photometric parameters as a float32 vector, NaN where a step was not drawn (see `draw_photometric`).
PHOTOMETRIC_PARAMS = ("brightness", "contrast_before", "saturation", "hue", "contrast_after")
NO_PHOTOMETRIC = np.full(len(PHOTOMETRIC_PARAMS), np.nan, dtype=np.float32)  # nothing to apply


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation settings, applied in field order by `apply_train_augment`."""

    resize: tuple[int, int] | None = None  # (H,W) applied first, e.g. (720, 1280) for GTA5; None keeps the size
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor range, relative to the resized image
    crop_size: tuple[int, int] = (512, 512)  # (H,W) of the crop; smaller images are padded (image 0, label 255)
    cat_max_ratio: float = 0.75  # crop retried (up to 10 times) while one class covers more of the valid pixels
    flip_prob: float = 0.5  # probability of a horizontal flip
    photometric: bool = True  # brightness, contrast, saturation and hue jitter (image only)
    # Where it runs: "cpu" in the loader's workers, or "device" in the training step (`data.device_photometric`),
    # for when the CPU is the limit. The same parameters are drawn from the same generator either way.
    photometric_on: str = "cpu"

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
        if self.photometric_on not in PHOTOMETRIC_PLACES:
            raise PparError(
                f"Config field data.augment.photometric_on must be one of {', '.join(PHOTOMETRIC_PLACES)}, got "
                f"{self.photometric_on!r}."
            )
        return self

    @property
    def photometric_by_device(self) -> bool:
        """Whether the training step applies the photometric distortion (the workers only draw its parameters)."""
        return self.photometric and self.photometric_on == "device"


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


def pad_to(image: np.ndarray, label: np.ndarray, *, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pad a pair at the bottom/right up to at least `size` (H,W): image with 0, label with 255 (ignored)."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, size[0] - height), max(0, size[1] - width)
    if not pad_h and not pad_w:
        return image, label
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def _nearest_rows(source: int, target: int) -> np.ndarray:
    """The source index of each of `target` positions when resizing `source` positions by nearest-exact: asked of
    OpenCV itself (a ramp resized as the label is), so the labels below equal a full `resize` to the pixel."""
    ramp = np.arange(source, dtype=np.float32)[None, :]
    return cv2.resize(ramp, (target, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0].astype(np.intp)


def random_scale_crop(
    image: np.ndarray,
    label: np.ndarray,
    *,
    scale_range: tuple[float, float],
    size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale a pair by a random factor, then take a random crop of `size` (H,W): ONE resampling of the crop only.

    The same samples, from the same draws, as rescaling the whole pair (`resize` to round(factor * size)), padding it
    to at least the crop (image 0, label 255) and cropping, retried up to 10 times while one class covers more than
    `cat_max_ratio` of the crop's valid pixels: the labels equal that reference exactly, and the image is the same
    bilinear resampling, computed for the crop's pixels alone (as a warp of the source region, whose fixed-point
    rounding can differ by one grey level from a full resize). The cost no longer grows with the scale factor.
    image (H,W,3) uint8, label (H,W) uint8 -> (crop_h,crop_w,3) uint8, (crop_h,crop_w) uint8.
    """
    height, width = label.shape
    factor = float(rng.uniform(scale_range[0], scale_range[1]))
    scaled_h, scaled_w = max(1, round(height * factor)), max(1, round(width * factor))
    crop_h, crop_w = size
    rows, cols = _nearest_rows(height, scaled_h), _nearest_rows(width, scaled_w)
    for _ in range(_CROP_TRIES):
        top = int(rng.integers(0, max(scaled_h, crop_h) - crop_h + 1))
        left = int(rng.integers(0, max(scaled_w, crop_w) - crop_w + 1))
        crop_label = np.full((crop_h, crop_w), IGNORE_INDEX, dtype=label.dtype)
        inside_h, inside_w = min(crop_h, scaled_h - top), min(crop_w, scaled_w - left)
        crop_label[:inside_h, :inside_w] = label[np.ix_(rows[top : top + inside_h], cols[left : left + inside_w])]
        if cat_max_ratio >= 1.0 or _class_ratio_ok(crop_label, cat_max_ratio):
            break
    # Bilinear with half-pixel centres, as cv2.resize: scaled pixel (y, x) samples the source at
    # ((y + 0.5) / fy - 0.5, (x + 0.5) / fx - 0.5), fy = scaled_h / height; the crop shifts y by top, x by left.
    fy, fx = scaled_h / height, scaled_w / width
    warp = np.array([[1 / fx, 0.0, (left + 0.5) / fx - 0.5], [0.0, 1 / fy, (top + 0.5) / fy - 0.5]], dtype=np.float64)
    crop = cv2.warpAffine(
        image, warp, (crop_w, crop_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    if inside_h < crop_h or inside_w < crop_w:  # beyond the scaled image: the reference's zero padding
        crop[inside_h:], crop[:, inside_w:] = 0, 0
    return crop, crop_label


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
        return cv2.flip(image, 1), cv2.flip(label, 1)
    return image, label


def draw_photometric(
    rng: np.random.Generator,
    *,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """The random parameters of one photometric distortion -> (5,) float32 in PHOTOMETRIC_PARAMS order, NaN where
    the step is not applied: brightness offset, contrast factor before the HSV changes, saturation factor, hue shift
    (OpenCV's 0-179 units, 2 degrees each), contrast factor after them. Each step is drawn with probability 1/2, and
    contrast goes before or after the HSV changes at random (mmseg's recipe); the draws are made in the order the
    steps run, so the CPU and the device paths see the same parameters for the same generator."""
    params = NO_PHOTOMETRIC.copy()
    if rng.integers(2):
        params[0] = rng.uniform(-brightness_delta, brightness_delta)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        params[1] = rng.uniform(*contrast_range)
    do_saturation, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if do_saturation:
        params[2] = rng.uniform(*saturation_range)
    if do_hue:
        params[3] = int(rng.integers(-hue_delta, hue_delta + 1))
    if not contrast_first and rng.integers(2):
        params[4] = rng.uniform(*contrast_range)
    return params


def apply_photometric(image: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Apply drawn photometric parameters (`draw_photometric`) to (H,W,3) uint8 RGB -> (H,W,3) uint8 RGB.

    Every step but the colour-space change is a function of one pixel value, so each runs as a 256-entry lookup
    table on uint8 (`cv2.LUT`) instead of float32 arithmetic over the image; the tables are computed with exactly
    the float32 operations the arithmetic did, so the output is the same to the bit, for a third of the time.
    """
    brightness, contrast_before, saturation_factor, hue_shift, contrast_after = (float(v) for v in params)
    values = np.arange(256, dtype=np.float32)  # the value of each table entry, carried through every step
    if not np.isnan(brightness):
        values += brightness
    if not np.isnan(contrast_before):
        values *= contrast_before
    if not (np.isnan(saturation_factor) and np.isnan(hue_shift)):
        hsv = cv2.cvtColor(cv2.LUT(image, np.clip(values, 0, 255).astype(np.uint8)), cv2.COLOR_RGB2HSV)
        channel = np.arange(256, dtype=np.float32)
        hue = saturation = np.arange(256, dtype=np.uint8)
        if not np.isnan(saturation_factor):
            saturation = np.clip(channel * saturation_factor, 0, 255).astype(np.uint8)
        if not np.isnan(hue_shift):
            hue = ((channel + int(hue_shift)) % 180).astype(np.uint8)
        identity = np.arange(256, dtype=np.uint8)
        hsv = cv2.LUT(hsv, np.stack([hue, saturation, identity], axis=1)[None])  # one table per channel
        image, values = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), np.arange(256, dtype=np.float32)
    if not np.isnan(contrast_after):
        values *= contrast_after
    return cv2.LUT(image, np.clip(values, 0, 255).round().astype(np.uint8))


def photometric_distortion(image: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue, each with probability 1/2 (mmseg's recipe): (H,W,3) uint8
    RGB -> (H,W,3) uint8 RGB; `draw_photometric`, then `apply_photometric`."""
    return apply_photometric(image, draw_photometric(rng))


def apply_train_augment(
    image: np.ndarray, label: np.ndarray, aug: TrainAugment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The full training pipeline: (H,W,3) uint8, (H,W) uint8 -> (crop_h,crop_w,3) uint8, (crop_h,crop_w) uint8."""
    if aug.resize is not None:  # a no-op on a prepared copy, which is stored at this size
        image, label = resize(image, label, size=aug.resize)
    image, label = random_scale_crop(
        image, label, scale_range=aug.scale_range, size=aug.crop_size, rng=rng, cat_max_ratio=aug.cat_max_ratio
    )
    image, label = random_flip(image, label, prob=aug.flip_prob, rng=rng)
    if aug.photometric and aug.photometric_on == "cpu":  # "device": the caller draws its parameters from rng next
        image = photometric_distortion(image, rng=rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
