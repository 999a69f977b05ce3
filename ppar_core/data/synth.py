"""Built-in synthetic street-scene domains: procedural layouts (this module) rendered in per-domain styles.

A `Layout` is the style-independent scene: a pinhole camera looks down a straight street (road with lane marks,
sidewalks, buildings with windows, walls, fences, parks, street furniture, traffic and people), drawn by the
painter's algorithm from far to near into one map of part ids. Every part carries a class, a base colour, a light
kind and a facing, so the label map, the depth map and the base colours all come from the same pixels: labels and
image agree exactly at every object edge. `render` (in `synth_styles`) adds the domain's appearance.

Randomness: the layout of sample `index` in `domain` is drawn from SeedSequence(seed, crc32(domain), index, 0) and
its appearance from (..., 1). So layouts never repeat across domains, yet every domain draws from one layout
distribution, and the same (domain, index, size, seed) is always byte-identical.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppar_core.data.synth_styles import (
    BUILTIN_STYLES,
    DEFAULT_DOMAINS,
    FACE_CAMERA,
    FACE_LEFT,
    FACE_RIGHT,
    FACE_SKY,
    FACE_UP,
    LIGHT_HEAD,
    LIGHT_LAMP,
    LIGHT_NONE,
    LIGHT_SIGNAL,
    LIGHT_TAIL,
    LIGHT_WINDOW,
    Style,
    load_style_file,
    render,
)
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES

__all__ = [
    "BUILTIN_STYLES", "DEFAULT_DOMAINS", "SKY_DEPTH", "Layout", "Style", "generate_layout", "load_style_file",
    "make_sample", "render", "write_domains",
]  # fmt: skip

GENERATOR_VERSION = 1  # bump when layouts or rendering change, so style.json tells old folders apart
SKY_DEPTH = 1000.0  # metres given to the sky in the depth map (haze saturates well before)


@dataclass(frozen=True, eq=False)
class Layout:
    """One procedural street scene, independent of style. P is the number of parts (drawn primitives)."""

    labels: np.ndarray  # (H,W) uint8 trainIds 0-18 (the generator never emits 255)
    parts: np.ndarray  # (H,W) uint16 index into the part tables; part 0 is the sky
    depth: np.ndarray  # (H,W) float32 distance along the view axis in metres; sky = SKY_DEPTH
    part_labels: np.ndarray  # (P,) uint8 trainId of each part
    part_colors: np.ndarray  # (P,3) float32 base RGB in 0-1 (before any style)
    part_lights: np.ndarray  # (P,) uint8 light kind (synth_styles.LIGHT_*): what may glow at night
    part_facing: np.ndarray  # (P,) uint8 facing code (synth_styles.FACE_*): for sun shading
    horizon: float  # image row of the horizon (the sky gradient is measured from it)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))


_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
_ROAD, _SIDEWALK, _BUILDING, _WALL, _FENCE, _POLE, _TLIGHT, _SIGN, _VEG, _TERRAIN = (
    _ID[n] for n in ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                     "vegetation", "terrain")
)  # fmt: skip
_SKY, _PERSON, _RIDER, _CAR, _TRUCK, _BUS, _TRAIN, _MOTO, _BIKE = (
    _ID[n] for n in ("sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
)
_FAR = 3000.0  # metres: the far end of the ground planes (projects onto the horizon)
_GLASS = (0.13, 0.15, 0.19)
_DARK = (0.06, 0.06, 0.07)
Color = tuple[float, float, float]
# Base colours (RGB 0-1) by material; one is drawn per object and jittered, so each class keeps a typical look.
_FACADES: tuple[Color, ...] = ((0.62, 0.56, 0.48), (0.55, 0.55, 0.55), (0.6, 0.42, 0.35), (0.72, 0.7, 0.64),
                               (0.48, 0.46, 0.44), (0.66, 0.6, 0.5))  # fmt: skip
_CARS: tuple[Color, ...] = ((0.85, 0.85, 0.85), (0.08, 0.08, 0.09), (0.6, 0.62, 0.64), (0.6, 0.08, 0.07),
                            (0.1, 0.2, 0.5), (0.3, 0.31, 0.33), (0.55, 0.5, 0.4), (0.15, 0.35, 0.25))  # fmt: skip
_BUSES: tuple[Color, ...] = ((0.8, 0.15, 0.1), (0.95, 0.75, 0.1), (0.15, 0.35, 0.7), (0.85, 0.85, 0.82))
_TRAMS: tuple[Color, ...] = ((0.88, 0.88, 0.84), (0.7, 0.1, 0.1), (0.9, 0.75, 0.2), (0.2, 0.45, 0.6))
_CLOTHES: tuple[Color, ...] = ((0.1, 0.1, 0.12), (0.2, 0.25, 0.45), (0.55, 0.1, 0.1), (0.8, 0.8, 0.78),
                               (0.35, 0.4, 0.3), (0.6, 0.5, 0.35), (0.9, 0.6, 0.1), (0.3, 0.3, 0.32))  # fmt: skip
_SKINS: tuple[Color, ...] = ((0.9, 0.72, 0.6), (0.7, 0.5, 0.38), (0.45, 0.3, 0.22))
_SIGNAL: tuple[Color, ...] = ((1.0, 0.15, 0.1), (1.0, 0.7, 0.1), (0.2, 1.0, 0.45))  # red, amber, green


class _Scene:
    """A painter's canvas of part ids and the pinhole camera that projects street coordinates onto it.

    Street coordinates in metres: x to the right, y up from the ground, z forward from the camera.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.h, self.w = rng, h, w
        self.f = w * rng.uniform(0.8, 1.0)  # focal length in pixels: a 53-64 degree horizontal field of view
        self.cam_h = rng.uniform(1.3, 1.7)
        self.horizon = h * rng.uniform(0.36, 0.46)
        self.vx = w * rng.uniform(0.42, 0.58)
        self.parts = np.zeros((h, w), dtype=np.uint16)
        self._rows: list[tuple[int, Color, int, int, int, float]] = [
            (_SKY, (0.42, 0.62, 0.88), LIGHT_NONE, FACE_SKY, 0, SKY_DEPTH)
        ]
        self._items: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []

    # -- parts and ordering --------------------------------------------------------------------------------------
    def part(self, label: int, color: Sequence[float], z: float, *, jitter: float = 0.05, light: int = LIGHT_NONE,
             facing: int = FACE_CAMERA, kind: int = 0) -> int:  # fmt: skip
        """A new part id; `kind` 0: constant depth z, 1: ground plane, 2: wall parallel to the street at |x| = z."""
        c = np.clip(np.asarray(color, dtype=np.float64) * (1.0 + self.rng.normal(0.0, jitter, 3)), 0.0, 1.0)
        self._rows.append((label, (float(c[0]), float(c[1]), float(c[2])), light, facing, kind, float(z)))
        if len(self._rows) >= 65535:  # pragma: no cover - a 512x1024 scene uses about 2,000
            raise RuntimeError("too many parts in one synthetic scene")
        return len(self._rows) - 1

    def later(self, key: float, fn: Callable[..., None], *args: Any) -> None:
        """Queue a drawing; `finish` runs them far to near (descending key) so nearer objects occlude."""
        self._items.append((key, len(self._items), fn, args))

    def finish(self) -> None:
        for _, _, fn, args in sorted(self._items, key=lambda item: (-item[0], item[1])):
            fn(self, *args)
        self._items.clear()

    def tables(self) -> dict[str, np.ndarray]:
        return {
            "label": np.array([r[0] for r in self._rows], dtype=np.uint8),
            "color": np.array([r[1] for r in self._rows], dtype=np.float32),
            "light": np.array([r[2] for r in self._rows], dtype=np.uint8),
            "facing": np.array([r[3] for r in self._rows], dtype=np.uint8),
            "depth_kind": np.array([r[4] for r in self._rows], dtype=np.uint8),
            "depth_param": np.array([r[5] for r in self._rows], dtype=np.float32),
        }

    # -- primitives: every one writes only part ids, so labels, depth and colour share the same pixels -------------
    def uv(self, x: Any, y: Any, z: Any) -> tuple[np.ndarray, np.ndarray]:
        z = np.maximum(np.asarray(z, dtype=np.float64), 0.3)
        return self.vx + self.f * np.asarray(x) / z, self.horizon + self.f * (self.cam_h - np.asarray(y)) / z

    def poly(self, pid: int, u: np.ndarray, v: np.ndarray) -> None:
        # 4 fractional bits (shift=4) keep small far objects in the right place; clipping avoids int32 overflow.
        pts = np.clip(np.stack([u, v], axis=-1) * 16.0, -1e8, 1e8).round().astype(np.int32)
        cv2.fillPoly(self.parts, [pts.reshape(-1, 2)], pid, cv2.LINE_8, 4)

    def ground(self, pid: int, x0: float, x1: float, z0: float, z1: float) -> None:
        self.poly(pid, *self.uv([x0, x1, x1, x0], 0.0, [z0, z0, z1, z1]))

    def side(self, pid: int, x: float, y0: float, y1: float, z0: float, z1: float) -> None:
        """A rectangle in the vertical plane x = const (parallel to the street)."""
        self.poly(pid, *self.uv(x, [y0, y1, y1, y0], [z0, z0, z1, z1]))

    def front(self, pid: int, x0: float, x1: float, y0: float, y1: float, z: float) -> None:
        """A rectangle in the vertical plane z = const (facing the camera)."""
        self.poly(pid, *self.uv([x0, x1, x1, x0], [y0, y0, y1, y1], z))

    def disc(self, pid: int, x: float, y: float, z: float, r: float, *, ring: float = 0.0) -> None:
        u, v = self.uv(x, y, z)
        thick = -1 if ring <= 0 else max(1, round(self.f * ring / max(z, 0.3)))
        rad = max(0, round(16 * self.f * r / max(z, 0.3)))
        cv2.circle(self.parts, (int(round(float(u) * 16)), int(round(float(v) * 16))), rad, pid, thick, cv2.LINE_8, 4)

    def stroke(self, pid: int, a: tuple[float, float], b: tuple[float, float], z: float, width: float) -> None:
        """A thick segment between (x, y) points a and b in the plane z = const."""
        (u0, u1), (v0, v1) = self.uv([a[0], b[0]], [a[1], b[1]], z)
        thick = max(1, round(self.f * width / max(z, 0.3)))
        p0, p1 = (int(round(u0 * 16)), int(round(v0 * 16))), (int(round(u1 * 16)), int(round(v1 * 16)))
        cv2.line(self.parts, p0, p1, pid, thick, cv2.LINE_8, 4)

    def box(self, color: Color, label: int, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float,
            *, front: Color | None = None) -> tuple[int, int]:  # fmt: skip
        """The visible faces of an axis-aligned box (side, top, then front) -> (side part, front part)."""
        side_pid = front_pid = 0
        if x1 < 0 or x0 > 0:
            xs = x1 if x1 < 0 else x0
            side_pid = self.part(label, color, abs(xs), jitter=0.02, facing=FACE_LEFT if x1 < 0 else FACE_RIGHT,
                                 kind=2)  # fmt: skip
            self.side(side_pid, xs, y0, y1, z0, z1)
        if y1 < self.cam_h:
            self.poly(self.part(label, color, z0, jitter=0.02, facing=FACE_UP), *self.uv([x0, x1, x1, x0], y1,
                      [z0, z0, z1, z1]))  # fmt: skip
        front_pid = self.part(label, front or color, z0, jitter=0.02)
        self.front(front_pid, x0, x1, y0, y1, z0)
        return side_pid, front_pid

    def choice(self, options: Sequence[Color]) -> Color:
        return options[int(self.rng.integers(len(options)))]


