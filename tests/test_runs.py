"""`ppar runs` and `ppar runs compare`: run folders found and summarised from their own files; the ablation table's
numbers are the reports' numbers; seed groups get the right mean and spread."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import CliResult, tiny_train_config
from typer.testing import CliRunner

from ppar_cli import plot as plot_cli
from ppar_cli import runs as runs_cli
from ppar_core.checkpoint import load_checkpoint
from ppar_core.config import TrainConfig, merge, to_dict
from ppar_core.engine.run_folder import LOCK_FILE
from ppar_core.engine.train import train
from ppar_core.errors import PparError
from ppar_core.experiments.compare import compare_runs
from ppar_core.experiments.runs import (
    checkpoint_step,
    differing_fields,
    list_runs,
    load_run_config,
    short_field_names,
    source_label,
)
from ppar_core.labels import CLASS_NAMES


def _app() -> typer.Typer:
    """A throwaway root that mounts the commands as ppar_cli.main will."""
    app = typer.Typer(name="ppar", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.add_typer(runs_cli.app, name="runs")
    app.command("plot", help=plot_cli.HELP)(plot_cli.command)
    return app


@pytest.fixture
def ppar(cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """`ppar ARGS` through the real entry point (its one-line errors, exit codes), with these commands mounted."""
    import ppar_cli.main

    monkeypatch.setattr(ppar_cli.main, "app", _app())
    return cli


def _invoke(*args: object, columns: int = 80) -> str:
    """Output of `ppar ARGS` as a log file gets it: no terminal, COLUMNS wide."""
    result = CliRunner().invoke(_app(), [str(a) for a in args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def _table_width(out: str) -> int:
    """The widest table row of a command's output: its rules and body lines (text lines outside tables, such as
    titles and notes, are soft-wrapped: kept whole for the terminal or the log to wrap, by the house console)."""
    lines = out.splitlines()
    widths = [0]
    for index, line in enumerate(lines):
        if line.strip().startswith("─"):
            end = next((i for i in range(index, len(lines)) if not lines[i].strip()), len(lines))
            widths += [len(row) for row in lines[index:end]]
    return max(widths)


def _write_lock(folder: Path, pid: int) -> None:
    # The record RunFolder.locked() writes.
    record = {"pid": pid, "host": socket.gethostname(), "started": time.time()}
    (folder / LOCK_FILE).write_text(json.dumps(record), encoding="utf-8")


@dataclass
class Runs:
    root: Path
    sleeper: subprocess.Popen[bytes]  # the live process holding `locked`


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Iterator[Runs]:
    """Real tiny runs: two finished (reweight otp / none, periodic evaluation at step 2), one stopped by Ctrl-C at
    step 2 of 6, a copy of it held by a live process, one with a stale lock, one with a damaged checkpoint, and a
    folder holding a config.json of another tool."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_train_config(synth_root, root / "abl" / "otp", eval_every=2))
    train(tiny_train_config(synth_root, root / "abl" / "none", eval_every=2, loss={"reweight": "none"}))

    def press_ctrl_c(record: dict[str, Any]) -> None:
        if record.get("step") == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: the loop stops at the next step boundary

    stopped = train(tiny_train_config(synth_root, root / "stopped", iters=6), on_log=press_ctrl_c)
    assert stopped.interrupted and stopped.step == 2
    shutil.copytree(root / "stopped", root / "held")
    sleeper = subprocess.Popen(["sleep", "300"])
    _write_lock(root / "held", sleeper.pid)
    shutil.copytree(root / "stopped", root / "stale")
    gone = subprocess.Popen(["true"])
    gone.wait()
    _write_lock(root / "stale", gone.pid)  # its process has exited: the lock is stale
    (root / "damaged").mkdir()
    shutil.copy(root / "stopped" / "config.json", root / "damaged" / "config.json")
    (root / "damaged" / "last.safetensors").write_bytes(b"not a checkpoint")
    (root / "hf-model").mkdir()
    (root / "hf-model" / "config.json").write_text('{"architectures": ["CLIPModel"]}')
    yield Runs(root, sleeper)
    sleeper.kill()
    sleeper.wait()


