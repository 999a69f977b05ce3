"""The three commands in the words of the person ppar is for, run as written in a working folder:
`ppar train --source gta5 --targets cityscapes,bdd`, `ppar predict img.png`, `ppar analyze-weights`.
Plus what a long run needs: a new folder per run, SIGTERM, and progress lines in a log file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ppar_core.checkpoint import load_checkpoint
from ppar_core.data.synth.layouts import write_in_layout
from ppar_core.imageio import write_png

ROOT = Path(__file__).resolve().parents[1]
# What makes the words runnable on a 2-core CPU in seconds; the words themselves come first, unchanged.
SMALL = [
    "--model", "tiny", "--pretrained", "none", "--iters", "2", "--batch-size", "1", "--crop", "64", "--device", "cpu",
    "--set", "data.eval_max_images=2", "--set", "eval.mode=whole",
]  # fmt: skip


@pytest.fixture(scope="module")
def real_layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic scenes stored as GTA5, Cityscapes and BDD100K store theirs, under one data root."""
    root = tmp_path_factory.mktemp("data")
    write_in_layout("gta5", root / "gta5", num=4, size=(64, 128))
    write_in_layout("cityscapes", root / "cityscapes", domain="synth-real", num=2, size=(64, 128))
    write_in_layout("bdd100k", root / "bdd100k", domain="synth-night", num=2, size=(64, 128))
    return root


@pytest.fixture
def workdir(tmp_path: Path, real_layouts: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPAR_DATA", str(real_layouts))
    monkeypatch.delenv("PPAR_CHECKPOINT", raising=False)
    return tmp_path


def test_the_three_commands_as_written(cli: Callable[..., Any], workdir: Path) -> None:
    words = ["train", "--source", "gta5", "--targets", "cityscapes,bdd"]
    # As written, the defaults are the paper's: CLIP ViT-B/16 with OpenAI's weights, which this offline machine
    # cannot download. The words parse, the datasets resolve (bdd is bdd100k), the plan is printed, and one error
    # line says what to do.
    result = cli(*words)
    assert result.code == 1 and "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--pretrained" in errors[0] and result.err.strip().endswith(errors[0][-40:])
    assert "targets  cityscapes, bdd" in result.err
    assert not (workdir / "runs" / "ppar").exists()  # nothing left behind by a run that could not start

    result = cli(*words, *SMALL)
    assert result.code == 0, result.err
    run = workdir / "runs" / "ppar"
    report = json.loads((run / "eval.json").read_text())
    assert list(report["targets"]) == ["cityscapes", "bdd100k"]  # the alias became the dataset's name
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["source"] == ["gta5"] and config["data"]["targets"] == ["cityscapes", "bdd"]
    for line in ("model", "steps", "source", "targets", "workers", "device"):
        assert any(row.strip().startswith(line) for row in result.err.splitlines()), line  # the plan, at start

    write_png(workdir / "img.png", np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8))
    result = cli("predict", "img.png")
    assert result.code == 0, result.err
    assert f"Model: {Path('runs/ppar/last.safetensors')} (the newest run)" in result.err
    written = sorted(p.name for p in (workdir / "runs" / "predict").iterdir())
    assert written == ["img_color.png", "img_labelid.png", "img_overlay.png", "img_trainid.png"]
    assert "runs/predict" in result.out

    result = cli("analyze-weights")
    assert result.code == 0, result.err
    assert "Analysing runs/ppar/last.safetensors (the newest run)" in result.err
    assert "Weights per class" in result.out

    # Run again: a new run folder and a new prediction folder, nothing replaced.
    assert cli(*words, *SMALL).code == 0
    assert cli("predict", "img.png").code == 0
    assert (workdir / "runs" / "ppar-2" / "last.safetensors").exists()
    assert (workdir / "runs" / "predict-2" / "img_trainid.png").exists()
    assert load_checkpoint(run / "last.safetensors").step == 2  # the first run is untouched


def test_progress_in_a_log_file_is_plain_lines(cli: Callable[..., Any], workdir: Path) -> None:
    # stderr is not a terminal here (captured), as in a log file, nohup or a cluster job.
    result = cli("train", "--source", "gta5", "--targets", "", *SMALL, "--iters", "4", "--log-every", "2")
    assert result.code == 0, result.err
    lines = result.err.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/4", "2/4", "4/4"]  # every log_every steps, and the first
    assert all(" eta " in line and "elapsed" in line and "loss" in line for line in steps)
    assert any(line.startswith("estimate: 4 steps take about") for line in lines)
    assert not any("\r" in line or "━" in line for line in lines)  # no bar drawn into the file


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_saves_and_resume_equals_an_uninterrupted_run(workdir: Path, real_layouts: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = ["--source", "gta5", "--targets", "", *SMALL, "--iters", "12", "--log-every", "1"]
    base = [sys.executable, "-m", "ppar_cli", "train", *common]
    subprocess.run([*base, "--out", "full"], env=env, check=True, capture_output=True)

    proc = subprocess.Popen([*base, "--out", "cut"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (workdir / "cut" / "metrics.jsonl").exists() and len(_records(workdir / "cut")) >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what `timeout`, SLURM and docker send
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "ppar train --out cut --resume" in err.decode()  # the hint says how to continue
    stopped = load_checkpoint(workdir / "cut" / "last.safetensors").step
    assert 3 <= stopped < 12
    subprocess.run([*base, "--out", "cut", "--resume"], env=env, check=True, capture_output=True)

    full, cut = (
        load_checkpoint(workdir / "full" / "last.safetensors"),
        load_checkpoint(workdir / "cut" / "last.safetensors"),
    )
    assert cut.step == full.step == 12
    assert all(torch.equal(full.tensors[k], cut.tensors[k]) for k in full.tensors)  # bit for bit
    assert [r["step"] for r in _records(workdir / "cut")] == list(range(1, 13))
    leftovers = [p.name for p in (workdir / "cut").iterdir() if p.name.endswith(".tmp") or p.name == ".ppar.lock"]
    assert leftovers == []
