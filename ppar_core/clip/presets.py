"""CLIP backbone presets: plain data describing each tower ppar can build.

A preset names an open_clip architecture (or carries its own open_clip model config, for `tiny`) and the facts the
segmentor needs without building anything: the joint-space width D, the patch size / output stride, the default and
native input sizes, which blocks feed the decode head and the stride and channels of those maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppar_core.errors import PparError


@dataclass(frozen=True)
class ClipPreset:
    """One CLIP backbone, described as data (see `CLIP_PRESETS`)."""

    name: str  # ppar's name for it, e.g. "vit-b16"
    arch: str | None  # open_clip architecture name ("ViT-B-16"); None when `model_config` is given (tiny)
    kind: str  # "vit" or "resnet"
    embed_dim: int  # D, the width of the joint image-text space
    width: int  # ViT: token width of the intermediate maps; ResNet: stem width (stages are in `feature_channels`)
    patch_size: int  # ViT patch size; 32 for ResNets (their dense output stride)
    image_size: int  # default training input side (crops are image_size x image_size)
    native_image_size: int  # the side the weights were trained at; position embeddings are stored for this grid
    out_indices: tuple[int, ...]  # ViT: transformer blocks (0-based); ResNet: stages (0 = layer1 ... 3 = layer4)
    feature_strides: tuple[int, ...]  # stride of each intermediate map, in input pixels
    feature_channels: tuple[int, ...]  # channels of each intermediate map
    # Why: OpenAI's weights were trained with QuickGELU and the activation is not in the state dict, so the
    # architecture must be built with the right one. True for the presets whose default weights are OpenAI's.
    quick_gelu: bool = False
    default_pretrained: str | None = None  # what `ppar prototypes build` / `ppar train` load when not told
    # The open_clip model config dict ({"embed_dim", "vision_cfg", "text_cfg"}) for towers that are not an
    # open_clip built-in; excluded from hashing because dicts are not hashable.
    model_config: dict[str, Any] | None = field(default=None, hash=False, compare=False)


# `tiny`: random weights, built offline in well under a second; the text tower keeps CLIP's real BPE vocabulary
# (49408) and context (77) so the real tokenizer works. head_width 16 -> 4 attention heads in the image tower.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}

CLIP_PRESETS: dict[str, ClipPreset] = {
    "vit-b16": ClipPreset(
        name="vit-b16",
        arch="ViT-B-16",
        kind="vit",
        embed_dim=512,
        width=768,
        patch_size=16,
        image_size=512,
        native_image_size=224,
        out_indices=(3, 5, 7, 11),
        feature_strides=(16, 16, 16, 16),
        feature_channels=(768, 768, 768, 768),
        quick_gelu=True,
        default_pretrained="openai",
    ),
    "vit-l14": ClipPreset(
        name="vit-l14",
        arch="ViT-L-14",
        kind="vit",
        embed_dim=768,
        width=1024,
        patch_size=14,
        image_size=518,  # 37 x 14: the closest multiple of the patch size to the usual 512 crop
        native_image_size=224,
        out_indices=(7, 11, 15, 23),
        feature_strides=(14, 14, 14, 14),
        feature_channels=(1024, 1024, 1024, 1024),
        quick_gelu=True,
        default_pretrained="openai",
    ),
    "rn50": ClipPreset(
        name="rn50",
        arch="RN50",
        kind="resnet",
        embed_dim=1024,
        width=64,
        patch_size=32,
        image_size=512,
        native_image_size=224,
        out_indices=(0, 1, 2, 3),
        feature_strides=(4, 8, 16, 32),
        feature_channels=(256, 512, 1024, 2048),
        quick_gelu=True,
        default_pretrained="openai",
    ),
    "rn101": ClipPreset(
        name="rn101",
        arch="RN101",
        kind="resnet",
        embed_dim=512,
        width=64,
        patch_size=32,
        image_size=512,
        native_image_size=224,
        out_indices=(0, 1, 2, 3),
        feature_strides=(4, 8, 16, 32),
        feature_channels=(256, 512, 1024, 2048),
        quick_gelu=True,
        default_pretrained="openai",
    ),
    "tiny": ClipPreset(
        name="tiny",
        arch=None,
        kind="vit",
        embed_dim=64,
        width=64,
        patch_size=16,
        image_size=224,
        native_image_size=224,
        out_indices=(0, 1, 2, 3),
        feature_strides=(16, 16, 16, 16),
        feature_channels=(64, 64, 64, 64),
        quick_gelu=False,
        default_pretrained=None,
        model_config=TINY_MODEL_CONFIG,
    ),
}

DEFAULT_PRESET = "vit-b16"


def get_preset(name: str) -> ClipPreset:
    """The preset called `name`, or a PparError listing the known ones."""
    if name not in CLIP_PRESETS:
        raise PparError(
            f"Unknown model preset {name!r}: use one of {', '.join(CLIP_PRESETS)} (see `ppar models list`)."
        )
    return CLIP_PRESETS[name]


def resolve_preset(preset: str | ClipPreset) -> ClipPreset:
    """Accept a preset or its name."""
    return preset if isinstance(preset, ClipPreset) else get_preset(preset)
