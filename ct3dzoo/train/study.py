"""Whole-study prediction (the paper's protocol as an API): slice windows -> study score.

A study (a path or `CTVolume` in HU) is turned into the model's input by the model's own
pipeline (:func:`ct3dzoo.data.study_input`: what training used, for a finetuned model), cut
into windows of ``num_slices`` consecutive slices every ``stride`` slices (the last one
shifted to end at the last slice, so every slice is covered; a study shorter than one window
is padded with air), each window is scored by the model, and the study score is the
``reduce`` (max by default) over the windows' probabilities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from .._cli_args import deprecated_alias
from ..data.geometry import slice_windows
from ..data.model_input import PAPER_NUM_SLICES, PAPER_STRIDE, study_input
from ..data.pipeline import Preprocessing
from ..data.volume import CTVolume
from ..data.windows import WindowSpec, stack_windows
from .metrics import Task, check_task, probabilities

__all__ = ["StudyPrediction", "model_task", "predict_study"]


def model_task(model: nn.Module, task: Task | None, num_outputs: int) -> Task:
    """The task to score with: ``task`` if given (checked against the model), else the
    model's training record, else binary for one output. A task that cannot be right for
    the model (multiclass on one logit, binary on several) is an error."""
    pp = getattr(model, "preprocessing", None)
    recorded = pp.task if isinstance(pp, Preprocessing) else None
    chosen = task or recorded
    if chosen is None:
        if num_outputs != 1:
            raise ValueError(
                f"the model has {num_outputs} outputs and no recorded task: pass "
                "task='multilabel' (sigmoid per output) or task='multiclass' (softmax)"
            )
        chosen = "binary"
    if chosen == "segmentation":
        raise ValueError("a segmentation model has no study score; predict masks with model(x)")
    check_task(chosen, num_outputs)
    if recorded and task and task != recorded and {task, recorded} != {"binary", "multilabel"}:
        raise ValueError(f"the model was trained for task={recorded!r}; task={task!r} differs")
    return chosen  # type: ignore[return-value]


@dataclass(frozen=True)
class StudyPrediction:
    """Scores of one study.

    Attributes:
        score: study probability, ``(num_outputs,)`` (index ``[0]`` for a binary model).
        window_scores: ``(num_windows, num_outputs)`` probability of each slice window.
        window_ranges: ``(start, stop)`` slice range of each window (``stop`` exclusive).
        slice_scores: ``(D, num_outputs)``: per slice, the max over the windows covering it.
        logit: ``(num_outputs,)`` the ``reduce`` over the windows' logits.
        window_logits: ``(num_windows, num_outputs)`` logits of each window.
        task, reduce: how the probabilities were made and reduced; ``num_slices``,
            ``stride``: the slice windows used.
        preprocessing: the pipeline that read the study (None for an array input);
        changes: how it differs from the model's training (empty when it does not).
    """

    score: np.ndarray
    window_scores: np.ndarray
    window_ranges: list[tuple[int, int]]
    slice_scores: np.ndarray
    logit: np.ndarray | None = None
    window_logits: np.ndarray | None = None
    task: str = "binary"
    reduce: str = "max"
    num_slices: int = 0
    stride: int = 0
    preprocessing: Preprocessing | None = None
    changes: list[str] = field(default_factory=list)


def _as_input(volume: np.ndarray | torch.Tensor, windows: object) -> torch.Tensor:
    """``(C, D, H, W)`` float tensor in [0, 1]."""
    x = volume if isinstance(volume, torch.Tensor) else torch.from_numpy(np.asarray(volume))
    x = x.float()
    if windows is not None:
        if x.dim() != 3:
            raise ValueError(f"windows= needs HU of shape (D, H, W); got {tuple(x.shape)}")
        x = stack_windows(x, windows)  # type: ignore[arg-type]
    if x.dim() == 5 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(
            f"volume must be (D, H, W), (C, D, H, W) or (1, C, D, H, W); got {tuple(x.shape)}"
        )
    return x


@torch.inference_mode()
def predict_study(
    model: nn.Module,
    volume: str | os.PathLike | CTVolume | np.ndarray | torch.Tensor,
    *,
    num_slices: int | None = None,
    stride: int | None = None,
    reduce: Literal["max", "mean"] | None = None,
    batch_size: int = 4,
    windows: WindowSpec | Sequence[WindowSpec] | None = None,
    task: Task | None = None,
    device: str | torch.device | None = None,
    preprocessing: Preprocessing | None = None,
    series_uid: str | None = None,
    window: int | None = None,
) -> StudyPrediction:
    """Score one whole study by sliding slice windows (paper: 32 slices every 24).

    Args:
        model: a ct3dzoo model (or any module mapping ``(B, C, num_slices, H, W)`` to logits
            ``(B, num_outputs)``); put in eval mode for the call.
        volume: a study (DICOM folder/file, NIfTI, ``.npy``/``.npz`` path, or a `CTVolume`
            in HU), read and preprocessed with the model's pipeline
            (:func:`ct3dzoo.data.study_input`: the training record of a finetuned model, else
            the source weights' contract); or an array ``(D, H, W)`` / ``(C, D, H, W)``
            already in [0, 1] (or HU together with ``windows``).
        num_slices, stride: slices per window and step between window starts; default: the
            model's record (None there: the whole depth in one window), else 32 and 24.
        reduce: ``"max"`` (paper) or ``"mean"`` over the windows' probabilities; default:
            the record's, else max.
        batch_size: windows per forward pass.
        windows: HU window preset(s) or ``(centre, width)`` (one channel each), overriding
            the record's; for an array, windows to apply to HU first.
        task: ``"binary"``/``"multilabel"`` (sigmoid) or ``"multiclass"`` (softmax); default:
            the model's recorded task (binary for one output).
        device: where to run (default: the model's device).
        preprocessing: a :class:`~ct3dzoo.data.Preprocessing` to use instead of the model's.
        series_uid: the DICOM series of this study to read.
        window: deprecated name of ``num_slices``.

    Returns:
        `StudyPrediction` with ``score``, ``logit``, ``window_scores`` (+ ``window_ranges``)
        and ``slice_scores``.
    """
    num_slices = deprecated_alias("window", "num_slices", window, num_slices)  # type: ignore[assignment]
    pp: Preprocessing | None = None
    changes: list[str] = []
    if isinstance(volume, (str, os.PathLike, CTVolume)):
        si = study_input(
            model, volume, preprocessing=preprocessing, series_uid=series_uid,
            windows=windows, num_slices=num_slices, stride=stride, reduce=reduce,
        )  # fmt: skip
        x, pp, changes = si.input, si.preprocessing, si.changes
        num_slices, stride, reduce = pp.num_slices, pp.stride, pp.reduce  # type: ignore[assignment]
        if num_slices is None:  # the whole depth is one input, as in training
            num_slices = stride = x.shape[1]
        stride = num_slices if stride is None else stride
    else:
        x = _as_input(volume, windows)
        rec = getattr(model, "preprocessing", None)
        if isinstance(rec, Preprocessing) and num_slices is None:
            num_slices = rec.num_slices if rec.num_slices is not None else x.shape[1]
            stride = stride if stride is not None else rec.stride
            reduce = reduce or rec.reduce  # type: ignore[assignment]
        if num_slices is None:
            num_slices = PAPER_NUM_SLICES
        if stride is None:
            stride = PAPER_STRIDE if num_slices == PAPER_NUM_SLICES else num_slices
    reduce = reduce or "max"  # type: ignore[assignment]
    if num_slices < 1 or stride < 1 or batch_size < 1:
        raise ValueError(
            "num_slices, stride and batch_size must be >= 1; got "
            f"{num_slices}, {stride}, {batch_size}"
        )
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean'; got {reduce!r}")
    depth = x.shape[1]
    if depth < 1:
        raise ValueError("the volume has no slices")
    first = next(iter(model.parameters()), None)
    dev = torch.device(device) if device is not None else (
        first.device if first is not None else torch.device("cpu")
    )  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        ranges: list[tuple[int, int]] = []
        outs: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []

        def flush() -> None:
            logits = model(torch.stack(batch).to(dev))
            if logits.dim() == 1:
                logits = logits[:, None]
            outs.append(logits.float().cpu())
            batch.clear()

        for w, bounds in slice_windows(x, num_slices, stride, last="shift", pad_value=0.0):
            batch.append(w)  # type: ignore[arg-type]
            ranges.append(bounds)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        model.train(was_training)
    logits = torch.cat(outs)
    task = model_task(model, task, logits.shape[1])
    win = probabilities(logits, task).numpy()
    lg = logits.numpy()
    score = win.max(axis=0) if reduce == "max" else win.mean(axis=0)
    logit = lg.max(axis=0) if reduce == "max" else lg.mean(axis=0)
    per_slice = np.full((depth, win.shape[1]), -np.inf, dtype=np.float32)
    for (a, b), s in zip(ranges, win):
        np.maximum(per_slice[a:b], s, out=per_slice[a:b])
    return StudyPrediction(
        score=score.astype(np.float32),
        window_scores=win,
        window_ranges=ranges,
        slice_scores=per_slice,
        logit=logit.astype(np.float32),
        window_logits=lg,
        task=task,
        reduce=reduce,  # type: ignore[arg-type]
        preprocessing=pp,
        changes=changes,
        num_slices=int(num_slices),
        stride=int(stride),
    )
