"""The PPAR segmentor: CLIP image tower + pixel-embedding head + prototype classifier over the VTP.

    images (B,3,H,W) -> DenseClipEncoder -> features (4 maps), Z (B,D,H/p,W/p), global (B,D)
    features -> PixelEmbeddingHead -> E (B,D,H/4,W/4)
    (OTP (K,D), Z, global) -> VisualTextPrototypes -> VTP (B,K,D)
    logits = s * cos(E, VTP)  (B,K,H/4,W/4)

The OTP is a buffer (never trained); the text tower is not part of the model. The reliability statistics of the
reweighting live here as buffers so they travel with every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.clip.presets import get_preset
from ppar_core.clip.weights import build_clip_model, resolve_quick_gelu
from ppar_core.errors import PparError
from ppar_core.modeling.decode_head import HeadConfig, PixelEmbeddingHead, PrototypeClassifier
from ppar_core.modeling.vtp import VisualTextPrototypes, VTPConfig
from ppar_core.prototypes import Prototypes
from ppar_core.reliability import WeightStats
from ppar_core.runtime import autocast


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "vit-b16"  # a key of ppar_core.clip.presets.CLIP_PRESETS
    # "default" = the preset's own weights (openai for the CLIP presets, random for tiny), an open_clip tag, a local
    # weights file, or None / "none" for random initialisation. Resolved when a run starts.
    pretrained: str | None = "default"
    quick_gelu: bool | None = None  # the tower's activation; None = as the weights require (resolved at start)
    prototypes: str | None = None  # a prototypes file (`ppar prototypes build`); None = built from the text tower
    templates: str = "street"  # template set or file, used only when the prototypes are built at start
    freeze_backbone: bool = False  # True: the CLIP image tower gets no gradient at all
    backbone_lr_mult: float = 0.1  # learning-rate multiplier of the CLIP image tower
    head: HeadConfig = field(default_factory=HeadConfig)
    vtp: VTPConfig = field(default_factory=VTPConfig)

    def validate(self) -> ModelConfig:
        """Raise PparError naming the first bad field; returns self so it chains."""
        if self.backbone_lr_mult < 0:
            raise PparError(f"Config field model.backbone_lr_mult must not be negative, got {self.backbone_lr_mult}.")
        self.head.validate()
        self.vtp.validate()
        return self


@dataclass
class SegmentorOutput:
    logits: Tensor  # (B,K,H/4,W/4)
    dense: Tensor  # Z (B,D,H/p,W/p)
    vtp: Tensor  # (B,K,D)
    global_embedding: Tensor  # (B,D)


class PPARSegmentor(nn.Module):
    """A CLIP-based segmentor whose classifier weights are image-conditioned text prototypes."""

    otp: Tensor  # (K,D) unit rows, a fixed buffer

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
        # Reliability statistics (ppar_core.reliability), buffers so that every checkpoint carries them.
        for name, zeros in WeightStats.zeros(num_classes).buffers().items():
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

    @property
    def weight_stats(self) -> WeightStats:
        """The reliability statistics, a view over this module's buffers (updates write into them)."""
        return WeightStats.from_buffers(dict(self.named_buffers()))


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Make `pretrained` and `quick_gelu` concrete, so that the saved config rebuilds the same model offline."""
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


def build_segmentor(cfg: ModelConfig, *, prototypes: Prototypes, load_weights: bool = True) -> PPARSegmentor:
    """The segmentor of `cfg` over `prototypes` (the OTP, and the visual prototypes that start the VTP memory).

    `load_weights` loads the CLIP weights `cfg.pretrained` names; pass False when a checkpoint will be loaded over
    the model. `cfg` should have been through `resolve_model_config`. Prototypes come from `ppar_core.prototypes`
    (a file, or `build_prototypes` with the same tower).
    """
    preset = get_preset(cfg.preset)
    clip = build_clip_model(preset, pretrained=cfg.pretrained if load_weights else None, quick_gelu=cfg.quick_gelu)
    encoder = DenseClipEncoder(clip.visual, preset)
    if preset.kind == "resnet":
        _freeze_batchnorm(encoder)
    del clip  # the text tower is not part of the model
    return PPARSegmentor(encoder, prototypes.otp, head_cfg=cfg.head, vtp_cfg=cfg.vtp, init_visual=prototypes.visual)
