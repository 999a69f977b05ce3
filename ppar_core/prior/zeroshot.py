"""Checks of a CLIP prior with no training at all: image-text retrieval, and dense zero-shot segmentation.

- Retrieval: held-out synthetic scenes (a seed stream pretraining never draws from) and their captions; for each
  image, is its own caption the most similar of all (image -> text), and for each caption its own image (text ->
  image)? Recall at 1 and 5, against a chance level of k / N.
- Dense zero-shot segmentation: the image tower's patch tokens in the joint space (`DenseClipEncoder.dense`, final
  norm and projection) are scored against the text prototypes of the 19 classes (`text_prototypes`, the same OTP a
  training run starts from); no head, no training. Scored by the project's one evaluation path
  (`evaluate_dataset`), so the mIoU is the same metric as every other figure ppar reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.clip.presets import get_preset
from ppar_core.clip.weights import build_clip_model, get_tokenizer
from ppar_core.data.base import Sample
from ppar_core.data.synth import make_sample
from ppar_core.data.synth.captions import scene_caption
from ppar_core.evaluation.evaluate import evaluate_dataset
from ppar_core.labels import NUM_CLASSES
from ppar_core.metrics import SegMetrics
from ppar_core.normalize import normalize
from ppar_core.prior.loss import embed_texts
from ppar_core.prior.pairs import heldout_scenes
from ppar_core.prior.pretrain import PRESET
from ppar_core.progress import ProgressFn
from ppar_core.protocol import InferenceConfig
from ppar_core.prototypes import text_prototypes

SYNTH_DOMAINS = ("synth-source", "synth-real", "synth-night", "synth-fog")


class DenseZeroShot(nn.Module):
    """A `model_fn` for evaluation: images (B,3,H,W) float -> scores (B,K,H/p,W/p) = cos(z, t_k) of every patch
    token z against every text prototype t_k (K,D). The argmax is the zero-shot label; no parameter is trained."""

    def __init__(self, encoder: DenseClipEncoder, prototypes: Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=-1))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        dense = F.normalize(self.encoder(images).dense.float(), dim=1)  # (B, D, h, w)
        return torch.einsum("bdhw,kd->bkhw", dense, self.prototypes)


@dataclass(frozen=True)
class RetrievalResult:
    """Recall (percent) of held-out image-text retrieval among `num` pairs."""

    image_to_text_r1: float
    image_to_text_r5: float
    text_to_image_r1: float
    text_to_image_r5: float
    num: int

    @property
    def chance_r1(self) -> float:
        return 100.0 / self.num

    def to_dict(self) -> dict[str, float]:
        return {
            "image_to_text_r1": self.image_to_text_r1,
            "image_to_text_r5": self.image_to_text_r5,
            "text_to_image_r1": self.text_to_image_r1,
            "text_to_image_r5": self.text_to_image_r5,
            "num": self.num,
            "chance_r1": self.chance_r1,
            "chance_r5": min(100.0, 500.0 / self.num),
        }


def recall_at(similarity: Tensor, k: int) -> float:
    """similarity (N, N), row i's match is column i -> percent of rows whose match is among their k best columns."""
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices  # (N, k)
    hits = (top == torch.arange(similarity.shape[0]).unsqueeze(1)).any(dim=1)
    return 100.0 * float(hits.float().mean())


@torch.no_grad()
def retrieval_check(
    model: Any, *, num: int = 100, seed: int = 0, size: tuple[int, int] = (128, 256), render_size=(256, 512)
) -> RetrievalResult:
    """Zero-shot retrieval on `num` held-out scenes (random styles), each image resized to `size`, one caption each."""
    scenes = heldout_scenes(seed, num, render_size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC4EC]))
    captions = [scene_caption(s.labels, s.style, rng) for s in scenes]
    images = np.stack([cv2.resize(s.image, (size[1], size[0]), interpolation=cv2.INTER_AREA) for s in scenes])
    encoder = DenseClipEncoder(model.visual, get_preset(PRESET))
    was_training = model.training
    model.eval()
    try:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        image_emb = F.normalize(encoder(normalize(pixels)).global_embedding.float(), dim=-1)
        text_emb = embed_texts(model, get_tokenizer(PRESET), captions)
    finally:
        model.train(was_training)
    sim = image_emb @ text_emb.t()
    return RetrievalResult(recall_at(sim, 1), recall_at(sim, 5), recall_at(sim.t(), 1), recall_at(sim.t(), 5), num)


