"""`ppar train` and `ppar demo` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = ["--preset", "synth-tiny", "--batch-size", "2", "--set", "data.augment.crop_size=[64,128]"]


def test_help_has_examples(cli) -> None:
    for command in (["train"], ["demo"]):
        result = cli(*command, "--help")
        assert result.code == 0
        assert "Example" in result.out


def test_flags_reach_the_config(cli, synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli(
        "train",
        *TINY,
        "--data-root",
        synth_root,
        "--targets",
        "synth-real,synth-fog",
        "--iters",
        "2",
        "--reweight",
        "ratio",
        "--vtp",
        "mix",
        "--seed",
        "7",
        "--out",
        out,
        "--set",
        "data.eval_max_images=1",
    )
    assert result.code == 0, result.err
    config = json.loads((out / "config.json").read_text())
    assert config["loss"]["reweight"] == "ratio"
    assert config["model"]["vtp"]["kind"] == "mix"
    assert config["seed"] == 7 and config["iters"] == 2
    assert config["data"]["targets"] == ["synth-real", "synth-fog"]
    assert config["data"]["data_root"] == str(synth_root)
    assert config["model"]["pretrained"] is None  # tiny's default weights: random init, resolved at start
    assert "synth-real" in result.out and "synth-fog" in result.out and "mean" in result.out
    report = json.loads((out / "eval.json").read_text())
    assert set(report["targets"]) == {"synth-real", "synth-fog"}
    assert report["protocol"]["step"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "iters=many"], "'iters' expects int"),
        (["--set", "optim.nope=1"], "Unknown config key 'optim.nope'"),
        (["--align", "sideways"], "align"),
        (["--source", "synth-source=/no/such/folder"], "/no/such/folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(cli, tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("train", *TINY, "--out", tmp_path / "run", *args)
    assert result.code == 1
    assert message in result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(cli, tmp_path: Path) -> None:
    from ppar_core.errors import PparError

    with pytest.raises(PparError):
        cli("--debug", "train", *TINY, "--out", tmp_path / "run", "--set", "iters=many")


def test_demo_rejects_unknown_baseline(cli, tmp_path: Path) -> None:
    result = cli("demo", "--out", tmp_path, "--compare", "dino")
    assert result.code == 1 and "--compare erm" in result.err


def test_demo_refuses_a_folder_that_is_not_a_demo_folder(cli, tmp_path: Path) -> None:
    (tmp_path / "ppar").mkdir()
    (tmp_path / "ppar" / "last.safetensors").write_text("a run of the user's")
    result = cli("demo", "--out", tmp_path, "--prior", "none", "--iters", "1")
    assert result.code == 1 and ".ppar-demo" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert (tmp_path / "ppar" / "last.safetensors").read_text() == "a run of the user's"
    assert not (tmp_path / ".ppar-demo").exists()


def _small_prior(path: Path) -> Path:
    """A prior pretrained in about a second (2 steps on a pool of 4 small scenes): the demo's plumbing, not its
    figures."""
    from ppar_core.prior.pairs import PairsConfig
    from ppar_core.prior.pretrain import PretrainConfig, pretrain

    pairs = PairsConfig(
        render_size=(64, 128), scene_size=(64, 128), region_size=32, region_side=(16, 48), pool_size=4,
        refresh_per_step=1, scenes_per_step=4, regions_per_step=4, rois_per_scene=2, roi_side=(16, 32),
    )  # fmt: skip
    return pretrain(PretrainConfig(steps=2, warmup_steps=1, pairs=pairs), path).path


@pytest.mark.slow
def test_demo_end_to_end_with_comparison(cli, tmp_path: Path) -> None:
    prior = _small_prior(tmp_path / "prior.safetensors")
    out = tmp_path / "demo"
    result = cli("demo", "--out", out, "--iters", "3", "--compare", "erm", "--prior", prior)
    assert result.code == 0, result.err
    for column in ("ppar", "erm", "synth-real", "synth-night", "synth-fog", "mean", "Zero-shot"):
        assert column in result.out
    assert (out / ".ppar-demo").is_file()
    for method in ("ppar", "erm"):
        report = json.loads((out / method / "eval.json").read_text())
        assert set(report["targets"]) == {"synth-real", "synth-night", "synth-fog"}
        assert all(t["images"] == 40 for t in report["targets"].values())
        assert json.loads((out / method / "config.json").read_text())["model"]["pretrained"] == str(prior)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 6 and all(p.stat().st_size > 1000 for p in overlays)
    # A second run reuses the data and the prototypes (built with the prior), and replaces the runs.
    before = (out / "prototypes.safetensors").stat().st_mtime_ns
    assert cli("demo", "--out", out, "--iters", "2", "--prior", prior, "--no-check").code == 0
    assert (out / "prototypes.safetensors").stat().st_mtime_ns == before
    assert json.loads((out / "ppar" / "eval.json").read_text())["protocol"]["step"] == 2
