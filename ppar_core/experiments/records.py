"""What a run logged, read back: the step records and evaluations of `metrics.jsonl`, and evaluation reports.

`metrics.jsonl` (ppar_core.engine.run_folder) holds two kinds of records, one JSON object a line:

    training  {"step", "total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q", "weight_ramp",
               "lr", "grad_norm", "img_per_s", "data_wait"}         losses in nats, lr per step, throughput in img/s,
                                                                    share of the wall time spent waiting for data
    eval      {"step", "eval": {target: mIoU | null}, "mean_miou"}  periodic evaluations, mIoU in percent

The final evaluation is not logged there: it is the run's `eval.json` (shape: ppar_core.evaluation.report), read
here as one more evaluation point at the step its protocol names. Nothing here writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppar_core.errors import PparError

# The per-step scalars of a training record that readers know; other keys are kept too (see RunLog.scalars).
TRAIN_SCALARS = (
    "total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q", "weight_ramp", "lr", "grad_norm",
    "img_per_s", "data_wait",
)  # fmt: skip


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a run: mIoU per target and their mean, in percent (None: undefined)."""

    step: int
    mean_miou: float | None
    targets: dict[str, float | None]
    final: bool  # True: the run's final report (eval.json); False: a periodic evaluation of metrics.jsonl


@dataclass(frozen=True)
class RunLog:
    """metrics.jsonl parsed: training records as columns, evaluations as points, both by ascending step.

    `scalars[name][i]` is the value of `name` at `steps[i]` (NaN where that record lacks it); every numeric key of
    the training records is a column, so scalars added by later versions are kept.
    """

    steps: tuple[int, ...]
    scalars: dict[str, tuple[float, ...]]
    evals: tuple[EvalPoint, ...]

    @property
    def last_step(self) -> int | None:
        """The last logged training step, or None when nothing was logged."""
        return self.steps[-1] if self.steps else None


def _number(value: Any) -> float | None:
    """A logged number as a float; None for null, NaN, or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def read_run_log(path: Path) -> RunLog:
    """Parse a metrics.jsonl file (module docstring); a missing file is an empty log.

    Lines that do not parse are skipped: a run killed in the middle of an append leaves a partial last line, and
    the rest of the log is still good. A step logged twice keeps its last record (the file is appended to).
    """
    train: dict[int, dict[str, Any]] = {}
    evals: dict[int, EvalPoint] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise PparError(f"Cannot read {path} ({exc}): check the file's permissions.") from None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        step = int(record["step"])
        if isinstance(record.get("eval"), dict):
            targets = {str(name): _number(value) for name, value in record["eval"].items()}
            evals[step] = EvalPoint(step, _number(record.get("mean_miou")), targets, final=False)
        else:
            train[step] = record
    steps = tuple(sorted(train))
    names: list[str] = [*TRAIN_SCALARS]
    for step in steps:
        names += [k for k, v in train[step].items() if k not in names and k != "step" and _number(v) is not None]
    scalars = {}
    for name in names:
        column = tuple(_nan_if_none(_number(train[s].get(name))) for s in steps)
        if any(not math.isnan(v) for v in column):
            scalars[name] = column
    return RunLog(steps=steps, scalars=scalars, evals=tuple(evals[s] for s in sorted(evals)))


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def read_report(path: Path) -> dict[str, Any]:
    """An evaluation report (eval.json or a report of `ppar eval`) as a dict; PparError if it is not one."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PparError(f"Report {path} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PparError(f"Report {path} is not a readable JSON file ({exc}): pass an eval.json of ppar.") from None
    if not isinstance(report, dict) or not isinstance(report.get("targets"), dict):
        raise PparError(
            f"{path} is not an evaluation report (no 'targets' table): pass a run folder or a report written by "
            "`ppar train` or `ppar eval`."
        )
    return report


def report_point(report: dict[str, Any], *, step: int) -> EvalPoint:
    """The report's mIoU per target and mean as an evaluation point at `step` (final)."""
    targets = {str(name): _number(entry.get("miou")) for name, entry in report["targets"].items()}
    return EvalPoint(step, _number(report.get("mean_miou")), targets, final=True)


def report_step(report: dict[str, Any]) -> int | None:
    """The step of the checkpoint a report evaluated (its protocol's `step`), when recorded."""
    step = (report.get("protocol") or {}).get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def eval_points(log: RunLog, report: dict[str, Any] | None) -> tuple[EvalPoint, ...]:
    """The evaluations of a run by ascending step: the log's periodic ones plus the final report (which replaces a
    periodic evaluation of the same step, since it is the run's own record of it)."""
    points = {p.step: p for p in log.evals}
    if report is not None:
        step = report_step(report)
        if step is not None:
            points[step] = report_point(report, step=step)
    return tuple(points[s] for s in sorted(points))


def best_point(points: tuple[EvalPoint, ...]) -> EvalPoint | None:
    """The evaluation with the highest mean mIoU (the earliest of ties), or None when no mean is defined."""
    best: EvalPoint | None = None
    for point in points:  # by ascending step; `>` keeps the earliest of ties
        if point.mean_miou is not None and (best is None or point.mean_miou > (best.mean_miou or 0.0)):
            best = point
    return best
