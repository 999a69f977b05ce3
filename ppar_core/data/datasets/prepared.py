"""Prepared copies (`ppar data prepare`): `<root>/manifest.json`, `images/<name>.png|.jpg`, `labels/<name>.png`.

A prepared copy is a dataset stored for fast decoding: images already resized as the training augment's first step
resizes them (or unresized), labels already in trainIds (uint8 single-channel PNG, 255 ignore), and a manifest that
says what the copy is (origin dataset and root, split, mapping, resize, image format) with a content hash per file.
`build_dataset("gta5=/data/gta5-720p")` builds this loader whenever the root holds a ppar manifest; the dataset keeps
the NAME it was asked by (so the registry's protocol facts still apply) after checking that the manifest's origin is
that dataset. The manifest format is defined here, where it is read; `ppar_core.data.prepare` writes it.

Images are decoded with OpenCV (about as fast as any decoder here, and it releases the GIL), EXIF orientation ignored
as everywhere in ppar. OpenCV does not notice a truncated JPEG, so every file's length is compared with the
manifest's before it is decoded: a truncated or replaced file fails with its name instead of yielding grey pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppar_core.data.base import LabelDecoder, Sample, SegDataset, is_list_split, select_by_list
from ppar_core.data.io import TRAINID_MAP
from ppar_core.errors import PparError

MANIFEST_NAME = "manifest.json"
PARTIAL_NAME = "manifest.partial.json"  # the progress of an unfinished copy, rewritten atomically as work goes on
FORMAT = "ppar-prepared"
FORMAT_VERSION = 1
LAYOUT = f"{MANIFEST_NAME}, images/<name>.png or .jpg and labels/<name>.png (trainIds), as `ppar data prepare` writes"

# IMREAD_COLOR_RGB (OpenCV >= 4.11) swaps channels inside the decoder; older releases decode BGR and convert.
_COLOR_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_IMREAD_FLAGS = (cv2.IMREAD_COLOR if _COLOR_RGB is None else _COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION


# Stored (zlib level 0): measured 2-4x faster to decode than any compressed level or strategy, for 1.4-1.8x the
# bytes (docs/DATASETS.md, "Prepared copies"). The copy exists to be decoded fast; disk is the cheaper resource.
DEFAULT_PNG_COMPRESSION = 0
# Labels shrink ~50x at level 1 (without row filters: `prepare.png_params`) and decode as fast as stored ones
# (measured at 720x1280: 0.6 ms, 18 KB).
LABEL_PNG_COMPRESSION = 1
IMAGE_EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
MAX_SIDE = 8192  # the longest side a copy resizes to (a 4K frame is 3840 wide): a larger one is a typo


@dataclass(frozen=True)
class PrepareSettings:
    """How a copy's files are made. `resize` (H,W) or None (kept as they are); `image_format` png (lossless) or
    jpeg (lossy, `jpeg_quality` 1-100); `png_compression` the zlib level 0-9 of PNG images."""

    resize: tuple[int, int] | None = None
    image_format: str = "png"
    jpeg_quality: int = 95
    png_compression: int = DEFAULT_PNG_COMPRESSION

    def validate(self) -> PrepareSettings:
        """PparError naming the first bad setting; returns self."""
        if self.image_format not in IMAGE_EXTENSIONS:
            raise PparError(f"Image format {self.image_format!r} is not supported: use png (lossless) or jpeg.")
        if not 1 <= self.jpeg_quality <= 100:
            raise PparError(f"JPEG quality must be 1-100, got {self.jpeg_quality} (--quality).")
        if not 0 <= self.png_compression <= 9:
            raise PparError(f"PNG compression must be a zlib level 0-9, got {self.png_compression}.")
        if self.resize is not None and (len(self.resize) != 2 or not all(1 <= v <= MAX_SIDE for v in self.resize)):
            raise PparError(
                f"Resize must be (H, W) with sides from 1 to {MAX_SIDE} pixels, or None, got {self.resize!r} "
                "(--resize HxW or none)."
            )
        return self

    @property
    def lossy(self) -> bool:
        return self.image_format == "jpeg"

    def to_json(self) -> dict[str, Any]:
        """The settings as the manifest records them (the quality or level of the format in use only)."""
        return {
            "resize": None if self.resize is None else list(self.resize),
            "image_format": self.image_format,
            "jpeg_quality": self.jpeg_quality if self.lossy else None,
            "png_compression": None if self.lossy else self.png_compression,
            "lossy": self.lossy,
            "labels": "png uint8 trainIds, 255 ignore",
        }


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """The hex SHA-256 of a manifest's content (every key but `manifest_sha256` itself, canonical JSON).

    Canonical (sorted keys, no spaces) so that the same copy always has the same hash, whatever wrote the file.
    """
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The ppar manifest at `path` -> its content, or None when the file is absent or is another tool's JSON (left
    to the dataset's own loader). A file that is not JSON at all is a PparError: it may be a damaged ppar manifest,
    and reading the folder as the original dataset would map its trainIds a second time."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        content = None
    except json.JSONDecodeError as exc:
        content = exc
    except OSError as exc:
        raise PparError(f"{path} cannot be read ({exc.strerror}): check the disk and its permissions.") from None
    if content is None or isinstance(content, json.JSONDecodeError):
        where = f" (line {content.lineno})" if content is not None else ""
        raise PparError(
            f"{path} is not valid JSON{where}: if the folder is a ppar prepared copy, its manifest is damaged; run "
            f"`ppar data prepare` again with the same settings and --force to remake the copy."
        )
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        return None
    return content


def prepared_manifest(root: Path) -> dict[str, Any] | None:
    """The complete manifest of the prepared copy at `root`, None when `root` is not a prepared copy.

    An unfinished copy (only a partial manifest) is a PparError: it must be finished before it is used.
    """
    manifest = read_manifest(root / MANIFEST_NAME)
    if manifest is None and read_manifest(root / PARTIAL_NAME) is not None:
        raise PparError(
            f"{root} holds an unfinished prepared copy ({PARTIAL_NAME}, no {MANIFEST_NAME}): rerun the same "
            f"`ppar data prepare ... --out {root}` to finish it."
        )
    if manifest is not None and manifest.get("format_version") != FORMAT_VERSION:
        raise PparError(
            f"{root / MANIFEST_NAME} is a prepared-copy manifest of format version "
            f"{manifest.get('format_version')!r}, but this ppar reads version {FORMAT_VERSION}: prepare the dataset "
            f"again with this ppar (ppar data prepare ... --out {root} --force)."
        )
    return manifest


def prepared_info(root: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a run records about a prepared copy (JSON-ready): where it is, its manifest hash, what it was made from
    and how (resize, image format, whether it is lossy)."""
    return {
        "root": str(root.resolve()),
        "manifest_sha256": manifest["manifest_sha256"],
        "origin": manifest["origin"]["dataset"],
        "origin_root": manifest["origin"]["root"],
        "split": manifest["origin"]["split"],
        "resize": manifest["resize"],
        "image_format": manifest["image_format"],
        "jpeg_quality": manifest["jpeg_quality"],
        "lossy": manifest["lossy"],
    }


