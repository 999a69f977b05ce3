"""Find the run folders under a folder and summarise each: config, steps, state, best and last mIoU.

A run folder is a folder holding a `config.json` written by `ppar train` (ppar_core.engine.run_folder); runs are
searched in the folder itself, its sub-folders and theirs (one or two levels deep), never inside a run folder.

State of a run, from its files alone (nothing is loaded but JSON and the checkpoint's header):

    running      a live process holds the folder's lock (its pid is shown); checked first
    finished     the checkpoint's step equals the config's `iters`
    interrupted  a checkpoint of fewer steps and no live lock: `ppar train ... --resume` continues it
    failed       no readable checkpoint, but steps were logged: the run stopped before its first checkpoint
    empty        no checkpoint and nothing logged: the run stopped while it was being set up
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ppar_core.checkpoint import KIND_MODEL, safetensors_metadata
from ppar_core.config import RESUMABLE_FIELDS, TrainConfig, config_diff
from ppar_core.engine.run_folder import CONFIG_FILE, METRICS_FILE, MODEL_FILE, lock_holder
from ppar_core.errors import PparError
from ppar_core.evaluation.report import REPORT_FILE
from ppar_core.experiments.records import EvalPoint, best_point, eval_points, read_report, read_run_log

RunState = Literal["running", "finished", "interrupted", "failed", "empty"]

# Top-level fields every config.json of `ppar train` has: a config.json of another tool (a Hugging Face model
# folder has one too) is not taken for a run.
_RUN_KEYS = ("model", "data", "loss", "iters")


@dataclass(frozen=True)
class RunSummary:
    """One run folder at a glance. mIoU in percent; steps are optimizer steps."""

    name: str  # the folder relative to the listed folder
    path: Path
    config: dict[str, Any]  # config.json, `data.source` as a list of specs (see `load_run_config`)
    iters: int  # the steps the run was configured for
    checkpoint_step: int | None  # the step of last.safetensors (None: no readable checkpoint)
    last_logged_step: int | None  # the last training step in metrics.jsonl
    state: RunState
    pid: int | None  # the lock holder, for a running run
    evals: tuple[EvalPoint, ...]  # periodic evaluations and the final report, by step
    note: str | None = None  # why the checkpoint could not be read, when it could not

    @property
    def method(self) -> str:
        return str(self.config.get("loss", {}).get("method", "?"))

    @property
    def model(self) -> str:
        return str(self.config.get("model", {}).get("preset", "?"))

    @property
    def sources(self) -> tuple[str, ...]:
        return source_names(self.config)

    @property
    def steps_done(self) -> int:
        """Steps saved in the checkpoint; for a running run the latest logged step when it is later (the
        checkpoint is written only every `checkpoint_every` steps)."""
        saved = self.checkpoint_step or 0
        if self.state == "running":
            return max(saved, self.last_logged_step or 0)
        return saved

    @property
    def best(self) -> EvalPoint | None:
        """The evaluation with the highest mean mIoU (earliest of ties)."""
        return best_point(self.evals)

    @property
    def last(self) -> EvalPoint | None:
        """The latest evaluation (the final report of a finished run)."""
        return self.evals[-1] if self.evals else None


@dataclass(frozen=True)
class RunList:
    """The runs under `root`, by name, and the config fields that differ between them."""

    root: Path
    runs: tuple[RunSummary, ...]
    differing: tuple[str, ...] = field(default=())  # dotted config fields (see `differing_fields`)

    def switches(self, run: RunSummary) -> dict[str, Any]:
        """The run's values of the differing fields, except those with a column of their own."""
        return {name: config_value(run.config, name) for name in self.differing if name not in OWN_COLUMNS}


# Differing fields that `ppar runs` shows in columns of their own rather than among the switches.
OWN_COLUMNS = ("loss.method", "model.preset", "data.source", "iters")


