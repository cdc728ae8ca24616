"""Metric glue: the task check, probabilities, study-level aggregation, torchmetrics AUROC /
AUPRC (their bootstrap confidence intervals: :mod:`.bootstrap`)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from .config import Task

__all__ = [
    "Task",
    "aggregate_by_group",
    "check_task",
    "classification_metrics",
    "probabilities",
    "single_class_columns",
]


def check_task(task: object, num_classes: int) -> Task:
    """Refuse a task that is unknown or cannot be right for a model with ``num_classes``
    outputs (a 1-output model cannot be multi-class; a several-output model is not binary).
    Returns ``task``."""
    valid = get_args(Task)
    if not isinstance(task, str) or task not in valid:
        near = difflib.get_close_matches(str(task), valid, n=1, cutoff=0.0)
        raise ValueError(
            f"unknown task {task!r}; use one of {', '.join(map(repr, valid))}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
        )
    if task == "multiclass" and num_classes == 1:
        raise ValueError(
            "task='multiclass' for a 1-output model: a 1-output model cannot be multiclass; "
            "softmax of one logit is always 1. Use task='binary' (sigmoid), or a model with "
            "one output per class."
        )
    if task == "binary" and num_classes > 1:
        raise ValueError(
            f"task='binary' for a model with {num_classes} outputs: binary needs exactly one "
            "output. Use task='multilabel' (a sigmoid per output) or task='multiclass' (softmax "
            "over the outputs)."
        )
    return task  # type: ignore[return-value]


def probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Sigmoid for binary / multi-label, softmax over classes for multi-class.

    ``logits`` ``(N, num_classes)``; the task is checked against ``num_classes`` first
    (:func:`check_task`)."""
    check_task(task, logits.shape[-1] if logits.dim() == 2 else 0)
    logits = logits.float()
    return logits.softmax(dim=-1) if task == "multiclass" else logits.sigmoid()


def aggregate_by_group(
    values: torch.Tensor, groups: Sequence[str], *, reduction: Literal["max", "mean"] = "max"
) -> tuple[list[str], torch.Tensor]:
    """Reduce rows of ``values`` ``(N, ...)`` that share a group key (e.g. the windows of one
    study). Returns the groups in order of first appearance and ``(G, ...)`` values."""
    if len(groups) != values.shape[0]:
        raise ValueError(f"{len(groups)} group keys for {values.shape[0]} rows")
    names = list(dict.fromkeys(groups))
    pos = {g: i for i, g in enumerate(names)}
    index = torch.tensor([pos[g] for g in groups], dtype=torch.long, device=values.device)
    shape = (len(names), *values.shape[1:])
    out = values.new_zeros(shape, dtype=values.dtype if values.is_floating_point() else None)
    index = index.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    reduce = "amax" if reduction == "max" else "mean"
    out = out.scatter_reduce(0, index, values, reduce=reduce, include_self=False)
    return names, out


def classification_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_names: Sequence[str] | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """AUROC and AUPRC (average precision) per label and their mean, via torchmetrics.

    ``probs`` and ``targets`` are ``(N, L)``, targets binary (one-hot for multi-class, i.e.
    one-vs-rest). A label whose targets hold a single class gets NaN and is left out of the
    mean (which is NaN when no label is defined).
    """
    if probs.shape != targets.shape or probs.dim() != 2:
        raise ValueError(f"probs {tuple(probs.shape)} and targets {tuple(targets.shape)} differ")
    num_labels = probs.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    undefined = set(single_class_columns(targets))
    targets = (targets > 0.5).long()
    out: dict[str, float] = {}
    for name, fn in (("auroc", binary_auroc), ("auprc", binary_average_precision)):
        values = []
        for j in range(num_labels):
            t = targets[:, j]
            if j in undefined:
                v = math.nan
            else:
                v = float(fn(probs[:, j].float(), t))
            values.append(v)
            if num_labels > 1:
                out[f"{prefix}{name}/{names[j]}"] = v
        defined = [v for v in values if not math.isnan(v)]
        out[f"{prefix}{name}"] = sum(defined) / len(defined) if defined else math.nan
    return out


def single_class_columns(targets: torch.Tensor) -> list[int]:
    """Columns of binary ``(N, L)`` targets that hold one class only: AUROC and AUPRC are
    undefined there."""
    t = targets > 0.5
    return [j for j in range(t.shape[1]) if bool(t[:, j].all() or not t[:, j].any())]
