"""PPAR losses as pure functions: weighted cross-entropy, pixel-to-prototype InfoNCE, the progressive schedule and
prototypical reliability weights (DESIGN.md section 1).

`ppar_loss` composes them into `L = L_seg_w + lambda_pa * L_pa` with

    L_pa(t) = (1 - beta(t)) * L_nce(Z, VTP) + beta(t) * L_nce_q(t)(Z, OTP) + lambda_vo * L_nce(VTP, OTP)

Every function computes in float32, with autocast switched off, whatever dtype its inputs arrive in: cosines divided
by a temperature of 0.07 lose too much precision in bf16. Reliability weights are computed without gradient: they
scale the loss but must never be optimised themselves (the model could otherwise lower its loss by lowering them).

No function here waits for the device (DESIGN.md section 6: a training step must not stall the host). Pixels are
never selected with a boolean mask (`x[mask]` must learn the number of selected pixels on the host): every pixel
takes part with a 0/1 weight, means over a subset are `sum(weight * value) / count` with the count on the device,
counts per class are `scatter_add_` into fixed-size tensors (`bincount` computes its size on the host), and the
terms stay tensors until the caller reads them.

Partial labels (several sources, one of which labels fewer classes: SYNTHIA's 16 of 19): `class_mask` (B,K) bool
says which classes image b's source labels. A class its source never labels is not a negative for that image's
pixels: its score is -inf in every softmax over classes (segmentation, alignment, reliability), so those pixels
neither push it down nor take its probability mass. Without a mask (every source labels every class) nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ppar_core.errors import PparError

METHODS = ("ppar", "erm")
ALIGN_MODES = ("none", "direct", "progressive")
REWEIGHT_MODES = ("none", "otp", "ratio")
# The logged terms of `LossTerms`, in the log's order: the tensor terms, then the schedule's host floats.
TENSOR_TERMS = ("total", "seg", "pa", "vo", "mean_weight", "aligned_fraction")
SCHEDULE_TERMS = ("beta", "q", "weight_ramp")


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

    def stacked(self) -> Tensor:
        """The tensor terms as one detached float32 vector (len(TENSOR_TERMS),), in `TENSOR_TERMS` order, on their
        device: no host sync, so a training step can add it up over micro-batches and read it only when it logs."""
        return torch.stack([getattr(self, name).detach().float().reshape(()) for name in TENSOR_TERMS])

    def schedule_floats(self) -> dict[str, float]:
        """beta, q and weight_ramp as logged: host floats rounded to float32, as the log has always shown them."""
        return {name: float(np.float32(getattr(self, name))) for name in SCHEDULE_TERMS}

    def as_floats(self) -> dict[str, float]:
        """Every scalar as a Python float, for logging: one device->host transfer (of `stacked()`)."""
        return {**dict(zip(TENSOR_TERMS, self.stacked().tolist(), strict=True)), **self.schedule_floats()}


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


def _only_labelled(scores: Tensor, class_mask: Tensor | None) -> Tensor:
    # scores (B,K,...) -> the same with -inf for the classes image b's source never labels (class_mask (B,K) bool).
    if class_mask is None:
        return scores
    shape = (*class_mask.shape, *([1] * (scores.dim() - 2)))
    return scores.masked_fill(~class_mask.view(shape), float("-inf"))


def _nce_over(cosines: Tensor, labels: Tensor, counted: Tensor, *, tau: float) -> Tensor:
    # L_nce = mean over the counted pixels of -log softmax_k(cos / tau)[y], written as sum(counted * CE) / count.
    # cosines (B,K,h,w) float32; labels (B,h,w) long, a class index at every pixel (any at uncounted ones);
    # counted (B,h,w) bool. With no counted pixel it is 0 (not NaN) and stays attached to the graph.
    k = cosines.shape[1]
    ce = F.cross_entropy(cosines.permute(0, 2, 3, 1).reshape(-1, k) / tau, labels.reshape(-1), reduction="none")
    counted = counted.reshape(-1)
    # `where`, not `ce * counted`: an uncounted pixel's stand-in label may be a class its source never labels, whose
    # score is -inf (its CE inf, and inf * 0 is NaN).
    return torch.where(counted, ce, 0.0).sum() / counted.sum().clamp_min(1)


def _labels_at(labels: Tensor, size: tuple[int, int]) -> Tensor:
    # Nearest resize of the label map (B,H,W) -> (B,h,w); float32 holds every label value exactly.
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _counts(index: Tensor, size: int) -> Tensor:
    # How often each value in [0, size) occurs in `index` (long, any shape) -> (size,) long. A `bincount` with a fixed
    # size: torch.bincount sizes its output by the largest value, which on CUDA is read back to the host.
    flat = index.reshape(-1)
    return torch.zeros(size, dtype=torch.long, device=index.device).scatter_add_(0, flat, torch.ones_like(flat))


def easiest_per_class_mask(
    difficulty: Tensor, labels: Tensor, q: float, num_classes: int, valid: Tensor | None = None
) -> Tensor:
    """Bool mask (N,) keeping the `ceil(q * n_k)` easiest (smallest difficulty) valid pixels of every class k present.

    difficulty (N,) float; labels (N,) long, in [0, num_classes) wherever `valid` (N,) bool is True (None: every
    pixel is valid). Invalid pixels are never kept and do not count in n_k. q = 1 keeps all valid pixels, q = 0
    none; ties go to the lower index. Fixed shapes, no host sync: one sort by difficulty, one stable sort by class,
    then the rank inside each class; invalid pixels form an extra class K (sorted last, quota 0) instead of being
    removed, so the valid pixels keep their order and their ranks.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    n, device = labels.shape[0], labels.device
    valid = torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid
    if q >= 1.0 or n == 0:
        return valid.clone() if q >= 1.0 else torch.zeros(n, dtype=torch.bool, device=device)
    group = torch.where(valid, labels, num_classes)  # class K: the invalid pixels
    order = torch.argsort(difficulty.detach(), stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # grouped by class, easiest first inside each class
    sorted_group = group[order]
    counts = _counts(group, num_classes + 1)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(n, device=device) - starts[sorted_group]
    # The epsilon keeps exact products (0.3 * 10 = 3.0000000000000004 in binary) from rounding up to one more pixel.
    quota = torch.ceil(counts.double() * q - 1e-9).long()
    kept = (rank < quota[sorted_group]) & (sorted_group < num_classes)
    return torch.zeros(n, dtype=torch.bool, device=device).scatter_(0, order, kept)


def _cosine_maps(dense: Tensor, prototypes: Tensor) -> Tensor:
    # dense (B,D,h,w), prototypes (K,D) or (B,K,D) -> cosines (B,K,h,w) float32.
    z = F.normalize(dense.float(), dim=1)
    p = F.normalize(prototypes.float(), dim=-1)
    if p.dim() == 2:
        return torch.einsum("bdhw,kd->bkhw", z, p)
    return torch.einsum("bdhw,bkd->bkhw", z, p)


def _log_prob_at_labels(
    cosines: Tensor, labels: Tensor, *, tau_w: float, ignore_index: int, class_mask: Tensor | None = None
) -> Tensor:
    # cosines (B,K,h,w) -> log p(y) (B,H,W): upsample the logits (not the probabilities), then log-softmax over K.
    # The class mask comes after the upsampling: interpolating -inf would give NaN.
    logits = cosines / tau_w
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    logits = _only_labelled(logits, class_mask)
    safe = labels.long().masked_fill(labels == ignore_index, 0)
    return logits.log_softmax(dim=1).gather(1, safe[:, None])[:, 0]


def _reliability_from_cosines(
    cos_otp: Tensor,
    cos_vtp: Tensor | None,
    labels: Tensor,
    *,
    mode: str,
    tau_w: float,
    ignore_index: int,
    class_mask: Tensor | None = None,
) -> Tensor:
    log_r = _log_prob_at_labels(cos_otp, labels, tau_w=tau_w, ignore_index=ignore_index, class_mask=class_mask)
    if mode == "ratio":
        if cos_vtp is None:
            raise ValueError("reweight mode 'ratio' needs the VTP")
        log_r = log_r - _log_prob_at_labels(
            cos_vtp, labels, tau_w=tau_w, ignore_index=ignore_index, class_mask=class_mask
        )
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
    class_mask: Tensor | None = None,
) -> Tensor:
    """Per-pixel reliability (B,H,W) float32, detached; 0 at ignored pixels.

    dense (B,D,h,w); labels (B,H,W) long; otp (K,D); vtp (B,K,D) or (K,D), needed for `ratio`. Class logits
    `cos(z, t_k) / tau_w` at feature resolution are upsampled bilinearly to (H,W), soft-maxed over K (the classes
    of `class_mask` (B,K) only, when given) and read at the label: `otp` gives p_OTP[y], `ratio` gives
    p_OTP[y] / p_VTP[y] (computed in log space, so it cannot overflow float32 for cosine logits).
    """
    with torch.no_grad(), _float32(dense.device):
        cos_vtp = _cosine_maps(dense, vtp) if mode == "ratio" and vtp is not None else None
        return _reliability_from_cosines(
            _cosine_maps(dense, otp), cos_vtp, labels, mode=mode, tau_w=tau_w, ignore_index=ignore_index,
            class_mask=class_mask,
        )  # fmt: skip


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
    # Pixels per (b, k) pair, counted into a fixed-size tensor; ignored pixels go to an extra slot b*k, dropped.
    pair = torch.where(valid, img * k + labels.long(), b * k).reshape(-1)
    present = _counts(pair, b * k + 1)[: b * k] > 0
    present = torch.where(present.any(), present, torch.ones_like(present))
    return (per_pair * present).sum() / present.sum()


