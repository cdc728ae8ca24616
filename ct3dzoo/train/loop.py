"""The finetune loop: a plain PyTorch loop, written the way a careful practitioner would.

CUDA when available (else CPU), AMP (bf16, or fp16 + GradScaler), ``channels_last_3d``,
optional ``torch.compile``, gradient accumulation and checkpointing, AdamW with a backbone
learning-rate scale, cosine schedule with warm-up, early stopping on validation AUROC, atomic
resumable checkpoints and ``torchrun`` data parallelism.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .batches import (
    EpochSampler,
    IndexedDataset,
    balanced_weights,
    infer_task,
    item_label,
    make_targets,
    metric_targets,
    unpack,
)
from .checkpoint import (
    find_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_text_atomic,
)
from .distributed import DistContext, setup_distributed
from .inference import Precision, _autocast, _autocast_dtype, _check_dataset, _infer, _to_device
from .metrics import Task, aggregate_by_group, classification_metrics, probabilities

__all__ = ["TIMING_KEYS", "FinetuneResult", "finetune"]

Freeze = Literal["none", "backbone", "stem"]
#: history keys that measure time, not the model (they differ between otherwise equal runs)
TIMING_KEYS = ("epoch_time_s", "train_volumes_per_s")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns."""

    history: list[dict[str, float]]
    best_metric: float | None
    best_epoch: int | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    monitor: str | None
    task: Task
    stopped_early: bool = False
    #: ``{"epoch": e, "batch": b}`` where a resumed run picked up (0-based), else None
    resumed_from: dict[str, int] | None = None
    out_dir: Path | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- helpers
