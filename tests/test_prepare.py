"""Prepared copies (`ppar data prepare`): samples equal the original's, the manifest and its check, resume, bad input.

The source is the synthetic generator written in GTA5's own layout and encoding (palettised labelIds), 64x128
frames, prepared at 48x96 so that the copy's resize is a real one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import ppar_cli.data
import ppar_core.labels as labels
from ppar_core.data import build_dataset
from ppar_core.data.check import check_prepared
from ppar_core.data.datasets.prepared import MANIFEST_NAME, PARTIAL_NAME, manifest_digest
from ppar_core.data.prepare import prepare_dataset
from ppar_core.data.synth.layouts import write_in_layout
from ppar_core.data.transforms import TrainAugment
from ppar_core.engine.sampling import TrainSamples
from ppar_core.engine.start import prepared_copies
from ppar_core.errors import PparError

NUM = 6
SIZE = (48, 96)
AUGMENT = TrainAugment(resize=SIZE, scale_range=(0.5, 2.0), crop_size=(32, 64), cat_max_ratio=0.75)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_in_layout("gta5", tmp_path_factory.mktemp("gta5"), num=NUM, size=(64, 128))


@pytest.fixture(scope="module")
def png_copy(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PNG copy made by two worker processes (the pool path); read-only for the tests."""
    out = tmp_path_factory.mktemp("copies") / "png"
    prepare_dataset(f"gta5={source}", out, resize=SIZE, workers=2)
    return out


def _samples(spec: str, count: int = 2 * NUM) -> list[tuple[torch.Tensor, torch.Tensor, str, int, torch.Tensor]]:
    samples = TrainSamples(build_dataset(spec), AUGMENT, seed=7)
    return [samples[k] for k in range(count)]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.png")}


def test_png_copy_gives_bit_identical_training_samples(source: Path, png_copy: Path) -> None:
    original, prepared = _samples(f"gta5={source}"), _samples(f"gta5={png_copy}")
    for (image_a, label_a, bad_a, *_), (image_b, label_b, bad_b, *_) in zip(original, prepared, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b) and bad_a == bad_b == ""
    dataset = build_dataset(f"gta5={png_copy}")
    assert dataset.name == "gta5" and dataset.sample_name(0) == "synth_00000"
    assert dataset[0].image.shape == (*SIZE, 3) and dataset[0].label.shape == SIZE
    manifest = json.loads((png_copy / MANIFEST_NAME).read_text())
    assert dataset.prepared is not None and dataset.prepared["manifest_sha256"] == manifest["manifest_sha256"]
    assert (dataset.prepared["image_format"], dataset.prepared["lossy"]) == ("png", False)
    assert build_dataset(f"gta5={source}").prepared is None


def _png_row_filters(path: Path) -> tuple[int, set[int]]:
    """A PNG's zlib level class (FLEVEL bits of the zlib header) and the set of its rows' filter types, parsed from
    the chunks by hand (8-bit images only)."""
    data, offset, idat = path.read_bytes(), 8, b""
    while offset < len(data):
        (length,), kind = struct.unpack(">I", data[offset : offset + 4]), data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, _, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            row = 1 + width * {0: 1, 2: 3}[colour]
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    raw = zlib.decompress(idat)
    return idat[1] >> 6, {raw[i] for i in range(0, len(raw), row)}


def test_a_png_copy_is_written_to_decode_fast(png_copy: Path) -> None:
    # Stored images and labels carry no row filters (filter type 0 on every row): undoing filters is most of the
    # decode time of such a PNG. Labels are deflated; images are stored (zlib's fastest level class, 0).
    for image in (png_copy / "images").glob("*.png"):
        assert _png_row_filters(image) == (0, {0})
    for label in (png_copy / "labels").glob("*.png"):
        assert _png_row_filters(label)[1] == {0}


