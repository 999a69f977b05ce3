"""The style-independent scene (`Layout`) and the small vocabulary every generator module shares.

This is the bottom of the package: it imports no other synth module. The codes here tie the drawing side
(`scene`, `street`, `objects`) to the appearance side (`styles`): a part's light kind says what may glow at night,
its facing code how the sun shades it, and `SKY_DEPTH` is the depth given to the sky.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppar_core.labels import CLASS_NAMES

# trainId of each class name (0-18); the generator only ever draws these, never 255.
TRAIN_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
SKY_DEPTH = 1000.0  # metres given to the sky in the depth map (haze saturates well before)

# Light kinds of layout parts (`Layout.part_lights`); `render` decides which glow and how much.
LIGHT_NONE, LIGHT_WINDOW, LIGHT_HEAD, LIGHT_TAIL, LIGHT_LAMP, LIGHT_SIGNAL = range(6)
# Facing codes of layout parts (`Layout.part_facing`): what the surface faces, for directional sun shading.
FACE_UP, FACE_LEFT, FACE_RIGHT, FACE_CAMERA, FACE_SKY = range(5)

Color = tuple[float, float, float]  # a base colour, RGB in 0-1
GLASS: Color = (0.13, 0.15, 0.19)  # windows of buildings and vehicles alike


@dataclass(frozen=True, eq=False)
class Layout:
    """One procedural street scene, independent of style. P is the number of parts (drawn primitives)."""

    labels: np.ndarray  # (H,W) uint8 trainIds 0-18 (the generator never emits 255)
    parts: np.ndarray  # (H,W) uint16 index into the part tables; part 0 is the sky
    depth: np.ndarray  # (H,W) float32 distance along the view axis in metres; sky = SKY_DEPTH
    part_labels: np.ndarray  # (P,) uint8 trainId of each part
    part_colors: np.ndarray  # (P,3) float32 base RGB in 0-1 (before any style)
    part_lights: np.ndarray  # (P,) uint8 light kind (LIGHT_*): what may glow at night
    part_facing: np.ndarray  # (P,) uint8 facing code (FACE_*): for sun shading
    horizon: float  # image row of the horizon (the sky gradient is measured from it)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))
