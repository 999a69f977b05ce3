"""Prompts and the Original Text Prototypes (OTP): CLIP text embeddings of every class, one (K, D) matrix.

`build_text_prototypes` is the zero-shot-classifier recipe: every template for every class name (and synonym),
encoded in batches by the frozen text tower, each prompt L2-normalised, averaged, and normalised again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ppar_core.errors import PparError
from ppar_core.labels import CLASS_WORDS

# Street-scene templates: the project's default set (driving-scene wording helps classes such as "pole" or "sign").
STREET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {} in a street scene.",
    "a photo of a {} on the road.",
    "a dashcam photo of a {}.",
    "a photo of a {} in the city.",
    "a blurry photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

# The 80 prompt templates CLIP (Radford et al., 2021) published for ImageNet zero-shot classification.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"street": STREET_TEMPLATES, "imagenet": IMAGENET_TEMPLATES}

# Class name -> the names its prompts use (the first is the class name itself): the one table of class words
# (`labels.CLASS_WORDS`), which the embedded prior's captions also use. Synonyms are a choice of this
# reconstruction: each adds len(templates) prompts to the class average. Pass synonyms=False to use names only.
CLASS_PROMPTS = CLASS_WORDS


def load_templates(spec: str) -> tuple[str, ...]:
    """A template set by name (`street`, `imagenet`) or read from a text file, one template with `{}` per line.

    Blank lines and lines starting with `#` are skipped. PparError for a missing file, an empty one, or a line
    without exactly one `{}`.
    """
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise PparError(
            f"Templates {spec!r} are neither a known set ({', '.join(TEMPLATE_SETS)}) nor an existing file: "
            "pass a set name or a text file with one template per line."
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PparError(f"Templates file {path} could not be read as UTF-8 text ({exc}): fix or replace it.") from exc
    templates: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1:
            raise PparError(
                f"Templates file {path}, line {number} ({line!r}) must contain exactly one {{}} where the "
                "class name goes: fix that line."
            )
        templates.append(line)
    if not templates:
        raise PparError(
            f"Templates file {path} holds no templates: write one template per line, e.g. 'a photo of a {{}}.'."
        )
    return tuple(templates)


def class_prompt_names(class_names: Sequence[str], *, synonyms: bool = True) -> list[tuple[str, ...]]:
    """The names to prompt for each class: its synonyms from `CLASS_PROMPTS` (or just the name)."""
    if not synonyms:
        return [(name,) for name in class_names]
    return [CLASS_PROMPTS.get(name, (name,)) for name in class_names]


@torch.no_grad()
def build_text_prototypes(
    model: Any,
    tokenizer: Callable[[list[str]], Tensor],
    class_names: Sequence[str | Sequence[str]],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Text prototypes: (K, D) float32, unit L2 norm per row, on the CPU.

    `class_names[k]` is one name or a sequence of synonyms; each (template, name) pair is one prompt. Every prompt is
    encoded by `model.encode_text`, normalised, and the class prototype is the normalised mean of its prompts
    (so templates and synonyms are averaged with equal weight). `device` defaults to the model's.
    """
    if not templates:
        raise PparError("No prompt templates were given: pass --templates street, imagenet or a file.")
    if not class_names:
        raise PparError("No class names were given: pass --classes cityscapes or synthia16.")
    names = [(entry,) if isinstance(entry, str) else tuple(entry) for entry in class_names]
    if any(not synonyms for synonyms in names):
        raise PparError("A class was given an empty list of names: give each class at least one name.")
    if device is None:
        device = next(model.parameters()).device
    prompts = [template.format(name) for synonyms in names for name in synonyms for template in templates]
    owners = torch.tensor([k for k, synonyms in enumerate(names) for _ in synonyms for _ in templates])

    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    embeddings = torch.cat(chunks)  # (P, D), one row per prompt

    sums = torch.zeros(len(names), embeddings.shape[1]).index_add_(0, owners, embeddings)
    counts = torch.bincount(owners, minlength=len(names)).unsqueeze(1).float()
    return F.normalize(sums / counts, dim=-1)
