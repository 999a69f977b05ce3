"""The prototypes file: Original Text Prototypes (and optional dataset-level visual prototypes) on disk.

A prototypes file is one `.safetensors` file with tensors `otp` (K, D) float32, optionally `visual` (K, D) float32
and `visual_counts` (K,) int64, and string metadata: `format` ("ppar-prototypes"), `format_version`, `model`,
`pretrained`, `classes` (JSON list), `templates` (JSON list), `label_space`, `dim`, `num_classes`, and `sha256`, a
digest of the tensors and the other metadata, so that an edited or damaged file is refused with one clear sentence.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from ppar_core.checkpoint import KIND_MODEL, KIND_TRAIN_STATE, safetensors_metadata
from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.clip.presets import get_preset
from ppar_core.clip.text import build_text_prototypes, class_prompt_names, load_templates
from ppar_core.clip.weights import build_clip_model, get_tokenizer
from ppar_core.data import build_dataset
from ppar_core.data.base import spread_indices
from ppar_core.errors import PparError
from ppar_core.files import atomic_write
from ppar_core.labels import IGNORE_INDEX, get_label_space
from ppar_core.normalize import image_to_tensor
from ppar_core.progress import ProgressFn
from ppar_core.runtime import resolve_device

log = logging.getLogger("ppar.prototypes")

PROTOTYPES_FORMAT = "ppar-prototypes"
PROTOTYPES_FORMAT_VERSION = 1
DEFAULT_MAX_IMAGES = 100
RANDOM_WEIGHTS = "none (random weights)"  # what the metadata's "pretrained" says of a tower with random weights


class SampleSource(Protocol):
    """Anything indexable whose items have `.image` (H,W,3) uint8 and `.label` (H,W) uint8 (a `SegDataset`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass
class Prototypes:
    """Class prototypes in CLIP's joint space, and where they came from."""

    otp: Tensor  # (K, D) float32, unit rows: the Original Text Prototypes
    visual: Tensor | None = None  # (K, D) float32: per-class mean dense image embedding (zero rows for absent classes)
    visual_counts: Tensor | None = None  # (K,) int64: pixels (dense-grid cells) averaged into each visual row
    meta: dict[str, Any] = field(default_factory=dict)  # format_version, model, pretrained, classes, templates, ...

    @property
    def num_classes(self) -> int:
        return int(self.otp.shape[0])

    @property
    def dim(self) -> int:
        return int(self.otp.shape[1])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("classes", []))


def _tensors_of(protos: Prototypes) -> dict[str, Tensor]:
    tensors = {"otp": protos.otp.detach().to("cpu", torch.float32).contiguous()}
    if protos.visual is not None:
        tensors["visual"] = protos.visual.detach().to("cpu", torch.float32).contiguous()
    if protos.visual_counts is not None:
        tensors["visual_counts"] = protos.visual_counts.detach().to("cpu", torch.int64).contiguous()
    return tensors


def _digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over tensor names, shapes, dtypes, bytes and the metadata (without the digest itself)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    digest.update(json.dumps({k: v for k, v in sorted(metadata.items()) if k != "sha256"}).encode())
    return digest.hexdigest()


def _metadata_strings(protos: Prototypes) -> dict[str, str]:
    meta = dict(protos.meta)
    out = {
        "format": PROTOTYPES_FORMAT,
        "format_version": str(PROTOTYPES_FORMAT_VERSION),
        "model": str(meta.get("model", "")),
        "pretrained": str(meta.get("pretrained", "")),
        "classes": json.dumps(list(meta.get("classes", []))),
        "templates": json.dumps(list(meta.get("templates", []))),
        "label_space": str(meta.get("label_space", "")),
        "dim": str(protos.dim),
        "num_classes": str(protos.num_classes),
    }
    extra = {k: v for k, v in meta.items() if k not in out and k != "sha256"}
    if extra:
        out["extra"] = json.dumps(extra, sort_keys=True, default=str)
    return out


