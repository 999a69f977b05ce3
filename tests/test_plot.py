"""`ppar plot`: real pictures of every run given, written atomically into --out; clear failures before any work."""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from conftest import CliResult, TinyRun
from PIL import Image

from ppar_cli import plot as plot_cli
from ppar_core.errors import PparError
from ppar_core.experiments.plots import COLOURS, PANEL_INCHES, ema, write_run_plots
from ppar_core.losses import LossConfig, schedule

FILES = ["loss.png", "miou.png", "schedule.png", "mean_weight.png"]


@pytest.fixture
def ppar(cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """`ppar ARGS` through the real entry point, with `ppar plot` mounted as ppar_cli.main will mount it."""
    import ppar_cli.main

    app = typer.Typer(name="ppar", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich")
    app.command("plot", help=plot_cli.HELP)(plot_cli.command)
    app.command("other", hidden=True)(lambda: None)  # two commands: `plot` stays a sub-command, as in ppar
    monkeypatch.setattr(ppar_cli.main, "app", app)
    return cli


def _long_run(folder: Path, *, method: str, seed: int, evals: bool = True) -> Path:
    """A run folder with a 3000-step log written as `ppar train` writes it: a record every 10 steps (losses decaying
    with noise, the real schedule of `method`), evaluations on three targets every 500 steps and a final eval.json."""
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    cfg = LossConfig(method=method)
    iters, lines = 3000, []
    for step in range(10, iters + 1, 10):
        beta, q, rho = schedule(step / iters, cfg)
        seg = 2.5 * math.exp(-step / 800) + 0.4 + rng.gauss(0, 0.08)
        pa = 0.0 if method == "erm" else 3.0 - 0.5 * step / iters + rng.gauss(0, 0.05)
        weight = 1.0 if method == "erm" else 1.0 - 0.05 * rho + rng.gauss(0, 0.01)
        record = {"step": step, "total": seg + 0.1 * pa, "seg": seg, "pa": pa, "vo": pa / 2, "mean_weight": weight,
                  "beta": beta, "q": q, "weight_ramp": rho, "lr": 1e-4, "img_per_s": 30.0}  # fmt: skip
        lines.append(json.dumps(record))
        if evals and step % 500 == 0 and step < iters:
            mious = {t: 20 + 8 * step / iters + k + rng.gauss(0, 0.5) for k, t in enumerate(["cs", "bdd", "map"])}
            lines.append(json.dumps({"step": step, "eval": mious, "mean_miou": sum(mious.values()) / 3}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if evals:
        final = {t: {"miou": 30.0 + k, "per_class": {}} for k, t in enumerate(["cs", "bdd", "map"])}
        report = {"targets": final, "mean_miou": 31.0, "protocol": {"step": iters}}
        (folder / "eval.json").write_text(json.dumps(report))
    return folder


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _has_colour(pixels: np.ndarray, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= 12).sum()) > 50


def test_plot_writes_real_pictures_of_every_run(tiny_run: TinyRun, tmp_path: Path) -> None:
    runs = [_long_run(tmp_path / "ppar", method="ppar", seed=0), _long_run(tmp_path / "erm", method="erm", seed=1),
            tiny_run.out]  # fmt: skip
    result = write_run_plots(runs, tmp_path / "plots")
    assert [f.path.name for f in result.files] == FILES and result.skipped == ()
    for file in result.files:
        pixels = _pixels(file.path)
        assert pixels.shape[:2] == (file.height, file.width)  # the size the figure was laid out at
        assert file.width >= PANEL_INCHES[0] * 150 and file.height >= PANEL_INCHES[1] * 150
        # Not blank: a good share of the canvas is drawn (axes, text, curves), and it is not one flat colour.
        assert (pixels.min(axis=-1) < 200).mean() > 0.02
        # Every run's colour is in the picture: each run was drawn.
        for colour in COLOURS[:3]:
            assert _has_colour(pixels, colour), (file.path.name, colour)
    # Panels: four loss terms (2x2); four targets (cs, bdd, map; the tiny run's synth-real) and their mean (2x3).
    sizes = {f.path.name: (f.width, f.height) for f in result.files}
    assert sizes["loss.png"][0] == round(2 * PANEL_INCHES[0] * 150)
    assert sizes["miou.png"] == (round(3 * PANEL_INCHES[0] * 150), sizes["loss.png"][1])
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # written through atomic_write, nothing left behind


def test_plot_cli_replaces_only_its_own_files(tmp_path: Path, ppar: Callable[..., CliResult]) -> None:
    run = _long_run(tmp_path / "run", method="ppar", seed=0, evals=False)
    out = tmp_path / "plots"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "loss.png").write_bytes(b"an earlier plot")
    result = ppar("plot", run, "--out", out, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    # No evaluation logged: the mIoU figure is skipped with a note, the others are drawn.
    assert [Path(f["path"]).name for f in data["files"]] == ["loss.png", "schedule.png", "mean_weight.png"]
    assert len(data["skipped"]) == 1 and data["skipped"][0].startswith("miou.png not drawn")
    assert not (out / "miou.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert _pixels(out / "loss.png").shape[:2] == (data["files"][0]["height"], data["files"][0]["width"])


def test_plot_without_matplotlib_fails_with_the_install_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ppar: Callable[..., CliResult]
) -> None:
    run = _long_run(tmp_path / "run", method="ppar", seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an interpreter without matplotlib sees
    with pytest.raises(PparError, match=r"pip install 'ppar\[plots\]'"):
        write_run_plots([run], tmp_path / "plots")
    result = ppar("plot", run, "--out", tmp_path / "plots")
    assert result.code == 1
    assert result.err.strip().splitlines() == ["error: Plots need matplotlib, which is not installed: pip install "
                                               "'ppar[plots]'"]  # fmt: skip
    assert not (tmp_path / "plots").exists()  # checked before any work


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: ([tmp / "run"], tmp / "file.txt" / "plots"), "file.txt is a file, so"),
        (lambda tmp: ([tmp], tmp / "plots"), "no metrics.jsonl"),
    ],
    ids=["unwritable-out", "not-a-run"],
)
def test_plot_bad_input_is_one_line_and_exit_1(
    tmp_path: Path, ppar: Callable[..., CliResult], make: Callable[[Path], Any], message: str
) -> None:
    _long_run(tmp_path / "run", method="ppar", seed=0)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    runs, out = make(tmp_path)
    result = ppar("plot", *runs, "--out", out)
    assert result.code == 1 and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "plots").exists()  # checked before anything is created


def test_ema_is_debiased_and_skips_gaps() -> None:
    assert ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])  # no pull towards 0 at the start
    smoothed = ema([0.0, math.nan, 10.0], 0.5)
    assert smoothed[0] == 0.0 and math.isnan(smoothed[1])
    assert smoothed[2] == pytest.approx((0.5 * 0.5 * 0.0 + 0.5 * 10.0) / (0.5 * 0.5 + 0.5))
