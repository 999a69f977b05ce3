"""The built-in demo: synthetic domains -> the embedded CLIP prior -> text prototypes -> train on `synth-source` ->
evaluate on `synth-real`, `synth-night`, `synth-fog`.

The prior is the `tiny` CLIP that `ppar_core.prior.pretrain` trains on synthetic image-text pairs (a few minutes on
two CPU cores, then cached). It is a miniature of CLIP made from synthetic data, not CLIP: the figures the demo prints
are measured on this run and say nothing about real data or about the paper. The same functions run the synthetic
benchmark (`run_variants`: each method variant, several seeds) for `ppar demo --compare` and `bench/ablation.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppar_core.clip.weights import build_clip_model
from ppar_core.config import TrainConfig, get_train_preset, merge
from ppar_core.data import build_dataset
from ppar_core.data.synth import write_domains
from ppar_core.engine.train import TrainResult, train
from ppar_core.errors import PparError
from ppar_core.evaluation.report import mean_over_targets
from ppar_core.files import atomic_write
from ppar_core.imageio import write_png
from ppar_core.predict import Predictor
from ppar_core.prior.pretrain import PretrainConfig, PretrainResult, pretrain, read_prior_info, recipe_dict
from ppar_core.prior.zeroshot import dense_zero_shot
from ppar_core.progress import ProgressFn
from ppar_core.prototypes import RANDOM_WEIGHTS, build_prototypes, load_prototypes, save_prototypes
from ppar_core.version import __version__
from ppar_core.visualize import overlay, overlay_with_legend

log = logging.getLogger("ppar.demo")

DEMO_SOURCE_IMAGES = 200
DEMO_TARGET_IMAGES = 40
DEMO_SIZE = (256, 512)
TARGET_DOMAINS = ("synth-real", "synth-night", "synth-fog")
DEMO_MARKER = ".ppar-demo"  # written into every demo folder: only such a folder's runs are ever replaced

# The synthetic benchmark's rows: a name -> the config changes that make it from the demo's PPAR run.
VARIANTS: dict[str, dict[str, Any]] = {
    "ppar": {},
    "erm": {"loss": {"method": "erm"}},
    "align-none": {"loss": {"align": "none"}},
    "align-direct": {"loss": {"align": "direct"}},
    "reweight-none": {"loss": {"reweight": "none"}},
    "reweight-ratio": {"loss": {"reweight": "ratio"}},
    "vtp-ema": {"model": {"vtp": {"kind": "ema"}}},
    "vtp-mix": {"model": {"vtp": {"kind": "mix"}}},
}


@dataclass
class DemoResult:
    runs: dict[str, list[TrainResult]] = field(default_factory=dict)  # variant -> one result per seed
    prior: Path | None = None  # the prior file used (None: random-init tiny)
    pretraining: PretrainResult | None = None  # set when this call (re)built the prior
    checks: dict[str, Any] | None = None  # the prior's checks (zero-shot), when run
    overlays: list[Path] = field(default_factory=list)


def claim_demo_folder(out: Path) -> None:
    """Make `out` a demo folder, or check that it is one: a new or empty folder gets the marker file; a folder
    with other content and no marker is refused (PparError), so that no run of the user's is ever replaced."""
    marker = out / DEMO_MARKER
    if marker.is_file():
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PparError(
            f"{out} is not a demo folder (it has content but no {DEMO_MARKER} marker), and the demo replaces its "
            "runs: pass --out with a new or empty folder (or delete an old demo folder from before this marker)."
        )
    text = json.dumps({"made_by": "ppar demo", "ppar_version": __version__}) + "\n"
    atomic_write(marker, lambda tmp: tmp.write_text(text))


def ensure_synthetic_data(root: Path, *, seed: int = 0, progress: ProgressFn | None = None) -> Path:
    """Generate the four synthetic domains under `root` unless a complete set is already there."""
    wanted = {"synth-source": DEMO_SOURCE_IMAGES, **{d: DEMO_TARGET_IMAGES for d in TARGET_DOMAINS}}
    for domain, num in wanted.items():
        labels = root / domain / "labels"
        if labels.is_dir() and len(list(labels.glob("*.png"))) >= num:
            continue
        log.info("Generating %d images of %s in %s.", num, domain, root / domain)
        # An incomplete domain (an interrupted demo) is drawn again from scratch: the demo folder is ours.
        write_domains(root, domains=[domain], num=num, size=DEMO_SIZE, seed=seed, progress=progress, replace=True)
    return root


