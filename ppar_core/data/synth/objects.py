"""The moving and movable things of a synthetic scene: vehicles, trams, people and two-wheelers.

`traffic` places them in a `Scene` over a `Street` (from `scene` and `street`): cars, trucks, buses and riders in the
lanes, parked cars along the curbs, a tram on its rails, pedestrians on the sidewalks and the zebra crossing, and
parked bicycles and motorcycles. Each is queued with `Scene.later`, so it is drawn far to near with the rest.
"""

from __future__ import annotations

import cv2
import numpy as np

from ppar_core.data.synth.layout import GLASS, LIGHT_HEAD, LIGHT_TAIL, LIGHT_WINDOW, TRAIN_ID, Color
from ppar_core.data.synth.scene import Scene
from ppar_core.data.synth.street import Street

_PERSON = TRAIN_ID["person"]
_RIDER = TRAIN_ID["rider"]
_CAR = TRAIN_ID["car"]
_TRUCK = TRAIN_ID["truck"]
_BUS = TRAIN_ID["bus"]
_TRAIN = TRAIN_ID["train"]
_MOTO = TRAIN_ID["motorcycle"]
_BIKE = TRAIN_ID["bicycle"]
_DARK = (0.06, 0.06, 0.07)
# Base colours (RGB 0-1) by material; one is drawn per object and jittered, so each class keeps a typical look.
_CARS: tuple[Color, ...] = ((0.85, 0.85, 0.85), (0.08, 0.08, 0.09), (0.6, 0.62, 0.64), (0.6, 0.08, 0.07),
                            (0.1, 0.2, 0.5), (0.3, 0.31, 0.33), (0.55, 0.5, 0.4), (0.15, 0.35, 0.25))  # fmt: skip
_BUSES: tuple[Color, ...] = ((0.8, 0.15, 0.1), (0.95, 0.75, 0.1), (0.15, 0.35, 0.7), (0.85, 0.85, 0.82))
_TRAMS: tuple[Color, ...] = ((0.88, 0.88, 0.84), (0.7, 0.1, 0.1), (0.9, 0.75, 0.2), (0.2, 0.45, 0.6))
_CLOTHES: tuple[Color, ...] = ((0.1, 0.1, 0.12), (0.2, 0.25, 0.45), (0.55, 0.1, 0.1), (0.8, 0.8, 0.78),
                               (0.35, 0.4, 0.3), (0.6, 0.5, 0.35), (0.9, 0.6, 0.1), (0.3, 0.3, 0.32))  # fmt: skip
_SKINS: tuple[Color, ...] = ((0.9, 0.72, 0.6), (0.7, 0.5, 0.38), (0.45, 0.3, 0.22))


def _draw_person(s: Scene, x: float, z: float) -> None:
    """A standing or walking person, about 1.55-1.95 m tall, as a flat figure at depth z."""
    rng = s.rng
    hp = rng.uniform(1.55, 1.95)
    top, pants, skin = s.choice(_CLOTHES), s.choice(_CLOTHES), s.choice(_SKINS)
    stride = rng.uniform(0.0, 0.25) * hp
    legs = s.part(_PERSON, np.multiply(pants, 0.8), z)
    for sgn in (-1, 1):
        s.stroke(legs, (x + sgn * 0.055 * hp, 0.5 * hp), (x + sgn * stride / 2, 0.02 * hp), z, 0.08 * hp)
        s.stroke(
            s.part(_PERSON, top, z),
            (x + sgn * 0.14 * hp, 0.8 * hp),
            (x + sgn * (0.17 * hp + rng.uniform(-0.05, 0.08)), 0.47 * hp),
            z,
            0.055 * hp,
        )
    xs = [x - 0.14 * hp, x + 0.14 * hp, x + 0.11 * hp, x - 0.11 * hp]
    s.flat(s.part(_PERSON, top, z), xs, [0.83 * hp, 0.83 * hp, 0.48 * hp, 0.48 * hp], z)
    s.disc(s.part(_PERSON, skin, z), x, 0.915 * hp, z, 0.062 * hp)
    s.disc(s.part(_PERSON, (0.12, 0.08, 0.05), z), x, 0.945 * hp, z, 0.045 * hp)


