"""Rebuild a trained model from its checkpoint: the config it was trained with, then the model, then its weights.

No download and no text tower: the checkpoint carries the OTP and every weight, and its config (resolved when the
run started) names the architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppar_core.checkpoint import Checkpoint, load_checkpoint, load_into_module
from ppar_core.config import TrainConfig, from_dict
from ppar_core.errors import PparError
from ppar_core.modeling.segmentor import PPARSegmentor, build_segmentor
from ppar_core.prototypes import Prototypes
from ppar_core.runtime import resolve_device


def read_run_config(path: str | Path) -> tuple[TrainConfig, Checkpoint]:
    """The training config a checkpoint carries, and the checkpoint record (tensors on the CPU)."""
    checkpoint = load_checkpoint(Path(path))
    try:
        cfg = from_dict(TrainConfig, checkpoint.config)
    except PparError as exc:
        raise PparError(f"{path} carries a config this version of ppar cannot read ({exc}).") from exc
    return cfg, checkpoint


def segmentor_from_checkpoint(
    checkpoint: Checkpoint, cfg: TrainConfig, *, device: str | torch.device = "cpu"
) -> PPARSegmentor:
    """The model `cfg` describes with the checkpoint's weights, in eval mode on `device`."""
    if "otp" not in checkpoint.tensors:
        raise PparError(f"{checkpoint.path} has no `otp` tensor: it is not a ppar model checkpoint.")
    model = build_segmentor(cfg.model, prototypes=Prototypes(otp=checkpoint.tensors["otp"]), load_weights=False)
    load_into_module(model, checkpoint.tensors, source=str(checkpoint.path))
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(dev).eval()


def load_segmentor(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[PPARSegmentor, TrainConfig, Checkpoint]:
    """Rebuild the model a checkpoint was trained as -> (model in eval mode on `device`, its config, the record)."""
    cfg, checkpoint = read_run_config(path)
    return segmentor_from_checkpoint(checkpoint, cfg, device=device), cfg, checkpoint
