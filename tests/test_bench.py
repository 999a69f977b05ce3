"""The benchmarks still run (a smoke run at toy size); their figures are measured by running them, not here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _last_line(args: list[str]) -> str:
    """Run a benchmark offline (no $OUT) and return the last line it printed; it must exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": ""}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_train_step_benchmark_runs_and_prints_its_ratio_line() -> None:
    args = [
        sys.executable,
        str(ROOT / "bench" / "train_step.py"),
        "--preset",
        "tiny",
        "--image-size",
        "64",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--no-memory",
        "--no-mfu",
    ]
    last = _last_line(args)
    assert re.fullmatch(r"train_step ratio time=\d+\.\d+ memory=(\d+\.\d+|nan)", last), last


@pytest.mark.slow
def test_inference_benchmark_runs_and_prints_its_ratio_line(tmp_path: Path) -> None:
    args = [
        sys.executable,
        str(ROOT / "bench" / "inference.py"),
        "--height",
        "96",
        "--width",
        "160",
        "--crop",
        "64",
        "--stride",
        "48",
        "--repeats",
        "1",
        "--folder-images",
        "1",
        "--json",
        str(tmp_path / "inference.json"),
    ]
    last = _last_line(args)
    assert re.fullmatch(r"inference ratio time=\d+\.\d+ memory=\d+\.\d+", last), last
    results = json.loads((tmp_path / "inference.json").read_text())
    assert results["predict"]["images"] == 1 and results["memory"]["ppar"]["peak_bytes"] > 0


@pytest.mark.slow
def test_synth_speed_benchmark_runs_and_prints_its_line() -> None:
    last = _last_line([sys.executable, str(ROOT / "bench" / "synth_speed.py"), "--num", "2", "--size", "32x64"])
    assert re.fullmatch(r"synth images_per_s=\d+\.\d+", last), last


@pytest.mark.slow
def test_onnx_benchmark_runs_and_prints_its_ratio_line(tmp_path: Path) -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "onnx_inference.py"), "--preset", "tiny", "--height", "96", "--width",
        "160", "--crop", "64", "--stride", "48", "--repeats", "1", "--no-check", "--json", str(tmp_path / "onnx.json"),
    ]  # fmt: skip
    last = _last_line(args)
    assert re.fullmatch(r"onnx ratio time=\d+\.\d+ agreement=(0|1)\.\d+", last), last
    results = json.loads((tmp_path / "onnx.json").read_text())
    assert results["export"]["size_bytes"] > 0 and results["agreement"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_data_pipeline_benchmark_runs_and_prints_its_ratio_line(tmp_path: Path) -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "data_pipeline.py"), "--frames", "2", "--size", "96x160", "--samples",
        "2", "--repeats", "1", "--workers", "1", "--json", str(tmp_path / "data.json"),
    ]  # fmt: skip
    last = _last_line(args)
    assert re.fullmatch(r"data ratio prepared=\d+\.\d+ original=\d+\.\d+", last), last
    results = json.loads((tmp_path / "data.json").read_text())
    assert set(results["samples_per_s_one_core"]) == {"v0.1", "original", "png", "jpeg"}
    assert results["png_bytes_per_frame"] > results["jpeg_bytes_per_frame"] > 0


@pytest.mark.slow
def test_eval_speed_benchmark_runs_and_says_both_loops_agree(tmp_path: Path) -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "eval_speed.py"), "--images", "2", "--size", "64x128", "--repeats", "1",
        "--json", str(tmp_path / "eval.json"),
    ]  # fmt: skip
    last = _last_line(args)
    assert re.fullmatch(r"eval ratio time=\d+\.\d+ miou_equal=True", last), last


@pytest.mark.slow
def test_end_to_end_training_benchmark_runs_and_projects_the_protocol(tmp_path: Path) -> None:
    args = [
        sys.executable, str(ROOT / "bench" / "train_e2e.py"), "--device", "cpu", "--preset", "tiny", "--frames", "4",
        "--size", "128x256", "--resize", "64x128", "--crop", "32", "--batch", "2", "--steps", "4", "--log-every", "2",
        "--eval-images", "1", "--eval-size", "128x256", "--workers", "1", "--json", str(tmp_path / "e2e.json"),
    ]  # fmt: skip
    last = _last_line(args)
    match = re.fullmatch(
        r"e2e samples_per_s=(\d+\.\d) median_step_ms=(\d+\.\d) data_wait=(\d\.\d{3}) projected_min=(\d+\.\d)", last
    )
    assert match, last
    results = json.loads((tmp_path / "e2e.json").read_text())
    # The run's own log records (after step 1, then every 2 steps); the first window is left out of the figures.
    assert [r["step"] for r in results["records"]] == [1, 2, 4] and results["windows"] == 2
    # The projection is the protocol's steps at the measured median step plus 500 images at the measured rate.
    expected = (20_000 * results["median_step_s"] + 500 * results["eval_seconds_per_image"]) / 60.0
    assert results["projected_minutes"] == pytest.approx(expected) and 0.0 <= results["data_wait"] <= 1.0


def test_a_bad_size_is_an_argparse_error_not_a_traceback() -> None:
    # bench/common.size_arg parses sizes with the one grammar (ppar_core.config.parse_hxw): "0x5" is refused.
    args = [sys.executable, str(ROOT / "bench" / "synth_speed.py"), "--size", "0x5"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "expected HEIGHTxWIDTH" in proc.stderr and "Traceback" not in proc.stderr