@dataclass
class _Street:
    """The street cross-section: road edges, lanes, building lines (x in metres) and an optional side street."""

    xl: float  # left road edge (negative)
    xr: float  # right road edge
    lane_w: float
    lanes: np.ndarray  # (n,) lane centres
    oncoming: np.ndarray  # (n,) bool: traffic towards the camera (left half of the road)
    lines: tuple[float, float]  # building-line distance on the left, on the right (positive)
    cross: tuple[float, float] | None  # (z, width) of a side street, or None
    tram: int | None  # lane index of a tram line, or None
    parking: tuple[bool, bool]  # parked cars along the left, right curb

    def edge(self, side: int) -> float:
        return -self.xl if side < 0 else self.xr

    def in_cross(self, z0: float, z1: float) -> bool:
        return self.cross is not None and z1 > self.cross[0] - 1.5 and z0 < self.cross[0] + self.cross[1]


def _street(s: _Scene) -> _Street:
    rng = s.rng
    n = int(rng.integers(2, 5))
    lane_w = rng.uniform(3.0, 3.6)
    own = int(rng.integers(n // 2, n))  # right-hand traffic: the camera drives in the right half
    xl = -(own + rng.uniform(0.25, 0.75)) * lane_w
    xr = xl + n * lane_w
    walks = rng.uniform(2.0, 4.5, 2)
    cross = (float(rng.uniform(14, 40)), float(rng.uniform(9, 14))) if rng.random() < 0.55 else None
    tram = int(rng.integers(n)) if rng.random() < 0.3 else None
    parking = (bool(rng.random() < 0.3 and n > 2), bool(rng.random() < 0.45))
    st = _Street(xl, xr, lane_w, xl + lane_w * (np.arange(n) + 0.5), np.arange(n) < n // 2,
                 (-xl + walks[0], xr + walks[1]), cross, tram, parking)  # fmt: skip

    # Ground, bottom layer first: terrain everywhere, sidewalks, grass verges, road, curbs, markings.
    s.ground(s.part(_TERRAIN, (0.36, 0.47, 0.2), 0, jitter=0.1, facing=FACE_UP, kind=1), -3000, 3000, 1, _FAR)
    walk = s.part(_SIDEWALK, (0.62, 0.6, 0.57), 0, jitter=0.08, facing=FACE_UP, kind=1)
    joint = s.part(_SIDEWALK, (0.5, 0.49, 0.47), 0, facing=FACE_UP, kind=1)
    curb = s.part(_SIDEWALK, (0.74, 0.73, 0.7), 0, facing=FACE_UP, kind=1)
    road = s.part(_ROAD, (0.3, 0.3, 0.32), 0, jitter=0.1, facing=FACE_UP, kind=1)
    paint = s.part(_ROAD, (0.86, 0.86, 0.82), 0, jitter=0.03, facing=FACE_UP, kind=1)
    for side, d in ((-1, st.lines[0]), (1, st.lines[1])):
        e = st.edge(side)
        s.ground(walk, side * e, side * d, 1, _FAR)
        for z in np.arange(rng.uniform(1, 3), 30, 1.8):  # paving joints, only where they are visible
            s.ground(joint, side * e, side * d, z, z + 0.06)
        if rng.random() < 0.3:
            s.ground(s.part(_TERRAIN, (0.33, 0.5, 0.2), 0, jitter=0.1, facing=FACE_UP, kind=1),
                     side * (e + 0.3), side * (e + 0.3 + rng.uniform(0.8, 2.0)), 1, _FAR)  # fmt: skip
    s.ground(road, xl, xr, 1, _FAR)
    if cross is not None:
        s.ground(road, -400, 400, cross[0], cross[0] + cross[1])
        for x in np.arange(xl + 0.5, xr - 0.3, 1.0):  # zebra crossing before the side street
            s.ground(paint, x, x + 0.5, cross[0] - 4.5, cross[0] - 1.5)
    for side in (-1, 1):
        s.ground(curb, side * st.edge(side), side * (st.edge(side) + 0.25), 1, _FAR)
    for k in range(1, n):
        x = xl + k * lane_w
        if k == n // 2:  # solid line between the two directions
            s.ground(paint, x - 0.08, x + 0.08, 1, _FAR)
            continue
        period = rng.uniform(9, 12)
        for z in np.arange(rng.uniform(0, period), 140, period):
            if not st.in_cross(z, z + 3):
                s.ground(paint, x - 0.07, x + 0.07, z, z + 3)
    if tram is not None:
        rail = s.part(_ROAD, (0.5, 0.5, 0.52), 0, facing=FACE_UP, kind=1)
        for off in (-0.79, -0.65, 0.65, 0.79):
            s.ground(rail, st.lanes[tram] + off - 0.035, st.lanes[tram] + off + 0.035, 1, _FAR)
    return st


def _background(s: _Scene) -> None:
    rng = s.rng
    if rng.random() < 0.8:  # a distant skyline closing the street
        zb = rng.uniform(250, 450)
        x = -0.9 * zb
        while x < 0.9 * zb:
            wb = rng.uniform(15, 45)
            pid = s.part(_BUILDING, (0.56, 0.58, 0.63), zb, jitter=0.08)
            s.later(zb, _Scene.front, pid, x, x + wb, 0.0, rng.uniform(8, 65), zb)
            x += wb
    if rng.random() < 0.5:  # a line of distant trees
        zt = rng.uniform(130, 240)
        for x in np.arange(-0.8 * zt, 0.8 * zt, rng.uniform(6, 10)):
            pid = s.part(_VEG, (0.2, 0.36, 0.12), zt, jitter=0.15)
            s.later(zt, _Scene.disc, pid, x, rng.uniform(3, 7), zt, rng.uniform(4, 8))


def _draw_facade(s: _Scene, side: int, d: float, z0: float, z1: float, height: float, color: Color) -> None:
    rng = s.rng
    face = FACE_LEFT if side < 0 else FACE_RIGHT
    x = side * d
    s.side(s.part(_BUILDING, color, d, jitter=0.03, facing=face, kind=2), x, 0, height, z0, z1)
    s.side(s.part(_BUILDING, np.multiply(color, 0.75), d, facing=face, kind=2), x, height - 0.5, height, z0, z1)
    # Windows: a regular grid per building, each its own part so that a random subset can be lit at night.
    floor_h, pitch = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.6)
    ww, wh = rng.uniform(0.8, min(1.6, pitch - 0.5)), rng.uniform(1.1, 1.8)
    zs = np.arange(z0 + 1.0, z1 - ww - 0.5, pitch)
    ys = np.arange(floor_h + 0.9, height - wh - 0.6, floor_h)
    if len(zs) and len(ys) and s.f * wh / z1 >= 0.7:  # skip windows that would be under a pixel tall
        zz, yy = (a.ravel() for a in np.meshgrid(zs, ys))
        us, vs = s.uv(x, np.stack([yy, yy + wh, yy + wh, yy], 1), np.stack([zz, zz, zz + ww, zz + ww], 1))
        glass = np.asarray(_GLASS) * rng.uniform(0.8, 1.3)
        for i in range(len(zz)):
            s.poly(s.part(_BUILDING, glass, d, light=LIGHT_WINDOW, facing=face, kind=2), us[i], vs[i])
    if rng.random() < 0.5:  # shop fronts on the ground floor
        for zs0 in np.arange(z0 + 0.8, z1 - 3.0, rng.uniform(4, 7)):
            pid = s.part(_BUILDING, _GLASS, d, light=LIGHT_WINDOW, facing=face, kind=2)
            s.side(pid, x, 0.4, 2.6, zs0, zs0 + rng.uniform(2.0, 3.0))


def _building(s: _Scene, side: int, d: float, z0: float, z1: float, key: float) -> None:
    color, height = s.choice(_FACADES), float(s.rng.uniform(7, 30))
    s.later(key, _draw_facade, side, d, z0, z1, height, color)
    if z0 > 1.5:  # the end wall facing the camera, seen where the street front steps back or a street crosses
        pid = s.part(_BUILDING, np.multiply(color, 0.9), z0, jitter=0.03)
        s.later(z0, _Scene.front, pid, side * d, side * (d + s.rng.uniform(8, 20)), 0.0, height, z0)


def _tree(s: _Scene, x: float, z: float, key: float | None = None) -> None:
    rng = s.rng
    trunk_h, r = rng.uniform(1.8, 3.5), rng.uniform(1.3, 2.8)
    s.later(key or z, _Scene.front, s.part(_VEG, (0.33, 0.25, 0.17), z), x - 0.14, x + 0.14, 0.0, trunk_h + r, z)
    for _ in range(int(rng.integers(4, 8))):
        pid = s.part(_VEG, (0.2, 0.4, 0.12), z, jitter=0.2)
        cx, cy = x + rng.normal(0, r * 0.45), trunk_h + r * rng.uniform(0.6, 1.3)
        s.later(key or z, _Scene.disc, pid, cx, cy, z, r * rng.uniform(0.5, 0.85))


def _roadside(s: _Scene, st: _Street, side: int) -> None:
    """Buildings, parks, walls and fences along one side of the street, segment by segment."""
    rng = s.rng
    line = st.lines[0 if side < 0 else 1]
    face = FACE_LEFT if side < 0 else FACE_RIGHT
    z, z_end = rng.uniform(-2, 1), rng.uniform(80, 220)
    while z < z_end:
        z1 = z + rng.uniform(10, 35)
        if st.cross is not None and z1 > st.cross[0] - 1 and z < st.cross[0] + st.cross[1]:
            if z < st.cross[0] - 3:
                z1 = st.cross[0] - 1  # stop at the corner and continue after the side street
            else:
                z = st.cross[0] + st.cross[1]
                continue
        kind = rng.choice(4, p=[0.58, 0.16, 0.14, 0.12])  # building, park, wall, fence
        if kind == 0:
            setback = 0.0 if rng.random() < 0.6 else rng.uniform(1, 5)
            if setback:
                s.ground(s.part(_TERRAIN if rng.random() < 0.5 else _SIDEWALK, (0.45, 0.5, 0.3), 0, jitter=0.15,
                         facing=FACE_UP, kind=1), side * line, side * (line + setback), z, z1)  # fmt: skip
            _building(s, side, line + setback, z, z1, z1)
        elif kind == 1:
            s.ground(s.part(_TERRAIN, (0.36, 0.5, 0.2), 0, jitter=0.1, facing=FACE_UP, kind=1),
                     side * line, side * (line + 40), z, z1)  # fmt: skip
            for _ in range(int(rng.integers(1, 5))):
                _tree(s, side * (line + rng.uniform(2, 14)), rng.uniform(z, z1))
            if rng.random() < 0.6:
                _building(s, side, line + rng.uniform(20, 40), z, z1, z1 + 0.5)
        else:
            d, height = line + 0.15, rng.uniform(1.2, 3.0) if kind == 2 else rng.uniform(1.0, 2.0)
            if kind == 2:
                color = s.choice(((0.66, 0.64, 0.58), (0.55, 0.52, 0.5), (0.7, 0.6, 0.5)))
                s.later(z1, _Scene.side, s.part(_WALL, color, d, facing=face, kind=2), side * d, 0, height, z, z1)
                s.later(z1, _Scene.side, s.part(_WALL, np.multiply(color, 0.8), d, facing=face, kind=2),
                        side * d, height - 0.15, height, z, z1)  # fmt: skip
            else:
                color = s.choice(((0.38, 0.42, 0.38), (0.5, 0.38, 0.25), (0.6, 0.6, 0.62)))
                s.later(z1, _Scene.side, s.part(_FENCE, color, d, facing=face, kind=2), side * d, 0, height, z, z1)
                post = s.part(_FENCE, np.multiply(color, 0.6), d, facing=face, kind=2)
                for zp in np.arange(z, z1, 2.5):
                    s.later(z1, _Scene.side, post, side * d, 0, height + 0.1, zp, zp + 0.12)
            if rng.random() < 0.6:
                _building(s, side, line + rng.uniform(3, 10), z, z1, z1 + 0.5)
            else:
                for _ in range(int(rng.integers(2, 5))):
                    _tree(s, side * (line + rng.uniform(1.5, 8)), rng.uniform(z, z1), z1 + 0.5)
        z = z1


def _draw_traffic_light(s: _Scene, x: float, y: float, z: float) -> None:
    """A signal head with its box bottom at height y: a dark box and three lamps, one of them lit."""
    s.front(s.part(_TLIGHT, (0.12, 0.12, 0.1), z), x - 0.18, x + 0.18, y, y + 0.95, z)
    lit = int(s.rng.integers(3))
    for k in range(3):
        on = k == lit
        color = _SIGNAL[k] if on else (0.16, 0.13, 0.1)
        pid = s.part(_TLIGHT, color, z, jitter=0.0, light=LIGHT_SIGNAL if on else LIGHT_NONE)
        s.disc(pid, x, y + 0.8 - 0.32 * k, z, 0.1)


def _draw_pole(s: _Scene, x: float, z: float, top: float, width: float) -> None:
    s.front(s.part(_POLE, (0.42, 0.44, 0.46), z), x - width / 2, x + width / 2, 0.0, top, z)


def _draw_street_light(s: _Scene, x: float, z: float, side: int) -> None:
    top = s.rng.uniform(6.5, 9.0)
    _draw_pole(s, x, z, top, 0.18)
    tip = x - side * 1.5
    s.stroke(s.part(_POLE, (0.42, 0.44, 0.46), z), (x, top), (tip, top + 0.25), z, 0.1)
    s.front(s.part(_POLE, (0.85, 0.85, 0.8), z, light=LIGHT_LAMP), tip - 0.3, tip + 0.3, top, top + 0.2, z)


def _draw_sign(s: _Scene, x: float, z: float) -> None:
    rng = s.rng
    top = rng.uniform(1.9, 2.6)
    _draw_pole(s, x, z, top, 0.08)
    shape, y = int(rng.integers(4)), top + 0.35
    if shape == 0:  # round: red ring, white or blue face
        s.disc(s.part(_SIGN, (0.8, 0.1, 0.1), z), x, y, z, 0.33)
        s.disc(s.part(_SIGN, s.choice(((0.92, 0.92, 0.9), (0.1, 0.3, 0.75))), z), x, y, z, 0.25)
    elif shape == 1:  # warning triangle
        u, v = s.uv([x - 0.4, x + 0.4, x], [y - 0.3, y - 0.3, y + 0.4], z)
        s.poly(s.part(_SIGN, (0.8, 0.1, 0.1), z), u, v)
        u, v = s.uv([x - 0.27, x + 0.27, x], [y - 0.22, y - 0.22, y + 0.24], z)
        s.poly(s.part(_SIGN, (0.92, 0.92, 0.9), z), u, v)
    elif shape == 2:  # information rectangle
        s.front(s.part(_SIGN, (0.1, 0.3, 0.72), z), x - 0.32, x + 0.32, y - 0.35, y + 0.35, z)
        s.front(s.part(_SIGN, (0.92, 0.92, 0.9), z), x - 0.12, x + 0.12, y - 0.2, y + 0.2, z)
    else:  # priority diamond
        u, v = s.uv([x - 0.35, x, x + 0.35, x], [y, y - 0.35, y, y + 0.35], z)
        s.poly(s.part(_SIGN, (0.92, 0.92, 0.9), z), u, v)
        u, v = s.uv([x - 0.22, x, x + 0.22, x], [y, y - 0.22, y, y + 0.22], z)
        s.poly(s.part(_SIGN, (0.95, 0.75, 0.1), z), u, v)


def _furniture(s: _Scene, st: _Street) -> None:
    rng = s.rng
    for side in (-1, 1):
        x = side * (st.edge(side) + 0.5)
        for z in np.arange(rng.uniform(3, 15), 130, rng.uniform(22, 35)):
            if not st.in_cross(z, z + 0.5):
                s.later(z, _draw_street_light, x, z, side)
        if rng.random() < 0.35:  # trees along the curb
            for z in np.arange(rng.uniform(4, 10), 90, rng.uniform(8, 15)):
                if not st.in_cross(z, z + 2):
                    _tree(s, side * (st.edge(side) + 1.0), z)
    # Traffic lights at the side street's corners, or at a pedestrian crossing.
    zl = st.cross[0] - 1.2 if st.cross is not None else rng.uniform(12, 45)
    if st.cross is not None or rng.random() < 0.7:
        sides = [side for side in (-1, 1) if rng.random() < 0.75] or [1]
        for side in sides:
            x, top = side * (st.edge(side) + 0.6), rng.uniform(2.6, 3.4)
            s.later(zl, _draw_pole, x, zl, top, 0.14)
            s.later(zl, _draw_traffic_light, x, top, zl)
        if 1 in sides and rng.random() < 0.5:  # a mast arm holding a second signal over the road
            x, xa = st.xr + 0.6, st.xr - rng.uniform(3, 6)
            s.later(zl, _draw_pole, x, zl, 5.6, 0.2)
            s.later(zl, _Scene.front, s.part(_POLE, (0.42, 0.44, 0.46), zl), xa - 0.3, x, 5.45, 5.6, zl)
            s.later(zl, _draw_traffic_light, xa, 4.45, zl)
    for _ in range(int(rng.integers(1, 4))):
        side = -1 if rng.random() < 0.4 else 1
        z = rng.uniform(6, 55)
        s.later(z, _draw_sign, side * (st.edge(side) + rng.uniform(0.3, 1.0)), z)


def _draw_person(s: _Scene, x: float, z: float, label: int = _PERSON) -> None:
    """A standing or walking person, about 1.55-1.95 m tall, as a flat figure at depth z."""
    rng = s.rng
    hp = rng.uniform(1.55, 1.95)
    top, pants, skin = s.choice(_CLOTHES), s.choice(_CLOTHES), s.choice(_SKINS)
    stride = rng.uniform(0.0, 0.25) * hp
    legs = s.part(label, np.multiply(pants, 0.8), z)
    for sgn in (-1, 1):
        s.stroke(legs, (x + sgn * 0.055 * hp, 0.5 * hp), (x + sgn * stride / 2, 0.02 * hp), z, 0.08 * hp)
        s.stroke(s.part(label, top, z), (x + sgn * 0.14 * hp, 0.8 * hp),
                 (x + sgn * (0.17 * hp + rng.uniform(-0.05, 0.08)), 0.47 * hp), z, 0.055 * hp)  # fmt: skip
    u, v = s.uv([x - 0.14 * hp, x + 0.14 * hp, x + 0.11 * hp, x - 0.11 * hp], [0.83 * hp, 0.83 * hp, 0.48 * hp,
                0.48 * hp], z)  # fmt: skip
    s.poly(s.part(label, top, z), u, v)
    s.disc(s.part(label, skin, z), x, 0.915 * hp, z, 0.062 * hp)
    s.disc(s.part(label, (0.12, 0.08, 0.05), z), x, 0.945 * hp, z, 0.045 * hp)


def _draw_bike_side(s: _Scene, x: float, z: float, direction: int, moto: bool, ridden: bool) -> None:
    """A bicycle or motorcycle seen from the side (wheels apart horizontally), with an optional rider."""
    rng = s.rng

    def p(lx: float, ly: float) -> tuple[float, float]:
        return (x + direction * lx, ly)

    label = _MOTO if moto else _BIKE
    if moto:
        tyre, body = s.part(label, _DARK, z), s.part(label, s.choice(_CARS), z)
        for lx in (-0.68, 0.68):
            s.disc(tyre, *p(lx, 0.32), z, 0.32)
            s.disc(s.part(label, (0.5, 0.5, 0.52), z), *p(lx, 0.32), z, 0.13)
        shape = [(-0.7, 0.6), (-0.3, 0.45), (0.25, 0.4), (0.55, 0.7), (0.5, 1.0), (0.15, 0.95), (-0.2, 0.85),
                 (-0.75, 0.85)]  # fmt: skip
        u, v = s.uv([p(lx, ly)[0] for lx, ly in shape], [ly for _, ly in shape], z)
        s.poly(body, u, v)
        s.stroke(body, p(0.68, 0.32), p(0.5, 1.05), z, 0.07)
        s.disc(s.part(label, (0.9, 0.9, 0.8), z, light=LIGHT_HEAD), *p(0.6, 0.9), z, 0.07)
        seat, hand = (-0.25, 0.95), (0.45, 1.1)
    else:
        tyre, frame = s.part(label, _DARK, z), s.part(label, s.choice(_CARS), z)
        for lx in (-0.52, 0.52):
            s.disc(tyre, *p(lx, 0.34), z, 0.34, ring=0.05)
        joints = [((-0.52, 0.34), (0.0, 0.3)), ((0.0, 0.3), (-0.15, 0.88)), ((-0.15, 0.88), (0.42, 0.86)),
                  ((0.0, 0.3), (0.42, 0.86)), ((0.42, 0.86), (0.52, 0.34)), ((-0.52, 0.34), (-0.15, 0.88)),
                  ((0.42, 0.86), (0.38, 1.02)), ((-0.25, 0.92), (-0.05, 0.92))]  # fmt: skip
        for a, b in joints:
            s.stroke(frame, p(*a), p(*b), z, 0.04)
        seat, hand = (-0.15, 0.92), (0.38, 1.02)
    if ridden:
        cloth, skin = s.choice(_CLOTHES), s.choice(_SKINS)
        hip, shoulder = p(seat[0], seat[1] + 0.05), p(seat[0] + 0.25, seat[1] + 0.6)
        knee = p(seat[0] + 0.35, seat[1] - 0.15)
        legs = s.part(_RIDER, np.multiply(cloth, 0.7), z)
        s.stroke(legs, hip, knee, z, 0.14)
        s.stroke(legs, knee, p(0.0 if not moto else 0.1, 0.3 if not moto else 0.45), z, 0.11)
        torso = s.part(_RIDER, cloth, z)
        s.stroke(torso, hip, shoulder, z, 0.3)
        s.stroke(torso, shoulder, p(*hand), z, 0.08)
        head = s.choice(_CLOTHES) if moto or rng.random() < 0.5 else skin  # helmet or bare head
        s.disc(s.part(_RIDER, head, z), shoulder[0] + direction * 0.08, shoulder[1] + 0.2, z, 0.13)


def _draw_rider_rear(s: _Scene, x: float, z: float, moto: bool) -> None:
    """A cyclist or motorcyclist riding away from the camera: a narrow vehicle under a rider's back."""
    label = _MOTO if moto else _BIKE
    half = 0.08 if moto else 0.03
    s.front(s.part(label, _DARK, z), x - half, x + half, 0.0, 0.68, z)
    if moto:
        s.front(s.part(label, s.choice(_CARS), z), x - 0.3, x + 0.3, 0.4, 0.9, z)
        s.front(s.part(label, (0.7, 0.05, 0.05), z, light=LIGHT_TAIL), x - 0.08, x + 0.08, 0.72, 0.8, z)
    else:
        s.front(s.part(label, (0.3, 0.3, 0.32), z), x - 0.3, x + 0.3, 1.0, 1.05, z)
    cloth = s.choice(_CLOTHES)
    legs = s.part(_RIDER, np.multiply(cloth, 0.7), z)
    for sgn in (-1, 1):
        s.front(legs, x + sgn * 0.07, x + sgn * 0.19, 0.35 if moto else 0.3 + 0.2 * (sgn > 0), 0.95, z)
    s.front(s.part(_RIDER, cloth, z), x - 0.22, x + 0.22, 0.9, 1.5, z)
    s.disc(s.part(_RIDER, s.choice(_CLOTHES if moto else _SKINS), z), x, 1.64, z, 0.14)


def _wheels(s: _Scene, label: int, x0: float, x1: float, z0: float, z1: float, radius: float) -> None:
    """Tyres under a vehicle: two seen from behind at the near end, two on the visible side."""
    tyre = s.part(label, _DARK, z0, jitter=0.0)
    for xa, xb in ((x0, x0 + 0.28), (x1 - 0.28, x1)):
        s.front(tyre, xa, xb, 0.0, radius, z0 + 0.6)
    if x1 < 0 or x0 > 0:
        xs = x1 if x1 < 0 else x0
        for zc in (z0 + radius + 0.4, z1 - radius - 0.5):
            (ua, ub), (v, _) = s.uv([xs, xs], [radius, radius], [zc - radius, zc + radius])
            vr = s.f * radius / zc
            cv2.ellipse(s.parts, (int(round((ua + ub) * 8)), int(round(float(v) * 16))),
                        (max(0, int(round(abs(ua - ub) * 8))), int(round(vr * 16))), 0, 0, 360, tyre, -1,
                        cv2.LINE_8, 4)  # fmt: skip


def _lights(s: _Scene, label: int, x0: float, x1: float, y: float, z: float, oncoming: bool) -> None:
    color, kind = ((0.92, 0.92, 0.85), LIGHT_HEAD) if oncoming else ((0.7, 0.05, 0.05), LIGHT_TAIL)
    pid = s.part(label, color, z, jitter=0.0, light=kind)
    s.front(pid, x0 + 0.06, x0 + 0.36, y, y + 0.14, z - 0.01)
    s.front(pid, x1 - 0.36, x1 - 0.06, y, y + 0.14, z - 0.01)


def _draw_car(s: _Scene, xc: float, z0: float, oncoming: bool) -> None:
    rng = s.rng
    length, width, height = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.9), rng.uniform(1.38, 1.6)
    x0, x1, color = xc - width / 2, xc + width / 2, s.choice(_CARS)
    _wheels(s, _CAR, x0, x1, z0, z0 + length, 0.32)
    s.box(color, _CAR, x0, x1, 0.28, 0.95, z0, z0 + length)
    _wheels(s, _CAR, x0 + 0.01, x1 - 0.01, z0 + 0.01, z0 + length, 0.32)  # side tyres over the body side
    cabin0 = z0 + (0.7 if oncoming else 0.9)
    side, back = s.box(color, _CAR, x0 + 0.1, x1 - 0.1, 0.95, height, cabin0, z0 + length - 1.0)
    s.front(s.part(_CAR, _GLASS, cabin0), x0 + 0.2, x1 - 0.2, 1.0, height - 0.08, cabin0)
    if side:
        xs = x1 - 0.1 if x1 < 0 else x0 + 0.1
        s.side(s.part(_CAR, _GLASS, abs(xs), kind=2), xs, 1.0, height - 0.08, cabin0 + 0.15, z0 + length - 1.15)
    _lights(s, _CAR, x0, x1, 0.66, z0, oncoming)
    s.front(s.part(_CAR, (0.9, 0.9, 0.88), z0), xc - 0.25, xc + 0.25, 0.42, 0.54, z0 - 0.01)


