"""The one normalisation: uint8 RGB -> CLIP mean/std, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppar_core.normalize import CLIP_MEAN, CLIP_STD, image_to_tensor, normalize


def test_clip_normalisation_values() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)
    chw = image_to_tensor(image, device="cpu")[0]
    assert chw.shape == (3, 1, 1) and chw.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), CLIP_MEAN, CLIP_STD, strict=True)]
    np.testing.assert_allclose(chw[:, 0, 0].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(float(chw[0, 0, 0]), -0.48145466 / 0.26862954, rtol=1e-6)


def test_image_to_tensor_is_normalize_of_the_chw_pixels() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    got = image_to_tensor(image, device="cpu")
    assert got.shape == (1, 3, 5, 7) and got.dtype == torch.float32
    by_hand = (image.astype(np.float64) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(got[0].permute(1, 2, 0).numpy(), by_hand, atol=1e-5)
    batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    assert torch.equal(normalize(batch), got)


def test_read_only_images_are_accepted_and_bad_shapes_refused() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image.flags.writeable = False  # as PIL's decoded arrays are
    assert image_to_tensor(image, device="cpu").shape == (1, 3, 2, 2)
    with pytest.raises(ValueError):
        image_to_tensor(np.zeros((2, 2), dtype=np.uint8), device="cpu")
    with pytest.raises(ValueError):
        normalize(torch.zeros(3, 2, 2, dtype=torch.uint8))