def _param_groups(
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


def _frozen_modules(model: nn.Module, freeze: Freeze) -> list[nn.Module]:
    """Modules whose parameters stay fixed (and which stay in eval mode)."""
    if freeze == "none":
        return []
    if freeze == "backbone":
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError("freeze='backbone' needs a model with a .head module")
        head_ids = {id(m) for m in head.modules()}
        return [m for m in model.children() if id(m) not in head_ids]
    if freeze == "stem":
        if not hasattr(model, "stem_modules"):
            raise ValueError("freeze='stem' needs a model with .stem_modules()")
        return list(model.stem_modules())
    raise ValueError(f"freeze must be 'none', 'backbone' or 'stem', got {freeze!r}")


def _cosine_with_warmup(total: int, warmup: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- finetune
def finetune(
    model: nn.Module,
    train_data: Any,
    val_data: Any | None = None,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    out_dir: str | Path,
    task: Task | None = None,
    weight_decay: float = 0.05,
    backbone_lr_scale: float = 1.0,
    freeze: Freeze = "none",
    warmup_epochs: float = 1.0,
    min_lr_ratio: float = 0.0,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = None,
    pos_weight: float | Sequence[float] | torch.Tensor | None = None,
    balanced_sampling: bool = False,
    precision: Precision = "auto",
    channels_last: bool | None = None,
    compile: bool = False,
    grad_checkpointing: bool = False,
    patience: int | None = None,
    monitor: str | None = None,
    min_delta: float = 0.0,
    checkpoint_every_steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    label_names: Sequence[str] | None = None,
    restore_best: bool = True,
    progress: bool = True,
) -> FinetuneResult:
    """Finetune ``model`` on ``train_data``, validating on ``val_data`` after each epoch.

    Items are ``{"image": (C, D, H, W), "label": …, "group": …}`` dicts (as
    ``ct3dzoo.data.CTDataset`` yields) or ``(x, y[, group])`` tuples; labels are an integer
    (binary, or class index for multi-class) or a ``(num_classes,)`` float vector
    (multi-label). ``task`` is inferred from the first label unless given. ``batch_size`` is
    per process; under ``torchrun`` the global batch is ``batch_size * world_size``.

    Options (all keyword-only):

    - ``precision``: ``"auto"`` = bf16 autocast on CUDA (fp16 + GradScaler where bf16 is
      unsupported), fp32 on CPU; ``"bf16"`` / ``"fp16"`` / ``"fp32"`` force one.
    - ``channels_last`` (default: on CUDA), ``compile`` (``torch.compile``),
      ``grad_checkpointing`` (``model.set_grad_checkpointing``), ``grad_accum_steps``,
      ``max_grad_norm``.
    - AdamW (``weight_decay`` on weights only) with ``lr`` for the head and
      ``lr * backbone_lr_scale`` for the rest; ``freeze`` = ``"backbone"`` (linear probe) or
      ``"stem"``; cosine schedule to ``lr * min_lr_ratio`` after ``warmup_epochs`` of linear
      warm-up, stepped per optimiser step.
    - Loss: BCE-with-logits (``pos_weight``) for binary / multi-label, cross-entropy for
      multi-class; ``balanced_sampling`` draws items with weight ``1 / count(label)``.
    - Validation metrics (torchmetrics): ``val_auroc``, ``val_auprc`` (mean over labels, per
      label as ``val_auroc/<name>``), and ``val_study_*`` over items sharing a group key
      (max over windows). ``monitor`` (default ``val_study_auroc`` when groups exist and it
      is defined, else ``val_auroc``; maximised, or minimised for a ``*loss`` key) drives the
      best checkpoint and early stopping after ``patience`` epochs without an improvement
      larger than ``min_delta``.
    - ``out_dir`` receives ``last/`` (each epoch, and every ``checkpoint_every_steps``
      optimiser steps), ``best/``, ``log.jsonl`` and, when the model has ``save_pretrained``,
      ``final/``. ``resume=True`` continues from ``last/`` (or starts fresh if there is none);
      data order and augmentation are functions of ``(seed, epoch, index)``, so a resumed run
      reproduces an uninterrupted one.
    - ``restore_best`` loads the best weights into ``model`` at the end.
    - ``seed`` seeds torch's global RNG at the start (dropout etc.) and the data order.

    The model is trained in place (and moved to the training device). Returns a
    :class:`FinetuneResult`. Raises ``ValueError`` for an empty dataset or labels that do not
    match ``model.num_classes``, and ``FloatingPointError`` on a non-finite loss (the last good
    checkpoint is kept).
    """
    _check_dataset(train_data, "train_data")
    if val_data is not None:
        _check_dataset(val_data, "val_data")
    if patience is not None and val_data is None and monitor is None:
        raise ValueError("patience= needs val_data (early stopping watches validation AUROC)")
    if epochs < 1 or batch_size < 1 or grad_accum_steps < 1:
        raise ValueError("epochs, batch_size and grad_accum_steps must be >= 1")
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("the model needs an integer .num_classes (its number of outputs)")
    if task is not None and task not in ("binary", "multilabel", "multiclass"):
        raise ValueError(f"task must be 'binary', 'multilabel' or 'multiclass', got {task!r}")
    first_label = item_label(train_data, 0)
    task = task or infer_task(first_label, num_classes)
    make_targets(first_label[None], task, num_classes)  # label shape vs num_classes, early

    ctx = setup_distributed(device)
    return _Trainer(
        model,
        train_data,
        val_data,
        ctx=ctx,
        task=task,
        num_classes=num_classes,
        cfg=dict(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            backbone_lr_scale=backbone_lr_scale,
            freeze=freeze,
            warmup_epochs=warmup_epochs,
            min_lr_ratio=min_lr_ratio,
            grad_accum_steps=grad_accum_steps,
            max_grad_norm=max_grad_norm,
            balanced_sampling=balanced_sampling,
            precision=precision,
            seed=seed,
            world_size=ctx.world_size,
        ),
        out_dir=Path(out_dir),
        pos_weight=pos_weight,
        channels_last=ctx.device.type == "cuda" if channels_last is None else channels_last,
        compile=compile,
        grad_checkpointing=grad_checkpointing,
        patience=patience,
        monitor=monitor,
        min_delta=min_delta,
        checkpoint_every_steps=checkpoint_every_steps,
        num_workers=num_workers,
        label_names=label_names,
        progress=progress,
    ).run(resume=resume, restore_best=restore_best)


class _Trainer:
    """State and steps of one finetune run (private; :func:`finetune` is the interface)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        val_data: Any | None,
        *,
        ctx: DistContext,
        task: Task,
        num_classes: int,
        cfg: dict[str, Any],
        out_dir: Path,
        pos_weight: float | Sequence[float] | torch.Tensor | None,
        channels_last: bool,
        compile: bool,
        grad_checkpointing: bool,
        patience: int | None,
        monitor: str | None,
        min_delta: float,
        checkpoint_every_steps: int | None,
        num_workers: int,
        label_names: Sequence[str] | None,
        progress: bool,
    ) -> None:
        self.ctx, self.task, self.num_classes, self.cfg = ctx, task, num_classes, cfg
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.out_dir, self.channels_last = out_dir, channels_last
        self.patience, self.min_delta = patience, min_delta
        self.ckpt_every, self.num_workers = checkpoint_every_steps, num_workers
        self.label_names, self.progress = label_names, progress and ctx.is_main
        device = ctx.device
        self.dtype = _autocast_dtype(cfg["precision"], device)

        torch.manual_seed(cfg["seed"])
        if grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError("grad_checkpointing=True needs model.set_grad_checkpointing()")
            model.set_grad_checkpointing(True)
        self.frozen = _frozen_modules(model, cfg["freeze"])
        if cfg["freeze"] == "backbone":
            head_params = {id(p) for p in model.head.parameters()}
            for p in model.parameters():
                if id(p) not in head_params:
                    p.requires_grad_(False)
        for m in self.frozen:
            m.requires_grad_(False)
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        model.to(device, memory_format=fmt)

        groups = _param_groups(
            model,
            lr=cfg["lr"],
            backbone_lr_scale=cfg["backbone_lr_scale"],
            weight_decay=cfg["weight_decay"],
        )
        if not groups:
            raise ValueError("no trainable parameters (is everything frozen?)")
        self.optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

        weights = None
        if cfg["balanced_sampling"]:
            labels = [item_label(train_data, i) for i in range(len(train_data))]
            weights = balanced_weights(labels)
        self.sampler = EpochSampler(
            len(train_data),
            seed=cfg["seed"],
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            weights=weights,
        )
        self.batches_per_epoch = math.ceil(len(self.sampler) / cfg["batch_size"])
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg["grad_accum_steps"])
        total = cfg["epochs"] * self.steps_per_epoch
        warmup = min(round(cfg["warmup_epochs"] * self.steps_per_epoch), total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _cosine_with_warmup(total, warmup, cfg["min_lr_ratio"])
        )

        pw = None
        if pos_weight is not None:
            if task == "multiclass":
                raise ValueError("pos_weight applies to binary / multi-label (BCE) tasks only")
            pw = torch.as_tensor(pos_weight, dtype=torch.float32).reshape(-1)
            pw = pw.expand(num_classes).clone().to(device)
        self.pos_weight = pw

        train_module: nn.Module = model
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            train_module = self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.train_module = torch.compile(train_module) if compile else train_module
        self.eval_module = torch.compile(model) if compile else model
        self.train_items = IndexedDataset(train_data, seed=cfg["seed"])

        if monitor is None and val_data is not None:
            monitor = "val_auroc"  # becomes val_study_auroc when the data has groups
        self.monitor = monitor

        # progress state (what a checkpoint stores besides weights/optimiser)
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already trained
        self.global_step = 0
        self.loss_sum = 0.0
        self.loss_count = 0.0
        self.epoch_time = 0.0
        self.history: list[dict[str, float]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.done = False
        self.stopped_early = False

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "global_step": self.global_step,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "epoch_time": self.epoch_time,
            "history": self.history,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "done": self.done,
            "stopped_early": self.stopped_early,
            "monitor": self.monitor,
            "task": self.task,
            "config": self.cfg,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
        }

    def _save(self, name: str, *, full: bool = True) -> None:
        if not self.ctx.is_main:
            return
        meta = {"epoch": self.epoch, "batch": self.batch, "global_step": self.global_step}
        if name == "best":
            meta.update(monitor=self.monitor, metric=self.best_metric)
        save_checkpoint(
            self.out_dir / name,
            model=self.model,
            state=self._state() if full else None,
            metadata=meta,
        )

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, self.model, map_location=self.ctx.device)
        changed = {
            k: (state["config"].get(k), v)
            for k, v in self.cfg.items()
            if k != "epochs" and state["config"].get(k) != v
        }
        if changed:
            warnings.warn(
                f"resuming with settings that differ from the checkpoint's (old, new): {changed}; "
                "the run will not reproduce an uninterrupted one",
                stacklevel=4,
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for key in (
            "epoch",
            "batch",
            "global_step",
            "loss_sum",
            "loss_count",
            "epoch_time",
            "history",
            "best_metric",
            "best_epoch",
            "bad_epochs",
            "done",
            "stopped_early",
            "monitor",
        ):
            setattr(self, key, state[key])
        set_rng_state(state["rng"])

    def _write_log(self) -> None:
        if self.ctx.is_main:
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            write_text_atomic(self.out_dir / "log.jsonl", lines)

    # ------------------------------------------------------------------ steps
    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "multiclass":
            return F.cross_entropy(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)

    def _set_train_mode(self) -> None:
        self.model.train()
        for m in self.frozen:
            m.eval()

    def _train_epoch(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        accum = cfg["grad_accum_steps"]
        nb = self.batches_per_epoch
        self.sampler.set_epoch(self.epoch, start=self.batch * cfg["batch_size"])
        loader = DataLoader(
            self.train_items,
            batch_size=cfg["batch_size"],
            sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=ctx.device.type == "cuda",
            # a private generator: creating the iterator must not consume the global RNG
            generator=torch.Generator().manual_seed(cfg["seed"] + self.epoch),
        )
        self._set_train_mode()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=nb,
                initial=self.batch,
                desc=f"epoch {self.epoch + 1}/{cfg['epochs']}",
                unit="batch",
                dynamic_ncols=True,
            )
        t0 = time.perf_counter()
        acc = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss*n, n
        volumes = 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, collated in enumerate(loader, start=self.batch):
            b = unpack(collated)
            if b.label is None:
                raise ValueError("training items need labels")
            x = _to_device(b.image, ctx.device, self.channels_last)
            y = make_targets(b.label, self.task, self.num_classes).to(ctx.device)
            group_start = (i // accum) * accum
            group_size = min(accum, nb - group_start)
            is_step = i + 1 == group_start + group_size
            sync = contextlib.nullcontext()
            if self.ddp is not None and not is_step:
                sync = self.ddp.no_sync()  # accumulate locally; all-reduce on the last one
            with sync:
                with _autocast(ctx.device, self.dtype):
                    logits = self.train_module(x)
                loss = self._loss(logits, y)
                self.scaler.scale(loss / group_size).backward()
            acc[0] += loss.detach().double() * x.shape[0]
            acc[1] += x.shape[0]
            volumes += x.shape[0]
            if not is_step:
                continue
            ctx.all_reduce_sum(acc)
            step_loss, step_n = acc.tolist()
            acc.zero_()
            if not math.isfinite(step_loss):
                last = find_checkpoint(self.out_dir / "last")
                raise FloatingPointError(
                    f"non-finite loss at epoch {self.epoch + 1}, optimiser step "
                    f"{self.global_step + 1} (batches {group_start}-{i} of the epoch); training "
                    f"stopped. Last good checkpoint: {last or 'none written yet'}"
                )
            if cfg["max_grad_norm"] is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg["max_grad_norm"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.global_step += 1
            self.batch = i + 1
            self.loss_sum += step_loss
            self.loss_count += step_n
            if bar is not None:
                bar.update(group_size)
                rate = volumes / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{self.loss_sum / self.loss_count:.4f}", vol_s=f"{rate:.1f}")
            if self.ckpt_every and self.global_step % self.ckpt_every == 0 and self.batch < nb:
                self._save("last")
                ctx.barrier()
        if bar is not None:
            bar.close()
        self.epoch_time += time.perf_counter() - t0

    def _validate(self) -> dict[str, float]:
        logits, labels, groups = _infer(
            self.eval_module,
            self.val_data,
            batch_size=self.cfg["batch_size"],
            num_workers=self.num_workers,
            ctx=self.ctx,
            dtype=self.dtype,
            channels_last=self.channels_last,
        )
        if labels is None:
            raise ValueError("validation items need labels")
        targets = make_targets(labels, self.task, self.num_classes)
        out = {"val_loss": float(self._loss(logits, targets.to(logits.device)))}
        probs = probabilities(logits, self.task)
        mt = metric_targets(targets, self.task, self.num_classes)
        out.update(classification_metrics(probs, mt, label_names=self.label_names, prefix="val_"))
        if groups is not None:
            _, gp = aggregate_by_group(probs, groups, reduction="max")
            _, gt = aggregate_by_group(mt, groups, reduction="max")
            out.update(
                classification_metrics(gp, gt, label_names=self.label_names, prefix="val_study_")
            )
        return out

    def _end_epoch(self) -> None:
        record: dict[str, float] = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "train_loss": self.loss_sum / max(self.loss_count, 1.0),
        }
        if self.val_data is not None:
            metrics = self._validate()
            study = metrics.get("val_study_auroc", math.nan)
            if self.epoch == 0 and self.monitor == "val_auroc" and not math.isnan(study):
                self.monitor = "val_study_auroc"  # the paper's study-level score
            record.update(metrics)
        record["epoch_time_s"] = self.epoch_time
        record["train_volumes_per_s"] = self.loss_count / max(self.epoch_time, 1e-9)
        self.history.append(record)
        self.epoch += 1
        self.batch, self.loss_sum, self.loss_count, self.epoch_time = 0, 0.0, 0.0, 0.0

        improved = False
        if self.monitor is not None:
            if self.monitor not in record:
                raise KeyError(f"monitor={self.monitor!r} is not among {sorted(record)}")
            sign = -1.0 if "loss" in self.monitor else 1.0  # losses are minimised
            value, best = sign * record[self.monitor], self.best_metric
            best = None if best is None else sign * best
            improved = best is None or (
                not math.isnan(value) and (math.isnan(best) or value > best + self.min_delta)
            )
            if improved:
                self.best_metric, self.best_epoch, self.bad_epochs = sign * value, self.epoch, 0
            else:
                self.bad_epochs += 1
            if self.patience is not None and self.bad_epochs >= self.patience:
                self.stopped_early = True
        self.done = self.stopped_early or self.epoch >= self.cfg["epochs"]
        if improved:
            self._save("best", full=False)
        self._save("last")
        self._write_log()
        self.ctx.barrier()

    # ------------------------------------------------------------------ run
    def run(self, *, resume: bool, restore_best: bool) -> FinetuneResult:
        resumed_from = None
        if resume and find_checkpoint(self.out_dir / "last") is not None:
            self._load(self.out_dir / "last")
            resumed_from = {"epoch": self.epoch, "batch": self.batch}
        elif self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("last", "best", "final"):
                if find_checkpoint(self.out_dir / stale) is not None:
                    warnings.warn(
                        f"overwriting {self.out_dir / stale} (resume=False)", stacklevel=3
                    )
                    break
        self.ctx.barrier()
        while not self.done:
            self._train_epoch()
            self._end_epoch()
        best = find_checkpoint(self.out_dir / "best")
        if restore_best and best is not None:
            load_checkpoint(best, self.model)
        if self.ctx.is_main and hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(str(self.out_dir / "final"))
        self.ctx.barrier()
        return FinetuneResult(
            history=self.history,
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
            best_checkpoint=best,
            last_checkpoint=find_checkpoint(self.out_dir / "last"),
            monitor=self.monitor,
            task=self.task,
            stopped_early=self.stopped_early,
            resumed_from=resumed_from,
            out_dir=self.out_dir,
        )
