"""A broad random distribution of synthetic appearances, for pretraining the embedded CLIP prior.

CLIP saw web photos of every look: day and night, sun and fog, sharp and blurry, clean and compressed. The prior's
pretraining imitates that by drawing every `Style` parameter independently over a wide range (`sample_style`). The
built-in domains (`synth-source`, `synth-real`, `synth-night`, `synth-fog`) are single points inside this
distribution; the distribution is not fitted to them, and they are not changed by it.
"""

from __future__ import annotations

import numpy as np

from ppar_core.data.synth.styles import Style


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def sample_style(rng: np.random.Generator) -> Style:
    """One random appearance drawn from `rng` -> a `Style` whose every field lies in its valid range.

    Lighting first: the ambient level is daylight (0.5-1.3) in about two thirds of the images and log-uniform from
    deep night (0.03) to dusk (0.5) in the rest; light sources are on when it is dark (and sometimes otherwise), the
    sun only shines in daylight. Then weather (light haze in most
    images, fog in about a quarter, with pale or dark airlight), palette, optics and sensor, each drawn on its own.
    """
    # Mostly daylight, as in photo collections; a quarter dusk or night (log-uniform, down to deep night).
    ambient = float(rng.uniform(0.5, 1.3)) if rng.random() < 0.65 else _log_uniform(rng, 0.03, 0.5)
    dark = ambient < 0.35
    sun = 0.0 if dark or rng.random() < 0.3 else float(rng.uniform(0.1, 1.0))
    lights = dark or rng.random() < 0.15
    light_intensity = float(rng.uniform(0.3, 1.6)) if lights else 0.0
    lit_windows = float(rng.uniform(0.05, 0.6)) if lights else 0.0
    # Darker scenes are exposed longer by the camera (auto exposure), as real night photos are.
    exposure = float(rng.uniform(0.7, 1.4)) * (1.0 + 0.3 * dark)

    foggy = rng.random() < 0.25
    haze_density = _log_uniform(rng, 0.01, 0.08) if foggy else float(rng.uniform(0.0, 0.008))
    grey = float(rng.uniform(0.55, 0.9)) * (1.0 if ambient > 0.2 else float(rng.uniform(0.05, 0.3)))
    tint = rng.uniform(-0.05, 0.08, size=3)
    haze_color = tuple(float(np.clip(grey + t, 0.0, 1.0)) for t in tint)

    noisy = rng.random() < 0.6
    compressed = rng.random() < 0.5
    return Style(
        saturation=float(rng.uniform(0.3, 1.6)),
        hue_shift_deg=float(rng.uniform(-15.0, 15.0)),
        class_tint=float(rng.uniform(0.0, 0.1)),
        color_temperature=float(rng.uniform(-0.5, 0.5)),
        exposure=exposure,
        contrast=float(rng.uniform(0.6, 1.35)),
        gamma=float(rng.uniform(0.8, 1.3)),
        sun=sun,
        ambient=ambient,
        texture=float(rng.uniform(0.5, 1.6)),
        blur_sigma=float(rng.uniform(0.0, 1.5)) if rng.random() < 0.6 else 0.0,
        sharpen=float(rng.uniform(0.0, 0.8)) if rng.random() < 0.3 else 0.0,
        noise=float(rng.uniform(0.0, 0.05)) if noisy else 0.0,
        jpeg_quality=int(rng.integers(30, 96)) if compressed else None,
        haze_density=haze_density,
        haze_color=(haze_color[0], haze_color[1], haze_color[2]),
        light_intensity=light_intensity,
        lit_window_fraction=lit_windows,
        vignette=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.4 else 0.0,
    )