def is_prototypes_file(path: str | Path) -> bool:
    """Whether `path` is a ppar prototypes file (by its header: no tensor is read)."""
    return (safetensors_metadata(Path(path)) or {}).get("format") == PROTOTYPES_FORMAT


def save_prototypes(path: str | Path, protos: Prototypes) -> Path:
    """Write `protos` to `path` (.safetensors) atomically: a reader sees the old file or the new one, never a part."""
    path = Path(path)
    if protos.otp.ndim != 2:
        raise ValueError(f"otp must be (K, D), got {tuple(protos.otp.shape)}")
    tensors = _tensors_of(protos)
    metadata = _metadata_strings(protos)
    metadata["sha256"] = _digest(tensors, metadata)
    payload = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    return path


def load_prototypes(
    path: str | Path, *, expect_dim: int | None = None, expect_classes: int | None = None
) -> Prototypes:
    """Read and validate a prototypes file; every problem is one PparError naming the file and what to do.

    Checks: readable safetensors, format and version, the digest, tensor shapes against the metadata, and
    (when given) the model width `expect_dim` and class count `expect_classes`.
    """
    path = Path(path)
    if not path.is_file():
        raise PparError(f"Prototypes file {path} does not exist: build one with `ppar prototypes build --out {path}`.")
    kind = (safetensors_metadata(path) or {}).get("kind")
    if kind in (KIND_MODEL, KIND_TRAIN_STATE):
        what = "a model checkpoint" if kind == KIND_MODEL else "a training-state file"
        raise PparError(
            f"{path} is {what}, not a prototypes file: pass the prototypes file (`ppar prototypes build` makes one; "
            "a run without one keeps its own as prototypes.safetensors in its folder)."
        )
    rebuild = f"rebuild it with `ppar prototypes build --out {path}`"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # truncated or not safetensors: safetensors raises its own error types
        raise PparError(f"Prototypes file {path} is damaged or not a safetensors file ({exc}): {rebuild}.") from exc
    if metadata.get("format") != PROTOTYPES_FORMAT or "otp" not in tensors:
        raise PparError(f"{path} is not a ppar prototypes file (no 'otp' tensor / format tag): {rebuild}.")
    version = metadata.get("format_version", "")
    if version != str(PROTOTYPES_FORMAT_VERSION):
        raise PparError(
            f"Prototypes file {path} has format version {version or '?'}, this ppar reads version "
            f"{PROTOTYPES_FORMAT_VERSION}: {rebuild}."
        )
    if metadata.get("sha256") != _digest(tensors, metadata):
        raise PparError(f"Prototypes file {path} fails its integrity check (edited or damaged): {rebuild}.")
    try:
        classes = json.loads(metadata["classes"])
        templates = json.loads(metadata["templates"])
        dim, num_classes = int(metadata["dim"]), int(metadata["num_classes"])
        extra = json.loads(metadata["extra"]) if "extra" in metadata else {}
    except (KeyError, ValueError) as exc:
        raise PparError(f"Prototypes file {path} has incomplete metadata ({exc}): {rebuild}.") from exc
    otp = tensors["otp"]
    visual, counts = tensors.get("visual"), tensors.get("visual_counts")
    shapes_ok = tuple(otp.shape) == (num_classes, dim) and len(classes) == num_classes and otp.dtype == torch.float32
    shapes_ok = shapes_ok and (visual is None or tuple(visual.shape) == (num_classes, dim))
    shapes_ok = shapes_ok and (counts is None or tuple(counts.shape) == (num_classes,))
    if not shapes_ok or not torch.isfinite(otp).all():
        raise PparError(f"Prototypes file {path} has tensors that disagree with its metadata: {rebuild}.")
    if expect_dim is not None and dim != expect_dim:
        raise PparError(
            f"Prototypes file {path} has dimension {dim} (model {metadata.get('model')}) but this model's joint space "
            f"is {expect_dim}: rebuild it with the same --model."
        )
    if expect_classes is not None and num_classes != expect_classes:
        raise PparError(
            f"Prototypes file {path} has {num_classes} classes (label space {metadata.get('label_space')}) but "
            f"{expect_classes} are expected: rebuild it with the matching --classes."
        )
    meta: dict[str, Any] = {
        "format_version": int(version),
        "model": metadata.get("model", ""),
        "pretrained": metadata.get("pretrained", ""),
        "classes": classes,
        "templates": templates,
        "label_space": metadata.get("label_space", ""),
        "dim": dim,
        **extra,
    }
    return Prototypes(otp=otp, visual=visual, visual_counts=counts, meta=meta)


