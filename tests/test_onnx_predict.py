"""The torch-free ONNX runtime side: the numpy protocol against `infer_logits`, resize and normalisation against
PyTorch's, the metadata schema, and `OnnxPredictor` on hand-built graphs in a process where torch cannot load.

The exported-model tests (a real checkpoint through `ppar export`) are in test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppar_core.errors import PparError
from ppar_core.inference import infer_logits
from ppar_core.labels import CLASS_NAMES, PALETTE
from ppar_core.normalize import CLIP_MEAN, CLIP_STD, image_to_tensor
from ppar_core.onnx_predict import (
    OnnxMetadata,
    OnnxPredictor,
    bilinear_resize,
    infer_logits_np,
    normalize_np,
    read_onnx_metadata,
)
from ppar_core.protocol import InferenceConfig

K = 5
ROOT = Path(__file__).resolve().parents[1]
_rng = np.random.default_rng(0)
WEIGHT = _rng.standard_normal((K, 3, 3, 3)).astype(np.float32)
BIAS = _rng.standard_normal(K).astype(np.float32)


def torch_model(images: torch.Tensor) -> torch.Tensor:
    """3x3 conv with zero padding (so window borders matter), then 2x2 average pooling (scores at stride 2)."""
    return F.avg_pool2d(F.conv2d(images, torch.from_numpy(WEIGHT), torch.from_numpy(BIAS), padding=1), 2)


def numpy_model(images: np.ndarray) -> np.ndarray:
    """The same function written independently on numpy: nine shifted products, then a reshape mean."""
    b, _, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(
        np.einsum("kc,bchw->bkhw", WEIGHT[:, :, dy, dx], padded[:, :, dy : dy + h, dx : dx + w])
        for dy in range(3)
        for dx in range(3)
    )
    out = out + BIAS[None, :, None, None]
    return out.reshape(b, K, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).astype(np.float32)


def test_the_numpy_twin_is_the_torch_model() -> None:
    images = _rng.standard_normal((2, 3, 32, 48)).astype(np.float32)
    np.testing.assert_allclose(numpy_model(images), torch_model(torch.from_numpy(images)).numpy(), atol=1e-5)


PROTOCOLS = {
    "whole": InferenceConfig(mode="whole"),
    "whole-flip": InferenceConfig(mode="whole", tta="flip"),
    "slide": InferenceConfig(mode="slide", crop_size=32, stride=20, batch_size=3),
    "slide-flip": InferenceConfig(mode="slide", crop_size=32, stride=20, batch_size=2, tta="flip"),
    "slide-scale": InferenceConfig(mode="slide", crop_size=32, stride=24, scale=0.75),
    "slide-long-side": InferenceConfig(mode="slide", crop_size=32, stride=16, long_side=50),
    "whole-ms-flip": InferenceConfig(mode="whole", tta="ms-flip", ms_scales=(0.5, 1.25)),
    "slide-divisor-8": InferenceConfig(mode="slide", crop_size=36, stride=30, size_divisor=8),
}


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_numpy_protocol_agrees_with_infer_logits(name: str) -> None:
    cfg = PROTOCOLS[name]
    image = _rng.standard_normal((1, 3, 70, 90)).astype(np.float32)  # not a multiple of 32: padding is exercised
    expected = infer_logits(torch_model, torch.from_numpy(image), cfg, num_classes=K).numpy()
    got = infer_logits_np(numpy_model, image, cfg, num_classes=K)
    assert got.shape == expected.shape == (1, K, 70, 90) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_bilinear_resize_is_pytorchs() -> None:
    # Hand-computed: [0, 1] to 4 columns samples at -0.25 (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1).
    np.testing.assert_allclose(bilinear_resize(np.array([[[0.0, 1.0]]], np.float32), (1, 4)), [[[0, 0.25, 0.75, 1]]])
    for (h, w), size in [((16, 16), (64, 64)), ((37, 53), (20, 31)), ((64, 128), (77, 155)), ((5, 7), (300, 2))]:
        array = _rng.standard_normal((2, 3, h, w)).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(array), size=size, mode="bilinear", align_corners=False).numpy()
        np.testing.assert_allclose(bilinear_resize(array, size), expected, atol=2e-6, rtol=0)


def test_normalize_np_feeds_the_same_bits_as_ppar_normalize() -> None:
    image = _rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    expected = image_to_tensor(image, device="cpu").numpy()
    assert np.array_equal(normalize_np(image, CLIP_MEAN, CLIP_STD), expected)


def metadata(**changes: object) -> OnnxMetadata:
    base = OnnxMetadata(
        class_names=CLASS_NAMES,
        palette=tuple(tuple(int(c) for c in rgb) for rgb in PALETTE),  # type: ignore[misc]
        label_space="cityscapes",
        train_ids=tuple(range(19)),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        patch_size=4,
        output_stride=4.0,
        protocol=InferenceConfig(mode="slide", crop_size=32, stride=20, tta="flip", ms_scales=(0.5, 1.0)),
        input_size=None,
        precision="fp32",
        checkpoint_sha256="ab" * 32,
        checkpoint_step=7,
        model_preset="tiny",
        ppar_version="0.1.0",
        exporter="dynamo",
        opset=18,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_metadata_round_trips_through_strings() -> None:
    for meta in (metadata(), metadata(input_size=(32, 32), precision="fp16")):
        props = meta.to_props()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
        assert json.loads(props["ppar.class_names"])[0] == "road" and props["ppar.label_space"] == "cityscapes"
        assert OnnxMetadata.from_props(props, source="m.onnx") == meta


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"ppar.format": "other"}, "not one written by `ppar export`"),
        ({"ppar.format_version": "99"}, "upgrade ppar"),
        ({"ppar.palette": "[[1, 2"}, "damaged ppar metadata"),
        ({"ppar.protocol": '{"mode": "slide", "warp": 1}'}, "damaged ppar metadata"),
    ],
)
def test_bad_metadata_is_one_sentence(change: dict[str, str], needle: str) -> None:
    props = {**metadata().to_props(), **change}
    with pytest.raises(PparError, match="m.onnx") as info:
        OnnxMetadata.from_props(props, source="m.onnx")
    assert needle in str(info.value) and "\n" not in str(info.value)


def write_graph(path: Path, meta: OnnxMetadata, *, size: tuple[int, int] | None = None) -> None:
    """A hand-built ppar-style graph: 1x1 conv 3 -> 19, 4x4 average pooling (scores at stride 4), ppar metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((19, 3, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(19).astype(np.float32)
    h, w = size if size is not None else ("height", "width")
    nodes = [
        helper.make_node("Conv", ["images", "weight", "bias"], ["features"]),
        helper.make_node("AveragePool", ["features"], ["logits"], kernel_shape=[4, 4], strides=[4, 4]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 19, None, None])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    np.savez(path.with_suffix(".npz"), weight=weight, bias=bias)


def graph_twin(path: Path):  # noqa: ANN201 (a closure over the saved weights)
    """The hand-built graph as a torch function (from the weights saved beside it)."""
    saved = np.load(path.with_suffix(".npz"))
    weight, bias = torch.from_numpy(saved["weight"]), torch.from_numpy(saved["bias"])
    return lambda images: F.avg_pool2d(F.conv2d(images, weight, bias), 4)


TORCH_FREE = """
import json, sys
for name in ("torch", "torchvision", "PIL", "open_clip", "safetensors"):
    sys.modules[name] = None  # any import of them now raises ImportError
import numpy as np
from ppar_core.onnx_predict import OnnxPredictor
predictor = OnnxPredictor.from_file(sys.argv[1], device="cpu")
image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
np.savez(sys.argv[2], labels=predictor.predict(image), scores=predictor.predict_logits(image), image=image)
assert all(sys.modules[name] is None for name in ("torch", "PIL"))  # still blocked: nothing imported them
print(json.dumps(sorted(m for m in sys.modules if m.startswith("ppar"))))
"""


def test_onnx_predictor_runs_where_torch_and_pil_cannot_be_imported(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    meta = metadata()
    write_graph(path, meta)
    out = tmp_path / "result.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(path), str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout)
    assert "ppar_core.onnx_predict" in loaded
    assert not {"ppar_core.inference", "ppar_core.predict", "ppar_core.normalize", "ppar_core.imageio"} & set(loaded)
    result = np.load(out)
    # The same image through the torch path with an independent torch version of the graph: same scores, labels.
    image = image_to_tensor(result["image"], device="cpu")
    expected = infer_logits(graph_twin(path), image, meta.protocol, num_classes=19)[0].numpy()
    np.testing.assert_allclose(result["scores"], expected, atol=1e-5, rtol=0)
    assert np.array_equal(result["labels"], expected.argmax(0).astype(np.uint8))


def test_fixed_size_graph_pads_windows_to_its_size_and_refuses_other_protocols(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    meta = metadata(input_size=(32, 32), protocol=InferenceConfig(mode="slide", crop_size=32, stride=16))
    write_graph(path, meta, size=(32, 32))
    predictor = OnnxPredictor.from_file(path, device="cpu")
    assert read_onnx_metadata(path) == meta
    image = _rng.integers(0, 256, (20, 50, 3), dtype=np.uint8)  # shorter than the crop: windows of 20x32, padded
    expected = infer_logits(graph_twin(path), image_to_tensor(image, device="cpu"), meta.protocol, num_classes=19)
    np.testing.assert_allclose(predictor.predict_logits(image), expected[0].numpy(), atol=1e-5, rtol=0)
    for change in ({"mode": "whole"}, {"crop_size": 64}):
        with pytest.raises(PparError, match="fixed 32x32 input"):
            OnnxPredictor.from_file(path, device="cpu", **change)


def test_opening_bad_files_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(PparError, match="does not exist"):
        OnnxPredictor.from_file(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(PparError, match="cannot open"):
        OnnxPredictor.from_file(tmp_path / "junk.onnx")
    path = tmp_path / "bare.onnx"
    write_graph(path, metadata())
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    path.write_bytes(model.SerializeToString())
    with pytest.raises(PparError, match="not one written by `ppar export`"):
        OnnxPredictor.from_file(path)
    with pytest.raises(PparError, match="Unknown device"):
        OnnxPredictor.from_file(path, device="tpu")


def test_cuda_needs_the_cuda_execution_provider(tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA execution provider")
    path = tmp_path / "m.onnx"
    write_graph(path, metadata())
    with pytest.raises(PparError, match="onnxruntime-gpu"):
        OnnxPredictor.from_file(path, device="cuda")
    assert OnnxPredictor.from_file(path, device="auto").providers == ["CPUExecutionProvider"]
