"""Export a checkpoint's inference network to one self-describing `.onnx` file, and check it against PyTorch.

    result = export_onnx("runs/g2cbm/last.safetensors", "model.onnx")   # dynamic N, H, W; fp32; checked
    result = export_onnx(ckpt, "model-512.onnx", crop=512, fp16=True)    # fixed 512x512 windows, half precision

The graph is `PPARSegmentor.infer`: normalised windows (N,3,H,W) float32 -> logits (N,K,H/4,W/4) float32 (CLIP
tower, decode head, VTP decoder, prototype classifier with its prototypes baked in), the position embedding
resampled to the input's token grid inside the graph. `metadata_props` carry what a consumer needs
(`ppar_core.onnx_predict.OnnxMetadata`); `OnnxPredictor` runs the file without torch. The parity check runs before
the file is moved into place: a file that fails it is never written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from ppar_core.checkpoint import Checkpoint
from ppar_core.clip.encoder import DenseClipEncoder, resize_pos_embed_grid
from ppar_core.config import TrainConfig
from ppar_core.errors import PparError
from ppar_core.files import atomic_write, check_output_file, file_sha256
from ppar_core.labels import CLASS_NAMES, LABEL_SPACES, PALETTE
from ppar_core.loading import describe_file, load_segmentor
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.normalize import CLIP_MEAN, CLIP_STD
from ppar_core.onnx_parity import ParityCheck, parity_checks
from ppar_core.onnx_predict import EXTRA_HINT, INPUT_NAME, OUTPUT_NAME, OnnxMetadata
from ppar_core.protocol import InferenceConfig
from ppar_core.version import __version__

log = logging.getLogger("ppar.export")

DEFAULT_OPSET = 18  # the oldest opset torch's dynamo exporter writes (it writes 18 when asked for 17)
MIN_OPSET = 17  # LayerNormalization; opset 17 goes through the TorchScript exporter, so it needs a fixed --crop
EXAMPLE_GRID = (4, 6)  # token grid of the tracing example: unlike any native grid, so nothing specialises to it
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit on one serialised message: the file must hold its weights inline


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote: the file, its size, the metadata it carries, the time taken and the checks run."""

    path: Path
    size_bytes: int
    metadata: OnnxMetadata
    export_seconds: float  # building the graph, converting and checking it with the onnx checker
    check_seconds: float  # the parity checks (0 with check=False)
    checks: tuple[ParityCheck, ...]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    crop: int | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    check: bool = True,
    check_image: np.ndarray | None = None,
    force: bool = False,
) -> ExportResult:
    """Export `checkpoint` (a ppar model checkpoint) to the ONNX file `out`, atomically.

    crop: a fixed crop x crop input (what TensorRT wants) instead of dynamic H and W; N stays dynamic either way.
    fp16: weights and compute in half precision (input and output stay float32). check_image: (H,W,3) uint8 RGB for
    the image check (default: a synthetic street scene). Every bad input is a PparError raised before anything is
    written; an existing `out` is replaced only with `force`. A failed parity check raises and writes nothing.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out, force=force)
    if opset < MIN_OPSET:
        raise PparError(f"ONNX opset {opset} is too old: pass --opset {MIN_OPSET} or newer (default {DEFAULT_OPSET}).")
    if opset < DEFAULT_OPSET and crop is None:
        raise PparError(
            f"ONNX opset {opset} needs a fixed input size (only the TorchScript exporter writes it, and it cannot keep "
            f"H and W dynamic for this model): add --crop, or use --opset {DEFAULT_OPSET} or newer."
        )
    onnx = _require_extra()
    _check_model_checkpoint(checkpoint)
    model, cfg, record = load_segmentor(checkpoint, device="cpu")
    encoder = model.encoder
    if crop is not None and (crop % encoder.stride or crop < 2 * encoder.stride):
        raise PparError(
            f"--crop {crop} must be a multiple of {encoder.stride} (the {encoder.preset.name} stride) and at least "
            f"{2 * encoder.stride}: pass e.g. --crop {max(2, round(crop / encoder.stride)) * encoder.stride}."
        )
    precision = "fp16" if fp16 else "fp32"
    metadata = _metadata(model, cfg, record, crop=crop, precision=precision, opset=opset)
    log.info("Exporting %s (%s, %s) to %s", checkpoint, cfg.model.preset, precision, out)

    done: dict[str, Any] = {}  # what `write` found out: timings, the final metadata
    checks: list[ParityCheck] = []

    def write(tmp: Path) -> None:
        start = time.perf_counter()
        proto, exporter = _export_proto(onnx, model, crop=crop, fp16=fp16, opset=opset)
        written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if written != opset:  # recorded as written: the metadata must describe the file
            log.warning("Asked for ONNX opset %d, torch's exporter wrote opset %d.", opset, written)
        full = replace(metadata, exporter=exporter, opset=written)
        for key, value in full.to_props().items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = f"ppar {cfg.model.preset} segmentor: {INPUT_NAME} (N,3,H,W) -> {OUTPUT_NAME} (N,K,H/s,W/s)"
        if proto.ByteSize() > MAX_PROTO_BYTES:
            raise PparError(
                f"The exported {cfg.model.preset} graph is over 2 GB, the limit of one ONNX file: export with --fp16."
            )
        onnx.checker.check_model(proto, full_check=True)
        tmp.write_bytes(proto.SerializeToString())
        done["export"] = time.perf_counter() - start
        start = time.perf_counter()
        if check:
            try:
                checks.extend(parity_checks(tmp, model, cfg, full, image=check_image))
            except PparError:
                raise
            except Exception as exc:  # onnxruntime's own error types, e.g. a size the TorchScript exporter baked in
                raise PparError(
                    f"onnxruntime cannot run the graph exported from {checkpoint} ({_first_line(exc)}): nothing was "
                    "written; export with a fixed --crop, or report it with the output of --debug."
                ) from None
        done["check"] = time.perf_counter() - start
        failed = [c for c in checks if not c.passed]
        if failed:
            c = failed[0]
            raise PparError(
                f"The ONNX graph of {checkpoint} disagrees with PyTorch on the {c.name} check (max |difference| "
                f"{c.max_abs_diff:.3g} > {c.tolerance:.3g}, or argmax agreement {c.agreement:.4%} < "
                f"{c.min_agreement:.1%}): nothing was written; try another --opset, or --no-check to keep it anyway."
            )
        done["metadata"] = full

    try:
        atomic_write(out, write)
    except OSError as exc:
        raise PparError(f"Could not write {out} ({exc.strerror or exc}): choose another --out.") from None
    size = out.stat().st_size
    return ExportResult(out, size, done["metadata"], done["export"], done["check"], tuple(checks))


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def _check_out(out: Path, *, force: bool) -> None:
    """--out must be a writable `.onnx` path; an existing ONNX file only with `force`, anything else never."""
    if out.suffix.lower() != ".onnx":
        raise PparError(f"--out {out} must end in .onnx, so that `ppar predict` recognises it: pass e.g. model.onnx.")
    check_output_file(out, force=force, kind="an ONNX model", describe=describe_file)


def _require_extra() -> Any:
    """The `onnx` module, after checking that the `export` extra (onnx, onnxruntime, onnxscript) is installed."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            # Imported here: they are an optional extra, and `import ppar_core.export` must not need them.
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise PparError(f"`ppar export` needs {', '.join(missing)}, which is not installed: {EXTRA_HINT}.")
    import onnx

    return onnx