@dataclass(eq=False)
class PreparedDataset(SegDataset):
    """A prepared copy: `SegDataset` whose pairs are the copy's files, decoded with OpenCV.

    `names[i]` is pair i's sample name in the original dataset; `sizes[i]` the (image, label) file lengths in bytes
    that the manifest records, checked before decoding.
    """

    names: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def sample_name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int) -> Sample:
        """Decode pair `index` -> Sample (image (H,W,3) uint8 RGB, label (H,W) uint8 trainIds); PparError naming
        the file when it is missing, not the length the manifest records, or undecodable."""
        image_path, label_path = self.pairs[index]
        image_bytes, label_bytes = self.sizes[index]
        image = cv2.imdecode(_read(image_path, image_bytes, self.root, "Image"), _IMREAD_FLAGS)
        if image is None or image.ndim != 3 or image.shape[2] != 3:
            raise PparError(_corrupt("Image", image_path, self.root))
        if _COLOR_RGB is None:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        raw = cv2.imdecode(_read(label_path, label_bytes, self.root, "Label"), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 2 or raw.dtype != np.uint8:
            raise PparError(_corrupt("Label", label_path, self.root))
        label = self.decoder.id_map.apply(raw, path=label_path)  # trainIds: refuses any value but 0-18 and 255
        if label.shape != image.shape[:2]:
            raise PparError(
                f"Label {label_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path.name} is "
                f"{image.shape[0]}x{image.shape[1]} (HxW): the prepared copy {self.root} was changed; run "
                f"`ppar data check {self.root}`."
            )
        return Sample(image=np.ascontiguousarray(image), label=label, name=self.names[index])


def _read(path: Path, expected: int, root: Path, kind: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PparError(
            f"{kind} {path} of the prepared copy {root} is missing: rerun `ppar data prepare` with the same settings "
            "to restore it (`ppar data check` lists every problem)."
        ) from None
    except OSError as exc:
        raise PparError(f"{kind} {path} cannot be read ({exc.strerror}): check the disk and its permissions.") from None
    if len(data) != expected:
        raise PparError(
            f"{kind} {path} has {len(data)} bytes but the manifest of {root} records {expected}: the file was "
            "truncated or replaced; delete it and rerun `ppar data prepare` with the same settings."
        )
    return np.frombuffer(data, dtype=np.uint8)


def _corrupt(kind: str, path: Path, root: Path) -> str:
    return (
        f"{kind} {path} of the prepared copy {root} cannot be decoded: delete it and rerun `ppar data prepare` "
        "with the same settings."
    )


def build_prepared(
    root: Path, manifest: Mapping[str, Any], *, name: str, split: str, mapillary_map: str = "id"
) -> PreparedDataset:
    """The prepared copy at `root` (its `manifest` already read) as dataset `name`, split `split`.

    `name` must be the copy's origin, or one of the origin's parts (e.g. `acdc-night` from a copy of `acdc`: the
    samples of that part). `split` must be the copy's split or one the origin reads as the same pairs (GTA5's train,
    val and all); a `.txt` list selects the pairs it names. A Mapillary copy must have been mapped with
    `mapillary_map`. Any mismatch is one PparError saying what the copy is.
    """
    manifest = dict(manifest)
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise PparError(
            f"{root / MANIFEST_NAME} does not match its own hash: it was edited; run `ppar data check {root}`, or "
            "prepare the dataset again (ppar data prepare ... --force)."
        )
    origin = manifest["origin"]
    described = f"a prepared copy of {origin['dataset']} ({origin['split']}, from {origin['root']})"
    samples = list(manifest["samples"])
    if name != origin["dataset"]:
        if name not in manifest.get("parts", []):
            raise PparError(
                f"{root} is {described}, not of {name}: pass it as {origin['dataset']}={root}, or prepare {name} "
                f"(ppar data prepare {name} --out DIR)."
            )
        samples = [s for s in samples if s.get("part") == name]
    copy_map = manifest["mapping"].get("mapillary_map")
    if copy_map is not None and copy_map != mapillary_map:
        raise PparError(
            f"{root} is {described} mapped with the Mapillary {copy_map!r} map, but {mapillary_map!r} was asked: "
            f"use --mapillary-map {copy_map}, or prepare another copy with --mapillary-map {mapillary_map}."
        )
    pairs = [(root / s["image"], root / s["label"]) for s in samples]
    orphans: list[str] = []
    same_pairs = origin.get("splits", [origin["split"]])
    if is_list_split(split) and "all" in same_pairs:
        by_image = {root / s["image"]: s for s in samples}
        pairs, orphans = select_by_list(pairs, Path(split).expanduser())
        samples = [by_image[image] for image, _ in pairs]
    elif split not in same_pairs:
        raise PparError(
            f"{root} is {described}, but split {split!r} was asked: prepare that split into another folder "
            f"(ppar data prepare {origin['dataset']} --split {split} --out DIR)."
        )
    if not pairs:
        raise PparError(f"{root} is {described} with no samples of {name} ({split}): prepare the dataset again.")
    return PreparedDataset(
        name=name,
        split=split,
        root=root,
        pairs=pairs,
        decoder=LabelDecoder(id_map=TRAINID_MAP),
        orphans=orphans,
        prepared=prepared_info(root, manifest),
        names=[str(s["name"]) for s in samples],
        sizes=[(int(s["image_bytes"]), int(s["label_bytes"])) for s in samples],
    )
