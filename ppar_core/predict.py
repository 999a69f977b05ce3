"""The library entry for running a trained model: `Predictor.from_checkpoint(path).predict(image)`.

    predictor = Predictor.from_checkpoint("runs/g2cbm/last.safetensors", device="auto")
    labels = predictor.predict(image)          # image (H,W,3) uint8 RGB -> (H,W) uint8 trainIds
    scores = predictor.predict_logits(image)   # -> (K,H,W) float32 class scores
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppar_core.checkpoint import Checkpoint, load_checkpoint, load_into_module
from ppar_core.config import TrainConfig, from_dict
from ppar_core.data.transforms import to_clip_tensor_layout
from ppar_core.engine.inference import InferenceConfig, infer_logits
from ppar_core.errors import PparError
from ppar_core.modeling.segmentor import PPARSegmentor, build_segmentor
from ppar_core.runtime import autocast, resolve_device


def load_segmentor(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[PPARSegmentor, TrainConfig, Checkpoint]:
    """Rebuild the model a checkpoint was trained as and load its weights (no download, no text tower).

    Returns the model in eval mode on `device`, its resolved training config and the checkpoint record.
    """
    checkpoint = load_checkpoint(Path(path))
    try:
        cfg = from_dict(TrainConfig, checkpoint.config)
    except PparError as exc:
        raise PparError(f"{path} carries a config this version of ppar cannot read ({exc}).") from exc
    if "otp" not in checkpoint.tensors:
        raise PparError(f"{path} has no `otp` tensor: it is not a ppar model checkpoint.")
    model, _ = build_segmentor(cfg.model, otp=checkpoint.tensors["otp"], pretrained=None)
    load_into_module(model, checkpoint.tensors, source=str(path))
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval(), cfg, checkpoint


class Predictor:
    """Runs a trained segmentor on numpy images, with the checkpoint's evaluation protocol unless told otherwise."""

    def __init__(self, model: PPARSegmentor, *, config: TrainConfig, inference: InferenceConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.inference = (inference or config.eval).validate()
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "auto", inference: InferenceConfig | None = None, **changes: Any
    ) -> Predictor:
        """`changes` replace fields of the inference config (e.g. `mode="whole"`, `tta="flip"`)."""
        model, cfg, _ = load_segmentor(path, device=device)
        base = inference or cfg.eval
        return cls(model, config=cfg, inference=replace(base, **changes) if changes else base)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def to_tensor(self, image: np.ndarray) -> Tensor:
        """(H,W,3) uint8 RGB -> (1,3,H,W) float32 CLIP-normalised on the model's device."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H,W,3) uint8 RGB image, got {image.shape} {image.dtype}")
        return torch.from_numpy(to_clip_tensor_layout(image))[None].to(self.device)

    def predict_torch(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) normalised, H and W multiples of the patch size -> logits (B,K,H,W)."""
        with torch.inference_mode(), autocast(self.device):
            return self.model.predict_logits(images).float()

    def predict_logits(self, image: np.ndarray) -> Tensor:
        """(H,W,3) uint8 RGB -> class scores (K,H,W) float32 on the CPU, with the configured inference/TTA."""
        scores = infer_logits(
            self.predict_torch,
            self.to_tensor(image),
            self.inference,
            num_classes=self.num_classes,
            accumulate_device=torch.device("cpu") if image.shape[0] * image.shape[1] > 4096 * 2048 else None,
        )
        return scores[0].float().cpu()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (H,W) uint8 trainIds."""
        return self.predict_logits(image).argmax(0).to(torch.uint8).numpy()
