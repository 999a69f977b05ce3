"""Text prototypes (templates, synonyms, averaging), the prototypes file format, and visual prototypes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppar_core.clip import (
    CLASS_PROMPTS,
    TEMPLATE_SETS,
    DenseClipEncoder,
    build_clip_model,
    build_text_prototypes,
    get_preset,
    get_tokenizer,
    load_templates,
)
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES
from ppar_core.prototypes import (
    PROTOTYPES_FORMAT_VERSION,
    Prototypes,
    compute_visual_prototypes,
    load_prototypes,
    save_prototypes,
)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_clip_model("tiny")


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return get_tokenizer("tiny")


def _encode(model: torch.nn.Module, tokenizer, prompt: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer([prompt]))[0], dim=-1)


def test_shape_dtype_and_unit_norm(tiny, tokenizer) -> None:  # type: ignore[no-untyped-def]
    protos = build_text_prototypes(tiny, tokenizer, CLASS_NAMES, TEMPLATE_SETS["street"])
    assert protos.shape == (19, 64) and protos.dtype == torch.float32
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(19))


def test_matches_hand_computed_mean_and_two_identical_templates_equal_one(tiny, tokenizer) -> None:  # type: ignore[no-untyped-def]
    templates = ["a photo of a {}.", "a dashcam photo of a {}."]
    protos = build_text_prototypes(tiny, tokenizer, ["car", "road"], templates, batch_size=3)
    expected = F.normalize(
        _encode(tiny, tokenizer, "a photo of a car.") + _encode(tiny, tokenizer, "a dashcam photo of a car."), dim=-1
    )
    torch.testing.assert_close(protos[0], expected, atol=1e-6, rtol=0)
    once = build_text_prototypes(tiny, tokenizer, ["car", "road"], templates[:1])
    twice = build_text_prototypes(tiny, tokenizer, ["car", "road"], templates[:1] * 2)
    torch.testing.assert_close(once, twice, atol=1e-6, rtol=0)
    assert not torch.allclose(once, protos, atol=1e-3)


def test_synonyms_are_averaged(tiny, tokenizer) -> None:  # type: ignore[no-untyped-def]
    template = "a photo of a {}."
    protos = build_text_prototypes(tiny, tokenizer, [("person", "pedestrian"), "car"], [template])
    expected = F.normalize(
        _encode(tiny, tokenizer, "a photo of a person.") + _encode(tiny, tokenizer, "a photo of a pedestrian."), dim=-1
    )
    torch.testing.assert_close(protos[0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(protos[1], _encode(tiny, tokenizer, "a photo of a car."), atol=1e-6, rtol=0)


def test_template_sets() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert TEMPLATE_SETS["imagenet"] == tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)  # CLIP's published 80
    assert len(TEMPLATE_SETS["imagenet"]) == 80
    assert 6 <= len(TEMPLATE_SETS["street"]) <= 10
    assert all(t.count("{}") == 1 for s in TEMPLATE_SETS.values() for t in s)
    assert set(CLASS_PROMPTS) == set(CLASS_NAMES)
    assert all(CLASS_PROMPTS[name][0] == name for name in CLASS_NAMES)
    assert CLASS_PROMPTS["person"] == ("person", "pedestrian")


def test_load_templates_from_file(tmp_path: Path) -> None:
    good = tmp_path / "t.txt"
    good.write_text("# mine\na street photo of a {}.\n\nthe {} at night.\n", encoding="utf-8")
    assert load_templates(str(good)) == ("a street photo of a {}.", "the {} at night.")
    assert load_templates("street") == TEMPLATE_SETS["street"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo of a car.\n", encoding="utf-8")
    with pytest.raises(PparError, match=r"bad\.txt, line 2"):
        load_templates(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(PparError, match="holds no templates"):
        load_templates(str(empty))
    with pytest.raises(PparError, match="neither a known set"):
        load_templates(str(tmp_path / "missing.txt"))


def _protos() -> Prototypes:
    torch.manual_seed(1)
    return Prototypes(
        otp=F.normalize(torch.randn(3, 8), dim=-1),
        visual=F.normalize(torch.randn(3, 8), dim=-1),
        visual_counts=torch.tensor([5, 0, 9]),
        meta={"model": "tiny", "pretrained": "x", "classes": ["a", "b", "c"], "templates": ["{}"], "label_space": "t"},
    )


def test_prototypes_file_round_trip(tmp_path: Path) -> None:
    protos = _protos()
    path = save_prototypes(tmp_path / "sub" / "p.safetensors", protos)
    assert [p.name for p in path.parent.iterdir()] == ["p.safetensors"]  # no temporary file left behind
    loaded = load_prototypes(path, expect_dim=8, expect_classes=3)
    assert torch.equal(loaded.otp, protos.otp) and torch.equal(loaded.visual, protos.visual)
    assert torch.equal(loaded.visual_counts, protos.visual_counts)
    assert loaded.meta["format_version"] == PROTOTYPES_FORMAT_VERSION
    assert loaded.class_names == ["a", "b", "c"] and loaded.meta["dim"] == 8 and loaded.meta["model"] == "tiny"
    with pytest.raises(PparError, match="dimension 8.*is 512"):
        load_prototypes(path, expect_dim=512)
    with pytest.raises(PparError, match="3 classes.*19 are expected"):
        load_prototypes(path, expect_classes=19)


def _rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Edit the JSON header of a safetensors file in place (keeping the file well-formed)."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])


def test_tampered_and_truncated_files_fail_clearly(tmp_path: Path) -> None:
    path = save_prototypes(tmp_path / "p.safetensors", _protos())
    original = path.read_bytes()

    path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # one flipped byte in the tensor data
    with pytest.raises(PparError, match=r"p\.safetensors fails its integrity check"):
        load_prototypes(path)

    path.write_bytes(original)
    _rewrite_header(path, lambda h: h["__metadata__"].update(classes='["x", "y", "z"]'))
    with pytest.raises(PparError, match="integrity check"):
        load_prototypes(path)

    path.write_bytes(original)
    _rewrite_header(path, lambda h: h["__metadata__"].update(format_version="99"))
    with pytest.raises(PparError, match="format version 99"):
        load_prototypes(path)

    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(PparError, match=r"p\.safetensors is damaged"):
        load_prototypes(path)

    path.write_bytes(b"")
    with pytest.raises(PparError, match="damaged"):
        load_prototypes(path)
    with pytest.raises(PparError, match="does not exist"):
        load_prototypes(tmp_path / "nope.safetensors")


def test_visual_prototypes_are_per_class_means_of_dense_cells(tiny) -> None:  # type: ignore[no-untyped-def]
    from ppar_core.normalize import image_to_tensor

    encoder = DenseClipEncoder(tiny.visual, get_preset("tiny")).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    label = np.full((64, 64), 255, dtype=np.uint8)
    label[:, :32] = 0  # left half road: 8 of the 16 cells of the 4 x 4 grid
    label[:16, 32:] = 13  # top-right strip car: 2 cells (trainId 13)
    dataset = [SimpleNamespace(image=image, label=label, name="one")]
    seen = []
    visual, counts = compute_visual_prototypes(
        encoder, dataset, num_classes=19, max_images=5, device="cpu", progress=lambda *a: seen.append(a)
    )
    with torch.no_grad():
        cells = F.normalize(encoder(image_to_tensor(image, device="cpu")).dense[0], dim=0)  # (D,4,4)
    torch.testing.assert_close(
        visual[0], F.normalize(cells[:, :, :2].reshape(64, -1).mean(1), dim=0), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        visual[13], F.normalize(cells[:, :1, 2:].reshape(64, -1).mean(1), dim=0), atol=1e-5, rtol=0
    )
    assert counts.tolist() == [8] + [0] * 12 + [2] + [0] * 5
    assert torch.count_nonzero(visual.norm(dim=1)) == 2  # classes never seen stay zero
    assert seen == [("visual prototypes", 1, 1)]
    # A label space that skips trainIds maps them by position (synthia16: car is class 12 of 16).
    from ppar_core.labels import SYNTHIA16_TRAIN_IDS

    sub, sub_counts = compute_visual_prototypes(
        encoder, dataset, num_classes=16, max_images=5, train_ids=SYNTHIA16_TRAIN_IDS
    )
    assert sub_counts[SYNTHIA16_TRAIN_IDS.index(13)] == 2
    torch.testing.assert_close(sub[SYNTHIA16_TRAIN_IDS.index(13)], visual[13])
