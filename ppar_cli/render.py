"""Rich rendering shared by the commands: logging, the training progress bar, mIoU tables."""

from __future__ import annotations

import logging
import math
import time
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
    """Training progress fed by the trainer's log records.

    On a terminal: a bar with step/total, elapsed and ETA always visible; the loss terms, lr and img/s follow when
    the terminal is wide enough (the less important fields go first). Elsewhere (a log file, nohup, a cluster job):
    one plain line per logged step, with the same fields. Once a few steps have run, one line estimates the total.
    """

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress = progress
        self.total = total
        self.task = progress.add_task("train", total=total, info="starting")
        self.eval_task: Any = None
        self.started = False
        self.terminal = err_console.is_terminal
        self.first: tuple[int, float] | None = None  # (step, time) of the first record: the warm-up is not timed
        self.estimated = False
        self.began = time.perf_counter()

    def _start(self) -> None:
        # Started by the first record, so that errors raised while the run is set up print alone.
        if not self.started and self.terminal:
            self.progress.start()
        self.started = True

    def on_start(self, plan: Mapping[str, str]) -> None:
        """Print the run's plan (model, weights, steps, batch, crop, data, workers, device, folder), one line each."""
        width = max(len(k) for k in plan)
        for key, value in plan.items():
            err_console.print(f"{key:>{width}}  {value}", highlight=False, soft_wrap=True)

    def on_log(self, record: dict[str, Any]) -> None:
        self._start()
        if "eval" in record:
            parts = ", ".join(f"{name} {_fmt(v)}" for name, v in record["eval"].items())
            err_console.print(f"step {record['step']}: mIoU {parts} (mean {_fmt(record['mean_miou'])})")
            return
        step, now = int(record["step"]), time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        rate = (now - self.first[1]) / (step - self.first[0]) if step > self.first[0] else None  # s/step
        fields = [
            f"loss {record.get('total', float('nan')):.3f}",
            f"{record.get('img_per_s', 0.0):.1f} img/s (data wait {100 * record.get('data_wait', 0.0):.0f}%)",
            f"seg {record.get('seg', float('nan')):.3f} pa {record.get('pa', 0.0):.3f}",
            f"w {record.get('mean_weight', 1.0):.2f} lr {record.get('lr', 0.0):.2e}",
        ]
        if self.terminal:
            room = err_console.width - 56  # what the bar, step/total, elapsed and eta take
            shown: list[str] = []
            for item in fields:  # in order of importance: whatever fits
                if len(" ".join([*shown, item])) <= room:
                    shown.append(item)
            self.progress.update(self.task, completed=step, info=" ".join(shown))
        else:
            eta = "-" if rate is None else _clock(rate * (self.total - step))
            clock = f"elapsed {_clock(now - self.began)} eta {eta}"
            line = f"step {step}/{self.total} ({100 * step / self.total:.0f}%) {clock} | " + " | ".join(fields)
            err_console.print(line, highlight=False, soft_wrap=True)
        if not self.estimated and rate is not None and (step - self.first[0] >= 3 or now - self.first[1] > 20):
            self.estimated = True
            err_console.print(
                f"estimate: {self.total} steps take about {_clock(rate * self.total)} at {rate:.2f} s/step "
                f"(about {_clock(rate * (self.total - step))} left)",
                highlight=False,
            )

    def on_eval(self, task: str, done: int, total: int) -> None:
        self._start()
        if not self.terminal:
            if done >= total:
                err_console.print(f"{task}: {total} image(s) done", highlight=False)
            return
        if self.eval_task is None:
            self.eval_task = self.progress.add_task("eval", total=total, info=task)
        self.progress.update(self.eval_task, completed=done, total=total, info=task)
        if done >= total:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextmanager
def training_progress(total: int) -> Iterator[TrainingProgress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
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
        if tracker.started and tracker.terminal:
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


PLAIN_PROGRESS_EVERY_S = 10.0


def _plain_progress() -> ProgressFn:
    """Progress as log lines: `name: done/total (p%), elapsed 0:00:20`, at most every PLAIN_PROGRESS_EVERY_S per
    task, and once at the end of a task that printed before (short tasks print nothing)."""
    started: dict[str, float] = {}
    last: dict[str, float] = {}

    def update(name: str, done: int, total: int) -> None:
        now = time.perf_counter()
        start = started.setdefault(name, now)
        finished = total > 0 and done >= total
        due = now - last.get(name, start) >= PLAIN_PROGRESS_EVERY_S
        if due or (finished and name in last):
            last[name] = now
            percent = f" ({100 * done // total}%)" if total > 0 else ""
            err_console.print(f"{name}: {done}/{total}{percent}, elapsed {_clock(now - start)}", highlight=False)
        if finished:
            started.pop(name, None)
            last.pop(name, None)

    return update


@contextmanager
def progress_bars(*, enabled: bool = True) -> Iterator[ProgressFn]:
    """Transient progress bars on stderr (stdout stays clean for --json), one per task name.

    Yields `update(name, done, total)` (a no-op when disabled); the display starts with the first update, so errors
    raised before any work print alone.
    """
    if not enabled:
        yield lambda name, done, total: None
        return
    if not err_console.is_terminal:  # a log file: a plain line every PLAIN_PROGRESS_EVERY_S seconds, then the end
        yield _plain_progress()
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
