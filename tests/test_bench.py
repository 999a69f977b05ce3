"""The benchmarks still run (a smoke run at toy size); their figures are measured by running them, not here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_benchmark_runs_and_prints_its_ratio_line() -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "train_step.py"), "--preset", "tiny", "--image-size", "64",
        "--batch-size", "2", "--repeats", "1", "--no-memory", "--no-mfu",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": ""}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"train_step ratio time=\d+\.\d+ memory=(\d+\.\d+|nan)", last), last
