"""Appearance of the synthetic domains: the `Style` parameters, the built-in styles and the renderer.

A style is data: a frozen dataclass of a few photometric parameters (palette, lighting, haze, sensor). `render` turns
a style-independent `Layout` (geometry, labels, depth, base colours; see `layout`) into an RGB image, so every domain
shares one layout distribution and differs only in appearance. Style files are JSON, loaded strictly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppar_core.data.synth.layout import (
    FACE_LEFT,
    FACE_RIGHT,
    LIGHT_NONE,
    LIGHT_SIGNAL,
    LIGHT_WINDOW,
    TRAIN_ID,
    Layout,
)
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES, NUM_CLASSES


@dataclass(frozen=True)
class Style:
    """The appearance of one synthetic domain; the defaults are a neutral daylight camera."""

    saturation: float = 1.0  # chroma multiplier around grey (1 = base palette, <1 muted, >1 vivid)
    hue_shift_deg: float = 0.0  # global hue rotation of the palette, degrees
    class_tint: float = 0.0  # std of a per-image, per-class log-RGB tint (palette jitter between images)
    color_temperature: float = 0.0  # white balance: >0 warm (more red, less blue), <0 cool; about -1..1
    exposure: float = 1.0  # brightness multiplier before tone mapping
    contrast: float = 1.0  # contrast around the image mean (<1 flat, >1 punchy)
    gamma: float = 1.0  # tone curve: output = x ** (1 / gamma); >1 lifts shadows
    sun: float = 0.5  # strength of directional sunlight (0 overcast or night, 1 hard sun): shading by facing
    ambient: float = 1.0  # ambient light level (1 day, ~0.05 night); scales every reflecting surface and the sky
    texture: float = 1.0  # amplitude of the material textures (asphalt grain, foliage, clouds)
    blur_sigma: float = 0.0  # Gaussian optical blur, pixels at 512 px image width (scaled with the width)
    sharpen: float = 0.0  # unsharp-mask amount (0 none)
    noise: float = 0.0  # sensor noise std as a fraction of full scale, signal dependent
    jpeg_quality: int | None = None  # JPEG compression quality 1-100, or None for none
    haze_density: float = 0.0  # extinction coefficient per metre of depth (0.05 is about 60 m visibility)
    haze_color: tuple[float, float, float] = (0.75, 0.8, 0.85)  # airlight RGB in 0-1 that distant things fade to
    light_intensity: float = 0.0  # strength of light sources (street lights, car lights, lit windows); 0 = off
    lit_window_fraction: float = 0.0  # fraction of windows lit when light_intensity > 0
    vignette: float = 0.0  # darkening of the corners (0 none, 0.3 strong)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: Style | None = None, source: str = "style") -> Style:
        """A style from a JSON-like mapping; keys not given keep `base`'s value (or the default).

        Strict: an unknown key, a wrong type or an out-of-range value is a `PparError` naming the key and `source`.
        """
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise PparError(f"Unknown style key {key!r} in {source}: valid keys are {', '.join(known)}.")
        values = {name: _coerce(name, data[name], source) for name in known if name in data}
        return replace(base if base is not None else cls(), **values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists); `Style.from_dict(s.to_dict()) == s`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# Allowed ranges of the numeric fields; anything outside is almost surely a typo in a style file.
_RANGES: dict[str, tuple[float, float]] = {
    "saturation": (0.0, 4.0), "hue_shift_deg": (-180.0, 180.0), "class_tint": (0.0, 1.0),
    "color_temperature": (-2.0, 2.0), "exposure": (0.01, 10.0), "contrast": (0.05, 4.0), "gamma": (0.2, 5.0),
    "sun": (0.0, 2.0), "ambient": (0.0, 2.0), "texture": (0.0, 4.0), "blur_sigma": (0.0, 20.0),
    "sharpen": (0.0, 5.0), "noise": (0.0, 0.5), "haze_density": (0.0, 1.0), "light_intensity": (0.0, 10.0),
    "lit_window_fraction": (0.0, 1.0), "vignette": (0.0, 1.0),
}  # fmt: skip


def _coerce(name: str, value: Any, source: str) -> Any:
    """`value` of style key `name` checked and converted to the field's type, or a `PparError` naming `source`."""

    def bad(expected: str) -> PparError:
        return PparError(f"Style key {name!r} in {source} must be {expected}, got {value!r}: fix the value.")

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if name == "jpeg_quality":
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            raise bad("null or an integer from 1 to 100")
        return value
    if name == "haze_color":
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_number(v) for v in value):
            raise bad("a list of three numbers in 0-1")
        if not all(0.0 <= v <= 1.0 for v in value):
            raise bad("a list of three numbers in 0-1")
        return (float(value[0]), float(value[1]), float(value[2]))
    low, high = _RANGES[name]
    if not is_number(value) or not low <= value <= high:
        raise bad(f"a number from {low:g} to {high:g}")
    return float(value)


