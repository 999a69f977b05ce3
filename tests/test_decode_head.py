"""Decode head: pyramid shapes for ViT and ResNet encoders, gradients, batch independence, the prototype classifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ppar_core.errors import PparError
from ppar_core.modeling.decode_head import (
    FPNFuse,
    HeadConfig,
    PixelEmbeddingHead,
    PrototypeClassifier,
    SimpleFeaturePyramid,
)

EMBED_DIM = 16
SMALL = HeadConfig(fpn_channels=16)


def _vit_features(batch: int, height: int, width: int, *, channels: int = 32, patch: int = 16) -> list[torch.Tensor]:
    """Four ViT block outputs, all at the patch stride."""
    return [torch.randn(batch, channels, height // patch, width // patch) for _ in range(4)]


def _resnet_features(batch: int, height: int, width: int) -> list[torch.Tensor]:
    """Four ResNet stage outputs at strides 4, 8, 16, 32 with growing widths."""
    return [torch.randn(batch, 8 * 2**i, height // s, width // s) for i, s in enumerate((4, 8, 16, 32))]


RESNET_CHANNELS = (8, 16, 32, 64)
RESNET_STRIDES = (4, 8, 16, 32)


@pytest.mark.parametrize(("height", "width"), [(64, 128), (96, 160), (160, 96)])
def test_vit_pyramid_and_head_shapes(height: int, width: int) -> None:
    torch.manual_seed(0)
    features = _vit_features(2, height, width)
    pyramid = SimpleFeaturePyramid([32] * 4, [16] * 4)
    levels = pyramid(features)
    # x4 up (two transposed convs, halving channels each), x2 up (one), identity, /2 max-pool.
    assert [tuple(x.shape) for x in levels] == [
        (2, 8, height // 4, width // 4),
        (2, 16, height // 8, width // 8),
        (2, 32, height // 16, width // 16),
        (2, 32, height // 32, width // 32),
    ]
    assert pyramid.out_channels == (8, 16, 32, 32)
    assert pyramid.out_strides == (4.0, 8.0, 16.0, 32.0)
    kinds = [
        [type(m).__name__ for m in block.modules() if not isinstance(m, nn.Sequential)] for block in pyramid.blocks
    ]
    assert kinds == [
        ["ConvTranspose2d", "GroupNorm", "GELU", "ConvTranspose2d"],
        ["ConvTranspose2d"],
        ["Identity"],
        ["MaxPool2d"],
    ]
    assert torch.equal(levels[2], features[2])
    assert torch.equal(levels[3], torch.nn.functional.max_pool2d(features[3], 2))

    head = PixelEmbeddingHead([32] * 4, [16] * 4, EMBED_DIM, SMALL)
    assert head(features).shape == (2, EMBED_DIM, height // 4, width // 4)
    assert head.out_stride == 4.0


@pytest.mark.parametrize(("height", "width"), [(64, 128), (96, 160)])
def test_resnet_pyramid_is_identity_and_head_shape(height: int, width: int) -> None:
    torch.manual_seed(0)
    features = _resnet_features(2, height, width)
    pyramid = SimpleFeaturePyramid(RESNET_CHANNELS, RESNET_STRIDES)
    assert all(isinstance(block, nn.Identity) for block in pyramid.blocks)
    assert all(torch.equal(a, b) for a, b in zip(pyramid(features), features, strict=True))
    head = PixelEmbeddingHead(RESNET_CHANNELS, RESNET_STRIDES, EMBED_DIM, SMALL)
    assert head(features).shape == (2, EMBED_DIM, height // 4, width // 4)


def test_patch14_vit_keeps_its_grid() -> None:
    # ViT-L/14: stride 14 is rounded to the nearest power-of-two ratio, so E sits at stride 3.5 on the exact grid.
    features = _vit_features(1, 112, 168, patch=14)
    head = PixelEmbeddingHead([32] * 4, [14] * 4, EMBED_DIM, SMALL)
    assert head.pyramid.out_strides == (3.5, 7.0, 14.0, 28.0)
    assert head(features).shape == (1, EMBED_DIM, 32, 48)


def test_sides_not_multiple_of_32_still_fuse() -> None:
    # 80x112 at stride 16 is 5x7: max-pool floors to 2x3, the top-down pathway interpolates to each finer size.
    head = PixelEmbeddingHead([32] * 4, [16] * 4, EMBED_DIM, SMALL)
    assert head(_vit_features(1, 80, 112)).shape == (1, EMBED_DIM, 20, 28)


@pytest.mark.parametrize("encoder", ["vit", "resnet"])
def test_every_parameter_gets_a_gradient(encoder: str) -> None:
    torch.manual_seed(0)
    if encoder == "vit":
        features, channels, strides = _vit_features(2, 64, 64), [32] * 4, [16] * 4
    else:
        features, channels, strides = _resnet_features(2, 64, 64), list(RESNET_CHANNELS), list(RESNET_STRIDES)
    head = PixelEmbeddingHead(channels, strides, EMBED_DIM, SMALL)
    classifier = PrototypeClassifier()
    prototypes = torch.randn(5, EMBED_DIM)
    logits = classifier(head(features), prototypes)
    assert logits.shape == (2, 5, 16, 16)
    # Random weights: a plain sum could leave a normalisation's gradient exactly zero by symmetry.
    (logits * torch.randn_like(logits)).sum().backward()
    params = list(head.named_parameters()) + list(classifier.named_parameters())
    assert params
    missing = [name for name, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for _, p in params if p.grad is not None)


@pytest.mark.parametrize("train", [True, False])
def test_output_of_an_image_does_not_depend_on_its_batch(train: bool) -> None:
    torch.manual_seed(0)
    head = PixelEmbeddingHead([32] * 4, [16] * 4, EMBED_DIM, HeadConfig(fpn_channels=16, dropout=0.0))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())
    head.train(train)
    features = _vit_features(3, 64, 64)
    together = head(features)
    alone = head([x[1:2] for x in features])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


def test_fpn_top_down_carries_the_coarsest_level_to_stride_4() -> None:
    torch.manual_seed(0)
    fpn = FPNFuse([4, 4, 4, 4], out_channels=8)
    features = [torch.randn(1, 4, 16 // 2**i, 16 // 2**i) for i in range(4)]
    base = fpn(features)
    assert base.shape == (1, 8, 16, 16)
    changed = fpn(features[:3] + [features[3] + 1.0])
    assert (changed - base).abs().amax() > 1e-4


def test_classifier_logits_are_scaled_cosines_computed_by_hand() -> None:
    classifier = PrototypeClassifier()
    # Two pixels (3,4) and (1,0); prototypes (1,0) and (0,2).
    embeddings = torch.tensor([[[[3.0, 1.0]], [[4.0, 0.0]]]])  # (1,2,1,2)
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    expected_cos = torch.tensor([[[[0.6, 1.0]], [[0.8, 0.0]]]])  # (1,K=2,1,2)
    logits = classifier(embeddings, prototypes)
    torch.testing.assert_close(logits, expected_cos / 0.07)
    torch.testing.assert_close(classifier.scale, torch.tensor(1 / 0.07))


def test_classifier_invariances_and_prototype_layouts() -> None:
    torch.manual_seed(0)
    classifier = PrototypeClassifier(HeadConfig(logit_scale_init=10.0))
    embeddings = torch.randn(3, 8, 4, 5)
    prototypes = torch.randn(6, 8)
    logits = classifier(embeddings, prototypes)
    torch.testing.assert_close(classifier(embeddings, 7.5 * prototypes), logits)
    torch.testing.assert_close(classifier(embeddings * 0.01, prototypes), logits)
    torch.testing.assert_close(classifier(embeddings, prototypes.expand(3, -1, -1)), logits)
    assert logits.abs().max() <= 10.0 + 1e-4
    # Per-image prototypes: image b uses its own set.
    per_image = torch.randn(3, 6, 8)
    batched = classifier(embeddings, per_image)
    for b in range(3):
        torch.testing.assert_close(batched[b : b + 1], classifier(embeddings[b : b + 1], per_image[b]))


def test_classifier_scale_is_log_stored_clamped_and_optionally_frozen() -> None:
    classifier = PrototypeClassifier()
    assert math.isclose(classifier.log_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        classifier.log_scale.fill_(math.log(500.0))
    assert classifier.scale.item() == pytest.approx(100.0)
    frozen = PrototypeClassifier(HeadConfig(logit_scale_init=5.0, learnable_logit_scale=False))
    assert list(frozen.parameters()) == []
    assert "log_scale" in frozen.state_dict()
    assert frozen.scale.item() == pytest.approx(5.0)
    with pytest.raises(PparError, match="logit_scale_init"):
        PrototypeClassifier(HeadConfig(logit_scale_init=0.0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fpn_channels", 0),
        ("target_strides", ()),
        ("target_strides", (8, 4, 16, 32)),
        ("target_strides", (0, 8, 16, 32)),
        ("logit_scale_init", 0.0),
        ("logit_scale_init", 1000.0),
        ("logit_scale_init", float("nan")),
        ("dropout", 1.0),
        ("dropout", -0.1),
    ],
)
def test_head_config_validation_names_the_field(field: str, value: object) -> None:
    cfg = HeadConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(PparError, match=f"head.{field}"):
        cfg.validate()
    with pytest.raises(PparError, match=f"head.{field}"):
        PixelEmbeddingHead([32] * 4, [16] * 4, EMBED_DIM, cfg)


def test_head_config_default_is_valid_and_level_count_must_match() -> None:
    assert HeadConfig().validate() == HeadConfig()
    with pytest.raises(PparError, match="target_strides"):
        PixelEmbeddingHead([32] * 3, [16] * 3, EMBED_DIM, SMALL)
