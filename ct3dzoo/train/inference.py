"""Inference: :func:`predict` and the sharded forward pass validation shares with it."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Literal, overload

import torch
from torch import nn
from torch.utils.data import DataLoader

from .batches import EpochSampler, IndexedDataset, unpack
from .config import Precision
from .distributed import DistContext, setup_distributed
from .metrics import Task, aggregate_by_group, probabilities

__all__ = ["Precision", "predict"]


def _autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        if device.type == "cpu":
            warnings.warn(
                "precision='fp16' on CPU runs, but torch has no fast fp16 Conv3d there: an "
                "r3d_18 step took 293-345 s against 2.5 s in bf16 (2 cores, torch 2.14). Use "
                "precision='bf16' on CPU",
                UserWarning,
                stacklevel=3,
            )
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            warnings.warn(
                "bf16 is not supported on this GPU; using fp16 + GradScaler", stacklevel=3
            )
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_channels_last(model: nn.Module, device: torch.device) -> bool:
    """The ``channels_last=None`` choice: ``channels_last_3d`` on CUDA, except for models with
    grouped 3D convolutions (X3D's depthwise, CSN's channel-separated): with bf16 autocast
    cuDNN ran those 23x slower in that layout (x3d_m 1.8 vs 41.9 volumes/s, csn_r101 2.5 vs
    51.0, H200, torch 2.11; docs/benchmarks.md), while plain 3D ResNets gain (r3d_18 89.7 vs
    64.1)."""
    if device.type != "cuda":
        return False
    return not any(isinstance(m, nn.Conv3d) and m.groups > 1 for m in model.modules())


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return x.to(device, dtype=torch.float32, non_blocking=True, memory_format=fmt)


def _check_dataset(data: Any, name: str) -> None:
    try:
        n = len(data)
    except TypeError as e:
        raise TypeError(f"{name} must be a map-style Dataset with __len__") from e
    if n == 0:
        raise ValueError(f"{name} is empty: it has no items to train or evaluate on")


def eval_loader(data: Any, *, batch_size: int, num_workers: int, ctx: DistContext) -> DataLoader:
    """``data`` in order, sharded over ranks without padding, for evaluation passes."""
    sampler = EpochSampler(
        len(data), shuffle=False, num_replicas=ctx.world_size, rank=ctx.rank, pad=False
    )
    return DataLoader(
        IndexedDataset(data),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone
    )


def _infer(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int,
    num_workers: int,
    ctx: DistContext,
    dtype: torch.dtype | None,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Logits for every item of ``data`` in dataset order, with labels and groups when present.

    Sharded over ranks without padding; every rank gets the full result.
    """
    loader = eval_loader(data, batch_size=batch_size, num_workers=num_workers, ctx=ctx)
    was_training = model.training
    model.eval()
    idx, logits, labels, groups = [], [], [], []
    with torch.no_grad():
        for collated in loader:
            b = unpack(collated)
            with _autocast(ctx.device, dtype):
                out = model(_to_device(b.image, ctx.device, channels_last))
            idx.append(b.index)
            logits.append(out.float().cpu())
            if b.label is not None:
                labels.append(b.label.cpu())
            if b.groups is not None:
                groups.extend(b.groups)
    model.train(was_training)
    local = (
        torch.cat(idx) if idx else torch.empty(0, dtype=torch.long),
        torch.cat(logits) if logits else torch.empty(0),
        torch.cat(labels) if labels else None,
        groups or None,
    )
    parts = ctx.all_gather(local)
    order = torch.cat([p[0] for p in parts]).argsort()
    all_logits = torch.cat([p[1] for p in parts if p[1].numel()])[order]
    all_labels = None
    if all(p[2] is not None for p in parts if p[0].numel()):
        all_labels = torch.cat([p[2] for p in parts if p[2] is not None])[order]
    all_groups = None
    if all(p[3] is not None for p in parts if p[0].numel()):
        flat = [g for p in parts if p[3] is not None for g in p[3]]
        all_groups = [flat[i] for i in order.tolist()]
    return all_logits, all_labels, all_groups


# --------------------------------------------------------------------------- predict
@overload
def predict(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = ...,
    task: Task | None = ...,
    aggregate: None = ...,
    num_workers: int = ...,
    device: str | torch.device | None = ...,
    precision: Precision = ...,
    channels_last: bool | None = ...,
) -> torch.Tensor: ...
@overload
def predict(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = ...,
    task: Task | None = ...,
    aggregate: Literal["max", "mean"],
    num_workers: int = ...,
    device: str | torch.device | None = ...,
    precision: Precision = ...,
    channels_last: bool | None = ...,
) -> dict[str, torch.Tensor]: ...
def predict(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 1,
    task: Task | None = None,
    aggregate: Literal["max", "mean"] | None = None,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    precision: Precision = "auto",
    channels_last: bool | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Probabilities for every item of ``data``: ``(N, num_classes)`` in dataset order.

    Items are images ``(C, D, H, W)``, ``(x, y[, group])`` tuples or ``{"image", "group"…}``
    dicts. ``task`` picks sigmoid (binary, multilabel) or softmax (multiclass); it is needed
    only when the model has several outputs. With ``aggregate="max"`` (the paper's study score:
    max over a study's windows) or ``"mean"``, returns ``{group: (num_classes,) probs}``.
    Runs sharded under ``torchrun``; every rank gets the full result.
    """
    _check_dataset(data, "data")
    num_classes = int(getattr(model, "num_classes", 1))
    if task is None:
        if num_classes != 1:
            raise ValueError(
                f"the model has {num_classes} outputs: pass task='multilabel' (sigmoid) or "
                "task='multiclass' (softmax)"
            )
        task = "binary"
    ctx = setup_distributed(device)
    cl = default_channels_last(model, ctx.device) if channels_last is None else channels_last
    model.to(ctx.device, memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
    logits, _, groups = _infer(
        model,
        data,
        batch_size=batch_size,
        num_workers=num_workers,
        ctx=ctx,
        dtype=_autocast_dtype(precision, ctx.device),
        channels_last=cl,
    )
    probs = probabilities(logits, task)
    if aggregate is None:
        return probs
    if groups is None:
        raise ValueError("aggregate= needs items with a group key ('group' or a 3-tuple)")
    names, values = aggregate_by_group(probs, groups, reduction=aggregate)
    return dict(zip(names, values))
