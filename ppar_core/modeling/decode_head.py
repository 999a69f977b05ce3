"""The segmentation head: a simple feature pyramid, an FPN fused at stride 4, and the prototype classifier.

Data flow (DESIGN.md section 1, "Segmentation head"):

    encoder features [(B,C_i,H/s_i,W/s_i)] --SimpleFeaturePyramid--> [(B,C'_i,H/t_i,W/t_i)], t = (4, 8, 16, 32)
        --FPNFuse--> (B,fpn_channels,H/4,W/4) --dropout, 1x1 conv--> E (B,D,H/4,W/4)
    PrototypeClassifier(E, prototypes (B,K,D) or (K,D)) -> logits = s * cos(E, v)  (B,K,H/4,W/4)

Normalisation is GroupNorm everywhere, never BatchNorm: training batches are small (1-8 images, often 1-4 on CPU)
and run under DDP, where BatchNorm statistics from so few images are noisy and would need SyncBatchNorm. GroupNorm
also makes the output for one image independent of the other images in its batch, in training and in evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.errors import PparError

__all__ = [
    "FPNFuse",
    "HeadConfig",
    "PixelEmbeddingHead",
    "PrototypeClassifier",
    "SimpleFeaturePyramid",
    "group_norm",
]

MAX_LOGIT_SCALE = 100.0  # CLIP's own cap on its learnable temperature: beyond it training becomes unstable


@dataclass(frozen=True)
class HeadConfig:
    """Decode-head hyper-parameters; `validate()` raises `PparError` naming the first bad field."""

    fpn_channels: int = 256  # width of every FPN level and of the fused stride-4 map
    target_strides: tuple[int, ...] = (4, 8, 16, 32)  # pyramid strides, finest first; the first is E's stride
    logit_scale_init: float = 1 / 0.07  # initial s in logits = s * cos(E, v) (CLIP's initial temperature)
    learnable_logit_scale: bool = True  # False keeps s fixed at logit_scale_init
    dropout: float = 0.1  # channel dropout (Dropout2d) before the projection to D

    def validate(self) -> HeadConfig:
        """Check every field; return self so `cfg = HeadConfig(...).validate()` reads naturally."""
        if not isinstance(self.fpn_channels, int) or self.fpn_channels < 1:
            raise PparError(f"head.fpn_channels must be a positive integer, got {self.fpn_channels!r}; set e.g. 256.")
        strides = tuple(self.target_strides)
        if not strides or any(not isinstance(s, int) or s < 1 for s in strides):
            raise PparError(
                f"head.target_strides must be a non-empty list of positive integers, got {self.target_strides!r}; "
                "use e.g. [4, 8, 16, 32]."
            )
        if any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
            raise PparError(
                f"head.target_strides must increase strictly (finest first), got {list(strides)}; "
                "use e.g. [4, 8, 16, 32]."
            )
        if not (0.0 < self.logit_scale_init <= MAX_LOGIT_SCALE):  # also rejects NaN
            raise PparError(
                f"head.logit_scale_init must lie in (0, {MAX_LOGIT_SCALE:g}], got {self.logit_scale_init!r}; "
                "the default is 1/0.07 = 14.29."
            )
        if not (0.0 <= self.dropout < 1.0):
            raise PparError(f"head.dropout must lie in [0, 1), got {self.dropout!r}; the default is 0.1.")
        return self


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest power of two below 32 that divides `channels` (few channels)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _separable_conv_norm_act(channels: int, *, kernel_size: int) -> nn.Sequential:
    """Depthwise kxk + pointwise 1x1 conv, GroupNorm, ReLU (no conv bias: GroupNorm's own shift replaces it).

    Why separable: a full 3x3 256->256 conv at stride 4 (19 GFLOP per 512x512 image) was half of the head's cost;
    the separable one costs 9x less there, and the FPN keeps its 256 channels. Why ReLU (as FPN necks use): GELU's
    erf over 256-channel stride-4 maps was a quarter of the head's CPU time at inference.
    """
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
        nn.Conv2d(channels, channels, kernel_size=1, bias=False),
        group_norm(channels),
        nn.ReLU(inplace=True),
    )


def _resample_steps(in_stride: int, target_stride: int) -> int:
    """Number of factor-2 steps from `in_stride` to `target_stride`: > 0 upsample, < 0 downsample, 0 identity.

    The ratio is rounded to the nearest power of two, so a ViT with patch 14 (stride 14) reaches strides
    (3.5, 7, 14, 28) for targets (4, 8, 16, 32): the output keeps the encoder's grid exactly (no interpolation) and
    the segmentor upsamples logits to the label size anyway. See `SimpleFeaturePyramid.out_strides`.
    """
    return round(math.log2(in_stride / target_stride))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet-style simple feature pyramid: map i is resampled from stride `in_strides[i]` to `target_strides[i]`.

    Per map, by the (power-of-two rounded) ratio r = in_stride / target_stride:
    r = 4: ConvTranspose2d(k2,s2) -> GroupNorm -> GELU -> ConvTranspose2d(k2,s2); r = 2: one ConvTranspose2d;
    r = 1: identity; r = 1/2: MaxPool2d(2) (and in general n steps of each). Every transposed convolution halves the
    channels, as ViTDet does, because the finest levels are the most expensive in memory and compute.
    For ResNet encoders (strides 4, 8, 16, 32) every level is the identity.

    `out_channels[i]` and `out_strides[i]` describe output map i.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        *,
        target_strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if not (len(in_channels) == len(in_strides) == len(target_strides)):
            raise PparError(
                f"the decode head got {len(in_channels)} feature maps with {len(in_strides)} strides but "
                f"head.target_strides has {len(target_strides)} entries; give one target stride per encoder map."
            )
        blocks: list[nn.Module] = []
        out_channels: list[int] = []
        out_strides: list[float] = []
        for channels, stride, target in zip(in_channels, in_strides, target_strides, strict=True):
            steps = _resample_steps(stride, target)
            block, channels_out = self._build_block(channels, steps)
            blocks.append(block)
            out_channels.append(channels_out)
            out_strides.append(stride / 2.0**steps)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: tuple[int, ...] = tuple(out_channels)
        self.out_strides: tuple[float, ...] = tuple(out_strides)

    @staticmethod
    def _build_block(channels: int, steps: int) -> tuple[nn.Module, int]:
        if steps == 0:
            return nn.Identity(), channels
        if steps < 0:
            return nn.Sequential(*[nn.MaxPool2d(2) for _ in range(-steps)]), channels
        layers: list[nn.Module] = []
        for step in range(steps):
            if step > 0:  # norm + GELU between transposed convolutions, none after the last (as in ViTDet)
                layers += [group_norm(channels), nn.GELU()]
            halved = max(channels // 2, 1)
            layers.append(nn.ConvTranspose2d(channels, halved, kernel_size=2, stride=2))
            channels = halved
        return nn.Sequential(*layers), channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """features [(B,C_i,h_i,w_i) float] -> [(B,out_channels[i],h_i*r_i,w_i*r_i) float], r_i the resample ratio."""
        if len(features) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} feature maps, got {len(features)}")
        return [block(x) for block, x in zip(self.blocks, features, strict=True)]


class FPNFuse(nn.Module):
    """FPN over the pyramid, fused into one map at the finest level's resolution (stride 4).

    Lateral 1x1 convs bring every level to `out_channels`; the top-down pathway adds each coarser level, bilinearly
    upsampled, to the next finer one; a separable 3x3 conv + GroupNorm + ReLU smooths each level. Fusion is a SUM of
    all smoothed levels, cascaded from the coarsest (each partial sum upsampled x2 and added to the next finer level,
    so only one map is upsampled to stride 4), not concat + conv: the sum costs no parameters and few FLOPs at the
    largest resolution, where a 4*C -> C 3x3 conv would cost as much as the rest of the head on CPU.
    """

    def __init__(self, in_channels: Sequence[int], *, out_channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=1) for c in in_channels)
        self.output = nn.ModuleList(_separable_conv_norm_act(out_channels, kernel_size=3) for _ in in_channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features [(B,C_i,h_i,w_i) float], finest first -> (B,out_channels,h_0,w_0) float."""
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral, features, strict=True)]
        # Top-down: sizes come from the maps themselves, so inputs whose sides are not multiples of 32 still work.
        for i in range(len(laterals) - 1, 0, -1):
            coarse = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
            laterals[i - 1] = laterals[i - 1] + coarse
        outs = [conv(x) for conv, x in zip(self.output, laterals, strict=True)]
        fused = outs[-1]
        for out in reversed(outs[:-1]):
            fused = out + F.interpolate(fused, size=out.shape[-2:], mode="bilinear", align_corners=False)
        return fused


