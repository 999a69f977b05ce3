"""The library entry for running a trained model: `Predictor.from_checkpoint(path).predict(image)`.

    predictor = Predictor.from_checkpoint("runs/g2cbm/last.safetensors", device="auto")
    labels = predictor.predict(image)          # image (H,W,3) uint8 RGB -> (H,W) uint8 trainIds
    scores = predictor.predict_logits(image)   # -> (K,H,W) float32 class scores

Files: `collect_inputs(["img.png", "street/", "*.jpg"])` then `predict_files(predictor, items, "preds/")` writes
`preds/<name>_{overlay,color,trainid,labelid}.png` and returns a summary (classes found, failures).
"""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ppar_core.config import TrainConfig
from ppar_core.errors import PparError
from ppar_core.files import check_output_folder, next_free_folder
from ppar_core.imageio import IMAGE_EXTENSIONS, read_user_image, write_png
from ppar_core.inference import infer_logits
from ppar_core.labels import NUM_CLASSES, TRAINID_TO_LABELID, colorize
from ppar_core.loading import describe_file, find_checkpoint, is_model_checkpoint, load_segmentor
from ppar_core.modeling.segmentor import PPARSegmentor
from ppar_core.normalize import image_to_tensor
from ppar_core.progress import ProgressFn
from ppar_core.protocol import InferenceConfig
from ppar_core.visualize import overlay_with_legend


