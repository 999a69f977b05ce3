"""Pure image functions for overlays and legends (numpy in, numpy out), shared by the CLI and notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ppar_core.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, colorize


def overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image: image (H,W,3) uint8 RGB, labels (H,W) trainIds -> (H,W,3) uint8.

    Ignored pixels (255) keep the image as it is.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colors = colorize(labels).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
    out = np.where((labels == IGNORE_INDEX)[..., None], image.astype(np.float32), blended)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def classes_present(labels: np.ndarray) -> list[int]:
    """Sorted trainIds (0-18) that occur in a label map."""
    counts = np.bincount(labels.ravel(), minlength=256)[:NUM_CLASSES]
    return [int(i) for i in np.flatnonzero(counts)]


def legend_strip(class_ids: Sequence[int], *, width: int, row_height: int = 20) -> np.ndarray:
    """A legend image (h,width,3) uint8: a colour swatch and the name of each class, packed in rows."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
    entries = []
    for cid in class_ids:
        name = CLASS_NAMES[cid]
        (tw, _), _ = cv2.getTextSize(name, font, scale, thickness)
        entries.append((cid, name, row_height + 6 + tw + 14))
    rows: list[list[tuple[int, str, int]]] = [[]]
    used = 0
    for entry in entries:
        if rows[-1] and used + entry[2] > width:
            rows.append([])
            used = 0
        rows[-1].append(entry)
        used += entry[2]
    strip = np.full((row_height * max(1, len(rows)), width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        x, y0 = 4, r * row_height
        for cid, name, w in row:
            color = tuple(int(c) for c in colorize(np.array([[cid]], dtype=np.uint8))[0, 0])
            cv2.rectangle(strip, (x, y0 + 3), (x + row_height - 6, y0 + row_height - 3), color, thickness=-1)
            cv2.putText(
                strip, name, (x + row_height, y0 + row_height - 6), font, scale, (0, 0, 0), thickness, cv2.LINE_AA
            )
            x += w
    return strip


def overlay_with_legend(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """`overlay` with a legend strip of the classes present appended below: (H+h,W,3) uint8."""
    blended = overlay(image, labels, alpha=alpha)
    strip = legend_strip(classes_present(labels), width=image.shape[1])
    return np.concatenate([blended, strip], axis=0)