class PixelEmbeddingHead(nn.Module):
    """SimpleFeaturePyramid + FPNFuse + Dropout2d + 1x1 projection to the joint space: the pixel embeddings E."""

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        embed_dim: int,
        cfg: HeadConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = (cfg or HeadConfig()).validate()
        self.cfg = cfg
        self.pyramid = SimpleFeaturePyramid(in_channels, in_strides, target_strides=cfg.target_strides)
        self.fpn = FPNFuse(self.pyramid.out_channels, out_channels=cfg.fpn_channels)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.proj = nn.Conv2d(cfg.fpn_channels, embed_dim, kernel_size=1)

    @property
    def out_stride(self) -> float:
        """Stride of E relative to the input image (4 for the default targets; 3.5 for a patch-14 ViT)."""
        return self.pyramid.out_strides[0]

    def forward(self, features: list[Tensor]) -> Tensor:
        """features [(B,C_i,H/s_i,W/s_i) float] -> E (B,embed_dim,H/4,W/4) float (not normalised)."""
        return self.proj(self.dropout(self.fpn(self.pyramid(features))))


class PrototypeClassifier(nn.Module):
    """logits = s * cos(E, v): cosine similarity of each pixel embedding to each class prototype, scaled by s.

    Reads `cfg.logit_scale_init` and `cfg.learnable_logit_scale`. s is stored as its logarithm (`log_scale`, a
    parameter when learnable, a buffer otherwise) so it stays positive, and is clamped at 100 when used, like CLIP's
    temperature.
    """

    def __init__(self, cfg: HeadConfig | None = None) -> None:
        super().__init__()
        cfg = (cfg or HeadConfig()).validate()
        log_scale = torch.tensor(math.log(cfg.logit_scale_init), dtype=torch.float32)
        if cfg.learnable_logit_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        """The current scale s, a 0-dim float tensor, clamped at 100."""
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, embeddings: Tensor, prototypes: Tensor) -> Tensor:
        """embeddings (B,D,h,w) float, prototypes (B,K,D) or (K,D) float -> logits (B,K,h,w) float.

        Neither input needs to be normalised. The pixel norms divide the (B,K,h,w) dot products instead of making a
        normalised copy of the (B,D,h,w) embeddings: the same cosine, without a second D-channel map in memory.
        """
        if embeddings.ndim != 4:
            raise ValueError(f"embeddings must be (B,D,h,w), got shape {tuple(embeddings.shape)}")
        e = embeddings
        v = F.normalize(prototypes, dim=-1).to(e.dtype)
        if v.ndim == 2:
            cos = torch.einsum("bdhw,kd->bkhw", e, v)
        elif v.ndim == 3:
            cos = torch.einsum("bdhw,bkd->bkhw", e, v)
        else:
            raise ValueError(f"prototypes must be (K,D) or (B,K,D), got shape {tuple(prototypes.shape)}")
        norms = torch.linalg.vector_norm(e, dim=1, keepdim=True).clamp_min(1e-12)  # as F.normalize's eps
        return self.scale.to(cos.dtype) * (cos / norms)
