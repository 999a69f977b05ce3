"""The inference protocol as data, and its geometry: no torch, so that the torch path (`ppar_core.inference`) and a
torch-free runtime (onnxruntime) share every rule: window placement, padding, test-time rescaling.

The protocol of labels.md: whole image or sliding window (crop, stride), a test scale or long side, flip or
multi-scale TTA. Every evaluation report records it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ppar_core.errors import PparError

INFERENCE_MODES: tuple[str, ...] = ("slide", "whole")
TTA_MODES: tuple[str, ...] = ("none", "flip", "ms-flip")


@dataclass(frozen=True)
class InferenceConfig:
    """How an image becomes class scores (the protocol of labels.md, recorded in every evaluation report)."""

    mode: str = "slide"  # "slide": overlapping crop_size windows; "whole": the full image in one forward
    crop_size: int = 512  # side of a square sliding window, in pixels of the (rescaled) image
    stride: int = 341  # step between windows, pixels; <= crop_size so that windows cover the image
    scale: float = 1.0  # resize factor applied to the image before inference
    long_side: int | None = None  # if set, resize so the long side is this many pixels (overrides scale)
    tta: str = "none"  # "none", "flip" (horizontal), "ms-flip" (every scale in ms_scales, each with its flip)
    ms_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # relative to scale / long_side
    batch_size: int = 4  # windows per forward
    size_divisor: int = 32  # each window / whole image is zero-padded to a multiple of this, logits cropped back

    def validate(self) -> InferenceConfig:
        """Raise PparError naming the first bad option; return self so calls can be chained."""
        if self.mode not in INFERENCE_MODES:
            raise PparError(f"Inference mode {self.mode!r} is unknown: use one of {', '.join(INFERENCE_MODES)}.")
        if self.tta not in TTA_MODES:
            raise PparError(f"Test-time augmentation {self.tta!r} is unknown: use one of {', '.join(TTA_MODES)}.")
        if self.crop_size < 1 or self.stride < 1:
            raise PparError(
                f"Crop {self.crop_size} and stride {self.stride} must be positive: pass --crop/--stride >= 1."
            )
        if self.stride > self.crop_size:
            raise PparError(
                f"Stride {self.stride} is larger than the crop {self.crop_size}, so windows would leave pixels "
                "unseen: pass a --stride no larger than --crop."
            )
        if not self.scale > 0:
            raise PparError(f"Test scale {self.scale} must be positive: pass --scale > 0 (1.0 keeps the size).")
        if self.long_side is not None and self.long_side < 1:
            raise PparError(f"Long side {self.long_side} must be a positive number of pixels.")
        if not self.ms_scales or any(not s > 0 for s in self.ms_scales):
            raise PparError(f"Multi-scale factors {self.ms_scales} must be a non-empty list of positive numbers.")
        if self.batch_size < 1:
            raise PparError(f"Inference batch size {self.batch_size} must be at least 1: pass --batch-size >= 1.")
        if self.size_divisor < 1:
            raise PparError(f"Size divisor {self.size_divisor} must be at least 1.")
        return self


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis of `length` pixels.

    Windows step by `stride`; the last one is shifted back to end at the border, so every window has the full
    `crop` size (or the whole axis, when it is shorter than the crop) and all windows of an image can be batched.
    """
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of every sliding window of an image, row by row: `window_starts` along each axis."""
    return [(y, x) for y in window_starts(height, crop, stride) for x in window_starts(width, crop, stride)]


def padded_size(h: int, w: int, size_divisor: int) -> tuple[int, int]:
    """(h, w) rounded up to multiples of size_divisor: the size the model sees."""
    return h + (-h) % size_divisor, w + (-w) % size_divisor


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    # Round half up (not Python's half-to-even), as mmsegmentation's rescale does, so sizes match its protocol.
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
