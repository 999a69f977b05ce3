"""The ablation table as data: several runs (or seed groups of runs) side by side, per target and per class.

Each run's numbers are its evaluation report's as written (`eval.json` of a run folder, or a report file of
`ppar eval` given instead), IoU in percent; nothing is recomputed. A column is one run or, with a group rule, a
group of runs; a group's cell is the mean over its members' defined values and their spread, the sample standard
deviation (n - 1 in the denominator; none for fewer than two values). Every column's difference (`delta`) is to the
first column, the baseline.

Group rules (`--group-by`):

    seed            runs whose configs differ only in `seed` form a group: the replicates of one setting
    FIELD[,FIELD]   runs with equal values of these dotted config fields form a group, e.g. loss.reweight
    name:REGEX      runs whose names give the same match form a group: the first capture group if the pattern
                    has one, else the whole match (`name:^(.*)-s[0-9]+$`); a name that does not match is its own
"""

from __future__ import annotations

import difflib
import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ppar_core.engine.run_folder import CONFIG_FILE
from ppar_core.errors import PparError
from ppar_core.evaluation.report import REPORT_FILE
from ppar_core.experiments.records import read_report, report_step
from ppar_core.experiments.runs import (
    config_fields,
    config_value,
    differing_fields,
    display_names,
    format_value,
    load_run_config,
    short_field_names,
)


@dataclass(frozen=True)
class Member:
    """One compared run: its report and, when known, its config."""

    name: str
    path: Path  # the report file read
    report: dict[str, Any]
    config: dict[str, Any] | None  # the run's config.json (None: a report file with no config.json beside it)

    @property
    def step(self) -> int | None:
        return report_step(self.report)