def _check_model_checkpoint(path: Path) -> None:
    """A prototypes file or a training-state file given as the checkpoint: say which file to pass instead.

    Other problems (missing, damaged, another format) are left to `load_checkpoint`, which names them.
    """
    kind = describe_file(path) if path.is_file() else None
    if kind == "a prototypes file":
        raise PparError(
            f"{path} is a prototypes file (from `ppar prototypes build`), not a model checkpoint: pass a "
            "checkpoint a training run wrote, e.g. runs/NAME/last.safetensors."
        )
    if kind == "a training-state file":
        name = path.name.replace(".state.safetensors", ".safetensors")
        raise PparError(
            f"{path} is a training-state file (optimizer and RNG state for --resume), not a model checkpoint: "
            f"pass the model checkpoint beside it, {path.with_name(name)}."
        )


def _metadata(model: PPARSegmentor, cfg: TrainConfig, record: Checkpoint, **fields: Any) -> OnnxMetadata:
    """The metadata of the file; `fields`: crop, precision, opset (the exporter is filled in once the graph exists)."""
    num_classes, crop = model.num_classes, fields["crop"]
    space_name = str((record.meta.get("prototypes") or {}).get("label_space") or "cityscapes")
    space = LABEL_SPACES.get(space_name)
    if space is not None and space.num_classes == num_classes:
        train_ids, names = space.train_ids, space.class_names
    else:  # a label space this ppar does not know: channels keep their index
        train_ids, names = tuple(range(num_classes)), tuple(f"class {k}" for k in range(num_classes))
    palette = tuple(tuple(int(c) for c in PALETTE[i]) if i < len(CLASS_NAMES) else (0, 0, 0) for i in train_ids)
    protocol = cfg.eval if crop is None else _fixed_protocol(cfg.eval, crop)
    return OnnxMetadata(
        class_names=tuple(names),
        palette=palette,  # type: ignore[arg-type]  # tuples of three ints
        label_space=space_name,
        train_ids=tuple(train_ids),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        patch_size=model.encoder.stride,
        output_stride=float(model.head.out_stride),
        protocol=protocol,
        input_size=None if crop is None else (crop, crop),
        precision=fields["precision"],
        checkpoint_sha256=file_sha256(record.path),
        checkpoint_step=record.step,
        model_preset=cfg.model.preset,
        ppar_version=__version__,
        exporter="",
        opset=fields["opset"],
    )


def _fixed_protocol(protocol: InferenceConfig, crop: int) -> InferenceConfig:
    """The checkpoint's protocol with `crop` x `crop` sliding windows (the only input a fixed graph takes); the
    stride keeps its ratio to the crop (341/512 stays 2/3)."""
    stride = protocol.stride if protocol.crop_size == crop else round(crop * protocol.stride / protocol.crop_size)
    return replace(protocol, mode="slide", crop_size=crop, stride=min(max(stride, 1), crop))


