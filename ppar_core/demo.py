"""The built-in demo: synthetic domains -> tiny prototypes -> train on `synth-source` -> evaluate on the others.

Everything runs on the CPU in a few minutes with the random-init `tiny` preset, so it shows the whole pipeline
working, not CLIP's transfer: the figures it prints are measured on this run and mean nothing about real data.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppar_core.config import TrainConfig, get_train_preset, merge
from ppar_core.data import build_dataset
from ppar_core.data.synth import write_domains
from ppar_core.engine.train import TrainResult, train
from ppar_core.predict import Predictor
from ppar_core.progress import ProgressFn
from ppar_core.prototypes import build_prototypes, save_prototypes
from ppar_core.visualize import overlay, overlay_with_legend

log = logging.getLogger("ppar.demo")

DEMO_SOURCE_IMAGES = 200
DEMO_TARGET_IMAGES = 40
DEMO_SIZE = (256, 512)
TARGET_DOMAINS = ("synth-real", "synth-night", "synth-fog")


@dataclass
class DemoResult:
    runs: dict[str, TrainResult] = field(default_factory=dict)  # method -> result
    overlays: list[Path] = field(default_factory=list)


def ensure_synthetic_data(root: Path, *, seed: int = 0, progress: ProgressFn | None = None) -> Path:
    """Generate the four synthetic domains under `root` unless a complete set is already there."""
    wanted = {"synth-source": DEMO_SOURCE_IMAGES, **{d: DEMO_TARGET_IMAGES for d in TARGET_DOMAINS}}
    for domain, num in wanted.items():
        labels = root / domain / "labels"
        if labels.is_dir() and len(list(labels.glob("*.png"))) >= num:
            continue
        log.info("Generating %d images of %s in %s.", num, domain, root / domain)
        write_domains(root, domains=[domain], num=num, size=DEMO_SIZE, seed=seed, progress=progress)
    return root


def ensure_prototypes(path: Path) -> Path:
    """Build the `tiny` text prototypes (random text tower, street templates) unless the file exists."""
    if not path.exists():
        protos = build_prototypes("tiny", pretrained=None, label_space="cityscapes", templates="street", device="cpu")
        save_prototypes(path, protos)
    return path


def demo_config(out: Path, *, method: str, iters: int | None, device: str) -> TrainConfig:
    cfg = get_train_preset("synth-tiny")
    changes: dict[str, Any] = {
        "out": str(out / method),
        "device": device,
        "data": {"data_root": str(out / "data")},
        "model": {"prototypes": str(out / "prototypes.safetensors")},
        "loss": {"method": method},
    }
    if iters is not None:
        changes["iters"] = iters
    return merge(cfg, changes).validate()


def write_overlays(
    checkpoint: Path, data_root: Path, out: Path, *, per_domain: int = 2, device: str = "cpu"
) -> list[Path]:
    """Predict a few images of each target and write `<name>.png` panels: the image and its ground truth on top,
    the prediction with a legend of the classes it found below."""
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for domain in TARGET_DOMAINS:
        dataset = build_dataset(domain, split="val", data_root=data_root)
        for i in range(min(per_domain, len(dataset))):
            sample = dataset[i]
            pred = predictor.predict(sample.image)
            top = np.concatenate([sample.image, overlay(sample.image, sample.label)], axis=1)
            bottom = overlay_with_legend(sample.image, pred)
            pad = np.full((bottom.shape[0], top.shape[1] - bottom.shape[1], 3), 255, dtype=np.uint8)
            panel = np.concatenate([top, np.concatenate([bottom, pad], axis=1)], axis=0)
            path = out / f"{sample.name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
            written.append(path)
    return written


def run_demo(
    out: Path,
    *,
    compare: str | None = None,
    iters: int | None = None,
    device: str = "cpu",
    on_stage: Callable[[str], None] | None = None,
    make_progress: Callable[[TrainConfig], Any] | None = None,
) -> DemoResult:
    """Run the demo into `out` (its run folders are replaced on every call; data and prototypes are reused).

    `make_progress(cfg)` may return a context manager yielding an object with `on_log` and `on_eval`.
    """
    stage = on_stage or (lambda message: None)
    stage("Synthetic domains")
    ensure_synthetic_data(out / "data")
    stage("Text prototypes (tiny)")
    ensure_prototypes(out / "prototypes.safetensors")
    result = DemoResult()
    for method in ["ppar"] + ([compare] if compare else []):
        cfg = demo_config(out, method=method, iters=iters, device=device)
        shutil.rmtree(cfg.out, ignore_errors=True)
        stage(f"Training {method} on synth-source for {cfg.iters} steps")
        if make_progress is None:
            result.runs[method] = train(cfg)
        else:
            with make_progress(cfg) as progress:
                result.runs[method] = train(cfg, on_log=progress.on_log, on_eval_progress=progress.on_eval)
    stage("Overlays")
    result.overlays = write_overlays(result.runs["ppar"].checkpoint, out / "data", out / "overlays", device=device)
    return result