def test_jpeg_copy_is_marked_lossy_and_its_samples_are_close_not_equal(
    cli: Callable[..., Any], source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "jpeg"
    result = cli("data", "prepare", f"gta5={source}", "--out", out, "--resize", "48x96", "--format", "jpeg")
    assert result.code == 0, result.err
    assert "lossy" in result.out
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (manifest["image_format"], manifest["jpeg_quality"], manifest["lossy"]) == ("jpeg", 95, True)
    assert build_dataset(f"gta5={out}").prepared["lossy"] is True  # type: ignore[index]
    original, prepared = _samples(f"gta5={source}"), _samples(f"gta5={out}")
    differences = []
    for (image_a, label_a, *_), (image_b, label_b, *_) in zip(original, prepared, strict=True):
        assert torch.equal(label_a, label_b)  # labels stay lossless PNG, so the crops are the same
        differences.append((image_a.float() - image_b.float()).abs().mean().item())
    assert max(differences) > 0 and np.mean(differences) < 6


def test_manifest_round_trip_and_check_catch_changed_and_missing_files(
    cli: Callable[..., Any], png_copy: Path, tmp_path: Path
) -> None:
    manifest = json.loads((png_copy / MANIFEST_NAME).read_text())
    assert manifest["manifest_sha256"] == manifest_digest(manifest)
    assert manifest["origin"]["dataset"] == "gta5" and manifest["resize"] == list(SIZE)
    assert manifest["counts"] == {"source_pairs": NUM, "samples": NUM, "skipped": 0, "orphans": 0}
    assert manifest["mapping"]["id_map"] == "Cityscapes labelId" and manifest["ppar_version"]
    assert all(len(s["image_sha256"]) == 64 and (png_copy / s["label"]).is_file() for s in manifest["samples"])
    report = check_prepared(png_copy)
    assert report.ok and report.files_checked == 2 * NUM and report.manifest_sha256 == manifest["manifest_sha256"]

    copy = tmp_path / "copy"
    shutil.copytree(png_copy, copy)
    changed = copy / manifest["samples"][1]["image"]
    data = bytearray(changed.read_bytes())
    data[-20] ^= 0xFF  # same length: only the hash can tell
    changed.write_bytes(bytes(data))
    (copy / manifest["samples"][3]["label"]).unlink()
    result = cli("data", "check", copy)
    assert result.code == 1
    problems = [line for line in result.out.splitlines() if line.startswith("problem")]
    assert len(problems) == 2
    assert "synth_00001.png has sha256" in problems[0] and "labels/synth_00003.png is missing" in problems[1]
    with pytest.raises(PparError, match="synth_00003.png .* is missing"):
        build_dataset(f"gta5={copy}")[3]


def test_an_interrupted_copy_resumes_without_rewriting_finished_files(source: Path, png_copy: Path, tmp_path: Path):
    out = tmp_path / "resumed"
    shutil.copytree(png_copy, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    # As a kill -9 leaves it: a partial manifest recording the first two pairs, a later pair written but not yet
    # recorded, one recorded and one unrecorded pair lost, no final manifest.
    partial = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "counts", "skipped", "samples")}
    partial["samples"] = manifest["samples"][:2]
    (out / PARTIAL_NAME).write_text(json.dumps(partial))
    (out / MANIFEST_NAME).unlink()
    lost = [manifest["samples"][0]["image"], manifest["samples"][4]["label"]]
    for relative in lost:
        (out / relative).unlink()
    with pytest.raises(PparError, match="unfinished prepared copy"):
        build_dataset(f"gta5={out}")
    before = _mtimes(out)
    result = prepare_dataset(f"gta5={source}", out, resize=SIZE, workers=1)
    assert (result.written, result.reused) == (2, NUM - 2)  # pairs 0 and 4 made again, the rest kept
    assert result.manifest == manifest and not (out / PARTIAL_NAME).exists()
    after = _mtimes(out)
    untouched = set(before) - {str(Path(p)) for p in (manifest["samples"][0]["label"], manifest["samples"][4]["image"])}
    assert {p: after[p] for p in untouched} == {p: before[p] for p in untouched}
    assert all((out / relative).is_file() for relative in lost) and check_prepared(out).ok


