"""Prediction with an exported `.onnx` file under onnxruntime: no torch, no open_clip, no ppar model code.

    predictor = OnnxPredictor.from_file("model.onnx", device="cpu")
    labels = predictor.predict(image)          # image (H,W,3) uint8 RGB -> (H,W) uint8 trainIds
    scores = predictor.predict_logits(image)   # -> (K,H,W) float32 class scores

The inference protocol (whole image or sliding window, test scale, flip / multi-scale TTA) is implemented here once,
on numpy arrays (`infer_logits_np`), rule for rule as `ppar_core.inference.infer_logits` does it on torch tensors:
window placement, padding and rescaled sizes come from `ppar_core.protocol`, shared by both, and the bilinear
resize reproduces PyTorch's own arithmetic (`bilinear_resize`). mean/std and the recommended protocol are read from
the file's metadata (`OnnxMetadata`, written by `ppar_core.export`).

This module imports only numpy and the torch-free parts of ppar (protocol, errors); onnxruntime is imported
when a file is opened, so that the module can be imported (and the metadata schema used) without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ppar_core.errors import PparError
from ppar_core.protocol import InferenceConfig, padded_size, scaled_size, window_boxes

ONNX_FORMAT = "ppar-onnx-segmentor"
ONNX_FORMAT_VERSION = 1
INPUT_NAME = "images"  # (N,3,H,W) float32, RGB normalised as (x/255 - mean) / std
OUTPUT_NAME = "logits"  # (N,K,H/s,W/s) float32, s the output stride
EXTRA_HINT = "pip install 'ppar[export]'"
_PREFIX = "ppar."

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class OnnxMetadata:
    """What a consumer of an exported file needs, stored as strings in the ONNX `metadata_props` (`ppar.*` keys)."""

    class_names: tuple[str, ...]  # one per output channel, in channel order
    palette: tuple[tuple[int, int, int], ...]  # RGB colour per channel
    label_space: str  # "cityscapes" (19 trainIds) or another ppar label space
    train_ids: tuple[int, ...]  # the trainId each output channel stands for
    mean: tuple[float, float, float]  # RGB, 0-1 scale: input = (pixels / 255 - mean) / std
    std: tuple[float, float, float]
    patch_size: int  # input sides must be multiples of it (the ViT patch; 32 for ResNets)
    output_stride: float  # logits are (H / output_stride, W / output_stride)
    protocol: InferenceConfig  # the recommended inference protocol (the checkpoint's evaluation protocol)
    input_size: tuple[int, int] | None  # (H, W) of a fixed-size graph (`--crop`); None for dynamic H and W
    precision: str  # "fp32" or "fp16" (weights and compute; input and output are float32 either way)
    checkpoint_sha256: str  # of the .safetensors file that was exported
    checkpoint_step: int
    model_preset: str  # e.g. "vit-b16"
    ppar_version: str
    exporter: str  # "dynamo" or "torchscript": which of torch's exporters wrote the graph
    opset: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` entries: `ppar.<field>` -> JSON text (plain text for strings)."""
        props = {f"{_PREFIX}format": ONNX_FORMAT, f"{_PREFIX}format_version": str(ONNX_FORMAT_VERSION)}
        for key, value in asdict(self).items():
            props[_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str) -> OnnxMetadata:
        """Parse `to_props`'s entries; a file without them, or from a newer ppar, is a PparError naming `source`."""
        if props.get(f"{_PREFIX}format") != ONNX_FORMAT:
            raise PparError(
                f"{source} is an ONNX file but not one written by `ppar export` (no ppar metadata): export the "
                "checkpoint with `ppar export CKPT --out model.onnx`."
            )
        version = props.get(f"{_PREFIX}format_version", "")
        if not version.isdigit() or int(version) > ONNX_FORMAT_VERSION:
            raise PparError(
                f"{source} has ppar ONNX format version {version!r}, this ppar reads up to {ONNX_FORMAT_VERSION}: "
                "upgrade ppar, or export the checkpoint again with this version."
            )
        try:
            raw: dict[str, Any] = {
                key: props[_PREFIX + key] if key in _TEXT_FIELDS else json.loads(props[_PREFIX + key])
                for key in cls.__dataclass_fields__
            }
            fields: dict[str, Any] = {
                **raw,
                "class_names": tuple(raw["class_names"]),
                "palette": tuple(tuple(int(c) for c in rgb) for rgb in raw["palette"]),
                "train_ids": tuple(int(i) for i in raw["train_ids"]),
                "mean": tuple(float(m) for m in raw["mean"]),
                "std": tuple(float(s) for s in raw["std"]),
                "input_size": None if raw["input_size"] is None else tuple(int(s) for s in raw["input_size"]),
                "protocol": _protocol_from_dict(raw["protocol"]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise PparError(
                f"{source} has incomplete or damaged ppar metadata ({type(exc).__name__}: {exc}): export the "
                "checkpoint again with `ppar export`."
            ) from None
        return cls(**fields)


_TEXT_FIELDS = ("label_space", "precision", "checkpoint_sha256", "model_preset", "ppar_version", "exporter")


def _protocol_from_dict(data: dict[str, Any]) -> InferenceConfig:
    known = InferenceConfig.__dataclass_fields__
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown protocol fields {unknown}")
    values = dict(data)
    if "ms_scales" in values:
        values["ms_scales"] = tuple(float(s) for s in values["ms_scales"])
    return InferenceConfig(**values).validate()


# ----------------------------------------------------------------------------------------------------------------
# The inference protocol on numpy arrays (the twin of ppar_core.inference, which is tested to agree with it)


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 matrix of 1-D bilinear interpolation, half-pixel centres (align_corners=False).

    The arithmetic is PyTorch's CPU kernel's, in float32 (scale = in/out; src = scale * (dst + 0.5) - 0.5, clamped
    at 0; index = floor(src), its neighbour clamped at the border), so results agree with `F.interpolate` to float
    rounding (OpenCV's `resize` differed from it by up to 4e-5 on unit-variance data at non-integer scales).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    first = src.astype(np.int64)
    second = np.minimum(first + 1, in_size - 1)
    frac = np.clip(src - first.astype(np.float32), 0.0, 1.0).astype(np.float32)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, first), np.float32(1.0) - frac)
    np.add.at(weights, (rows, second), frac)
    return weights


def bilinear_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) float32 -> (..., H, W) float32, bilinear with half-pixel centres, as PyTorch's `F.interpolate`.

    Separable, as two matrix products with 2-nonzero-per-row weight matrices: BLAS makes it fast and multi-threaded.
    """
    h, w = array.shape[-2:]
    if (h, w) == tuple(size):
        return array
    rows = _linear_weights(h, size[0])  # (H, h)
    cols = _linear_weights(w, size[1])  # (W, w)
    return np.matmul(np.matmul(rows, array.astype(np.float32, copy=False)), cols.T)


def softmax_np(scores: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax in float32 along `axis`."""
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def normalize_np(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (1,3,H,W) float32 `(x - 255 mean) / (255 std)`: the float32 arithmetic of
    `ppar_core.normalize.normalize`, so both paths feed the model the same bits."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H,W,3) uint8 image, got {image.shape} {image.dtype}")
    scaled_mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    scaled_std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
    pixels = image.transpose(2, 0, 1).astype(np.float32)
    return ((pixels - scaled_mean) / scaled_std)[None]


