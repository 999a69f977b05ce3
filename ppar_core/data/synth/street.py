"""The static street of a synthetic scene: road, background, roadside and street furniture.

Everything that does not move is laid out here, into a `Scene`: the street cross-section and its ground
(`lay_street`: road, lanes, markings, sidewalks, verges, rails), the distant skyline and tree line (`background`),
buildings, parks, walls and fences along both sides (`roadside`), and street lights, trees, traffic lights and
signs (`furniture`). Traffic and people are in `objects`; `generate.generate_layout` puts the scene together.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ppar_core.data.synth.layout import (
    FACE_LEFT,
    FACE_RIGHT,
    FACE_UP,
    GLASS,
    LIGHT_LAMP,
    LIGHT_NONE,
    LIGHT_SIGNAL,
    LIGHT_WINDOW,
    TRAIN_ID,
    Color,
)
from ppar_core.data.synth.scene import Scene

_ROAD = TRAIN_ID["road"]
_SIDEWALK = TRAIN_ID["sidewalk"]
_BUILDING = TRAIN_ID["building"]
_WALL = TRAIN_ID["wall"]
_FENCE = TRAIN_ID["fence"]
_POLE = TRAIN_ID["pole"]
_TLIGHT = TRAIN_ID["traffic light"]
_SIGN = TRAIN_ID["traffic sign"]
_VEG = TRAIN_ID["vegetation"]
_TERRAIN = TRAIN_ID["terrain"]
_FAR = 3000.0  # metres: the far end of the ground planes (projects onto the horizon)
_WINDOW_GROUPS = 8  # parts per facade among which windows are shared (lit or dark together)
# Base colours (RGB 0-1) by material; one is drawn per object and jittered, so each class keeps a typical look.
_FACADES: tuple[Color, ...] = ((0.62, 0.56, 0.48), (0.55, 0.55, 0.55), (0.6, 0.42, 0.35), (0.72, 0.7, 0.64),
                               (0.48, 0.46, 0.44), (0.66, 0.6, 0.5))  # fmt: skip
_SIGNAL: tuple[Color, ...] = ((1.0, 0.15, 0.1), (1.0, 0.7, 0.1), (0.2, 1.0, 0.45))  # red, amber, green


@dataclass
class Street:
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
        """Distance of the road edge on `side` (-1 left, 1 right) from the camera axis, positive."""
        return -self.xl if side < 0 else self.xr

    def in_cross(self, z0: float, z1: float) -> bool:
        """Whether the stretch z0..z1 overlaps the side street (or the 1.5 m before it)."""
        return self.cross is not None and z1 > self.cross[0] - 1.5 and z0 < self.cross[0] + self.cross[1]


def lay_street(s: Scene) -> Street:
    """Draw the street's cross-section and its whole ground (terrain, sidewalks, road, curbs, markings) -> Street."""
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
    st = Street(
        xl,
        xr,
        lane_w,
        xl + lane_w * (np.arange(n) + 0.5),
        np.arange(n) < n // 2,
        (-xl + walks[0], xr + walks[1]),
        cross,
        tram,
        parking,
    )

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
            s.ground(
                s.part(_TERRAIN, (0.33, 0.5, 0.2), 0, jitter=0.1, facing=FACE_UP, kind=1),
                side * (e + 0.3),
                side * (e + 0.3 + rng.uniform(0.8, 2.0)),
                1,
                _FAR,
            )
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


def background(s: Scene) -> None:
    """Queue a distant skyline closing the street and a distant line of trees (each present at random)."""
    rng = s.rng
    if rng.random() < 0.8:  # a distant skyline closing the street
        zb = rng.uniform(250, 450)
        x = -0.9 * zb
        while x < 0.9 * zb:
            wb = rng.uniform(15, 45)
            pid = s.part(_BUILDING, (0.56, 0.58, 0.63), zb, jitter=0.08)
            s.later(zb, Scene.front, pid, x, x + wb, 0.0, rng.uniform(8, 65), zb)
            x += wb
    if rng.random() < 0.5:  # a line of distant trees
        zt = rng.uniform(130, 240)
        for x in np.arange(-0.8 * zt, 0.8 * zt, rng.uniform(6, 10)):
            pid = s.part(_VEG, (0.2, 0.36, 0.12), zt, jitter=0.15)
            s.later(zt, Scene.disc, pid, x, rng.uniform(3, 7), zt, rng.uniform(4, 8))