def prior_cache_dir() -> Path:
    """Where built priors are kept: $PPAR_CACHE, else $XDG_CACHE_HOME/ppar, else ~/.cache/ppar."""
    if os.environ.get("PPAR_CACHE"):
        return Path(os.environ["PPAR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ppar"


def cached_prior_path(recipe: PretrainConfig) -> Path:
    """The cache file of a recipe: `<cache>/priors/tiny-<hash of the recipe>.safetensors`."""
    digest = hashlib.sha256(json.dumps(recipe_dict(recipe), sort_keys=True).encode()).hexdigest()[:12]
    return prior_cache_dir() / "priors" / f"tiny-{digest}.safetensors"


def ensure_prior(
    recipe: PretrainConfig,
    path: Path | None = None,
    *,
    progress: ProgressFn | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[Path, PretrainResult | None]:
    """The prior of `recipe` at `path` (default: the cache) -> (path, the pretraining result or None if reused).

    A complete prior of the same recipe is reused; an interrupted one is resumed; anything else at that path is a
    PparError (the cache path is keyed by the recipe, so there it cannot happen).
    """
    path = path or cached_prior_path(recipe)
    resume = False
    if path.exists():
        info = read_prior_info(path)
        if info.recipe != recipe:
            raise PparError(f"{path} is a prior of another recipe: pass another --prior file or delete it.")
        if info.complete:
            return path, None
        resume = True
    result = pretrain(recipe, path, resume=resume, progress=progress, on_log=on_log)
    if result.interrupted:
        raise KeyboardInterrupt  # the run saved itself; the next demo resumes it
    return path, result


def ensure_prototypes(path: Path, *, pretrained: str | None) -> Path:
    """Build the `tiny` text prototypes with the weights `pretrained` (street templates) unless `path` already
    holds the prototypes of those weights."""
    if path.exists():
        try:
            if load_prototypes(path).meta.get("pretrained") == (pretrained or RANDOM_WEIGHTS):
                return path
        except PparError:
            pass  # a damaged file of ours: rebuilt below
    protos = build_prototypes("tiny", pretrained=pretrained, label_space="cityscapes", templates="street", device="cpu")
    save_prototypes(path, protos)
    return path


def demo_config(
    out: Path,
    *,
    variant: str = "ppar",
    iters: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    pretrained: str | None = None,
    prototypes: Path | None = None,
    run_name: str | None = None,
    data_root: Path | None = None,
) -> TrainConfig:
    """The `synth-tiny` preset made into one benchmark run: `variant`'s changes, the prior, the data, the seed."""
    if variant not in VARIANTS:
        raise PparError(f"Unknown variant {variant!r}: use one of {', '.join(VARIANTS)}.")
    cfg = merge(get_train_preset("synth-tiny"), VARIANTS[variant])
    changes: dict[str, Any] = {
        "out": str(out / (run_name or variant)),
        "device": device,
        "seed": seed,
        "data": {"data_root": str(data_root or out / "data")},
        "model": {"pretrained": pretrained or "none", "prototypes": str(prototypes) if prototypes else None},
    }
    if iters is not None:
        changes["iters"] = iters
    return merge(cfg, changes).validate()


def run_variants(
    out: Path,
    variants: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    pretrained: str | None,
    prototypes: Path | None,
    iters: int | None = None,
    device: str = "cpu",
    data_root: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    make_progress: Callable[[TrainConfig], Any] | None = None,
) -> dict[str, list[TrainResult]]:
    """Train and evaluate every variant with every seed -> {variant: [result per seed]}; run folders are
    `out/<variant>` (one seed) or `out/<variant>-seed<k>`, replaced on every call (`out` must be a demo folder)."""
    stage = on_stage or (lambda message: None)
    runs: dict[str, list[TrainResult]] = {}
    for variant in variants:
        for seed in seeds:
            name = variant if len(seeds) == 1 else f"{variant}-seed{seed}"
            cfg = demo_config(
                out, variant=variant, iters=iters, device=device, seed=seed, pretrained=pretrained,
                prototypes=prototypes, run_name=name, data_root=data_root,
            )  # fmt: skip
            shutil.rmtree(cfg.out, ignore_errors=True)
            stage(f"Training {name} on synth-source for {cfg.iters} steps")
            if make_progress is None:
                result = train(cfg)
            else:
                with make_progress(cfg) as bar:
                    result = train(cfg, on_log=bar.on_log, on_eval_progress=bar.on_eval)
            runs.setdefault(variant, []).append(result)
    return runs


def summarize(runs: dict[str, list[TrainResult]]) -> dict[str, dict[str, dict[str, float]]]:
    """{variant: {target or "mean": {"mean", "std", "min", "max", "n"}}} over the seeds of each variant (mIoU, %).

    "std" is the sample standard deviation (0 for one seed); "mean" rows use each run's mean over targets.
    """
    table: dict[str, dict[str, dict[str, float]]] = {}
    for variant, results in runs.items():
        values: dict[str, list[float]] = {}
        for result in results:
            report = result.report or {}
            for target, entry in report.get("targets", {}).items():
                if entry.get("miou") is not None:
                    values.setdefault(target, []).append(float(entry["miou"]))
            mean, _ = mean_over_targets({t: e.get("miou") for t, e in report.get("targets", {}).items()})
            if mean is not None:
                values.setdefault("mean", []).append(mean)
        table[variant] = {
            key: {
                "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                "min": min(v), "max": max(v), "n": float(len(v)),
            }
            for key, v in values.items()
        }  # fmt: skip
    return table


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
            written.append(write_png(out / f"{sample.name}.png", panel))
    return written


def run_demo(
    out: Path,
    *,
    compare: Sequence[str] = (),
    seeds: int = 1,
    iters: int | None = None,
    device: str = "cpu",
    prior: str | Path = "auto",
    prior_recipe: PretrainConfig | None = None,
    check: bool = True,
    on_stage: Callable[[str], None] | None = None,
    make_progress: Callable[[TrainConfig], Any] | None = None,
    progress: ProgressFn | None = None,
) -> DemoResult:
    """Run the demo into the demo folder `out` (its runs are replaced on every call; data and prototypes are reused).

    `prior`: "auto" (the cached prior of `prior_recipe`, default recipe; built or resumed when needed), "none"
    (random-init `tiny`, the demo before the prior existed) or a prior file. `compare` names extra variants (see
    `VARIANTS`) trained after PPAR; `seeds` runs each with seeds 0..seeds-1. `make_progress(cfg)` may return a
    context manager yielding an object with `on_log` and `on_eval`; `progress(task, done, total)` reports the
    pretraining and the checks.
    """
    unknown = [v for v in compare if v not in VARIANTS or v == "ppar"]
    if unknown:
        known = ", ".join(v for v in VARIANTS if v != "ppar")
        raise PparError(f"--compare {','.join(unknown)} is not a variant ppar knows; use --compare erm (or: {known}).")
    if seeds < 1:
        raise PparError(f"--seeds must be at least 1, got {seeds}.")
    stage = on_stage or (lambda message: None)
    claim_demo_folder(out)
    result = DemoResult()
    recipe = prior_recipe or PretrainConfig()
    if str(prior) != "none":
        given = None if str(prior) == "auto" else Path(prior)
        if given is not None and not given.is_file():
            raise PparError(f"Prior file {given} does not exist: build one with `ppar pretrain --out {given}`.")
        where = given or cached_prior_path(recipe)
        stage(f"CLIP prior ({where})")
        result.prior, result.pretraining = (given, None) if given else ensure_prior(recipe, progress=progress)
    stage("Synthetic domains")
    ensure_synthetic_data(out / "data")
    pretrained = str(result.prior) if result.prior else None
    if check:
        stage("Zero-shot checks of the prior" if pretrained else "Zero-shot checks of the random tower")
        result.checks = zero_shot_on_targets(out / "data", pretrained, progress=progress)
    stage(f"Text prototypes (tiny, {'the prior' if pretrained else 'random weights'})")
    prototypes = ensure_prototypes(out / "prototypes.safetensors", pretrained=pretrained)
    variants = ["ppar", *[v for v in compare if v != "ppar"]]
    result.runs = run_variants(
        out, variants, seeds=list(range(seeds)), pretrained=pretrained, prototypes=prototypes, iters=iters,
        device=device, on_stage=on_stage, make_progress=make_progress,
    )  # fmt: skip
    stage("Overlays")
    first = result.runs["ppar"][0].checkpoint
    result.overlays = write_overlays(first, out / "data", out / "overlays", device=device)
    return result


def zero_shot_on_targets(
    data_root: Path, pretrained: str | None, *, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Dense zero-shot mIoU of the CLIP tower `pretrained` on the demo's source and targets -> a JSON-able dict."""
    model = build_clip_model("tiny", pretrained=pretrained)
    datasets: dict[str, Any] = {}
    for domain in ("synth-source", *TARGET_DOMAINS):
        dataset = build_dataset(domain, split="val", data_root=data_root)
        # The source's first DEMO_TARGET_IMAGES images, so that every domain is scored on as many images.
        datasets[domain] = [dataset[i] for i in range(min(len(dataset), DEMO_TARGET_IMAGES))]
    metrics = dense_zero_shot(model, datasets, pretrained=pretrained, progress=progress)
    mious = {name: m.miou for name, m in metrics.items()}
    mean, _ = mean_over_targets({k: v for k, v in mious.items() if k in TARGET_DOMAINS})
    return {"zero_shot": mious, "targets_mean": mean}
