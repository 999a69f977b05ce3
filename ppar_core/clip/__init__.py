"""CLIP backbones: presets, model building and weight loading, dense image features, text prototypes.

`ppar_core.clip.encoder` is the only module that knows open_clip's image-tower internals. Importing this package is
cheap: open_clip (about 6 s to import) is loaded only when a model or tokenizer is built.
"""

from __future__ import annotations

from ppar_core.clip.encoder import DenseClipEncoder, EncoderOutput, resize_pos_embed_grid
from ppar_core.clip.presets import CLIP_PRESETS, DEFAULT_PRESET, ClipPreset, get_preset
from ppar_core.clip.text import CLASS_PROMPTS, TEMPLATE_SETS, build_text_prototypes, load_templates
from ppar_core.clip.weights import build_clip_model, get_tokenizer, load_state_dict_file, resolve_quick_gelu

__all__ = [
    "CLASS_PROMPTS",
    "CLIP_PRESETS",
    "DEFAULT_PRESET",
    "TEMPLATE_SETS",
    "ClipPreset",
    "DenseClipEncoder",
    "EncoderOutput",
    "build_clip_model",
    "build_text_prototypes",
    "get_preset",
    "get_tokenizer",
    "load_state_dict_file",
    "load_templates",
    "resize_pos_embed_grid",
    "resolve_quick_gelu",
]
