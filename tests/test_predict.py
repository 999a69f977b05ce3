"""The library predictor on a real (tiny) checkpoint: protocols, TTA wiring, output formats, input collection."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppar_core.errors import PparError
from ppar_core.imageio import write_png
from ppar_core.labels import LABELID_TO_TRAINID, PALETTE
from ppar_core.predict import (
    Predictor,
    collect_inputs,
    output_path,
    parse_formats,
    predict_files,
    render_outputs,
)


@pytest.fixture(scope="module")
def image(tiny_run: Any) -> np.ndarray:
    from ppar_core.data import build_dataset

    return build_dataset("synth-real", split="val", data_root=tiny_run.data_root)[0].image  # (64,128,3)


@pytest.fixture(scope="module")
def whole(tiny_run: Any) -> Predictor:
    return Predictor.from_checkpoint(tiny_run.checkpoint, device="cpu", mode="whole")


def _variant(base: Predictor, **changes: Any) -> Predictor:
    return Predictor(base.model, config=base.config, inference=replace(base.inference, **changes))


def test_slide_equals_whole_when_the_crop_covers_the_image(whole: Predictor, image: np.ndarray) -> None:
    slide = _variant(whole, mode="slide", crop_size=128, stride=64)
    a, b = whole.predict_logits(image), slide.predict_logits(image)
    assert a.shape == (19, 64, 128)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(whole.predict(image), slide.predict(image))


def test_inference_scores_equal_the_training_forward(whole: Predictor) -> None:
    # `infer` runs the head one image at a time; the batched forward must give the same stride-4 logits.
    model = whole.model
    images = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores = model.infer(images)
        reference = model(images).logits
        upsampled = whole.predict_torch(images)
    assert scores.shape == (3, 19, 16, 24) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(upsampled, F.interpolate(scores, size=(64, 96), mode="bilinear"), atol=0, rtol=0)


def test_flip_tta_is_the_mean_of_both_views_probabilities(whole: Predictor, image: np.ndarray) -> None:
    # The tiny model is not flip-equivariant, so check the wiring instead: the predictor's flip TTA equals the mean
    # softmax of the plain view and the un-flipped scores of the flipped view, computed here by hand.
    flip = _variant(whole, tta="flip")
    x = whole.to_tensor(image)
    plain_scores = whole.predict_torch(x)
    by_hand = 0.5 * (plain_scores.softmax(1) + whole.predict_torch(x.flip(-1)).flip(-1).softmax(1))
    scores = flip.predict_logits(image)
    torch.testing.assert_close(scores, by_hand[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scores, plain_scores[0].softmax(0), atol=1e-4)


def test_output_formats_agree_with_each_other(whole: Predictor, image: np.ndarray) -> None:
    labels = whole.predict(image)
    outs = render_outputs(image, labels, parse_formats("overlay,color,trainid,labelid"), alpha=0.5)
    np.testing.assert_array_equal(outs["trainid"], labels)
    np.testing.assert_array_equal(LABELID_TO_TRAINID[outs["labelid"]], labels)  # labelIds map back to trainIds
    np.testing.assert_array_equal(outs["color"], PALETTE[labels])
    assert outs["overlay"].shape[1] == 128 and outs["overlay"].shape[0] > 64  # legend strip below the image


def test_labelid_table_agrees_with_cityscapesscripts() -> None:
    from cityscapesscripts.helpers.labels import trainId2label

    from ppar_core.labels import TRAINID_TO_LABELID

    for train_id in range(19):
        assert TRAINID_TO_LABELID[train_id] == trainId2label[train_id].id


def test_parse_formats() -> None:
    assert parse_formats("trainid, overlay,trainid") == ("trainid", "overlay")
    with pytest.raises(PparError, match="mask"):
        parse_formats("overlay,mask")


def _png(path: Path) -> Path:
    return write_png(path, np.zeros((2, 2, 3), dtype=np.uint8))


def test_collect_inputs_files_folders_globs_and_collisions(tmp_path: Path) -> None:
    a = _png(tmp_path / "in" / "x.png")
    _png(tmp_path / "in" / "sub" / "x.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    b = tmp_path / "other" / "x.jpg"
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    c = _png(tmp_path / "other" / "y.png")
    # No clash: a folder keeps sub-paths, a file is named by its stem; a repeated file counts once.
    items = collect_inputs([tmp_path / "in", c, c])
    names = [(i.path.relative_to(tmp_path).as_posix(), i.rel) for i in items]
    assert names == [("in/sub/x.png", "sub/x"), ("in/x.png", "x"), ("other/y.png", "y")]
    assert output_path(tmp_path / "o", items[0], "labelid") == tmp_path / "o" / "sub" / "x_labelid.png"
    # The glob match other/x.jpg would clash with in/x.png: every output mirrors its path below the shared folder.
    items = collect_inputs([tmp_path / "in", str(tmp_path / "other" / "*.jpg"), c, a])
    names = [(i.path.relative_to(tmp_path).as_posix(), i.rel) for i in items]
    assert names == [
        ("in/sub/x.png", "in/sub/x"),
        ("in/x.png", "in/x"),
        ("other/x.jpg", "other/x"),
        ("other/y.png", "other/y"),
    ]
    # Two files of one folder that differ only in the extension: the later one gets it appended.
    _png(tmp_path / "other" / "y.bmp")
    assert [i.rel for i in collect_inputs([tmp_path / "other"])] == ["x", "y", "y_png"]
    # The output folder is never an input, even inside an input folder.
    _png(tmp_path / "in" / "preds" / "x_overlay.png")
    rels = [i.rel for i in collect_inputs([tmp_path / "in"], exclude=tmp_path / "in" / "preds")]
    assert rels == ["sub/x", "x"]
    with pytest.raises(PparError, match="does not exist"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(PparError, match="matches no image"):
        collect_inputs([str(tmp_path / "*.bmp")])


def test_predict_files_skips_a_corrupt_file_and_writes_the_others(
    whole: Predictor, image: np.ndarray, tmp_path: Path
) -> None:
    write_png(tmp_path / "in" / "good.png", image)
    (tmp_path / "in" / "bad.png").write_bytes(b"garbage")
    predictor = whole
    seen: list[int] = []
    summary = predict_files(
        predictor,
        collect_inputs([tmp_path / "in"]),
        tmp_path / "out",
        formats=("trainid",),
        progress=lambda task, done, total: seen.append(done),
    )
    assert summary.done == 1 and seen == [1, 2]
    assert [p.name for p, _ in summary.failed] == ["bad.png"] and "bad.png" in summary.failed[0][1]
    assert summary.written == [tmp_path / "out" / "good_trainid.png"]
    labels = predictor.predict(image)
    assert summary.class_pixels.sum() == labels.size
    np.testing.assert_array_equal(summary.class_images, np.bincount(labels.ravel(), minlength=19)[:19] > 0)
