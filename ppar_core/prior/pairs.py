"""The image-text pairs the embedded CLIP prior is pretrained on: a deterministic stream of synthetic batches.

A pool of `pool_size` rendered scenes (a layout drawn by the generator, rendered in a style from the broad random
distribution `sample_style`) is kept in memory; before every step a few slots are re-drawn, so the prior sees
`pool_size + steps * refresh_per_step` different scenes in all. Each step's batch takes random crops of pool scenes
(random window and horizontal flip, captioned from the crop's own labels: classes present, rough positions, counts,
time of day, weather) and square region crops with one main class each ("a photo of a bus.").

Determinism: the content of pool slot s after n refreshes is a pure function of (seed, s, n), and a step's crops and
captions of (seed, step). So the batch of step t depends only on the seed and t: a run resumed at step t sees
exactly the batches the uninterrupted run saw, without any data position to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ppar_core.data.synth import generate_layout, render
from ppar_core.data.synth.captions import region_caption, sample_regions, scene_caption
from ppar_core.data.synth.random_styles import sample_style
from ppar_core.data.synth.styles import Style
from ppar_core.labels import NUM_CLASSES

# Seed-stream keys, so that the pool, the step batches and the held-out check scenes never share random numbers.
_POOL_KEY, _STEP_KEY, _HELDOUT_KEY = 0x5EED01, 0x5EED02, 0x5EED03


@dataclass(frozen=True)
class PairsConfig:
    """What the pair stream draws. Sizes are (height, width) in pixels."""

    render_size: tuple[int, int] = (256, 512)  # scenes are drawn at the demo's image size (same object scale)
    scene_size: tuple[int, int] = (128, 256)  # each scene crop is resized to this before the image tower
    scene_scale: tuple[float, float] = (0.5, 1.0)  # crop window side as a fraction of the rendered scene's
    region_size: int = 48  # region crops are resized to region_size x region_size
    region_side: tuple[int, int] = (24, 96)  # region crop side in rendered pixels (log-uniform)
    region_min_fraction: float = 0.5  # a region's main class covers at least this share of it
    pool_size: int = 512  # rendered scenes kept in memory (about 0.5 MB each at 256x512)
    refresh_per_step: int = 2  # pool slots re-drawn before every step
    scenes_per_step: int = 32  # scene crops per step (one contrastive batch)
    regions_per_step: int = 16  # region crops per step (split into batches of distinct classes)
    rois_per_scene: int = 16  # boxes of whole patch tokens per scene crop, captioned with their main class
    roi_side: tuple[int, int] = (16, 48)  # box side in scene-crop pixels (snapped to the patch grid)
    patch_size: int = 16  # the image tower's patch size (boxes are blocks of whole patch tokens)


@dataclass
class PairBatch:
    """One step's pairs. Images are uint8 RGB, channels first, ready for `ppar_core.normalize.normalize`."""

    scenes: np.ndarray  # (S, 3, h, w) uint8
    scene_captions: list[str]  # S captions
    regions: np.ndarray  # (R, 3, r, r) uint8
    region_captions: list[str]  # R captions
    region_classes: np.ndarray  # (R,) int64 trainId of each region's main class
    rois: np.ndarray  # (N, 5) int64: scene index, then token rows y0:y1 and columns x0:x1 of a box in that scene
    roi_captions: list[str]  # N captions
    roi_classes: np.ndarray  # (N,) int64 trainId of each box's main class


@dataclass
class Scene:
    """One rendered scene of the pool: image (H,W,3) uint8 RGB, labels (H,W) uint8 trainIds, and its style."""

    image: np.ndarray
    labels: np.ndarray
    style: Style


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def draw_scene(seed: int, key: int, index: int, version: int, size: tuple[int, int]) -> Scene:
    """Scene `index` (`version`) of stream `key`: a layout and a random style, each from its own seed stream."""
    layout = generate_layout(_rng(seed, key, index, version, 0), size)
    style_rng = _rng(seed, key, index, version, 1)
    style = sample_style(style_rng)
    return Scene(image=render(layout, style, style_rng), labels=layout.labels, style=style)


