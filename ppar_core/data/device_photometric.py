"""The photometric distortion on the training device (`data.augment.photometric_on = "device"`).

For when the loader's CPU cores are the limit: the workers only draw each sample's parameters
(`transforms.draw_photometric`, from the sample's own generator, so resume stays exact) and the training step applies
them to the whole uint8 batch on the device, before normalisation. The steps are those of `apply_photometric`, in
float32 with its rounding, and the colour-space changes are OpenCV's own 8-bit arithmetic: RGB to HSV with its
fixed-point tables (equal to `cv2.cvtColor` on every colour), HSV to RGB in float32, truncated as OpenCV's vector
code does (equal but for about one colour in 20,000, by one grey level; measured against OpenCV 5.0). Tests compare
both paths on the same parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _param(params: Tensor, index: int) -> tuple[Tensor, Tensor]:
    # (B,5) -> the column as (B,1,1,1) with NaN replaced by `neutral` later, and whether the step applies (B,1,1,1).
    column = params[:, index].view(-1, 1, 1, 1)
    return column, ~torch.isnan(column)


def _division_table(numerator: float, device: torch.device) -> Tensor:
    # OpenCV's fixed-point reciprocal tables: round(numerator * 2^12 / i) for i in 1..255, 0 for i = 0.
    i = torch.arange(256, dtype=torch.float64, device=device)
    return torch.where(i > 0, torch.round(numerator * 4096.0 / i.clamp_min(1.0)), torch.zeros_like(i)).long()


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    """(B,3,H,W) float32 holding uint8 values -> HSV (B,3,H,W) float32 in OpenCV's 8-bit ranges (hue 0-179).

    OpenCV's own integer arithmetic (`RGB2HSV_b`): saturation `(diff * round(255 * 2^12 / v) + 2^11) >> 12`, hue
    `(h * round(180 * 2^12 / (6 diff)) + 2^11) >> 12` with h in units of diff (red max: g - b, green max:
    b - r + 2 diff, blue max: r - g + 4 diff), plus 180 when negative.
    """
    x = rgb.long()
    r, g, b = x.unbind(1)
    value, _ = x.max(dim=1)
    diff = value - x.min(dim=1).values
    saturation = (diff * _division_table(255.0, x.device)[value] + 2048) >> 12
    raw = torch.where(value == r, g - b, torch.where(value == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = (raw * _division_table(180.0 / 6.0, x.device)[diff] + 2048) >> 12
    hue = torch.where(hue < 0, hue + 180, hue)
    return torch.stack([hue, saturation, value], dim=1).float()


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV in OpenCV's 8-bit ranges (B,3,H,W) float32 -> RGB (B,3,H,W) float32 in [0, 255], rounded.

    OpenCV's `HSV2RGB_b` in float32: s and v times 1/255, hue times 6/180 (the sector, 0-6), the sector's
    (v, t, p) choice of v, v(1 - s), v(1 - s f), v(1 - s (1 - f)), times 255, truncated to an integer as OpenCV's
    vector code does (the one it runs on image rows of more than a few pixels; its scalar code rounds instead).
    """
    hue, saturation, value = hsv.unbind(1)
    h6 = hue * torch.tensor(6.0 / 180.0, dtype=torch.float32)
    h6 = torch.where(h6 >= 6.0, h6 - 6.0, h6)
    sector = torch.floor(h6)
    f = h6 - sector
    s = saturation * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    v = value * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    # The (r, g, b) of each sector, chosen per pixel.
    table = torch.stack(
        [
            torch.stack([v, t, p], 1),
            torch.stack([q, v, p], 1),
            torch.stack([p, v, t], 1),
            torch.stack([p, q, v], 1),
            torch.stack([t, p, v], 1),
            torch.stack([v, p, q], 1),
        ],
        dim=1,
    )  # (B,6,3,H,W)
    index = sector.long().clamp(0, 5)[:, None, None].expand(-1, 1, 3, -1, -1)
    rgb = table.gather(1, index)[:, 0]
    rgb = torch.where((saturation == 0)[:, None], v[:, None].expand_as(rgb), rgb)
    return torch.trunc(rgb * 255.0).clamp(0, 255)


def photometric_on_device(images: Tensor, params: Tensor) -> Tensor:
    """Apply per-sample photometric parameters: images (B,3,H,W) uint8 RGB on the device, params (B,5) float32 in
    `transforms.PHOTOMETRIC_PARAMS` order (NaN: step not drawn) -> (B,3,H,W) uint8. No host synchronisation:
    every step is computed for the whole batch and kept per sample with `torch.where`."""
    params = params.to(images.device, torch.float32)
    x = images.float()
    brightness, do_brightness = _param(params, 0)
    x = torch.where(do_brightness, x + torch.nan_to_num(brightness), x)
    contrast, do_contrast = _param(params, 1)
    x = torch.where(do_contrast, x * torch.nan_to_num(contrast, nan=1.0), x)
    saturation, do_saturation = _param(params, 2)
    hue, do_hue = _param(params, 3)
    hsv_step = do_saturation | do_hue
    # Into uint8 before the colour-space change, as the CPU path's first lookup table does (clip, then truncate).
    before_hsv = torch.clamp(x, 0, 255).floor()
    hsv = _rgb_to_hsv(before_hsv)
    h, s, v = hsv.unbind(1)
    s = torch.where(
        do_saturation[:, 0], torch.clamp(s * torch.nan_to_num(saturation[:, 0], nan=1.0), 0, 255).floor(), s
    )
    h = torch.where(do_hue[:, 0], (h + torch.nan_to_num(hue[:, 0])) % 180.0, h)
    x = torch.where(hsv_step, _hsv_to_rgb(torch.stack([h, s, v], 1)), x)
    contrast_after, do_after = _param(params, 4)
    x = torch.where(do_after, x * torch.nan_to_num(contrast_after, nan=1.0), x)
    return torch.clamp(x, 0, 255).round().to(torch.uint8)