class Predictor:
    """Runs a trained segmentor on numpy images, with the checkpoint's evaluation protocol unless told otherwise."""

    def __init__(self, model: PPARSegmentor, *, config: TrainConfig, inference: InferenceConfig | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.inference = (inference or config.eval).validate()
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str = "auto", inference: InferenceConfig | None = None, **changes: Any
    ) -> Predictor:
        """`changes` replace fields of the inference config (e.g. `mode="whole"`, `tta="flip"`)."""
        model, cfg, _ = load_segmentor(path, device=device)
        base = inference or cfg.eval
        return cls(model, config=cfg, inference=replace(base, **changes) if changes else base)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def to_tensor(self, image: np.ndarray) -> Tensor:
        """(H,W,3) uint8 RGB -> (1,3,H,W) float32 CLIP-normalised on the model's device."""
        return image_to_tensor(image, device=self.device)

    def predict_torch(self, images: Tensor) -> Tensor:
        """images (B,3,H,W) normalised, H and W multiples of the patch size -> logits (B,K,H,W) float32."""
        with torch.inference_mode():
            return self.model.predict_logits(images)

    def predict_logits(self, image: np.ndarray) -> Tensor:
        """(H,W,3) uint8 RGB -> class scores (K,H,W) float32 on the CPU, with the configured inference/TTA."""
        scores = infer_logits(
            self.model.infer,
            self.to_tensor(image),
            self.inference,
            num_classes=self.num_classes,
            accumulate_device=torch.device("cpu") if image.shape[0] * image.shape[1] > 4096 * 2048 else None,
        )
        return scores[0].float().cpu()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (H,W) uint8 trainIds."""
        return self.predict_logits(image).max(dim=0).indices.to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------------------------
# Predicting files: inputs -> outputs on disk (the library side of `ppar predict`)

OUTPUT_FORMATS: tuple[str, ...] = ("overlay", "color", "trainid", "labelid")


@dataclass(frozen=True)
class PredictInput:
    """One image to predict: its path and the output name stem `rel` (a relative path without extension)."""

    path: Path
    rel: str


MODEL_SUFFIXES = (".safetensors", ".onnx")
DEFAULT_OUT = Path("runs") / "predict"


def choose_model(
    inputs: Sequence[str], checkpoint: str | Path | None = None, *, cwd: str | Path = "."
) -> tuple[Path, str, list[str]]:
    """Which model `ppar predict` uses and which arguments are images -> (model, how it was found, inputs).

    `checkpoint` (--checkpoint/-c) when given; else a first argument that is a model (a ppar checkpoint or an
    .onnx file) is the model; else $PPAR_CHECKPOINT, else the newest runs/*/last.safetensors under `cwd`. A file
    given as the model that is something else ("an image", "a prototypes file") is one clear PparError.
    """
    rest = list(inputs)
    if checkpoint is None and rest and Path(rest[0]).suffix.lower() in MODEL_SUFFIXES:
        checkpoint, rest = rest[0], rest[1:]
    path, how = find_checkpoint(checkpoint, cwd=cwd)
    if not path.is_file():
        raise PparError(f"Model {path} ({how}) does not exist: pass a checkpoint with -c, or train one.")
    if path.suffix.lower() != ".onnx" and not is_model_checkpoint(path):
        raise PparError(f"{path} is {describe_file(path)}, not a model checkpoint: pass a run's last.safetensors.")
    if not rest:
        raise PparError(f"No images to predict: pass image files, folders or glob patterns after {path.name}.")
    return path, how, rest


def choose_out(out: str | Path | None, inputs: Sequence[str]) -> Path:
    """The output folder: `out` (checked writable), else a new `runs/predict[-N]`, which must not lie inside an
    input folder (its outputs would be mistaken for inputs the next time)."""
    if out is not None:
        return check_output_folder(out)
    chosen = next_free_folder(DEFAULT_OUT)
    for raw in inputs:
        folder = Path(raw).expanduser()
        if folder.is_dir() and chosen.resolve().is_relative_to(folder.resolve()):
            raise PparError(f"The default output folder {chosen} lies inside the input folder {folder}: pass --out.")
    return check_output_folder(chosen)


def collect_inputs(inputs: Sequence[str | Path], *, exclude: str | Path | None = None) -> list[PredictInput]:
    """Expand files, folders (recursively, image extensions only) and glob patterns into a list of images.

    Output names: a file (or a glob match) is named by its stem; an image found in a folder keeps its path relative
    to that folder (`street/a/x.jpg` given as `street` -> `a/x`). When two inputs would get the same name from
    different folders, every output mirrors its input's path relative to the folder all inputs share (`in/x`,
    `other/x`), so names stay distinct and predictable; two files of one folder that differ only in their extension
    (`x.png`, `x.jpg`) get the extension appended to the later one (`x_jpg`). Files under `exclude` (the output
    folder) are never inputs. The same file given twice is predicted once. An input that matches nothing is a
    PparError naming it.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if _is_image(p) and not _under(p, skip))
            found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in files]
        elif path.exists():
            found.append((path, path.stem))
        elif any(ch in text for ch in "*?["):
            # Shells on Windows (and quoted patterns) hand the pattern over unexpanded: expand it here.
            matches = sorted(p for p in _glob(text) if _is_image(p) and not _under(p, skip))
            if not matches:
                raise PparError(
                    f"The pattern {text!r} matches no image file: check it (quote it to let ppar expand it)."
                )
            found += [(p, p.stem) for p in matches]
        else:
            raise PparError(f"Input {text} does not exist: pass image files, folders or glob patterns.")
    return _unique_names(found)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _under(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _glob(pattern: str) -> list[Path]:
    return [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]


def _unique_names(found: list[tuple[Path, str]]) -> list[PredictInput]:
    seen: set[Path] = set()
    items: list[tuple[Path, str]] = []
    for path, rel in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            items.append((path, rel))
    names = [rel for _, rel in items]
    clash = any(
        names.count(rel) > 1 and len({p.resolve().parent for p, r in items if r == rel}) > 1 for rel in set(names)
    )
    if clash:
        common = Path(os.path.commonpath([str(p.resolve().parent) for p, _ in items]))
        items = [(p, p.resolve().relative_to(common).with_suffix("").as_posix()) for p, _ in items]
    used: set[str] = set()
    result: list[PredictInput] = []
    for path, rel in items:
        name = rel
        if name in used:
            name = f"{rel}_{path.suffix.lstrip('.').lower()}"
            counter = 2
            while name in used:
                name = f"{rel}_{counter}"
                counter += 1
        used.add(name)
        result.append(PredictInput(path=path, rel=name))
    return result


def output_path(out: Path, item: PredictInput, fmt: str) -> Path:
    """Where format `fmt` of `item` is written: `<out>/<rel>_<fmt>.png` (e.g. `preds/a/x_labelid.png`)."""
    return out / f"{item.rel}_{fmt}.png"


@dataclass
class PredictSummary:
    """What a `predict_files` run did: images done, files written per input, failures (path, message), classes.

    outputs: input path -> the files written for it; class_pixels / class_images: (K,) int64, pixels predicted as
    each trainId and images in which it occurs.
    """

    done: int = 0
    outputs: dict[Path, list[Path]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))
    class_images: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, dtype=np.int64))

    @property
    def written(self) -> list[Path]:
        return [path for paths in self.outputs.values() for path in paths]


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """ "overlay,trainid" (or a list) -> ("overlay", "trainid"); unknown names are a PparError listing the known."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in OUTPUT_FORMATS]
    if bad or not items:
        raise PparError(f"Unknown output format {bad[0] if bad else text!r}: use {', '.join(OUTPUT_FORMATS)}.")
    return tuple(dict.fromkeys(items))


def render_outputs(
    image: np.ndarray, labels: np.ndarray, formats: Sequence[str], *, alpha: float = 0.5
) -> dict[str, np.ndarray]:
    """The images of each format for one prediction: image (H,W,3) uint8, labels (H,W) uint8 trainIds.

    overlay: (H+h,W,3) the image blended with class colours plus a legend strip of the classes present below it;
    color: (H,W,3) class colours; trainid: (H,W) trainIds; labelid: (H,W) Cityscapes labelIds (benchmark format).
    """
    makers = {
        "overlay": lambda: overlay_with_legend(image, labels, alpha=alpha),
        "color": lambda: colorize(labels),
        "trainid": lambda: labels,
        "labelid": lambda: TRAINID_TO_LABELID[labels],
    }
    return {fmt: makers[fmt]() for fmt in formats}


def existing_outputs(items: Sequence[PredictInput], out: str | Path, formats: Sequence[str]) -> list[Path]:
    """The files `predict_files` would write that are already there (an earlier prediction into the same folder)."""
    return [p for item in items for fmt in formats if (p := output_path(Path(out), item, fmt)).exists()]


class _Writer:
    """Writes each image's set of PNGs on a background thread, so PNG compression never holds up the model.

    At most `depth` sets wait in memory. A failed write is raised in the caller at the next `put` or at `close`.
    Every set is written whole: on an interruption the sets still queued are dropped, the one being written is
    finished, so no image is left with only some of its files.
    """

    def __init__(self, depth: int = 4) -> None:
        self.queue: queue.Queue[list[tuple[Path, np.ndarray]] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ppar-png-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.error is None:
                try:
                    for path, array in batch:
                        write_png(path, array)
                except BaseException as exc:  # reported to the caller: a thread would swallow it
                    self.error = exc

    def put(self, batch: list[tuple[Path, np.ndarray]]) -> None:
        self._raise()
        self.queue.put(batch)

    def close(self, *, drop: bool = False) -> None:
        if drop:
            with contextlib.suppress(queue.Empty):
                while True:
                    self.queue.get_nowait()
        self.queue.put(None)
        self.thread.join()
        if not drop:
            self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error


class ImagePredictor(Protocol):
    """What `predict_files` needs of a model: `Predictor` (torch) and `OnnxPredictor` (onnxruntime) both are."""

    def predict(self, image: np.ndarray) -> np.ndarray: ...


def predict_files(
    predictor: ImagePredictor,
    items: Sequence[PredictInput],
    out: str | Path,
    *,
    formats: Sequence[str] = OUTPUT_FORMATS,
    alpha: float = 0.5,
    progress: ProgressFn | None = None,
) -> PredictSummary:
    """Predict every item and write its `formats` under `out` (see `output_path`); never stops on a bad file.

    `predictor` is anything with `predict(image (H,W,3) uint8) -> (H,W) uint8 trainIds` (a `Predictor`, an
    `OnnxPredictor`). An unreadable image is recorded in `summary.failed` with its one-sentence reason and skipped.
    PNGs are written on a background thread (`_Writer`), each file atomically. `progress("predict", done, total)`
    is called after each item.
    """
    if not 0.0 <= alpha <= 1.0:
        raise PparError(f"Overlay opacity {alpha} is outside 0-1: pass --alpha between 0 and 1.")
    out = Path(out)
    summary = PredictSummary()
    writer = _Writer()
    try:
        for index, item in enumerate(items, start=1):
            try:
                image = read_user_image(item.path)
            except PparError as exc:
                summary.failed.append((item.path, str(exc)))
            else:
                labels = _same_size(predictor.predict(image), image)
                batch = [
                    (output_path(out, item, f), a)
                    for f, a in render_outputs(image, labels, formats, alpha=alpha).items()
                ]
                writer.put(batch)
                summary.outputs[item.path] = [path for path, _ in batch]
                counts = np.bincount(labels.ravel(), minlength=256)[:NUM_CLASSES]
                summary.class_pixels += counts
                summary.class_images += counts > 0
                summary.done += 1
            if progress is not None:
                progress("predict", index, len(items))
    except BaseException:
        writer.close(drop=True)
        raise
    writer.close()
    return summary


def _same_size(labels: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Predictions must have the image's size (a broken model would otherwise write misaligned files silently)."""
    if labels.shape != image.shape[:2]:
        raise RuntimeError(f"prediction {labels.shape} does not match the image {image.shape[:2]}")
    return labels