def _draw_bike_side(s: Scene, x: float, z: float, direction: int, moto: bool, ridden: bool) -> None:
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
        shape = [
            (-0.7, 0.6),
            (-0.3, 0.45),
            (0.25, 0.4),
            (0.55, 0.7),
            (0.5, 1.0),
            (0.15, 0.95),
            (-0.2, 0.85),
            (-0.75, 0.85),
        ]
        s.flat(body, [p(lx, ly)[0] for lx, ly in shape], [ly for _, ly in shape], z)
        s.stroke(body, p(0.68, 0.32), p(0.5, 1.05), z, 0.07)
        s.disc(s.part(label, (0.9, 0.9, 0.8), z, light=LIGHT_HEAD), *p(0.6, 0.9), z, 0.07)
        seat, hand = (-0.25, 0.95), (0.45, 1.1)
    else:
        tyre, frame = s.part(label, _DARK, z), s.part(label, s.choice(_CARS), z)
        for lx in (-0.52, 0.52):
            s.disc(tyre, *p(lx, 0.34), z, 0.34, ring=0.05)
        joints = [
            ((-0.52, 0.34), (0.0, 0.3)),
            ((0.0, 0.3), (-0.15, 0.88)),
            ((-0.15, 0.88), (0.42, 0.86)),
            ((0.0, 0.3), (0.42, 0.86)),
            ((0.42, 0.86), (0.52, 0.34)),
            ((-0.52, 0.34), (-0.15, 0.88)),
            ((0.42, 0.86), (0.38, 1.02)),
            ((-0.25, 0.92), (-0.05, 0.92)),
        ]
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


def _draw_rider_rear(s: Scene, x: float, z: float, moto: bool) -> None:
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


