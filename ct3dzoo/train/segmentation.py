"""The segmentation task of :func:`ct3dzoo.finetune`: BCE + soft Dice loss, and Dice over a
validation set accumulated batch by batch (no logits are kept).

A label is a 0/1 mask ``(C, D, H, W)`` (or ``(D, H, W)`` for one class) and the model
outputs logits ``(B, C, D, H, W)`` (e.g. ``head="segmentation"``); each channel is an
independent sigmoid (binary / multi-label segmentation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import make_targets, unpack
from .distributed import DistContext
from .inference import _autocast, _to_device, eval_loader

__all__ = ["DiceAccumulator", "segmentation_loss", "validate_segmentation"]

#: weights of the two loss terms: ``loss = BCE_WEIGHT * bce + DICE_WEIGHT * (1 - soft_dice)``
BCE_WEIGHT, DICE_WEIGHT = 1.0, 1.0
_SMOOTH = 1.0  # soft-Dice smoothing (voxels): an empty target and prediction give loss 0


def _check_shapes(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 5 or logits.shape != target.shape:
        raise ValueError(
            f"segmentation needs logits of the mask's shape {tuple(target.shape)} "
            f"(B, C, D, H, W); the model gave {tuple(logits.shape)}. Create the model with "
            "head='segmentation' (and num_classes = the mask's channels), and give masks on "
            "the image's grid"
        )


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, *, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``BCE_WEIGHT * BCE-with-logits + DICE_WEIGHT * (1 - soft Dice)``, weights 1 and 1.

    BCE is the mean over voxels (``pos_weight``, one number per channel, weighs lesion
    voxels); the soft Dice uses sigmoid probabilities summed over the batch and the voxels
    of each channel (a "batch Dice": negative cases in a batch do not make it undefined),
    smoothed by 1 voxel, averaged over channels. ``logits`` and ``target`` are
    ``(B, C, D, H, W)``, target 0/1.
    """
    _check_shapes(logits, target)
    logits, target = logits.float(), target.float()
    pw = None if pos_weight is None else pos_weight.reshape(-1, 1, 1, 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
    p = logits.sigmoid()
    dims = (0, 2, 3, 4)
    inter = (p * target).sum(dims)
    dice = (2 * inter + _SMOOTH) / (p.sum(dims) + target.sum(dims) + _SMOOTH)
    return BCE_WEIGHT * bce + DICE_WEIGHT * (1 - dice.mean())


class DiceAccumulator:
    """Hard Dice (``logit > 0``) over a dataset, from per-batch sums.

    Keeps, per channel, the summed intersection, predicted and true voxel counts (for the
    dataset-level Dice ``2 sum(I) / (sum(P) + sum(T))``), and the sum and count of per-case
    Dice (where a case with an empty mask and an empty prediction scores 1). ``compute``
    returns ``{"dice", "dice_case"}`` averaged over channels; ``dice`` is NaN when neither
    the masks nor the predictions hold a voxel.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        # rows: intersection, predicted, true, per-case dice sum, case count
        self.sums = torch.zeros(5, num_classes, dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        _check_shapes(logits, target)
        pred = (logits > 0).to(torch.float64).flatten(2)
        t = (target > 0.5).to(torch.float64).flatten(2)
        inter, ps, ts = (pred * t).sum(2), pred.sum(2), t.sum(2)  # (B, C)
        denom = ps + ts
        case = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom))
        self.sums += torch.stack(
            [inter.sum(0), ps.sum(0), ts.sum(0), case.sum(0), torch.full_like(ps[0], len(ps))]
        )

    def compute(self) -> dict[str, float]:
        inter, ps, ts, case_sum, n = self.sums
        denom = ps + ts
        dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.nan)
        return {"dice": float(dice.mean()), "dice_case": float((case_sum / n).mean())}


def validate_segmentation(
    model: nn.Module,
    data: Any,
    *,
    num_classes: int,
    batch_size: int,
    num_workers: int,
    ctx: DistContext,
    dtype: torch.dtype | None,
    channels_last: bool,
    pos_weight: torch.Tensor | None = None,
) -> dict[str, float]:
    """``val_loss`` (mean of the batch losses, weighted by batch size), ``val_dice`` and
    ``val_dice_case`` (:class:`DiceAccumulator`) over ``data``, sharded over ranks."""
    loader = eval_loader(data, batch_size=batch_size, num_workers=num_workers, ctx=ctx)
    was_training = model.training
    model.eval()
    acc = DiceAccumulator(num_classes, ctx.device)
    loss = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss*n, n
    with torch.no_grad():
        for collated in loader:
            b = unpack(collated)
            if b.label is None:
                raise ValueError("validation items need labels (masks)")
            target = make_targets(b.label, "segmentation", num_classes).to(ctx.device)
            with _autocast(ctx.device, dtype):
                logits = model(_to_device(b.image, ctx.device, channels_last))
            logits = logits.float()
            n = logits.shape[0]
            loss += torch.stack(
                [segmentation_loss(logits, target, pos_weight=pos_weight).double() * n,
                 torch.tensor(float(n), dtype=torch.float64, device=ctx.device)]
            )  # fmt: skip
            acc.update(logits, target)
    model.train(was_training)
    ctx.all_reduce_sum(acc.sums)
    ctx.all_reduce_sum(loss)
    out = {"val_loss": float(loss[0] / loss[1])}
    out.update({f"val_{k}": v for k, v in acc.compute().items()})
    return out
