"""PPAR losses: hand-computed cases, independent references, schedule values and gradient routing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ppar_core.errors import PparError
from ppar_core.losses import (
    LossConfig,
    easiest_per_class_mask,
    ppar_loss,
    reliability,
    reliability_weights,
    schedule,
    weighted_cross_entropy,
)

K, D = 4, 8


# --- the reference: L_nce written out pixel by pixel, as DESIGN.md states it ------------------------------------------


def pixel_prototype_nce(
    features: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    *,
    tau: float,
    batch_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """`mean_i -log softmax_k(cos(f_i, p_k) / tau)[y_i]` (0 for no pixel). features (N,D); labels (N,); prototypes
    (K,D) shared, (N,K,D) per pixel, or (B,K,D) per image with `batch_index` (N,)."""
    if features.shape[0] == 0:
        return features.sum() * 0.0
    f = F.normalize(features.float(), dim=-1)
    p = F.normalize(prototypes.float(), dim=-1)
    if p.dim() == 2:
        cos = f @ p.T
    else:
        per_pixel = p if batch_index is None else p[batch_index]
        cos = torch.einsum("nd,nkd->nk", f, per_pixel)
    return F.cross_entropy(cos / tau, labels)


def features_to_pixels(
    dense: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor | None = None, *, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The valid pixels of dense (B,D,h,w) with labels (B,H,W) nearest-resized -> (features (N,D), labels (N,),
    image index (N,)); `prototypes` is only checked for a matching batch size and width."""
    b, d, h, w = dense.shape
    if prototypes is not None and (prototypes.shape[-1] != d or (prototypes.dim() == 3 and prototypes.shape[0] != b)):
        raise ValueError(f"prototypes {tuple(prototypes.shape)} do not match dense features {tuple(dense.shape)}")
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long().reshape(-1)
    valid = small != ignore_index
    image = torch.arange(b).repeat_interleave(h * w)
    return dense.permute(0, 2, 3, 1).reshape(-1, d)[valid], small[valid], image[valid]


