"""`ppar export`: a tiny checkpoint to ONNX and back: onnxruntime against PyTorch, the metadata, the fixed-size and
fp16 graphs, `predict_files` on both paths, and every bad input as one line that changes no file.

Exports are slow (about 10 s each for `tiny`): one dynamic fp32 file is shared by the module, written through the
command itself; the fixed-size fp16 file is a second one.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from ppar_cli import export as export_cli
from ppar_core.errors import PparError
from ppar_core.export import export_onnx
from ppar_core.files import file_sha256
from ppar_core.imageio import read_user_image
from ppar_core.labels import CLASS_NAMES, PALETTE
from ppar_core.loading import load_segmentor
from ppar_core.normalize import CLIP_MEAN, CLIP_STD
from ppar_core.onnx_parity import MIN_AGREEMENT, TOLERANCE
from ppar_core.onnx_predict import OnnxMetadata, OnnxPredictor, read_onnx_metadata
from ppar_core.predict import Predictor, collect_inputs, predict_files
from ppar_core.protocol import InferenceConfig


@pytest.fixture(scope="module")
def model(tiny_run: Any) -> Any:
    return load_segmentor(tiny_run.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def exported(tiny_run: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`ppar export CKPT --out model.onnx --json` (dynamic axes, fp32, checked) -> (the file, the JSON it printed)."""
    app = typer.Typer()
    app.command("export", help=export_cli.HELP)(export_cli.command)
    app.command("other")(lambda: None)  # a second command, so that the command name is part of the line
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(tiny_run.checkpoint), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _cubic_resizes(graph: Any) -> int:
    return sum(n.op_type == "Resize" and any(a.s == b"cubic" for a in n.attribute) for n in graph.node)


def run_ort(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images.numpy()})[0]


def test_dynamic_graph_equals_pytorch_at_two_sizes(exported: tuple[Path, dict[str, Any]], model: Any) -> None:
    path, _ = exported
    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert _cubic_resizes(graph) == 1  # the position embedding is resampled inside the graph, for any input size
    assert [d.dim_param or d.dim_value for d in dims][1] == 3 and all(d.dim_param for d in (dims[0], dims[2], dims[3]))
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160)]:
        images = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
        with torch.inference_mode():
            expected = model[0].infer(images).numpy()
        got = run_ort(path, images)
        assert got.shape == expected.shape == (shape[0], 19, shape[2] // 4, shape[3] // 4)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_the_checks_the_command_printed(exported: tuple[Path, dict[str, Any]]) -> None:
    _, printed = exported
    checks = {c["name"]: c for c in printed["checks"]}
    assert checks["random"]["shape"] == [2, 19, 24, 40]  # 96x160: not the size the graph was traced at
    assert checks["image"]["shape"] == [19, 256, 512]  # the synthetic scene through the checkpoint's protocol
    for check in checks.values():
        assert check["passed"] and 0 <= check["max_abs_diff"] <= 1e-4 and check["agreement"] == 1.0
    assert printed["metadata"]["exporter"] == "dynamo" and printed["size_bytes"] == exported[0].stat().st_size


def test_metadata_round_trip(exported: tuple[Path, dict[str, Any]], model: Any, tiny_run: Any) -> None:
    path, printed = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, source=str(path))
    assert meta == read_onnx_metadata(path)  # the onnx package and onnxruntime read the same metadata
    assert meta.class_names == CLASS_NAMES and np.array_equal(np.array(meta.palette), PALETTE)
    assert meta.label_space == "cityscapes" and meta.train_ids == tuple(range(19))
    assert meta.mean == CLIP_MEAN and meta.std == CLIP_STD
    assert meta.patch_size == 16 and meta.output_stride == 4.0 and meta.input_size is None
    assert meta.protocol == model[1].eval  # the checkpoint's evaluation protocol: whole image for synth-tiny
    assert meta.checkpoint_sha256 == file_sha256(tiny_run.checkpoint) and meta.checkpoint_step == 4
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert meta.opset == opset == 18 and meta.precision == "fp32"
    assert printed["metadata"]["class_names"] == list(CLASS_NAMES)


@pytest.mark.parametrize("tta", ["none", "flip"])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_protocols_under_onnxruntime_equal_pytorch(
    exported: tuple[Path, dict[str, Any]], model: Any, tiny_run: Any, mode: str, tta: str
) -> None:
    """The numpy protocol with the exported graph against `infer_logits` with the PyTorch model."""
    cfg = InferenceConfig(mode=mode, crop_size=64, stride=40, tta=tta, batch_size=2)
    image = read_user_image(sorted((tiny_run.data_root / "synth-real" / "images").glob("*.png"))[0])
    got = OnnxPredictor.from_file(exported[0], device="cpu", inference=cfg).predict_logits(image)
    expected = Predictor(model[0], config=model[1], inference=cfg).predict_logits(image).numpy()
    assert got.shape == expected.shape == (19, *image.shape[:2])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.array_equal(got.argmax(0), expected.argmax(0))  # 100% argmax agreement on a synthetic scene