class _Chosen:
    """A read-only list of (dataset, index) picks that behaves like one dataset."""

    def __init__(self, picks: list[tuple[Any, int]]) -> None:
        self.picks = picks

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> Any:
        dataset, index = self.picks[i]
        return dataset[index]


def _prepare_image(image: np.ndarray, *, image_size: int | None, stride: int) -> np.ndarray:
    """Resize so the short side is about `image_size` (if given) and both sides are multiples of `stride`."""
    height, width = image.shape[:2]
    scale = 1.0 if image_size is None else image_size / min(height, width)
    new_h = max(stride, int(round(height * scale / stride)) * stride)
    new_w = max(stride, int(round(width * scale / stride)) * stride)
    if (new_h, new_w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if new_h * new_w < height * width else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


@torch.no_grad()
def compute_visual_prototypes(
    encoder: DenseClipEncoder,
    dataset: SampleSource,
    *,
    num_classes: int,
    max_images: int = DEFAULT_MAX_IMAGES,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    train_ids: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-class mean of the dense embeddings `Z` over labelled images.

    Each sample (`.image` (H,W,3) uint8 RGB, `.label` (H,W) uint8 trainIds) is resized (short side `image_size`, both
    sides multiples of the encoder's stride), CLIP-normalised and encoded once; its label is resized by nearest
    neighbour to the dense grid. Each grid cell's embedding is L2-normalised (prototypes are compared by cosine), the
    per-class means are normalised again. `train_ids[k]` is the trainId of class k (default: k). A sample that cannot
    be read is skipped and logged (one broken file must not stop a build over a hundred images).
    Returns visual (K, D) float32 (zero rows for classes never seen) and counts (K,) int64 (cells per class).
    """
    lut = np.full(256, -1, dtype=np.int64)  # trainId -> class index, -1 for ignore and classes outside the space
    for index, train_id in enumerate(train_ids if train_ids is not None else range(num_classes)):
        lut[train_id] = index
    lut[IGNORE_INDEX] = -1
    sums = torch.zeros(num_classes, encoder.embed_dim, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    was_training = encoder.training
    encoder.eval()
    indices = spread_indices(len(dataset), max_images)
    try:
        for done, index in enumerate(indices, start=1):
            try:
                sample = dataset[index]
            except PparError as exc:
                log.warning("Skipped a sample for the visual prototypes: %s", exc)
                continue
            image = _prepare_image(sample.image, image_size=image_size, stride=encoder.stride)
            dense = encoder(image_to_tensor(image, device=device)).dense[0].float()  # (D, h, w)
            grid_h, grid_w = dense.shape[-2:]
            label = cv2.resize(sample.label, (grid_w, grid_h), interpolation=cv2.INTER_NEAREST)
            owners = torch.from_numpy(lut[label.reshape(-1)])
            cells = F.normalize(dense.reshape(dense.shape[0], -1).t(), dim=-1).cpu().double()  # (h*w, D)
            valid = owners >= 0
            sums.index_add_(0, owners[valid], cells[valid])
            counts += torch.bincount(owners[valid], minlength=num_classes)
            if progress is not None:
                progress("visual prototypes", done, len(indices))
    finally:
        encoder.train(was_training)
    visual = F.normalize((sums / counts.clamp(min=1).unsqueeze(1)).float(), dim=-1)
    return visual, counts


def text_prototypes(
    clip: Any,
    preset: str,
    *,
    pretrained: str | None,
    label_space: str = "cityscapes",
    templates: str = "street",
    synonyms: bool = True,
    device: str | torch.device = "cpu",
) -> Prototypes:
    """The Original Text Prototypes of a label space with `clip`'s text tower -> Prototypes (no visual rows).

    The one OTP builder: `ppar prototypes build` and a training run without a prototypes file both use it.
    `pretrained` names the weights `clip` carries, for the metadata.
    """
    clip_preset = get_preset(preset)
    space = get_label_space(label_space)
    template_list = load_templates(templates)
    names = class_prompt_names(space.class_names, synonyms=synonyms)
    otp = build_text_prototypes(clip, get_tokenizer(clip_preset), names, template_list, device=device)
    meta = {
        "model": clip_preset.name,
        "pretrained": pretrained or RANDOM_WEIGHTS,
        "classes": list(space.class_names),
        "templates": list(template_list),
        "label_space": space.name,
        "synonyms": synonyms,
        "data": [],
    }
    return Prototypes(otp=otp, meta=meta)


def build_prototypes(
    preset: str,
    *,
    pretrained: str | None,
    quick_gelu: bool | None = None,
    label_space: str = "cityscapes",
    templates: str = "street",
    device: str = "auto",
    data_specs: Sequence[str] = (),
    data_root: str | Path | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    image_size: int | None = None,
    synonyms: bool = True,
    progress: ProgressFn | None = None,
) -> Prototypes:
    """The library function behind `ppar prototypes build`: OTP for a label space, optionally visual prototypes.

    `preset` is a preset name, `pretrained` a tag, a local file or None (random weights), `quick_gelu` the tower's
    activation (None: as the weights require), `templates` a set name or a file, `data_specs` dataset specs for
    `build_dataset` (visual prototypes use up to `max_images` images of each, at short side `image_size`, default
    the preset's `image_size`).
    """
    clip_preset = get_preset(preset)
    space = get_label_space(label_space)
    target = resolve_device(device)
    # Datasets first: a wrong data root should fail before minutes of model loading.
    datasets = [build_dataset(spec, split="train", data_root=data_root) for spec in data_specs]
    model = build_clip_model(clip_preset, pretrained=pretrained, quick_gelu=quick_gelu).to(target)
    protos = text_prototypes(
        model,
        preset,
        pretrained=pretrained,
        label_space=label_space,
        templates=templates,
        synonyms=synonyms,
        device=target,
    )
    if datasets:
        encoder = DenseClipEncoder(model.visual, clip_preset)
        # Up to max_images of each dataset, pooled into one list so the per-class means are exact over all of them.
        chosen = _Chosen([(d, i) for d in datasets for i in spread_indices(len(d), max_images)])
        protos.visual, protos.visual_counts = compute_visual_prototypes(
            encoder,
            chosen,
            num_classes=space.num_classes,
            max_images=len(chosen),
            image_size=image_size or clip_preset.image_size,
            device=target,
            train_ids=space.train_ids,
            progress=progress,
        )
        protos.meta["data"] = list(data_specs)
    return protos


def nearest_classes(protos: Prototypes) -> dict[str, tuple[str, float | None]]:
    """For each class, the most similar OTHER class and their cosine (None for a single-class file)."""
    otp = F.normalize(protos.otp.float(), dim=-1)
    cosine = otp @ otp.t()
    cosine.fill_diagonal_(-2.0)  # never pick the class itself
    names = protos.class_names
    nearest: dict[str, tuple[str, float | None]] = {}
    for k, name in enumerate(names):
        other = int(cosine[k].argmax()) if len(names) > 1 else k
        nearest[name] = (names[other], float(cosine[k, other]) if other != k else None)
    return nearest