def test_list_runs_states_steps_and_lock_holder(runs: Runs) -> None:
    listing = list_runs(runs.root)
    by_name = {r.name: r for r in listing.runs}
    # The other tool's config.json is not a run; every ppar run is found, one or two levels deep, by name.
    assert sorted(by_name) == ["abl/none", "abl/otp", "damaged", "held", "stale", "stopped"]
    assert by_name["abl/otp"].state == "finished" and by_name["abl/otp"].steps_done == 4
    assert by_name["stopped"].state == "interrupted"
    assert (by_name["stopped"].steps_done, by_name["stopped"].iters) == (2, 6)
    assert by_name["held"].state == "running" and by_name["held"].pid == runs.sleeper.pid
    assert by_name["stale"].state == "interrupted" and by_name["stale"].pid is None
    assert by_name["damaged"].state == "empty" and "not a readable checkpoint" in (by_name["damaged"].note or "")
    # The step comes from the checkpoint's header and is the step the checkpoint holds.
    assert (
        checkpoint_step(runs.root / "stopped" / "last.safetensors")
        == load_checkpoint(runs.root / "stopped" / "last.safetensors").step
    )


def test_best_and_last_come_from_the_logged_evaluations_and_eval_json(runs: Runs) -> None:
    run = {r.name: r for r in list_runs(runs.root).runs}["abl/otp"]
    report = json.loads((runs.root / "abl" / "otp" / "eval.json").read_text())
    logged = [json.loads(line) for line in (runs.root / "abl" / "otp" / "metrics.jsonl").read_text().splitlines()]
    periodic = [r for r in logged if "eval" in r]
    assert [p.step for p in run.evals] == [2, 4] and [r["step"] for r in periodic] == [2]
    assert run.last is not None and run.last.step == 4 and run.last.final
    assert run.last.mean_miou == report["mean_miou"]
    assert run.last.targets == {t: e["miou"] for t, e in report["targets"].items()}
    assert run.evals[0].mean_miou == periodic[0]["mean_miou"]
    expected_best = max([(report["mean_miou"], -4), (periodic[0]["mean_miou"], -2)])
    assert run.best is not None and (run.best.mean_miou, -run.best.step) == expected_best


def test_switches_are_the_fields_that_differ(runs: Runs) -> None:
    listing = list_runs(runs.root)
    # `out` differs between any two runs and says nothing: it is not a switch; iters is (the stopped run's 6).
    assert listing.differing == ("iters", "loss.reweight")
    by_name = {r.name: r for r in listing.runs}
    assert listing.switches(by_name["abl/none"]) == {"loss.reweight": "none"}
    assert listing.switches(by_name["abl/otp"]) == {"loss.reweight": "otp"}


def test_runs_table_fits_80_columns_and_cuts_no_name(runs: Runs) -> None:
    names = ["abl/none", "abl/otp", "damaged", "held", "stale", "stopped"]
    for args in (["runs", runs.root], ["runs", "list", runs.root]):
        out = _invoke(*args)
        lines = out.splitlines()
        assert 0 < _table_width(out) <= 80
        assert "…" not in out
        assert f"running pid {runs.sleeper.pid}" in out and "interrupted" in out and "finished" in out
        # The run column, read down the table body: every name whole, in order (wrapped lines continue it).
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("─")) + 1
        end = next(i for i in range(start, len(lines)) if not lines[i].strip())
        assert "".join(line.split()[0] for line in lines[start:end]) == "".join(names)


