"""What a training run settles before its first step: the checkpoint it resumes, the prototypes it starts from, and
its plan in words."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ppar_core.checkpoint import Checkpoint, load_checkpoint
from ppar_core.clip.presets import get_preset
from ppar_core.config import TrainConfig, check_resumable, from_dict
from ppar_core.engine.distributed import DistContext
from ppar_core.engine.run_folder import MODEL_FILE, RunFolder
from ppar_core.errors import PparError
from ppar_core.evaluation.targets import Target
from ppar_core.labels import NUM_CLASSES
from ppar_core.prototypes import Prototypes, build_prototypes, load_prototypes
from ppar_core.runtime import data_workers

log = logging.getLogger("ppar.train")


def plan(cfg: TrainConfig, dist: DistContext, *, resume_step: int | None) -> dict[str, str]:
    """What a run is about to do, in words (for the start of its log)."""
    crop_h, crop_w = cfg.data.augment.crop_size
    per_step = cfg.batch_size * cfg.optim.accum_steps * dist.world_size
    return {
        "run": cfg.out + ("" if resume_step is None else f" (resumed at step {resume_step})"),
        "model": f"{cfg.model.preset}, weights {cfg.model.pretrained or 'none (random)'}, "
        f"{'ERM baseline' if cfg.loss.method == 'erm' else 'PPAR'}",
        "steps": f"{cfg.iters} x {per_step} images (batch {cfg.batch_size}"
        + (f" x {cfg.optim.accum_steps} accumulated" if cfg.optim.accum_steps > 1 else "")
        + (f" x {dist.world_size} processes" if dist.world_size > 1 else "")
        + f"), crop {crop_h}x{crop_w} (HxW)",
        "source": " + ".join(cfg.data.source)
        + (f" ({cfg.data.source_sampling} sampling)" if len(cfg.data.source) > 1 else ""),
        "targets": ", ".join(cfg.data.targets) or "none",
        "workers": f"{data_workers(cfg.data.workers)} data worker(s) per process"
        + (" (the usable cores minus one)" if cfg.data.workers is None else ""),
        "device": str(dist.device),
    }


def checkpoint_to_resume(cfg: TrainConfig, run: RunFolder) -> Checkpoint:
    """The run's checkpoint, checked to belong to the same computation as `cfg`."""
    if not run.model.exists() or not run.state.exists():
        raise PparError(f"Nothing to resume in {run.out}: {MODEL_FILE} and its .state file are missing; drop --resume.")
    checkpoint = load_checkpoint(run.model)
    check_resumable(from_dict(TrainConfig, checkpoint.config), cfg, run=str(run.out))
    return checkpoint


def start_prototypes(cfg: TrainConfig, checkpoint: Checkpoint | None) -> Prototypes:
    """The prototypes the model starts from: the checkpoint's, the prototypes file's, or built by the text tower."""
    if checkpoint is not None:
        return Prototypes(otp=checkpoint.tensors["otp"], meta=checkpoint.meta.get("prototypes", {}))
    if cfg.model.prototypes:
        preset = get_preset(cfg.model.preset)
        return load_prototypes(Path(cfg.model.prototypes), expect_dim=preset.embed_dim, expect_classes=NUM_CLASSES)
    # The text tower is built from the same RNG state as the model's tower, which is then built again from it: the
    # prototypes and the image tower come from one CLIP (also with random weights), and the model's initialisation
    # is the same as with a prototypes file.
    with torch.random.fork_rng(devices=[]):
        return build_prototypes(
            cfg.model.preset,
            pretrained=cfg.model.pretrained,
            quick_gelu=cfg.model.quick_gelu,
            templates=cfg.model.templates,
            device="cpu",
        )


def prepared_copies(
    sources: Sequence[Any], specs: Sequence[str], targets: Sequence[Target], *, augment_resize: tuple[int, int] | None
) -> dict[str, Any]:
    """{"sources": {spec: manifest facts}, "targets": {name: ...}} of the datasets that are prepared copies (`ppar
    data prepare`). Said in the log too: a lossy (JPEG) copy; a source copy resized otherwise than the augment's
    first resize (`augment_resize`: its samples then differ from the original's); a resized target copy (scored at
    the copy's resolution, not the protocol's)."""
    copies: dict[str, Any] = {}
    found = {spec: s.prepared for spec, s in zip(specs, sources, strict=True) if getattr(s, "prepared", None)}
    if found:
        copies["sources"] = found
    targets_copies = {t.name: t.dataset.prepared for t in targets if getattr(t.dataset, "prepared", None)}
    if targets_copies:
        copies["targets"] = targets_copies
    for what, info in [*found.items(), *targets_copies.items()]:
        if info.get("lossy"):
            log.warning(
                "%s is a lossy (%s) prepared copy: its images differ from the originals.", what, info["image_format"]
            )
    wanted = None if augment_resize is None else list(augment_resize)
    for spec, info in found.items():
        if info.get("resize") is not None and info["resize"] != wanted:
            log.warning(
                "%s is a prepared copy resized to %s, but the augment's first resize is %s: its samples differ from "
                "the original's (prepare it with --resize preset:NAME of this run's preset).",
                spec,
                "x".join(map(str, info["resize"])),
                "none" if wanted is None else "x".join(map(str, wanted)),
            )
    for name, info in targets_copies.items():
        if info.get("resize") is not None:
            log.warning(
                "Target %s is a prepared copy resized to %s: it is scored at that resolution, not its own (prepare "
                "targets with --resize none).",
                name,
                "x".join(map(str, info["resize"])),
            )
    return copies
