"""The progress of a finetune run (saved into and restored from ``last/state.pt``) and its
outcome (:class:`FinetuneResult`).

:class:`TrainState` lists the progress fields once; a checkpoint holds them next to the
optimiser, scheduler, GradScaler and RNG states, the task and the reproducibility options
(:meth:`FinetuneConfig.reproducible`). Everything is tensors and plain containers, so
``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .checkpoint import get_rng_state, set_rng_state
from .config import Task

__all__ = ["FinetuneResult", "TrainState", "checkpoint_state", "restore_checkpoint_state"]


@dataclass
class TrainState:
    """Where a run stands (what a checkpoint stores besides weights and optimiser)."""

    epoch: int = 0  #: finished epochs
    batch: int = 0  #: batches of the current epoch already trained
    global_step: int = 0  #: optimiser steps so far
    loss_sum: float = 0.0  #: of the current epoch (sum of loss * items)
    loss_count: float = 0.0
    epoch_time: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  #: epochs since the monitor last improved
    done: bool = False
    stopped_early: bool = False
    monitor: str | None = None  #: the history key that picks the best epoch
    monitor_note: str | None = None  #: why the monitor fell back to ``val_loss``, if it did

    def start_epoch(self) -> None:
        """Reset the per-epoch counters after ``epoch`` was incremented."""
        self.batch, self.loss_sum, self.loss_count, self.epoch_time = 0, 0.0, 0.0, 0.0


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns."""

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    #: the history key that picked the best epoch (``val_loss`` when validation AUROC is
    #: undefined because the validation set holds one class)
    monitor: str | None
    task: Task
    stopped_early: bool = False
    #: ``{"epoch": e, "batch": b}`` where a resumed run picked up (0-based), else None
    resumed_from: dict[str, int] | None = None
    #: why ``monitor`` is ``val_loss`` when AUROC was asked for by default (a validation set
    #: with one class only), else None
    monitor_note: str | None = None
    out_dir: Path | None = field(default=None, repr=False)


def checkpoint_state(
    state: TrainState,
    *,
    task: str,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> dict[str, Any]:
    """The ``state.pt`` payload: the progress fields plus everything needed to resume."""
    out = {f.name: getattr(state, f.name) for f in fields(TrainState)}
    out.update(
        task=task,
        config=config,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        rng=get_rng_state(),
    )
    return out


def restore_checkpoint_state(
    saved: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Load what :func:`checkpoint_state` saved into the given objects (and the global
    RNGs); return the progress."""
    names = [f.name for f in fields(TrainState)]
    if not any(n in saved for n in names):
        raise ValueError(f"the checkpoint's state.pt lacks {names}: not a finetune checkpoint")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    # fields added later (e.g. monitor_note) keep their defaults for older checkpoints
    return TrainState(**{n: saved[n] for n in names if n in saved})