def heldout_scenes(seed: int, num: int, size: tuple[int, int]) -> list[Scene]:
    """`num` scenes from a stream pretraining never draws from (for the retrieval check)."""
    return [draw_scene(seed, _HELDOUT_KEY, i, 0, size) for i in range(num)]


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    shrink = image.shape[0] * image.shape[1] > height * width
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class PairStream:
    """The deterministic stream of pretraining batches: `batch(step)` for steps 0, 1, 2, ... in order.

    `start(step)` (re)builds the pool as it is before `step`, so a resumed run continues the same stream. Calls to
    `batch` must come in increasing order of step, starting at the step given to `start`.
    """

    def __init__(self, cfg: PairsConfig, *, seed: int) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self.pool: list[Scene] = []
        self._next_step = 0

    def _version(self, slot: int, step: int) -> int:
        """How many times pool slot `slot` has been re-drawn before step `step`."""
        done = step * self.cfg.refresh_per_step  # refreshes made in steps 0 .. step-1
        return 0 if done <= slot else (done - slot - 1) // self.cfg.pool_size + 1

    def start(self, step: int = 0) -> None:
        """Build the pool exactly as the stream has it before `step`."""
        size = self.cfg.render_size
        self.pool = [
            draw_scene(self.seed, _POOL_KEY, s, self._version(s, step), size) for s in range(self.cfg.pool_size)
        ]
        self._next_step = step

    def batch(self, step: int) -> PairBatch:
        """The pairs of step `step` (after this step's pool refresh)."""
        if step != self._next_step:
            raise ValueError(f"PairStream.batch({step}) called out of order (expected step {self._next_step})")
        cfg = self.cfg
        for n in range(step * cfg.refresh_per_step, (step + 1) * cfg.refresh_per_step):
            slot = n % cfg.pool_size
            self.pool[slot] = draw_scene(self.seed, _POOL_KEY, slot, n // cfg.pool_size + 1, cfg.render_size)
        self._next_step = step + 1
        rng = _rng(self.seed, _STEP_KEY, step)
        # One region caption per class and step, shared by every region of that class in the step: captions still
        # vary over steps (templates, synonyms), and the text tower encodes 19 region captions per step, not 300.
        class_captions = [region_caption(k, rng) for k in range(NUM_CLASSES)]
        scenes, scene_captions = [], []
        rois, roi_captions, roi_classes = [], [], []
        grid = cfg.patch_size
        for number, index in enumerate(rng.integers(0, cfg.pool_size, size=cfg.scenes_per_step)):
            scene = self.pool[int(index)]
            image, labels, caption = self._scene_crop(scene, rng)
            scenes.append(image)
            scene_captions.append(caption)
            for box in sample_regions(
                labels, rng, num=cfg.rois_per_scene, min_side=cfg.roi_side[0], max_side=cfg.roi_side[1],
                min_fraction=cfg.region_min_fraction, grid=grid,
            ):  # fmt: skip
                rois.append((number, box.y0 // grid, box.x0 // grid, box.y1 // grid, box.x1 // grid))
                roi_captions.append(class_captions[box.class_id])
                roi_classes.append(box.class_id)
        regions, region_captions, classes = [], [], []
        picks = rng.integers(0, cfg.pool_size, size=cfg.regions_per_step)
        for index, count in zip(*np.unique(picks, return_counts=True), strict=True):
            scene = self.pool[int(index)]
            for region in sample_regions(
                scene.labels,
                rng,
                num=int(count),
                min_side=cfg.region_side[0],
                max_side=cfg.region_side[1],
                min_fraction=cfg.region_min_fraction,
            ):
                crop = scene.image[region.y0 : region.y1, region.x0 : region.x1]
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                regions.append(_resize(np.ascontiguousarray(crop), (cfg.region_size, cfg.region_size)))
                region_captions.append(class_captions[region.class_id])
                classes.append(region.class_id)
        side = cfg.region_size
        return PairBatch(
            scenes=np.stack(scenes).transpose(0, 3, 1, 2).copy(),
            scene_captions=scene_captions,
            regions=(np.stack(regions) if regions else np.zeros((0, side, side, 3), np.uint8)).transpose(0, 3, 1, 2),
            region_captions=region_captions,
            region_classes=np.asarray(classes, dtype=np.int64),
            rois=np.asarray(rois, dtype=np.int64).reshape(-1, 5),
            roi_captions=roi_captions,
            roi_classes=np.asarray(roi_classes, dtype=np.int64),
        )

    def _scene_crop(self, scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """A random window of a scene (same aspect as the render), flipped half the time, resized to `scene_size`
        -> (image (h,w,3) uint8, its labels resized by nearest neighbour (h,w) uint8, its caption)."""
        height, width = scene.labels.shape
        frac = rng.uniform(*self.cfg.scene_scale)
        crop_h, crop_w = max(16, int(round(height * frac))), max(16, int(round(width * frac)))
        y0, x0 = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
        image = scene.image[y0 : y0 + crop_h, x0 : x0 + crop_w]
        labels = scene.labels[y0 : y0 + crop_h, x0 : x0 + crop_w]
        if rng.random() < 0.5:  # before the caption, so that "on the left" stays true
            image, labels = image[:, ::-1], labels[:, ::-1]
        caption = scene_caption(np.ascontiguousarray(labels), scene.style, rng)
        height, width = self.cfg.scene_size
        small = cv2.resize(np.ascontiguousarray(labels), (width, height), interpolation=cv2.INTER_NEAREST)
        return _resize(np.ascontiguousarray(image), self.cfg.scene_size), small, caption


def distinct_class_groups(classes: np.ndarray, *, max_groups: int | None = None) -> list[np.ndarray]:
    """Split region indices into groups in which no class repeats -> a list of (n_g,) int64 index arrays.

    A contrastive batch must not hold two pairs that mean the same thing (two "a photo of a car." crops would be
    each other's negatives), so each group holds at most one region per class. Round robin: group g takes the g-th
    region of every class that has more than g, so the first groups hold every class present and later ones only
    the frequent classes. `max_groups` keeps the first groups only (the rest, mostly road and sky, add little);
    groups of one are dropped (a contrastive loss needs a negative).
    """
    by_class: dict[int, list[int]] = {}
    for index, class_id in enumerate(classes.tolist()):
        by_class.setdefault(int(class_id), []).append(index)
    depth = max((len(v) for v in by_class.values()), default=0)
    if max_groups is not None:
        depth = min(depth, max_groups)
    groups = [[v[g] for v in by_class.values() if len(v) > g] for g in range(depth)]
    return [np.asarray(sorted(g), dtype=np.int64) for g in groups if len(g) > 1]
