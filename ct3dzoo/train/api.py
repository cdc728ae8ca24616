"""``finetune()``: checks the data and options, picks the task and monitor, runs the loop.

The options are the fields of :class:`~ct3dzoo.train.config.FinetuneConfig`; the loop is
:mod:`.loop`.
"""

from __future__ import annotations

import inspect
import textwrap
import warnings
from dataclasses import MISSING, fields
from typing import Any

from torch import nn

from ..errors import SingleClassValidationWarning
from .batches import all_labels, infer_task, item_label, make_targets, metric_targets
from .config import FinetuneConfig, Task, options_doc
from .distributed import setup_distributed
from .inference import _check_dataset
from .loop import _Trainer
from .metrics import single_class_columns
from .record import training_preprocessing
from .state import FinetuneResult

__all__ = ["FinetuneResult", "finetune"]


def finetune(
    model: nn.Module,
    train_data: Any,
    val_data: Any | None = None,
    *,
    config: FinetuneConfig | None = None,
    **options: Any,
) -> FinetuneResult:
    """Finetune ``model`` on ``train_data``, validating on ``val_data`` after each epoch.

    Items are ``{"image": (C, D, H, W) in [0, 1], "label": …, "group": …}`` dicts (as
    ``ct3dzoo.data.CTDataset`` yields) or ``(x, y[, group])`` tuples; labels are 0/1
    (binary), a class index (multi-class) or a ``(num_classes,)`` 0/1 vector (multi-label),
    or a 0/1 mask ``(num_classes, D, H, W)`` (``(D, H, W)`` for one class) on the image's
    grid for segmentation: the model then outputs ``(B, num_classes, D, H, W)`` logits
    (``head="segmentation"``), the loss is BCE + soft Dice
    (:func:`~ct3dzoo.train.segmentation.segmentation_loss`), and validation reports
    ``val_dice`` (dataset-level Dice, the default monitor) and ``val_dice_case``.
    ``task`` is inferred from the first label unless given. ``batch_size`` is per process;
    under ``torchrun`` the global batch is ``batch_size * world_size``.

    The options are keyword-only and are the fields of
    :class:`~ct3dzoo.train.config.FinetuneConfig` (defaults and help live there; an unknown
    name is a ``TypeError`` naming the nearest valid one). Pass ``config=`` to start from a
    config object; keyword options override its fields.

    The model is trained in place (and moved to the training device); ``out_dir`` receives
    ``last/``, ``best/``, ``log.jsonl`` and, when the model has ``save_pretrained``,
    ``final/``. A ct3dzoo model gets ``model.preprocessing``: the evaluation pipeline of the
    data (``CTDataset.preprocessing``: reading, resampling, crops, HU windows), the label
    names and the task, plus the validation figures of the saved weights; every saved folder
    holds it as ``preprocessor_config.json`` (``final/`` also ``validation_scores.csv``, one row
    per validation study), so ``ct3dzoo.load`` + ``ct3dzoo predict`` reproduce the validation.

    ``resume=True`` continues from ``last/``; with a larger ``epochs`` than the checkpoint's
    run it trains on to the new total, the cosine schedule rebuilt for the new total and
    continued from the current optimiser step. A validation set with one class
    only makes AUROC undefined: a warning at the start, and the default monitor becomes
    ``val_loss``; ``result.monitor`` says which key was used and ``result.monitor_note`` why.

    Raises ``ValueError`` for an empty dataset, labels that do not match
    ``model.num_classes`` or binary labels other than 0/1, and ``FloatingPointError`` on a
    non-finite loss (the last good checkpoint is kept).

    Options:

    """
    cfg = FinetuneConfig.from_options(options, base=config)
    _check_dataset(train_data, "train_data")
    if val_data is not None:
        _check_dataset(val_data, "val_data")
    if cfg.patience is not None and val_data is None and cfg.monitor is None:
        raise ValueError("patience= needs val_data (early stopping watches validation AUROC)")
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int):
        raise ValueError("the model needs an integer .num_classes (its number of outputs)")
    first_label = item_label(train_data, 0)
    task = cfg.task or infer_task(first_label, num_classes)
    make_targets(first_label[None], task, num_classes)  # label shape and values, early
    if task == "segmentation" and cfg.balanced_sampling:
        raise ValueError(
            "balanced_sampling=True weighs items by their class label; it does not "
            "apply to segmentation masks (leave it False)"
        )
    monitor, note = _choose_monitor(cfg, val_data, task, num_classes)
    if hasattr(model, "save_pretrained"):  # the record every saved folder carries
        model.preprocessing = training_preprocessing(
            train_data, val_data, task=task, label_names=cfg.label_names
        )
    ctx = setup_distributed(cfg.device)
    trainer = _Trainer(
        model, train_data, val_data, cfg, ctx=ctx, task=task, monitor=monitor, monitor_note=note
    )
    return trainer.run()


finetune.__doc__ = (
    (finetune.__doc__ or "").rstrip(" ") + textwrap.indent(options_doc(), "    ") + "\n"
)
finetune.__signature__ = inspect.signature(
    finetune
).replace(  # type: ignore[attr-defined]
    parameters=[
        *list(inspect.signature(finetune).parameters.values())[:4],
        *(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if f.default is MISSING else f.default,
                annotation=f.type,
            )
            for f in fields(FinetuneConfig)
        ),
    ]
)


def _choose_monitor(
    cfg: FinetuneConfig, val_data: Any, task: Task, num_classes: int
) -> tuple[str | None, str | None]:
    """The monitor to start with and, for a fallback, why: ``cfg.monitor``, else
    ``val_auroc`` (switched to ``val_study_auroc`` after the first validation when the data
    has groups), else ``val_loss`` when the validation labels hold one class only (with a
    warning)."""
    if val_data is None:
        return cfg.monitor, None
    if task == "segmentation":
        return cfg.monitor or "val_dice", None
    labels = all_labels(val_data)
    targets = metric_targets(make_targets(labels, task, num_classes), task, num_classes)
    undefined = single_class_columns(targets)
    if not undefined:
        return cfg.monitor or "val_auroc", None
    names = list(cfg.label_names or range(targets.shape[1]))
    if len(undefined) < targets.shape[1]:
        warnings.warn(
            f"val_data holds one class only for label(s) {[names[j] for j in undefined]}: their "
            "AUROC/AUPRC are NaN and left out of the means",
            SingleClassValidationWarning,
            stacklevel=3,
        )
        return cfg.monitor or "val_auroc", None
    present = sorted({int(v) for v in (targets > 0.5).flatten().tolist()})
    if cfg.monitor is not None and "loss" not in cfg.monitor:
        raise ValueError(
            f"monitor={cfg.monitor!r} is undefined: val_data holds one class only "
            f"(all targets {present[0]}), so AUROC/AUPRC are NaN. Add cases of both classes "
            "to the validation set, or pass monitor='val_loss'"
        )
    note = (
        f"val_data holds one class only (all {len(labels)} targets are {present[0]}): AUROC/"
        "AUPRC are undefined, so the best epoch and early stopping follow the validation "
        "loss (monitor='val_loss')"
    )
    msg = f"{note}. Add cases of both classes to the validation set to monitor AUROC"
    warnings.warn(msg, SingleClassValidationWarning, stacklevel=3)
    return (cfg.monitor, None) if cfg.monitor is not None else ("val_loss", note)