BUILTIN_STYLES: dict[str, Style] = {
    # Game-like source: vivid palette, hard sun, crisp edges and strong textures, no sensor artefacts.
    "synth-source": Style(
        saturation=1.35, class_tint=0.02, exposure=1.1, contrast=1.15, sun=0.8, texture=1.3, sharpen=0.6,
        haze_density=0.002, haze_color=(0.7, 0.8, 0.95),
    ),
    # Camera-like target: muted and slightly cool palette, soft optics, sensor noise, JPEG, vignetting.
    "synth-real": Style(
        saturation=0.65, hue_shift_deg=-4.0, class_tint=0.06, color_temperature=-0.15, exposure=0.95,
        contrast=0.9, gamma=1.1, sun=0.35, texture=0.9, blur_sigma=0.8, noise=0.03, jpeg_quality=55,
        haze_density=0.006, haze_color=(0.72, 0.75, 0.78), vignette=0.25,
    ),
    # Night: dark ambient light, warm street lights, car lights and lit windows, low contrast, noisy sensor.
    "synth-night": Style(
        saturation=0.8, class_tint=0.04, color_temperature=0.35, exposure=1.2, contrast=0.75, gamma=1.15,
        sun=0.0, ambient=0.06, texture=0.8, blur_sigma=0.7, noise=0.025, jpeg_quality=80,
        haze_density=0.004, haze_color=(0.04, 0.045, 0.07), light_intensity=1.0, lit_window_fraction=0.35,
        vignette=0.15,
    ),
    # Fog: depth-dependent haze towards a pale grey airlight, overcast (no sun), washed-out colours.
    "synth-fog": Style(
        saturation=0.7, class_tint=0.03, exposure=1.0, contrast=0.9, sun=0.0, ambient=0.9, texture=0.8,
        blur_sigma=0.9, noise=0.008, haze_density=0.045, haze_color=(0.78, 0.8, 0.82),
        light_intensity=0.25, lit_window_fraction=0.1,
    ),
}  # fmt: skip
DEFAULT_DOMAINS: tuple[str, ...] = ("synth-source", "synth-real", "synth-night", "synth-fog")

_NAME_RE = re.compile(r"^synth-[A-Za-z0-9_-]+$")


