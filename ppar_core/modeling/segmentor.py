"""The PPAR segmentor: CLIP image tower + pixel-embedding head + prototype classifier over the VTP.

    images (B,3,H,W) -> DenseClipEncoder -> features (4 maps), Z (B,D,H/p,W/p), global (B,D)
    features -> PixelEmbeddingHead -> E (B,D,H/4,W/4)
    (OTP (K,D), Z, global) -> VisualTextPrototypes -> VTP (B,K,D)
    logits = s * cos(E, VTP)  (B,K,H/4,W/4)

The OTP is a buffer (never trained); the text tower is not part of the model. The reliability statistics of the
reweighting live here as buffers so they travel with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.modeling.decode_head import HeadConfig, PixelEmbeddingHead, PrototypeClassifier
from ppar_core.modeling.vtp import VisualTextPrototypes, VTPConfig
from ppar_core.reliability import WEIGHT_STAT_BUFFERS, empty_weight_stats
from ppar_core.runtime import autocast

if TYPE_CHECKING:
    from ppar_core.config import ModelConfig
    from ppar_core.prototypes import Prototypes


@dataclass
class SegmentorOutput:
    logits: Tensor  # (B,K,H/4,W/4)
    dense: Tensor  # Z (B,D,H/p,W/p)
    vtp: Tensor  # (B,K,D)
    global_embedding: Tensor  # (B,D)


class PPARSegmentor(nn.Module):
    """A CLIP-based segmentor whose classifier weights are image-conditioned text prototypes."""

    otp: Tensor  # (K,D) unit rows, a fixed buffer
    weight_hist: Tensor  # (K,20) float64
    weight_sum: Tensor  # (K,) float64
    weight_count: Tensor
    weight_low: Tensor
    weight_high: Tensor

    def __init__(
        self,
        encoder: DenseClipEncoder,
        otp: Tensor,
        *,
        head_cfg: HeadConfig,
        vtp_cfg: VTPConfig,
        init_visual: Tensor | None = None,
    ) -> None:
        super().__init__()
        num_classes, dim = otp.shape
        if dim != encoder.embed_dim:
            raise ValueError(f"prototype width {dim} != encoder embedding width {encoder.embed_dim}")
        self.encoder = encoder
        self.head = PixelEmbeddingHead(encoder.feature_channels, encoder.feature_strides, dim, head_cfg)
        self.vtp = VisualTextPrototypes(otp, vtp_cfg, init_visual=init_visual)
        self.classifier = PrototypeClassifier(head_cfg)
        self.register_buffer("otp", F.normalize(otp.float(), dim=-1).clone())
        # Reliability statistics (float64 so that millions of pixels add up exactly): per-class histogram of the
        # applied weights, their sum, the pixel count, and exact counts below 0.5 and above 2.
        for name, zeros in zip(WEIGHT_STAT_BUFFERS, empty_weight_stats(num_classes).values(), strict=True):
            self.register_buffer(name, zeros)

    @property
    def num_classes(self) -> int:
        return int(self.otp.shape[0])

    def forward(self, images: Tensor) -> SegmentorOutput:
        """images (B,3,H,W) float, CLIP-normalised, H and W multiples of the patch size."""
        enc = self.encoder(images)
        embeddings = self.head(enc.features)
        vtp = self.vtp(self.otp, enc.dense, enc.global_embedding)
        logits = self.classifier(embeddings, vtp)
        return SegmentorOutput(logits=logits, dense=enc.dense, vtp=vtp, global_embedding=enc.global_embedding)

    def infer(self, images: Tensor) -> Tensor:
        """Inference scores: images (B,3,H,W) -> logits (B,K,H/4,W/4) float32 at the head's stride, not upsampled.

        The `model_fn` of `infer_logits` (which upsamples each window to its size as it accumulates). Call it in eval
        mode; it runs under bf16 autocast on CUDA. The encoder sees the whole batch; the head and the classifier run
        one image at a time, so that their stride-4 maps (FPN levels, E with D channels: several hundred MB for 4
        windows of 512x512) exist for one window only. The head has no batch coupling (GroupNorm, eval-mode
        dropout), so the scores are those of `self(images).logits`.
        """
        with autocast(images.device):
            enc = self.encoder(images)
            vtp = self.vtp(self.otp, enc.dense, enc.global_embedding)
            logits = [
                self.classifier(self.head([f[i : i + 1] for f in enc.features]), vtp[i : i + 1])
                for i in range(images.shape[0])
            ]
        return torch.cat(logits).float()

    def predict_logits(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) -> logits (B,K,H,W) float32 at the input size (bilinear), for inference."""
        return F.interpolate(self.infer(images), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def weight_stats(self) -> tuple[Tensor, ...]:
        """The statistics buffers (hist, sums, counts, low, high), as `update_weight_stats` takes them."""
        return tuple(getattr(self, name) for name in WEIGHT_STAT_BUFFERS)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Make `pretrained` and `quick_gelu` concrete, so that the saved config rebuilds the same model offline."""
    from ppar_core.clip.presets import get_preset
    from ppar_core.clip.weights import resolve_quick_gelu

    preset = get_preset(cfg.preset)
    pretrained = cfg.pretrained
    if pretrained == "default":
        pretrained = preset.default_pretrained
    elif pretrained is not None and pretrained.lower() == "none":
        pretrained = None
    quick_gelu = cfg.quick_gelu if cfg.quick_gelu is not None else resolve_quick_gelu(preset, pretrained)
    return replace(cfg, pretrained=pretrained, quick_gelu=quick_gelu)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d (CLIP ResNets) by a frozen copy: batches of 1-8 crops must not retrain statistics."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def build_segmentor(
    cfg: ModelConfig,
    *,
    otp: Tensor | None = None,
    init_visual: Tensor | None = None,
    pretrained: str | None | bool = True,
) -> tuple[PPARSegmentor, Prototypes]:
    """Build the segmentor of `cfg` and the prototypes it starts from.

    The OTP comes from `otp` when given (e.g. zeros before a checkpoint is loaded over it), else from the prototypes
    file `cfg.prototypes`, else from the CLIP text tower with `cfg.templates` (the text tower is dropped afterwards).
    `pretrained=True` loads `cfg.pretrained`; pass None to skip weight loading (a checkpoint will be loaded instead).
    `cfg` should have been through `resolve_model_config`.
    """
    from ppar_core.clip.presets import get_preset
    from ppar_core.clip.text import build_text_prototypes, class_prompt_names, load_templates
    from ppar_core.clip.weights import build_clip_model, get_tokenizer
    from ppar_core.labels import CLASS_NAMES, NUM_CLASSES
    from ppar_core.prototypes import Prototypes, load_prototypes

    preset = get_preset(cfg.preset)
    weights = cfg.pretrained if pretrained is True else (pretrained or None)
    clip = build_clip_model(preset, pretrained=weights, quick_gelu=cfg.quick_gelu)
    if otp is not None:
        protos = Prototypes(otp=otp, visual=init_visual, visual_counts=None, meta={"source": "given"})
    elif cfg.prototypes:
        protos = load_prototypes(Path(cfg.prototypes), expect_dim=preset.embed_dim, expect_classes=NUM_CLASSES)
    else:
        templates = load_templates(cfg.templates)
        names = class_prompt_names(CLASS_NAMES)
        text_otp = build_text_prototypes(clip, get_tokenizer(preset), names, templates)
        protos = Prototypes(
            otp=text_otp,
            visual=None,
            visual_counts=None,
            meta={
                "model": preset.name,
                "pretrained": weights or "none (random weights)",
                "classes": list(CLASS_NAMES),
                "templates": list(templates),
                "label_space": "cityscapes",
                "dim": preset.embed_dim,
            },
        )
    encoder = DenseClipEncoder(clip.visual, preset)
    if preset.kind == "resnet":
        _freeze_batchnorm(encoder)
    del clip  # the text tower is not part of the trained model
    visual = init_visual if init_visual is not None else protos.visual
    model = PPARSegmentor(encoder, protos.otp, head_cfg=cfg.head, vtp_cfg=cfg.vtp, init_visual=visual)
    return model, protos
