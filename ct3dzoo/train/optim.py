"""Optimiser and schedule: AdamW parameter groups, freezing, cosine schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import FinetuneConfig, Freeze

__all__ = [
    "apply_freeze",
    "build_optimizer",
    "build_scheduler",
    "cosine_with_warmup",
    "param_groups",
    "sync_lr",
]


def param_groups(
    model: nn.Module, *, lr: float, backbone_lr_scale: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: head vs backbone learning rate; no weight decay on biases and norms."""
    head = model.head if isinstance(getattr(model, "head", None), nn.Module) else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.ndim >= 2), []).append(p)
    out = []
    for (is_head, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lr if is_head else lr * backbone_lr_scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return out


def apply_freeze(model: nn.Module, freeze: Freeze) -> list[nn.Module]:
    """Fix the parameters ``freeze`` names; return the modules to keep in eval mode.

    ``"backbone"``: everything but ``model.head`` (a linear probe); ``"stem"``:
    ``model.stem_modules()``; ``"none"``: nothing."""
    if freeze == "none":
        return []
    if freeze == "backbone":
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError("freeze='backbone' needs a model with a .head module")
        head_modules = {id(m) for m in head.modules()}
        head_params = {id(p) for p in head.parameters()}
        for p in model.parameters():
            if id(p) not in head_params:
                p.requires_grad_(False)
        frozen = [m for m in model.children() if id(m) not in head_modules]
    elif freeze == "stem":
        if not hasattr(model, "stem_modules"):
            raise ValueError("freeze='stem' needs a model with .stem_modules()")
        frozen = list(model.stem_modules())
    else:
        raise ValueError(f"freeze must be 'none', 'backbone' or 'stem', got {freeze!r}")
    for m in frozen:
        m.requires_grad_(False)
    return frozen


def build_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by :func:`param_groups`.

    The fused implementation where torch has it for the parameters' device (CPU and CUDA
    since torch 2.4): one kernel per step instead of a Python loop over tensors (ResNet-10's
    14.4 M parameters on 2 CPU cores: 12.0 vs 73.1 ms per step, benchmarks/optimizer_step.py);
    the plain one otherwise. Both keep the same state, so checkpoints move between them.
    """
    groups = param_groups(
        model, lr=cfg.lr, backbone_lr_scale=cfg.backbone_lr_scale, weight_decay=cfg.weight_decay
    )
    if not groups:
        raise ValueError("no trainable parameters (is everything frozen?)")
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype/torch
        return torch.optim.AdamW(groups, lr=cfg.lr)


def cosine_with_warmup(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor at optimiser step ``step``: linear warm-up over ``warmup`` steps, then a
    half cosine from 1 to ``min_ratio`` at step ``total`` (constant after)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule over ``cfg.epochs * steps_per_epoch`` optimiser steps.

    The factor is a plain function, so a scheduler ``state_dict`` holds only the step count
    and base rates: loading one into a scheduler built for another ``epochs`` continues the
    new schedule from the saved step (see :func:`sync_lr`)."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    factor = cosine_with_warmup(total, warmup, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sync_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set each group's learning rate to the schedule's value at its current step.

    After a resume this is the value already there, unless the schedule was rebuilt for a
    different ``epochs``: then the next step uses the new schedule's rate, as a run planned
    for the new total from the start would."""
    step = scheduler.last_epoch
    rates = [base * f(step) for f, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, lr in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = lr
