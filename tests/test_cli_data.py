"""`ppar data ...` through the real entry point: help texts, JSON content, exit codes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

Cli = Callable[..., object]

LABEL = np.array([[0, 0, 13], [13, 255, 18]], dtype=np.uint8)  # road 2, car 2, bicycle 1, ignored 1


def make_folder(root: Path, n: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        Image.fromarray(np.full((2, 3, 3), 40 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(LABEL).save(root / "labels" / f"s{i}.png")
    Image.fromarray(LABEL).save(root / "labels" / "lonely.png")
    return root


@pytest.mark.parametrize("command", [[], ["list"], ["check"], ["synth"]])
def test_help_of_every_data_command(cli: Callable, command: list[str]) -> None:
    result = cli("data", *command, "--help")
    assert result.code == 0
    assert "Usage" in result.out
    if command:
        assert "Example" in result.out and f"ppar data {command[0]}" in result.out


def test_list_json_has_every_dataset_with_its_layout(cli: Callable) -> None:
    result = cli("data", "list", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in json.loads(result.out)["datasets"]}
    assert {"gta5", "cityscapes", "mapillary", "acdc-night", "folder", "synth-source"} <= set(rows)
    assert "config_v1.2.json" in rows["mapillary"]["layout"] and rows["acdc-night"]["folder"] == "acdc"


def test_check_json_counts_pixels_and_exits_0(cli: Callable, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "synth-source")
    result = cli("data", "check", "synth-source", "--data-root", tmp_path, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)  # stdout holds exactly one JSON object
    assert (report["dataset"], report["split"], report["pairs"]) == ("synth-source", "train", 2)
    assert report["orphans"] == ["labels/lonely.png"] and report["problems"] == []
    assert report["image_sizes"] == {"2x3": 2}  # HxW
    assert report["class_pixels"]["road"] == 4 and report["class_pixels"]["car"] == 4
    assert report["class_pixels"]["bicycle"] == 2 and report["ignored_pixels"] == 2
    assert sum(report["class_pixels"].values()) == 10 and len(report["class_pixels"]) == 19
    assert report["root"] == str(root)


def test_check_with_a_bad_sample_exits_1_and_names_the_file(cli: Callable, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine")
    Image.fromarray(np.full((2, 3), 77, np.uint8)).save(root / "labels" / "s1.png")
    result = cli("data", "check", "folder", "--root", root, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["pairs"] == 2 and len(report["problems"]) == 1
    assert "labels/s1.png contains values 77" in report["problems"][0]
    assert report["class_pixels"]["road"] == 2  # the good sample is still counted
    human = cli("data", "check", f"folder={root}")
    assert human.code == 1 and "problem" in human.out and "s1.png" in human.out


def test_check_human_output(cli: Callable, tmp_path: Path) -> None:
    make_folder(tmp_path / "mine")
    result = cli("data", "check", f"folder={tmp_path / 'mine'}", "--split", "val")
    assert result.code == 0
    flat = " ".join(result.out.split())  # rich wraps at the console width
    assert "2 pairs, 1 orphans" in flat and "no problems found" in flat and "bicycle" in flat


def test_wrong_root_is_one_error_with_the_layout_and_exit_1(cli: Callable, tmp_path: Path) -> None:
    (tmp_path / "gta5" / "pictures").mkdir(parents=True)
    result = cli("data", "check", "gta5", "--data-root", tmp_path, "--json")
    assert result.code == 1
    assert result.out == ""
    assert "Traceback" not in result.err and result.err.count("error:") == 1
    flat = " ".join(result.err.split())  # rich may wrap the line at the console width
    assert "is not a gta5 root" in flat and "images/*.png and labels/*.png" in flat and "pictures/" in flat


def test_missing_data_root_says_what_to_do(cli: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PPAR_DATA", raising=False)
    result = cli("data", "check", "cityscapes")
    assert result.code == 1 and "PPAR_DATA" in result.err and "Traceback" not in result.err


def test_synth_writes_domains_that_check_reads(cli: Callable, tmp_path: Path) -> None:
    pytest.importorskip("ppar_core.data.synth")
    out = tmp_path / "synth"
    result = cli(
        "data",
        "synth",
        "--out",
        out,
        "--domains",
        "synth-source,synth-night",
        "--num",
        "2",
        "--size",
        "64x128",
        "--json",
    )
    assert result.code == 0, result.err
    written = json.loads(result.out)
    assert set(written["domains"]) == {"synth-source", "synth-night"}
    for domain in ("synth-source", "synth-night"):
        assert len(list((out / domain / "images").glob("*.png"))) == 2
        report = json.loads(cli("data", "check", domain, "--data-root", out, "--json").out)
        assert report["pairs"] == 2 and report["image_sizes"] == {"64x128": 2} and report["problems"] == []
    bad = cli("data", "synth", "--out", out, "--num", "2", "--size", "64by128")
    assert bad.code == 1 and "HxW" in bad.err


def test_synth_into_a_folder_with_the_domain_refuses_then_replaces_it_whole(cli: Callable, tmp_path: Path) -> None:
    args = ("data", "synth", "--out", tmp_path, "--domains", "synth-night", "--size", "16x32")
    assert cli(*args, "--num", "3").code == 0
    images = tmp_path / "synth-night" / "images"
    before = sorted(p.name for p in images.iterdir())
    result = cli(*args, "--num", "2")
    assert result.code == 1 and "already holds a synthetic domain (3 images)" in result.err and "--force" in result.err
    assert sorted(p.name for p in images.iterdir()) == before  # refused before anything was written
    assert cli(*args, "--num", "2", "--force").code == 0
    assert sorted(p.name for p in images.iterdir()) == before[:2]  # replaced completely: no third, older image
    assert len(list((tmp_path / "synth-night" / "labels").iterdir())) == 2
    (tmp_path / "other" / "synth-night").mkdir(parents=True)
    (tmp_path / "other" / "synth-night" / "keep.txt").write_text("x")
    result = cli("data", "synth", "--out", tmp_path / "other", "--domains", "synth-night", "--force")
    assert result.code == 1 and "holds no synthetic domain" in result.err
    assert (tmp_path / "other" / "synth-night" / "keep.txt").read_text() == "x"


def test_synth_in_a_real_layout_is_read_by_that_loader(cli: Callable, tmp_path: Path) -> None:
    result = cli("data", "synth", "--out", tmp_path / "gta5", "--layout", "gta5", "--num", "2", "--size", "32x64")
    assert result.code == 0, result.err
    check = cli("data", "check", f"gta5={tmp_path / 'gta5'}", "--json")
    assert check.code == 0 and json.loads(check.out)["pairs"] == 2
    again = cli("data", "synth", "--out", tmp_path / "gta5", "--layout", "gta5", "--num", "2")
    assert again.code == 1 and "is not empty" in again.err


def test_synth_layout_with_force_replaces_an_earlier_write_and_keeps_other_files(cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "gta5"
    assert cli("data", "synth", "--out", out, "--layout", "gta5", "--num", "4", "--size", "32x64").code == 0
    (out / "images" / "notes.txt").write_text("mine")
    again = cli("data", "synth", "--out", out, "--layout", "gta5", "--num", "2", "--size", "48x96", "--force")
    assert again.code == 0, again.err
    check = json.loads(cli("data", "check", f"gta5={out}", "--json").out)
    assert check["pairs"] == 2 and check["image_sizes"] == {"48x96": 2}
    assert (out / "images" / "notes.txt").read_text() == "mine"
