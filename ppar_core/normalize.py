"""The one way an image becomes the model's input: uint8 RGB pixels -> float32 normalised with CLIP's mean/std.

Every path uses it: evaluation, prediction, prototypes, the reliability analysis, the benchmarks, and the training
step (its workers send uint8 crops; they are normalised on the device, where the model is). The uint8 pixels cross
the host-device bus (a quarter of the bytes of float32) and become float where the model needs them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

# CLIP's normalisation (RGB, 0-1 scale), as used by OpenAI CLIP and open_clip.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def normalize(pixels: Tensor) -> Tensor:
    """(B,3,H,W) uint8 RGB on any device -> (B,3,H,W) float32 `(x/255 - mean) / std` on the same device."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected (B,3,H,W) pixels, got {tuple(pixels.shape)}")
    mean, std = _scale(pixels.device)
    return (pixels.float() - mean) / std


@lru_cache(maxsize=8)
def _scale(device: torch.device) -> tuple[Tensor, Tensor]:
    """(1,3,1,1) mean and std on the 0-255 scale, made once per device: a host-to-device copy waits for the device,
    so the training step must not make one per batch."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std


def image_to_tensor(image: np.ndarray, *, device: torch.device | str) -> Tensor:
    """(H,W,3) uint8 RGB numpy image -> (1,3,H,W) float32 on `device`, normalised by `normalize`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H,W,3) uint8 image, got {image.shape} {image.dtype}")
    pixels = torch.from_numpy(writable(image)).to(device)
    return normalize(pixels.permute(2, 0, 1).unsqueeze(0))


def writable(array: np.ndarray) -> np.ndarray:
    """A contiguous, writable view or copy: torch warns on read-only arrays (PIL's decoded images are read-only)."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")
