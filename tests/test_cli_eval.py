"""`ppar eval`: the JSON shape, the written report, ACDC per condition, saved predictions, one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ppar_core.data.registry import dataset_info
from ppar_core.evaluation.report import build_eval_report, per_class_table, report_name
from ppar_core.evaluation.targets import Target, target_protocol
from ppar_core.files import file_sha256
from ppar_core.labels import CLASS_NAMES, SYNTHIA16_TRAIN_IDS
from ppar_core.metrics import SegMetrics
from ppar_core.protocol import InferenceConfig

TARGET_KEYS = {"miou", "per_class", "acc", "macc", "images"}


def _eval_json(cli: Any, *args: Any) -> dict:
    result = cli("eval", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)  # stdout holds exactly one JSON object


def test_eval_json_shape_and_written_report(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    report = _eval_json(
        cli,
        tiny_run.checkpoint,
        "--targets",
        "synth-real,synth-fog",
        "--data-root",
        tiny_run.data_root,
        "--device",
        "cpu",
        "--out",
        tmp_path,
        "--max-images",
        "3",
    )
    assert set(report) == {"targets", "mean_miou", "protocol", "sources"}
    assert report["sources"] == ["synth-source"]  # what the evaluated model was trained on
    assert list(report["targets"]) == ["synth-real", "synth-fog"]
    for entry in report["targets"].values():
        assert set(entry) == TARGET_KEYS
        assert list(entry["per_class"]) == list(CLASS_NAMES)
        assert all(v is None or 0.0 <= v <= 100.0 for v in entry["per_class"].values())
        assert 0.0 <= entry["miou"] <= 100.0 and entry["images"] == 3
    mean = sum(e["miou"] for e in report["targets"].values()) / 2
    assert report["mean_miou"] == pytest.approx(mean)
    protocol = report["protocol"]
    # the checkpoint's eval protocol (synth-tiny: whole image), its step and its file hash
    assert protocol["mode"] == "whole" and protocol["tta"] == "none" and protocol["split"] == "val"
    assert protocol["step"] == 4 and protocol["checkpoint"] == str(tiny_run.checkpoint)
    assert protocol["sha256"] == file_sha256(tiny_run.checkpoint)
    assert protocol["mapillary_map"] == "id" and protocol["per_target"] == {}
    written = tmp_path / "eval_synth-real+synth-fog_whole_first3.json"
    assert report_name(report) == written.name
    assert json.loads(written.read_text()) == report
    rows = list(csv.reader((tmp_path / "eval_synth-real+synth-fog_whole_first3_per_class.csv").open()))
    assert rows[0] == ["class", "synth-real", "synth-fog"] and rows[-1][0] == "mIoU"
    assert float(rows[-1][1]) == pytest.approx(report["targets"]["synth-real"]["miou"], abs=0.005)


def test_flags_override_the_checkpoint_protocol(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    report = _eval_json(
        cli,
        tiny_run.checkpoint,
        "--targets",
        "synth-real",
        "--data-root",
        tiny_run.data_root,
        "--device",
        "cpu",
        "--inference",
        "slide",
        "--crop",
        "64",
        "--stride",
        "32",
        "--tta",
        "flip",
        "--out",
        tmp_path,
        "--max-images",
        "1",
    )
    protocol = report["protocol"]
    assert (protocol["mode"], protocol["crop_size"], protocol["stride"], protocol["tta"]) == ("slide", 64, 32, "flip")


def test_eval_of_saved_predictions_equals_eval_of_the_model(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    images = tiny_run.data_root / "synth-real" / "images"
    preds = tmp_path / "preds"
    result = cli(
        "predict", tiny_run.checkpoint, images, "--out", preds, "--format", "trainid,labelid", "--device", "cpu"
    )
    assert result.code == 0, result.err
    common = ("--data-root", tiny_run.data_root, "--out", tmp_path / "reports")
    model = _eval_json(cli, tiny_run.checkpoint, "--targets", "synth-real", "--device", "cpu", *common)
    for fmt in ("trainid", "labelid"):
        result = cli("eval-predictions", preds, "--target", "synth-real", "--format", fmt, *common, "--json")
        assert result.code == 0, result.err
        saved = json.loads(result.out)
        a, b = model["targets"]["synth-real"], saved["targets"]["synth-real"]
        assert b["images"] == a["images"] == 6
        for key in ("miou", "acc", "macc"):
            assert b[key] == pytest.approx(a[key]), key
        assert b["per_class"] == pytest.approx(a["per_class"])
        assert saved["protocol"]["format"] == fmt


def _acdc_from_synth(synth: Path, root: Path) -> None:
    """One image per condition, in the ACDC layout, copied from a synthetic domain (labels are trainIds)."""
    images = sorted((synth / "images").glob("*.png"))
    for cond, image in zip(("fog", "night", "rain", "snow"), images, strict=False):
        name = f"GOPR{cond}_frame"
        (root / "rgb_anon" / cond / "val" / "seq").mkdir(parents=True)
        (root / "gt" / cond / "val" / "seq").mkdir(parents=True)
        shutil.copy(image, root / "rgb_anon" / cond / "val" / "seq" / f"{name}_rgb_anon.png")
        shutil.copy(synth / "labels" / image.name, root / "gt" / cond / "val" / "seq" / f"{name}_gt_labelTrainIds.png")


def test_acdc_is_one_pooled_target_with_conditions_as_sub_rows(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    _acdc_from_synth(tiny_run.data_root / "synth-real", tmp_path / "acdc")
    report = _eval_json(
        cli, tiny_run.checkpoint, "--targets", f"acdc={tmp_path / 'acdc'}", "--device", "cpu", "--out", tmp_path
    )
    acdc = report["targets"]["acdc"]
    assert list(acdc["conditions"]) == ["fog", "night", "rain", "snow"]
    assert acdc["pooled"] == ["acdc-fog", "acdc-night", "acdc-rain", "acdc-snow"]
    conds = list(acdc["conditions"].values())
    assert all(c["images"] == 1 for c in conds) and acdc["images"] == 4
    # "ACDC all": the four images scored as one dataset, the same as `acdc` evaluated as one folder would be.
    pooled = _eval_json(
        cli,
        tiny_run.checkpoint,
        "--targets",
        f"synth-real={tiny_run.data_root / 'synth-real'}",
        "--device",
        "cpu",
        "--out",
        tmp_path / "all",
        "--max-images",
        "4",
    )["targets"]["synth-real"]
    assert acdc["miou"] == pytest.approx(pooled["miou"]) and acdc["per_class"] == pytest.approx(pooled["per_class"])
    assert report["mean_miou"] == pytest.approx(acdc["miou"])  # one target: its conditions do not count again
    header, _ = per_class_table(report)
    assert header == ["class", "acdc", "acdc-fog", "acdc-night", "acdc-rain", "acdc-snow"]


def test_one_line_errors(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    cases = [
        (("eval", tmp_path / "missing.safetensors"), "missing.safetensors"),
        (("eval", tiny_run.checkpoint, "--targets", "kitti", "--data-root", tiny_run.data_root), "kitti"),
        (("eval-predictions", tmp_path, "--target", "synth-real", "--data-root", tiny_run.data_root), "6 of 6"),
        (("eval", tiny_run.checkpoint, "--targets", ""), "--targets is empty"),
    ]
    for args, needle in cases:
        result = cli(*args)
        assert result.code == 1, args
        assert needle in result.err and "Traceback" not in result.err
        assert len(result.err.strip().splitlines()) == 1, result.err


def _metrics(per_class: dict[int, float]) -> SegMetrics:
    values = [per_class.get(i) for i in range(19)]
    defined = [v for v in values if v is not None]
    return SegMetrics(per_class_iou=values, miou=sum(defined) / len(defined), acc=90.0, macc=80.0, images=2)


def _target(name: str) -> Target:
    """A target row as build_targets makes it (no images: the report only needs its name and protocol facts)."""
    info = dataset_info(name)
    return Target(name, None, target_protocol(info, InferenceConfig()), name, classes=info.classes)


def test_synthia_reports_16_and_19_class_miou() -> None:
    # IoU 60 on every SYNTHIA class, 0 on terrain (9), truck (14) and train (16): mIoU-16 = 60, mIoU-19 = 60*16/19
    result = _metrics({i: (60.0 if i in SYNTHIA16_TRAIN_IDS else 0.0) for i in range(19)})
    targets = [_target("synthia"), _target("cityscapes")]
    results = {"synthia": result, "cityscapes": result}
    report = build_eval_report(targets, results, inference=InferenceConfig(), split="val", mapillary_map="id")
    assert report["targets"]["synthia"]["miou_16"] == pytest.approx(60.0)
    assert report["targets"]["synthia"]["miou_19"] == pytest.approx(60.0 * 16 / 19)
    assert "miou_16" not in report["targets"]["cityscapes"]  # only a synthia target, unless trained on synthia
    trained = build_eval_report(
        [_target("cityscapes")],
        {"cityscapes": result},
        inference=InferenceConfig(),
        split="val",
        mapillary_map="id",
        sources=["gta5", "synthia"],
    )
    assert trained["sources"] == ["gta5", "synthia"] and "sources" not in report
    assert trained["targets"]["cityscapes"]["miou_16"] == pytest.approx(60.0)
    assert trained["mean_miou_16"] == pytest.approx(60.0)


def test_mapillary_defaults_to_long_side_2048_unless_a_scale_is_given() -> None:
    base = InferenceConfig()
    mapillary = dataset_info("mapillary")
    assert target_protocol(mapillary, base).long_side == 2048
    assert target_protocol(mapillary, InferenceConfig(scale=0.5)) == InferenceConfig(scale=0.5)
    assert target_protocol(mapillary, InferenceConfig(long_side=1024)).long_side == 1024
    assert target_protocol(dataset_info("cityscapes"), base) == base
    report = build_eval_report(
        [_target("mapillary")], {"mapillary": _metrics({0: 50.0})}, inference=base, split="val", mapillary_map="name"
    )
    assert report["protocol"]["per_target"] == {"mapillary": {"long_side": 2048}}
    assert report["protocol"]["mapillary_map"] == "name"


def test_training_report_records_the_run_protocol(tmp_path: Path) -> None:
    from ppar_core.config import get_train_preset
    from ppar_core.evaluation.report import training_report, write_eval_report

    checkpoint = tmp_path / "last.safetensors"
    checkpoint.write_bytes(b"stand-in bytes")  # only hashed here
    cfg = get_train_preset("synth-tiny")
    targets = [Target("synth-real", None, cfg.eval, "synth-real")]
    results = {"synth-real": _metrics({0: 40.0, 1: 20.0})}
    report = training_report(cfg, targets, results, checkpoint=checkpoint, step=4)
    assert report["targets"]["synth-real"]["miou"] == pytest.approx(30.0)
    assert report["protocol"]["sha256"] == file_sha256(checkpoint) and report["protocol"]["step"] == 4
    assert report["protocol"]["max_images"] == 40 and report["protocol"]["mode"] == "whole"
    json_path, _ = write_eval_report(tmp_path / "eval.json", report)
    assert json.loads(json_path.read_text()) == report


def test_training_report_equals_ppar_eval_target_by_target(cli: Any, synth_root: Path, tmp_path: Path) -> None:
    # The one evaluation path: the report a run writes at its end and `ppar eval` on its checkpoint (defaults: the
    # run's own targets and protocol) are the same, ACDC (one pooled target with four sub-rows) included.
    from conftest import tiny_train_config

    from ppar_core.engine.train import train

    _acdc_from_synth(synth_root / "synth-real", tmp_path / "acdc")
    targets = [f"acdc={tmp_path / 'acdc'}", "synth-fog"]
    cfg = tiny_train_config(synth_root, tmp_path / "run", data={"targets": targets, "eval_max_images": 3})
    result = train(cfg)
    trained = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert trained == result.report
    evaluated = _eval_json(cli, result.checkpoint, "--device", "cpu", "--max-images", "3")
    assert list(trained["targets"]) == list(evaluated["targets"]) == ["acdc", "synth-fog"]
    for name in trained["targets"]:
        assert evaluated["targets"][name] == trained["targets"][name], name
    assert list(trained["targets"]["acdc"]["conditions"]) == ["fog", "night", "rain", "snow"]
    assert evaluated["mean_miou"] == trained["mean_miou"] is not None
    mean = (trained["targets"]["acdc"]["miou"] + trained["targets"]["synth-fog"]["miou"]) / 2
    assert trained["mean_miou"] == pytest.approx(mean)  # two targets: ACDC counts once
    assert evaluated["protocol"] == trained["protocol"]
    # ppar eval wrote its report beside the checkpoint under its own name; the run's eval.json is untouched.
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == trained
    assert (tmp_path / "run" / report_name(evaluated)).exists() and report_name(evaluated) != "eval.json"
