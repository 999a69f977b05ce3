"""The top of the generator: draw a layout, render a sample, write domain folders.

`generate_layout` puts a scene together (street, background, roadsides, furniture, then traffic) and derives the
depth map from it; `make_sample` draws one sample of a domain from its own seed streams; `write_domains` writes
whole domain folders as PNGs (through the project's atomic writer) with a `style.json` describing them.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppar_core.data.synth.layout import SKY_DEPTH, Layout
from ppar_core.data.synth.objects import traffic
from ppar_core.data.synth.scene import Scene
from ppar_core.data.synth.street import background, furniture, lay_street, roadside
from ppar_core.data.synth.styles import BUILTIN_STYLES, DEFAULT_DOMAINS, Style, render
from ppar_core.errors import PparError
from ppar_core.files import atomic_write
from ppar_core.progress import ProgressFn

GENERATOR_VERSION = 1  # bump when layouts or rendering change, so style.json tells old folders apart


def _build_scene(rng: np.random.Generator, h: int, w: int) -> Scene:
    """Draw the whole scene into a fresh `Scene`: street, background, both roadsides, furniture, then traffic."""
    scene = Scene(rng, h, w)
    street = lay_street(scene)
    background(scene)
    for side in (-1, 1):
        roadside(scene, street, side)
    furniture(scene, street)
    traffic(scene, street)
    scene.finish()
    return scene


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and 16 <= v <= 8192 for v in size):
        raise PparError(f"Synthetic image size must be two integers (height, width) from 16 to 8192, got {size!r}.")
    return int(size[0]), int(size[1])


def generate_layout(rng: np.random.Generator, size: tuple[int, int]) -> Layout:
    """Draw one street scene of `size` (H, W) from `rng` -> Layout (labels (H,W) uint8, depth (H,W) float32, ...)."""
    h, w = _check_size(size)
    scene = _build_scene(rng, h, w)
    tables = scene.tables()
    parts = scene.parts
    kind, param = np.take(tables["depth_kind"], parts), np.take(tables["depth_param"], parts)
    # Depth by surface type: constant (objects facing the camera), ground plane (from the row), or a vertical plane
    # parallel to the street (from the column and the plane's lateral distance).
    rows = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    cols = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    ground = scene.f * scene.cam_h / np.maximum(rows - scene.horizon, 0.25)
    plane = scene.f * param / np.maximum(np.abs(cols - scene.vx), 0.25)
    depth = np.where(kind == 0, param, np.where(kind == 1, ground, plane))
    depth = np.clip(depth, 0.5, SKY_DEPTH).astype(np.float32)
    return Layout(
        labels=np.take(tables["label"], parts),
        parts=parts,
        depth=depth,
        part_labels=tables["label"],
        part_colors=tables["color"],
        part_lights=tables["light"],
        part_facing=tables["facing"],
        horizon=float(scene.horizon),
    )


def _rngs(domain: str, index: int, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(layout rng, appearance rng) for one sample; crc32 is stable across runs, unlike Python's hash()."""
    if not (isinstance(seed, (int, np.integer)) and seed >= 0 and isinstance(index, (int, np.integer)) and index >= 0):
        raise PparError(f"Seed and index must be non-negative integers, got seed={seed!r}, index={index!r}.")
    key = [int(seed), zlib.crc32(domain.encode("utf-8")), int(index)]
    return (
        np.random.default_rng(np.random.SeedSequence([*key, 0])),
        np.random.default_rng(np.random.SeedSequence([*key, 1])),
    )


def _resolve_styles(domains: Sequence[str], styles: Mapping[str, Style] | None) -> dict[str, Style]:
    known = {**BUILTIN_STYLES, **(dict(styles) if styles else {})}
    for domain in domains:
        if domain not in known:
            raise PparError(f"Unknown synthetic domain {domain!r}: use one of {', '.join(known)} or give a style file.")
    return known


