"""Rich rendering shared by the commands: logging, the training progress bar, mIoU tables."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ppar_cli.options import err_console
from ppar_core.progress import ProgressFn


def setup_logging() -> None:
    """Library log lines (logger "ppar") go to stderr through rich."""
    logger = logging.getLogger("ppar")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=err_console, show_path=False, show_time=False))
    logger.setLevel(logging.INFO)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


class TrainingProgress:
    """A progress bar fed by the trainer's log records: step, ETA, loss terms, lr, img/s."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.task = progress.add_task("train", total=total, info="starting")
        self.eval_task: Any = None
        self.started = False

    def _start(self) -> None:
        # Started by the first record, so that errors raised while the run is set up print alone.
        if not self.started:
            self.progress.start()
            self.started = True

    def on_log(self, record: dict[str, Any]) -> None:
        self._start()
        if "eval" in record:
            parts = ", ".join(f"{name} {_fmt(v)}" for name, v in record["eval"].items())
            err_console.print(f"step {record['step']}: mIoU {parts} (mean {_fmt(record['mean_miou'])})")
            return
        info = (
            f"loss {record.get('total', float('nan')):.3f} seg {record.get('seg', float('nan')):.3f} "
            f"pa {record.get('pa', 0.0):.3f} w {record.get('mean_weight', 1.0):.2f} "
            f"lr {record.get('lr', 0.0):.2e} {record.get('img_per_s', 0.0):.1f} img/s"
        )
        self.progress.update(self.task, completed=record["step"], info=info)

    def on_eval(self, task: str, done: int, total: int) -> None:
        self._start()
        if self.eval_task is None:
            self.eval_task = self.progress.add_task("eval", total=total, info=task)
        self.progress.update(self.eval_task, completed=done, total=total, info=task)
        if done >= total:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None


@contextmanager
def training_progress(total: int) -> Iterator[TrainingProgress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    )
    tracker = TrainingProgress(progress, total)
    try:
        yield tracker
    finally:
        if tracker.started:
            progress.stop()


def report_table(reports: Mapping[str, Mapping[str, Any] | None], *, title: str) -> Table:
    """mIoU per target (ACDC conditions as indented sub-rows) and the mean over targets, one column per run (e.g.
    ppar vs erm). Every number comes from the evaluation reports (`ppar_core.evaluation.report`)."""
    table = Table(title=title)
    table.add_column("target")
    for name in reports:
        table.add_column(name, justify="right")
    rows: dict[str, list[str | None]] = {}
    for column, report in enumerate(reports.values()):
        for target, entry in (report or {}).get("targets", {}).items():
            cells = [(target, entry), *((f"  {c}", sub) for c, sub in entry.get("conditions", {}).items())]
            for row, item in cells:
                rows.setdefault(row, [None] * len(reports))[column] = _fmt(item["miou"])
    for row, values in rows.items():
        table.add_row(row, *(v or "-" for v in values))
    table.add_row("[bold]mean[/bold]", *(f"[bold]{_fmt((r or {}).get('mean_miou'))}[/bold]" for r in reports.values()))
    return table


@contextmanager
def progress_bars(*, enabled: bool = True) -> Iterator[ProgressFn]:
    """Transient progress bars on stderr (stdout stays clean for --json), one per task name.

    Yields `update(name, done, total)` (a no-op when disabled); the display starts with the first update, so errors
    raised before any work print alone.
    """
    if not enabled:
        yield lambda name, done, total: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