def _draw_truck(s: _Scene, xc: float, z0: float, oncoming: bool) -> None:
    rng = s.rng
    cargo_len, cargo_h = rng.uniform(6, 9), rng.uniform(3.2, 3.9)
    x0, x1 = xc - 1.25, xc + 1.25
    cab_color = s.choice(_CARS)
    cab = (z0, z0 + 2.2) if oncoming else (z0 + cargo_len + 0.3, z0 + cargo_len + 2.5)
    cargo = (z0 + 2.5, z0 + 2.5 + cargo_len) if oncoming else (z0, z0 + cargo_len)
    boxes = [(cab, cab_color, 2.9), (cargo, s.choice(((0.85, 0.85, 0.83), (0.6, 0.62, 0.65), (0.2, 0.3, 0.6))),
             cargo_h)]  # fmt: skip
    for (za, zb), color, top in sorted(boxes, key=lambda b: -b[0][0]):  # farther box first
        _wheels(s, _TRUCK, x0, x1, za, zb, 0.5)
        s.box(color, _TRUCK, x0, x1, 0.6, top, za, zb)
        _wheels(s, _TRUCK, x0 + 0.01, x1 - 0.01, za + 0.01, zb, 0.5)
    if oncoming:
        s.front(s.part(_TRUCK, _GLASS, z0), x0 + 0.15, x1 - 0.15, 1.7, 2.7, z0 - 0.01)
    _lights(s, _TRUCK, x0, x1, 0.8, z0, oncoming)


