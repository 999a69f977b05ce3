"""The optimizer and the learning-rate schedule: AdamW with parameter groups, linear warm-up then poly decay."""

from __future__ import annotations

import torch
from torch import nn

from ppar_core.config import OptimConfig

# Parameters that are scales, offsets or embeddings rather than weight matrices: decaying them towards zero only
# hurts (norm gains, biases, the logit scale, the VTP gamma, position/class embeddings, prototypes).
_NO_DECAY_SUFFIXES = ("bias", "positional_embedding", "class_embedding", "logit_scale", "gamma", "otp")


def _decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and not name.endswith(_NO_DECAY_SUFFIXES)


def build_param_groups(
    model: nn.Module, cfg: OptimConfig, *, backbone_prefix: str = "encoder.", backbone_lr_mult: float = 0.1
) -> list[dict]:
    """Split trainable parameters into (backbone | rest) x (decay | no decay) groups.

    Each group carries `lr_mult`, so the schedule can set `lr = base_lr(step) * lr_mult` for every group.
    Frozen parameters (requires_grad False) are left out entirely.
    """
    groups: dict[tuple[bool, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        backbone = name.startswith(backbone_prefix)
        decay = _decays(name, param)
        key = (backbone, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr_mult": backbone_lr_mult if backbone else 1.0,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, backbone_lr_mult: float) -> torch.optim.AdamW:
    groups = build_param_groups(model, cfg, backbone_lr_mult=backbone_lr_mult)
    for g in groups:
        g.pop("names")
        g["lr"] = cfg.lr * g["lr_mult"]
    # The fused kernel updates all parameters in one pass (several times faster than the per-tensor loop on CPU).
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)


def lr_at(step: int, *, total: int, cfg: OptimConfig) -> float:
    """Base learning rate for optimizer step `step` (0-based): linear warm-up, then poly decay to `min_lr`."""
    if step < cfg.warmup_iters:
        ratio = cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * step / cfg.warmup_iters
        return cfg.lr * ratio
    span = max(1, total - cfg.warmup_iters)
    frac = min(1.0, (step - cfg.warmup_iters) / span)
    return (cfg.lr - cfg.min_lr) * (1.0 - frac) ** cfg.poly_power + cfg.min_lr


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)