def _draw_facade(s: Scene, side: int, d: float, z0: float, z1: float, height: float, color: Color) -> None:
    """A building front along the street at lateral distance d, with its cornice, windows and shop fronts."""
    rng = s.rng
    face = FACE_LEFT if side < 0 else FACE_RIGHT
    x = side * d
    s.side(s.part(_BUILDING, color, d, jitter=0.03, facing=face, kind=2), x, 0, height, z0, z1)
    s.side(s.part(_BUILDING, np.multiply(color, 0.75), d, facing=face, kind=2), x, height - 0.5, height, z0, z1)
    # Windows: a regular grid per building, each its own part so that a random subset can be lit at night.
    floor_h, pitch = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.6)
    ww, wh = rng.uniform(0.8, min(1.6, pitch - 0.5)), rng.uniform(1.1, 1.8)
    zs = np.arange(z0 + 1.0, z1 - ww - 0.5, pitch)
    zs = zs[zs > 0.5]  # behind the near plane a window would project mirrored
    ys = np.arange(floor_h + 0.9, height - wh - 0.6, floor_h)
    if len(zs) and len(ys) and s.f * wh / z1 >= 0.7:  # skip windows that would be under a pixel tall
        zz, yy = (a.ravel() for a in np.meshgrid(zs, ys))
        ys4, zs4 = np.stack([yy, yy + wh, yy + wh, yy], 1), np.stack([zz, zz, zz + ww, zz + ww], 1)
        pts = np.stack([s.vx + s.f * x / zs4, s.horizon + s.f * (s.cam_h - ys4) / zs4], -1)  # (N,4,2) pixels
        pts = np.rint(pts * 16.0).astype(np.int32)
        glass = np.asarray(GLASS) * rng.uniform(0.8, 1.3)
        # Windows fall at random into a few parts (each lit or dark as a whole at night), drawn in one call each:
        # one part per window would make windows the bulk of the layout time.
        group = rng.integers(0, _WINDOW_GROUPS, len(pts))
        for g in range(_WINDOW_GROUPS):
            pid = s.part(_BUILDING, glass, d, light=LIGHT_WINDOW, facing=face, kind=2)
            if np.any(group == g):
                cv2.fillPoly(s.parts, list(pts[group == g]), pid, cv2.LINE_8, 4)
    if rng.random() < 0.5:  # shop fronts on the ground floor
        for zs0 in np.arange(z0 + 0.8, z1 - 3.0, rng.uniform(4, 7)):
            pid = s.part(_BUILDING, GLASS, d, light=LIGHT_WINDOW, facing=face, kind=2)
            s.side(pid, x, 0.4, 2.6, zs0, zs0 + rng.uniform(2.0, 3.0))


def _building(s: Scene, side: int, d: float, z0: float, z1: float, key: float) -> None:
    """Queue a building from z0 to z1 (drawn at depth key) and its end wall facing the camera."""
    color, height = s.choice(_FACADES), float(s.rng.uniform(7, 30))
    s.later(key, _draw_facade, side, d, z0, z1, height, color)
    if z0 > 1.5:  # the end wall facing the camera, seen where the street front steps back or a street crosses
        pid = s.part(_BUILDING, np.multiply(color, 0.9), z0, jitter=0.03)
        s.later(z0, Scene.front, pid, side * d, side * (d + s.rng.uniform(8, 20)), 0.0, height, z0)


def _tree(s: Scene, x: float, z: float, key: float | None = None) -> None:
    """Queue a tree (trunk and a few crown discs) at (x, z), drawn at depth `key` (default z)."""
    rng = s.rng
    trunk_h, r = rng.uniform(1.8, 3.5), rng.uniform(1.3, 2.8)
    s.later(key or z, Scene.front, s.part(_VEG, (0.33, 0.25, 0.17), z), x - 0.14, x + 0.14, 0.0, trunk_h + r, z)
    for _ in range(int(rng.integers(4, 8))):
        pid = s.part(_VEG, (0.2, 0.4, 0.12), z, jitter=0.2)
        cx, cy = x + rng.normal(0, r * 0.45), trunk_h + r * rng.uniform(0.6, 1.3)
        s.later(key or z, Scene.disc, pid, cx, cy, z, r * rng.uniform(0.5, 0.85))


def roadside(s: Scene, st: Street, side: int) -> None:
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
                s.ground(
                    s.part(
                        _TERRAIN if rng.random() < 0.5 else _SIDEWALK,
                        (0.45, 0.5, 0.3),
                        0,
                        jitter=0.15,
                        facing=FACE_UP,
                        kind=1,
                    ),
                    side * line,
                    side * (line + setback),
                    z,
                    z1,
                )
            _building(s, side, line + setback, z, z1, z1)
        elif kind == 1:
            s.ground(
                s.part(_TERRAIN, (0.36, 0.5, 0.2), 0, jitter=0.1, facing=FACE_UP, kind=1),
                side * line,
                side * (line + 40),
                z,
                z1,
            )
            for _ in range(int(rng.integers(1, 5))):
                _tree(s, side * (line + rng.uniform(2, 14)), rng.uniform(z, z1))
            if rng.random() < 0.6:
                _building(s, side, line + rng.uniform(20, 40), z, z1, z1 + 0.5)
        else:
            d, height = line + 0.15, rng.uniform(1.2, 3.0) if kind == 2 else rng.uniform(1.0, 2.0)
            if kind == 2:
                color = s.choice(((0.66, 0.64, 0.58), (0.55, 0.52, 0.5), (0.7, 0.6, 0.5)))
                s.later(z1, Scene.side, s.part(_WALL, color, d, facing=face, kind=2), side * d, 0, height, z, z1)
                s.later(
                    z1,
                    Scene.side,
                    s.part(_WALL, np.multiply(color, 0.8), d, facing=face, kind=2),
                    side * d,
                    height - 0.15,
                    height,
                    z,
                    z1,
                )
            else:
                color = s.choice(((0.38, 0.42, 0.38), (0.5, 0.38, 0.25), (0.6, 0.6, 0.62)))
                s.later(z1, Scene.side, s.part(_FENCE, color, d, facing=face, kind=2), side * d, 0, height, z, z1)
                post = s.part(_FENCE, np.multiply(color, 0.6), d, facing=face, kind=2)
                for zp in np.arange(z, z1, 2.5):
                    s.later(z1, Scene.side, post, side * d, 0, height + 0.1, zp, zp + 0.12)
            if rng.random() < 0.6:
                _building(s, side, line + rng.uniform(3, 10), z, z1, z1 + 0.5)
            else:
                for _ in range(int(rng.integers(2, 5))):
                    _tree(s, side * (line + rng.uniform(1.5, 8)), rng.uniform(z, z1), z1 + 0.5)
        z = z1