def _draw_long(s: _Scene, label: int, xc: float, z0: float, length: float, oncoming: bool) -> None:
    """A bus or a tram: a long box with a band of side windows and a front or rear window."""
    rng = s.rng
    width, height = (2.55, 3.1) if label == _BUS else (2.65, 3.45)
    x0, x1 = xc - width / 2, xc + width / 2
    color = s.choice(_BUSES if label == _BUS else _TRAMS)
    if label == _BUS:
        _wheels(s, label, x0, x1, z0, z0 + length, 0.5)
    side, _ = s.box(color, label, x0, x1, 0.35, height, z0, z0 + length)
    if side:
        xs = x1 if x1 < 0 else x0
        stripe = s.part(label, np.multiply(color, 0.55), abs(xs), kind=2)
        s.side(stripe, xs, 0.85, 1.0, z0, z0 + length)
        for zw in np.arange(z0 + 1.0, z0 + length - 1.5, rng.uniform(1.4, 2.2)):
            pid = s.part(label, _GLASS, abs(xs), light=LIGHT_WINDOW, kind=2)
            s.side(pid, xs, 1.25, 2.5, zw, zw + 1.1)
    if label == _BUS:
        _wheels(s, label, x0 + 0.01, x1 - 0.01, z0 + 0.01, z0 + length, 0.5)
    glass_low = 1.0 if oncoming or label == _TRAIN else 2.0
    s.front(s.part(label, _GLASS, z0, light=LIGHT_WINDOW), x0 + 0.15, x1 - 0.15, glass_low, height - 0.3, z0 - 0.01)
    _lights(s, label, x0, x1, 0.6, z0, oncoming)
    if label == _TRAIN:  # pantograph up to the overhead wire
        s.stroke(s.part(label, (0.25, 0.25, 0.27), z0 + 3), (xc - 0.4, height), (xc + 0.3, 5.2), z0 + 3, 0.05)


