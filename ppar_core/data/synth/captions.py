"""Captions of synthetic scenes, for the image-text pretraining of the embedded CLIP prior.

Web captions name what a photo shows, roughly where, how many, and when; they never come with pixel labels. The
captions here are made the same way from what the generator knows about a scene: the classes present in its label
map (a class is named only if it has pixels there), their rough horizontal position, counts of the countable ones
(connected regions of their pixels), and words for the time of day, the weather and the camera, read from the
`Style` the image was rendered in. `sample_regions` picks crops whose main class is a chosen one, captioned by
`region_caption` ("a photo of a bus."), so that the text tower learns each class name on its own.

Everything is a pure function of its inputs and the `rng` it is given, so a pretraining run is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ppar_core.data.synth.styles import Style
from ppar_core.labels import CLASS_NAMES, CLASS_WORDS, NUM_CLASSES

_PLURALS = {"person": "people", "bus": "buses", "vegetation": "vegetation", "terrain": "terrain", "sky": "sky"}
_MASS = {"road", "sky", "vegetation", "terrain", "grass"}  # words used without an article or a count
# Classes a caption counts ("two cars"); the others are named without a number.
_COUNTED = frozenset(CLASS_NAMES.index(n) for n in ("pole", "traffic light", "traffic sign", *CLASS_NAMES[11:]))
_NUMBERS = {1: "one", 2: "two", 3: "three"}

_SCENE_OPENINGS = ("a photo", "a dashcam photo", "a picture", "an image", "a street photo", "a snapshot")
_SCENE_SUBJECTS = ("a city street", "a street", "an urban street", "a street scene", "a town street")
_REGION_TEMPLATES = (
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a cropped photo of a {}.",
    "a photo of a {} in a street scene.", "a photo of a {} in traffic.", "a dashcam photo of a {}.",
    "a photo of a {} in the city.", "a photo of a small {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a {}.", "the {}.", "a {} in the street.",
)  # fmt: skip


@dataclass(frozen=True)
class Region:
    """A crop of a scene and the class it shows most: rows y0:y1, columns x0:x1 of the label map."""

    y0: int
    x0: int
    y1: int
    x1: int
    class_id: int  # trainId of the crop's main class (the most frequent one in the crop)
    fraction: float  # the share of the crop's pixels that class covers, 0-1


def style_words(style: Style) -> dict[str, str]:
    """Words for how a style looks: {"time": ..., "weather": ..., "camera": ...}, each possibly "".

    time: "at night", "at dusk", "on a sunny day", "on an overcast day" or "during the day" (from ambient light and
    sun); weather: "in thick fog", "in fog", "in haze" or "" (from the haze density); camera: comma-joined
    adjectives ("blurry", "grainy", "low quality", "colourful", "muted") or "".
    """
    if style.ambient < 0.2:
        time = "at night"
    elif style.ambient < 0.45:
        time = "at dusk"
    elif style.sun >= 0.5:
        time = "on a sunny day"
    elif style.sun < 0.1:
        time = "on an overcast day"
    else:
        time = "during the day"
    if style.haze_density >= 0.03:
        weather = "in thick fog"
    elif style.haze_density >= 0.012:
        weather = "in fog"
    elif style.haze_density >= 0.006:
        weather = "in haze"
    else:
        weather = ""
    camera = []
    if style.blur_sigma >= 1.0:
        camera.append("blurry")
    if style.noise >= 0.025:
        camera.append("grainy")
    if style.jpeg_quality is not None and style.jpeg_quality <= 50:
        camera.append("low quality")
    if style.saturation >= 1.25:
        camera.append("colourful")
    elif style.saturation <= 0.55:
        camera.append("muted")
    return {"time": time, "weather": weather, "camera": ", ".join(camera)}


def present_classes(labels: np.ndarray, *, min_fraction: float = 0.002) -> list[int]:
    """trainIds with at least `min_fraction` of the pixels of `labels` (H,W) uint8 (and at least one pixel)."""
    counts = np.bincount(labels.reshape(-1), minlength=256)[:NUM_CLASSES]
    need = max(1, int(np.ceil(min_fraction * labels.size)))
    return [k for k in range(NUM_CLASSES) if counts[k] >= need]


def _plural(word: str) -> str:
    if word in _PLURALS:
        return _PLURALS[word]
    return word + ("es" if word.endswith("s") else "s")


def _count(mask: np.ndarray, min_pixels: int) -> int:
    """Connected regions of a boolean mask with at least `min_pixels` pixels (at least 1 if the mask is non-empty)."""
    num, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return max(1, int((stats[1:num, cv2.CC_STAT_AREA] >= min_pixels).sum()))


def _where(mask: np.ndarray) -> str:
    """Rough horizontal position of a mask's pixels: "on the left", "on the right", "on both sides", "ahead"."""
    width = mask.shape[1]
    columns = np.flatnonzero(mask.any(axis=0))
    left = (columns < width * 0.4).mean()
    right = (columns >= width * 0.6).mean()
    if left > 0.25 and right > 0.25:
        return "on both sides"
    if left > 0.6:
        return "on the left"
    if right > 0.6:
        return "on the right"
    return "ahead"