def ppar_loss(
    logits: Tensor,
    labels: Tensor,
    dense: Tensor,
    otp: Tensor,
    vtp: Tensor | None,
    *,
    cfg: LossConfig,
    progress: float,
    class_mask: Tensor | None = None,
) -> LossTerms:
    """The PPAR training loss at `progress` = step / total_steps.

    logits (B,K,H,W) at label size; labels (B,H,W) long; dense (B,D,h,w) image-encoder embeddings Z in the joint
    space; otp (K,D); vtp (B,K,D), or (K,D) for one global memory, or None when neither `progressive` alignment nor
    `ratio` reweighting needs it; class_mask (B,K) bool, the classes each image's source labels (None: all).
    `total = seg + lambda_pa * pa`; gradients reach logits, dense and vtp, never the weights. The OTP is a fixed
    anchor but is not detached here: freezing it is the model's job.
    """
    cfg.validate()
    beta, q, rho = schedule(progress, cfg)
    ign = cfg.ignore_index
    zero = logits.new_zeros((), dtype=torch.float32)
    logits = _only_labelled(logits, class_mask)
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
                        class_mask=class_mask,
                    )
                weights = reliability_weights(r, valid, eta=cfg.eta, w_min=cfg.w_min, w_max=cfg.w_max, ramp=rho)
            else:  # warm-up: w = 1, no need to compute the reliability
                weights = valid.float()
            mean_weight = weights.sum() / valid.sum().clamp_min(1)
        seg = weighted_cross_entropy(logits, labels, weights, ignore_index=ign)

        pa, vo, aligned = zero, zero, zero
        if cfg.align != "none":
            small = _labels_at(labels, (h, w))
            valid_small = small != ign  # (B,h,w): the feature pixels the alignment averages over
            y = small.masked_fill(~valid_small, 0)  # a class index everywhere; ignored pixels have weight 0
            n_valid = valid_small.sum()
            k = cos_otp.shape[1]
            if cfg.align == "direct":
                pa = _nce_over(_only_labelled(cos_otp, class_mask), y, valid_small, tau=cfg.tau)
                aligned = (n_valid > 0).float()
            else:
                assert vtp is not None and cos_vtp is not None
                with torch.no_grad():
                    difficulty = 1.0 - cos_otp.gather(1, y[:, None])[:, 0]  # d_i = 1 - cos(z_i, t_{y_i}), (B,h,w)
                    keep = easiest_per_class_mask(
                        difficulty.reshape(-1), y.reshape(-1), q, k, valid=valid_small.reshape(-1)
                    ).view_as(y)
                aligned = keep.float().sum() / n_valid.clamp_min(1)
                vo = _vtp_otp_nce(vtp, otp, labels, tau=cfg.tau, ignore_index=ign)
                pa = cfg.lambda_vo * vo
                # A term whose coefficient is 0 is skipped, not multiplied by 0: it would cost a (N,K) softmax.
                if beta < 1.0:
                    pa = pa + (1.0 - beta) * _nce_over(_only_labelled(cos_vtp, class_mask), y, valid_small, tau=cfg.tau)
                if beta > 0.0:
                    pa = pa + beta * _nce_over(_only_labelled(cos_otp, class_mask), y, keep, tau=cfg.tau)
        total = seg + cfg.lambda_pa * pa
    return LossTerms(total, seg, pa, vo, mean_weight, aligned, beta, q, rho, weights)