def _forward_padded(model_fn: ArrayFn, batch: np.ndarray, padded: tuple[int, int], *, num_classes: int) -> np.ndarray:
    """Zero-pad (B,3,h,w) at the bottom and right to `padded`, run the model -> its raw (B,K,h',w') scores."""
    h, w = batch.shape[-2:]
    if (h, w) != padded:
        # Zero is the dataset mean after normalisation: the least surprising filler (as the torch path does).
        batch = np.pad(batch, ((0, 0), (0, 0), (0, padded[0] - h), (0, padded[1] - w)))
    logits = model_fn(np.ascontiguousarray(batch, dtype=np.float32))
    if logits.ndim != 4 or tuple(logits.shape[:2]) != (batch.shape[0], num_classes):
        raise PparError(
            f"The model returned scores of shape {tuple(logits.shape)} for input {tuple(batch.shape)}, expected "
            f"({batch.shape[0]}, {num_classes}, h, w): the ONNX file does not match its metadata; export it again."
        )
    return logits


def _window_scores(logits: np.ndarray, padded: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Raw scores (K,h',w') of one padded window -> (K,*size) float32: upsampled to `padded`, cropped to the window."""
    if tuple(logits.shape[-2:]) != padded:
        logits = bilinear_resize(logits.astype(np.float32, copy=False), padded)
    return logits[..., : size[0], : size[1]].astype(np.float32, copy=False)


def _pad_target(h: int, w: int, cfg: InferenceConfig, pad_to: tuple[int, int] | None) -> tuple[int, int]:
    if pad_to is None:
        return padded_size(h, w, cfg.size_divisor)
    if h > pad_to[0] or w > pad_to[1]:
        raise PparError(
            f"An input of {h}x{w} does not fit the fixed {pad_to[0]}x{pad_to[1]} graph: use slide inference with "
            f"crop {pad_to[0]}, or export without --crop."
        )
    return pad_to


def _slide(
    model_fn: ArrayFn, image: np.ndarray, cfg: InferenceConfig, *, num_classes: int, pad_to: tuple[int, int] | None
) -> np.ndarray:
    """Sliding-window logits for image (1,3,h,w) -> (1,K,h,w) float32, averaged over overlaps."""
    h, w = image.shape[-2:]
    crop_h, crop_w = min(cfg.crop_size, h), min(cfg.crop_size, w)
    padded = _pad_target(crop_h, crop_w, cfg, pad_to)
    boxes = window_boxes(h, w, cfg.crop_size, cfg.stride)
    total = np.zeros((1, num_classes, h, w), dtype=np.float32)
    count = np.zeros((1, 1, h, w), dtype=np.float32)
    for first in range(0, len(boxes), cfg.batch_size):
        chunk = boxes[first : first + cfg.batch_size]
        batch = np.concatenate([image[..., y : y + crop_h, x : x + crop_w] for y, x in chunk])
        logits = _forward_padded(model_fn, batch, padded, num_classes=num_classes)
        for i, (y, x) in enumerate(chunk):  # in box order, as the torch path sums them
            total[..., y : y + crop_h, x : x + crop_w] += _window_scores(logits[i], padded, (crop_h, crop_w))
            count[..., y : y + crop_h, x : x + crop_w] += 1
    return total / count


def _logits_at(
    model_fn: ArrayFn, image: np.ndarray, cfg: InferenceConfig, *, num_classes: int, pad_to: tuple[int, int] | None
) -> np.ndarray:
    """Logits of image (1,3,h,w) at its own size -> (1,K,h,w) float32, by cfg.mode."""
    if cfg.mode == "slide":
        return _slide(model_fn, image, cfg, num_classes=num_classes, pad_to=pad_to)
    h, w = image.shape[-2:]
    padded = _pad_target(h, w, cfg, pad_to)
    logits = _forward_padded(model_fn, image, padded, num_classes=num_classes)
    return _window_scores(logits[0], padded, (h, w))[None]


def infer_logits_np(
    model_fn: ArrayFn,
    image: np.ndarray,
    cfg: InferenceConfig,
    *,
    num_classes: int,
    pad_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """Class scores for one image at its original size: `ppar_core.inference.infer_logits` on numpy.

    model_fn: (B,3,h,w) float32 -> (B,K,h',w') float32 logits, at the input size or smaller (upsampled bilinearly
    here, one window at a time). image: (1,3,H,W) float32, normalised. pad_to: the (h, w) every window (or the whole
    image) is zero-padded to, for a fixed-size graph; None pads to multiples of cfg.size_divisor, as the torch path.
    Returns (1,K,H,W) float32: logits with tta "none" (resized from the test scale when it is not 1); with "flip" /
    "ms-flip" the mean of the softmax probabilities over all views, each resized back to HxW before the softmax.
    """
    cfg.validate()
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"infer_logits_np expects one image of shape (1,3,H,W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    base = cfg.long_side / max(height, width) if cfg.long_side is not None else cfg.scale
    factors = [base * s for s in cfg.ms_scales] if cfg.tta == "ms-flip" else [base]
    flips = [False, True] if cfg.tta in ("flip", "ms-flip") else [False]
    result: np.ndarray | None = None
    for factor in factors:
        size = scaled_size(height, width, factor)
        scaled = image if size == (height, width) else bilinear_resize(image, size)
        for flip in flips:
            view = np.ascontiguousarray(scaled[..., ::-1]) if flip else scaled
            scores = _logits_at(model_fn, view, cfg, num_classes=num_classes, pad_to=pad_to)
            if flip:
                scores = scores[..., ::-1]
            if size != (height, width):
                scores = bilinear_resize(scores, (height, width))
            if cfg.tta != "none":
                scores = softmax_np(scores, axis=1)
            result = np.array(scores, dtype=np.float32) if result is None else np.add(result, scores, out=result)
    assert result is not None  # factors and flips are never empty
    views = len(factors) * len(flips)
    return result if views == 1 else result / np.float32(views)


# ----------------------------------------------------------------------------------------------------------------
# The predictor


class OnnxPredictor:
    """Runs an exported ppar model under onnxruntime: the interface of `ppar_core.predict.Predictor` on numpy.

    `session` is an `onnxruntime.InferenceSession` of a file written by `ppar export`; `inference` replaces the
    recommended protocol of its metadata. A fixed-size graph (`--crop`) only runs windows of its size: the protocol
    is then sliding-window with that crop, and smaller windows are zero-padded to it.
    """

    def __init__(self, session: Any, *, metadata: OnnxMetadata, inference: InferenceConfig | None = None) -> None:
        self.session = session
        self.metadata = metadata
        self.inference = self._checked(inference or metadata.protocol)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        inference: InferenceConfig | None = None,
        threads: int | None = None,
        **changes: Any,
    ) -> OnnxPredictor:
        """Open `path` on `device` ("auto", "cpu", "cuda" or "cuda:N"); `changes` replace protocol fields.

        "cuda" uses onnxruntime's CUDA execution provider (the onnxruntime-gpu package); "auto" uses it when present.
        `threads` sets onnxruntime's intra-op threads (default: all physical cores).
        """
        path = Path(path)
        session = open_session(path, device=device, threads=threads)
        metadata = OnnxMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
        base = inference or metadata.protocol
        return cls(session, metadata=metadata, inference=replace(base, **changes) if changes else base)

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime runs this file with, in priority order."""
        return list(self.session.get_providers())

    def _checked(self, cfg: InferenceConfig) -> InferenceConfig:
        cfg.validate()
        fixed = self.metadata.input_size
        if fixed is not None and (cfg.mode != "slide" or cfg.crop_size != fixed[0]):
            raise PparError(
                f"This ONNX file has a fixed {fixed[0]}x{fixed[1]} input (exported with --crop): use slide inference "
                f"with crop {fixed[0]} (mode {cfg.mode}, crop {cfg.crop_size} asked), or export without --crop."
            )
        return cfg

    def to_array(self, image: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (1,3,H,W) float32, normalised with the file's mean/std."""
        return normalize_np(image, self.metadata.mean, self.metadata.std)

    def run(self, images: np.ndarray) -> np.ndarray:
        """images (B,3,h,w) float32 normalised, h and w multiples of the patch size -> logits (B,K,h/s,w/s) float32."""
        h, w = images.shape[-2:]
        patch = self.metadata.patch_size
        if h % patch or w % patch:
            raise PparError(
                f"Input size {h}x{w} is not a multiple of {patch}, the model's patch size: use crop and image sizes "
                f"(and a size divisor) that are multiples of {patch}."
            )
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0], dtype=np.float32)

    def predict_logits(self, image: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> class scores (K,H,W) float32, with the configured protocol and TTA."""
        fixed = self.metadata.input_size
        scores = infer_logits_np(
            self.run, self.to_array(image), self.inference, num_classes=self.num_classes, pad_to=fixed
        )
        return scores[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (H,W) uint8 trainIds (the argmax channel, as `Predictor.predict`)."""
        return self.predict_logits(image).argmax(axis=0).astype(np.uint8)


def _import_onnxruntime() -> Any:
    try:
        # Imported here, not at the top: the module stays importable (metadata, protocol) without the extra.
        import onnxruntime
    except ImportError:
        raise PparError(f"Running .onnx files needs onnxruntime, which is not installed: {EXTRA_HINT}.") from None
    return onnxruntime


def open_session(path: Path, *, device: str = "auto", threads: int | None = None) -> Any:
    """An `onnxruntime.InferenceSession` of `path` on `device`; a missing or unreadable file is a PparError."""
    ort = _import_onnxruntime()
    if not path.is_file():
        raise PparError(f"ONNX file {path} does not exist: check the path, or write it with `ppar export`.")
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider"
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        if cuda not in available or not index.isdigit():
            raise PparError(
                f"Device {device!r} needs onnxruntime's CUDA execution provider, which this onnxruntime lacks "
                f"(it has {', '.join(available)}): install onnxruntime-gpu, or use --device cpu."
            )
        providers: list[Any] = [(cuda, {"device_id": int(index)}), "CPUExecutionProvider"]
    elif device in ("auto", "cpu"):
        providers = (
            [cuda, "CPUExecutionProvider"] if device == "auto" and cuda in available else ["CPUExecutionProvider"]
        )
    else:
        raise PparError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime's optimisation notes are not the user's to act on
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise PparError(
            f"onnxruntime cannot open {path} ({reason}): the file is damaged or not an ONNX model; export it again."
        ) from None


def read_onnx_metadata(path: str | Path) -> OnnxMetadata:
    """The ppar metadata of an exported file (opens it with onnxruntime on the CPU)."""
    path = Path(path)
    session = open_session(path, device="cpu")
    return OnnxMetadata.from_props(session.get_modelmeta().custom_metadata_map, source=str(path))
