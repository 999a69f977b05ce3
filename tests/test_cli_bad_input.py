"""Bad input through the CLI: one error line, exit code 1, no traceback, and no file the user had is changed.

Every case runs in a working folder holding a real tiny run (runs/tiny) and a few files of the user's; the hash of
every file there is compared before and after the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ppar_core.imageio import write_png

ROOT = Path(__file__).resolve().parents[1]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workdir(tmp_path: Path, tiny_run: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder: runs/tiny (a copy of the tiny run), img.png, a prototypes file, notes.txt."""
    shutil.copytree(tiny_run.out, tmp_path / "runs" / "tiny")
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    write_png(tmp_path / "img.png", image)
    shutil.copy(tiny_run.out / "prototypes.safetensors", tmp_path / "protos.safetensors")
    (tmp_path / "notes.txt").write_text("the user's own file\n")
    (tmp_path / "a-folder").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PPAR_CHECKPOINT", raising=False)
    monkeypatch.setenv("PPAR_DATA", str(tiny_run.data_root))
    return tmp_path


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


TINY = ["--model", "tiny", "--iters", "2", "--batch-size", "1", "--crop", "64", "--device", "cpu"]

# (arguments, a piece of the one error line). Paths are relative to the working folder.
CASES: list[tuple[list[str], str]] = [
    (["train", "--source", "gtaa5", "--targets", "synth-real", *TINY], "did you mean 'gta5'"),
    (["train", "--source", "synth-source", "--targets", "cityscape", *TINY], "did you mean 'cityscapes'"),
    (["train", "--source", "synth-source", "--targets", "", *TINY, "--crop", "0"], "crop"),
    (["train", "--source", "synth-source", "--targets", "", *TINY, "--crop", "-8"], "crop"),
    (["train", "--source", "synth-source", "--targets", "", *TINY, "--log-every", "0"], "log_every"),
    (["train", "--source", "synth-source", "--targets", "", *TINY, "--iters", "0"], "iters"),
    (["train", "--source", "synth-source", "--targets", "", *TINY, "--out", "notes.txt"], "notes.txt"),
    (["train", "--resume", *TINY], "--resume needs --out"),
    (["train", "--out", "runs/tiny", "--resume", "--iters", "9"], "the run has iters=4"),
    (["train", "--out", "runs/tiny", "--source", "synth-source", "--targets", "", *TINY], "already exists"),
    (["predict", "-c", "img.png", "img.png"], "img.png is an image, not a model checkpoint"),
    (["predict", "-c", "protos.safetensors", "img.png"], "is a prototypes file, not a model checkpoint"),
    (["predict", "missing.safetensors", "img.png"], "missing.safetensors"),
    (["predict", "runs/tiny/last.safetensors", "img.png", "--out", "notes.txt"], "notes.txt is a file"),
    (["predict", "runs/tiny/last.safetensors", "img.png", "--format", "mask"], "Unknown output format"),
    (["predict", "img.png", "--json", "true"], "--json is a flag"),
    (["prototypes", "build", "--model", "tiny", "--out", "runs/tiny/last.safetensors"], "is a model checkpoint"),
    (["prototypes", "build", "--model", "tiny", "--out", "protos.safetensors"], "pass --force"),
    (["prototypes", "build", "--model", "tiny", "--out", "notes.txt", "--force"], "notes.txt is a file, not"),
    (["prototypes", "build", "--model", "tiny", "--out", "a-folder"], "is a folder"),
    (["prototypes", "show", "runs/tiny/last.safetensors"], "is a model checkpoint, not a prototypes file"),
    (["eval", "runs/tiny/last.safetensors", "--target", "synth-real"], "did you mean --targets?"),
    (["eval", "runs/tiny/last.safetensors", "--targets", ""], "--targets is empty"),
    (["eval", "runs/tiny/last.safetensors", "--format", "labelid"], "No such option: --format"),
    (["eval", "runs/tiny/last.safetensors", "--out", "notes.txt"], "notes.txt is a file"),
    (["eval", "img.png"], "img.png"),
    (["eval-predictions", "a-folder", "--target", "synth-real"], "no trainid prediction"),
    (["analyze-weights", "protos.safetensors"], "protos.safetensors"),
    (["analyze-weights", "--num", "0"], "--num"),
    (["data", "check", "synth-source", "--split", "tset"], "Unknown synth-source split 'tset'"),
    (["data", "list", "bdd0"], "did you mean 'bdd100k'"),
    (["data", "synth", "--out", "o", "--size", "0x10"], "HxW"),
]


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_1_and_changes_nothing(
    cli: Callable[..., Any], workdir: Path, args: list[str], needle: str
) -> None:
    before = _hashes(workdir)
    result = cli(*args)
    assert result.code == 1, (args, result.out, result.err)
    assert needle in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err + result.out
    assert _hashes(workdir) == before  # nothing the user had was changed
    assert not (workdir / "runs" / "ppar").exists() and not (workdir / "o").exists()  # no folder left behind


