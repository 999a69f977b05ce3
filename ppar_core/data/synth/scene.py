"""The painter's canvas of a synthetic scene and the pinhole camera that projects street points onto it.

`Scene` holds a (H,W) uint16 map of part ids. Every primitive it draws is a new part (class, base colour, light
kind, facing, depth rule), so the labels, depth and colours of a `Layout` all come from the same pixels. Drawings
are queued with `later` and run far to near by `finish` (the painter's algorithm), so nearer things occlude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from ppar_core.data.synth.layout import (
    FACE_CAMERA,
    FACE_LEFT,
    FACE_RIGHT,
    FACE_SKY,
    FACE_UP,
    LIGHT_NONE,
    SKY_DEPTH,
    TRAIN_ID,
    Color,
)

_MAX_PARTS = 65535  # part ids are uint16; a 512x1024 scene uses about 2,000


class Scene:
    """A painter's canvas of part ids and the pinhole camera that projects street coordinates onto it.

    Street coordinates in metres: x to the right, y up from the ground, z forward from the camera. `parts` is the
    (H,W) uint16 canvas; part 0 is the sky, which every pixel starts as.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.rng = rng
        self.f = w * rng.uniform(0.8, 1.0)  # focal length in pixels: a 53-64 degree horizontal field of view
        self.cam_h = rng.uniform(1.3, 1.7)
        self.horizon = h * rng.uniform(0.36, 0.46)
        self.vx = w * rng.uniform(0.42, 0.58)
        self.parts = np.zeros((h, w), dtype=np.uint16)
        # One row per part: (trainId, colour, light kind, facing, depth kind, depth parameter).
        self._rows: list[tuple[int, Color, int, int, int, float]] = [
            (TRAIN_ID["sky"], (0.42, 0.62, 0.88), LIGHT_NONE, FACE_SKY, 0, SKY_DEPTH)
        ]
        self._items: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._jitter: list[float] = rng.standard_normal(3 * 2048).tolist()
        self._next = 0

    # -- parts and ordering --------------------------------------------------------------------------------------
    def part(
        self,
        label: int,
        color: Sequence[float] | np.ndarray,
        z: float,
        *,
        jitter: float = 0.05,
        light: int = LIGHT_NONE,
        facing: int = FACE_CAMERA,
        kind: int = 0,
    ) -> int:
        """A new part id; `kind` 0: constant depth z, 1: ground plane, 2: wall parallel to the street at |x| = z."""
        # Colour jitter comes from a pre-drawn block of normals: drawing per part would dominate the layout time.
        n, i = self._jitter, self._next
        self._next = (i + 3) % len(n)
        # Mostly brightness, a little hue: independent channel jitter would tint grey materials (roads) purple.
        gains = (n[i] + 0.25 * n[i + 1], n[i] + 0.25 * n[i + 2], n[i] - 0.25 * (n[i + 1] + n[i + 2]))
        c = tuple(min(1.0, max(0.0, float(color[k]) * (1.0 + jitter * gains[k]))) for k in range(3))
        self._rows.append((label, (c[0], c[1], c[2]), light, facing, kind, float(z)))
        if len(self._rows) >= _MAX_PARTS:  # pragma: no cover - far beyond any real scene
            raise RuntimeError("too many parts in one synthetic scene")
        return len(self._rows) - 1

    def later(self, key: float, fn: Callable[..., None], *args: Any) -> None:
        """Queue `fn(self, *args)`; `finish` runs the queue far to near (descending key) so nearer objects occlude."""
        self._items.append((key, len(self._items), fn, args))

    def finish(self) -> None:
        """Run the queued drawings, largest key first; equal keys keep their queueing order."""
        for _, _, fn, args in sorted(self._items, key=lambda item: (-item[0], item[1])):
            fn(self, *args)
        self._items.clear()

    def tables(self) -> dict[str, np.ndarray]:
        """The per-part tables, each (P,): label uint8, color (P,3) float32, light, facing and depth_kind uint8,
        depth_param float32 (the constant depth, or the lateral distance of a wall parallel to the street)."""
        return {
            "label": np.array([r[0] for r in self._rows], dtype=np.uint8),
            "color": np.array([r[1] for r in self._rows], dtype=np.float32),
            "light": np.array([r[2] for r in self._rows], dtype=np.uint8),
            "facing": np.array([r[3] for r in self._rows], dtype=np.uint8),
            "depth_kind": np.array([r[4] for r in self._rows], dtype=np.uint8),
            "depth_param": np.array([r[5] for r in self._rows], dtype=np.float32),
        }

    # -- primitives: every one writes only part ids, so labels, depth and colour share the same pixels -------------
    # Points are projected in plain Python (a handful per primitive: numpy's per-call overhead would dominate) to
    # OpenCV fixed point with 4 fractional bits (shift=4), which keeps small, far objects in the right place.
    def pt(self, x: float, y: float, z: float) -> tuple[int, int]:
        """Street point (x, y, z) -> fixed-point pixel (16 u, 16 v); z is clamped to the 0.3 m near plane."""
        z = z if z > 0.3 else 0.3
        return round((self.vx + self.f * x / z) * 16.0), round((self.horizon + self.f * (self.cam_h - y) / z) * 16.0)

    def poly(self, pid: int, points: Sequence[tuple[float, float, float]]) -> None:
        """A filled polygon through street points."""
        cv2.fillPoly(self.parts, [np.array([self.pt(*p) for p in points], dtype=np.int32)], pid, cv2.LINE_8, 4)

    def flat(self, pid: int, xs: Sequence[float], ys: Sequence[float], z: float) -> None:
        """A polygon in the vertical plane z = const (facing the camera)."""
        self.poly(pid, [(x, y, z) for x, y in zip(xs, ys, strict=True)])

    def ground(self, pid: int, x0: float, x1: float, z0: float, z1: float) -> None:
        """A rectangle on the ground plane y = 0."""
        self.poly(pid, ((x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)))

    def side(self, pid: int, x: float, y0: float, y1: float, z0: float, z1: float) -> None:
        """A rectangle in the vertical plane x = const (parallel to the street)."""
        self.poly(pid, ((x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)))

    def front(self, pid: int, x0: float, x1: float, y0: float, y1: float, z: float) -> None:
        """A rectangle in the vertical plane z = const (facing the camera)."""
        self.poly(pid, ((x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)))

    def disc(self, pid: int, x: float, y: float, z: float, r: float, *, ring: float = 0.0) -> None:
        """A disc of radius r facing the camera, or a ring of that width when `ring` > 0 (all in metres)."""
        z = max(z, 0.3)
        thick = -1 if ring <= 0 else max(1, round(self.f * ring / z))
        cv2.circle(self.parts, self.pt(x, y, z), round(16 * self.f * r / z), pid, thick, cv2.LINE_8, 4)

    def stroke(self, pid: int, a: tuple[float, float], b: tuple[float, float], z: float, width: float) -> None:
        """A thick segment between (x, y) points a and b in the plane z = const."""
        thick = max(1, round(self.f * width / max(z, 0.3)))
        cv2.line(self.parts, self.pt(a[0], a[1], z), self.pt(b[0], b[1], z), pid, thick, cv2.LINE_8, 4)

    def box(
        self, color: Color, label: int, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float
    ) -> tuple[int, int]:
        """The visible faces of an axis-aligned box (side, top, then front) -> (side part or 0, front part)."""
        side_pid = 0
        if x1 < 0 or x0 > 0:  # a box straddling x = 0 shows no side to a camera at x = 0
            xs = x1 if x1 < 0 else x0
            side_pid = self.part(label, color, abs(xs), jitter=0.02, facing=FACE_LEFT if x1 < 0 else FACE_RIGHT, kind=2)
            self.side(side_pid, xs, y0, y1, z0, z1)
        if y1 < self.cam_h:  # the top is seen only from above
            top = self.part(label, color, z0, jitter=0.02, facing=FACE_UP)
            self.poly(top, ((x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)))
        front_pid = self.part(label, color, z0, jitter=0.02)
        self.front(front_pid, x0, x1, y0, y1, z0)
        return side_pid, front_pid

    def choice(self, options: Sequence[Color]) -> Color:
        """One of `options`, drawn from the scene's rng."""
        return options[int(self.rng.integers(len(options)))]