def _traffic(s: _Scene, st: _Street) -> None:
    """Vehicles in the lanes, parked cars, a tram, riders, pedestrians and parked two-wheelers."""
    rng = s.rng
    tram_span = (0.0, 0.0)
    if st.tram is not None:
        zt, length = rng.uniform(10, 60), rng.uniform(20, 35)
        tram_span = (zt - 3, zt + length + 3)
        s.later(zt, _draw_long, _TRAIN, st.lanes[st.tram] + rng.uniform(-0.2, 0.2), zt, length,
                bool(st.oncoming[st.tram] or rng.random() < 0.3))  # fmt: skip
    outer = (0, len(st.lanes) - 1)
    for i, xc in enumerate(st.lanes):
        if (st.parking[0] and i == outer[0]) or (st.parking[1] and i == outer[1]):
            continue
        z = rng.uniform(8, 20) if abs(xc) < st.lane_w / 2 else rng.uniform(4, 16)
        while z < 120:
            if rng.random() < 0.6 and not tram_span[0] < z < tram_span[1]:
                kind = rng.choice(5, p=[0.72, 0.1, 0.09, 0.05, 0.04])
                x = xc + rng.uniform(-0.3, 0.3)
                if kind == 0:
                    s.later(z, _draw_car, x, z, bool(st.oncoming[i]))
                elif kind == 1:
                    s.later(z, _draw_truck, x, z, bool(st.oncoming[i]))
                elif kind == 2:
                    s.later(z, _draw_long, _BUS, x, z, rng.uniform(10.5, 13), bool(st.oncoming[i]))
                else:
                    s.later(z, _draw_rider_rear, x, z, kind == 3)
                z += (13 if kind in (1, 2) else 5) + rng.uniform(4, 25) * (1 + z / 60)
            else:
                z += rng.uniform(5, 20)
    for side, parked in zip((-1, 1), st.parking, strict=True):
        if parked:
            x, z, z_end = side * (st.edge(side) - 1.1), rng.uniform(2, 8), rng.uniform(40, 100)
            while z < z_end:
                if not st.in_cross(z, z + 5) and rng.random() < 0.85:
                    s.later(z, _draw_car, x + rng.uniform(-0.15, 0.15), z, False)
                z += rng.uniform(5.0, 9.0)
    if rng.random() < 0.35:  # a cyclist or motorcyclist near the right curb
        z = rng.uniform(7, 40)
        s.later(z, _draw_rider_rear, st.xr - rng.uniform(0.6, 1.0), z, rng.random() < 0.4)
    if st.cross is not None:
        if rng.random() < 0.5:  # a rider crossing in the side street
            z = st.cross[0] + rng.uniform(2, st.cross[1] - 2)
            s.later(z, _draw_bike_side, rng.uniform(st.xl, st.xr), z, 1 if rng.random() < 0.5 else -1,
                    rng.random() < 0.4, True)  # fmt: skip
        for _ in range(int(rng.integers(0, 4))):  # pedestrians on the zebra crossing
            z = st.cross[0] - rng.uniform(2.0, 4.0)
            s.later(z, _draw_person, rng.uniform(st.xl, st.xr), z)
    for _ in range(int(rng.poisson(4.0))):
        side = -1 if rng.random() < 0.5 else 1
        z = rng.uniform(3.5, 60)
        x = side * rng.uniform(st.edge(side) + 0.5, st.lines[0 if side < 0 else 1] - 0.3)
        for k in range(1 + int(rng.random() < 0.3) * int(rng.integers(1, 3))):  # alone or in a small group
            s.later(z + 0.4 * k, _draw_person, x + side * 0.6 * k, z + 0.4 * k)
    for moto, chance in ((False, 0.45), (True, 0.35)):  # parked two-wheelers, side on to the camera
        if rng.random() < chance:
            side, z = (-1 if rng.random() < 0.5 else 1), rng.uniform(5, 30)
            x = side * (st.edge(side) + rng.uniform(0.8, 1.6))
            for k in range(int(rng.integers(1, 4))):
                s.later(z + 0.8 * k, _draw_bike_side, x, z + 0.8 * k, side, moto, False)