@dataclass(frozen=True)
class Column:
    """One column of the table: a run, or a group of runs."""

    label: str
    members: tuple[Member, ...]
    # The differing config fields' values: one value, or the members' values (a list) where they differ inside it.
    config: dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One number of the table and where it comes from. Percent."""

    values: tuple[float | None, ...]  # each member's number as its report holds it (None: undefined)
    value: float | None  # the mean of the defined values (a single run: its own number)
    std: float | None  # sample standard deviation of the defined values; None for fewer than two
    delta: float | None  # value minus the first column's value

    @property
    def n(self) -> int:
        """How many members have the number defined."""
        return sum(v is not None for v in self.values)


@dataclass(frozen=True)
class Row:
    """One line of the table: `metric` ("mIoU", "mIoU-16", or a class name) of `target` ("mean": over targets)."""

    target: str
    metric: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Comparison:
    """The ablation table. `summary`: mIoU per target (ACDC conditions as `acdc-<condition>`, 16-class figures
    where reports have them) then the mean over targets; `per_class`: {target: one row per class}."""

    columns: tuple[Column, ...]
    differing: tuple[str, ...]  # the dotted config fields that differ between the compared runs
    group_by: str | None
    summary: tuple[Row, ...]
    per_class: dict[str, tuple[Row, ...]]

    def to_json(self) -> dict[str, Any]:
        """The `ppar runs compare --json` document."""

        def rows(items: Sequence[Row]) -> list[dict[str, Any]]:
            return [
                {
                    "target": r.target,
                    "metric": r.metric,
                    "cells": [{"value": c.value, "std": c.std, "delta": c.delta, "values": list(c.values)}
                              for c in r.cells],
                }
                for r in items
            ]  # fmt: skip

        return {
            "group_by": self.group_by,
            "differing": list(self.differing),
            "columns": [
                {
                    "label": c.label,
                    "config": c.config,
                    "members": [{"name": m.name, "report": str(m.path), "step": m.step} for m in c.members],
                }
                for c in self.columns
            ],
            "summary": rows(self.summary),
            "per_class": {target: rows(items) for target, items in self.per_class.items()},
        }


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def load_member(path: Path, *, name: str) -> Member:
    """A run folder (its eval.json and config.json) or a report file (and the config.json beside it, if any)."""
    path = Path(path)
    if path.is_dir():
        config = load_run_config(path)
        if config is None:
            raise PparError(f"{path} is not a run folder: it has no {CONFIG_FILE} written by `ppar train`.")
        report_path = path / REPORT_FILE
        if not report_path.exists():
            raise PparError(
                f"{path} has no {REPORT_FILE}: the run has not finished its final evaluation; finish it with "
                "`ppar train ... --resume`, or pass a report of `ppar eval` instead of the folder."
            )
        return Member(name, report_path, read_report(report_path), config)
    if not path.exists():
        raise PparError(f"{path} does not exist: pass run folders or report files (eval.json).")
    return Member(name, path, read_report(path), load_run_config(path.parent))


# ----------------------------------------------------------------------------------------------------------------
# Groups


@dataclass(frozen=True)
class GroupRule:
    """A parsed `--group-by` rule (module docstring)."""

    text: str
    kind: Literal["seed", "fields", "name"]
    fields: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None


def parse_group_rule(text: str) -> GroupRule:
    """`seed`, `FIELD[,FIELD...]` or `name:REGEX` -> GroupRule; PparError on an empty rule or a bad pattern."""
    text = text.strip()
    if text in ("seed", "seeds"):
        return GroupRule(text, "seed")
    if text.startswith("name:"):
        try:
            return GroupRule(text, "name", pattern=re.compile(text.removeprefix("name:")))
        except re.error as exc:
            raise PparError(f"--group-by {text!r}: the pattern is not a valid regular expression ({exc}).") from None
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    if not fields:
        raise PparError("--group-by needs a rule: seed, a config field such as loss.reweight, or name:REGEX.")
    return GroupRule(text, "fields", fields=fields)


def _check_fields(rule: GroupRule, members: Sequence[Member]) -> None:
    for member in members:
        if member.config is None:
            raise PparError(
                f"--group-by {rule.text} reads the runs' configs, but {member.path} has no {CONFIG_FILE} beside it: "
                "pass run folders, or group by name (name:REGEX)."
            )
        known = config_fields(member.config)
        for name in rule.fields:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"did you mean {', '.join(close)}?" if close else "e.g. loss.reweight or seed"
                raise PparError(f"Unknown --group-by field {name!r} (not in {member.name}'s config): {hint}")


def _group_key(rule: GroupRule, member: Member, differing: Sequence[str]) -> str:
    """The members of one group share this key."""
    if rule.kind == "name":
        assert rule.pattern is not None
        match = rule.pattern.search(member.name)
        if match is None:
            return member.name
        return match.group(1) if rule.pattern.groups else match.group(0)
    assert member.config is not None  # checked by _check_fields
    fields = rule.fields if rule.kind == "fields" else [f for f in differing if f != "seed"]
    return json.dumps({f: config_value(member.config, f) for f in fields}, sort_keys=True)


def _group_label(rule: GroupRule, key: str) -> str:
    if rule.kind == "name":
        return key
    values: dict[str, Any] = json.loads(key)
    if not values:  # seed rule, nothing but the seed differs: every run is in the one group
        return "all runs"
    short = short_field_names(values)
    return " ".join(f"{short[f]}={format_value(v)}" for f, v in values.items())


def build_columns(members: Sequence[Member], rule: GroupRule | None, differing: Sequence[str]) -> list[Column]:
    """One column per member, or per group of members (in order of first appearance) under `rule`."""
    if rule is None:
        groups: dict[str, list[Member]] = {m.name: [m] for m in members}
        labels = {m.name: m.name for m in members}
    else:
        if rule.kind != "name":
            _check_fields(rule, members)
        groups = {}
        for member in members:
            groups.setdefault(_group_key(rule, member, differing), []).append(member)
        labels = {key: _group_label(rule, key) for key in groups}
    columns = []
    for key, items in groups.items():
        config: dict[str, Any] = {}
        for name in differing:
            values = [config_value(m.config, name) if m.config is not None else None for m in items]
            config[name] = values[0] if all(v == values[0] for v in values) else values
        columns.append(Column(labels[key], tuple(items), config))
    return columns


# ----------------------------------------------------------------------------------------------------------------
# The table


def _cell(values: Sequence[float | None], base: float | None) -> Cell:
    defined = [float(v) for v in values if v is not None]
    value = statistics.fmean(defined) if defined else None
    std = statistics.stdev(defined) if len(defined) >= 2 else None
    delta = value - base if value is not None and base is not None else None
    return Cell(tuple(values), value, std, delta)


def _lookup(report: dict[str, Any], keys: Sequence[str]) -> Any:
    """report[k0][k1]... or None where a level is missing."""
    value: Any = report
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _row(target: str, metric: str, columns: Sequence[Column], keys: Sequence[str]) -> Row:
    """A row whose member values are `report[keys[0]][keys[1]]...` (None where the report lacks the figure)."""
    per_column = [[_number(_lookup(m.report, keys)) for m in c.members] for c in columns]
    first = _cell(per_column[0], None)
    return Row(target, metric, (first, *(_cell(values, first.value) for values in per_column[1:])))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _entry(report: dict[str, Any], target: str) -> dict[str, Any]:
    entry = report["targets"].get(target)
    return entry if isinstance(entry, dict) else {}


def compare_runs(paths: Sequence[Path], *, group_by: str | None = None) -> Comparison:
    """The ablation table of `paths` (run folders or report files; the first is the baseline).

    PparError for fewer than two inputs, an input that is neither a run with an eval.json nor a report, or a
    group rule naming a field the configs lack.
    """
    if len(paths) < 2:
        raise PparError("Compare needs at least two runs (run folders or report files), the baseline first.")
    rule = parse_group_rule(group_by) if group_by is not None else None
    members = [load_member(p, name=n) for p, n in zip(paths, display_names(paths), strict=True)]
    differing = differing_fields([m.config for m in members if m.config is not None])
    columns = build_columns(members, rule, differing)
    reports = [m.report for m in members]

    targets: list[str] = []
    for report in reports:
        targets += [t for t in report["targets"] if t not in targets]
    summary: list[Row] = []
    per_class: dict[str, tuple[Row, ...]] = {}
    for target in targets:
        summary.append(_row(target, "mIoU", columns, ("targets", target, "miou")))
        subsets = sorted({k for r in reports for k in _entry(r, target) if re.fullmatch(r"miou_\d+", k)})
        for key in subsets:
            metric = f"mIoU-{key.removeprefix('miou_')}"
            summary.append(_row(target, metric, columns, ("targets", target, key)))
        conditions: list[str] = []
        for report in reports:
            conditions += [c for c in _entry(report, target).get("conditions", {}) if c not in conditions]
        for cond in conditions:
            summary.append(_row(f"{target}-{cond}", "mIoU", columns, ("targets", target, "conditions", cond, "miou")))
        classes: list[str] = []
        for report in reports:
            classes += [c for c in _entry(report, target).get("per_class", {}) if c not in classes]
        per_class[target] = tuple(_row(target, cls, columns, ("targets", target, "per_class", cls)) for cls in classes)
    summary.append(_row("mean", "mIoU", columns, ("mean_miou",)))
    means = sorted({k for r in reports for k in r if re.fullmatch(r"mean_miou_\d+", k)})
    for key in means:
        summary.append(_row("mean", f"mIoU-{key.removeprefix('mean_miou_')}", columns, (key,)))
    return Comparison(tuple(columns), differing, rule.text if rule else None, tuple(summary), per_class)
