"""Training curves of one or more runs, overlaid, as PNGs for a paper or a report.

Files written into the output folder (each replaces an earlier plot of the same name there; nothing else in the
folder is touched):

    loss.png         the loss terms logged each step (total, L_seg, L_pa, L_vo), nats
    miou.png         mIoU over steps per target and the mean over targets, percent (periodic evaluations and the
                     final report)
    schedule.png     the progressive schedule: beta, q and the weight ramp rho, each in [0, 1]
    mean_weight.png  the mean reliability weight applied to the labelled pixels of each step

A figure no run has data for (no evaluation logged, say) is not drawn; `PlotResult.skipped` says which and why.
matplotlib is the optional extra `ppar[plots]`: it is imported only once drawing starts (inside the functions that
draw), and drawn through its Agg canvas on a bare `Figure`, never pyplot, so no global backend is switched in the
caller's process (a notebook keeps its own) and nothing is left registered in pyplot's figure manager.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppar_core.analysis.report import PLOTS_HINT
from ppar_core.engine.run_folder import METRICS_FILE
from ppar_core.errors import PparError
from ppar_core.evaluation.report import REPORT_FILE
from ppar_core.experiments.records import EvalPoint, RunLog, eval_points, read_report, read_run_log
from ppar_core.experiments.runs import display_names
from ppar_core.files import atomic_write, check_output_folder

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 150  # 150 dots per inch: sharp in a PDF at column width, small enough to attach to a report
PANEL_INCHES = (4.2, 3.0)  # one panel's share of the figure, width x height
MIN_WIDTH_INCHES = 6.4
# Colour-blind-safe colours (Okabe-Ito) and distinct dash patterns, so runs stay apart in grey-scale print too.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
DASHES = ("-", "--", "-.", ":")
SMOOTH_ABOVE = 50  # curves of more logged points than this are drawn smoothed over the faint raw values
SMOOTHING = 0.9  # weight of the exponential moving average (as TensorBoard's smoothing slider)
STEP_LABEL = "training step (optimizer updates)"


@dataclass(frozen=True)
class RunCurves:
    """What one run logged, ready to draw."""

    label: str  # the legend entry
    path: Path
    log: RunLog
    evals: tuple[EvalPoint, ...]  # periodic evaluations and the final report, by step


@dataclass(frozen=True)
class PlotFile:
    path: Path
    what: str  # one line saying what the figure shows
    width: int  # pixels
    height: int


@dataclass(frozen=True)
class PlotResult:
    files: tuple[PlotFile, ...]
    skipped: tuple[str, ...]  # one sentence per figure not drawn: which, and why


def load_curves(paths: Sequence[Path]) -> list[RunCurves]:
    """The logs of run folders `paths` (metrics.jsonl, eval.json); PparError for a folder without metrics.jsonl."""
    runs = []
    for path, label in zip(paths, display_names(paths), strict=True):
        path = Path(path)
        if not (path / METRICS_FILE).is_file():
            raise PparError(f"{path} is not a run folder with a training log (no {METRICS_FILE}): pass run folders.")
        log = read_run_log(path / METRICS_FILE)
        report = read_report(path / REPORT_FILE) if (path / REPORT_FILE).is_file() else None
        runs.append(RunCurves(label, path, log, eval_points(log, report)))
    return runs


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = sum_i w^(t-i) (1-w) x_i / (1 - w^t) over
    the finite values so far; NaN entries are skipped (their output is NaN)."""
    out: list[float] = []
    acc, norm = 0.0, 0.0
    for value in values:
        if math.isnan(value):
            out.append(math.nan)
            continue
        acc = weight * acc + (1.0 - weight) * value
        norm = weight * norm + (1.0 - weight)
        out.append(acc / norm)
    return out


