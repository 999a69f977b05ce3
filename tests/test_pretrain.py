"""The embedded CLIP prior: captions, style sampling, the pair stream, pretraining, the prior file, zero-shot checks."""

from __future__ import annotations

import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from open_clip.loss import ClipLoss
from safetensors.torch import load_file
from typer.testing import CliRunner

import ppar_core.prior.pretrain as library
import ppar_core.prior.zeroshot as zeroshot
from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.clip.presets import get_preset
from ppar_core.clip.weights import build_clip_model, get_tokenizer, resolve_quick_gelu
from ppar_core.data.base import Sample
from ppar_core.data.synth import BUILTIN_STYLES, Style, generate_layout
from ppar_core.data.synth.captions import region_caption, sample_regions, scene_caption
from ppar_core.data.synth.random_styles import sample_style
from ppar_core.demo import cached_prior_path, ensure_prior
from ppar_core.errors import PparError
from ppar_core.evaluation.evaluate import evaluate_dataset
from ppar_core.labels import CLASS_NAMES, CLASS_WORDS, NUM_CLASSES
from ppar_core.prior.loss import batch_loss, encode_text_prefix
from ppar_core.prior.pairs import PairsConfig, PairStream, distinct_class_groups
from ppar_core.prior.pretrain import PretrainConfig, pretrain, read_prior_info
from ppar_core.prior.zeroshot import DenseZeroShot, recall_at
from ppar_core.protocol import InferenceConfig
from ppar_core.prototypes import build_prototypes, text_prototypes

# A recipe that pretrains in about a second: small scenes, a pool of 6, a few pairs per step.
SMALL_PAIRS = PairsConfig(
    render_size=(64, 128), scene_size=(64, 128), region_size=32, region_side=(16, 48), pool_size=6,
    refresh_per_step=1, scenes_per_step=6, regions_per_step=8, rois_per_scene=2, roi_side=(16, 32),
)  # fmt: skip
SMALL = PretrainConfig(steps=6, warmup_steps=2, pairs=SMALL_PAIRS)


def _mentions(caption: str) -> set[int]:
    """trainIds a caption names (any of the class's words, singular or plural)."""
    named = set()
    for k, name in enumerate(CLASS_NAMES):
        for word in CLASS_WORDS[name]:
            forms = {word, word + "s", word + "es", "people" if word == "person" else word}
            if any(re.search(rf"\b{re.escape(f)}\b", caption) for f in forms):
                named.add(k)
    return named


def test_captions_name_only_classes_present_in_the_layout() -> None:
    rng = np.random.default_rng(0)
    named_any: set[int] = set()
    for _ in range(25):
        layout = generate_layout(rng, (64, 128))
        present = set(np.unique(layout.labels).tolist())
        for style in (sample_style(rng), BUILTIN_STYLES["synth-night"]):
            caption = scene_caption(layout.labels, style, rng, max_classes=19)
            assert _mentions(caption) <= present, caption
            named_any |= _mentions(caption)
        for region in sample_regions(layout.labels, rng, num=6):
            crop = layout.labels[region.y0 : region.y1, region.x0 : region.x1]
            assert np.bincount(crop.ravel(), minlength=NUM_CLASSES).argmax() == region.class_id
            assert _mentions(region_caption(region.class_id, rng)) == {region.class_id}
    assert len(named_any) >= 15  # the captions do use the class vocabulary


def test_a_hand_built_scene_is_captioned_with_counts_positions_time_and_weather() -> None:
    labels = np.full((64, 128), CLASS_NAMES.index("road"), dtype=np.uint8)
    labels[:20] = CLASS_NAMES.index("sky")
    car = CLASS_NAMES.index("car")
    labels[30:40, 5:15] = car
    labels[30:40, 25:35] = car  # two separate cars, both on the left
    foggy_night = replace(Style(), ambient=0.05, haze_density=0.04)
    caption = scene_caption(labels, foggy_night, np.random.default_rng(1), max_classes=19)
    assert _mentions(caption) == {CLASS_NAMES.index("road"), CLASS_NAMES.index("sky"), car}
    assert "two cars" in caption and "at night" in caption and "fog" in caption


def test_sampled_styles_are_valid_and_span_day_night_and_fog() -> None:
    rng = np.random.default_rng(0)
    styles = [sample_style(rng) for _ in range(300)]
    for style in styles[:50]:
        assert Style.from_dict(style.to_dict()) == style  # every value within the style file ranges
    assert any(s.ambient < 0.1 for s in styles) and any(s.ambient > 0.9 for s in styles)
    assert any(s.haze_density > 0.04 for s in styles) and any(s.haze_density < 0.002 for s in styles)
    assert any(s.jpeg_quality is not None for s in styles) and any(s.noise > 0.03 for s in styles)