def _wheels(s: Scene, label: int, x0: float, x1: float, z0: float, z1: float, radius: float) -> None:
    """Tyres under a vehicle: two seen from behind at the near end, two on the visible side."""
    tyre = s.part(label, _DARK, z0, jitter=0.0)
    for xa, xb in ((x0, x0 + 0.28), (x1 - 0.28, x1)):
        s.front(tyre, xa, xb, 0.0, radius, z0 + 0.6)
    if x1 < 0 or x0 > 0:
        xs = x1 if x1 < 0 else x0
        for zc in (z0 + radius + 0.4, z1 - radius - 0.5):
            (ua, v), (ub, _) = s.pt(xs, radius, zc - radius), s.pt(xs, radius, zc + radius)
            axes = (abs(ua - ub) // 2, round(16 * s.f * radius / zc))
            cv2.ellipse(s.parts, ((ua + ub) // 2, v), axes, 0, 0, 360, tyre, -1, cv2.LINE_8, 4)


def _lights(s: Scene, label: int, x0: float, x1: float, y: float, z: float, oncoming: bool) -> None:
    """A pair of headlights (oncoming) or tail lights just in front of the vehicle face at depth z."""
    color, kind = ((0.92, 0.92, 0.85), LIGHT_HEAD) if oncoming else ((0.7, 0.05, 0.05), LIGHT_TAIL)
    pid = s.part(label, color, z, jitter=0.0, light=kind)
    s.front(pid, x0 + 0.06, x0 + 0.36, y, y + 0.14, z - 0.01)
    s.front(pid, x1 - 0.36, x1 - 0.06, y, y + 0.14, z - 0.01)


def _draw_car(s: Scene, xc: float, z0: float, oncoming: bool) -> None:
    """A car centred at xc, its near end at z0: wheels, body, cabin with windows, lights and number plate."""
    rng = s.rng
    length, width, height = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.9), rng.uniform(1.38, 1.6)
    x0, x1, color = xc - width / 2, xc + width / 2, s.choice(_CARS)
    _wheels(s, _CAR, x0, x1, z0, z0 + length, 0.32)
    s.box(color, _CAR, x0, x1, 0.28, 0.95, z0, z0 + length)
    _wheels(s, _CAR, x0 + 0.01, x1 - 0.01, z0 + 0.01, z0 + length, 0.32)  # side tyres over the body side
    cabin0 = z0 + (0.7 if oncoming else 0.9)
    side, back = s.box(color, _CAR, x0 + 0.1, x1 - 0.1, 0.95, height, cabin0, z0 + length - 1.0)
    s.front(s.part(_CAR, GLASS, cabin0), x0 + 0.2, x1 - 0.2, 1.0, height - 0.08, cabin0)
    if side:
        xs = x1 - 0.1 if x1 < 0 else x0 + 0.1
        s.side(s.part(_CAR, GLASS, abs(xs), kind=2), xs, 1.0, height - 0.08, cabin0 + 0.15, z0 + length - 1.15)
    _lights(s, _CAR, x0, x1, 0.66, z0, oncoming)
    s.front(s.part(_CAR, (0.9, 0.9, 0.88), z0), xc - 0.25, xc + 0.25, 0.42, 0.54, z0 - 0.01)


def _draw_truck(s: Scene, xc: float, z0: float, oncoming: bool) -> None:
    """A truck: a cab and a cargo box, the cab nearer the camera when it is oncoming."""
    rng = s.rng
    cargo_len, cargo_h = rng.uniform(6, 9), rng.uniform(3.2, 3.9)
    x0, x1 = xc - 1.25, xc + 1.25
    cab_color = s.choice(_CARS)
    cab = (z0, z0 + 2.2) if oncoming else (z0 + cargo_len + 0.3, z0 + cargo_len + 2.5)
    cargo = (z0 + 2.5, z0 + 2.5 + cargo_len) if oncoming else (z0, z0 + cargo_len)
    boxes = [
        (cab, cab_color, 2.9),
        (cargo, s.choice(((0.85, 0.85, 0.83), (0.6, 0.62, 0.65), (0.2, 0.3, 0.6))), cargo_h),
    ]
    for (za, zb), color, top in sorted(boxes, key=lambda b: -b[0][0]):  # farther box first
        _wheels(s, _TRUCK, x0, x1, za, zb, 0.5)
        s.box(color, _TRUCK, x0, x1, 0.6, top, za, zb)
        _wheels(s, _TRUCK, x0 + 0.01, x1 - 0.01, za + 0.01, zb, 0.5)
    if oncoming:
        s.front(s.part(_TRUCK, GLASS, z0), x0 + 0.15, x1 - 0.15, 1.7, 2.7, z0 - 0.01)
    _lights(s, _TRUCK, x0, x1, 0.8, z0, oncoming)


def _draw_long(s: Scene, label: int, xc: float, z0: float, length: float, oncoming: bool) -> None:
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
            pid = s.part(label, GLASS, abs(xs), light=LIGHT_WINDOW, kind=2)
            s.side(pid, xs, 1.25, 2.5, zw, zw + 1.1)
    if label == _BUS:
        _wheels(s, label, x0 + 0.01, x1 - 0.01, z0 + 0.01, z0 + length, 0.5)
    glass_low = 1.0 if oncoming or label == _TRAIN else 2.0
    s.front(s.part(label, GLASS, z0, light=LIGHT_WINDOW), x0 + 0.15, x1 - 0.15, glass_low, height - 0.3, z0 - 0.01)
    _lights(s, label, x0, x1, 0.6, z0, oncoming)
    if label == _TRAIN:  # pantograph up to the overhead wire
        s.stroke(s.part(label, (0.25, 0.25, 0.27), z0 + 3), (xc - 0.4, height), (xc + 0.3, 5.2), z0 + 3, 0.05)


def traffic(s: Scene, st: Street) -> None:
    """Vehicles in the lanes, parked cars, a tram, riders, pedestrians and parked two-wheelers."""
    rng = s.rng
    tram_span = (0.0, 0.0)
    if st.tram is not None:
        zt, length = rng.uniform(10, 60), rng.uniform(20, 35)
        tram_span = (zt - 3, zt + length + 3)
        s.later(
            zt,
            _draw_long,
            _TRAIN,
            st.lanes[st.tram] + rng.uniform(-0.2, 0.2),
            zt,
            length,
            bool(st.oncoming[st.tram] or rng.random() < 0.3),
        )
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
            s.later(
                z,
                _draw_bike_side,
                rng.uniform(st.xl, st.xr),
                z,
                1 if rng.random() < 0.5 else -1,
                rng.random() < 0.4,
                True,
            )
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