def test_runs_json_and_default_folder(runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(_invoke("runs", runs.root, "--json"))
    by_name = {r["name"]: r for r in data["runs"]}
    assert by_name["held"]["state"] == "running" and by_name["held"]["pid"] == runs.sleeper.pid
    assert by_name["abl/otp"]["best"]["step"] in (2, 4) and by_name["abl/otp"]["last"]["step"] == 4
    assert by_name["abl/none"]["switches"] == {"loss.reweight": "none"}
    assert by_name["abl/none"]["sources"] == ["synth-source"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(runs.root)
    # No folder given: runs/ of the working folder.
    assert {r["name"] for r in json.loads(_invoke("runs", "--json"))["runs"]} == set(by_name)


def test_sources_read_as_a_string_or_a_list(tmp_path: Path) -> None:
    base = to_dict(TrainConfig())
    for name, source in [("old", "gta5"), ("new", ["gta5"]), ("multi", ["gta5", "synthia=/data/synthia"])]:
        (tmp_path / name).mkdir()
        config = json.loads(json.dumps(base))
        config["data"]["source"] = source
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    configs = {n: load_run_config(tmp_path / n) for n in ("old", "new", "multi")}
    assert all(c is not None for c in configs.values())
    assert source_label(configs["multi"]) == "gta5+synthia"  # type: ignore[arg-type]
    assert differing_fields([configs["old"], configs["new"]]) == ()  # type: ignore[list-item]
    assert differing_fields([configs["old"], configs["multi"]]) == ("data.source",)  # type: ignore[list-item]
    listing = list_runs(tmp_path)
    assert {r.name: "+".join(r.sources) for r in listing.runs} == {"multi": "gta5+synthia", "new": "gta5",
                                                                   "old": "gta5"}  # fmt: skip


def test_short_field_names_stay_unambiguous() -> None:
    short = short_field_names(["loss.reweight", "model.vtp.kind", "eval.crop_size", "eval.batch_size", "optim.lr"])
    assert short == {
        "loss.reweight": "reweight",
        "model.vtp.kind": "vtp.kind",
        "eval.crop_size": "eval.crop_size",
        "eval.batch_size": "eval.batch_size",
        "optim.lr": "lr",
    }
    # data.batch_size would read as the top-level batch_size: kept whole.
    assert short_field_names(["data.batch_size", "seed"]) == {"data.batch_size": "data.batch_size", "seed": "seed"}


def test_compare_numbers_equal_the_runs_eval_json(runs: Runs) -> None:
    a, b = runs.root / "abl" / "otp", runs.root / "abl" / "none"
    comparison = compare_runs([a, b])
    reports = [json.loads((p / "eval.json").read_text()) for p in (a, b)]
    assert [c.label for c in comparison.columns] == ["otp", "none"]
    assert comparison.differing == ("loss.reweight",)
    assert [c.config for c in comparison.columns] == [{"loss.reweight": "otp"}, {"loss.reweight": "none"}]
    for target, rows in comparison.per_class.items():
        assert [r.metric for r in rows] == list(CLASS_NAMES)
        for row in rows:
            ra, rb = (r["targets"][target]["per_class"][row.metric] for r in reports)
            assert (row.cells[0].value, row.cells[1].value) == (ra, rb)
            assert row.cells[1].delta == (None if ra is None or rb is None else rb - ra)
    summary = {(r.target, r.metric): r for r in comparison.summary}
    assert [c.value for c in summary[("mean", "mIoU")].cells] == [r["mean_miou"] for r in reports]
    for target in reports[0]["targets"]:
        assert [c.value for c in summary[(target, "mIoU")].cells] == [r["targets"][target]["miou"] for r in reports]
    # The CLI's JSON carries the same numbers.
    data = json.loads(_invoke("runs", "compare", a, b, "--json"))
    assert data["per_class"] == comparison.to_json()["per_class"]
    first = data["per_class"]["synth-real"][0]
    assert [c["value"] for c in first["cells"]] == [r["targets"]["synth-real"]["per_class"]["road"] for r in reports]


def _fake_run(folder: Path, *, seed: int, reweight: str, miou: float, road: float | None) -> Path:
    """A run folder with a config of `ppar train`'s shape and a hand-written eval.json (mIoU in percent)."""
    folder.mkdir(parents=True)
    config = to_dict(merge(TrainConfig(), {"seed": seed, "loss": {"reweight": reweight}, "out": str(folder)}))
    (folder / "config.json").write_text(json.dumps(config))
    per_class = dict.fromkeys(CLASS_NAMES, 10.0) | {"road": road}
    report = {
        "targets": {"cityscapes": {"miou": miou, "per_class": per_class}},
        "mean_miou": miou,
        "protocol": {"step": 100},
    }
    (folder / "eval.json").write_text(json.dumps(report))
    return folder


def test_seed_groups_get_mean_and_sample_spread(tmp_path: Path) -> None:
    base = [
        _fake_run(tmp_path / "otp-s0", seed=0, reweight="otp", miou=40.0, road=80.0),
        _fake_run(tmp_path / "otp-s1", seed=1, reweight="otp", miou=44.0, road=None),
        _fake_run(tmp_path / "otp-s2", seed=2, reweight="otp", miou=45.0, road=86.0),
    ]
    other = [
        _fake_run(tmp_path / "none-s0", seed=0, reweight="none", miou=38.0, road=70.0),
        _fake_run(tmp_path / "none-s1", seed=1, reweight="none", miou=39.0, road=72.0),
    ]
    # Hand-computed: otp mean 43, sample std sqrt(((-3)^2 + 1^2 + 2^2) / 2) = sqrt(7); none mean 38.5, std
    # sqrt(0.125 * 4) = sqrt(0.5); delta -4.5. Road: otp over its two defined values, mean 83, std sqrt(18).
    for rule in ("seed", "loss.reweight", r"name:^(.*)-s\d+$"):
        comparison = compare_runs([*base, *other], group_by=rule)
        assert [len(c.members) for c in comparison.columns] == [3, 2]
        mean = next(r for r in comparison.summary if r.target == "mean")
        otp, none = mean.cells
        assert otp.value == pytest.approx(43.0) and otp.std == pytest.approx(math.sqrt(7.0))
        assert none.value == pytest.approx(38.5) and none.std == pytest.approx(math.sqrt(0.5))
        assert none.delta == pytest.approx(-4.5) and otp.delta is None
        assert otp.values == (40.0, 44.0, 45.0)
        road = comparison.per_class["cityscapes"][0]
        assert road.metric == "road" and road.cells[0].n == 2
        assert road.cells[0].value == pytest.approx(83.0) and road.cells[0].std == pytest.approx(math.sqrt(18.0))
        assert road.cells[1].delta == pytest.approx(71.0 - 83.0)
    labels = [c.label for c in compare_runs([*base, *other], group_by="seed").columns]
    assert labels == ["reweight=otp", "reweight=none"]
    # A group of one has no spread; report files work as well as folders (named by their folder).
    single = compare_runs([base[0] / "eval.json", other[0] / "eval.json"], group_by="seed")
    assert [c.label for c in single.columns] == ["reweight=otp", "reweight=none"]
    assert all(c.std is None for c in single.summary[0].cells)


def test_compare_table_at_80_columns(tmp_path: Path) -> None:
    paths = [
        _fake_run(tmp_path / f"a-rather-long-ablation-name-{i}", seed=i, reweight=r, miou=40.0 + i, road=50.0)
        for i, r in enumerate(["otp", "none", "ratio"])
    ]
    out = _invoke("runs", "compare", *paths)
    assert 0 < _table_width(out) <= 80 and "…" not in out
    # Names that would not fit head the columns as letters; the legend gives each letter its whole name.
    for letter, path in zip("ABC", paths, strict=True):
        assert any(line.split()[:2] == [letter, path.name] for line in out.splitlines())
    assert "Config fields that differ: loss.reweight, seed" in out
    grouped = _invoke("runs", "compare", *paths, "--group-by", "loss.reweight")
    assert 0 < _table_width(grouped) <= 80 and "…" not in grouped
    # Where they fit, the names themselves head the columns.
    wide = _invoke("runs", "compare", *paths, columns=200)
    assert any(all(p.name in line for p in paths) for line in wide.splitlines())
    assert "41.00" in out and "+1.00" in out  # B's mIoU and its difference to A, computed from the reports


def test_errors_are_one_line_and_exit_1(runs: Runs, tmp_path: Path, ppar: Callable[..., CliResult]) -> None:
    otp = runs.root / "abl" / "otp"
    cases = [
        (["runs", tmp_path / "nowhere"], "does not exist"),
        (["runs", tmp_path], "No runs in"),
        (["runs", "compare", otp, tmp_path], "is not a run folder"),
        (["runs", "compare", otp, runs.root / "stopped"], "has no eval.json"),
        (["runs", "compare", otp, runs.root / "abl" / "none", "--group-by", "loss.rewieght"], "did you mean"),
        (["runs", "compare", otp], "at least two runs"),
        (["runs", "compare", otp, otp / "eval.json"], "same run"),
    ]
    for args, message in cases:
        result = ppar(*args)
        assert result.code == 1, (args, result.err)
        assert message in result.err and result.err.startswith("error:"), (args, result.err)
        assert len(result.err.strip().splitlines()) == 1


def test_compare_is_never_taken_for_a_folder(runs: Runs, ppar: Callable[..., CliResult]) -> None:
    result = ppar("runs", "compare", runs.root / "abl" / "otp", runs.root / "abl" / "none", "--json")
    assert result.code == 0, result.err
    assert [c["label"] for c in json.loads(result.out)["columns"]] == ["otp", "none"]
    with pytest.raises(PparError, match="at least two"):
        compare_runs([runs.root / "abl" / "otp"])


def test_compare_keeps_conditions_and_16_class_figures(tmp_path: Path) -> None:
    def report(path: Path, night: float, miou_16: float) -> Path:
        entry = {"miou": 30.0, "per_class": {}, "miou_16": miou_16, "conditions": {"night": {"miou": night}}}
        path.write_text(json.dumps({"targets": {"acdc": entry}, "mean_miou": 30.0, "mean_miou_16": miou_16}))
        return path

    comparison = compare_runs([report(tmp_path / "a.json", 20.0, 35.0), report(tmp_path / "b.json", 22.5, 34.0)])
    rows = {(r.target, r.metric): [c.value for c in r.cells] for r in comparison.summary}
    assert rows[("acdc-night", "mIoU")] == [20.0, 22.5]
    assert rows[("acdc", "mIoU-16")] == [35.0, 34.0] and rows[("mean", "mIoU-16")] == [35.0, 34.0]
    assert [c.label for c in comparison.columns] == ["a.json", "b.json"] and comparison.differing == ()