def make_sample(
    domain: str,
    index: int,
    *,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    styles: Mapping[str, Style] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample `index` of `domain` -> (image (H,W,3) uint8 RGB, labels (H,W) uint8 trainIds). Deterministic."""
    style = _resolve_styles([domain], styles)[domain]
    layout_rng, look_rng = _rngs(domain, index, seed)
    layout = generate_layout(layout_rng, size)
    return render(layout, style, look_rng), layout.labels


def _write_file(path: Path, data: bytes) -> None:
    # Atomic (a crash never leaves half a PNG; its temporary name matches no `*.png` glob), and a full disk or a
    # read-only folder is the user's to fix, so it is reported as such rather than as a traceback.
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    except OSError as exc:
        raise PparError(f"Cannot write {path} ({exc.strerror}): check free space and permissions.") from None


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of an (H,W) or (H,W,3) BGR uint8 array, at the fastest compression level (generation speed first)."""
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV only fails here on out-of-memory
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_pair(folder: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    _write_file(folder / "images" / name, _png(np.ascontiguousarray(image[..., ::-1])))  # OpenCV wants BGR
    _write_file(folder / "labels" / name, _png(labels))


def _clear_domain(folder: Path, *, replace: bool) -> None:
    """Make `folder` ready for a fresh domain: absent or empty; an earlier domain there is removed (with `replace`)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not (folder / "style.json").is_file():
        raise PparError(
            f"{folder} exists and holds no synthetic domain (no style.json): ppar will not write into it, even with "
            "--force; choose another --out, or move that folder away."
        )
    if not replace:
        count = len(list((folder / "images").glob("*.png"))) if (folder / "images").is_dir() else 0
        raise PparError(
            f"{folder} already holds a synthetic domain ({count} images): pass --force to replace it, or choose "
            "another --out."
        )
    for sub in ("images", "labels"):
        for path in (folder / sub).glob("*.png") if (folder / sub).is_dir() else ():
            if path.is_file():
                path.unlink()
    (folder / "style.json").unlink()


def write_domains(
    out: Path,
    *,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    num: int = 100,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    styles: Mapping[str, Style] | None = None,
    progress: ProgressFn | None = None,
    replace: bool = False,
) -> dict[str, Path]:
    """Write `num` samples of each domain -> {domain: out/domain}.

    Layout: `out/<domain>/images/<domain>_<index:05d>.png` (RGB), the label with the same name under `labels/`
    (single-channel uint8 trainIds), and `out/<domain>/style.json` (style, seed, size, num, generator version).
    `styles` adds to or overrides BUILTIN_STYLES. `progress("synth", done, total)` is called after every sample.
    A domain folder that already holds a domain is replaced completely with `replace` (never a mix of old and new
    images), refused otherwise; a non-empty folder that holds no domain is always refused. All of this is checked
    before the first image is drawn.
    """
    size = _check_size(size)
    if not isinstance(num, int) or num < 0:
        raise PparError(f"The number of synthetic images per domain must be a non-negative integer, got {num!r}.")
    known = _resolve_styles(domains, styles)
    out = Path(out)
    for domain in domains:
        _clear_domain(out / domain, replace=replace)
    folders: dict[str, Path] = {}
    total, done = num * len(domains), 0
    for domain in domains:
        folder = out / domain
        try:
            (folder / "images").mkdir(parents=True, exist_ok=True)
            (folder / "labels").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PparError(f"Cannot create {folder} ({exc.strerror}): choose a writable --out folder.") from None
        meta: dict[str, Any] = {
            "domain": domain,
            "style": known[domain].to_dict(),
            "seed": seed,
            "size": list(size),
            "num": num,
            "generator": f"ppar synth v{GENERATOR_VERSION}",
            "seed_stream": "SeedSequence([seed, crc32(domain), index, 0 layout | 1 appearance])",
        }
        _write_file(folder / "style.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        # PNG encoding releases the GIL: one writer thread overlaps it with drawing the next sample.
        with ThreadPoolExecutor(max_workers=1) as writer:
            pending: deque[Future[None]] = deque()
            for index in range(num):
                image, labels = make_sample(domain, index, size=size, seed=seed, styles=known)
                pending.append(writer.submit(_write_pair, folder, f"{domain}_{index:05d}.png", image, labels))
                while len(pending) > 2 or (pending and index == num - 1):
                    pending.popleft().result()  # re-raises a failed write; bounds the memory held
                    done += 1
                    if progress is not None:
                        progress("synth", done, total)
        folders[domain] = folder
    return folders