def synthetic_samples(domain: str, num: int, *, size: tuple[int, int], seed: int) -> list[Sample]:
    """Samples 0..num-1 of a built-in synthetic domain, made in memory (the same images `ppar data synth` writes)."""
    out = []
    for index in range(num):
        image, label = make_sample(domain, index, size=size, seed=seed)
        out.append(Sample(image=image, label=label, name=f"{domain}_{index:05d}"))
    return out


def dense_zero_shot(
    model: Any,
    datasets: Mapping[str, Sequence[Sample]],
    *,
    pretrained: str | None,
    templates: str = "street",
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, SegMetrics]:
    """Zero-shot dense segmentation of a CLIP `model` (open_clip CLIP, `tiny`) on each dataset -> {name: metrics}.

    The text prototypes are those of `text_prototypes` (Cityscapes classes, `templates`); each image is scored whole
    at its own size by `evaluate_dataset`.
    """
    protos = text_prototypes(model, PRESET, pretrained=pretrained, templates=templates, device=device)
    scorer = DenseZeroShot(DenseClipEncoder(model.visual, get_preset(PRESET)), protos.otp).to(device).eval()
    protocol = InferenceConfig(mode="whole", batch_size=1, size_divisor=get_preset(PRESET).patch_size)
    results = {}
    for name, dataset in datasets.items():
        results[name] = evaluate_dataset(
            scorer, dataset, protocol, num_classes=NUM_CLASSES, device=device, progress=progress,
            task=f"zero-shot {name}",
        )  # fmt: skip
    return results


def check_prior(
    pretrained: str | None,
    *,
    domains: Sequence[str] = SYNTH_DOMAINS,
    num_images: int = 40,
    size: tuple[int, int] = (256, 512),
    data_seed: int = 0,
    retrieval_num: int = 100,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The prior's checks for the weights `pretrained` (a file, or None for random weights) -> a JSON-able report:

    {"retrieval": RetrievalResult.to_dict(), "zero_shot": {domain: {"miou", "per_class", "acc"}},
     "zero_shot_mean_miou": float, "chance_miou": float (uniform random labels, computed on the same images)}.
    """
    model = build_clip_model(PRESET, pretrained=pretrained).to(device)
    retrieval = retrieval_check(model, num=retrieval_num, seed=data_seed)
    datasets = {d: synthetic_samples(d, num_images, size=size, seed=data_seed) for d in domains}
    metrics = dense_zero_shot(model, datasets, pretrained=pretrained, device=device, progress=progress)
    chance = _chance_miou(datasets, seed=data_seed)
    zero_shot = {name: m.to_dict() for name, m in metrics.items()}
    mean = float(np.mean([m.miou for m in metrics.values()])) if metrics else float("nan")
    return {"retrieval": retrieval.to_dict(), "zero_shot": zero_shot, "zero_shot_mean_miou": mean, "chance": chance}


def _chance_miou(datasets: Mapping[str, Sequence[Sample]], *, seed: int) -> dict[str, float]:
    """mIoU of uniformly random labels on each dataset (the floor the zero-shot figures are compared with)."""

    def random_scores(images: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(images.shape[0], NUM_CLASSES, *images.shape[-2:], generator=generator)

    protocol = InferenceConfig(mode="whole", batch_size=1)
    return {
        name: evaluate_dataset(random_scores, dataset, protocol, num_classes=NUM_CLASSES, device="cpu").miou
        for name, dataset in datasets.items()
    }
