"""Visual Text Prototypes (VTP): class prototypes that carry visual context, `v` (B,K,D).

Three variants (DESIGN.md section 1, "VTP"), chosen by `VTPConfig.kind`:

- `decoder` (default): `v = t + gamma * ContextDecoder(queries = t, keys/values = [global token; Z tokens])`, a small
  pre-norm transformer decoder; `gamma` (D,) is learnable and starts at 1e-4, so at initialisation v is the OTP t.
- `ema`: one global (K,D) memory of class centroids of the dense CLIP embeddings Z, updated by `update()` with
  momentum; the same for every image.
- `mix`: `normalize(alpha * t + (1 - alpha) * mu)`, mu the EMA memory.

The OTP `t` (K,D) is passed to `forward` and is not stored here: the segmentor owns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppar_core.errors import PparError

__all__ = ["VTP_KINDS", "ContextDecoder", "VTPConfig", "VisualTextPrototypes"]

VTP_KINDS = ("decoder", "ema", "mix")


@dataclass(frozen=True)
class VTPConfig:
    """Visual Text Prototype options; `validate()` raises `PparError` naming the first bad field."""

    kind: str = "decoder"  # "decoder" | "ema" | "mix"
    decoder_width: int = 256  # transformer width of the context decoder
    decoder_layers: int = 3  # number of decoder layers
    decoder_heads: int = 4  # attention heads; must divide decoder_width
    gamma_init: float = 1e-4  # initial per-channel scale of the decoder's residual (small: v starts at t)
    momentum: float = 0.99  # ema / mix: m <- momentum * m + (1 - momentum) * batch mean
    alpha: float = 0.7  # mix: weight of the OTP in normalize(alpha * t + (1 - alpha) * mu)

    def validate(self) -> VTPConfig:
        """Check every field; return self."""
        if self.kind not in VTP_KINDS:
            raise PparError(f"vtp.kind must be one of {', '.join(VTP_KINDS)}, got {self.kind!r}.")
        for name in ("decoder_width", "decoder_layers", "decoder_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PparError(f"vtp.{name} must be a positive integer, got {value!r}.")
        if self.decoder_width % self.decoder_heads:
            raise PparError(
                f"vtp.decoder_width ({self.decoder_width}) must be divisible by vtp.decoder_heads "
                f"({self.decoder_heads}); e.g. width 256 with 4 heads."
            )
        if not math.isfinite(self.gamma_init):
            raise PparError(f"vtp.gamma_init must be a finite number, got {self.gamma_init!r}; the default is 1e-4.")
        if not (0.0 <= self.momentum < 1.0):
            raise PparError(f"vtp.momentum must lie in [0, 1), got {self.momentum!r}; the default is 0.99.")
        if not (0.0 <= self.alpha <= 1.0):
            raise PparError(f"vtp.alpha must lie in [0, 1], got {self.alpha!r}; the default is 0.7.")
        return self


class _DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: self-attention over queries, cross-attention to memory, MLP."""

    def __init__(self, width: int, *, heads: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        """queries (B,K,W), memory (B,N,W) -> (B,K,W)."""
        q = self.norm_self(queries)
        x = queries + self.self_attn(q, q, q, need_weights=False)[0]
        q = self.norm_cross(x)
        x = x + self.cross_attn(q, memory, memory, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class ContextDecoder(nn.Module):
    """Prototypes attend to the image: queries are the prototypes, keys/values the global and dense CLIP tokens.

    Prototypes (B,K,D) are projected to `width` (LayerNorm + Linear), visual tokens [g; Z] (B,1+h*w,D) likewise
    (LayerNorm + Linear + LayerNorm, so the memory is normalised once for every layer's cross-attention, as DenseCLIP
    does), `layers` pre-norm decoder layers run, and a LayerNorm + Linear projects back to D. No dropout: the decoder
    is small and its residual is scaled by gamma in `VisualTextPrototypes`.
    """

    def __init__(self, embed_dim: int, *, width: int = 256, layers: int = 3, heads: int = 4) -> None:
        super().__init__()
        self.query_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.memory_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width), nn.LayerNorm(width))
        self.layers = nn.ModuleList(_DecoderLayer(width, heads=heads) for _ in range(layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))

    def forward(self, prototypes: Tensor, visual_tokens: Tensor) -> Tensor:
        """prototypes (B,K,D) float, visual_tokens (B,N,D) float -> (B,K,D) float (the residual, before gamma)."""
        x = self.query_proj(prototypes)
        memory = self.memory_proj(visual_tokens)
        for layer in self.layers:
            x = layer(x, memory)
        return self.out_proj(x)


