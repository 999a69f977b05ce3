"""`ppar predict` end to end on odd inputs: every format written at the input's size, bad files skipped, exit 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ppar_core.imageio import write_png
from ppar_core.labels import LABELID_TO_TRAINID, PALETTE


def _odd_inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Write the odd images; returns file name -> the (H,W) the prediction must have."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), mode="L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (30, 60, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (20, 36), dtype=np.uint16))
    cv2.imwrite(str(folder / "deep_rgb.tif"), rng.integers(0, 65536, (24, 20, 3), dtype=np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 16x48, shown rotated by 90 degrees: 48x16
    Image.fromarray(rng.integers(0, 256, (16, 48, 3), dtype=np.uint8)).save(folder / "exif.jpg", exif=exif)
    write_png(folder / "dot.png", np.array([[[10, 200, 30]]], dtype=np.uint8))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return {"grey": (40, 50), "rgba": (30, 60), "deep": (20, 36), "deep_rgb": (24, 20), "exif": (48, 16), "dot": (1, 1)}


def test_every_format_on_odd_inputs_and_a_corrupt_file(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    sizes = _odd_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = cli("predict", tiny_run.checkpoint, tmp_path / "in", "--out", out, "--device", "cpu", "--json")
    assert result.code == 1  # the corrupt file failed, at the end
    summary = json.loads(result.out)  # stdout is exactly one JSON object
    assert summary["images"] == len(sizes)
    assert [Path(f["path"]).name for f in summary["failed"]] == ["corrupt.png"]
    assert "corrupt.png" in result.err
    for stem, (h, w) in sizes.items():
        trainid = np.asarray(Image.open(out / f"{stem}_trainid.png"))
        labelid = np.asarray(Image.open(out / f"{stem}_labelid.png"))
        color = np.asarray(Image.open(out / f"{stem}_color.png"))
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert trainid.shape == (h, w) and trainid.max() < 19
        np.testing.assert_array_equal(LABELID_TO_TRAINID[labelid], trainid)
        np.testing.assert_array_equal(color, PALETTE[trainid])
        assert overlay.shape[1] == w and overlay.shape[0] > h
    assert not list(out.glob("corrupt*"))
    pixels = sum(h * w for h, w in sizes.values())
    assert sum(c["pixels"] for c in summary["classes"]) == pixels


def test_formats_option_and_table_output(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    from ppar_core.data import build_dataset

    image = build_dataset("synth-real", split="val", data_root=tiny_run.data_root)[0].image
    write_png(tmp_path / "a.png", image)
    out = tmp_path / "out"
    result = cli("predict", tiny_run.checkpoint, str(tmp_path / "*.png"), "--out", out, "--format", "labelid")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["a_labelid.png"]
    assert "Classes found in 1 image" in result.out


def test_missing_checkpoint_and_bad_format_are_one_line_errors(cli: Any, tiny_run: Any, tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    result = cli("predict", tmp_path / "nope.safetensors", tmp_path / "a.png", "--out", tmp_path / "o")
    assert result.code == 1 and "nope.safetensors" in result.err and "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = cli("predict", tiny_run.checkpoint, tmp_path / "a.png", "--out", tmp_path / "o", "--format", "jpeg")
    assert result.code == 1 and "jpeg" in result.err
