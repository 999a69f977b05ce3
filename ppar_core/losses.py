"""PPAR losses as pure functions: weighted cross-entropy, pixel-to-prototype InfoNCE, the progressive schedule and
prototypical reliability weights (DESIGN.md section 1).

`ppar_loss` composes them into `L = L_seg_w + lambda_pa * L_pa` with

    L_pa(t) = (1 - beta(t)) * L_nce(Z, VTP) + beta(t) * L_nce_q(t)(Z, OTP) + lambda_vo * L_nce(VTP, OTP)

Every function computes in float32, with autocast switched off, whatever dtype its inputs arrive in: cosines divided
by a temperature of 0.07 lose too much precision in bf16. Reliability weights are computed without gradient: they
scale the loss but must never be optimised themselves (the model could otherwise lower its loss by lowering them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ppar_core.errors import PparError

METHODS = ("ppar", "erm")
ALIGN_MODES = ("none", "direct", "progressive")
REWEIGHT_MODES = ("none", "otp", "ratio")


@dataclass(frozen=True)
class LossConfig:
    """The loss options of DESIGN.md section 1; fractions are of the whole training run (progress in [0, 1])."""

    method: str = "ppar"  # "ppar" | "erm" (erm: plain CE, no alignment, no reweighting)
    align: str = "progressive"  # "none" | "direct" | "progressive"
    reweight: str = "otp"  # "none" | "otp" | "ratio"
    lambda_pa: float = 0.1  # weight of L_pa in the total loss
    lambda_vo: float = 0.1  # weight of L_nce(VTP, OTP) inside L_pa
    tau: float = 0.07  # temperature of L_nce
    tau_w: float = 0.07  # temperature of the reliability softmax
    eta: float = 1.0  # sharpness exponent of the reliability weights
    w_min: float = 0.1  # lower clip of the weights
    w_max: float = 3.0  # upper clip of the weights
    weight_warmup: float = 0.1  # fraction of training with w = 1
    weight_ramp: float = 0.1  # fraction after the warm-up over which w is ramped in: w_eff = 1 + rho * (w - 1)
    align_ramp: float = 0.5  # fraction of training over which beta goes 0 -> 1 and q goes q_start -> 1
    q_start: float = 0.3  # fraction of each class's easiest pixels aligned to the OTP at the start
    ignore_index: int = 255  # label value excluded from every term

    def validate(self) -> None:
        """Raise `PparError` naming the first field with a bad value."""
        choices = {"method": METHODS, "align": ALIGN_MODES, "reweight": REWEIGHT_MODES}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                _bad(name, value, f"one of {', '.join(allowed)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in choices:
                continue
            if f.name == "ignore_index":
                if isinstance(value, bool) or not isinstance(value, int):
                    _bad(f.name, value, "an integer")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _bad(f.name, value, "a finite number")
        for name in ("tau", "tau_w", "w_max"):
            if getattr(self, name) <= 0:
                _bad(name, getattr(self, name), "a positive number")
        for name in ("lambda_pa", "lambda_vo", "eta", "w_min"):
            if getattr(self, name) < 0:
                _bad(name, getattr(self, name), "a non-negative number")
        for name in ("weight_warmup", "weight_ramp", "align_ramp", "q_start"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                _bad(name, getattr(self, name), "a fraction between 0 and 1")
        if self.w_min > self.w_max:
            _bad("w_min", self.w_min, f"at most w_max ({self.w_max})")


def _bad(name: str, value: object, expected: str) -> None:
    raise PparError(
        f"Loss option '{name}' is {value!r} but must be {expected}; fix it in the config file or the --set override."
    )


@dataclass
class LossTerms:
    """Named loss terms of one step. Tensors are scalars except `weights`; only `total` is meant for backward.

    `pa` is the full alignment term (it already includes `lambda_vo * vo`); `vo` is the raw L_nce(VTP, OTP).
    """

    total: Tensor
    seg: Tensor
    pa: Tensor
    vo: Tensor
    mean_weight: Tensor  # mean applied weight over valid pixels (1.0 when no reweighting, 0.0 with no valid pixel)
    aligned_fraction: Tensor  # fraction of valid feature pixels in the OTP alignment term (q(t) in effect)
    beta: float
    q: float
    weight_ramp: float
    weights: Tensor | None  # (B,H,W) float32 applied weights at label resolution, detached; None for erm / none

    def as_floats(self) -> dict[str, float]:
        """Every scalar as a Python float, for logging (synchronises with the device once per tensor)."""
        scalars = ("total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q", "weight_ramp")
        return {name: float(torch.as_tensor(getattr(self, name)).detach()) for name in scalars}


@contextmanager
def _float32(device: torch.device) -> Iterator[None]:
    # Autocast would run the einsums in bf16 even on float32 inputs; turn it off for the loss math.
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def schedule(progress: float, cfg: LossConfig) -> tuple[float, float, float]:
    """Return `(beta, q, rho)` at `progress` = step / total_steps (clamped to [0, 1]); pure.

    beta ramps 0 -> 1 and q ramps q_start -> 1 linearly over the first `align_ramp` of training (`direct`: 1, 1;
    `none` and `erm`: 0, 0). rho is 0 during `weight_warmup`, then ramps linearly to 1 over `weight_ramp`
    (0 when reweighting is off).
    """
    t = min(max(float(progress), 0.0), 1.0)
    if cfg.method == "erm" or cfg.align == "none":
        beta, q = 0.0, 0.0
    elif cfg.align == "direct":
        beta, q = 1.0, 1.0
    else:
        beta = 1.0 if cfg.align_ramp <= 0 else min(t / cfg.align_ramp, 1.0)
        q = cfg.q_start + (1.0 - cfg.q_start) * beta
    if cfg.method == "erm" or cfg.reweight == "none" or t < cfg.weight_warmup:
        rho = 0.0
    else:
        rho = 1.0 if cfg.weight_ramp <= 0 else min((t - cfg.weight_warmup) / cfg.weight_ramp, 1.0)
    return beta, q, rho


def weighted_cross_entropy(
    logits: Tensor, labels: Tensor, weights: Tensor | None = None, *, ignore_index: int = 255
) -> Tensor:
    """`sum_i w_i * CE_i / number_of_valid_pixels`, a float32 scalar.

    logits (B,K,H,W) any float dtype; labels (B,H,W) long in [0, K) or `ignore_index`; weights (B,H,W) or None (w = 1,
    which equals `F.cross_entropy(reduction="mean")`). With no valid pixel it returns 0, still attached to the graph.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in size")
    with _float32(logits.device):
        ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")  # 0 at ignore
        if weights is not None:
            ce = ce * weights.detach().float()
        n_valid = (labels != ignore_index).sum().clamp_min(1)
        return ce.sum() / n_valid


