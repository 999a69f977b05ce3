"""Shared test fixtures. Tests never touch the network: HF_HUB_OFFLINE=1 and only the `tiny` preset."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `ppar ARGS...` in-process through the real entry point; returns exit code, stdout and stderr."""
    from ppar_cli.main import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@dataclass
class TinyRun:
    data_root: Path  # synthetic domains (synth-source, synth-real, ...), 64x128 images
    out: Path  # the run folder
    checkpoint: Path  # out / "last.safetensors"


def tiny_train_config(data_root: Path, out: Path, **changes: Any) -> Any:
    """The synth-tiny preset shrunk to seconds: 64x128 crops, batch 2, 4 steps, 2 target images."""
    from ppar_core.config import get_train_preset, merge

    base = {
        "out": str(out),
        "device": "cpu",
        "iters": 4,
        "batch_size": 2,
        "log_every": 1,
        "checkpoint_every": 2,
        "data": {
            "data_root": str(data_root),
            "targets": ["synth-real"],
            "augment": {"crop_size": [64, 128], "scale_range": [1.0, 1.0]},
            "eval_max_images": 2,
            "workers": 0,  # in-process: a worker process per tiny test run costs more than it saves
        },
        "optim": {"warmup_iters": 1},
    }
    return merge(merge(get_train_preset("synth-tiny"), base), changes)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic domains of 6 images each (64x128), made once per test session."""
    from ppar_core.data.synth import write_domains

    root = tmp_path_factory.mktemp("synth")
    write_domains(root, num=6, size=(64, 128), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> TinyRun:
    """A real 4-step PPAR training run of the tiny preset on the synthetic domains (shared, read-only)."""
    from ppar_core.engine.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    result = train(tiny_train_config(synth_root, out))
    return TinyRun(data_root=synth_root, out=out, checkpoint=result.checkpoint)
