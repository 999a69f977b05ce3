"""Dense inference on images of any size: whole image or sliding window, optional test scale and TTA.

The model is any callable `model_fn(images (B,3,h,w) float) -> logits (B,K,h',w')`, at the input size or at the
model's output stride (each window's scores are then upsampled bilinearly to its size as they are accumulated), so
the same code serves a segmentor, a bare CLIP tower in a benchmark, or a test double. Large images (Mapillary's
4000x3000) are handled by keeping only the windows of one batch on the model's device: class scores are accumulated
at full resolution on `accumulate_device`, which may be the CPU, one window at a time, and (for a model with an
output stride) only after the model has seen every window, so that its peak memory and the full-resolution sum do
not add up (`PENDING_BYTES`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ppar_core.errors import PparError
from ppar_core.protocol import InferenceConfig, padded_size, scaled_size, window_boxes

ModelFn = Callable[[Tensor], Tensor]


def _forward_padded(model_fn: ModelFn, batch: Tensor, *, num_classes: int, size_divisor: int) -> Tensor:
    """Run the model on (B,3,h,w) zero-padded to a multiple of size_divisor -> its raw (B,K,h',w') scores.

    The scores may be at any resolution (a segmentor's output stride); `_window_scores` brings one of them to the
    window's size.
    """
    h, w = batch.shape[-2:]
    padded_h, padded_w = padded_size(h, w, size_divisor)
    if (padded_h, padded_w) != (h, w):
        # Zero is the dataset mean after normalisation: the least surprising filler for the model.
        batch = F.pad(batch, (0, padded_w - w, 0, padded_h - h))
    logits = model_fn(batch)
    if logits.ndim != 4 or tuple(logits.shape[:2]) != (batch.shape[0], num_classes):
        raise PparError(
            f"The model returned scores of shape {tuple(logits.shape)} for input {tuple(batch.shape)}, expected "
            f"({batch.shape[0]}, {num_classes}, h, w): check that the checkpoint's number of classes matches the "
            f"evaluation's ({num_classes})."
        )
    return logits


def _window_scores(logits: Tensor, padded: tuple[int, int], size: tuple[int, int], out_device: torch.device) -> Tensor:
    """Raw scores (1,K,h',w') of a window padded to `padded` -> (1,K,*size) float32 on out_device.

    Upsampled bilinearly to the padded input size (when the model's output is smaller), then cropped to the window:
    one window at full resolution at a time, never the whole batch.
    """
    if tuple(logits.shape[-2:]) != padded:
        logits = _resize(logits.float(), padded)
    return logits[..., : size[0], : size[1]].to(device=out_device, dtype=torch.float32)


PENDING_BYTES = 64 * 2**20
"""Raw window scores held before they are upsampled into the full-resolution sum. A segmentor's scores at stride 4
take 1.2 MB per 512x512 window (19 classes), so every window of a 2048-pixel-wide image fits and the sum is only
allocated once the model has seen all windows: the model's peak and the 160 MB sum never coincide. Scores that a
model returns at full resolution (20 MB per window) are added after every batch instead."""


def _slide(
    model_fn: ModelFn, image: Tensor, cfg: InferenceConfig, *, num_classes: int, out_device: torch.device
) -> Tensor:
    """Sliding-window logits for image (1,3,h,w) -> (1,K,h,w) float32 on out_device, averaged over overlaps."""
    h, w = image.shape[-2:]
    crop_h, crop_w = min(cfg.crop_size, h), min(cfg.crop_size, w)
    padded = padded_size(crop_h, crop_w, cfg.size_divisor)
    boxes = window_boxes(h, w, cfg.crop_size, cfg.stride)
    total: Tensor | None = None
    count: Tensor | None = None
    pending: list[tuple[int, int, Tensor]] = []  # (y, x, raw scores (1,K,h',w')) not yet in the sum
    pending_bytes = 0

    def flush() -> None:
        nonlocal total, count, pending_bytes
        if total is None or count is None:
            total = torch.zeros(1, num_classes, h, w, dtype=torch.float32, device=out_device)
            count = torch.zeros(1, 1, h, w, dtype=torch.float32, device=out_device)
        for y, x, scores in pending:  # one window at full resolution at a time
            total[..., y : y + crop_h, x : x + crop_w] += _window_scores(scores, padded, (crop_h, crop_w), out_device)
            count[..., y : y + crop_h, x : x + crop_w] += 1
        pending.clear()
        pending_bytes = 0

    for first in range(0, len(boxes), cfg.batch_size):
        chunk = boxes[first : first + cfg.batch_size]
        batch = torch.cat([image[..., y : y + crop_h, x : x + crop_w] for y, x in chunk])
        logits = _forward_padded(model_fn, batch, num_classes=num_classes, size_divisor=cfg.size_divisor)
        pending += [(y, x, logits[i : i + 1]) for i, (y, x) in enumerate(chunk)]
        pending_bytes += logits.numel() * logits.element_size()
        if pending_bytes >= PENDING_BYTES or tuple(logits.shape[-2:]) == padded:  # full-size scores: no waiting
            flush()
    flush()
    assert total is not None and count is not None  # flush() allocated them
    return total.div_(count)  # in place: no second full-resolution copy


def _logits_at(
    model_fn: ModelFn, image: Tensor, cfg: InferenceConfig, *, num_classes: int, out_device: torch.device
) -> Tensor:
    """Logits of image (1,3,h,w) at its own size -> (1,K,h,w) float32 on out_device, by cfg.mode."""
    if cfg.mode == "slide":
        return _slide(model_fn, image, cfg, num_classes=num_classes, out_device=out_device)
    h, w = image.shape[-2:]
    logits = _forward_padded(model_fn, image, num_classes=num_classes, size_divisor=cfg.size_divisor)
    return _window_scores(logits, padded_size(h, w, cfg.size_divisor), (h, w), out_device)


def infer_logits(
    model_fn: ModelFn,
    image: Tensor,
    cfg: InferenceConfig,
    *,
    num_classes: int,
    accumulate_device: torch.device | str | None = None,
) -> Tensor:
    """Class scores for one image at its original size.

    model_fn: (B,3,h,w) float -> (B,K,h',w') logits, at the input size or smaller (upsampled bilinearly here, one
    window at a time); the caller puts the model in eval mode and wraps it in autocast if wanted.
    image: (1,3,H,W) float, already normalised, on the model's device.
    Returns (1,K,H,W) float32 on `accumulate_device` (default: the image's device). With tta "none" these are
    logits (resized bilinearly from the test scale when it is not 1); with "flip" / "ms-flip" they are the mean of
    the softmax probabilities over all augmented views, each resized back to HxW before the softmax.
    Runs under `torch.inference_mode()`, so the result carries no autograd history.
    """
    cfg.validate()
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"infer_logits expects one image of shape (1,3,H,W), got {tuple(image.shape)}")
    out_device = torch.device(accumulate_device) if accumulate_device is not None else image.device
    height, width = image.shape[-2:]
    base = cfg.long_side / max(height, width) if cfg.long_side is not None else cfg.scale
    factors = [base * s for s in cfg.ms_scales] if cfg.tta == "ms-flip" else [base]
    flips = [False, True] if cfg.tta in ("flip", "ms-flip") else [False]

    with torch.inference_mode():
        result: Tensor | None = None
        for factor in factors:
            size = scaled_size(height, width, factor)
            scaled = image if size == (height, width) else _resize(image, size)
            for flip in flips:
                view = scaled.flip(-1) if flip else scaled
                scores = _logits_at(model_fn, view, cfg, num_classes=num_classes, out_device=out_device)
                if flip:
                    scores = scores.flip(-1)
                if size != (height, width):
                    scores = _resize(scores, (height, width))
                if cfg.tta != "none":
                    scores = scores.softmax(dim=1)
                # Summed in place, so at most two full-resolution score maps exist at once.
                result = scores if result is None else result.add_(scores)
        assert result is not None  # factors and flips are never empty
        views = len(factors) * len(flips)
        return result if views == 1 else result.div_(views)


def _resize(tensor: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (N,C,h,w) float to `size` (H,W), half-pixel centres (align_corners=False)."""
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def predict_labels(model_fn: ModelFn, image: Tensor, cfg: InferenceConfig, *, num_classes: int) -> Tensor:
    """Predicted trainIds for image (1,3,H,W) normalised float -> (H,W) uint8 on the image's device (argmax)."""
    if num_classes > 255:
        raise ValueError("predict_labels returns uint8 ids; it supports at most 255 classes (255 is ignore)")
    scores = infer_logits(model_fn, image, cfg, num_classes=num_classes)
    return scores[0].argmax(dim=0).to(torch.uint8)