def test_pair_stream_is_a_function_of_seed_and_step() -> None:
    first = PairStream(SMALL_PAIRS, seed=3)
    first.start(0)
    batches = [first.batch(step) for step in range(4)]
    later = PairStream(SMALL_PAIRS, seed=3)
    later.start(2)  # the pool as it is before step 2, rebuilt from scratch
    for step in (2, 3):
        again = later.batch(step)
        assert np.array_equal(again.scenes, batches[step].scenes)
        assert again.scene_captions == batches[step].scene_captions
        assert np.array_equal(again.rois, batches[step].rois) and again.roi_captions == batches[step].roi_captions
    other = PairStream(SMALL_PAIRS, seed=4)
    other.start(0)
    assert not np.array_equal(other.batch(0).scenes, batches[0].scenes)
    assert batches[0].scenes.shape == (6, 3, 64, 128) and batches[0].scenes.dtype == np.uint8


def test_region_batches_never_repeat_a_class() -> None:
    groups = distinct_class_groups(np.array([3, 3, 5, 3, 5, 7]))
    assert [g.tolist() for g in groups] == [[0, 2, 5], [1, 4]]  # the lone third "3" has no negative: dropped
    assert [g.tolist() for g in distinct_class_groups(np.array([3, 3, 5, 3, 5, 7]), max_groups=1)] == [[0, 2, 5]]


def test_pretraining_lowers_the_contrastive_loss(tmp_path: Path) -> None:
    cfg = replace(SMALL, steps=30, lr=3e-3, pairs=replace(SMALL_PAIRS, refresh_per_step=0))
    stream = PairStream(cfg.pairs, seed=cfg.seed)
    stream.start(0)
    batch = stream.batch(0)  # a batch the run trains on (the pool never changes here, refresh 0)

    def loss_of(model: Any) -> float:
        encoder = DenseClipEncoder(model.visual, get_preset("tiny"))
        with torch.no_grad():
            return float(batch_loss(model.eval(), encoder, get_tokenizer("tiny"), batch, ClipLoss(),
                                    dense_regions=True)[0])  # fmt: skip

    torch.manual_seed(cfg.seed)
    before = loss_of(build_clip_model("tiny"))
    result = pretrain(cfg, tmp_path / "prior.safetensors")
    after = loss_of(build_clip_model("tiny", pretrained=str(result.path)))
    assert after < 0.9 * before, (before, after)  # measured: 4.16 -> 3.54


def test_the_prior_loads_through_pretrained_and_gives_the_same_embeddings(tmp_path: Path) -> None:
    result = pretrain(SMALL, tmp_path / "prior.safetensors")
    path = str(result.path)
    info = read_prior_info(path)
    assert info.complete and info.recipe == SMALL and info.step == SMALL.steps
    assert resolve_quick_gelu("tiny", path) is False  # from the file's metadata
    trained, loaded = result.model.eval(), build_clip_model("tiny", pretrained=path)
    images = torch.randn(2, 3, 64, 128)
    tokens = get_tokenizer("tiny")(["a photo of a bus.", "a street at night, with two cars."])
    with torch.no_grad():
        assert torch.equal(trained.encode_text(tokens), loaded.encode_text(tokens))
        tiny = get_preset("tiny")
        dense = DenseClipEncoder(loaded.visual, tiny)(images)
        reference = DenseClipEncoder(trained.visual, tiny)(images)
        assert torch.equal(dense.global_embedding, reference.global_embedding)
        assert torch.equal(dense.dense, reference.dense)
    # `ppar prototypes build --model tiny --pretrained FILE` gives the prototypes of the trained text tower.
    built = build_prototypes("tiny", pretrained=path, device="cpu")
    assert torch.equal(built.otp, text_prototypes(trained, "tiny", pretrained=path).otp)