# ----------------------------------------------------------------------------------------------------------------
# The graph


class _InferenceGraph(nn.Module):
    """images (N,3,H,W) float32 -> logits (N,K,H/s,W/s) float32: `PPARSegmentor.infer` as one graph.

    `infer` runs the head one image at a time (a Python loop over N, which would fix N in a graph); here the head
    sees the whole batch, which gives the same scores because the head has no batch coupling (GroupNorm, eval-mode
    dropout). fp16 graphs cast the input to half inside, so every file takes and returns float32.
    """

    def __init__(self, model: PPARSegmentor, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.to(self.dtype)).logits.float()


@contextlib.contextmanager
def _position_embedding_in_graph(encoder: DenseClipEncoder, fixed_grid: tuple[int, int] | None) -> Iterator[None]:
    """Make the encoder's position embedding follow the input's token grid in the traced graph.

    Its own `position_embedding` turns the grid into Python ints and caches resampled copies per grid, which a
    tracer records as one constant of the example's size. Dynamic graphs resample in the graph (bicubic, the same
    function; at the native grid the identity up to float rounding); a fixed-size graph gets the embedding for its
    one grid as a constant, computed here as the eager path computes it, so the graph has no resampling left.
    """
    constant = None
    if fixed_grid is not None:
        with torch.no_grad():
            constant = resize_pos_embed_grid(encoder._pos_param(), encoder.native_grid, fixed_grid).clone()

    def resample(grid: tuple[Any, Any]) -> Tensor:
        if constant is not None and tuple(grid) == fixed_grid:
            return constant
        return resize_pos_embed_grid(encoder._pos_param(), encoder.native_grid, grid)

    encoder.position_embedding = resample  # type: ignore[method-assign]  # an instance attribute shadows the method
    try:
        yield
    finally:
        del encoder.position_embedding


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' warnings (notes on their own optimisation passes a user cannot act on); errors raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _export_proto(onnx: Any, model: PPARSegmentor, *, crop: int | None, fp16: bool, opset: int) -> tuple[Any, str]:
    """Trace the inference graph -> (onnx.ModelProto, exporter name): torch's dynamo exporter, else TorchScript's.

    `onnx` is the module (the optional extra, imported by `_require_extra`). N is dynamic; H and W too, as
    multiples of the patch size of at least 2 patches (the pyramid's stride-32 level), unless `crop` fixes them.
    """
    net = copy.deepcopy(model).half() if fp16 else model
    graph = _InferenceGraph(net, torch.float16 if fp16 else torch.float32).eval()
    patch = model.encoder.stride
    size = (crop, crop) if crop is not None else (EXAMPLE_GRID[0] * patch, EXAMPLE_GRID[1] * patch)
    example = (torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)),)
    # verbose=False: otherwise the dynamo exporter prints its progress to stdout, where `--json` output goes.
    names: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "verbose": False,
    }
    dims: dict[int, Any] = {0: Dim("batch", min=1)}
    in_axes, out_axes = {0: "batch"}, {0: "batch"}
    if crop is None:
        dims.update({2: patch * Dim("grid_h", min=2), 3: patch * Dim("grid_w", min=2)})
        in_axes, out_axes = {**in_axes, 2: "height", 3: "width"}, {**out_axes, 2: "out_height", 3: "out_width"}
    errors = []
    # Not under no_grad: nn.MultiheadAttention would take its fused fast path, which TorchScript cannot export.
    grid = None if crop is None else (crop // patch, crop // patch)
    with _position_embedding_in_graph(net.encoder, grid), _quiet_exporters():
        if opset >= DEFAULT_OPSET:  # the dynamo exporter writes 18 or newer
            try:
                program = torch.onnx.export(
                    graph, example, None, dynamo=True, dynamic_shapes={"images": dims}, external_data=False, **names
                )
                assert program is not None  # with f=None the dynamo exporter returns the program
                return program.model_proto, "dynamo"
            except Exception as exc:  # any failure of the new exporter: the TorchScript one may still manage
                errors.append(f"dynamo: {_first_line(exc)}")
                log.warning("The dynamo exporter failed (%s); trying the TorchScript exporter.", errors[-1])
        buffer = io.BytesIO()
        try:
            axes = {INPUT_NAME: in_axes, OUTPUT_NAME: out_axes}
            # A file object works although the type hints name paths only.
            torch.onnx.export(graph, example, buffer, dynamo=False, dynamic_axes=axes, **names)  # type: ignore[arg-type]
        except Exception as exc:
            errors.append(f"TorchScript: {_first_line(exc)}")
            raise PparError(
                f"torch could not export the {model.encoder.preset.name} model to ONNX opset {opset} "
                f"({'; '.join(errors)}): try another --opset, or report it with the output of --debug."
            ) from None
    return onnx.load_from_string(buffer.getvalue()), "torchscript"


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
