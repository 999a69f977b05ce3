"""Pictures of the reliability analysis: per-image weight heat maps (OpenCV, always available) and per-class plots
(matplotlib, the optional extra `ppar[plots]`).

matplotlib is imported inside `write_class_plots` only, and drawn through its Agg canvas on a bare `Figure`: no
pyplot, so no global backend is switched in the caller's process (a notebook keeps its own).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ppar_core.analysis.report import WeightReport
from ppar_core.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE, colorize
from ppar_core.reliability import hist_edges
from ppar_core.visualize import classes_present, legend_strip

_GAP = 4  # white pixels between the heat map and the label colours
_BAR_HEIGHT = 22
_OUTLINE = (0, 255, 255)  # cyan: readable on every colour of the inferno map
_HEAT_ALPHA = 0.65
_MIN_WIDTH = 320  # narrower images are enlarged for the overlay
LOWEST_FRACTION = 0.1  # the overlays outline the lowest-weight decile of each image


def weight_heatmap(image: np.ndarray, weights: np.ndarray, label: np.ndarray, *, w_max: float) -> np.ndarray:
    """The weight map as a colour map over the image, lowest-weight decile outlined -> (H,W,3) uint8 RGB.

    image (H,W,3) uint8 RGB; weights (H,W) float; label (H,W) uint8 (255: ignored, shown as the dimmed image).
    The colour scale is fixed to [0, w_max], so heat maps of different images compare directly.
    """
    valid = label != IGNORE_INDEX
    level = np.clip(weights / w_max * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(level, cv2.COLORMAP_INFERNO)[..., ::-1].astype(np.float32)
    blended = (1.0 - _HEAT_ALPHA) * image.astype(np.float32) + _HEAT_ALPHA * heat
    dimmed = 0.4 * image.astype(np.float32)
    out = np.clip(np.where(valid[..., None], blended, dimmed) + 0.5, 0, 255).astype(np.uint8)
    if valid.any():
        threshold = np.quantile(weights[valid], LOWEST_FRACTION)
        lowest = (valid & (weights <= threshold)).astype(np.uint8)
        contours, _ = cv2.findContours(lowest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = np.ascontiguousarray(out)
        cv2.drawContours(out, contours, -1, _OUTLINE, thickness=1)
    return out


def colour_bar(width: int, *, w_max: float) -> np.ndarray:
    """A (22,width,3) uint8 scale of the heat map's colours from w = 0 to w_max, with tick labels."""
    ramp = np.linspace(0, 255, width).astype(np.uint8)[None, :].repeat(_BAR_HEIGHT, axis=0)
    bar = np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO)[..., ::-1])
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    ticks = [(0.0, "w=0"), (1.0, "w=1"), (w_max, f"w={w_max:g}")]
    for value, text in ticks:
        if value > w_max:
            continue
        (tw, _), _ = cv2.getTextSize(text, font, scale, 1)
        x = int(round(value / w_max * (width - 1)))
        x = min(max(x - tw // 2, 1), width - tw - 1)
        # Dark outline under light text: readable on both ends of the colour map (black and pale yellow).
        cv2.putText(bar, text, (x, _BAR_HEIGHT - 7), font, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bar, text, (x, _BAR_HEIGHT - 7), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return bar


def weight_overlay(image: np.ndarray, label: np.ndarray, weights: np.ndarray, *, w_max: float) -> np.ndarray:
    """The per-image figure: [heat map | label colours], a colour bar and the legend of the classes present.

    image (H,W,3) uint8 RGB, label (H,W) uint8 trainIds, weights (H,W) float -> (f*H+h, 2*f*W+4, 3) uint8 RGB,
    f = 1 unless W < 320 (then the smallest integer with f*W >= 320).
    """
    if image.shape[:2] != label.shape or weights.shape != label.shape:
        raise ValueError(f"image {image.shape[:2]}, label {label.shape} and weights {weights.shape} differ in size")
    # Small images (e.g. 64x128 synthetic ones) are enlarged by an integer factor, nearest neighbour, so the
    # outlines, colour bar and legend stay legible; pixels are only repeated, never resampled.
    factor = max(1, -(-_MIN_WIDTH // label.shape[1]))
    if factor > 1:
        image, label, weights = (
            np.repeat(np.repeat(a, factor, axis=0), factor, axis=1) for a in (image, label, weights)
        )
    height, width = label.shape
    gap = np.full((height, _GAP, 3), 255, dtype=np.uint8)
    top = np.concatenate([weight_heatmap(image, weights, label, w_max=w_max), gap, colorize(label)], axis=1)
    full_width = top.shape[1]
    note = np.full((16, full_width, 3), 255, dtype=np.uint8)
    cv2.putText(note, "cyan: lowest 10% weights", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    legend = legend_strip(classes_present(label), width=full_width)
    return np.concatenate([top, colour_bar(full_width, w_max=w_max), note, legend], axis=0)


def write_weight_overlay(
    path: Path, image: np.ndarray, label: np.ndarray, weights: np.ndarray, *, w_max: float
) -> Path:
    """Write `weight_overlay(...)` as a PNG at `path` (folders created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = weight_overlay(image, label, weights, w_max=w_max)
    if not cv2.imwrite(str(path), np.ascontiguousarray(picture[..., ::-1])):
        raise OSError(f"could not write {path}")
    return path


def _colour(train_id: int) -> tuple[float, float, float]:
    r, g, b = (int(c) for c in PALETTE[train_id])
    return r / 255.0, g / 255.0, b / 255.0


def write_class_plots(report: WeightReport, out: Path) -> list[Path]:
    """Write `class_histograms.png` (a grid, one weight histogram per class) and `class_mean_weights.png` (mean
    weight per class, bars in the class colours) into `out`. Raises ImportError without matplotlib.

    A report with no recorded pixel (a run without reweighting, read from its checkpoint) gets no plots: [].
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if report.total_pixels == 0:
        return []
    out.mkdir(parents=True, exist_ok=True)
    edges = hist_edges(report.w_max).numpy()
    what = "applied in training" if report.source == "checkpoint" else f"computed on {len(report.images)} images"
    title = f"{report.checkpoint.name}: reliability weights ({report.mode}) {what}"

    cols = 5
    rows = -(-len(CLASS_NAMES) // cols)
    # Fixed margins instead of a layout engine: constrained layout costs seconds on a 20-axes grid.
    fig = Figure(figsize=(3.0 * cols, 2.2 * rows))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.05, top=0.92, wspace=0.3, hspace=0.55)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(CLASS_NAMES):
            ax.set_axis_off()
            continue
        entry = report.classes[CLASS_NAMES[k]]
        counts = np.asarray(entry["hist"], dtype=np.float64)
        # One filled step patch per class, not 20 bars: drawing time matters on 2-core machines.
        ax.stairs(counts, edges, fill=True, color=_colour(k))
        ax.stairs(counts, edges, color="black", lw=0.5)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(np.arange(0, math.floor(report.w_max) + 1))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        mean = entry["mean"]
        ax.set_title(f"{CLASS_NAMES[k]}: " + (f"mean {mean:.2f}" if mean is not None else "no pixels"), fontsize=9)
        ax.set_xlim(0, report.w_max)
        ax.tick_params(labelsize=7)
    fig.suptitle(title + " (pixels per weight bin)", fontsize=10)
    hist_path = out / "class_histograms.png"
    fig.savefig(hist_path, dpi=80)

    seen = [(k, report.classes[name]["mean"]) for k, name in enumerate(CLASS_NAMES)]
    seen = sorted(((k, m) for k, m in seen if m is not None), key=lambda item: item[1])
    fig = Figure(figsize=(7, 0.3 * max(len(seen), 4) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.barh(
        [CLASS_NAMES[k] for k, _ in seen],
        [m for _, m in seen],
        color=[_colour(k) for k, _ in seen],
        edgecolor="black",
        lw=0.5,
    )
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("mean weight (1 = unchanged, below 1 = discounted)")
    ax.set_title(title, fontsize=9)
    bar_path = out / "class_mean_weights.png"
    fig.savefig(bar_path, dpi=80)
    return [hist_path, bar_path]
