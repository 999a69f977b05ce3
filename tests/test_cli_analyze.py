"""`ppar analyze-weights` through the real entry point: tables, JSON schema, a run without reweighting, --compare,
your own image folder, and one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ppar_core.labels import CLASS_NAMES

CLASS_KEYS = {"mean", "hist", "low_fraction", "high_fraction", "pixels"}


@pytest.fixture(scope="module")
def none_run(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """A real 1-step run trained with --reweight none."""
    from conftest import tiny_train_config

    from ppar_core.engine.train import train

    out = tmp_path_factory.mktemp("none_run")
    cfg = tiny_train_config(synth_root, out, iters=1, batch_size=1, loss={"reweight": "none"})
    return train(cfg).checkpoint


def _check_schema(obj: dict, *, source: str) -> None:
    extra = {"mean_reliability"} if source == "data" else set()  # before normalisation: comparable across data
    assert set(obj) == {"source", "sources", "classes", "images", *extra} and obj["source"] == source
    if source == "data":
        assert 0.0 < obj["mean_reliability"] <= 1.0  # mode otp: the mean of p_OTP[y] over labelled pixels
    assert list(obj["classes"]) == list(CLASS_NAMES)
    for entry in obj["classes"].values():
        assert set(entry) == CLASS_KEYS
        assert len(entry["hist"]) == 20 and all(isinstance(c, int) for c in entry["hist"])
        assert isinstance(entry["pixels"], int) and sum(entry["hist"]) == entry["pixels"]
        assert entry["mean"] is None if entry["pixels"] == 0 else isinstance(entry["mean"], float)
        assert 0.0 <= entry["low_fraction"] <= 1.0 and 0.0 <= entry["high_fraction"] <= 1.0
    for image in obj["images"]:
        assert set(image) == {"file", "mean", "low_fraction"} and Path(image["file"]).is_file()


def test_help_has_an_example(cli: Callable) -> None:
    result = cli("analyze-weights", "--help")
    assert result.code == 0 and "Example" in result.out and "ppar analyze-weights" in result.out
    assert "ppar[plots]" in result.out  # the install hint survives rich markup


def test_checkpoint_json_schema_and_values(cli: Callable, tiny_run) -> None:
    from ppar_core.analysis.weights import load_weight_stats

    result = cli("analyze-weights", tiny_run.checkpoint, "--json")
    assert result.code == 0, result.err
    obj = json.loads(result.out)  # stdout holds the JSON object and nothing else
    _check_schema(obj, source="checkpoint")
    assert obj["images"] == []
    assert obj == json.loads(json.dumps(load_weight_stats(tiny_run.checkpoint).to_dict()))
    assert sum(e["pixels"] for e in obj["classes"].values()) == 4 * 2 * 64 * 128


def test_checkpoint_table_sorted_by_mean(cli: Callable, tiny_run) -> None:
    result = cli("analyze-weights", tiny_run.checkpoint)
    assert result.code == 0, result.err
    assert "weights applied in training" in result.out and "1 warm-up steps" in result.out
    obj = json.loads(cli("analyze-weights", tiny_run.checkpoint, "--json").out)["classes"]
    expected = sorted((n for n in obj if obj[n]["mean"] is not None), key=lambda n: obj[n]["mean"])
    rows = [line for line in result.out.splitlines() if line.startswith("│")]
    shown = [next(n for n in sorted(CLASS_NAMES, key=len, reverse=True) if row[2:].startswith(n)) for row in rows]
    assert shown[: len(expected)] == expected


def test_data_from_own_folder_json(cli: Callable, tiny_run, tmp_path: Path) -> None:
    folder = tiny_run.data_root / "synth-source"  # images/ and labels/ with trainId PNGs: the `folder` layout
    result = cli("analyze-weights", tiny_run.checkpoint, folder, "--num", "2", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    obj = json.loads(result.out)
    _check_schema(obj, source="data")
    assert len(obj["images"]) == 2 and all(Path(i["file"]).parent == folder / "images" for i in obj["images"])
    assert sum(e["pixels"] for e in obj["classes"].values()) == 2 * 64 * 128


def test_reweight_none_run(cli: Callable, none_run: Path, tiny_run, tmp_path: Path) -> None:
    result = cli("analyze-weights", none_run)
    assert result.code == 0, result.err
    assert "no weights were applied" in result.out and "--data" in result.out
    obj = json.loads(cli("analyze-weights", none_run, "--json").out)
    _check_schema(obj, source="checkpoint")
    assert all(e["pixels"] == 0 and e["mean"] is None for e in obj["classes"].values())

    args = ("--data", "synth-source", "--data-root", tiny_run.data_root, "--num", "1", "--device", "cpu")
    result = cli("analyze-weights", none_run, *args)
    assert result.code == 0, result.err
    assert "would have been" in result.out and "mode otp" in result.out
    obj = json.loads(cli("analyze-weights", none_run, *args, "--json").out)
    _check_schema(obj, source="data")
    assert sum(e["pixels"] for e in obj["classes"].values()) == 64 * 128


def test_compare_two_runs(cli: Callable, tiny_run, none_run: Path) -> None:
    result = cli("analyze-weights", tiny_run.checkpoint, "--compare", none_run, "--json")
    assert result.code == 0, result.err
    obj = json.loads(result.out)
    assert set(obj) == {"runs"} and list(obj["runs"]) == ["A", "B"]
    assert obj["runs"]["A"]["checkpoint"] == str(tiny_run.checkpoint)
    assert obj["runs"]["B"]["checkpoint"] == str(none_run)
    for run in obj["runs"].values():
        _check_schema({k: v for k, v in run.items() if k != "checkpoint"}, source="checkpoint")
    assert obj["runs"]["A"]["classes"]["road"]["pixels"] > 0 and obj["runs"]["B"]["classes"]["road"]["pixels"] == 0
    table = cli("analyze-weights", tiny_run.checkpoint, "--compare", none_run)
    assert table.code == 0 and "mean A" in table.out and "mean B" in table.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.safetensors"], "does not exist"),
        (["{ckpt}", "{root}", "--data", "synth-source"], "pass one of them"),
        (["{ckpt}", "--data", "synth-source", "--num", "0"], "--num must be at least 1"),
        (["{ckpt}", "--data", "synth-source", "--resize", "huge"], "--resize 'huge'"),
        (["{ckpt}", "{root}"], "images"),  # the data root itself has no images/ and labels/
        (["{ckpt}", "--by-source", "--data", "synth-source"], "--by-source reads the run's own sources"),
    ],
)
def test_errors_are_one_line(cli: Callable, tiny_run, args: list[str], message: str) -> None:
    filled = [a.format(ckpt=tiny_run.checkpoint, root=tiny_run.data_root) for a in args]
    result = cli("analyze-weights", *filled, "--data-root", tiny_run.data_root, "--device", "cpu")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: ") and message in result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err


def test_by_source_equals_each_source_analysed_on_its_own(cli: Callable, synth_root: Path, tmp_path: Path) -> None:
    from conftest import tiny_train_config

    from ppar_core.engine.train import train

    sources = ["synth-source", "synth-night"]
    cfg = tiny_train_config(synth_root, tmp_path / "run", iters=1, data={"targets": [], "source": sources})
    checkpoint = train(cfg).checkpoint
    result = cli("analyze-weights", checkpoint, "--by-source", "--num", "2", "--device", "cpu", "--json")
    assert result.code == 0, result.err
    per_source = json.loads(result.out)["by_source"]
    assert list(per_source) == sources
    for spec, report in per_source.items():
        _check_schema(report, source="data")
        assert report["sources"] == sources
        assert all(Path(i["file"]).parent == synth_root / spec / "images" for i in report["images"])
        alone = cli("analyze-weights", checkpoint, "--data", spec, "--num", "2", "--device", "cpu", "--json")
        assert json.loads(alone.out) == report  # the same analysis, one source at a time
    table = cli("analyze-weights", checkpoint, "--by-source", "--num", "2", "--device", "cpu")
    assert table.code == 0 and "Per training source" in table.out
    assert "trained on synth-source + synth-night" in table.out