def test_a_locked_run_folder_names_the_process_that_holds_it(
    cli: Callable[..., Any], workdir: Path, live_pid: int
) -> None:
    import socket

    lock = workdir / "runs" / "tiny" / ".ppar.lock"
    lock.write_text(json.dumps({"pid": live_pid, "host": socket.gethostname(), "started": 0}))
    before = _hashes(workdir)
    result = cli("train", "--out", "runs/tiny", "--resume")
    assert result.code == 1 and f"runs/tiny is in use by pid {live_pid}" in result.err
    assert len(result.err.strip().splitlines()) == 1 and _hashes(workdir) == before
    # A lock whose process is gone (kill -9) is stale: the next run takes it over (and releases it).
    lock.write_text(json.dumps({"pid": 2**22 + 17, "host": socket.gethostname(), "started": 0}))
    result = cli("train", "--out", "runs/tiny", "--resume")
    assert result.code == 0, result.err
    assert not lock.exists()


def test_a_bad_target_label_stops_the_run_at_step_0(cli: Callable[..., Any], workdir: Path, tiny_run: Any) -> None:
    target = workdir / "target"
    shutil.copytree(tiny_run.data_root / "synth-real", target)
    write_png(target / "labels" / sorted(os.listdir(target / "labels"))[1], np.full((64, 128), 77, np.uint8))
    args = ["train", "--source", "synth-source", "--targets", f"synth-real={target}", *TINY, "--out", "runs/bad"]
    result = cli(*args, "--set", "data.skip_bad=false")
    assert result.code == 1 and "contains values 77" in result.err and "target synth-real" in result.err
    assert not (workdir / "runs" / "bad").exists()  # stopped before the first step: no run folder
    # With data.skip_bad (the default) the pair is skipped, and counted and named where the run reports.
    result = cli(*args, "--set", "data.eval_max_images=3")
    assert result.code == 0, result.err
    report = json.loads((workdir / "runs" / "bad" / "eval.json").read_text())
    bad = report["bad_samples"]["targets"]["synth-real"]
    assert len(bad) == 1 and "contains values 77" in bad[0]
    assert report["targets"]["synth-real"]["skipped"] == [sorted(os.listdir(target / "labels"))[1][:-4]]
    assert report["targets"]["synth-real"]["images"] == 2
    from ppar_core.checkpoint import load_checkpoint

    meta = load_checkpoint(workdir / "runs" / "bad" / "last.safetensors").meta
    assert meta["bad_samples"]["targets"] == report["bad_samples"]["targets"]


def test_eval_prints_its_tables_even_when_it_cannot_write(
    cli: Callable[..., Any], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ppar_core.evaluation.report as report_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report_module, "atomic_write", refuse)
    result = cli("eval", "runs/tiny/last.safetensors", "--max-images", "1", "--device", "cpu")
    assert result.code == 1 and "Could not write the report" in result.err
    assert "IoU per class" in result.out and "Summary" in result.out  # the result reached the user anyway


def test_eval_predictions_warns_with_a_count_when_values_are_not_trainids(
    cli: Callable[..., Any], workdir: Path, tiny_run: Any
) -> None:
    preds = workdir / "preds"
    labels = sorted((tiny_run.data_root / "synth-real" / "labels").glob("*.png"))
    for path in labels:
        write_png(preds / path.name, np.full((64, 128), 26, np.uint8))  # 26: a Cityscapes labelId (car)
    result = cli("eval-predictions", preds, "--target", "synth-real", "--json")
    assert result.code == 0, result.err
    assert f"{len(labels) * 64 * 128} prediction pixels" in result.err and "--format labelid" in result.err
