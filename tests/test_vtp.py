"""Visual Text Prototypes: decoder residual at init, EMA update by hand, the mix formula, the DDP reduce hook."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ppar_core.errors import PparError
from ppar_core.modeling.vtp import ContextDecoder, VisualTextPrototypes, VTPConfig

K, D = 5, 32
SMALL_DECODER = VTPConfig(decoder_width=32, decoder_layers=2, decoder_heads=4)


def _otp() -> torch.Tensor:
    return F.normalize(torch.randn(K, D), dim=-1)


def _image(batch: int = 2, h: int = 3, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, D, h, w), torch.randn(batch, D)


def test_decoder_starts_at_the_otp() -> None:
    torch.manual_seed(0)
    otp = _otp()
    vtp = VisualTextPrototypes(otp, VTPConfig())  # the real defaults: width 256, 3 layers, gamma 1e-4
    dense, g = _image()
    v = vtp(otp, dense, g)
    assert v.shape == (2, K, D)
    assert (v - otp).abs().max() < 1e-3
    assert (v - otp).abs().max() > 0  # the residual is there, only small
    assert torch.equal(vtp.gamma, torch.full((D,), 1e-4))
    assert not hasattr(vtp, "memory")


def test_decoder_output_depends_on_the_image_and_only_its_own() -> None:
    torch.manual_seed(0)
    otp = _otp()
    vtp = VisualTextPrototypes(otp, VTPConfig(decoder_width=32, decoder_layers=2, decoder_heads=4, gamma_init=1.0))
    dense, g = _image(batch=3)
    v = vtp(otp, dense, g)
    assert (v[0] - v[1]).abs().max() > 1e-3
    # Changing only the dense tokens (same global token) changes the prototypes too. (A random change: a constant
    # shift or scale over D would vanish in the memory's LayerNorm.)
    v_other = vtp(otp, dense[:1] + torch.randn_like(dense[:1]), g[:1])
    assert (v_other[0] - v[0]).abs().max() > 1e-3
    # Batch independence: the same image alone gives the same prototypes.
    torch.testing.assert_close(vtp(otp, dense[2:], g[2:]), v[2:], atol=1e-5, rtol=1e-5)


def test_decoder_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    otp = _otp()
    vtp = VisualTextPrototypes(otp, SMALL_DECODER)
    dense, g = _image()
    dense.requires_grad_(True)
    v = vtp(otp, dense, g)
    (v * torch.randn_like(v)).sum().backward()
    params = list(vtp.named_parameters())
    assert {name.split(".")[0] for name, _ in params} == {"decoder", "gamma"}
    missing = [name for name, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert dense.grad is not None and dense.grad.abs().sum() > 0


def test_context_decoder_shapes_with_other_widths() -> None:
    decoder = ContextDecoder(24, width=16, layers=1, heads=2)
    out = decoder(torch.randn(2, 7, 24), torch.randn(2, 1 + 12, 24))
    assert out.shape == (2, 7, 24)


def test_decoder_update_is_a_no_op_that_never_reduces() -> None:
    otp = _otp()
    vtp = VisualTextPrototypes(otp, SMALL_DECODER)
    before = {k: v.clone() for k, v in vtp.state_dict().items()}
    calls: list[torch.Tensor] = []
    vtp.update(torch.randn(1, D, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), all_reduce=calls.append)
    assert calls == []
    assert all(torch.equal(before[k], v) for k, v in vtp.state_dict().items())


def test_ema_memory_initialisation_and_forward() -> None:
    torch.manual_seed(0)
    otp = _otp()
    from_otp = VisualTextPrototypes(otp, VTPConfig(kind="ema"))
    torch.testing.assert_close(from_otp.memory, otp)
    visual = torch.randn(K, D) * 3.0
    vtp = VisualTextPrototypes(otp, VTPConfig(kind="ema"), init_visual=visual)
    torch.testing.assert_close(vtp.memory, F.normalize(visual, dim=-1))
    assert list(vtp.parameters()) == []
    dense, g = _image(batch=3)
    v = vtp(otp, dense, g)
    assert v.shape == (3, K, D)
    assert all(torch.equal(v[b], vtp.memory) for b in range(3))
    # A checkpoint round trip keeps the memory (a persistent buffer).
    fresh = VisualTextPrototypes(otp, VTPConfig(kind="ema"))
    fresh.load_state_dict(vtp.state_dict())
    assert torch.equal(fresh.memory, vtp.memory)


def _hand_vtp(kind: str = "ema", momentum: float = 0.9) -> tuple[VisualTextPrototypes, torch.Tensor]:
    s = 1 / math.sqrt(2)
    otp = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]])  # K=3, D=2
    return VisualTextPrototypes(otp, VTPConfig(kind=kind, momentum=momentum)), otp


def test_ema_update_by_hand() -> None:
    vtp, otp = _hand_vtp()
    # Pixels (3,4) and (0,1) are class 0; (5,5) is ignored. Normalised: (0.6,0.8) and (0,1): mean (0.3,0.9).
    dense = torch.tensor([[3.0, 0.0, 5.0], [4.0, 1.0, 5.0]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 255]]])
    before = vtp.memory.clone()
    torch.testing.assert_close(before, otp)
    vtp.update(dense, labels)
    expected0 = torch.tensor([0.9 + 0.1 * 0.3, 0.1 * 0.9])
    expected0 = expected0 / expected0.norm()  # (0.93, 0.09) / |.|
    torch.testing.assert_close(vtp.memory[0], expected0)
    assert torch.equal(vtp.memory[1:], before[1:])  # absent classes untouched, bit for bit


def test_ema_update_respects_a_custom_ignore_index_and_rejects_bad_labels() -> None:
    vtp, otp = _hand_vtp()
    dense = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).reshape(1, 2, 1, 2)
    vtp.update(dense, torch.tensor([[[1, -1]]]), ignore_index=-1)
    expected1 = torch.tensor([0.0, 0.9 + 0.1 * 1.0])  # pixel (0,1) is class 1: its own direction, norm 1
    torch.testing.assert_close(vtp.memory[1], expected1)
    torch.testing.assert_close(vtp.memory[0], otp[0])
    with pytest.raises(ValueError, match="outside"):
        vtp.update(dense, torch.tensor([[[3, 0]]]))
    with pytest.raises(ValueError, match="labels_small"):
        vtp.update(dense, torch.tensor([[0, 0]]))


def test_all_reduce_hook_receives_sums_and_counts() -> None:
    torch.manual_seed(0)
    otp = _otp()
    dense = torch.randn(2, D, 3, 4)
    labels = torch.randint(0, 3, (2, 3, 4))  # classes 3 and 4 absent
    labels[0, 0, 0] = 255
    plain = VisualTextPrototypes(otp, VTPConfig(kind="ema"))
    plain.update(dense, labels)

    seen: list[torch.Tensor] = []

    def doubling(stats: torch.Tensor) -> torch.Tensor:
        seen.append(stats.clone())
        return 2 * stats

    doubled = VisualTextPrototypes(otp, VTPConfig(kind="ema"))
    doubled.update(dense, labels, all_reduce=doubling)
    assert len(seen) == 1 and seen[0].shape == (K, D + 1)
    counts = torch.bincount(labels[labels != 255], minlength=K).float()
    assert torch.equal(seen[0][:, D], counts)
    z = F.normalize(dense, dim=1).permute(0, 2, 3, 1)
    torch.testing.assert_close(seen[0][0, :D], z[(labels == 0)].sum(0))
    torch.testing.assert_close(doubled.memory, plain.memory)
    assert torch.equal(doubled.memory[3:], VisualTextPrototypes(otp, VTPConfig(kind="ema")).memory[3:])

    # torch.distributed.all_reduce style: reduces in place and returns None.
    def doubling_in_place(stats: torch.Tensor) -> None:
        stats.mul_(2)

    in_place = VisualTextPrototypes(otp, VTPConfig(kind="ema"))
    in_place.update(dense, labels, all_reduce=doubling_in_place)
    torch.testing.assert_close(in_place.memory, plain.memory)


def test_two_simulated_ranks_equal_one_big_batch() -> None:
    torch.manual_seed(0)
    otp = _otp()
    dense = torch.randn(4, D, 2, 3)
    labels = torch.randint(0, K, (4, 2, 3))
    labels[:2][labels[:2] == 1] = 255  # class 1 only on "rank 1": rank 0 alone would not move it
    labels[2, 0, 0] = 1

    captured: list[torch.Tensor] = []

    def capture(stats: torch.Tensor) -> torch.Tensor:
        captured.append(stats.clone())
        return stats

    rank1 = VisualTextPrototypes(otp, VTPConfig(kind="ema", momentum=0.5))
    rank1.update(dense[2:], labels[2:], all_reduce=capture)
    rank0 = VisualTextPrototypes(otp, VTPConfig(kind="ema", momentum=0.5))
    rank0.update(dense[:2], labels[:2], all_reduce=lambda t: t + captured[0])
    single = VisualTextPrototypes(otp, VTPConfig(kind="ema", momentum=0.5))
    single.update(dense, labels)
    torch.testing.assert_close(rank0.memory, single.memory)
    assert not torch.allclose(rank0.memory[1], otp[1])


def test_mix_formula_by_hand() -> None:
    otp = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    visual = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    vtp = VisualTextPrototypes(otp, VTPConfig(kind="mix", alpha=0.7), init_visual=visual)
    v = vtp(otp, torch.randn(2, 2, 3, 3), torch.randn(2, 2))
    expected0 = torch.tensor([0.7, 0.3]) / math.hypot(0.7, 0.3)
    torch.testing.assert_close(v[:, 0], expected0.expand(2, -1))
    torch.testing.assert_close(v[:, 1], torch.tensor([[0.0, 1.0]] * 2))
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 2))


def test_forward_returns_a_copy_safe_from_later_updates() -> None:
    torch.manual_seed(0)
    otp = _otp()
    vtp = VisualTextPrototypes(otp, VTPConfig(kind="ema", momentum=0.5))
    weight = torch.randn(K, D, requires_grad=True)
    dense, g = _image()
    v = vtp(otp, dense, g)
    before = v.clone()
    loss = (F.normalize(v, dim=-1) * weight).sum()
    vtp.update(dense, torch.zeros(2, 3, 4, dtype=torch.long))
    assert not torch.equal(vtp.memory[0], otp[0])
    assert torch.equal(v, before)
    loss.backward()  # would fail if the graph had saved a view of the updated buffer
    assert weight.grad is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "attention"),
        ("decoder_width", 0),
        ("decoder_layers", 0),
        ("decoder_heads", 0),
        ("decoder_heads", 3),  # 256 is not divisible by 3
        ("gamma_init", float("inf")),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("alpha", 1.5),
    ],
)
def test_vtp_config_validation_names_the_field(field: str, value: object) -> None:
    cfg = VTPConfig(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(PparError, match=f"vtp.{field}"):
        cfg.validate()
    with pytest.raises(PparError, match=f"vtp.{field}"):
        VisualTextPrototypes(_otp(), cfg)


def test_visual_prototypes_of_the_wrong_shape_are_rejected() -> None:
    assert VTPConfig().validate() == VTPConfig()
    with pytest.raises(PparError, match="visual prototypes"):
        VisualTextPrototypes(_otp(), VTPConfig(kind="mix"), init_visual=torch.randn(K, D + 1))
    with pytest.raises(PparError, match="otp"):
        VisualTextPrototypes(torch.randn(D), VTPConfig())
