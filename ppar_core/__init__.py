"""ppar: domain-generalizable semantic segmentation with CLIP (PPAR, a documented reconstruction).

The public API, importable from here:

    from ppar_core import TrainConfig, train, Predictor
    result = train(get_train_preset("synth-tiny"))
    labels = Predictor.from_checkpoint(result.checkpoint).predict(image)

The library imports neither typer nor rich. The names below are resolved on first use (PEP 562), so that
`import ppar_core` (and `ppar --help`, which needs only `PparError` and the version) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ppar_core.errors import PparError
from ppar_core.version import __version__

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    "TrainConfig": "ppar_core.config",
    "get_train_preset": "ppar_core.config",
    "train": "ppar_core.engine.train",
    "TrainResult": "ppar_core.engine.train",
    "ModelConfig": "ppar_core.modeling.segmentor",
    "build_segmentor": "ppar_core.modeling.segmentor",
    "load_segmentor": "ppar_core.loading",
    "Predictor": "ppar_core.predict",
    "OnnxPredictor": "ppar_core.onnx_predict",
    "export_onnx": "ppar_core.export",
    "evaluate_checkpoint": "ppar_core.evaluation.evaluate",
    "build_dataset": "ppar_core.data.registry",
}

__all__ = [
    "ModelConfig",
    "OnnxPredictor",
    "PparError",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "build_dataset",
    "build_segmentor",
    "evaluate_checkpoint",
    "export_onnx",
    "get_train_preset",
    "load_segmentor",
    "train",
]

if TYPE_CHECKING:
    from ppar_core.config import TrainConfig, get_train_preset
    from ppar_core.data.registry import build_dataset
    from ppar_core.engine.train import TrainResult, train
    from ppar_core.evaluation.evaluate import evaluate_checkpoint
    from ppar_core.export import export_onnx
    from ppar_core.loading import load_segmentor
    from ppar_core.modeling.segmentor import ModelConfig, build_segmentor
    from ppar_core.onnx_predict import OnnxPredictor
    from ppar_core.predict import Predictor


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ppar_core' has no attribute {name!r}")
