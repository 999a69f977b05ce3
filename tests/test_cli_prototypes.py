"""`ppar prototypes build/show` and `ppar models list` through the real entry point, on the tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ppar_core.labels import CLASS_NAMES, SYNTHIA16_TRAIN_IDS
from ppar_core.prototypes import load_prototypes


def test_build_then_show_round_trip(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "protos.safetensors"
    built = cli("prototypes", "build", "--model", "tiny", "--device", "cpu", "--out", out, "--json")
    assert built.code == 0, built.err
    assert json.loads(built.out)["path"] == str(out)

    shown = cli("prototypes", "show", out, "--json")
    assert shown.code == 0, shown.err
    summary = json.loads(shown.out)  # stdout holds exactly one JSON document
    assert summary["classes"] == list(CLASS_NAMES) and summary["dim"] == 64 and summary["model"] == "tiny"
    assert summary["has_visual"] is False and len(summary["templates"]) == 8

    # The nearest-class column, recomputed independently from the file.
    otp = load_prototypes(out).otp
    cosine = F.normalize(otp, dim=-1) @ F.normalize(otp, dim=-1).t() - 3 * torch.eye(19)
    for k, name in enumerate(CLASS_NAMES):
        other, value = summary["nearest"][name]
        assert other == CLASS_NAMES[int(cosine[k].argmax())]
        assert value == pytest.approx(float(cosine[k].max()), abs=1e-4)

    table = cli("prototypes", "show", out)
    assert table.code == 0 and "traffic light" in table.out and "tiny" in table.out


def test_build_options_reach_the_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    templates = tmp_path / "templates.txt"
    templates.write_text("a street photo of a {}.\nthe {} at night.\n", encoding="utf-8")
    out = tmp_path / "s16.safetensors"
    result = cli(
        "prototypes",
        "build",
        "--model",
        "tiny",
        "--classes",
        "synthia16",
        "--templates",
        templates,
        "--no-synonyms",
        "--out",
        out,
    )
    assert result.code == 0, result.err
    protos = load_prototypes(out, expect_classes=16, expect_dim=64)
    assert protos.class_names == [CLASS_NAMES[i] for i in SYNTHIA16_TRAIN_IDS]
    assert protos.meta["templates"] == ["a street photo of a {}.", "the {} at night."]
    assert protos.meta["label_space"] == "synthia16" and protos.meta["synonyms"] is False


def _synth_folder(root: Path, count: int = 3) -> Path:
    """A tiny domain in the synth layout: images/*.png RGB + labels/*.png trainIds."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        label = np.full((48, 80), 255, dtype=np.uint8)
        label[24:] = 0  # road below
        label[:24, :40] = 10  # sky top-left
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(root / "labels" / f"{i:03d}.png")
    return root


def test_build_with_visual_prototypes_from_synth_data(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _synth_folder(tmp_path / "synth")
    out = tmp_path / "vis.safetensors"
    result = cli(
        "prototypes",
        "build",
        "--model",
        "tiny",
        "--data",
        f"synth-source={root}",
        "--max-images",
        "2",
        "--out",
        out,
        "--json",
    )
    assert result.code == 0, result.err
    protos = load_prototypes(out)
    assert protos.visual is not None and protos.visual_counts is not None
    # Images resized to short side 224 (the tiny preset's size): 48x80 -> 224x368 (rounded to 16) -> 14 x 23 cells.
    counts = protos.visual_counts.tolist()
    assert set(np.flatnonzero(counts)) == {0, 10}
    assert counts[0] == 2 * 7 * 23 and counts[10] > 0
    torch.testing.assert_close(protos.visual[[0, 10]].norm(dim=-1), torch.ones(2))
    assert json.loads(result.out)["visual_counts"]["road"] == counts[0]


def test_errors_are_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 12)
    result = cli("prototypes", "show", bad)
    assert result.code == 1 and "Traceback" not in result.err and "bad.safetensors" in result.err

    start = time.perf_counter()
    offline = cli("prototypes", "build", "--model", "vit-b16", "--out", tmp_path / "x.safetensors")
    assert offline.code == 1 and "--pretrained PATH" in offline.err.replace("\n", " ")
    assert time.perf_counter() - start < 10  # HF_HUB_OFFLINE=1 (conftest): no retries
    assert not (tmp_path / "x.safetensors").exists()

    unknown = cli("prototypes", "build", "--model", "nope", "--out", tmp_path / "y.safetensors")
    assert unknown.code == 1 and "vit-b16" in unknown.err


def test_models_list(cli) -> None:  # type: ignore[no-untyped-def]
    from ppar_core.clip import build_clip_model

    result = cli("models", "list", "--json")
    assert result.code == 0, result.err
    rows = {row["name"]: row for row in json.loads(result.out)["models"]}
    assert list(rows) == ["vit-b16", "vit-l14", "rn50", "rn101", "tiny"]
    assert (rows["vit-b16"]["embed_dim"], rows["vit-b16"]["patch_size"], rows["vit-b16"]["image_size"]) == (
        512,
        16,
        512,
    )
    assert rows["vit-b16"]["params_total"] == 149_620_737  # CLIP ViT-B/16's published size
    assert rows["tiny"]["params_total"] == sum(p.numel() for p in build_clip_model("tiny").parameters())
    assert cli("models", "list").code == 0


def test_cli_modules_import_no_torch() -> None:
    code = "import sys, ppar_cli.prototypes, ppar_cli.models; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
