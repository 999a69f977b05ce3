"""The embedded CLIP prior: contrastive image-text pretraining of the `tiny` towers on synthetic pairs.

No CLIP weights can be downloaded where ppar's demo must run, and a random tower's "text prototypes" are random
vectors. So ppar makes a miniature CLIP itself: open_clip's own `CLIP` model (the `tiny` config) trained with
open_clip's own `ClipLoss` (the CLIP objective: symmetric cross-entropy over the image-text similarities of a batch)
on the pairs of `ppar_core.prior.pairs`: scenes captioned from their layouts, and region crops captioned with their
main class. It is NOT CLIP and knows nothing of real images; it gives the synthetic benchmark what CLIP gives the real
one, an image-text space learned from a broad distribution of looks.

Per step (`batch_loss`): scene crops (S,3,h,w) -> class-token embeddings against their captions; region crops
(R,3,r,r) -> class-token embeddings and (with `dense_regions`) the mean of their projected patch tokens against
"a photo of a <class>." captions; boxes of whole patch tokens inside the scene crops -> the mean of their projected
patch tokens against their main class's caption. Loss = ClipLoss over the scenes + the mean ClipLoss over batches
of regions of distinct classes + the same over the boxes. The boxes are what teach the patch tokens (the dense
embeddings PPAR aligns and reweights with) local semantics; they are region-level captions, coarser than labels.

The prior file is an open_clip state dict in `.safetensors` (what `--model tiny --pretrained FILE` loads), with the
model config, the recipe (`PretrainConfig`), the step and `quick_gelu` in its metadata. Every `checkpoint_every`
steps, on Ctrl-C and at the end, the file is written atomically together with a sibling `.state.safetensors` (the
optimizer); `resume=True` continues from them and gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save

from ppar_core.checkpoint import load_training_state, save_training_state, sibling_state_path
from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.clip.presets import get_preset
from ppar_core.clip.weights import build_clip_model, get_tokenizer, load_state_dict_file, model_config_of
from ppar_core.config import OptimConfig, from_dict, to_dict
from ppar_core.engine.interrupt import StopFlag
from ppar_core.engine.optim import build_optimizer, lr_at, set_lr
from ppar_core.errors import PparError
from ppar_core.files import atomic_write
from ppar_core.prior.loss import batch_loss
from ppar_core.prior.pairs import PairsConfig, PairStream
from ppar_core.progress import ProgressFn
from ppar_core.version import __version__

log = logging.getLogger("ppar.pretrain")

PRIOR_FORMAT = "ppar-clip-prior"
PRIOR_FORMAT_VERSION = 1
PRESET = "tiny"  # the only tower ppar pretrains itself


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe of a prior. Together with the machine's arithmetic it determines the weights exactly."""

    steps: int = 600  # optimizer steps (the default takes about 3 minutes on 2 CPU cores)
    seed: int = 0  # model initialisation and every draw of the pair stream
    lr: float = 2e-3  # peak AdamW learning rate
    weight_decay: float = 0.1  # on weight matrices only (engine.optim's rule)
    warmup_steps: int = 40  # linear warm-up, then poly (linear) decay to zero
    grad_clip: float = 1.0  # max global gradient norm
    dense_regions: bool = True  # regions also contrast the mean of their patch tokens (teaches the dense tokens)
    max_groups: int | None = None  # region / box contrastive batches per step and kind (the fullest first)
    init_logit_scale: float = 1 / 0.07  # CLIP's initial inverse temperature (learned from there, capped at 100)
    pairs: PairsConfig = field(default_factory=PairsConfig)

    def validate(self) -> PretrainConfig:
        """Raise PparError naming the first bad field; returns self so it chains."""
        for name in ("steps", "warmup_steps"):
            if getattr(self, name) < (1 if name == "steps" else 0):
                raise PparError(f"Pretraining field {name} must be positive, got {getattr(self, name)}.")
        if self.lr <= 0:
            raise PparError(f"Pretraining field lr must be positive, got {self.lr}.")
        p = self.pairs
        if p.pool_size < 1 or p.scenes_per_step < 2 or p.regions_per_step < 0 or p.refresh_per_step < 0:
            raise PparError(
                "Pretraining needs pool_size >= 1, scenes_per_step >= 2 (a contrastive batch needs a negative), "
                "regions_per_step >= 0 and refresh_per_step >= 0."
            )
        stride = get_preset(PRESET).patch_size
        if p.patch_size != stride:
            raise PparError(f"Pretraining pairs.patch_size must be the {PRESET} tower's patch size {stride}.")
        if any(v % stride for v in (*p.scene_size, p.region_size)):
            raise PparError(f"Pretraining scene_size and region_size must be multiples of the patch size {stride}.")
        return self


