"""`ppar runs`: the runs in a folder at a glance, and the ablation table of several runs side by side.

`ppar runs [DIR]` lists (the `list` command: a first word that is not a sub-command is the folder), `ppar runs
compare A B [C...]` compares. The library is imported inside the command bodies so that `ppar --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from ppar_cli.options import JsonOption, console, print_json

if TYPE_CHECKING:
    from ppar_core.experiments.compare import Cell, Comparison, Row
    from ppar_core.experiments.records import EvalPoint
    from ppar_core.experiments.runs import RunList


class _RunsGroup(TyperGroup):
    """`ppar runs DIR` means `ppar runs list DIR`: a first word that is not a sub-command (nor --help) is routed to
    `list`, so a folder is never taken for a command and `compare` never for a folder."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Any: typer vendors its own click
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RunsGroup,
    help=(
        "Runs: list the runs in a folder (state, steps, best and last mIoU), or compare runs in an ablation table.\n\n"
        "Example: [bold]ppar runs runs/[/bold]\n\n"
        "Compare: [bold]ppar runs compare runs/erm runs/ppar-s0 runs/ppar-s1 --group-by seed[/bold]"
    ),
)

# Log files and narrow terminals: light rules only, and never an ellipsis (overflow="fold" wraps long names).
_BOX = box.SIMPLE_HEAD