def _draw_traffic_light(s: Scene, x: float, y: float, z: float) -> None:
    """A signal head with its box bottom at height y: a dark box and three lamps, one of them lit."""
    s.front(s.part(_TLIGHT, (0.12, 0.12, 0.1), z), x - 0.18, x + 0.18, y, y + 0.95, z)
    lit = int(s.rng.integers(3))
    for k in range(3):
        on = k == lit
        color = _SIGNAL[k] if on else (0.16, 0.13, 0.1)
        pid = s.part(_TLIGHT, color, z, jitter=0.0, light=LIGHT_SIGNAL if on else LIGHT_NONE)
        s.disc(pid, x, y + 0.8 - 0.32 * k, z, 0.1)


def _draw_pole(s: Scene, x: float, z: float, top: float, width: float) -> None:
    """A grey pole from the ground up to `top` (metres)."""
    s.front(s.part(_POLE, (0.42, 0.44, 0.46), z), x - width / 2, x + width / 2, 0.0, top, z)


def _draw_street_light(s: Scene, x: float, z: float, side: int) -> None:
    """A pole with an arm reaching over the road and a lamp (which glows at night) at its tip."""
    top = s.rng.uniform(6.5, 9.0)
    _draw_pole(s, x, z, top, 0.18)
    tip = x - side * 1.5
    s.stroke(s.part(_POLE, (0.42, 0.44, 0.46), z), (x, top), (tip, top + 0.25), z, 0.1)
    s.front(s.part(_POLE, (0.85, 0.85, 0.8), z, light=LIGHT_LAMP), tip - 0.3, tip + 0.3, top, top + 0.2, z)


def _draw_sign(s: Scene, x: float, z: float) -> None:
    """A traffic sign on a thin pole: round, warning triangle, information rectangle or priority diamond."""
    rng = s.rng
    top = rng.uniform(1.9, 2.6)
    _draw_pole(s, x, z, top, 0.08)
    shape, y = int(rng.integers(4)), top + 0.35
    if shape == 0:  # round: red ring, white or blue face
        s.disc(s.part(_SIGN, (0.8, 0.1, 0.1), z), x, y, z, 0.33)
        s.disc(s.part(_SIGN, s.choice(((0.92, 0.92, 0.9), (0.1, 0.3, 0.75))), z), x, y, z, 0.25)
    elif shape == 1:  # warning triangle
        s.flat(s.part(_SIGN, (0.8, 0.1, 0.1), z), [x - 0.4, x + 0.4, x], [y - 0.3, y - 0.3, y + 0.4], z)
        s.flat(s.part(_SIGN, (0.92, 0.92, 0.9), z), [x - 0.27, x + 0.27, x], [y - 0.22, y - 0.22, y + 0.24], z)
    elif shape == 2:  # information rectangle
        s.front(s.part(_SIGN, (0.1, 0.3, 0.72), z), x - 0.32, x + 0.32, y - 0.35, y + 0.35, z)
        s.front(s.part(_SIGN, (0.92, 0.92, 0.9), z), x - 0.12, x + 0.12, y - 0.2, y + 0.2, z)
    else:  # priority diamond
        s.flat(s.part(_SIGN, (0.92, 0.92, 0.9), z), [x - 0.35, x, x + 0.35, x], [y, y - 0.35, y, y + 0.35], z)
        s.flat(s.part(_SIGN, (0.95, 0.75, 0.1), z), [x - 0.22, x, x + 0.22, x], [y, y - 0.22, y, y + 0.22], z)


def furniture(s: Scene, st: Street) -> None:
    """Queue street lights and curb trees on both sides, traffic lights at the corner or crossing, and signs."""
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
            s.later(zl, Scene.front, s.part(_POLE, (0.42, 0.44, 0.46), zl), xa - 0.3, x, 5.45, 5.6, zl)
            s.later(zl, _draw_traffic_light, xa, 4.45, zl)
    for _ in range(int(rng.integers(1, 4))):
        side = -1 if rng.random() < 0.4 else 1
        z = rng.uniform(6, 55)
        s.later(z, _draw_sign, side * (st.edge(side) + rng.uniform(0.3, 1.0)), z)
