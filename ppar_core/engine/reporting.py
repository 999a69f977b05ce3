"""What a training run reports as it goes: its metrics records (metrics.jsonl, mirrored to TensorBoard) and its
evaluations on the targets (the final one written as the run's eval.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ppar_core.config import TrainConfig
from ppar_core.engine.distributed import DistContext
from ppar_core.engine.run_folder import RunFolder
from ppar_core.engine.tensorboard import TensorBoardLog
from ppar_core.evaluation.evaluate import evaluate_targets
from ppar_core.evaluation.report import build_eval_report, training_report, write_eval_report
from ppar_core.evaluation.targets import Target
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.progress import ProgressFn
from ppar_core.runtime import data_workers


def evaluate_run(
    model: PPARSegmentor,
    targets: list[Target],
    cfg: TrainConfig,
    dist: DistContext,
    progress: ProgressFn | None,
    *,
    step: int,
    final: RunFolder | None = None,
    bad_samples: dict[str, Any] | None = None,
    prepared: dict[str, Any] | None = None,
    tb: TensorBoardLog | None = None,
) -> dict[str, Any]:
    """Evaluate on every target -> the report (on every rank); the final one is written to the run's eval.json."""
    model.eval()
    results = evaluate_targets(
        model.infer,
        targets,
        num_classes=model.num_classes,
        device=dist.device,
        max_images=cfg.data.eval_max_images,
        progress=progress,
        dist=dist if dist.enabled else None,
        skip_bad=cfg.data.skip_bad,
        workers=data_workers(cfg.data.workers),
    )
    if tb is not None:
        tb.evaluation(step, model, targets, device=dist.device)
    model.train()
    if final is None or not dist.is_main:
        return build_eval_report(
            targets, results, inference=cfg.eval, split=cfg.data.target_split, mapillary_map=cfg.data.mapillary_map
        )
    report = training_report(cfg, targets, results, checkpoint=final.model, step=step)
    if bad_samples and (bad_samples["source"] or bad_samples["targets"]):
        report["bad_samples"] = bad_samples
    if prepared:
        report["prepared_copies"] = prepared
    write_eval_report(final.report, report)
    return report


def log_record(
    run: RunFolder, record: dict[str, Any], on_log: Callable[[dict[str, Any]], None] | None, tb: TensorBoardLog | None
) -> None:
    run.append_metrics(record)  # the source of truth; TensorBoard mirrors it
    if tb is not None:
        tb.record(record)
    if on_log is not None:
        on_log(record)


def eval_record(step: int, report: dict[str, Any]) -> dict[str, Any]:
    """The metrics record of an evaluation: each target's mIoU and their mean."""
    return {
        "step": step,
        "eval": {name: entry["miou"] for name, entry in report["targets"].items()},
        "mean_miou": report["mean_miou"],
    }