def _phrase(class_id: int, labels: np.ndarray, rng: np.random.Generator, *, with_position: bool) -> str:
    """One caption phrase for a present class: "two cars on the left", "the road", "trees on both sides"."""
    word = str(rng.choice(CLASS_WORDS[CLASS_NAMES[class_id]]))
    mask = labels == class_id
    if class_id in _COUNTED:
        number = _count(mask, min_pixels=max(4, labels.size // 4000))
        if number == 1:
            text = ("an " if word[0] in "aeiou" else "a ") + word
        else:
            amount = _NUMBERS.get(number, "several" if number <= 6 else "many")
            text = f"{amount} {_plural(word)}"
    elif word in _MASS:
        text = word if word != "road" and word != "sky" else f"the {word}"
    else:
        text = _plural(word) if rng.random() < 0.6 else ("an " if word[0] in "aeiou" else "a ") + word
    if with_position and word != "sky":
        text += " " + _where(mask)
    return text


def scene_caption(
    labels: np.ndarray,
    style: Style,
    rng: np.random.Generator,
    *,
    max_classes: int = 6,
    min_fraction: float = 0.002,
) -> str:
    """A caption for a scene with label map `labels` (H,W) uint8 trainIds, rendered in `style`.

    Names up to `max_classes` of the classes present (`present_classes`), in random order, with counts for the
    countable ones and, for about half, a rough position; then the time of day, weather and camera words, e.g.
    "a grainy dashcam photo of a city street at night in fog, with two cars on the left, the road and a bus.".
    """
    present = present_classes(labels, min_fraction=min_fraction)
    chosen = [int(k) for k in rng.permutation(present)[: max(1, max_classes)]] if present else []
    phrases = [_phrase(k, labels, rng, with_position=rng.random() < 0.5) for k in chosen]
    words = style_words(style)
    opening = str(rng.choice(_SCENE_OPENINGS))
    if words["camera"]:
        article, rest = opening.split(" ", 1)
        opening = ("an " if words["camera"][0] in "aeiou" else "a ") + f"{words['camera']} {rest}"
        del article
    setting = " ".join(w for w in (str(rng.choice(_SCENE_SUBJECTS)), words["time"], words["weather"]) if w)
    if not phrases:
        return f"{opening} of {setting}."
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{opening} of {setting}, with {listed}."


def region_caption(class_id: int, rng: np.random.Generator) -> str:
    """A caption for a crop whose main class is `class_id`: "a photo of a bus.", one of a few templates and the
    class's words (synonyms included)."""
    word = str(rng.choice(CLASS_WORDS[CLASS_NAMES[class_id]]))
    template = str(rng.choice(_REGION_TEMPLATES))
    if word in _MASS:  # "a photo of grass.", not "a photo of a grass."
        template = template.replace("a {}", "{}")
    return template.format(word)


def sample_regions(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    num: int,
    min_side: int = 24,
    max_side: int = 96,
    min_fraction: float = 0.4,
    tries: int = 8,
    grid: int = 1,
) -> list[Region]:
    """Up to `num` square crops of `labels` (H,W) uint8, each with a clear main class.

    Each crop first draws its class uniformly among the present classes (so small classes are as likely as the
    road), then a pixel of that class as its centre and a side log-uniform in [min_side, max_side] (clipped to the
    image). It is kept when the class is the crop's most frequent one and covers at least `min_fraction` of it;
    otherwise it is drawn again, smaller, up to `tries` times. Returns fewer than `num` crops when some fail.
    `grid` > 1 snaps every crop's corners and side to multiples of `grid` (a ViT's patch grid, so that a crop is a
    block of whole patch tokens).
    """
    height, width = labels.shape
    present = present_classes(labels)
    regions: list[Region] = []
    if not present:
        return regions
    flat = labels.reshape(-1)
    for _ in range(num):
        class_id = int(rng.choice(present))
        pixels = np.flatnonzero(flat == class_id)
        side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
        for _ in range(tries):
            s = int(min(max(grid, round(side / grid) * grid), height // grid * grid, width // grid * grid))
            centre = int(pixels[rng.integers(len(pixels))])
            cy, cx = divmod(centre, width)
            y0 = int(np.clip(round((cy - s / 2) / grid) * grid, 0, (height - s) // grid * grid))
            x0 = int(np.clip(round((cx - s / 2) / grid) * grid, 0, (width - s) // grid * grid))
            counts = np.bincount(labels[y0 : y0 + s, x0 : x0 + s].reshape(-1), minlength=256)[:NUM_CLASSES]
            fraction = counts[class_id] / float(s * s)
            if int(counts.argmax()) == class_id and fraction >= min_fraction:
                regions.append(Region(y0, x0, y0 + s, x0 + s, class_id, float(fraction)))
                break
            side = max(float(min_side) * 0.5, side * 0.7)
    return regions