@dataclass
class PretrainResult:
    path: Path  # the prior file
    step: int  # optimizer steps completed
    interrupted: bool  # True when Ctrl-C stopped the run (the file holds the weights at `step`)
    history: list[dict[str, float]] = field(default_factory=list)  # one record per logged step
    seconds: float = 0.0  # wall time of this call
    model: Any = None  # the trained open_clip CLIP (eval mode), as saved in `path`


@dataclass
class PriorInfo:
    """What a prior file's metadata says about it."""

    path: Path
    recipe: PretrainConfig
    step: int

    @property
    def complete(self) -> bool:
        return self.step >= self.recipe.steps


def recipe_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """The recipe as JSON-able data (what the prior's metadata stores)."""
    return to_dict(cfg)


def read_prior_info(path: str | Path) -> PriorInfo:
    """Read a prior file's metadata -> PriorInfo; PparError if it is not a ppar prior."""
    path = Path(path)
    if not path.is_file():
        raise PparError(f"Prior file {path} does not exist: build it with `ppar pretrain --out {path}`.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
    except Exception as exc:  # truncated or not safetensors
        raise PparError(f"Prior file {path} is damaged or not a safetensors file ({exc}): build it again.") from exc
    if meta.get("format") != PRIOR_FORMAT or meta.get("format_version") != str(PRIOR_FORMAT_VERSION):
        raise PparError(
            f"{path} is not a ppar prior of format version {PRIOR_FORMAT_VERSION}: build it with `ppar pretrain`."
        )
    try:
        recipe = from_dict(PretrainConfig, json.loads(meta["recipe"]))
        step = int(meta["step"])
    except (KeyError, ValueError) as exc:
        raise PparError(f"Prior file {path} has incomplete metadata ({exc}): build it again.") from exc
    return PriorInfo(path=path, recipe=recipe, step=step)


def save_prior(path: Path, model: torch.nn.Module, cfg: PretrainConfig, *, step: int) -> None:
    """Write `model`'s state dict (open_clip key names) and the prior's metadata to `path`, atomically."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    metadata = {
        "format": PRIOR_FORMAT,
        "format_version": str(PRIOR_FORMAT_VERSION),
        "preset": PRESET,
        "quick_gelu": "false",  # read by ppar_core.clip.weights.resolve_quick_gelu
        "model_config": json.dumps(model_config_of(get_preset(PRESET)), sort_keys=True),
        "recipe": json.dumps(recipe_dict(cfg), sort_keys=True),
        "step": str(step),
        "ppar_version": __version__,
        "note": "a miniature CLIP pretrained by ppar on synthetic image-text pairs; not OpenAI's CLIP",
    }
    payload = save(tensors, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def _optim_config(cfg: PretrainConfig) -> OptimConfig:
    return OptimConfig(
        lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98), warmup_iters=cfg.warmup_steps,
        warmup_ratio=0.01, grad_clip=cfg.grad_clip,
    )  # fmt: skip


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: ProgressFn | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    log_every: int = 20,
    checkpoint_every: int = 100,
    device: str | torch.device = "cpu",
) -> PretrainResult:
    """Pretrain the `tiny` prior as `cfg` says into the file `out` -> PretrainResult.

    `resume` continues the run whose prior and `.state.safetensors` are at `out` (same recipe required); without it
    an existing `out` is replaced only with `force`. `progress("pretrain", done, total)` is called after every step;
    `on_log(record)` every `log_every` steps with the step, the losses, the learning rate and pairs per second.
    Ctrl-C stops at the next step boundary and saves (the result says `interrupted`).
    """
    cfg.validate()
    out = Path(out)
    state_path = sibling_state_path(out)
    if out.exists() and not (resume or force):
        raise PparError(f"{out} already exists: pass --resume to continue it or --force to replace it.")
    started = time.perf_counter()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model = build_clip_model(PRESET).to(device)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    encoder = DenseClipEncoder(model.visual, get_preset(PRESET))
    tokenizer = get_tokenizer(PRESET)
    optim_cfg = _optim_config(cfg)
    optimizer = build_optimizer(model, optim_cfg, backbone_lr_mult=1.0)
    step = 0
    if resume:
        step = _resume(out, state_path, cfg, model, optimizer)
    stream = PairStream(cfg.pairs, seed=cfg.seed)
    stream.start(step)
    loss_fn = ClipLoss()
    result = PretrainResult(path=out, step=step, interrupted=False)
    model.train()
    window_start, window_pairs = time.perf_counter(), 0
    # The next batch is drawn on a worker thread while this one trains (drawing and rendering are numpy and OpenCV,
    # which release the GIL); batches stay a function of the step alone, so nothing about them changes.
    prefetch = ThreadPoolExecutor(max_workers=1)
    pending = prefetch.submit(stream.batch, step) if step < cfg.steps else None
    with StopFlag() as stop, prefetch, _compute_threads(device):
        while step < cfg.steps and pending is not None:
            if stop.requested:
                result.interrupted = True
                pending.cancel()
                break
            batch = pending.result()
            pending = prefetch.submit(stream.batch, step + 1) if step + 1 < cfg.steps else None
            set_lr(optimizer, lr_at(step, total=cfg.steps, cfg=optim_cfg))
            loss, parts = batch_loss(
                model, encoder, tokenizer, batch, loss_fn, dense_regions=cfg.dense_regions, max_groups=cfg.max_groups
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            window_pairs += len(batch.scene_captions) + len(batch.region_captions) + len(batch.roi_captions)
            if step % log_every == 0 or step == cfg.steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {
                    "step": float(step),
                    "loss": float(loss.detach()),
                    **parts,
                    "lr": optimizer.param_groups[0]["lr"],
                }
                record.update(logit_scale=float(model.logit_scale.detach().exp()), pairs_per_s=window_pairs / elapsed)
                result.history.append(record)
                if on_log is not None:
                    on_log(record)
                window_start, window_pairs = time.perf_counter(), 0
            if progress is not None:
                progress("pretrain", step, cfg.steps)
            if checkpoint_every and step % checkpoint_every == 0 and step < cfg.steps:
                _save(out, state_path, model, optimizer, cfg, step)
    _save(out, state_path, model, optimizer, cfg, step)
    result.step = step
    result.seconds = time.perf_counter() - started
    result.model = model.eval()
    return result


@contextlib.contextmanager
def _compute_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, leave one core to the batch-drawing thread: torch gets cpu_count - 1 threads while pretraining.

    Why: on a 2-core machine two torch threads plus the drawing thread oversubscribe the cores, and torch's
    threads then wait for each other at every operation (steps took 2-10x longer, and varied, when measured).
    """
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _save(out: Path, state_path: Path, model: Any, optimizer: torch.optim.Optimizer, cfg: PretrainConfig, step: int):
    # The state first: a crash between the two writes leaves a state newer than the prior, which resume detects.
    save_training_state(state_path, step=step, optimizer=optimizer, extra_tensors={}, meta={"kind": PRIOR_FORMAT})
    save_prior(out, model, cfg, step=step)


def _resume(out: Path, state_path: Path, cfg: PretrainConfig, model: Any, optimizer: torch.optim.Optimizer) -> int:
    """Load the run at `out` into `model` and `optimizer` -> the step to continue from."""
    info = read_prior_info(out)
    if not state_path.is_file():
        raise PparError(f"Cannot resume {out}: its state file {state_path.name} is missing; use --force to restart.")
    changed = [k for k, v in recipe_dict(cfg).items() if recipe_dict(info.recipe).get(k) != v]
    if changed:
        raise PparError(
            f"Cannot resume {out}: it was made with other values for {', '.join(changed)}; use the same options "
            "or --force to start again."
        )
    model.load_state_dict(load_state_dict_file(out), strict=True)
    step, _, _ = load_training_state(state_path, optimizer)
    if step != info.step:
        raise PparError(
            f"{out} (step {info.step}) and its state file (step {step}) disagree: the last save was interrupted "
            "between them; use --force to start again."
        )
    log.info("Resuming %s at step %d of %d.", out, step, cfg.steps)
    return step