def _build_scene(rng: np.random.Generator, h: int, w: int) -> _Scene:
    scene = _Scene(rng, h, w)
    street = _street(scene)
    _background(scene)
    for side in (-1, 1):
        _roadside(scene, street, side)
    _furniture(scene, street)
    _traffic(scene, street)
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
    kind, param = tables["depth_kind"][parts], tables["depth_param"][parts]
    # Depth by surface type: constant (objects facing the camera), ground plane (from the row), or a vertical plane
    # parallel to the street (from the column and the plane's lateral distance).
    rows = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    cols = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    ground = scene.f * scene.cam_h / np.maximum(rows - scene.horizon, 0.25)
    plane = scene.f * param / np.maximum(np.abs(cols - scene.vx), 0.25)
    depth = np.where(kind == 0, param, np.where(kind == 1, ground, plane))
    depth = np.clip(depth, 0.5, SKY_DEPTH).astype(np.float32)
    return Layout(
        labels=tables["label"][parts],
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


def _write_atomic(path: Path, data: bytes) -> None:
    # A hidden temporary name that no `*.png` glob matches, renamed into place: a crash never leaves half a PNG.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV only fails here on out-of-memory
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_domains(
    out: Path,
    *,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    num: int = 100,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    styles: Mapping[str, Style] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Write `num` samples of each domain -> {domain: out/domain}.

    Layout: `out/<domain>/images/<domain>_<index:05d>.png` (RGB), the label with the same name under `labels/`
    (single-channel uint8 trainIds), and `out/<domain>/style.json` (style, seed, size, num, generator version).
    `styles` adds to or overrides BUILTIN_STYLES. `progress(done, total)` is called after every sample.
    """
    size = _check_size(size)
    if not isinstance(num, int) or num < 0:
        raise PparError(f"The number of synthetic images per domain must be a non-negative integer, got {num!r}.")
    known = _resolve_styles(domains, styles)
    out = Path(out)
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
        _write_atomic(folder / "style.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        for index in range(num):
            image, labels = make_sample(domain, index, size=size, seed=seed, styles=known)
            name = f"{domain}_{index:05d}.png"
            _write_atomic(folder / "images" / name, _png(np.ascontiguousarray(image[..., ::-1])))  # OpenCV is BGR
            _write_atomic(folder / "labels" / name, _png(labels))
            done += 1
            if progress is not None:
                progress(done, total)
        folders[domain] = folder
    return folders