def test_a_rerun_makes_a_damaged_file_again_instead_of_adopting_it(source: Path, png_copy: Path, tmp_path: Path):
    out = tmp_path / "damaged"
    shutil.copytree(png_copy, out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    damaged = out / manifest["samples"][3]["image"]
    damaged.write_bytes(damaged.read_bytes()[:500])  # truncated after the copy was finished
    result = prepare_dataset(f"gta5={source}", out, resize=SIZE, workers=1)
    assert (result.written, result.reused) == (1, NUM - 1)  # the damaged pair made again; the manifest is the same
    assert result.manifest == manifest and check_prepared(out).ok
    assert damaged.read_bytes() == (png_copy / manifest["samples"][3]["image"]).read_bytes()


def test_a_rerun_makes_again_the_pairs_whose_source_changed(tmp_path: Path) -> None:
    source = write_in_layout("gta5", tmp_path / "gta5", num=3, size=(32, 64), seed=1)
    out = tmp_path / "copy"
    prepare_dataset(f"gta5={source}", out, resize=None, workers=1)
    write_in_layout("gta5", source, num=3, size=(32, 64), seed=2)  # the same names, other scenes
    result = prepare_dataset(f"gta5={source}", out, resize=None, workers=1)
    fresh = prepare_dataset(f"gta5={source}", tmp_path / "fresh", resize=None, workers=1)
    assert (result.written, result.reused) == (3, 0) and result.manifest["samples"] == fresh.manifest["samples"]


def test_a_damaged_or_lost_manifest_never_lets_the_copy_be_read_as_the_original(
    cli: Callable[..., Any], source: Path, png_copy: Path, tmp_path: Path
) -> None:
    # Read as GTA5 itself, the copy's trainId labels would be mapped a second time: it must be refused instead.
    out = tmp_path / "broken-manifest"
    shutil.copytree(png_copy, out)
    (out / MANIFEST_NAME).write_text("{ broken")
    with pytest.raises(PparError, match=r"manifest.json is not valid JSON \(line 1\)"):
        build_dataset(f"gta5={out}")
    for args in (("data", "check", f"gta5={out}"), ("data", "prepare", f"gta5={source}", "--out", out)):
        result = cli(*args)
        assert result.code == 1 and "is not valid JSON (line 1)" in _one_line_error(result)
    # Without its manifest the folder looks like GTA5's layout, but its grey trainId labels are refused.
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(PparError, match=r"synth_00000.png is not palettised \(PIL mode L\) as GTA5 stores"):
        build_dataset(f"gta5={out}")[0]
    result = cli("data", "check", f"gta5={out}")
    assert result.code == 1 and result.out.count("is not palettised") == NUM


def test_a_corrupt_source_pair_is_named_in_the_manifest_and_skipped(tmp_path: Path) -> None:
    source = write_in_layout("gta5", tmp_path / "gta5", num=4, size=(32, 64))
    broken = source / "images" / "synth_00002.png"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated, as by an interrupted download
    result = prepare_dataset(f"gta5={source}", tmp_path / "out", resize=None, workers=1)
    manifest = result.manifest
    assert [s["name"] for s in manifest["skipped"]] == ["synth_00002"]
    assert (
        manifest["skipped"][0]["image"] == "images/synth_00002.png"
        and "synth_00002.png" in manifest["skipped"][0]["error"]
    )
    assert manifest["counts"]["samples"] == 3 and manifest["counts"]["skipped"] == 1
    assert "synth_00002" not in [s["name"] for s in manifest["samples"]]
    assert len(build_dataset(f"gta5={tmp_path / 'out'}")) == 3


def test_a_copy_keeps_splits_parts_and_the_data_root(tmp_path: Path) -> None:
    gta5 = write_in_layout("gta5", tmp_path / "gta5", num=2, size=(32, 64))
    prepare_dataset(f"gta5={gta5}", tmp_path / "data" / "gta5", resize=None, workers=1)
    for split in ("train", "val", "all"):  # GTA5 reads the same pairs for all three
        assert len(build_dataset("gta5", split=split, data_root=tmp_path / "data")) == 2
    acdc = write_in_layout("acdc", tmp_path / "acdc", num=8, size=(32, 64), split="val")
    prepare_dataset(f"acdc={acdc}", tmp_path / "acdc-copy", split="val", resize=None, workers=1)
    night = build_dataset(f"acdc-night={tmp_path / 'acdc-copy'}", split="val")
    original = build_dataset(f"acdc-night={acdc}", split="val")
    assert night.name == "acdc-night" and len(night) == len(original) == 2
    assert [night.sample_name(i) for i in range(2)] == [original.sample_name(i) for i in range(2)]
    with pytest.raises(PparError, match="split 'train' was asked"):
        build_dataset(f"acdc={tmp_path / 'acdc-copy'}", split="train")


def test_a_mapillary_copy_keeps_the_map_it_was_made_with(tmp_path: Path) -> None:
    root = tmp_path / "mapillary"
    names = [{"name": f"x--{i}", "readable": n} for i, n in enumerate(labels.MAPILLARY_V12_NAMES)]
    (root / "validation" / "v1.2" / "labels").mkdir(parents=True)
    (root / "validation" / "images").mkdir()
    (root / "config_v1.2.json").write_text(json.dumps({"labels": names}))
    Image.fromarray(np.full((2, 3, 3), 90, np.uint8)).save(root / "validation" / "images" / "a.jpg")
    raw = np.array([[13, 7, 41], [44, 55, 65]], np.uint8)  # road, bike lane, manhole / street light, car, unlabeled
    Image.fromarray(raw).save(root / "validation" / "v1.2" / "labels" / "a.png")
    out = tmp_path / "copy"
    prepare_dataset(f"mapillary={root}", out, split="val", resize=None, mapillary_map="name", workers=1)
    np.testing.assert_array_equal(
        build_dataset(f"mapillary={out}", split="val", mapillary_map="name")[0].label,
        build_dataset(f"mapillary={root}", split="val", mapillary_map="name")[0].label,
    )
    with pytest.raises(PparError, match="mapped with the Mapillary 'name' map, but 'id' was asked"):
        build_dataset(f"mapillary={out}", split="val")


def test_force_replaces_a_copy_of_other_settings(cli: Callable[..., Any], source: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    assert cli("data", "prepare", f"gta5={source}", "--out", out, "--resize", "48x96", "--workers", "1").code == 0
    refused = cli("data", "prepare", f"gta5={source}", "--out", out, "--resize", "24x48", "--format", "jpeg")
    assert refused.code == 1 and "other settings (resize: [48, 96] there, [24, 48] asked; image_format:" in refused.err
    forced = cli("data", "prepare", f"gta5={source}", "--out", out, "--resize", "24x48", "--force", "--json")
    assert forced.code == 0, forced.err
    summary = json.loads(forced.out)
    assert summary["resize"] == [24, 48] and summary["written"] == NUM and summary["reused"] == 0
    assert build_dataset(f"gta5={out}")[0].image.shape == (24, 48, 3)


def _one_line_error(result: Any) -> str:
    assert result.code == 1 and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return str(lines[0])


def test_bad_input_gives_one_line(cli: Callable[..., Any], source: Path, png_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = {
        "Unknown dataset 'gtaa'": ["gtaa", "--out", tmp_path / "a"],
        "is a file, but --out needs a folder": [f"gta5={source}", "--out", tmp_path / "file.txt"],
        "is a prepared copy of gta5 (train, from": [f"cityscapes={png_copy}", "--out", tmp_path / "b"],
        "--resize '720' is not HxW": [f"gta5={source}", "--out", tmp_path / "c", "--resize", "720"],
        "sides from 1 to 8192 pixels": [f"gta5={source}", "--out", tmp_path / "d", "--resize", "100000x100000"],
        "--quality does not apply to --format png": [f"gta5={source}", "--out", tmp_path / "e", "--quality", "50"],
        "--png-compression does not apply to --format jpeg": [
            *(f"gta5={source}", "--out", tmp_path / "f", "--format", "jpeg", "--png-compression", "9")
        ],
        "is not empty and holds no prepared copy": [f"gta5={source}", "--out", tmp_path / "full"],
        "lies inside the dataset": [f"gta5={source}", "--out", source / "prepared"],
    }
    for expected, args in cases.items():
        assert expected in _one_line_error(cli("data", "prepare", *args))
    assert (tmp_path / "file.txt").read_text() == "mine" and sorted(os.listdir(tmp_path / "full")) == ["notes.txt"]
    assert not any((tmp_path / name).exists() for name in ("a", "c", "d", "e", "f"))
    assert "not of cityscapes" in _one_line_error(cli("data", "check", f"cityscapes={png_copy}"))
    assert "holds no ppar manifest.json" in _one_line_error(cli("data", "check", tmp_path / "full"))


@contextlib.contextmanager
def _ctrl_c_after(pairs: int) -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars that press Ctrl-C (SIGINT to this process) once `pairs` pairs are done."""

    def update(task: str, done: int, total: int) -> None:
        if done == pairs:
            os.kill(os.getpid(), signal.SIGINT)

    yield update


def test_ctrl_c_says_how_far_the_copy_got_and_the_same_command_continues(
    cli: Callable[..., Any], source: Path, png_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "interrupted"
    args = ("data", "prepare", f"gta5={source}", "--out", out, "--resize", "48x96", "--workers", "1")
    monkeypatch.setattr(ppar_cli.data, "progress_bars", lambda: _ctrl_c_after(2))
    result = cli(*args)
    assert result.code == 130 and "Traceback" not in result.err
    expected = f"Interrupted with 2 of {NUM} pairs in {out}: run the same command again to continue where it stopped."
    assert result.err.strip() == expected
    monkeypatch.undo()
    result = cli(*args)
    assert result.code == 0 and f"{NUM - 2} written, 2 kept" in result.out
    assert json.loads((out / MANIFEST_NAME).read_text()) == json.loads((png_copy / MANIFEST_NAME).read_text())


def test_ctrl_c_in_any_command_says_interrupted_and_exits_130(
    cli: Callable[..., Any], source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # typer turns KeyboardInterrupt into exit code 130 without a word; the entry point says it.
    monkeypatch.setattr(ppar_cli.data, "progress_bars", lambda: _ctrl_c_after(1))
    result = cli("data", "check", f"gta5={source}")
    assert (result.code, result.err.strip(), result.out) == (130, "Interrupted.", "")


def test_prepare_help_has_an_example(cli: Callable[..., Any]) -> None:
    result = cli("data", "prepare", "--help")
    assert result.code == 0 and "ppar data prepare gta5" in result.out and "--resize" in result.out


def test_a_run_on_a_prepared_copy_records_it(source: Path, png_copy: Path, tmp_path: Path, synth_root: Path) -> None:
    from conftest import tiny_train_config

    from ppar_core.checkpoint import load_checkpoint
    from ppar_core.engine.train import train

    cfg = tiny_train_config(
        synth_root,
        tmp_path / "run",
        iters=2,
        data={"source": f"gta5={png_copy}", "augment": {"resize": list(SIZE), "crop_size": [32, 64]}},
    )
    result = train(cfg)
    manifest = json.loads((png_copy / MANIFEST_NAME).read_text())
    recorded = load_checkpoint(result.checkpoint).meta["prepared_copies"]["sources"][f"gta5={png_copy}"]
    assert recorded["manifest_sha256"] == manifest_digest(manifest) and recorded["lossy"] is False
    assert result.report is not None and result.report["prepared_copies"]["sources"][f"gta5={png_copy}"] == recorded


def test_a_run_warns_when_a_copy_does_not_fit_how_it_is_used(caplog: pytest.LogCaptureFixture) -> None:
    # A source copy at another resize than the augment's gives other samples than the original; a resized target is
    # scored off-protocol. A fitting copy and an unresized target say nothing.
    def copy(resize: list[int] | None) -> SimpleNamespace:
        return SimpleNamespace(prepared={"resize": resize, "lossy": False, "image_format": "png"})

    sources = [copy([720, 1280]), copy([48, 96])]
    targets = [
        SimpleNamespace(name="cityscapes", dataset=copy([720, 1280])),
        SimpleNamespace(name="bdd100k", dataset=copy(None)),
    ]
    with caplog.at_level(logging.WARNING, logger="ppar"):
        copies = prepared_copies(sources, ["gta5=A", "gta5=B"], targets, augment_resize=(720, 1280))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and set(copies) == {"sources", "targets"}
    assert warnings[0].startswith(
        "gta5=B is a prepared copy resized to 48x96, but the augment's first resize is 720x1280"
    )
    assert warnings[1].startswith("Target cityscapes is a prepared copy resized to 720x1280: it is scored at")