def _batch(seed: int = 0, *, b: int = 2, size: int = 8, feat: int = 4, ignore_frac: float = 0.2):
    """Random logits (B,K,H,W), labels (B,H,W), dense (B,D,h,w), otp (K,D), vtp (B,K,D), all leaves with grad."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, K, size, size, generator=g).requires_grad_()
    labels = torch.randint(0, K, (b, size, size), generator=g)
    labels[torch.rand(b, size, size, generator=g) < ignore_frac] = 255
    dense = torch.randn(b, D, feat, feat, generator=g).requires_grad_()
    otp = F.normalize(torch.randn(K, D, generator=g), dim=-1)
    vtp = (otp + 0.3 * torch.randn(b, K, D, generator=g)).requires_grad_()
    return logits, labels, dense, otp, vtp


# --- weighted cross-entropy -------------------------------------------------------------------------------------------


def test_weighted_ce_with_unit_weights_equals_torch_mean_ce() -> None:
    logits, labels, *_ = _batch(1)
    ref = F.cross_entropy(logits, labels, ignore_index=255, reduction="mean")
    assert torch.allclose(weighted_cross_entropy(logits, labels, None), ref, atol=1e-6)
    ones = torch.ones(labels.shape)
    assert torch.allclose(weighted_cross_entropy(logits, labels, ones), ref, atol=1e-6)


def test_weighted_ce_hand_computed_2x2() -> None:
    ln3 = math.log(3.0)
    # pixel logits: [0,0] -> CE ln2 for any label; [ln3,0] -> p = (3/4, 1/4)
    logits = torch.tensor([[[[0.0, ln3], [ln3, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1,2,2,2)
    labels = torch.tensor([[[0, 0], [1, 255]]])
    weights = torch.tensor([[[2.0, 1.0], [0.5, 5.0]]])
    # (2 ln2 + 1 ln(4/3) + 0.5 ln4 + ignored) / 3 valid pixels
    expected = (2 * math.log(2) + math.log(4 / 3) + 0.5 * math.log(4)) / 3
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.full((1, 2, 2), 255), torch.ones(1, 2, 2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


# --- pixel-to-prototype InfoNCE ---------------------------------------------------------------------------------------


def test_nce_hand_computed_three_pixels_two_classes() -> None:
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # cosines [1,0], [0,1], [.707,.707]
    labels = torch.tensor([0, 1, 0])
    # tau 0.5: pixels 1 and 2 have logits (2, 0) at their class -> log(1 + e^-2); pixel 3 is a tie -> log 2
    expected = (2 * math.log(1 + math.exp(-2)) + math.log(2)) / 3
    assert pixel_prototype_nce(features, labels, prototypes, tau=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nce_is_cosine_invariant_to_feature_and_prototype_scale() -> None:
    g = torch.Generator().manual_seed(2)
    features, prototypes = torch.randn(30, D, generator=g), torch.randn(K, D, generator=g)
    labels = torch.randint(0, K, (30,), generator=g)
    base = pixel_prototype_nce(features, labels, prototypes, tau=0.07)
    scales = torch.rand(30, 1, generator=g) * 100 + 0.01
    scaled = pixel_prototype_nce(features * scales, labels, prototypes * 7.0, tau=0.07)
    assert torch.allclose(base, scaled, atol=1e-5)
    # a dot-product version would differ
    assert not torch.allclose(base, F.cross_entropy((features * scales) @ prototypes.T / 0.07, labels), atol=1e-2)


def test_nce_per_pixel_and_per_image_prototypes_agree() -> None:
    g = torch.Generator().manual_seed(3)
    features, labels = torch.randn(20, D, generator=g), torch.randint(0, K, (20,), generator=g)
    per_image = torch.randn(3, K, D, generator=g)
    batch_index = torch.randint(0, 3, (20,), generator=g)
    gathered = pixel_prototype_nce(features, labels, per_image[batch_index], tau=0.1)
    indexed = pixel_prototype_nce(features, labels, per_image, tau=0.1, batch_index=batch_index)
    assert torch.allclose(gathered, indexed, atol=1e-6)
    shared = pixel_prototype_nce(features, labels, per_image[0], tau=0.1)
    assert torch.allclose(shared, pixel_prototype_nce(features, labels, per_image[0].expand(20, K, D), tau=0.1))


def test_features_to_pixels_nearest_resizes_labels_and_drops_ignored() -> None:
    dense = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    labels = torch.full((2, 4, 4), 255)
    labels[0, 0, 0], labels[0, 2, 2], labels[1, 0, 2] = 1, 2, 3
    labels[0, 1, 1] = 0  # between the sampled positions: must not appear
    feats, y, bidx = features_to_pixels(dense, labels, torch.zeros(2, K, 3), ignore_index=255)
    # nearest with scale 2 samples rows/cols 0 and 2: pixels (0,0,0), (0,1,1), (1,0,1)
    assert y.tolist() == [1, 2, 3] and bidx.tolist() == [0, 0, 1]
    assert torch.equal(feats, torch.stack([dense[0, :, 0, 0], dense[0, :, 1, 1], dense[1, :, 0, 1]]))


# --- easiest-per-class selection --------------------------------------------------------------------------------------


def test_easiest_per_class_mask_crafted() -> None:
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 2])
    difficulty = torch.tensor([0.9, 0.05, 0.1, 0.5, 0.01, 0.3, 0.99])
    keep = easiest_per_class_mask(difficulty, labels, 0.5, 3)
    # class 0 (4 px): ceil(2) = 2 -> 0.1, 0.3; class 1 (2 px): 1 -> 0.01; class 2 (1 px): ceil(0.5) = 1
    # class 1's pixels are all easier than class 0's, yet class 0 keeps its own quota (per-class independence)
    assert keep.tolist() == [False, False, True, False, True, True, True]
    # q 0.25: class 0 keeps ceil(1.0) = 1 pixel, classes 1 and 2 still keep one each
    assert easiest_per_class_mask(difficulty, labels, 0.25, 3).tolist() == [
        False,
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    assert easiest_per_class_mask(difficulty, labels, 1.0, 3).all()


def test_easiest_per_class_mask_exact_ceil_and_reference() -> None:
    labels = torch.zeros(25, dtype=torch.long)
    assert easiest_per_class_mask(torch.rand(25), labels, 0.28, 1).sum() == 7  # 0.28 * 25 is 7.000000000000001
    g = torch.Generator().manual_seed(4)
    labels, difficulty = torch.randint(0, 5, (200,), generator=g), torch.rand(200, generator=g)
    keep = easiest_per_class_mask(difficulty, labels, 0.37, 5)
    for k in range(5):
        idx = (labels == k).nonzero()[:, 0]
        quota = math.ceil(0.37 * len(idx))
        expected = set(idx[torch.argsort(difficulty[idx])[:quota]].tolist())
        assert set(idx[keep[idx]].tolist()) == expected


# --- schedule ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("progress", "beta", "q"), [(0.0, 0.0, 0.3), (0.25, 0.5, 0.65), (0.5, 1.0, 1.0), (1.0, 1, 1)])
def test_schedule_beta_and_q(progress: float, beta: float, q: float) -> None:
    b, qq, _ = schedule(progress, LossConfig())
    assert b == pytest.approx(beta) and qq == pytest.approx(q)


@pytest.mark.parametrize(("progress", "rho"), [(0.0, 0.0), (0.05, 0.0), (0.15, 0.5), (0.2, 1.0), (0.9, 1.0)])
def test_schedule_weight_ramp(progress: float, rho: float) -> None:
    assert schedule(progress, LossConfig())[2] == pytest.approx(rho)


def test_schedule_direct_none_and_erm() -> None:
    assert schedule(0.0, LossConfig(align="direct"))[:2] == (1.0, 1.0)
    assert schedule(0.7, LossConfig(method="erm")) == (0.0, 0.0, 0.0)
    assert schedule(0.7, LossConfig(reweight="none"))[2] == 0.0


# --- reliability ------------------------------------------------------------------------------------------------------


def test_reliability_weights_mean_one_clip_and_no_grad() -> None:
    g = torch.Generator().manual_seed(5)
    r = torch.rand(2, 6, 6, generator=g).requires_grad_()
    valid = torch.rand(2, 6, 6, generator=g) > 0.3
    w = reliability_weights(r, valid, eta=1.0, w_min=0.0, w_max=1e9, ramp=1.0)
    assert w[valid].mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w[~valid] == 0) and not w.requires_grad
    expected = r.detach()[valid] / r.detach()[valid].mean()
    assert torch.allclose(w[valid], expected, atol=1e-6)
    clipped = reliability_weights(r, valid, eta=2.0, w_min=0.5, w_max=1.5, ramp=1.0)
    assert clipped[valid].min() >= 0.5 and clipped[valid].max() <= 1.5
    assert (clipped[valid] == 0.5).any() and (clipped[valid] == 1.5).any()  # both bounds bind on uniform r^2
    half = reliability_weights(r, valid, eta=2.0, w_min=0.5, w_max=1.5, ramp=0.5)
    assert torch.allclose(half[valid], 1 + 0.5 * (clipped[valid] - 1))
    assert torch.all(reliability_weights(r, valid, eta=1.0, w_min=0.1, w_max=3.0, ramp=0.0)[valid] == 1)


def test_reliability_otp_and_ratio_match_independent_softmax() -> None:
    _, labels, dense, otp, vtp = _batch(6, size=4, feat=4)
    z = dense.detach() / dense.detach().norm(dim=1, keepdim=True)
    t = otp / otp.norm(dim=-1, keepdim=True)
    v = vtp.detach() / vtp.detach().norm(dim=-1, keepdim=True)
    p_otp = torch.softmax(torch.einsum("bdhw,kd->bhwk", z, t) / 0.07, dim=-1)
    p_vtp = torch.softmax(torch.einsum("bdhw,bkd->bhwk", z, v) / 0.07, dim=-1)
    valid = labels != 255
    y = labels.clamp_max(K - 1)
    at = p_otp.gather(-1, y[..., None])[..., 0]
    r = reliability(dense, labels, otp, None, mode="otp", tau_w=0.07)
    assert torch.allclose(r[valid], at[valid], rtol=1e-5) and torch.all(r[~valid] == 0)
    ratio = reliability(dense, labels, otp, vtp, mode="ratio", tau_w=0.07)
    expected = at / p_vtp.gather(-1, y[..., None])[..., 0]
    assert torch.allclose(ratio[valid], expected[valid], rtol=1e-4) and not ratio.requires_grad


def test_reliability_upsamples_logits_before_softmax() -> None:
    _, labels, dense, otp, _ = _batch(7, size=8, feat=4)
    z = F.normalize(dense.detach(), dim=1)
    logits = F.interpolate(torch.einsum("bdhw,kd->bkhw", z, otp) / 0.1, size=(8, 8), mode="bilinear")
    expected = torch.softmax(logits, dim=1).gather(1, labels.clamp_max(K - 1)[:, None])[:, 0]
    r = reliability(dense, labels, otp, mode="otp", tau_w=0.1)
    valid = labels != 255
    assert torch.allclose(r[valid], expected[valid], rtol=1e-5)


# --- ppar_loss --------------------------------------------------------------------------------------------------------


def _pa_reference(dense, labels, otp, vtp, cfg: LossConfig, beta: float, q: float):
    """L_pa and vo from the public building blocks plus an explicit loop for the VTP/OTP term."""
    feats, y, bidx = features_to_pixels(dense, labels, vtp, ignore_index=255)
    l_vtp = pixel_prototype_nce(feats, y, vtp, tau=cfg.tau, batch_index=bidx)
    cos = F.normalize(feats, dim=-1) @ F.normalize(otp, dim=-1).T
    difficulty = 1 - cos.gather(1, y[:, None])[:, 0]
    keep = easiest_per_class_mask(difficulty.detach(), y, q, K)
    l_otp = pixel_prototype_nce(feats[keep], y[keep], otp, tau=cfg.tau)
    pairs = []
    for b in range(vtp.shape[0]):
        for k in labels[b][labels[b] != 255].unique().tolist():
            pairs.append(pixel_prototype_nce(vtp[b, k][None], torch.tensor([k]), otp, tau=cfg.tau))
    vo = torch.stack(pairs).mean()
    return (1 - beta) * l_vtp + beta * l_otp + cfg.lambda_vo * vo, vo, keep.float().mean()


def test_erm_is_plain_cross_entropy() -> None:
    logits, labels, dense, otp, vtp = _batch(8)
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(method="erm"), progress=0.7)
    assert torch.allclose(terms.total, F.cross_entropy(logits, labels, ignore_index=255), atol=1e-6)
    assert terms.pa.item() == 0.0 and terms.vo.item() == 0.0 and terms.weights is None
    assert set(terms.as_floats()) >= {"total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q"}


@pytest.mark.parametrize(("progress", "beta", "q"), [(0.0, 0.0, 0.3), (0.25, 0.5, 0.65), (0.6, 1.0, 1.0)])
def test_progressive_matches_reference(progress: float, beta: float, q: float) -> None:
    logits, labels, dense, otp, vtp = _batch(9)
    cfg = LossConfig(reweight="none")
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=progress)
    pa, vo, frac = _pa_reference(dense, labels, otp, vtp, cfg, beta, q)
    assert (terms.beta, terms.q) == pytest.approx((beta, q))
    assert torch.allclose(terms.pa, pa, atol=1e-5) and torch.allclose(terms.vo, vo, atol=1e-5)
    assert terms.aligned_fraction.item() == pytest.approx(frac.item())
    seg = F.cross_entropy(logits, labels, ignore_index=255)
    assert torch.allclose(terms.total, seg + cfg.lambda_pa * pa, atol=1e-5)


def test_vtp_otp_term_averages_over_present_classes_only() -> None:
    logits, labels, dense, otp, vtp = _batch(18)
    labels[0] = torch.where(labels[0] == 255, 255, labels[0] % 2)  # image 0: classes {0, 1}
    labels[1, :, :4], labels[1, :, 4:] = 3, 255  # image 1: class 3 only
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(reweight="none"), progress=0.5)
    pairs = [(0, 0), (0, 1), (1, 3)]
    expected = torch.stack([pixel_prototype_nce(vtp[b, k][None], torch.tensor([k]), otp, tau=0.07) for b, k in pairs])
    assert torch.allclose(terms.vo, expected.mean(), atol=1e-6)


def test_progressive_start_uses_only_vtp_and_end_only_otp() -> None:
    logits, labels, dense, otp, vtp = _batch(10)
    cfg = LossConfig(reweight="none")
    start = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=0.0)
    feats, y, bidx = features_to_pixels(dense, labels, vtp)
    l_vtp = pixel_prototype_nce(feats, y, vtp, tau=cfg.tau, batch_index=bidx)
    assert torch.allclose(start.pa, l_vtp + cfg.lambda_vo * start.vo, atol=1e-6)
    end = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=0.5)
    l_otp = pixel_prototype_nce(feats, y, otp, tau=cfg.tau)
    assert torch.allclose(end.pa, l_otp + cfg.lambda_vo * end.vo, atol=1e-6)
    assert end.aligned_fraction.item() == 1.0


def test_direct_ignores_the_vtp() -> None:
    logits, labels, dense, otp, vtp = _batch(11)
    cfg = LossConfig(align="direct", reweight="none")
    a = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=0.0)
    b = ppar_loss(logits, labels, dense, otp, torch.randn_like(vtp), cfg=cfg, progress=0.0)
    c = ppar_loss(logits, labels, dense, otp, None, cfg=cfg, progress=0.0)
    assert a.total.item() == b.total.item() == c.total.item() and a.vo.item() == 0.0
    feats, y, _ = features_to_pixels(dense, labels, None)
    assert torch.allclose(a.pa, pixel_prototype_nce(feats, y, otp, tau=cfg.tau), atol=1e-6)


def test_align_none_has_no_pa_term() -> None:
    logits, labels, dense, otp, vtp = _batch(12)
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(align="none", reweight="none"), progress=0.3)
    assert terms.pa.item() == 0.0 and torch.allclose(terms.total, F.cross_entropy(logits, labels, ignore_index=255))


def test_all_ignored_labels_give_finite_zero_pixel_losses_with_grad() -> None:
    logits, labels, dense, otp, vtp = _batch(13)
    labels = torch.full_like(labels, 255)
    for align in ("direct", "progressive"):
        for progress in (0.0, 0.3, 1.0):
            terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(align=align), progress=progress)
            assert terms.seg.item() == 0.0 and torch.isfinite(terms.total)
            # with no labelled pixel, only the VTP/OTP term (over all K, by definition) can be non-zero
            assert terms.pa.item() == pytest.approx(terms.vo.item() * 0.1)
            terms.total.backward()
    direct = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(align="direct"), progress=0.5)
    assert direct.total.item() == 0.0 and direct.total.requires_grad


def test_gradients_reach_logits_dense_vtp_but_not_through_weights() -> None:
    logits, labels, dense, otp, vtp = _batch(14)
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3)
    terms.total.backward()
    for leaf in (logits, dense, vtp):
        assert leaf.grad is not None and torch.count_nonzero(leaf.grad) > 0
    assert terms.weights is not None and not terms.weights.requires_grad
    # align none + otp weights: dense influences the loss only through the weights, so it must get no gradient
    logits2, labels2, dense2, otp2, vtp2 = _batch(14)
    terms2 = ppar_loss(logits2, labels2, dense2, otp2, vtp2, cfg=LossConfig(align="none"), progress=0.9)
    terms2.total.backward()
    assert dense2.grad is None or torch.count_nonzero(dense2.grad) == 0
    assert terms2.weights is not None and terms2.weights[labels2 != 255].std() > 0.01  # the weights do depend on dense


def test_reweighting_otp_and_ratio_weights_match_reference() -> None:
    logits, labels, dense, otp, vtp = _batch(15)
    valid = labels != 255
    for mode in ("otp", "ratio"):
        cfg = LossConfig(align="none", reweight=mode, w_min=0.0, w_max=1e6)
        terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=0.9)
        r = reliability(dense, labels, otp, vtp, mode=mode, tau_w=cfg.tau_w)
        w = reliability_weights(r, valid, eta=1.0, w_min=0.0, w_max=1e6, ramp=1.0)
        assert terms.weights is not None and torch.allclose(terms.weights, w, rtol=1e-5)
        assert terms.mean_weight.item() == pytest.approx(1.0, abs=1e-5)  # no clipping binds: mean one
        assert torch.allclose(terms.seg, weighted_cross_entropy(logits, labels, w), rtol=1e-5)
    warm = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(align="none"), progress=0.05)
    assert warm.weights is not None and torch.all(warm.weights[valid] == 1) and warm.weight_ramp == 0.0
    assert torch.allclose(warm.seg, F.cross_entropy(logits, labels, ignore_index=255), atol=1e-6)


def test_loss_is_float32_under_bf16_autocast() -> None:
    logits, labels, dense, otp, vtp = _batch(16)
    ref = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3)
    assert auto.total.dtype == torch.float32 and torch.allclose(auto.total, ref.total, atol=1e-6)


def test_global_vtp_is_broadcast_to_every_image() -> None:
    logits, labels, dense, otp, vtp = _batch(17)
    shared = vtp.detach()[0]
    a = ppar_loss(logits, labels, dense, otp, shared, cfg=LossConfig(), progress=0.2)
    b = ppar_loss(logits, labels, dense, otp, shared.expand(2, K, D), cfg=LossConfig(), progress=0.2)
    assert torch.allclose(a.total, b.total)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "dann"),
        ("align", "soft"),
        ("reweight", "x"),
        ("tau", 0.0),
        ("lambda_pa", -1.0),
        ("w_min", 5.0),
        ("q_start", 1.5),
        ("eta", float("nan")),
        ("ignore_index", 2.5),
    ],
)
def test_config_validate_names_the_field(field: str, value: object) -> None:
    LossConfig().validate()
    with pytest.raises(PparError, match=field):
        replace(LossConfig(), **{field: value}).validate()


# --- fixed shapes: the masked formulas equal the selections they replace ----------------------------------------------


def test_easiest_per_class_mask_with_invalid_pixels_keeps_what_the_valid_pixels_alone_would() -> None:
    g = torch.Generator().manual_seed(21)
    labels, difficulty = torch.randint(0, 5, (300,), generator=g), torch.rand(300, generator=g)
    difficulty[::7] = difficulty[3]  # ties: the lower index wins, among the valid pixels as without the others
    valid = torch.rand(300, generator=g) > 0.3
    for q in (0.0, 0.2, 0.37, 0.86, 1.0):
        keep = easiest_per_class_mask(difficulty, labels, q, 5, valid=valid)
        alone = easiest_per_class_mask(difficulty[valid], labels[valid], q, 5)
        assert torch.equal(keep[valid], alone) and not keep[~valid].any()
    assert not easiest_per_class_mask(difficulty, labels, 0.5, 5, valid=torch.zeros(300, dtype=torch.bool)).any()


@pytest.mark.parametrize("align", ["direct", "progressive"])
@pytest.mark.parametrize("progress", [0.0, 0.25, 0.6])
def test_alignment_values_and_gradients_match_the_selected_pixel_reference(align: str, progress: float) -> None:
    logits, labels, dense, otp, vtp = _batch(19, ignore_frac=0.4)
    cfg = LossConfig(align=align, reweight="none")
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=progress)
    grads = torch.autograd.grad(terms.pa, (dense, vtp), allow_unused=True)
    if align == "direct":
        feats, y, _ = features_to_pixels(dense, labels, None)
        pa = pixel_prototype_nce(feats, y, otp, tau=cfg.tau)
        frac = torch.tensor(1.0)
    else:
        beta, q, _ = schedule(progress, cfg)
        pa, _, frac = _pa_reference(dense, labels, otp, vtp, cfg, beta, q)
    ref_grads = torch.autograd.grad(pa, (dense, vtp), allow_unused=True)
    assert torch.allclose(terms.pa, pa, rtol=1e-6, atol=1e-6)
    assert terms.aligned_fraction.item() == pytest.approx(frac.item(), rel=1e-6)
    for got, ref in zip(grads, ref_grads, strict=True):
        if ref is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            assert got is not None and torch.allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_logged_terms_stack_on_the_device_and_read_as_before() -> None:
    logits, labels, dense, otp, vtp = _batch(20)
    terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=LossConfig(), progress=0.3)
    stacked = terms.stacked()
    assert stacked.dtype == torch.float32 and stacked.shape == (6,) and not stacked.requires_grad
    floats = terms.as_floats()
    assert list(floats) == ["total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q", "weight_ramp"]
    for name in ("total", "seg", "pa", "vo", "mean_weight", "aligned_fraction"):
        assert floats[name] == getattr(terms, name).item()
    for name in ("beta", "q", "weight_ramp"):  # rounded to float32, as the log has always shown them
        assert floats[name] == torch.tensor(getattr(terms, name)).item()
