"""Validation of a classification run: the ``val_*`` figures of one pass over the
validation data, per item and per study (max over a study's items), with bootstrap
intervals over studies (``val_*_ci``). The segmentation counterpart is
:func:`.segmentation.validate_segmentation`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .batches import make_targets, metric_targets
from .bootstrap import bootstrap_ci
from .config import Task
from .metrics import aggregate_by_group, classification_metrics, probabilities

__all__ = ["CI_RESAMPLES", "ValidationPass", "classification_figures"]

#: bootstrap resamples behind the validation ``*_ci`` intervals (``[low, high]`` lists)
CI_RESAMPLES = 1000

#: one validation pass: probabilities, metric targets, group keys (None: one item per study)
ValidationPass = tuple[torch.Tensor, torch.Tensor, list[str] | None]


def classification_figures(
    logits: torch.Tensor,
    labels: torch.Tensor,
    groups: Sequence[str] | None,
    *,
    task: Task,
    num_classes: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    label_names: Sequence[str] | None,
    seed: int,
) -> tuple[dict[str, Any], ValidationPass]:
    """``val_loss``, ``val_auroc``/``val_auprc`` (per label when several), their study-level
    ``val_study_*`` counterparts when items have groups, and every ``*_ci`` interval (a
    bootstrap over studies: a study's windows are drawn together); and the pass itself."""
    targets = make_targets(labels, task, num_classes)
    out: dict[str, Any] = {"val_loss": float(loss(logits, targets.to(logits.device)))}
    probs = probabilities(logits, task)
    mt = metric_targets(targets, task, num_classes)
    ci = {"n_resamples": CI_RESAMPLES, "seed": seed, "label_names": label_names}
    out.update(classification_metrics(probs, mt, label_names=label_names, prefix="val_"))
    out.update(bootstrap_ci(probs, mt, groups=groups, prefix="val_", **ci))
    if groups is not None:
        _, gp = aggregate_by_group(probs, groups, reduction="max")
        _, gt = aggregate_by_group(mt, groups, reduction="max")
        out.update(classification_metrics(gp, gt, label_names=label_names, prefix="val_study_"))
        out.update(bootstrap_ci(gp, gt, prefix="val_study_", **ci))
    return out, (probs, mt, None if groups is None else list(groups))
