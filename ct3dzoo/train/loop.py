"""The finetune loop (``_Trainer``, run by :func:`ct3dzoo.train.api.finetune`): a plain
PyTorch loop, written the way a careful practitioner would.

CUDA when available (else CPU), AMP (bf16, or fp16 + GradScaler), ``channels_last_3d``,
optional ``torch.compile``, gradient accumulation and checkpointing, early stopping on
validation AUROC (Dice for segmentation, :mod:`.segmentation`), atomic resumable checkpoints and ``torchrun`` data parallelism. The options
live in :class:`~ct3dzoo.train.config.FinetuneConfig`, the optimiser and schedule in
:mod:`.optim`, the resumable progress in :mod:`.state`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._io.atomic import atomic_write_text
from .batches import (
    EpochSampler,
    IndexedDataset,
    balanced_weights,
    item_label,
    make_targets,
    unpack,
)
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import FinetuneConfig
from .distributed import DistContext
from .inference import _autocast, _autocast_dtype, _infer, _to_device, default_channels_last
from .metrics import Task
from .optim import apply_freeze, build_optimizer, build_scheduler, sync_lr
from .record import has_record, stamp_validation, write_validation_scores
from .segmentation import segmentation_loss, validate_segmentation
from .state import FinetuneResult, TrainState, checkpoint_state, restore_checkpoint_state
from .validation import CI_RESAMPLES, ValidationPass, classification_figures

__all__ = ["CI_RESAMPLES", "TIMING_KEYS"]

#: history keys that measure time, not the model (they differ between otherwise equal runs)
TIMING_KEYS = ("epoch_time_s", "train_volumes_per_s")


class _Trainer:
    """Objects and steps of one finetune run (private; :func:`finetune` is the interface)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        val_data: Any | None,
        cfg: FinetuneConfig,
        *,
        ctx: DistContext,
        task: Task,
        monitor: str | None,
        monitor_note: str | None = None,
    ) -> None:
        self.cfg, self.ctx, self.task = cfg, ctx, task
        self.num_classes: int = model.num_classes  # type: ignore[assignment]
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.out_dir = Path(cfg.out_dir)
        device = ctx.device
        self.channels_last = (
            default_channels_last(model, device) if cfg.channels_last is None else cfg.channels_last
        )
        self.progress = cfg.progress and ctx.is_main
        self.dtype = _autocast_dtype(cfg.precision, device)

        torch.manual_seed(cfg.seed)
        if cfg.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError("grad_checkpointing=True needs model.set_grad_checkpointing()")
            model.set_grad_checkpointing(True)
        self.frozen = apply_freeze(model, cfg.freeze)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        model.to(device, memory_format=fmt)
        self.optimizer = build_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)

        weights = None
        if cfg.balanced_sampling:
            weights = balanced_weights([item_label(train_data, i) for i in range(len(train_data))])
        self.sampler = EpochSampler(
            len(train_data), seed=cfg.seed, num_replicas=ctx.world_size, rank=ctx.rank,
            weights=weights,
        )  # fmt: skip
        self.batches_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)

        self.pos_weight = None
        if cfg.pos_weight is not None:
            if task == "multiclass":
                raise ValueError("pos_weight applies to binary / multi-label (BCE) tasks only")
            pw = torch.as_tensor(cfg.pos_weight, dtype=torch.float32).reshape(-1)
            self.pos_weight = pw.expand(self.num_classes).clone().to(device)

        train_module: nn.Module = model
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            train_module = self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.train_module = torch.compile(train_module) if cfg.compile else train_module
        self.eval_module = torch.compile(model) if cfg.compile else model
        self.train_items = IndexedDataset(train_data, seed=cfg.seed)
        self.state = TrainState(monitor=monitor, monitor_note=monitor_note)
        #: the latest validation pass (probs, targets, groups); the latest and the best
        #: epoch's (history record, that pass, epoch) for the saved folders' records
        self.last_val: ValidationPass | None = None
        self.epoch_val: tuple[dict[str, Any], ValidationPass, int] | None = None
        self.best_val: tuple[dict[str, Any], ValidationPass, int] | None = None

    # ------------------------------------------------------------------ checkpoints
    def _config_record(self) -> dict[str, Any]:
        cfg = self.cfg
        return {**cfg.reproducible(), "epochs": cfg.epochs, "world_size": self.ctx.world_size}

    def _save(self, name: str, *, full: bool = True) -> None:
        if not self.ctx.is_main or not self.cfg.keep_checkpoints:
            return
        st = self.state
        meta = {"epoch": st.epoch, "batch": st.batch, "global_step": st.global_step}
        if name == "best":
            meta.update(monitor=st.monitor, metric=st.best_metric)
        payload = None
        if full:
            payload = checkpoint_state(
                st, task=self.task, config=self._config_record(), optimizer=self.optimizer,
                scheduler=self.scheduler, scaler=self.scaler,
            )  # fmt: skip
        if self.state.history and self.last_val is not None:
            stamp_validation(self.model, self.state.history[-1], groups=self.last_val[2],
                             n_items=len(self.val_data), epoch=st.epoch, monitor=st.monitor)  # fmt: skip
        save_checkpoint(self.out_dir / name, model=self.model, state=payload, metadata=meta)

    def _load(self, path: Path) -> None:
        saved = load_checkpoint(path, self.model, map_location=self.ctx.device)
        old = saved["config"]
        changed = {
            k: (old.get(k), v)
            for k, v in self._config_record().items()
            if k != "epochs" and old.get(k) != v
        }
        if changed:
            warnings.warn(
                f"resuming with settings that differ from the checkpoint's (old, new): {changed}; "
                "the run will not reproduce an uninterrupted one",
                stacklevel=4,
            )
        st = restore_checkpoint_state(
            saved, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler
        )
        sync_lr(self.scheduler)  # the schedule of this run's epochs, from the saved step on
        if st.stopped_early and st.epoch < self.cfg.epochs:
            warnings.warn(
                f"{path} is a run that stopped early at epoch {st.epoch} ({st.bad_epochs} epochs "
                f"without improvement of {st.monitor}); resume=True does not train it further. "
                "Start a new run (e.g. from its best/ weights) to train more",
                stacklevel=4,
            )
        st.done = st.stopped_early or st.epoch >= self.cfg.epochs
        self.state = st

    def _write_log(self) -> None:
        if self.ctx.is_main:
            lines = "".join(json.dumps(h) + "\n" for h in self.state.history)
            atomic_write_text(self.out_dir / "log.jsonl", lines)

    # ------------------------------------------------------------------ steps
    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.task == "segmentation":
            return segmentation_loss(logits, target, pos_weight=self.pos_weight)
        if self.task == "multiclass":
            return F.cross_entropy(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)

    def _set_train_mode(self) -> None:
        self.model.train()
        for m in self.frozen:
            m.eval()

    def _train_epoch(self) -> None:
        cfg, ctx, st = self.cfg, self.ctx, self.state
        accum, nb = cfg.grad_accum_steps, self.batches_per_epoch
        self.sampler.set_epoch(st.epoch, start=st.batch * cfg.batch_size)
        loader = DataLoader(
            self.train_items,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=ctx.device.type == "cuda",
            # a private generator: creating the iterator must not consume the global RNG
            generator=torch.Generator().manual_seed(cfg.seed + st.epoch),
        )
        self._set_train_mode()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=nb, initial=st.batch, desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
                unit="batch", dynamic_ncols=True,
            )  # fmt: skip
        t0 = time.perf_counter()
        acc = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss*n, n
        volumes = 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, collated in enumerate(loader, start=st.batch):
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
                    f"non-finite loss at epoch {st.epoch + 1}, optimiser step "
                    f"{st.global_step + 1} (batches {group_start}-{i} of the epoch); training "
                    f"stopped. Last good checkpoint: {last or 'none written yet'}"
                )
            if cfg.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            st.global_step += 1
            st.batch = i + 1
            st.loss_sum += step_loss
            st.loss_count += step_n
            if bar is not None:
                bar.update(group_size)
                rate = volumes / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{st.loss_sum / st.loss_count:.4f}", vol_s=f"{rate:.1f}")
            every = cfg.checkpoint_every_steps
            if every and st.global_step % every == 0 and st.batch < nb:
                self._save("last")
                ctx.barrier()
        if bar is not None:
            bar.close()
        st.epoch_time += time.perf_counter() - t0

    def _validate(self) -> dict[str, Any]:
        if self.task == "segmentation":
            return validate_segmentation(
                self.eval_module, self.val_data, num_classes=self.num_classes,
                batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers, ctx=self.ctx,
                dtype=self.dtype, channels_last=self.channels_last, pos_weight=self.pos_weight,
            )  # fmt: skip
        logits, labels, groups = _infer(
            self.eval_module, self.val_data, batch_size=self.cfg.batch_size,
            num_workers=self.cfg.num_workers, ctx=self.ctx, dtype=self.dtype,
            channels_last=self.channels_last,
        )  # fmt: skip
        if labels is None:
            raise ValueError("validation items need labels")
        out, self.last_val = classification_figures(
            logits, labels, groups, task=self.task, num_classes=self.num_classes,
            loss=self._loss, label_names=self.cfg.label_names, seed=self.cfg.seed,
        )  # fmt: skip
        return out

    def _end_epoch(self) -> None:
        st = self.state
        record: dict[str, Any] = {
            "epoch": st.epoch + 1,
            "step": st.global_step,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "train_loss": st.loss_sum / max(st.loss_count, 1.0),
        }
        if self.val_data is not None:
            metrics = self._validate()
            study = metrics.get("val_study_auroc", math.nan)
            auto = self.cfg.monitor is None and st.monitor == "val_auroc"
            if st.epoch == 0 and auto and not math.isnan(study):
                st.monitor = "val_study_auroc"  # the paper's study-level score
            record.update(metrics)
        record["epoch_time_s"] = st.epoch_time
        record["train_volumes_per_s"] = st.loss_count / max(st.epoch_time, 1e-9)
        st.history.append(record)
        if self.val_data is not None and self.task != "segmentation":
            self.epoch_val = (record, self.last_val, st.epoch + 1)  # the weights as they are now
        st.epoch += 1
        st.start_epoch()

        improved = False
        if st.monitor is not None:
            if st.monitor not in record:
                raise KeyError(f"monitor={st.monitor!r} is not among {sorted(record)}")
            current = record[st.monitor]
            if not isinstance(current, float | int):
                raise ValueError(
                    f"monitor={st.monitor!r} is an interval [low, high], not a number: "
                    f"monitor {st.monitor.replace('_ci', '')!r} instead"
                )
            sign = -1.0 if "loss" in st.monitor else 1.0  # losses are minimised
            value, best = sign * current, st.best_metric
            best = None if best is None else sign * best
            improved = best is None or (
                not math.isnan(value) and (math.isnan(best) or value > best + self.cfg.min_delta)
            )
            if improved:
                st.best_metric, st.best_epoch, st.bad_epochs = sign * value, st.epoch, 0
                self.best_val = self.epoch_val
            else:
                st.bad_epochs += 1
            if self.cfg.patience is not None and st.bad_epochs >= self.cfg.patience:
                st.stopped_early = True
        st.done = st.stopped_early or st.epoch >= self.cfg.epochs
        if improved:
            self._save("best", full=False)
        self._save("last")
        self._write_log()
        self.ctx.barrier()

    # ------------------------------------------------------------------ run
    def run(self) -> FinetuneResult:
        resumed_from = None
        if self.cfg.resume and find_checkpoint(self.out_dir / "last") is not None:
            self._load(self.out_dir / "last")
            resumed_from = {"epoch": self.state.epoch, "batch": self.state.batch}
        elif self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("last", "best", "final"):
                if find_checkpoint(self.out_dir / stale) is not None:
                    warnings.warn(
                        f"overwriting {self.out_dir / stale} (resume=False)", stacklevel=3
                    )
                    break
        self.ctx.barrier()
        while not self.state.done:
            self._train_epoch()
            self._end_epoch()
        best = find_checkpoint(self.out_dir / "best")
        if self.cfg.restore_best and best is not None:
            load_checkpoint(best, self.model)
        final_val = None
        if self.val_data is not None and self.task != "segmentation" and has_record(self.model):
            # the saved weights' own validation: the epoch they come from, computed then;
            # validated again only when that epoch ran before a resume (all ranks infer)
            final_val = self.best_val if self.cfg.restore_best and best is not None else (
                self.epoch_val
            )  # fmt: skip
            if final_val is None:
                final_val = (self._validate(), self.last_val, self.state.best_epoch)
            metrics, (_, _, groups), epoch = final_val
            stamp_validation(self.model, metrics, groups=groups, n_items=len(self.val_data),
                             epoch=epoch, monitor=self.state.monitor)  # fmt: skip
        if self.ctx.is_main and hasattr(self.model, "save_pretrained"):
            final = self.model.save_pretrained(str(self.out_dir / "final"))
            if final_val is not None:
                probs, mt, groups = final_val[1]
                names = self.model.preprocessing.label_names
                write_validation_scores(final, probs, mt, groups, names)
        self.ctx.barrier()
        st = self.state
        return FinetuneResult(
            history=st.history,
            best_metric=st.best_metric,
            best_epoch=st.best_epoch,
            best_checkpoint=best,
            last_checkpoint=find_checkpoint(self.out_dir / "last"),
            monitor=st.monitor,
            monitor_note=st.monitor_note,
            task=self.task,
            stopped_early=st.stopped_early,
            resumed_from=resumed_from,
            out_dir=self.out_dir,
        )