def _grid(panels: int) -> tuple[int, int]:
    """(rows, columns) for `panels` panels: one row up to three, then rows of two (four) or three."""
    if panels <= 3:
        return 1, panels
    cols = 2 if panels == 4 else 3
    return -(-panels // cols), cols


def _figure(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = _grid(panels)
    # At least MIN_WIDTH_INCHES wide: a one-panel figure still has room for its title and legend.
    width = max(PANEL_INCHES[0] * cols, MIN_WIDTH_INCHES)
    fig = Figure(figsize=(width, PANEL_INCHES[1] * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return fig, axes[:panels]


def _style(index: int) -> dict[str, Any]:
    # Colour and dash both change from run to run: runs with the same schedule draw the same line, and the dashes
    # of the later ones let the earlier show through.
    return {"color": COLOURS[index % len(COLOURS)], "linestyle": DASHES[index % len(DASHES)]}


def _smoothed(runs: Sequence[RunCurves]) -> bool:
    """Whether noisy curves of these runs are drawn smoothed (some run logged more than SMOOTH_ABOVE points)."""
    return any(len(r.log.steps) > SMOOTH_ABOVE for r in runs)


def _draw_series(
    ax: Axes, steps: Sequence[int], values: Sequence[float], index: int, label: str, *, smooth: bool
) -> None:
    """One run's logged scalar: raw when short or not `smooth`, else faint raw values under their smoothed curve."""
    style = _style(index)
    if smooth and len(values) > SMOOTH_ABOVE:
        ax.plot(steps, values, color=style["color"], alpha=0.2, linewidth=0.8)
        ax.plot(steps, ema(values, SMOOTHING), label=label, linewidth=1.6, **style)
    else:
        ax.plot(steps, values, label=label, linewidth=1.6, marker="." if len(values) < 20 else None, **style)


def _legend_columns(labels: Sequence[str], width_inches: float) -> int:
    """How many legend entries fit side by side across the figure: an entry is about 0.8 in of line and spacing
    plus 0.07 in per character at 9 pt (matplotlib sizes every column to its widest entry)."""
    entry = 0.8 + 0.07 * max(len(label) for label in labels)
    return max(1, min(len(labels), 4, int(width_inches // entry)))


def _finish(fig: Figure, axes: Sequence[Axes], runs: Sequence[RunCurves]) -> None:
    """Shared x label and range (from step 0), grid, and one legend of the runs under the panels, in run order."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(STEP_LABEL)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.tick_params(labelsize=9)
    # Entries from every panel (a run may have data in some panels only, e.g. its own target), once per run.
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    labels = [r.label for r in runs if r.label in entries]
    handles = [entries[label] for label in labels]
    if handles:
        ncols = _legend_columns(labels, float(fig.get_size_inches()[0]))
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)


def _scalar_figure(
    runs: Sequence[RunCurves],
    panels: Sequence[tuple[str, str, str]],
    title: str,
    *,
    smooth: bool = True,
    unit_range: bool = False,
) -> Figure | None:
    """One panel per (scalar, panel title, y label), one line per run; None if no run logged any of them.

    `smooth`: noisy scalars (losses, weights) are smoothed when long, and the title says so; a schedule is not.
    """
    if not any(name in r.log.scalars for r in runs for name, _, _ in panels):
        return None
    smooth = smooth and _smoothed(runs)
    fig, axes = _figure(len(panels), title + (f" (EMA {SMOOTHING:g}; faint: as logged)" if smooth else ""))
    for ax, (name, panel_title, ylabel) in zip(axes, panels, strict=True):
        for index, run in enumerate(runs):
            if name in run.log.scalars:
                _draw_series(ax, run.log.steps, run.log.scalars[name], index, run.label, smooth=smooth)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        if unit_range:
            ax.set_ylim(-0.05, 1.05)
    _finish(fig, axes, runs)
    return fig


def loss_figure(runs: Sequence[RunCurves]) -> Figure | None:
    panels = [
        ("total", "total L = L_seg + λ_pa · L_pa", "loss (nats)"),
        ("seg", "segmentation L_seg (weighted cross-entropy)", "loss (nats)"),
        ("pa", "prototype alignment L_pa", "loss (nats)"),
        ("vo", "VTP-to-OTP term L_vo (inside L_pa)", "loss (nats)"),
    ]
    return _scalar_figure(runs, panels, "Training losses per step")


def schedule_figure(runs: Sequence[RunCurves]) -> Figure | None:
    panels = [
        ("beta", "β: OTP share of the alignment", "β (0 = VTP only, 1 = OTP only)"),
        ("q", "q: easiest pixels aligned to the OTP", "q (fraction of each class)"),
        ("weight_ramp", "ρ: reliability weights ramped in", "ρ (0 = w off, 1 = full w)"),
    ]
    return _scalar_figure(runs, panels, "Progressive schedule", smooth=False, unit_range=True)


def mean_weight_figure(runs: Sequence[RunCurves]) -> Figure | None:
    panels = [("mean_weight", "mean weight w over the labelled pixels of a step", "mean weight w (1 = unweighted)")]
    fig = _scalar_figure(runs, panels, "Prototypical reweighting during training")
    if fig is not None:
        fig.axes[0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    return fig


def miou_figure(runs: Sequence[RunCurves]) -> Figure | None:
    targets: list[str] = []
    for run in runs:
        for point in run.evals:
            targets += [t for t in point.targets if t not in targets]
    if not targets:
        return None
    # The mean over targets gets its own panel only when there are several targets (else it equals the one).
    panels: list[str | None] = [*targets, None] if len(targets) > 1 else [*targets]  # None: the mean
    fig, axes = _figure(len(panels), "mIoU on the target domains during training")
    for ax, target in zip(axes, panels, strict=True):
        for index, run in enumerate(runs):
            values = [(p.step, p.mean_miou if target is None else p.targets.get(target)) for p in run.evals]
            points = [(step, value) for step, value in values if value is not None]
            if points:
                steps, mious = zip(*points, strict=True)
                ax.plot(steps, mious, marker="o", markersize=4, linewidth=1.6, label=run.label, **_style(index))
        ax.set_title("mean over targets" if target is None else target, fontsize=10)
        ax.set_ylabel("mIoU (%)")
    _finish(fig, axes, runs)
    return fig


FIGURES: dict[str, tuple[Callable[[Sequence[RunCurves]], Figure | None], str, str]] = {
    # file name: (builder, what it shows, why it can be missing)
    "loss.png": (loss_figure, "loss terms per step", "no run logged training steps"),
    "miou.png": (miou_figure, "mIoU per target over steps", "no run has an evaluation (eval_every, eval.json)"),
    "schedule.png": (schedule_figure, "progressive schedule beta, q, rho", "no run logged the schedule"),
    "mean_weight.png": (mean_weight_figure, "mean reliability weight per step", "no run logged mean_weight"),
}


def _save_png(fig: Figure, tmp: Path) -> None:
    fig.savefig(tmp, format="png", dpi=DPI)  # format given: the temporary file's name does not end in .png


def write_run_plots(runs: Sequence[Path], out: Path) -> PlotResult:
    """Draw the figures of the module docstring for run folders `runs` (overlaid, in the order given) into `out`.

    Checks before drawing: matplotlib is installed (else PparError naming `pip install 'ppar[plots]'`), `out` is
    writable, every run has a metrics.jsonl. Each PNG is written atomically (a reader never sees half a picture).
    """
    try:
        # Imported here: matplotlib is optional. `import matplotlib` first, so that a package hidden from the
        # interpreter (None in sys.modules) fails here even if its submodules were imported before.
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PparError(f"Plots need matplotlib, which is not installed: {PLOTS_HINT}") from None
    if not runs:
        raise PparError("Name at least one run folder to plot.")
    out = check_output_folder(out)
    curves = load_curves(runs)
    out.mkdir(parents=True, exist_ok=True)
    files: list[PlotFile] = []
    skipped: list[str] = []
    for name, (build, what, why) in FIGURES.items():
        fig = build(curves)
        if fig is None:
            skipped.append(f"{name} not drawn: {why}.")
            continue
        path = out / name
        atomic_write(path, functools.partial(_save_png, fig))
        width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
        files.append(PlotFile(path, what, width, height))
    return PlotResult(tuple(files), tuple(skipped))
