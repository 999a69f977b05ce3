"""Parity of an exported ONNX file with PyTorch: onnxruntime and the model on the same inputs, scores and argmax
compared element by element (what `ppar export --check` prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppar_core.config import TrainConfig
from ppar_core.data.synth import make_sample
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.onnx_predict import INPUT_NAME, OUTPUT_NAME, OnnxMetadata, OnnxPredictor, open_session
from ppar_core.predict import Predictor
from ppar_core.protocol import InferenceConfig

CHECK_GRID = (6, 10)  # token grid of the random check input: another size than the example (e.g. 96x160 at p=16)

# Parity tolerances: max |onnxruntime - PyTorch| <= tolerance * max(1, max |PyTorch score|), and the share of pixels
# whose argmax agrees. fp32 differs only by the order of float operations; fp16 by 11-bit significands in every layer.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}


@dataclass(frozen=True)
class ParityCheck:
    """onnxruntime against PyTorch on one input: scores and argmax labels compared element by element."""

    name: str  # "random" (one batch of raw logits) or "image" (one image through the inference protocol)
    shape: tuple[int, ...]  # of the compared scores, e.g. (2, 19, 24, 40)
    max_abs_diff: float  # max |onnxruntime - PyTorch| over every score
    max_abs_score: float  # max |PyTorch score|: what the tolerance is relative to
    agreement: float  # share of pixels whose argmax class agrees, 0-1
    tolerance: float  # allowed max_abs_diff
    min_agreement: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.agreement >= self.min_agreement


def _compare(name: str, ort_scores: np.ndarray, torch_scores: np.ndarray, precision: str) -> ParityCheck:
    """Compare (..., K, h, w) scores: the class axis is -3."""
    diff = float(np.abs(ort_scores - torch_scores).max())
    scale = float(np.abs(torch_scores).max())
    agreement = float((ort_scores.argmax(axis=-3) == torch_scores.argmax(axis=-3)).mean())
    return ParityCheck(
        name=name,
        shape=tuple(torch_scores.shape),
        max_abs_diff=diff,
        max_abs_score=scale,
        agreement=agreement,
        tolerance=TOLERANCE[precision] * max(1.0, scale),
        min_agreement=MIN_AGREEMENT[precision],
    )


def default_check_image(protocol: InferenceConfig) -> np.ndarray:
    """A synthetic street scene ("synth-real" sample 0), crop x 2 crop pixels: (H,W,3) uint8 RGB."""
    return make_sample("synth-real", 0, size=(protocol.crop_size, 2 * protocol.crop_size))[0]


def parity_checks(
    path: Path,
    model: PPARSegmentor,
    cfg: TrainConfig,
    metadata: OnnxMetadata,
    *,
    image: np.ndarray | None = None,
) -> list[ParityCheck]:
    """onnxruntime (CPU) on the file at `path` against PyTorch's `model` (fp32, eval) on two inputs.

    "random": one (2,3,h,w) normal batch, raw logits (h, w: the fixed crop, or CHECK_GRID patches, a size the graph
    was not traced at). "image": `image` (default `default_check_image`) through the recommended protocol,
    `OnnxPredictor.predict_logits` against `Predictor.predict_logits`.
    """
    session = open_session(path, device="cpu")
    patch = metadata.patch_size
    size = metadata.input_size or (CHECK_GRID[0] * patch, CHECK_GRID[1] * patch)
    batch = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model.infer(batch).numpy()
    scores = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    checks = [_compare("random", scores, reference, metadata.precision)]

    protocol = metadata.protocol
    picture = default_check_image(protocol) if image is None else image
    onnx_scores = OnnxPredictor(session, metadata=metadata, inference=protocol).predict_logits(picture)
    torch_scores = Predictor(model, config=cfg, inference=protocol).predict_logits(picture).numpy()
    checks.append(_compare("image", onnx_scores, torch_scores, metadata.precision))
    return checks
