"""The shape of a reliability analysis: `WeightReport` (what `ppar analyze-weights --json` prints) and its parts.

Plain data: `weights` computes it, `plots` draws it, the CLI renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOTS_HINT = "pip install 'ppar[plots]'"  # how to get matplotlib, which every plot of ppar needs


@dataclass(frozen=True)
class ImageWeights:
    """One analysed image: its file, the mean weight and the share of pixels below 0.5 (labelled pixels only)."""

    file: str
    name: str
    mean: float | None  # None when the image has no labelled pixel
    low_fraction: float
    low_pixels: int
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "mean": self.mean, "low_fraction": self.low_fraction}


@dataclass(frozen=True)
class StepSchedule:
    """How the recorded steps split by weight ramp: warm-up (w = 1 recorded), ramp-in (0 < ramp < 1), full."""

    warmup: int
    ramp: int
    full: int


@dataclass
class WeightReport:
    """The result of one analysis; `to_dict()` is the JSON object of `ppar analyze-weights --json`."""

    source: str  # "checkpoint" or "data"
    sources: list[str]  # the run's training sources (data.source)
    checkpoint: Path
    step: int  # the checkpoint's training step
    method: str  # the run's loss.method
    reweight: str  # the run's loss.reweight
    weights_applied: bool  # False for runs trained without reweighting (their statistics are empty)
    mode: str  # reliability mode of the weights shown: the run's, or "otp" for a run without reweighting
    w_max: float  # the histograms' bins are uniform over [0, w_max]
    classes: dict[str, dict[str, Any]]  # summarize_weight_stats output, one entry per class
    images: list[ImageWeights] = field(default_factory=list)  # most down-weighted first (source "data")
    schedule: StepSchedule | None = None  # source "checkpoint": what the recorded steps applied
    files: list[Path] = field(default_factory=list)  # PNGs written
    plots_note: str | None = None  # why the matplotlib plots were not written, and how to get them
    # source "data": the mean reliability r (p_OTP[y], or the ratio) over the labelled pixels, before the weights'
    # per-image normalisation: comparable across datasets, where the weights' mean is 1 by construction
    mean_reliability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "sources": self.sources,
            "classes": self.classes,
            "images": [image.to_dict() for image in self.images],
        }
        if self.source == "data":
            out["mean_reliability"] = self.mean_reliability
        return out

    @property
    def total_pixels(self) -> int:
        return sum(int(entry["pixels"]) for entry in self.classes.values())

    def overall(self) -> dict[str, float | None]:
        """Mean weight and the shares below LOW / above HIGH over all classes' pixels (None with no pixel)."""
        pixels = self.total_pixels
        if pixels == 0:
            return {"mean": None, "low_fraction": None, "high_fraction": None}
        entries = [e for e in self.classes.values() if e["pixels"]]
        return {
            key: sum(float(e[key]) * int(e["pixels"]) for e in entries) / pixels
            for key in ("mean", "low_fraction", "high_fraction")
        }
