"""Whole-study prediction (the paper's protocol as an API): slice windows -> study score.

A study of any depth is cut into windows of ``window`` consecutive slices every ``stride``
slices (the last one shifted to end at the last slice, so every slice is covered; a study
shorter than one window is padded with air), each window is scored by the model, and the
study score is the ``reduce`` (max by default) over the windows' probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..data.geometry import slice_windows
from ..data.volume import CTVolume
from ..data.windows import WindowSpec, stack_windows
from .metrics import Task, probabilities

__all__ = ["StudyPrediction", "predict_study"]


@dataclass(frozen=True)
class StudyPrediction:
    """Scores of one study.

    Attributes:
        score: study probability, ``(num_outputs,)`` (index ``[0]`` for a binary model).
        window_scores: ``(num_windows, num_outputs)`` probability of each slice window.
        window_ranges: ``(start, stop)`` slice range of each window (``stop`` exclusive).
        slice_scores: ``(D, num_outputs)``: per slice, the max over the windows covering it.
    """

    score: np.ndarray
    window_scores: np.ndarray
    window_ranges: list[tuple[int, int]]
    slice_scores: np.ndarray


def _as_input(volume: CTVolume | np.ndarray | torch.Tensor, windows: object) -> torch.Tensor:
    """``(C, D, H, W)`` float tensor in [0, 1]."""
    if isinstance(volume, CTVolume):
        if windows is None:
            raise ValueError(
                "A CTVolume holds HU; pass windows= (e.g. 'pe' or [(c, w), ...]) so each "
                "window is mapped to [0, 1], or pass an array already windowed with apply_window."
            )
        volume = volume.hu
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
    volume: CTVolume | np.ndarray | torch.Tensor,
    *,
    window: int = 32,
    stride: int = 24,
    reduce: Literal["max", "mean"] = "max",
    batch_size: int = 4,
    windows: WindowSpec | Sequence[WindowSpec] | None = None,
    task: Task = "binary",
    device: str | torch.device | None = None,
) -> StudyPrediction:
    """Score one whole study by sliding slice windows (paper: 32 slices every 24).

    Args:
        model: a ct3dzoo model (or any module mapping ``(B, C, window, H, W)`` in [0, 1]
            to logits ``(B, num_outputs)``); put in eval mode for the call.
        volume: ``(D, H, W)`` or ``(C, D, H, W)`` in [0, 1] (already windowed and resized
            in-plane), or HU (array or `CTVolume`) together with ``windows``.
        window, stride: slices per window and step between window starts.
        reduce: ``"max"`` (paper) or ``"mean"`` over the windows' probabilities.
        batch_size: windows per forward pass.
        windows: HU window preset(s) to apply first (one channel each); None: the input is
            already in [0, 1].
        task: ``"binary"``/``"multilabel"`` (sigmoid) or ``"multiclass"`` (softmax).
        device: where to run (default: the model's device).

    Returns:
        `StudyPrediction` with ``score``, ``window_scores`` (+ ``window_ranges``) and
        ``slice_scores``.
    """
    if window < 1 or stride < 1 or batch_size < 1:
        raise ValueError(
            f"window, stride and batch_size must be >= 1; got {window}, {stride}, {batch_size}"
        )
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean'; got {reduce!r}")
    x = _as_input(volume, windows)
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
        scores: list[torch.Tensor] = []
        batch: list[torch.Tensor] = []

        def flush() -> None:
            logits = model(torch.stack(batch).to(dev))
            if logits.dim() == 1:
                logits = logits[:, None]
            scores.append(probabilities(logits, task).float().cpu())
            batch.clear()

        for w, bounds in slice_windows(x, window, stride, last="shift", pad_value=0.0):
            batch.append(w)  # type: ignore[arg-type]
            ranges.append(bounds)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        model.train(was_training)
    win = torch.cat(scores).numpy()
    score = win.max(axis=0) if reduce == "max" else win.mean(axis=0)
    per_slice = np.full((depth, win.shape[1]), -np.inf, dtype=np.float32)
    for (a, b), s in zip(ranges, win):
        np.maximum(per_slice[a:b], s, out=per_slice[a:b])
    return StudyPrediction(
        score=score.astype(np.float32),
        window_scores=win,
        window_ranges=ranges,
        slice_scores=per_slice,
    )
