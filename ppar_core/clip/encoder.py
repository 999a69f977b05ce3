"""Dense CLIP image features: the one module that knows open_clip's image-tower internals.

`DenseClipEncoder` wraps an open_clip image tower (`model.visual`, a `VisionTransformer` or a `ModifiedResNet`) and
runs it once per batch to return three things: intermediate feature maps for the decode head, dense joint-space
embeddings `Z` for the prototype losses, and the global image embedding. The tower is kept as the attribute `visual`
so parameter names stay those of open_clip (`visual.transformer.resblocks.0...`), and checkpoints stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ppar_core.clip.presets import ClipPreset
from ppar_core.errors import PparError

if TYPE_CHECKING:
    from open_clip.transformer import ResidualAttentionBlock


@dataclass
class EncoderOutput:
    """What one forward pass of `DenseClipEncoder` returns (B images of H x W pixels)."""

    features: list[Tensor]  # one (B, C_i, H/s_i, W/s_i) map per entry of the preset's out_indices
    dense: Tensor  # (B, D, H/p, W/p): tokens through the tower's final norm and projection (ResNet: p = 32)
    global_embedding: Tensor  # (B, D): what open_clip's encode_image returns (not normalised)


def resize_pos_embed_grid(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resample a position embedding with one leading class token to a new token grid.

    pos (1 + h0*w0, C) float -> (1 + h1*w1, C), bicubic on the grid, class token untouched. Returns `pos` itself
    (the identity, bit for bit) when the grids are equal.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls_token, grid = pos[:1], pos[1:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    # Why float32: bicubic kernels are not implemented for every half type on every device.
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], channels)
    return torch.cat([cls_token, grid], dim=0)


def runs_fused(block: nn.Module) -> bool:
    """Whether `fused_block_forward` computes this block exactly: open_clip's plain `ResidualAttentionBlock`
    (pre-norm, batch-first `nn.MultiheadAttention` with packed q/k/v weights, no extra key/value bias)."""
    # open_clip takes about 6 s to import: it is loaded where a tower exists, so that commands which only read
    # configs and reports (which import this module through the model config) never pay for it.
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and not hasattr(block, "ln_1_kv")
    )


def fused_block_forward(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """open_clip's `ResidualAttentionBlock.forward(x)` (self-attention, no mask) with the attention computed by
    `F.scaled_dot_product_attention`. x (B, N, C) -> (B, N, C); same weights, same result up to float rounding.

    Why: under `torch.inference_mode()` / `no_grad`, `nn.MultiheadAttention` takes its "fast path"
    (`torch._native_multi_head_attention`), which on the CPU materialises the (B, heads, N, N) attention matrix:
    192 MB per block for 4 windows of 512x512 (1025 tokens each), and a quarter of the block's time. SDPA picks a
    fused (flash) kernel on CPU and GPU, which never holds that matrix. With gradients, `nn.MultiheadAttention` calls
    SDPA itself, so training computes what it computed before.
    """
    attn = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # each (B, heads, N, C/h)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _plain_block_forward(block: nn.Module, x: Tensor) -> Tensor:
    return block(x)


class DenseClipEncoder(nn.Module):
    """An open_clip image tower that returns dense features for any input size that is a multiple of its stride.

    Gradients flow into the tower's weights (freeze them with `requires_grad_(False)` where wanted). Position
    embeddings are interpolated to each input's token grid; the resampled copy is cached per grid only when no
    gradient has to reach the embedding, and the cache key includes the parameter's version counter, so an
    optimizer step or `load_state_dict` can never leave a stale copy behind.
    """

    def __init__(self, visual: nn.Module, preset: ClipPreset) -> None:
        super().__init__()
        from open_clip.modified_resnet import ModifiedResNet  # lazy, as in `runs_fused`
        from open_clip.transformer import VisionTransformer

        if preset.kind == "vit":
            if not isinstance(visual, VisionTransformer):
                raise TypeError(f"preset {preset.name} is a ViT but the tower is a {type(visual).__name__}")
            if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
                raise TypeError("only CLIP-style ViTs (class-token pooling, no attentional pooler) are supported")
            if not visual.transformer.batch_first:
                raise TypeError("the ViT's transformer must be batch-first (open_clip >= 2.24 builds it so)")
            self._native_grid = tuple(int(g) for g in visual.grid_size)
            self.stride = int(visual.patch_size[0])
            num_stages = len(visual.transformer.resblocks)
            fused = all(runs_fused(block) for block in visual.transformer.resblocks)
            self._run_block = fused_block_forward if fused else _plain_block_forward
        elif preset.kind == "resnet":
            if not isinstance(visual, ModifiedResNet):
                raise TypeError(f"preset {preset.name} is a ResNet but the tower is a {type(visual).__name__}")
            side = int(visual.image_size) // 32
            self._native_grid = (side, side)
            self.stride = 32
            num_stages = 4
        else:
            raise ValueError(f"unknown tower kind {preset.kind!r}")
        if list(preset.out_indices) != sorted(set(preset.out_indices)) or max(preset.out_indices) >= num_stages:
            raise ValueError(f"out_indices {preset.out_indices} must be increasing and below {num_stages}")
        self.visual = visual
        self.preset = preset
        self.kind = preset.kind
        self.embed_dim = preset.embed_dim
        self.patch_size = preset.patch_size
        self.out_indices = tuple(preset.out_indices)
        self.feature_channels = tuple(preset.feature_channels)
        self.feature_strides = tuple(preset.feature_strides)
        self._pos_cache: dict[tuple[int, int], tuple[tuple[object, ...], Tensor]] = {}

    @property
    def native_grid(self) -> tuple[int, int]:
        """The token grid the tower's position embedding is stored for (14 x 14 for ViT-B/16 at 224)."""
        return self._native_grid  # type: ignore[return-value]

    def _pos_param(self) -> Tensor:
        if self.kind == "vit":
            return self.visual.positional_embedding
        return self.visual.attnpool.positional_embedding

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a (h, w) token grid: (1 + h*w, C); the parameter itself at the native grid."""
        pos = self._pos_param()
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.native_grid:
            return pos
        if torch.is_grad_enabled() and pos.requires_grad:
            # Why no cache: a cached tensor would carry a graph freed by the first backward.
            return resize_pos_embed_grid(pos, self.native_grid, grid)
        key = (pos.device, pos.dtype, pos.data_ptr(), pos._version)
        hit = self._pos_cache.get(grid)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            resized = resize_pos_embed_grid(pos, self.native_grid, grid)
        self._pos_cache[grid] = (key, resized)
        return resized

    def forward(self, images: Tensor) -> EncoderOutput:
        """images (B, 3, H, W) float, CLIP-normalised, H and W multiples of the stride -> `EncoderOutput`."""
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise PparError(
                f"Input size {height}x{width} is not a multiple of {self.stride}, the stride of the "
                f"{self.preset.name} backbone: use crop and image sizes that are multiples of {self.stride}."
            )
        return self._forward_vit(images) if self.kind == "vit" else self._forward_resnet(images)

    def _forward_vit(self, images: Tensor) -> EncoderOutput:
        v = self.visual
        batch = images.shape[0]
        x = v.conv1(images)  # (B, C, h, w)
        grid_h, grid_w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls_token = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls_token, x], dim=1) + self.position_embedding((grid_h, grid_w)).to(x.dtype)
        x = v.ln_pre(x)  # patch dropout is skipped on purpose: dense outputs need every token

        features: list[Tensor] = []
        use_checkpoint = v.transformer.grad_checkpointing and torch.is_grad_enabled()
        for index, block in enumerate(v.transformer.resblocks):
            if use_checkpoint:
                x = checkpoint(self._run_block, block, x, use_reentrant=False)
            else:
                x = self._run_block(block, x)
            if index in self.out_indices:
                features.append(x[:, 1:].transpose(1, 2).reshape(batch, -1, grid_h, grid_w))

        # Why all tokens through ln_post and proj: DenseCLIP's dense path; the class token gives encode_image.
        x = v.ln_post(x) @ v.proj  # (B, 1 + h*w, D)
        dense = x[:, 1:].transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        return EncoderOutput(features=features, dense=dense, global_embedding=x[:, 0])

    def _forward_resnet(self, images: Tensor) -> EncoderOutput:
        r = self.visual
        x = r.stem(images)
        stages: list[Tensor] = []
        for layer in (r.layer1, r.layer2, r.layer3, r.layer4):
            x = layer(x)
            stages.append(x)
        features = [stages[i] for i in self.out_indices]

        pool = r.attnpool
        batch, channels, grid_h, grid_w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.position_embedding((grid_h, grid_w)).to(tokens.dtype)  # (B, 1 + h*w, C)

        # Global embedding: open_clip's attention pool, but only its one query (the mean token) is computed.
        heads = pool.num_heads
        head_dim = channels // heads
        query = pool.q_proj(tokens[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2)
        key = pool.k_proj(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        value = pool.v_proj(tokens)  # (B, 1 + h*w, C), shared with the dense path
        attended = F.scaled_dot_product_attention(query, key, value.view(batch, -1, heads, head_dim).transpose(1, 2))
        global_embedding = pool.c_proj(attended.transpose(1, 2).reshape(batch, channels))

        # Dense path (DenseCLIP / MaskCLIP): value and output projections applied to every layer-4 position.
        dense = pool.c_proj(value[:, 1:]).transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        return EncoderOutput(features=features, dense=dense, global_embedding=global_embedding)