def load_run_config(folder: Path) -> dict[str, Any] | None:
    """The run's config.json as a dict, `data.source` normalised to a list of specs; None when the folder holds no
    config.json of `ppar train`.

    `data.source` is a spec string ("gta5", "gta5=/data/gta5") in older runs and a list of specs in runs with
    several sources: both read as a list, so the two spellings of one source compare equal.
    """
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or not all(k in config for k in _RUN_KEYS) or not isinstance(config["data"], dict):
        return None
    source = config["data"].get("source")
    if isinstance(source, str):
        config["data"]["source"] = [source]
    return config


def source_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The source datasets' names (no paths) of a config, e.g. ("gta5", "synthia"); a str or a list of specs."""
    source = config.get("data", {}).get("source", ())
    specs = [source] if isinstance(source, str) else list(source or ())
    return tuple(str(spec).partition("=")[0].strip() for spec in specs)


def source_label(config: Mapping[str, Any]) -> str:
    """The sources as one label: "gta5", "gta5+synthia"."""
    return "+".join(source_names(config)) or "?"


def config_value(config: Mapping[str, Any], name: str) -> Any:
    """The value of dotted field `name` ("loss.reweight") in a config dict; KeyError when it has none."""
    value: Any = config
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def config_fields(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted leaf field of a config dict, in order."""
    out: list[str] = []
    for key, value in config.items():
        out += config_fields(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [prefix + key]
    return out


def differing_fields(configs: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The dotted config fields whose values are not the same in all `configs`, sorted.

    Fields that do not change what a run computes (`RESUMABLE_FIELDS`: out, device, data_root, logging and
    checkpoint intervals, workers) are left out: `out` differs between any two runs.
    """
    found: set[str] = set()
    for other in configs[1:]:
        found.update(config_diff(dict(configs[0]), dict(other)))
    return tuple(sorted(found - set(RESUMABLE_FIELDS)))


def short_field_names(names: Iterable[str]) -> dict[str, str]:
    """Short labels of dotted fields: the section prefix (loss., model., data., optim.) dropped where the result
    stays unambiguous, e.g. loss.reweight -> reweight, model.vtp.kind -> vtp.kind. `eval.` is kept (eval.crop_size is
    not the training crop), and so is any prefix whose removal would read as a top-level field (batch_size)."""
    names = list(names)
    top_level = {f.name for f in dataclasses.fields(TrainConfig)}
    short = {n: re.sub(r"^(loss|model|data|optim)\.", "", n) for n in names}
    counts: dict[str, int] = {}
    for value in short.values():
        counts[value] = counts.get(value, 0) + 1
    return {n: s if s == n or (counts[s] == 1 and s not in top_level) else n for n, s in short.items()}


def format_value(value: Any) -> str:
    """A config value as a person writes it: strings bare, lists joined by commas, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    return json.dumps(value)


def checkpoint_step(path: Path) -> int:
    """The step of a model checkpoint, read from its safetensors header alone (no tensor is loaded).

    PparError when the file is missing, not a ppar model checkpoint, or has no step (ppar_core.checkpoint writes
    the step as a string under the metadata key "step").
    """
    metadata = safetensors_metadata(path)
    if metadata is None:
        raise PparError(f"{path} is not a readable checkpoint (no safetensors header).")
    if metadata.get("kind") != KIND_MODEL:
        raise PparError(f"{path} is not a ppar model checkpoint (metadata kind {metadata.get('kind')!r}).")
    try:
        return int(metadata["step"])
    except (KeyError, ValueError):
        raise PparError(f"{path} has no valid step in its metadata: the file is damaged.") from None


def summarise_run(folder: Path, *, name: str, config: dict[str, Any] | None = None) -> RunSummary:
    """Summarise one run folder (module docstring for the states); PparError if it is not a run folder."""
    folder = Path(folder)
    config = config if config is not None else load_run_config(folder)
    if config is None:
        raise PparError(f"{folder} is not a run folder: it has no {CONFIG_FILE} written by `ppar train`.")
    step: int | None = None
    note: str | None = None
    if (folder / MODEL_FILE).exists():
        try:
            step = checkpoint_step(folder / MODEL_FILE)
        except PparError as exc:
            note = str(exc)
    log = read_run_log(folder / METRICS_FILE)
    report_path = folder / REPORT_FILE
    report = read_report(report_path) if report_path.exists() else None
    iters = int(config.get("iters", 0))
    pid = lock_holder(folder)
    state: RunState
    if pid is not None:
        state = "running"
    elif step is None:
        state = "failed" if log.steps else "empty"
    else:
        state = "finished" if step >= iters else "interrupted"
    return RunSummary(
        name=name,
        path=folder,
        config=config,
        iters=iters,
        checkpoint_step=step,
        last_logged_step=log.last_step,
        state=state,
        pid=pid,
        evals=eval_points(log, report),
        note=note,
    )


def find_run_folders(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, config) of every run folder in `root`, its sub-folders and theirs, by path; hidden folders and
    the inside of run folders are not searched."""
    found: list[tuple[Path, dict[str, Any]]] = []

    def visit(folder: Path, depth: int) -> None:
        config = load_run_config(folder)
        if config is not None:
            found.append((folder, config))
            return
        if depth == 2:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return  # an unreadable folder holds no run we can summarise
        for child in children:
            visit(child, depth + 1)

    visit(Path(root), 0)
    return found


def list_runs(root: Path) -> RunList:
    """Summarise every run under `root` (see `find_run_folders`), named by their path relative to `root`.

    PparError when `root` is not a folder or holds no run.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise PparError(f"{root} {what}: pass the folder that holds your run folders (default: runs).")
    found = find_run_folders(root)
    if not found:
        raise PparError(
            f"No runs in {root}: no folder there (or one or two levels down) holds a {CONFIG_FILE} of `ppar train`."
        )
    # A run folder passed itself is named by its own name (relative to itself it would be ".").
    names = [folder.relative_to(root).as_posix() if folder != root else root.resolve().name for folder, _ in found]
    runs = tuple(summarise_run(f, name=n, config=c) for (f, c), n in zip(found, names, strict=True))
    return RunList(root=root, runs=runs, differing=differing_fields([r.config for r in runs]))


def run_list_json(listing: RunList) -> dict[str, Any]:
    """The `ppar runs --json` document: {"root", "differing", "runs": [...]}, mIoU in percent."""

    def point(p: EvalPoint | None) -> dict[str, Any] | None:
        return None if p is None else {"step": p.step, "mean_miou": p.mean_miou, "targets": p.targets}

    return {
        "root": str(listing.root),
        "differing": list(listing.differing),
        "runs": [
            {
                "name": r.name,
                "path": str(r.path),
                "method": r.method,
                "switches": listing.switches(r),
                "model": r.model,
                "sources": list(r.sources),
                "steps_done": r.steps_done,
                "iters": r.iters,
                "checkpoint_step": r.checkpoint_step,
                "state": r.state,
                "pid": r.pid,
                "best": point(r.best),
                "last": point(r.last),
                "note": r.note,
            }
            for r in listing.runs
        ],
    }


def display_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names for runs given as folders or report files: each relative to the folder common to all.

    A run folder or its `eval.json` is named by the folder (runs/abl/a, runs/abl/b -> a, b); another report file
    keeps its file name (a/eval_cityscapes_whole.json). PparError when one is given twice.
    """
    bases = [Path(p).resolve() for p in paths]
    bases = [b.parent if b.is_file() and b.name == REPORT_FILE else b for b in bases]
    seen: dict[Path, Path] = {}
    for given, base in zip(paths, bases, strict=True):
        if base in seen:
            raise PparError(f"{given} and {seen[base]} are the same run: give each run once.")
        seen[base] = Path(given)
    if len(bases) == 1:
        return [bases[0].name]
    common = Path(os.path.commonpath([b.parent for b in bases]))
    return [b.relative_to(common).as_posix() for b in bases]