def test_predict_files_writes_identical_trainid_pngs(
    exported: tuple[Path, dict[str, Any]], model: Any, synth_root: Path, tmp_path: Path
) -> None:
    """What `ppar predict model.onnx` and `ppar predict CKPT` write, at the library level: 3 scenes, slide."""
    images = sorted((synth_root / "synth-real" / "images").glob("*.png"))[:3]
    items = collect_inputs(images)
    cfg = InferenceConfig(mode="slide", crop_size=64, stride=32)
    onnx_summary = predict_files(
        OnnxPredictor.from_file(exported[0], device="cpu", inference=cfg), items, tmp_path / "onnx", formats=["trainid"]
    )
    torch_summary = predict_files(
        Predictor(model[0], config=model[1], inference=cfg), items, tmp_path / "torch", formats=["trainid"]
    )
    assert onnx_summary.done == torch_summary.done == 3 and not onnx_summary.failed
    for item in items:
        a = np.asarray(Image.open(tmp_path / "onnx" / f"{item.rel}_trainid.png"))
        b = np.asarray(Image.open(tmp_path / "torch" / f"{item.rel}_trainid.png"))
        assert a.shape == read_user_image(item.path).shape[:2] and np.array_equal(a, b)


def test_fixed_crop_fp16_graph_replacing_a_file_with_force(tiny_run: Any, model: Any, tmp_path: Path) -> None:
    """--crop 64 --fp16: a 64x64 graph (N dynamic), within the stated fp16 tolerance of the fp32 PyTorch model."""
    (tmp_path / "fixed.onnx").write_bytes(b"an earlier export")
    result = export_onnx(tiny_run.checkpoint, tmp_path / "fixed.onnx", crop=64, fp16=True, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]  # replaced, no temporary file left
    graph = onnx.load(str(result.path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64] and dims[0].dim_param
    assert _cubic_resizes(graph) == 0  # one grid: the resampled position embedding is a constant
    meta = result.metadata
    assert meta.input_size == (64, 64) and meta.precision == "fp16"
    # The checkpoint's protocol (whole, crop 256, stride 171) as 64x64 windows, the stride at 171/256 of the crop.
    assert meta.protocol == replace(model[1].eval, mode="slide", crop_size=64, stride=43)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        expected = model[0].infer(images).numpy()
    got = run_ort(result.path, images)
    assert np.abs(got - expected).max() <= TOLERANCE["fp16"] * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= MIN_AGREEMENT["fp16"]
    assert [c.name for c in result.checks] == ["random", "image"] and all(c.passed for c in result.checks)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        run_ort(result.path, torch.zeros(1, 3, 96, 160))  # a fixed graph takes its size only
    with pytest.raises(PparError, match="fixed 64x64 input"):
        OnnxPredictor.from_file(result.path, mode="whole")


def test_torchscript_fallback_when_the_dynamo_exporter_fails(
    tiny_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = torch.onnx.export

    def dynamo_fails(*args: Any, dynamo: bool = True, **kwargs: Any) -> Any:
        if dynamo:
            raise RuntimeError("an operator it cannot translate (simulated)")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    result = export_onnx(tiny_run.checkpoint, tmp_path / "fixed.onnx", crop=64)
    assert result.metadata.exporter == "torchscript" and [c.passed for c in result.checks] == [True, True]
    assert read_onnx_metadata(result.path).exporter == "torchscript"
    # Dynamic H and W: TorchScript bakes the example's token count into the attention reshapes, so onnxruntime fails
    # at the check's other size: one sentence, and no file.
    with pytest.raises(PparError, match="onnxruntime cannot run the graph exported from"):
        export_onnx(tiny_run.checkpoint, tmp_path / "dynamic.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.onnx"]


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: one line, exit code 1, no file changed


@pytest.fixture
def ppar(cli: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`cli` with `export` mounted on the real root app, as the integrator mounts it (unless it already is)."""
    from ppar_cli import main as root

    if not any(c.name == "export" for c in root.app.registered_commands):
        monkeypatch.setattr(root.app, "registered_commands", list(root.app.registered_commands))
        root.app.command("export", help=export_cli.HELP)(export_cli.command)
    return cli


def _hashes(*folders: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_help_has_an_example(ppar: Any) -> None:
    result = ppar("export", "--help")
    assert result.code == 0 and "Example: ppar export" in result.out


@pytest.mark.parametrize(
    "case",
    ["prototypes", "state", "unwritable", "exists", "extra", "suffix", "opset", "opset17-dynamic", "folder", "crop"],
)
def test_bad_input_is_one_line_and_changes_no_file(
    ppar: Any, tiny_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    ckpt = tiny_run.checkpoint
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    (tmp_path / "notes.txt").write_text("a file")
    out, extra = tmp_path / "new.onnx", []
    if case == "prototypes":
        ckpt, needle = tiny_run.out / "prototypes.safetensors", "is a prototypes file"
    elif case == "state":
        needle = f"pass the model checkpoint beside it, {ckpt}"
        ckpt = tiny_run.out / "last.state.safetensors"
    elif case == "unwritable":
        out, needle = tmp_path / "notes.txt" / "model.onnx", "is a file, not a folder"
    elif case == "exists":
        out, needle = tmp_path / "model.onnx", "already exists: pass --force"
    elif case == "extra":
        monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
        needle = "pip install 'ppar[export]'"
    elif case == "suffix":
        out, needle = tmp_path / "model.bin", "must end in .onnx"
    elif case == "opset":
        extra, needle = ["--opset", "13"], "pass --opset 17 or newer"
    elif case == "opset17-dynamic":
        extra, needle = ["--opset", "17"], "needs a fixed input size"
    elif case == "folder":
        out, needle = tmp_path / "dir.onnx", "is a folder"
        out.mkdir()
    else:
        extra, needle = ["--crop", "50"], "must be a multiple of 16"
    before = _hashes(tmp_path, tiny_run.out)
    result = ppar("export", ckpt, "--out", out, *extra)
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.err
    assert "Traceback" not in result.err + result.out
    assert _hashes(tmp_path, tiny_run.out) == before  # nothing changed, nothing new (no temporary file either)
