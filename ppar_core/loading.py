"""Rebuild a trained model from its checkpoint: the config it was trained with, then the model, then its weights.

No download and no text tower: the checkpoint carries the OTP and every weight, and its config (resolved when the
run started) names the architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ppar_core.checkpoint import (
    CHECKPOINT_FILE,
    KIND_MODEL,
    KIND_TRAIN_STATE,
    Checkpoint,
    load_checkpoint,
    load_into_module,
    safetensors_metadata,
)
from ppar_core.config import TrainConfig, from_dict
from ppar_core.errors import PparError
from ppar_core.imageio import IMAGE_EXTENSIONS
from ppar_core.modeling.segmentor import PPARSegmentor, build_segmentor
from ppar_core.prototypes import PROTOTYPES_FORMAT, Prototypes
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


CHECKPOINT_ENV = "PPAR_CHECKPOINT"
RUNS_FOLDER = "runs"


def describe_file(path: str | Path) -> str:
    """What a file is, for messages: "a model checkpoint", "a prototypes file", "an image", "an ONNX model", ..."""
    path = Path(path)
    if path.is_dir():
        return "a folder"
    meta = safetensors_metadata(path)
    if meta is not None:
        if meta.get("kind") == KIND_MODEL:
            return "a model checkpoint"
        if meta.get("kind") == KIND_TRAIN_STATE:
            return "a training-state file"
        if meta.get("format") == PROTOTYPES_FORMAT:
            return "a prototypes file"
        return "a safetensors file"
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return "an image"
    return "a file"


def is_model_checkpoint(path: str | Path) -> bool:
    return (safetensors_metadata(Path(path)) or {}).get("kind") == KIND_MODEL


def newest_run_checkpoint(cwd: str | Path = ".") -> Path | None:
    """The most recently written `runs/*/last.safetensors` under `cwd` (also `runs/*/*/`), or None."""
    found = [
        *Path(cwd).glob(f"{RUNS_FOLDER}/*/{CHECKPOINT_FILE}"),
        *Path(cwd).glob(f"{RUNS_FOLDER}/*/*/{CHECKPOINT_FILE}"),
    ]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_checkpoint(given: str | Path | None = None, *, cwd: str | Path = ".") -> tuple[Path, str]:
    """The model to use -> (path, how it was found): `given`, else $PPAR_CHECKPOINT, else the newest run's
    `last.safetensors` under `cwd`/runs. PparError saying how to get one when there is none."""
    if given is not None:
        return Path(given), "given"
    env = os.environ.get(CHECKPOINT_ENV)
    if env:
        return Path(env).expanduser(), f"${CHECKPOINT_ENV}"
    newest = newest_run_checkpoint(cwd)
    if newest is not None:
        return newest, "the newest run"
    raise PparError(
        f"No model to use: no runs/*/{CHECKPOINT_FILE} here and ${CHECKPOINT_ENV} is not set; train one "
        "(`ppar train ...`, or `ppar demo`) or pass one with --checkpoint/-c."
    )