def _table(title: str) -> Table:
    return Table(title=title, box=_BOX, title_justify="left", pad_edge=False, collapse_padding=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _at(point: EvalPoint | None) -> str:
    return "-" if point is None or point.mean_miou is None else f"{point.mean_miou:.2f} @{point.step}"


_RUNS = Path("runs")
LIST_HELP = """List the runs in a folder (default runs/): state, steps, best and last mIoU; also what `ppar runs DIR` does.

Shows each run's method and the switches that differ between the runs, model, sources, steps done of the total, state (finished; interrupted: fewer steps, no live lock, continue it with --resume; running, with the lock holder's pid; failed or empty: no checkpoint), the best and last mean mIoU with their step, and the last mIoU per target. A run folder is one holding the config.json of `ppar train`; mIoU in percent, from the evaluations in metrics.jsonl and the final eval.json.

Example: [bold]ppar runs runs/ablations --json[/bold]
"""  # noqa: E501


@app.command("list", help=LIST_HELP)
def list_command(
    folder: Annotated[Path, typer.Argument(help="Folder holding run folders (searched two levels deep).")] = _RUNS,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.experiments.runs import list_runs, run_list_json

    listing = list_runs(folder)
    if json_out:
        print_json(run_list_json(listing))
        return
    for renderable in runs_renderables(listing, console=console):
        console.print(renderable)


# A column of a table built from data: (header, right-aligned, may wrap, one cell per row).
_Column = tuple[str, bool, bool, list[str]]


def _columns_table(title: str, columns: list[_Column]) -> Table:
    table = _table(escape(title))
    for header, right, wraps, _ in columns:
        table.add_column(escape(header), justify="right" if right else "left", no_wrap=not wraps, overflow="fold")
    for cells in zip(*(values for *_, values in columns), strict=True):
        table.add_row(*(escape(c) for c in cells))
    return table


def _natural_width(console: Console, table: Table) -> int:
    """The width a table takes unwrapped (measured within the console's width, a table always "fits", folded)."""
    return Measurement.get(console, console.options.update(width=10_000, max_width=10_000), table).maximum


def runs_renderables(listing: RunList, *, console: Console) -> list[RenderableType]:
    """The runs table, the per-target table (when any run was evaluated) and the notes, for `console.print`.

    Made for 80 columns and log files: values all runs share (model, sources) are said once in the title instead of
    filling a column; each differing switch gets a column of its own (one `switches` column when there are more
    than three); numbers, steps and states never wrap. When the one table would be wider than the console, it is
    printed as two (what each run is; where each run stands), each starting with the run's name.
    """
    from ppar_core.experiments.runs import OWN_COLUMNS, format_value, short_field_names

    runs = listing.runs
    short = short_field_names(listing.differing)
    switches = [name for name in listing.differing if name not in OWN_COLUMNS]
    models = sorted({r.model for r in runs})
    sources = sorted({"+".join(r.sources) or "?" for r in runs})
    common = [f"model {models[0]}"] * (len(models) == 1) + [f"source {sources[0]}"] * (len(sources) == 1)
    title = f"Runs in {listing.root} ({len(runs)})" + (f": {', '.join(common)}" if common else "")

    name: _Column = ("run", False, True, [r.name for r in runs])
    identity: list[_Column] = [("method", False, True, [r.method for r in runs])]
    if len(switches) <= 3:
        identity += [(short[f], False, True, [format_value(listing.switches(r)[f]) for r in runs]) for f in switches]
    else:
        joined = [" ".join(f"{short[k]}={format_value(v)}" for k, v in listing.switches(r).items()) for r in runs]
        identity.append(("switches", False, True, joined))
    if len(models) > 1:
        identity.append(("model", False, False, [r.model for r in runs]))
    if len(sources) > 1:
        identity.append(("source", False, False, ["+".join(r.sources) or "?" for r in runs]))
    states = [f"running pid {r.pid}" if r.state == "running" else r.state for r in runs]
    progress: list[_Column] = [
        ("steps", True, False, [f"{r.steps_done}/{r.iters}" for r in runs]),
        ("state", False, False, states),
        ("best mIoU", True, False, [_at(r.best) for r in runs]),
        ("last mIoU", True, False, [_at(r.last) for r in runs]),
    ]
    table = _columns_table(title, [name, *identity, *progress])
    if _natural_width(console, table) <= console.width:
        out: list[RenderableType] = [table]
    else:
        out = [_columns_table(title, [name, *identity]), _columns_table("Progress", [name, *progress])]
    targets: list[str] = []
    for run in runs:
        targets += [t for t in (run.last.targets if run.last else {}) if t not in targets]
    if targets:
        per_target = _table("Last mIoU (%) per target")
        per_target.add_column("run", overflow="fold")
        for target in targets:
            per_target.add_column(escape(target), justify="right", overflow="fold")
        for run in runs:
            last = run.last.targets if run.last else {}
            per_target.add_row(escape(run.name), *(_num(last.get(t)) for t in targets))
        out.append(per_target)
    if listing.differing:
        out.append(Text("Config fields that differ between these runs: " + ", ".join(listing.differing)))
    out.append(Text("mIoU in %, @ the step it was evaluated at; best: the highest mean over targets."))
    out += [Text(f"{run.name}: {run.note}", style="yellow") for run in runs if run.note]
    return out


COMPARE_HELP = """Compare runs in an ablation table: IoU per target and per class, and the difference to the first run.

Each run's IoU (%) per target and per class, its difference to the first run (the baseline), and the config fields that differ. With --group-by, each column is a group of runs: the mean and sample standard deviation (n - 1) over its members. Rules: seed (runs whose configs differ only in seed: the replicates of one setting), FIELD[,FIELD] (runs with equal values of those config fields), name:REGEX (runs whose names give the same match; its first capture group if it has one). The numbers are the reports' own (each run's eval.json); nothing is re-evaluated.

Example: [bold]ppar runs compare runs/erm runs/ppar[/bold]
Seeds: [bold]ppar runs compare runs/abl/* --group-by seed --json[/bold]
"""  # noqa: E501


@app.command("compare", help=COMPARE_HELP)
def compare_command(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders or report files (eval.json); the first is the baseline.")
    ],
    group_by: Annotated[
        str | None,
        typer.Option(
            "--group-by", help="seed (runs differing only in seed), a config field (loss.reweight), or name:REGEX."
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.experiments.compare import compare_runs

    comparison = compare_runs(runs, group_by=group_by)
    if json_out:
        print_json(comparison.to_json())
        return
    for renderable in compare_renderables(comparison, console=console):
        console.print(renderable)


def _letters(count: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else f"C{i + 1}" for i in range(count)]


def _value(cell: Cell, members: int) -> str:
    """`mean` or `mean±std`; `*` when fewer members than the group has define the number."""
    if cell.value is None:
        return "-"
    text = f"{cell.value:.2f}" if cell.std is None else f"{cell.value:.2f}±{cell.std:.2f}"
    return text + ("*" if 0 < cell.n < members else "")


def _numbers_table(title: str, rows: list[tuple[str, Row]], labels: list[str], comparison: Comparison) -> Table:
    table = _table(title)
    table.add_column("", overflow="fold")
    for index, label in enumerate(labels):
        table.add_column(escape(label), justify="right", overflow="fold")
        if index:
            table.add_column("Δ", justify="right", overflow="fold")
    sizes = [len(c.members) for c in comparison.columns]
    for name, row in rows:
        cells: list[str] = []
        for index, cell in enumerate(row.cells):
            cells.append(_value(cell, sizes[index]))
            if index:
                cells.append("-" if cell.delta is None else f"{cell.delta:+.2f}")
        table.add_row(escape(name), *cells)
    return table


def compare_renderables(comparison: Comparison, *, console: Console) -> list[RenderableType]:
    """The legend of the columns, the mIoU table and one per-class table per target, for `console.print`.

    Columns are headed by the runs' names, or by letters (A, B, ...) explained in the legend when the names would
    make a table wider than the console.
    """
    from ppar_core.experiments.runs import format_value, short_field_names

    def numbers(labels: list[str]) -> list[Table]:
        summary = [
            (row.target if row.metric == "mIoU" else f"{row.target} {row.metric}", row) for row in comparison.summary
        ]
        tables = [_numbers_table("mIoU (%)", summary, labels, comparison)]
        for target, rows in comparison.per_class.items():
            tables.append(
                _numbers_table(f"{target}: IoU (%) per class", [(r.metric, r) for r in rows], labels, comparison)
            )
        return tables

    names = [c.label for c in comparison.columns]
    tables = numbers(names)
    widest = max(_natural_width(console, t) for t in tables)
    lettered = widest > console.width
    if lettered:
        tables = numbers(_letters(len(names)))

    short = short_field_names(comparison.differing)
    legend = _table("Compared" + (f" (grouped by {comparison.group_by})" if comparison.group_by else ""))
    if lettered:
        legend.add_column("col", overflow="fold")
    legend.add_column("run" if comparison.group_by is None else "group", overflow="fold")
    legend.add_column("step", justify="right", overflow="fold")
    legend.add_column("config", overflow="fold")
    if comparison.group_by is not None:
        legend.add_column("runs", overflow="fold")
    for letter, column in zip(_letters(len(names)), comparison.columns, strict=True):
        steps = sorted({m.step for m in column.members if m.step is not None})
        config = " ".join(f"{short[k]}={format_value(v)}" for k, v in column.config.items())
        cells: list[Any] = [letter] if lettered else []
        cells += [escape(column.label), ",".join(map(str, steps)) or "-", escape(config or "-")]
        if comparison.group_by is not None:
            cells.append(escape(f"{len(column.members)}: " + " ".join(m.name for m in column.members)))
        legend.add_row(*cells)
    out: list[RenderableType] = [legend]
    if comparison.differing:
        out.append(Text("Config fields that differ: " + ", ".join(comparison.differing)))
    spread = ", mean ± sample std over each group's runs" if comparison.group_by else ""
    out.append(Text(f"Δ: difference to the first column{spread}."))
    every_row = [*comparison.summary, *(r for rows in comparison.per_class.values() for r in rows)]
    sizes = [len(c.members) for c in comparison.columns]
    if any(0 < c.n < size for r in every_row for c, size in zip(r.cells, sizes, strict=True)):
        out.append(Text("*: mean over the runs of the group that define the number (the others have it undefined)."))
    return [*out, *tables]