class VisualTextPrototypes(nn.Module):
    """Image-conditioned class prototypes v (B,K,D); see the module docstring for the three kinds.

    otp: (K,D) float, the Original Text Prototypes; used here for the shapes and, for `ema`/`mix`, as the memory's
    initial value unless `init_visual` (K,D) (dataset-level visual prototypes) is given. Both are L2-normalised
    before use. The memory is a persistent buffer, so it is saved in checkpoints.
    """

    memory: Tensor

    def __init__(self, otp: Tensor, cfg: VTPConfig | None = None, *, init_visual: Tensor | None = None) -> None:
        super().__init__()
        cfg = (cfg or VTPConfig()).validate()
        if otp.ndim != 2:
            raise PparError(
                f"the text prototypes (otp) must be a (K,D) table, got shape {tuple(otp.shape)}; "
                "rebuild them with `ppar prototypes build`."
            )
        self.cfg = cfg
        self.num_classes, self.embed_dim = int(otp.shape[0]), int(otp.shape[1])
        if cfg.kind == "decoder":
            self.decoder = ContextDecoder(
                self.embed_dim, width=cfg.decoder_width, layers=cfg.decoder_layers, heads=cfg.decoder_heads
            )
            self.gamma = nn.Parameter(torch.full((self.embed_dim,), float(cfg.gamma_init)))
            return
        init = otp if init_visual is None else init_visual
        if tuple(init.shape) != tuple(otp.shape):
            raise PparError(
                f"the visual prototypes have shape {tuple(init.shape)} but the text prototypes (otp) have "
                f"{tuple(otp.shape)}; rebuild the prototypes file with `ppar prototypes build` for this model."
            )
        self.register_buffer("memory", F.normalize(init.detach().float(), dim=-1).clone())

    def forward(self, otp: Tensor, dense: Tensor, global_embedding: Tensor) -> Tensor:
        """otp (K,D), dense Z (B,D,h,w), global_embedding g (B,D), all float -> v (B,K,D) float.

        `decoder` returns t + gamma * decoder (not renormalised: the classifier normalises); `ema` returns a copy of
        the memory for every image; `mix` returns unit-norm rows.
        """
        batch = dense.shape[0]
        if tuple(otp.shape) != (self.num_classes, self.embed_dim):
            raise ValueError(f"otp must be ({self.num_classes},{self.embed_dim}), got {tuple(otp.shape)}")
        if self.cfg.kind == "decoder":
            tokens = torch.cat([global_embedding.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)
            t = otp.to(dense.dtype).unsqueeze(0).expand(batch, -1, -1)
            return t + self.gamma.to(dense.dtype) * self.decoder(t, tokens)
        # A copy, not a view of the buffer: `update()` changes the memory in place, which would otherwise corrupt a
        # graph that saved this output for backward.
        memory = self.memory.to(dense.dtype).clone()
        if self.cfg.kind == "ema":
            return memory.unsqueeze(0).expand(batch, -1, -1).clone()
        alpha = self.cfg.alpha
        mixed = F.normalize(alpha * otp.to(dense.dtype) + (1.0 - alpha) * memory, dim=-1)
        return mixed.unsqueeze(0).expand(batch, -1, -1).clone()

    @torch.no_grad()
    def update(
        self,
        dense: Tensor,
        labels_small: Tensor,
        *,
        ignore_index: int = 255,
        all_reduce: Callable[[Tensor], Tensor | None] | None = None,
        check_labels: bool = True,
    ) -> None:
        """Move each present class's memory row towards its batch centroid; a no-op for `decoder`.

        dense Z (B,D,h,w) float; labels_small (B,h,w) long, labels resized to Z's grid by nearest neighbour, values in
        [0, K) or `ignore_index`. Per class k: mean_k = mean of L2-normalised z over the valid pixels labelled k;
        m_k <- normalize(momentum * m_k + (1 - momentum) * mean_k) if class k has pixels; absent classes are untouched.

        DDP: pass `all_reduce`, called once with a (K, D+1) float32 tensor (columns :D the per-class sums of normalised
        z, column D the pixel counts); it must return the element-wise sum over ranks, or None after reducing in place,
        so `torch.distributed.all_reduce` itself can be passed. Every rank then applies the same update.

        `check_labels`: raise ValueError on a label outside [0, K) other than `ignore_index`. It is the update's only
        host sync; the training step passes False, because its loss has already rejected such labels (cross-entropy
        does), and without the check a stray label counts as ignored (it can never index out of the memory).
        """
        if self.cfg.kind == "decoder":
            return
        b, d, h, w = dense.shape
        if d != self.embed_dim or tuple(labels_small.shape) != (b, h, w):
            raise ValueError(
                f"dense must be (B,{self.embed_dim},h,w) and labels_small (B,h,w); got {tuple(dense.shape)} and "
                f"{tuple(labels_small.shape)}"
            )
        # float32 statistics: the sums run over many pixels and bf16 (autocast) would lose most of the update.
        z = F.normalize(dense.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, d)
        labels = labels_small.reshape(-1).long()
        in_range = (labels >= 0) & (labels < self.num_classes)
        valid = (labels != ignore_index) & in_range
        # The only host sync of the update; a bad label would otherwise pass silently as ignored.
        if check_labels and bool(((labels != ignore_index) & ~in_range).any()):
            raise ValueError(f"labels_small has values outside [0, {self.num_classes}) other than {ignore_index}")
        # Ignored pixels go to an extra row K that is dropped afterwards (no boolean indexing: static shapes). One
        # index_add_ adds [z, 1] per pixel: the sums of z and the pixel counts (bincount would size its output on the
        # host).
        rows = torch.where(valid, labels, torch.full_like(labels, self.num_classes))
        stats = torch.zeros(self.num_classes + 1, d + 1, dtype=torch.float32, device=dense.device)
        stats.index_add_(0, rows, torch.cat([z, torch.ones_like(z[:, :1])], dim=1))
        stats = stats[: self.num_classes].contiguous()
        if all_reduce is not None:
            reduced = all_reduce(stats)
            stats = stats if reduced is None else reduced
        sums, counts = stats[:, :d], stats[:, d:]
        present = counts > 0  # (K,1)
        mean = sums / counts.clamp(min=1.0)
        momentum = self.cfg.momentum
        old = self.memory.float()
        new = F.normalize(momentum * old + (1.0 - momentum) * mean, dim=-1)
        self.memory.copy_(torch.where(present, new, old).to(self.memory.dtype))
