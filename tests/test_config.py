"""Typed configs: strict loading, type-checked overrides, presets equal their example files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppar_cli.data import parse_resize as prepare_resize
from ppar_cli.data import parse_size
from ppar_core.analysis.weights import parse_resize as analysis_resize
from ppar_core.config import (
    TRAIN_PRESETS,
    TrainConfig,
    apply_overrides,
    config_diff,
    from_dict,
    load_toml,
    parse_hxw,
    resolve_config,
    to_dict,
)
from ppar_core.errors import PparError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(TRAIN_PRESETS))
def test_example_files_spell_out_the_presets(name: str) -> None:
    # Loaded over the plain defaults, the example file must give exactly the preset.
    loaded = load_toml(EXAMPLES / f"{name}.toml", base=TrainConfig())
    assert config_diff(loaded, TRAIN_PRESETS[name]) == []
    assert loaded == TRAIN_PRESETS[name]


def test_dict_round_trip_is_exact() -> None:
    for cfg in TRAIN_PRESETS.values():
        assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("iters = 10\n[optim]\nlrr = 0.1\n")
    with pytest.raises(PparError, match=r"bad\.toml.*Unknown config key 'optim\.lrr'"):
        load_toml(path, base=TrainConfig())


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('batch_size = "eight"\n')
    with pytest.raises(PparError, match=r"'batch_size' expects int, got 'eight'"):
        load_toml(path, base=TrainConfig())


def test_invalid_toml_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("iters = = 3\n")
    with pytest.raises(PparError, match=r"broken\.toml is not valid TOML"):
        load_toml(path, base=TrainConfig())


def test_overrides_are_type_checked() -> None:
    cfg = apply_overrides(TrainConfig(), ["optim.lr=3e-4", "data.targets=cityscapes,acdc", "model.vtp.kind=ema"])
    assert cfg.optim.lr == 3e-4
    assert cfg.data.targets == ("cityscapes", "acdc")
    assert cfg.model.vtp.kind == "ema"
    assert apply_overrides(TrainConfig(), ["optim.grad_clip=none"]).optim.grad_clip is None
    assert apply_overrides(TrainConfig(), ["optim.lr=1"]).optim.lr == 1.0  # ints widen to float
    with pytest.raises(PparError, match=r"'iters' expects int, got 2.5"):
        apply_overrides(TrainConfig(), ["iters=2.5"])
    with pytest.raises(PparError, match=r"Unknown config key 'loss\.nope'"):
        apply_overrides(TrainConfig(), ["loss.nope=1"])
    with pytest.raises(PparError, match=r"not of the form key=value"):
        apply_overrides(TrainConfig(), ["iters"])
    with pytest.raises(PparError, match=r"'data\.augment\.crop_size' expects 2 values"):
        apply_overrides(TrainConfig(), ["data.augment.crop_size=[1,2,3]"])


def test_validation_names_the_field() -> None:
    with pytest.raises(PparError, match=r"iters must be at least 1"):
        resolve_config(fields={"iters": 0})
    with pytest.raises(PparError, match=r"align"):
        resolve_config(fields={"loss.align": "sideways"})
    with pytest.raises(PparError, match=r"kind"):
        resolve_config(fields={"model.vtp.kind": "nope"})


def test_precedence_preset_file_flags_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("iters = 7\nbatch_size = 3\n[loss]\nreweight = 'ratio'\n")
    cfg = resolve_config(
        preset="synth-tiny",
        config_file=path,
        fields={"iters": 9, "data.augment.crop_size": [64, 64], "loss.method": None},
        overrides=["batch_size=5"],
    )
    assert cfg.model.preset == "tiny"  # from the preset
    assert cfg.loss.reweight == "ratio"  # from the file
    assert cfg.iters == 9  # flag beats file
    assert cfg.batch_size == 5  # --set beats everything
    assert cfg.data.augment.crop_size == (64, 64)
    assert cfg.loss.method == "ppar"  # a flag left out (None) changes nothing


def test_toml_may_name_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('preset = "synth-tiny"\niters = 11\n')
    cfg = load_toml(path, base=TrainConfig())
    assert cfg.model.preset == "tiny" and cfg.iters == 11


GOOD_SIZES = {"720x1280": (720, 1280), " 64 X 128 ": (64, 128), "1x1": (1, 1)}
BAD_SIZES = ["720", "720x", "x1280", "0x5", "5x0", "-1x5", "7.5x10", "720x1280x3", "big", ""]


def test_one_size_grammar_for_every_option_that_takes_hxw() -> None:
    # Each caller words its own error, but all accept and refuse the same texts (bench/common.size_arg too:
    # tests/test_bench.py).
    for text, size in GOOD_SIZES.items():
        assert parse_hxw(text) == size
        assert parse_size(text) == prepare_resize(text) == size
        assert analysis_resize(text, run_resize=None) == size
    for text in BAD_SIZES:
        assert parse_hxw(text) is None
        for parse in (parse_size, prepare_resize, lambda t: analysis_resize(t, run_resize=None)):
            with pytest.raises(PparError, match="HxW"):
                parse(text)
