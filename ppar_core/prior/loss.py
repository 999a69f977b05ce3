"""The loss of one pretraining batch of the embedded CLIP prior (`ppar_core.prior.pretrain`).

Everything here is open_clip's CLIP objective (`ClipLoss`, symmetric cross-entropy over the image-text similarities
of a batch) applied to three kinds of pairs: scenes and their captions, region crops and their class captions, and
boxes of patch tokens and their class captions. Region and box pairs are split into batches of distinct classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor

from ppar_core.clip.encoder import DenseClipEncoder
from ppar_core.normalize import normalize
from ppar_core.prior.pairs import PairBatch, distinct_class_groups


def encode_text_prefix(model: Any, tokens: Tensor) -> Tensor:
    """open_clip's `CLIP.encode_text` (argmax pooling) run on the tokens up to the longest text only.

    tokens (N, context_length) int64 -> (N, D) float, unnormalised. Why: the text tower is causal, so the pooled
    end-of-text token never sees the padding after it; the full 77 positions cost twice the attention and MLP work
    of our captions (at most about 45 tokens) for the same result (equal up to float rounding; see the tests).
    """
    if model.text_pool_type != "argmax":
        return model.encode_text(tokens)
    length = max(1, int((tokens != 0).sum(dim=1).max()))
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # the end-of-text token
    return x @ model.text_projection


def embed_texts(model: Any, tokenizer: Callable[[list[str]], Tensor], texts: list[str]) -> Tensor:
    """texts -> (N, D) float32 unit rows of the text tower (with gradients when enabled).

    Each distinct text is encoded once (region captions repeat: 19 classes and a few templates).
    """
    device = next(model.parameters()).device
    unique = list(dict.fromkeys(texts))
    index = {text: i for i, text in enumerate(unique)}
    embedded = F.normalize(encode_text_prefix(model, tokenizer(unique).to(device)).float(), dim=-1)
    return embedded[torch.tensor([index[t] for t in texts], device=device)]


def batch_loss(
    model: Any,
    encoder: DenseClipEncoder,
    tokenizer: Callable[[list[str]], Tensor],
    batch: PairBatch,
    loss_fn: ClipLoss,
    *,
    dense_regions: bool,
    max_groups: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The pretraining loss of one batch -> (scalar loss, {"scene": ..., "region": ...} as floats)."""
    device = next(model.parameters()).device
    num_scenes, num_regions = len(batch.scene_captions), len(batch.region_captions)
    texts = embed_texts(model, tokenizer, batch.scene_captions + batch.region_captions + batch.roi_captions)
    scale = model.logit_scale.exp().clamp(max=100.0)  # CLIP's cap on the temperature
    scenes = encoder(normalize(torch.from_numpy(batch.scenes).to(device)))
    scene_loss = loss_fn(F.normalize(scenes.global_embedding, dim=-1), texts[:num_scenes], scale)
    parts = {"scene": float(scene_loss.detach())}
    total = scene_loss
    if num_regions:
        regions = encoder(normalize(torch.from_numpy(batch.regions).to(device)))
        kinds = [regions.global_embedding]
        if dense_regions:
            kinds.append(regions.dense.mean(dim=(2, 3)))  # (R, D): the crop's patch tokens, pooled
        region_loss = _grouped_loss(
            loss_fn, kinds, texts[num_scenes : num_scenes + num_regions], batch.region_classes, scale,
            max_groups=max_groups,
        )  # fmt: skip
        if region_loss is not None:
            parts["region"] = float(region_loss.detach())
            total = total + region_loss
    if len(batch.roi_captions):
        pooled = roi_pool(scenes.dense, torch.from_numpy(batch.rois).to(device))
        roi_loss = _grouped_loss(
            loss_fn, [pooled], texts[num_scenes + num_regions :], batch.roi_classes, scale, max_groups=max_groups
        )
        if roi_loss is not None:
            parts["roi"] = float(roi_loss.detach())
            total = total + roi_loss
    return total, parts


def roi_pool(dense: Tensor, rois: Tensor) -> Tensor:
    """Mean of the patch tokens in each box: dense (B,D,h,w), rois (N,5) int64 [image, y0, x0, y1, x1] in tokens
    -> (N,D). One matrix product with an (N, B*h*w) averaging matrix, so it costs one op whatever N is."""
    batch, dim, height, width = dense.shape
    rows = torch.arange(height, device=dense.device).view(1, height, 1)
    cols = torch.arange(width, device=dense.device).view(1, 1, width)
    y0, x0, y1, x1 = (rois[:, i].view(-1, 1, 1) for i in range(1, 5))
    inside = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)).flatten(1).float()  # (N, h*w)
    weights = torch.zeros(len(rois), batch, height * width, device=dense.device)
    weights[torch.arange(len(rois), device=dense.device), rois[:, 0]] = inside / inside.sum(1, keepdim=True)
    tokens = dense.flatten(2).transpose(1, 2).reshape(batch * height * width, dim)  # (B*h*w, D)
    return weights.view(len(rois), -1) @ tokens


def _grouped_loss(
    loss_fn: ClipLoss,
    kinds: list[Tensor],
    texts: Tensor,
    classes: np.ndarray,
    scale: Tensor,
    *,
    max_groups: int | None = None,
) -> Tensor | None:
    """Mean ClipLoss over batches of pairs of distinct classes, for each image-embedding kind (N,D) in `kinds`."""
    groups = [torch.from_numpy(g).to(texts.device) for g in distinct_class_groups(classes, max_groups=max_groups)]
    if not groups:
        return None
    losses = [loss_fn(F.normalize(kind[g], dim=-1), texts[g], scale) for kind in kinds for g in groups]
    return torch.stack(losses).mean()
