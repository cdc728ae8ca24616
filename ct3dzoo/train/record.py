"""The training record a finetuned model carries: its data's evaluation pipeline, label
names, task and validation figures (``preprocessor_config.json``), and the per-study
validation scores (``validation_scores.csv``) that ``ct3dzoo predict`` reproduces."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io.atomic import atomic_write_text
from ..data.pipeline import Preprocessing
from .metrics import aggregate_by_group

__all__ = [
    "SCORES_NAME",
    "data_preprocessing",
    "training_preprocessing",
    "validation_record",
    "write_validation_scores",
]

#: per-study validation scores of the saved weights, beside the model
SCORES_NAME = "validation_scores.csv"


def data_preprocessing(data: Any) -> Preprocessing | None:
    """``data.preprocessing`` (also through ``torch.utils.data.Subset`` wrappers)."""
    for _ in range(4):
        pp = getattr(data, "preprocessing", None)
        if isinstance(pp, Preprocessing):
            return pp
        data = getattr(data, "dataset", None)
        if data is None:
            return None
    return None


def training_preprocessing(
    train_data: Any, val_data: Any, *, task: str, label_names: Sequence[str] | None
) -> Preprocessing:
    """The evaluation pipeline of the data a run was given: the validation data's (what the
    validation scores were computed with), else the training data's evaluation counterpart.
    Data that do not describe their preprocessing give a record marked not reproducible."""
    pp = data_preprocessing(val_data) if val_data is not None else None
    pp = pp or data_preprocessing(train_data)
    if pp is None:
        pp = Preprocessing(
            unserialisable=(
                f"the training data ({type(train_data).__name__}) do not describe their "
                "preprocessing (build them with ct3dzoo.data.CTDataset)",
            )
        )
    names = tuple(label_names) if label_names else pp.label_names
    return pp.replace(label_names=names, task=task)


def has_record(model: Any) -> bool:
    """Whether ``model`` carries a training record (``model.preprocessing``)."""
    return isinstance(getattr(model, "preprocessing", None), Preprocessing)


def stamp_validation(
    model: Any,
    metrics: dict[str, Any],
    *,
    groups: Sequence[str] | None,
    n_items: int,
    epoch: int | None,
    monitor: str | None,
) -> None:
    """Put the validation figures of the weights about to be saved into ``model``'s record
    (nothing for a model without one)."""
    if has_record(model):
        n = count_studies(groups, n_items)
        rec = validation_record(metrics, n_studies=n, epoch=epoch, monitor=monitor)
        model.preprocessing = model.preprocessing.replace(validation=rec)


def count_studies(groups: Sequence[str] | None, n_items: int) -> int:
    """Studies in a validation pass: distinct groups, else items."""
    return len(set(groups)) if groups is not None else n_items


def validation_record(
    metrics: dict[str, Any], *, n_studies: int | None, epoch: int | None, monitor: str | None
) -> dict[str, Any]:
    """The ``validation`` entry of a saved pipeline: the ``val_*`` figures of the saved
    weights, the number of validation studies, the epoch and the monitored key."""
    kept = {k: v for k, v in metrics.items() if k.startswith("val_")}
    return {"metrics": kept, "n_studies": n_studies, "epoch": epoch, "monitor": monitor}


def write_validation_scores(
    folder: str | os.PathLike,
    probs: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str] | None,
    label_names: Sequence[str],
) -> Path:
    """Write ``validation_scores.csv``: one row per study (its ``group``, the key
    ``val_study_*`` aggregate over: max over its items), ``score_<label>`` probabilities and
    ``label_<label>`` targets."""
    ids = list(groups) if groups is not None else [str(i) for i in range(len(probs))]
    names, p = aggregate_by_group(probs, ids, reduction="max")
    _, t = aggregate_by_group(targets.float(), ids, reduction="max")
    cols = list(label_names) or [str(j) for j in range(p.shape[1])]
    if len(cols) != p.shape[1]:
        cols = [str(j) for j in range(p.shape[1])]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", *(f"score_{c}" for c in cols), *(f"label_{c}" for c in cols)])
    for i, name in enumerate(names):
        w.writerow([name, *(f"{float(v):.8f}" for v in p[i]), *(f"{float(v):g}" for v in t[i])])
    path = Path(folder) / SCORES_NAME
    atomic_write_text(path, buf.getvalue())
    return path
