"""The dense CLIP encoder reproduces open_clip with the same weights; weights load safely from every file kind."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ppar_core.clip import (
    CLIP_PRESETS,
    ClipPreset,
    DenseClipEncoder,
    build_clip_model,
    get_preset,
    resize_pos_embed_grid,
    resolve_quick_gelu,
)
from ppar_core.clip import encoder as encoder_module
from ppar_core.clip.encoder import fused_block_forward, runs_fused
from ppar_core.clip.weights import count_parameters, load_state_dict_file
from ppar_core.errors import PparError

TINY_RN_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_RN = ClipPreset(
    name="tiny-rn",
    arch=None,
    kind="resnet",
    embed_dim=32,
    width=8,
    patch_size=32,
    image_size=64,
    native_image_size=64,
    out_indices=(0, 1, 2, 3),
    feature_strides=(4, 8, 16, 32),
    feature_channels=(32, 64, 128, 256),
    model_config=TINY_RN_CONFIG,
)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_clip_model("tiny")


@pytest.fixture(scope="module")
def tiny_rn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_clip_model(TINY_RN)
    # Why: open_clip zero-initialises each block's last BN scale; random values make the residual paths matter.
    with torch.no_grad():
        for name, param in model.visual.named_parameters():
            if name.endswith("bn3.weight"):
                param.normal_(1.0, 0.2)
    return model


def _encoder(model: torch.nn.Module, preset: ClipPreset | str) -> DenseClipEncoder:
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return DenseClipEncoder(model.visual, preset).eval()


def test_presets_are_consistent() -> None:
    assert set(CLIP_PRESETS) == {"vit-b16", "vit-l14", "rn50", "rn101", "tiny"}
    for preset in CLIP_PRESETS.values():
        assert len(preset.out_indices) == len(preset.feature_strides) == len(preset.feature_channels)
        assert preset.image_size % preset.patch_size == 0
    with pytest.raises(PparError, match="vit-b16, vit-l14"):
        get_preset("vit-h14")


def test_vit_global_embedding_matches_encode_image(tiny: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = _encoder(tiny, "tiny")(images).global_embedding
        reference = tiny.encode_image(images)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_vit_dense_and_features_match_open_clip_tokens(tiny: torch.nn.Module) -> None:
    visual = copy.deepcopy(tiny.visual)
    visual.output_tokens = True
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = _encoder(tiny, "tiny")(images)
        _, tokens = visual(images)  # (B, 196, C), after ln_post, before proj
        inter = visual.forward_intermediates(images, indices=[0, 1, 2, 3], intermediates_only=True)
    reference = (tokens @ visual.proj).reshape(2, 14, 14, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.dense, reference, atol=1e-5, rtol=0)
    assert len(out.features) == 4
    for ours, theirs in zip(out.features, inter["image_intermediates"], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ls_init_value", [None, 0.5])
def test_fused_attention_block_equals_open_clips_block(ls_init_value: float | None) -> None:
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(64, 4, ls_init_value=ls_init_value).eval()
    assert runs_fused(block)
    x = torch.randn(3, 50, 64)
    with torch.inference_mode():  # open_clip's side takes nn.MultiheadAttention's fast path here
        torch.testing.assert_close(fused_block_forward(block, x), block(x), atol=1e-5, rtol=0)
    # With gradients: same output, same gradients for the input and every weight.
    grads = []
    for forward in (fused_block_forward, lambda b, t: b(t)):
        block.zero_grad()
        inp = x.clone().requires_grad_(True)
        out = forward(block, inp)
        out.pow(2).sum().backward()
        grads.append([out.detach(), inp.grad] + [p.grad.clone() for p in block.parameters()])
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # Blocks it cannot compute exactly fall back to their own forward.
    assert not runs_fused(CustomResidualAttentionBlock(64, 4))
    assert not runs_fused(ResidualAttentionBlock(64, 4, is_cross_attention=True))


def test_vit_encoder_runs_its_blocks_without_multihead_attention(
    tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The encoder computes attention itself (fused SDPA): nn.MultiheadAttention's forward, whose CPU fast path builds
    # the whole attention matrix, is never called, and the result is open_clip's own.
    encoder = _encoder(tiny, "tiny").eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = encoder(images).dense

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nn.MultiheadAttention.forward was called")

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", refuse)
    with torch.inference_mode():
        torch.testing.assert_close(encoder(images).dense, expected, atol=0, rtol=0)


def test_position_embedding_identity_at_native_size_and_constant_preserved(tiny: torch.nn.Module) -> None:
    encoder = _encoder(tiny, "tiny")
    assert encoder.native_grid == (14, 14)
    assert encoder.position_embedding((14, 14)) is tiny.visual.positional_embedding
    pos = torch.randn(1 + 14 * 14, 8)
    assert resize_pos_embed_grid(pos, (14, 14), (14, 14)) is pos
    # A constant grid stays constant under bicubic resampling, and the class token is never touched.
    const = torch.cat([torch.full((1, 8), 7.0), torch.full((196, 8), 3.0)])
    resized = resize_pos_embed_grid(const, (14, 14), (32, 64))
    assert resized.shape == (1 + 32 * 64, 8)
    torch.testing.assert_close(resized[0], const[0])
    torch.testing.assert_close(resized[1:], torch.full((32 * 64, 8), 3.0))


def test_vit_wide_input_shapes(tiny: torch.nn.Module) -> None:
    with torch.no_grad():
        out = _encoder(tiny, "tiny")(torch.randn(1, 3, 512, 1024))
    assert out.dense.shape == (1, 64, 32, 64)
    assert out.global_embedding.shape == (1, 64)
    assert [tuple(f.shape) for f in out.features] == [(1, 64, 32, 64)] * 4
    with pytest.raises(PparError, match="multiple of 16"):
        _encoder(tiny, "tiny")(torch.randn(1, 3, 100, 128))


def test_gradients_reach_every_visual_parameter(tiny: torch.nn.Module) -> None:
    visual = copy.deepcopy(tiny.visual)
    encoder = DenseClipEncoder(visual, get_preset("tiny")).train()
    out = encoder(torch.randn(2, 3, 64, 96))  # non-native grid: the gradient passes through the interpolation
    loss = out.dense.square().mean() + out.global_embedding.square().mean() + sum(f.mean() for f in out.features)
    loss.backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    # A trainable position embedding is resized afresh at every call: a second backward (a new graph) works, and an
    # update of the parameter reaches the next forward.
    with torch.no_grad():
        encoder.visual.positional_embedding.add_(1.0)
    again = encoder(torch.randn(2, 3, 64, 96))
    again.dense.square().mean().backward()
    fresh = DenseClipEncoder(copy.deepcopy(encoder.visual), get_preset("tiny")).train()
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(encoder(x).dense, fresh(x).dense, atol=1e-6, rtol=0)


def test_position_cache_follows_weight_updates(tiny: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = DenseClipEncoder(copy.deepcopy(tiny.visual), get_preset("tiny")).eval()
    encoder.visual.positional_embedding.requires_grad_(False)
    images = torch.randn(1, 3, 64, 64)
    resizes: list[tuple[int, int]] = []
    real_resize = encoder_module.resize_pos_embed_grid

    def counting(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
        resizes.append(new)
        return real_resize(pos, old, new)

    monkeypatch.setattr(encoder_module, "resize_pos_embed_grid", counting)
    first = encoder(images).dense
    torch.testing.assert_close(encoder(images).dense, first, atol=0, rtol=0)
    assert resizes == [(4, 4)]  # frozen weights: resized once for the grid, then reused
    with torch.no_grad():
        encoder.visual.positional_embedding.mul_(2.0)  # what an optimizer step or load_state_dict does in place
    second = encoder(images).dense
    fresh = DenseClipEncoder(copy.deepcopy(encoder.visual), get_preset("tiny")).eval()
    fresh.visual.positional_embedding.requires_grad_(True)  # uncached path
    with torch.no_grad():
        torch.testing.assert_close(second, fresh(images).dense, atol=1e-6, rtol=0)
    assert not torch.allclose(first, second)


def test_resnet_global_embedding_matches_encode_image_at_native_size(tiny_rn: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = _encoder(tiny_rn, TINY_RN)(images).global_embedding
        reference = tiny_rn.encode_image(images)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_resnet_dense_path_and_resized_pool(tiny_rn: torch.nn.Module) -> None:
    encoder = _encoder(tiny_rn, TINY_RN)
    visual = tiny_rn.visual
    images = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        out = encoder(images)
        layer4 = visual.forward_intermediates(images, indices=[4], intermediates_only=True)["image_intermediates"][0]
        # Reference global: open_clip's own attention pool given the position embedding resized to 4 x 6.
        pool = copy.deepcopy(visual.attnpool)
        pool.positional_embedding = torch.nn.Parameter(
            resize_pos_embed_grid(visual.attnpool.positional_embedding, (2, 2), (4, 6))
        )
        reference_global = pool(layer4)
        # Reference dense: value then output projection of every (position-embedded) layer-4 cell.
        cells = layer4.flatten(2).transpose(1, 2) + pool.positional_embedding[1:]
        reference_dense = F.linear(F.linear(cells, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight)
        reference_dense = (reference_dense + pool.c_proj.bias).transpose(1, 2).reshape(2, 32, 4, 6)
    assert out.dense.shape == (2, 32, 4, 6)
    assert [tuple(f.shape[1:]) for f in out.features] == [(32, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6)]
    torch.testing.assert_close(out.global_embedding, reference_global, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.dense, reference_dense, atol=1e-5, rtol=0)


def test_safetensors_file_round_trips_exactly(tiny: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    loaded = build_clip_model("tiny", pretrained=str(path))
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_open_clip_checkpoint_with_ddp_prefix_loads(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    loaded = build_clip_model("tiny", pretrained=str(path))
    torch.testing.assert_close(loaded.visual.proj, tiny.visual.proj, atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit:FutureWarning")
def test_torchscript_file_loads_without_unpickling(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "openai-style.pt"
    images, text = torch.randn(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace(copy.deepcopy(tiny).eval(), (images, text), check_trace=False)
    traced.save(str(path))
    state = load_state_dict_file(path)
    assert set(state) >= set(tiny.state_dict())
    assert resolve_quick_gelu("tiny", str(path)) is True  # OpenAI's TorchScript files use QuickGELU
    loaded = build_clip_model("tiny", pretrained=str(path), quick_gelu=False)
    torch.testing.assert_close(loaded.token_embedding.weight, tiny.token_embedding.weight, atol=0, rtol=0)


class _NotATensor:
    pass


def test_pickle_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"payload": _NotATensor()}, path)
    with pytest.raises(PparError, match="pickled Python objects"):
        build_clip_model("tiny", pretrained=str(path))


def test_truncated_and_foreign_files_fail_clearly(tiny: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PparError, match="cut.safetensors"):
        build_clip_model("tiny", pretrained=str(path))
    other = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in build_clip_model(TINY_RN).state_dict().items()}, str(other))
    with pytest.raises(PparError, match=r"do not fit this architecture \(missing .*unexpected visual\.attnpool"):
        build_clip_model("tiny", pretrained=str(other))


def test_unknown_tag_and_offline_download_fail_fast() -> None:
    with pytest.raises(PparError, match="neither an existing file nor a tag"):
        build_clip_model("tiny", pretrained="openai")
    start = time.perf_counter()
    with pytest.raises(PparError, match=r"HF_HUB_OFFLINE.*--pretrained PATH"):
        build_clip_model("vit-b16", pretrained="openai")  # conftest sets HF_HUB_OFFLINE=1
    assert time.perf_counter() - start < 10


def test_quick_gelu_follows_the_weights(tiny: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    assert resolve_quick_gelu("vit-b16", "openai") is True
    assert resolve_quick_gelu("vit-b16", "laion2b_s34b_b88k") is False
    path = tmp_path / "flagged.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(path), metadata={"quick_gelu": "true"})
    assert resolve_quick_gelu("tiny", str(path)) is True


def test_parameter_counts_match_published_sizes() -> None:
    # Published totals of CLIP ViT-B/16 and RN50 (image + text towers).
    assert sum(count_parameters("vit-b16")) == 149_620_737
    assert sum(count_parameters("rn50")) == 102_007_137
    tiny = build_clip_model("tiny")
    assert sum(count_parameters("tiny")) == sum(p.numel() for p in tiny.parameters())