def test_pretraining_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = load_file(str(pretrain(SMALL, tmp_path / "a.safetensors").path))
    b = load_file(str(pretrain(SMALL, tmp_path / "b.safetensors").path))
    c = load_file(str(pretrain(replace(SMALL, seed=1), tmp_path / "c.safetensors").path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_ctrl_c_saves_and_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    whole = load_file(str(pretrain(SMALL, tmp_path / "whole.safetensors").path))

    def interrupt_at_3(task: str, done: int, total: int) -> None:
        if done == 3:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does; the loop stops at the next step boundary

    path = tmp_path / "parts.safetensors"
    first = pretrain(SMALL, path, progress=interrupt_at_3)
    assert first.interrupted and first.step == 3 and read_prior_info(path).step == 3
    with pytest.raises(PparError, match="already exists"):
        pretrain(SMALL, path)
    with pytest.raises(PparError, match="steps"):
        pretrain(replace(SMALL, steps=9), path, resume=True)  # another recipe cannot continue this run
    second = pretrain(SMALL, path, resume=True)
    assert not second.interrupted and second.step == SMALL.steps
    resumed = load_file(str(path))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


class _StubEncoder(torch.nn.Module):
    """Dense 'embeddings' made by hand: channel c of the image averaged over each 16x16 patch, for c in 0, 1."""

    def forward(self, images: torch.Tensor) -> Any:
        dense = torch.nn.functional.avg_pool2d(images[:, :2], 16)
        return type("Out", (), {"dense": dense})()


def test_dense_zero_shot_on_a_hand_built_case() -> None:
    road, sky = CLASS_NAMES.index("road"), CLASS_NAMES.index("sky")
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:, :32, 0] = 255  # left half: channel 0 bright -> embedding (+, -) after normalisation
    image[:, 32:, 1] = 255  # right half: channel 1 bright -> embedding (-, +)
    label = np.full((32, 64), road, dtype=np.uint8)
    label[:, 32:] = sky
    prototypes = torch.full((NUM_CLASSES, 2), -1.0)
    prototypes[road] = torch.tensor([1.0, -1.0])
    prototypes[sky] = torch.tensor([-1.0, 1.0])
    scorer = DenseZeroShot(_StubEncoder(), prototypes)  # type: ignore[arg-type]
    protocol = InferenceConfig(mode="whole", batch_size=1, size_divisor=16)
    metrics = evaluate_dataset(scorer, [Sample(image, label, "x")], protocol, num_classes=NUM_CLASSES, device="cpu")
    assert metrics.per_class_iou[road] == pytest.approx(100.0) and metrics.per_class_iou[sky] == pytest.approx(100.0)
    assert metrics.miou == pytest.approx(100.0)
    swapped = DenseZeroShot(_StubEncoder(), prototypes[[*range(NUM_CLASSES)][::-1]])  # type: ignore[arg-type]
    assert evaluate_dataset(swapped, [Sample(image, label, "x")], protocol, num_classes=NUM_CLASSES,
                            device="cpu").miou == pytest.approx(0.0)  # fmt: skip


def test_recall_at_k_on_a_hand_built_similarity() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.3, 0.7]])  # row 1's match ranks second
    assert recall_at(similarity, 1) == pytest.approx(200 / 3)
    assert recall_at(similarity, 2) == pytest.approx(100.0)


def _cli() -> typer.Typer:
    from ppar_cli import pretrain as command_module

    app = typer.Typer()
    app.command("pretrain")(command_module.command)
    app.command("other")(lambda: None)  # a second command, so that `pretrain` stays a sub-command
    return app


def test_cli_passes_the_recipe_and_the_file_to_the_library(tmp_path: Path, monkeypatch) -> None:
    seen: dict[str, Any] = {}

    def fake_pretrain(cfg: PretrainConfig, out: Path, **kwargs: Any) -> Any:
        seen.update(cfg=cfg, out=out, **kwargs)
        return library.PretrainResult(path=Path(out), step=cfg.steps, interrupted=False)

    monkeypatch.setattr(library, "pretrain", fake_pretrain)
    monkeypatch.setattr(zeroshot, "check_prior", lambda *a, **k: pytest.fail("--no-check must skip the checks"))
    out = tmp_path / "p.safetensors"
    result = CliRunner().invoke(_cli(), ["pretrain", "--out", str(out), "--steps", "7", "--seed", "2",
                                         "--resume", "--no-check"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == PretrainConfig(steps=7, seed=2) and seen["out"] == out and seen["resume"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "p.pt"], "must end in .safetensors"),
        (["--out", "p.safetensors", "--resume", "--force"], "contradict"),
        (["--out", "p.safetensors", "--steps", "0"], "steps must be positive"),
        (["--out", "missing.safetensors", "--check-only"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(cli, tmp_path: Path, monkeypatch, args: list[str], message: str) -> None:
    from ppar_cli import pretrain as command_module

    monkeypatch.chdir(tmp_path)
    result = _run_through_main(cli, monkeypatch, command_module, args)
    assert result.code == 1, result.err
    assert message in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def _run_through_main(cli: Any, monkeypatch: Any, command_module: Any, args: list[str]) -> Any:
    """Mount the command on the real root app for this test only (the integrator mounts it for good)."""
    from ppar_cli import main

    if not any(c.name == "pretrain" for c in main.app.registered_commands):
        monkeypatch.setattr(main.app, "registered_commands", [*main.app.registered_commands])
        main.app.command("pretrain", help=command_module.HELP)(command_module.command)
    return cli("pretrain", *args)


def test_the_demo_builds_the_prior_once_then_reuses_its_cached_copy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PPAR_CACHE", str(tmp_path / "cache"))
    path, built = ensure_prior(SMALL)
    assert built is not None and path == cached_prior_path(SMALL) and (tmp_path / "cache") in path.parents
    stamp = path.stat().st_mtime_ns
    again, rebuilt = ensure_prior(SMALL)
    assert again == path and rebuilt is None and path.stat().st_mtime_ns == stamp
    assert cached_prior_path(replace(SMALL, seed=1)) != path  # another recipe, another cache entry


def test_the_short_text_forward_equals_open_clips_encode_text() -> None:
    model = build_clip_model("tiny").eval()
    tokens = get_tokenizer("tiny")(["a photo of a bus.", "a grainy photo of a street at night, with two cars."])
    with torch.no_grad():
        torch.testing.assert_close(encode_text_prefix(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