def load_style_file(path: Path) -> dict[str, Style]:
    """Read extra domain styles from a JSON file; returns {name: Style}.

    Two shapes are accepted: one style, `{"name": "synth-dusk", "base": "synth-real", "ambient": 0.4}`, or several,
    `{"styles": {"synth-dusk": {"base": "synth-real", "ambient": 0.4}, "synth-rain": {...}}}`. Names must start
    with `synth-` (letters, digits, `-`, `_`). `"base"` (optional) names a built-in style to start from; otherwise
    the neutral `Style()` defaults apply. Any other key must be a `Style` field. A bad file is a `PparError`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PparError(f"Style file {path} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PparError(f"Cannot read style file {path} ({exc}): check the file.") from None
    except json.JSONDecodeError as exc:
        raise PparError(f"Style file {path} is not valid JSON ({exc}): fix the syntax.") from None
    if not isinstance(data, dict):
        raise PparError(f"Style file {path} must hold a JSON object with a 'name' or a 'styles' key.")
    if "styles" in data:
        if set(data) != {"styles"} or not isinstance(data["styles"], dict):
            raise PparError(f"Style file {path} must be {{'styles': {{name: {{...}}}}}} with no other top-level key.")
        entries = data["styles"]
    elif "name" in data:
        entries = {data["name"]: {k: v for k, v in data.items() if k != "name"}}
    else:
        raise PparError(f"Style file {path} has neither a 'name' nor a 'styles' key: add one (see the docs).")
    styles: dict[str, Style] = {}
    for name, entry in entries.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PparError(f"Style name {name!r} in {path} must start with 'synth-' (letters, digits, - and _).")
        if not isinstance(entry, dict):
            raise PparError(f"Style {name!r} in {path} must be a JSON object of style keys.")
        base_name = entry.get("base")
        base = None
        if base_name is not None:
            if base_name not in BUILTIN_STYLES:
                raise PparError(
                    f"Style {name!r} in {path} has unknown base {base_name!r}: use one of {', '.join(BUILTIN_STYLES)}."
                )
            base = BUILTIN_STYLES[base_name]
        body = {k: v for k, v in entry.items() if k != "base"}
        styles[name] = Style.from_dict(body, base=base, source=f"{path} (style {name!r})")
    return styles


# Material texture amplitudes per class (fine grain, coarse blotches), as a fraction of the base colour.
_TEXTURE_BY_NAME: dict[str, tuple[float, float]] = {
    "road": (0.06, 0.05), "sidewalk": (0.04, 0.04), "building": (0.03, 0.04), "wall": (0.04, 0.05),
    "fence": (0.04, 0.03), "pole": (0.02, 0.02), "traffic light": (0.02, 0.0), "traffic sign": (0.01, 0.0),
    "vegetation": (0.2, 0.12), "terrain": (0.12, 0.1), "sky": (0.0, 0.0), "person": (0.03, 0.03),
    "rider": (0.03, 0.03), "car": (0.015, 0.02), "truck": (0.02, 0.03), "bus": (0.015, 0.02), "train": (0.015, 0.02),
    "motorcycle": (0.02, 0.02), "bicycle": (0.02, 0.02),
}  # fmt: skip
_TEXTURE = np.array([_TEXTURE_BY_NAME[n] for n in CLASS_NAMES], dtype=np.float32)  # (19, 2)
# Emitted colour of each light kind (RGB 0-1, before light_intensity); windows use their own warm tone.
_LIGHT_COLORS = np.array(
    [[0, 0, 0], [1.0, 0.8, 0.5], [1.0, 0.97, 0.85], [1.0, 0.1, 0.05], [1.0, 0.75, 0.4], [1.0, 1.0, 1.0]],
    dtype=np.float32,
)
# Sun gain per facing code when the sun comes from the left; mirrored for a sun from the right.
_SUN_GAIN = np.array([0.35, -0.45, 0.3, 0.0, 0.0], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise (H,W) float32, about zero mean and unit std: a coarse random grid resized smoothly."""
    grid = rng.standard_normal((max(2, cells * h // w), cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


_GRAIN_TILE: list[np.ndarray] = []


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fine material grain (H,W) float32, unit std: a random window of a fixed noise tile (much cheaper than
    drawing fresh normals for every pixel; textures need no independence between images)."""
    if h > 512 or w > 1024:
        return rng.standard_normal((h, w), dtype=np.float32)
    if not _GRAIN_TILE:
        _GRAIN_TILE.append(np.random.default_rng(20250715).standard_normal((1024, 2048), dtype=np.float32))
    y, x = int(rng.integers(0, 1024 - h + 1)), int(rng.integers(0, 2048 - w + 1))
    return _GRAIN_TILE[0][y : y + h, x : x + w]


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H,W) or (H,W,C) float32 image, sigma in pixels, edges reflected."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _wide_glow(emit: np.ndarray, sigma: float) -> np.ndarray:
    """A wide blur of the emitted light (H,W,3) float32 computed at 1/4 resolution (the result is smooth anyway)."""
    h, w = emit.shape[:2]
    small = cv2.resize(emit, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma / 4, sigmaY=sigma / 3)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def render(layout: Layout, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Render a layout in a style: -> image (H,W,3) uint8 RGB. Randomness (textures, lit windows, noise) uses `rng`."""
    parts = layout.parts
    h, w = parts.shape
    scale = w / 512.0  # blur sizes are specified at 512 px width
    sky_class = TRAIN_ID["sky"]

    # Per part (cheap, P rows): class tint, hue and saturation matrix, ambient and sun shading by facing. The matrix
    # keeps grey grey, so it commutes with the grey texture multiplier applied per pixel below.
    tint = np.exp(rng.normal(0.0, style.class_tint, size=(NUM_CLASSES, 3))).astype(np.float32)
    gain = _SUN_GAIN.copy()
    if rng.random() < 0.5:  # sun from the right: swap which street side is lit
        gain[[FACE_LEFT, FACE_RIGHT]] = gain[[FACE_RIGHT, FACE_LEFT]]
    illum = style.ambient * (1.0 + style.sun * gain[layout.part_facing]) / (1.0 + 0.2 * style.sun)
    table = np.empty((len(layout.part_labels), 5), dtype=np.float32)
    table[:, :3] = (layout.part_colors * tint[layout.part_labels]) @ _color_matrix(style).T * illum[:, None]
    table[:, 3:] = _TEXTURE[layout.part_labels] * style.texture
    looked = np.take(table, parts, axis=0)  # (H,W,5): lit colour and texture amplitudes of every pixel
    image = (
        looked[..., :3]
        * (1.0 + looked[..., 3] * _grain(rng, h, w) + looked[..., 4] * _smooth_noise(rng, h, w, 48))[..., None]
    )

    # Sky: paler towards the horizon, with soft clouds; only the rows that hold sky are touched.
    sky_rows = np.flatnonzero((layout.part_labels[parts[:, :: max(1, w // 64)]] == sky_class).any(axis=1))
    top = int(sky_rows[-1]) + 1 if len(sky_rows) else 0
    if top:
        rows = (np.arange(top, dtype=np.float32) - layout.horizon)[:, None] / h
        clouds = np.clip(_smooth_noise(rng, top, w, 8) * 0.6 - 0.2, 0.0, 1.0) * min(style.texture, 1.5) * 0.7
        mix = np.clip(np.clip(0.55 + 1.2 * rows, 0.0, 0.75) + clouds, 0.0, 1.0)
        mix *= layout.labels[:top] == sky_class
        white = 0.95 * style.ambient
        image[:top] += (white - image[:top]) * mix[..., None]

    if style.light_intensity > 0:
        kinds = layout.part_lights
        on = (kinds != LIGHT_NONE) & ((kinds != LIGHT_WINDOW) | (rng.random(kinds.shape) < style.lit_window_fraction))
        # Traffic signals glow in their own colour (red, amber or green); other lights have a fixed tone, and lit
        # windows vary in brightness.
        tone = np.where((kinds == LIGHT_SIGNAL)[:, None], layout.part_colors, _LIGHT_COLORS[kinds])
        bright = np.where(kinds == LIGHT_WINDOW, rng.uniform(0.4, 1.0, kinds.shape), 1.0)
        part_emit = (np.where(on[:, None], tone, 0.0) * bright[:, None] * style.light_intensity).astype(np.float32)
        emit = np.take(part_emit, parts, axis=0)
        # Light falls on nearby surfaces (wide glow times the surface colour) and blooms around the sources.
        albedo = table[:, :3] / np.maximum(illum[:, None], 1e-3)
        image += np.take(albedo, parts, axis=0) * _wide_glow(emit, 24.0 * scale) * 6.0
        image += emit * 0.7 + _blur(emit, 2.0 * scale) * 0.6

    # Depth haze (Koschmieder): a fraction exp(-beta d) of the light survives, the rest is airlight.
    if style.haze_density > 0:
        airlight = np.asarray(style.haze_color, dtype=np.float32)
        image -= airlight
        image *= np.exp(-style.haze_density * layout.depth)[..., None]
        image += airlight

    # Camera: exposure and white balance, contrast, vignetting, optics, sensor noise, tone curve, JPEG.
    temp = style.color_temperature
    image *= style.exposure * np.array([1 + 0.12 * temp, 1.0, 1 - 0.15 * temp], dtype=np.float32)
    mean = float(image.mean())
    image -= mean
    image *= style.contrast
    image += mean
    if style.vignette > 0:
        yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        image *= (1.0 - style.vignette * 0.5 * (xx**2 + yy**2))[..., None]
    if style.blur_sigma > 0:
        image = _blur(image, style.blur_sigma * scale)
    if style.sharpen > 0:
        image += style.sharpen * (image - _blur(image, 1.0 * scale))
    if style.noise > 0:
        # Luminance noise per pixel plus coarser chroma noise, stronger in bright pixels (photon noise).
        luma = rng.standard_normal((h, w), dtype=np.float32)
        chroma = cv2.resize(rng.standard_normal((max(1, h // 2), max(1, w // 2), 3), dtype=np.float32), (w, h))
        shot = np.sqrt(np.maximum(image, 0.0) + 0.01)
        image += style.noise * shot * (luma[..., None] + 0.5 * chroma)
    np.maximum(image, 0.0, out=image)
    out = cv2.convertScaleAbs(image, alpha=255.0)  # rounds and saturates at 255
    if style.gamma != 1.0:
        out = cv2.LUT(out, _gamma_lut(style.gamma))
    if style.jpeg_quality is not None:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if not ok or decoded is None:  # pragma: no cover - OpenCV only fails here on out-of-memory
            raise RuntimeError("JPEG round trip failed")
        out = decoded[..., ::-1]
    return np.ascontiguousarray(out)


def _gamma_lut(gamma: float) -> np.ndarray:
    """(256,) uint8 lookup table of the tone curve x ** (1 / gamma), rounded."""
    return np.clip((np.arange(256) / 255.0) ** (1.0 / gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _color_matrix(style: Style) -> np.ndarray:
    """3x3 float32 RGB matrix: hue rotation about the grey axis, then saturation around the luma grey."""
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    grey = np.tile(luma, (3, 1))
    sat = grey + style.saturation * (np.eye(3) - grey)
    angle = np.deg2rad(style.hue_shift_deg)
    axis = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
    return (sat @ rot).astype(np.float32)