def _nce_from_cosines(cosines: Tensor, labels: Tensor, *, tau: float) -> Tensor:
    # cosines (N,K) float32; the mean over an empty set is 0 (not NaN) and keeps the graph.
    if cosines.shape[0] == 0:
        return cosines.sum() * 0.0
    return F.cross_entropy(cosines / tau, labels)


def _labels_at(labels: Tensor, size: tuple[int, int]) -> Tensor:
    # Nearest resize of the label map (B,H,W) -> (B,h,w); float32 holds every label value exactly.
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def easiest_per_class_mask(difficulty: Tensor, labels: Tensor, q: float, num_classes: int) -> Tensor:
    """Bool mask (N,) keeping the `ceil(q * n_k)` easiest (smallest difficulty) pixels of every class k present.

    difficulty (N,) float; labels (N,) long in [0, num_classes). q = 1 keeps all, q = 0 none; ties go to the lower
    index. Vectorised: one sort by difficulty, one stable sort by class, then the rank inside each class.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    n = labels.shape[0]
    if q >= 1.0 or n == 0:
        return torch.full((n,), q >= 1.0, dtype=torch.bool, device=labels.device)
    order = torch.argsort(difficulty.detach(), stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # grouped by class, easiest first inside each class
    sorted_labels = labels[order]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(n, device=labels.device) - starts[sorted_labels]
    # The epsilon keeps exact products (0.3 * 10 = 3.0000000000000004 in binary) from rounding up to one more pixel.
    quota = torch.ceil(counts.double() * q - 1e-9).long()
    mask = torch.zeros(n, dtype=torch.bool, device=labels.device)
    mask[order] = rank < quota[sorted_labels]
    return mask


def _cosine_maps(dense: Tensor, prototypes: Tensor) -> Tensor:
    # dense (B,D,h,w), prototypes (K,D) or (B,K,D) -> cosines (B,K,h,w) float32.
    z = F.normalize(dense.float(), dim=1)
    p = F.normalize(prototypes.float(), dim=-1)
    if p.dim() == 2:
        return torch.einsum("bdhw,kd->bkhw", z, p)
    return torch.einsum("bdhw,bkd->bkhw", z, p)


def _log_prob_at_labels(cosines: Tensor, labels: Tensor, *, tau_w: float, ignore_index: int) -> Tensor:
    # cosines (B,K,h,w) -> log p(y) (B,H,W): upsample the logits (not the probabilities), then log-softmax over K.
    logits = cosines / tau_w
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    safe = labels.long().masked_fill(labels == ignore_index, 0)
    return logits.log_softmax(dim=1).gather(1, safe[:, None])[:, 0]


def _reliability_from_cosines(
    cos_otp: Tensor, cos_vtp: Tensor | None, labels: Tensor, *, mode: str, tau_w: float, ignore_index: int
) -> Tensor:
    log_r = _log_prob_at_labels(cos_otp, labels, tau_w=tau_w, ignore_index=ignore_index)
    if mode == "ratio":
        if cos_vtp is None:
            raise ValueError("reweight mode 'ratio' needs the VTP")
        log_r = log_r - _log_prob_at_labels(cos_vtp, labels, tau_w=tau_w, ignore_index=ignore_index)
    elif mode != "otp":
        raise ValueError(f"unknown reliability mode {mode!r}")
    return log_r.exp().masked_fill(labels == ignore_index, 0.0)


def reliability(
    dense: Tensor,
    labels: Tensor,
    otp: Tensor,
    vtp: Tensor | None = None,
    *,
    mode: str = "otp",
    tau_w: float = 0.07,
    ignore_index: int = 255,
) -> Tensor:
    """Per-pixel reliability (B,H,W) float32, detached; 0 at ignored pixels.

    dense (B,D,h,w); labels (B,H,W) long; otp (K,D); vtp (B,K,D) or (K,D), needed for `ratio`. Class logits
    `cos(z, t_k) / tau_w` at feature resolution are upsampled bilinearly to (H,W), soft-maxed over K and read at the
    label: `otp` gives p_OTP[y], `ratio` gives p_OTP[y] / p_VTP[y] (computed in log space, so it cannot overflow
    float32 for cosine logits).
    """
    with torch.no_grad(), _float32(dense.device):
        cos_vtp = _cosine_maps(dense, vtp) if mode == "ratio" and vtp is not None else None
        return _reliability_from_cosines(
            _cosine_maps(dense, otp), cos_vtp, labels, mode=mode, tau_w=tau_w, ignore_index=ignore_index
        )


def reliability_weights(r: Tensor, valid: Tensor, *, eta: float, w_min: float, w_max: float, ramp: float) -> Tensor:
    """Weights (B,H,W) float32, detached: `1 + ramp * (clip(r^eta / mean_valid(r^eta), w_min, w_max) - 1)`.

    r (B,H,W) float >= 0; valid (B,H,W) bool. Invalid pixels get 0. Computed in float64 because r^eta of an importance
    ratio can exceed float32. If every valid r^eta is 0 the normalised weights are taken as 1.
    """
    with torch.no_grad():
        rp = r.detach().double().clamp_min(0.0).pow(eta)
        rp = torch.where(valid, rp, torch.zeros_like(rp))
        mean = rp.sum() / valid.sum().clamp_min(1)
        w = torch.where(mean > 0, rp / mean.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(rp))
        w = 1.0 + ramp * (w.clamp(w_min, w_max) - 1.0)
        return torch.where(valid, w, torch.zeros_like(w)).float()


def _vtp_otp_nce(vtp: Tensor, otp: Tensor, labels: Tensor, *, tau: float, ignore_index: int) -> Tensor:
    # Each v_{b,k} is classified among the OTPs as class k; mean over the (b, k) with class k in image b's labels,
    # or over all (b, k) when the batch has no labelled pixel at all.
    b, k, _ = vtp.shape
    cos = F.normalize(vtp.float(), dim=-1) @ F.normalize(otp.float(), dim=-1).T  # (B,K,K)
    per_pair = F.cross_entropy(
        (cos / tau).reshape(b * k, k), torch.arange(k, device=vtp.device).repeat(b), reduction="none"
    )
    valid = labels != ignore_index
    img = torch.arange(b, device=labels.device).view(b, 1, 1).expand_as(labels)
    present = torch.bincount((img * k + labels.long())[valid], minlength=b * k)[: b * k] > 0
    present = torch.where(present.any(), present, torch.ones_like(present))
    return (per_pair * present).sum() / present.sum()


def ppar_loss(
    logits: Tensor, labels: Tensor, dense: Tensor, otp: Tensor, vtp: Tensor | None, *, cfg: LossConfig, progress: float
) -> LossTerms:
    """The PPAR training loss at `progress` = step / total_steps.

    logits (B,K,H,W) at label size; labels (B,H,W) long; dense (B,D,h,w) image-encoder embeddings Z in the joint
    space; otp (K,D); vtp (B,K,D), or (K,D) for one global memory, or None when neither `progressive` alignment nor
    `ratio` reweighting needs it. `total = seg + lambda_pa * pa`; gradients reach logits, dense and vtp, never the
    weights. The OTP is a fixed anchor but is not detached here: freezing it is the model's job.
    """
    cfg.validate()
    beta, q, rho = schedule(progress, cfg)
    ign = cfg.ignore_index
    zero = logits.new_zeros((), dtype=torch.float32)
    if cfg.method == "erm":
        seg = weighted_cross_entropy(logits, labels, None, ignore_index=ign)
        return LossTerms(seg, seg, zero, zero, zero + 1.0, zero, beta, q, rho, None)
    needs_vtp = cfg.align == "progressive" or cfg.reweight == "ratio"
    if needs_vtp and vtp is None:
        raise ValueError(f"align={cfg.align!r} / reweight={cfg.reweight!r} need the VTP but vtp is None")
    b, _, h, w = dense.shape
    with _float32(logits.device):
        if vtp is not None and vtp.dim() == 2:
            vtp = vtp.expand(b, *vtp.shape)
        cos_otp = _cosine_maps(dense, otp)  # (B,K,h,w), shared by alignment and reliability
        cos_vtp = _cosine_maps(dense, vtp) if needs_vtp and vtp is not None else None

        weights: Tensor | None = None
        mean_weight = zero + 1.0
        if cfg.reweight != "none":
            valid = labels != ign
            if rho > 0:
                with torch.no_grad():
                    r = _reliability_from_cosines(
                        cos_otp.detach(),
                        None if cos_vtp is None else cos_vtp.detach(),
                        labels,
                        mode=cfg.reweight,
                        tau_w=cfg.tau_w,
                        ignore_index=ign,
                    )
                weights = reliability_weights(r, valid, eta=cfg.eta, w_min=cfg.w_min, w_max=cfg.w_max, ramp=rho)
            else:  # warm-up: w = 1, no need to compute the reliability
                weights = valid.float()
            mean_weight = weights.sum() / valid.sum().clamp_min(1)
        seg = weighted_cross_entropy(logits, labels, weights, ignore_index=ign)

        pa, vo, aligned = zero, zero, zero
        if cfg.align != "none":
            small = _labels_at(labels, (h, w))
            valid_small = small != ign
            y = small[valid_small]
            k = cos_otp.shape[1]
            pix_otp = cos_otp.permute(0, 2, 3, 1)[valid_small]  # (N,K) cosines of valid feature pixels
            if cfg.align == "direct":
                pa = _nce_from_cosines(pix_otp, y, tau=cfg.tau)
                aligned = (zero + 1.0) if y.numel() > 0 else zero
            else:
                assert vtp is not None and cos_vtp is not None
                with torch.no_grad():
                    difficulty = 1.0 - pix_otp.gather(1, y[:, None])[:, 0]
                    keep = easiest_per_class_mask(difficulty, y, q, k)
                aligned = keep.float().sum() / max(y.numel(), 1)
                vo = _vtp_otp_nce(vtp, otp, labels, tau=cfg.tau, ignore_index=ign)
                pa = cfg.lambda_vo * vo
                # A term whose coefficient is 0 is skipped, not multiplied by 0: it would cost a (N,K) softmax.
                if beta < 1.0:
                    pix_vtp = cos_vtp.permute(0, 2, 3, 1)[valid_small]
                    pa = pa + (1.0 - beta) * _nce_from_cosines(pix_vtp, y, tau=cfg.tau)
                if beta > 0.0:
                    pa = pa + beta * _nce_from_cosines(pix_otp[keep], y[keep], tau=cfg.tau)
        total = seg + cfg.lambda_pa * pa
    return LossTerms(total, seg, pa, vo, mean_weight, aligned, beta, q, rho, weights)
