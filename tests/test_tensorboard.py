"""`--log tensorboard`: the event files mirror metrics.jsonl (read back with TensorBoard's own reader), carry the
overlays and the weight histograms, and a missing package is one sentence before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ppar_core.labels import CLASS_NAMES
from ppar_core.loading import load_segmentor
from tests.conftest import tiny_train_config

pytest.importorskip("tensorboard")


def _events(run: Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_event_files_mirror_metrics_jsonl(synth_root: Path, tmp_path: Path) -> None:
    from ppar_core.engine.train import train

    out = tmp_path / "run"
    train(tiny_train_config(synth_root, out, log="tensorboard", eval_every=2))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = _events(out)
    tags = events.Tags()

    steps = [r for r in records if "eval" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("total", "lr", "grad_norm"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in steps]

    evaluations = [r for r in records if "eval" in r]
    assert [r["step"] for r in evaluations] == [2]  # the final evaluation goes to eval.json, and to TensorBoard
    final = json.loads((out / "eval.json").read_text())
    mious = [(e.step, e.value) for e in events.Scalars("eval/synth-real")]
    assert mious == [
        (2, pytest.approx(evaluations[0]["eval"]["synth-real"], rel=1e-6)),
        (4, pytest.approx(final["targets"]["synth-real"]["miou"], rel=1e-6)),
    ]

    # Per evaluation, two 64x128 images' overlays (ground truth above prediction), tiled side by side.
    images = events.Images("overlays/synth-real")
    assert {image.step for image in images} == {2, 4}
    assert {(image.height, image.width) for image in images} == {(2 * 64, 2 * 128)}
    # Weight histograms: at the end, one per class with pixels, equal to the checkpoint's statistics.
    model, _, _ = load_segmentor(out / "last.safetensors")
    stats = model.weight_stats
    seen = [k for k, name in enumerate(CLASS_NAMES) if stats.count[k] > 0]
    assert seen
    assert sorted(t for t in tags["histograms"] if t.startswith("weights/")) == sorted(
        f"weights/{CLASS_NAMES[k]}" for k in seen
    )
    steps_logged = set()
    for k in seen:
        by_step = {h.step: h.histogram_value for h in events.Histograms(f"weights/{CLASS_NAMES[k]}")}
        steps_logged |= set(by_step)
        final_hist = by_step[4]
        assert final_hist.num == pytest.approx(float(stats.count[k]))
        assert final_hist.sum == pytest.approx(float(stats.sum[k]), rel=1e-6)
        assert list(final_hist.bucket) == pytest.approx(stats.hist[k].double().tolist())
    assert steps_logged <= {2, 4}  # only at evaluations (step 2 has them if reweighting had started by then)


def test_missing_tensorboard_is_one_sentence_before_any_work(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppar_core.engine.train import train
    from ppar_core.errors import PparError

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    out = tmp_path / "run"
    with pytest.raises(PparError, match=r"pip install 'ppar\[tensorboard\]'"):
        train(tiny_train_config(synth_root, out, log="tensorboard"))
    assert not out.exists()  # refused before the run folder was made


def test_an_unknown_logger_is_one_sentence(synth_root: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("train", "--preset", "synth-tiny", "--log", "wandb", "--out", str(tmp_path / "r"))
    assert result.code == 1
    assert "log must be one of none, tensorboard" in result.err
