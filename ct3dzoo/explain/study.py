"""Study-level saliency: slide slice windows over a whole volume, find the window that drove
the study's maximum score, and explain it with Grad-CAM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._model import CTModel
from .gradcam import gradcam

__all__ = ["StudySaliency", "study_saliency", "window_starts"]


@dataclass(frozen=True)
class StudySaliency:
    """What :func:`study_saliency` found.

    ``starts``/``scores``: each window's first slice and its logit for ``target``;
    ``best``: ``(start, stop)`` slices of the window with the highest score (the study score,
    as in the max-over-windows protocol); ``slice_scores``: ``(D,)`` per slice, the highest
    score of the windows that contain it; ``saliency``: ``(D, H, W)`` in [0, 1], the best
    window's Grad-CAM placed at its slices (zero elsewhere).
    """

    starts: tuple[int, ...]
    scores: tuple[float, ...]
    best: tuple[int, int]
    slice_scores: np.ndarray
    saliency: np.ndarray
    target: int
    window: int

    @property
    def score(self) -> float:
        return max(self.scores)


def window_starts(depth: int, window: int, stride: int) -> list[int]:
    """First slices of windows of ``window`` slices every ``stride``; the last ends at ``depth``."""
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window}, {stride}")
    if depth < window:
        raise ValueError(
            f"the study has {depth} slices, fewer than window={window}: pass a smaller window "
            "or pad the volume along D"
        )
    starts = list(range(0, depth - window + 1, stride))
    if starts[-1] != depth - window:
        starts.append(depth - window)
    return starts


def _as_volume(volume: Any, in_chans: int) -> torch.Tensor:
    v = volume.detach() if isinstance(volume, torch.Tensor) else torch.as_tensor(np.asarray(volume))
    v = v.float()
    if v.ndim == 5 and v.shape[0] == 1:
        v = v[0]
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[0] != in_chans:
        raise ValueError(
            f"expected a windowed volume (D, H, W) or ({in_chans}, D, H, W) in [0, 1], got "
            f"shape {tuple(v.shape)}"
        )
    return v


def study_saliency(
    model: CTModel,
    volume: Any,
    *,
    window: int = 32,
    stride: int = 24,
    target: int | None = None,
    layer: str | None = None,
    batch_size: int = 4,
) -> StudySaliency:
    """Score every ``window``-slice window of ``volume`` and explain the best one.

    Args:
        model: a classification model taking ``(B, C, window, H, W)``.
        volume: ``(D, H, W)`` or ``(C, D, H, W)`` array/tensor, HU windowed to [0, 1].
        window, stride: window length and step in slices (the last window ends at D).
        target: class to explain; ``None``: 0 for one logit, else the class with the
            highest score over all windows.
        layer: Grad-CAM layer (default: the last stage).
        batch_size: windows per forward pass when scoring.
    """
    vol = _as_volume(volume, model.in_chans)
    starts = window_starts(vol.shape[1], window, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = []
    try:
        with torch.no_grad():
            for i in range(0, len(starts), batch_size):
                chunk = [vol[:, s : s + window] for s in starts[i : i + batch_size]]
                logits.append(model(torch.stack(chunk).to(device)).float().cpu())
    finally:
        model.train(was_training)
    all_logits = torch.cat(logits)
    if target is None:
        target = 0 if all_logits.shape[1] == 1 else int(all_logits.max(0).values.argmax())
    scores = all_logits[:, target].tolist()
    k = int(np.argmax(scores))
    s0 = starts[k]
    cam = gradcam(model, vol[None, :, s0 : s0 + window].to(device), target=target, layer=layer)
    saliency = np.zeros(tuple(vol.shape[1:]), dtype=np.float32)
    saliency[s0 : s0 + window] = cam[0].numpy()
    slice_scores = np.full(vol.shape[1], -np.inf, dtype=np.float32)
    for s, sc in zip(starts, scores):
        slice_scores[s : s + window] = np.maximum(slice_scores[s : s + window], sc)
    return StudySaliency(
        starts=tuple(starts),
        scores=tuple(float(v) for v in scores),
        best=(s0, s0 + window),
        slice_scores=slice_scores,
        saliency=saliency,
        target=int(target),
        window=window,
    )
