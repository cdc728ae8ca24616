"""Study-level saliency: read a study as the model was trained, slide its slice windows, find
the window that drove the study score, explain it, and carry the map back onto the study's
own voxel grid (through the crop, the resampling and the slice windows)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch

from .._cli_args import deprecated_alias
from .._model import CTModel
from ..data.geometry import slice_window_bounds, slice_windows
from ..data.model_input import study_input
from ..data.pipeline import Preprocessing
from ..data.volume import CTVolume
from ..data.windows import WindowSpec
from ..train.study import predict_study
from .attribution import resolve_saliency
from .attribution import saliency as explain_map

__all__ = ["StudySaliency", "study_saliency", "window_starts"]


@dataclass(frozen=True)
class StudySaliency:
    """What :func:`study_saliency` found.

    Attributes:
        starts: first slice of each window (model-input slices); ``scores``: each window's
            logit for ``target``; ``probabilities``: the same as probabilities (the task's
            sigmoid or softmax), as ``predict_study``'s ``window_scores``.
        best: ``(start, stop)`` of the window with the highest logit (the study score under
            the max-over-windows protocol).
        slice_scores: ``(D',)`` per model-input slice, the highest logit of the windows
            that contain it.
        saliency: the map in [0, 1] on the study's own voxel grid (the shape of
            ``read_volume(study).hu``) when a study (path or `CTVolume`) was given, else on
            the input grid; zero outside the explained window.
        input_saliency: ``(D', H', W')`` the map on the model's input grid.
        input: ``(C, D', H', W')`` the model's input (for overlays).
        target, num_slices, method, reduce: what was explained and how; ``method_title``
            names the method and its map's native resolution (for figure titles).
        preprocessing, changes: the pipeline used and how it differs from training.
    """

    starts: tuple[int, ...]
    scores: tuple[float, ...]
    probabilities: tuple[float, ...]
    best: tuple[int, int]
    slice_scores: np.ndarray
    saliency: np.ndarray
    input_saliency: np.ndarray
    input: torch.Tensor
    target: int
    num_slices: int
    method: str = "integrated_gradients"
    method_title: str = ""
    reduce: str = "max"
    preprocessing: Preprocessing | None = None
    changes: list[str] = field(default_factory=list)
    volume: CTVolume | None = None

    @property
    def score(self) -> float:
        """The study probability for ``target``: ``reduce`` over the windows (as
        ``predict_study(...).score``)."""
        p = np.asarray(self.probabilities)
        return float(p.max() if self.reduce == "max" else p.mean())

    @property
    def logit(self) -> float:
        """The ``reduce`` over the windows' logits for ``target``."""
        s = np.asarray(self.scores)
        return float(s.max() if self.reduce == "max" else s.mean())

    @property
    def window(self) -> int:
        """Deprecated name of ``num_slices``."""
        return self.num_slices


def window_starts(depth: int, num_slices: int, stride: int) -> list[int]:
    """First slices of windows of ``num_slices`` every ``stride`` (the last ends at ``depth``;
    a study shorter than one window is one window, padded), as ``predict_study`` uses them."""
    return [a for a, _ in slice_window_bounds(depth, num_slices, stride, "shift")]


def _as_volume(volume: Any, in_chans: int) -> torch.Tensor:
    v = volume.detach() if isinstance(volume, torch.Tensor) else torch.as_tensor(np.asarray(volume))
    v = v.float()
    if v.ndim == 5 and v.shape[0] == 1:
        v = v[0]
    if v.ndim == 3:
        v = v[None]
    if v.ndim != 4 or v.shape[0] != in_chans:
        raise ValueError(
            f"expected a study (path or CTVolume) or a windowed volume (D, H, W) or "
            f"({in_chans}, D, H, W) in [0, 1], got shape {tuple(v.shape)}"
        )
    return v


def _window_map(
    model: CTModel, x: torch.Tensor, *, target: int, layer: str | None, method: str | None
) -> tuple[torch.Tensor, Any]:
    """The saliency map ``(D', H', W')`` of one window ``x`` ``(1, C, D', H', W')`` and the
    resolved method (its ``.method`` and ``.title``)."""
    if method is None and layer is not None:
        method = "gradcam"
    spec = resolve_saliency(model, x.shape[2:], method=method, layer=layer)
    return explain_map(model, x, method=spec.method, target=target, layer=layer)[0], spec


def study_saliency(
    model: CTModel,
    volume: str | os.PathLike | CTVolume | np.ndarray | torch.Tensor,
    *,
    num_slices: int | None = None,
    stride: int | None = None,
    target: int | None = None,
    layer: str | None = None,
    method: str | None = None,
    batch_size: int = 4,
    windows: WindowSpec | list[WindowSpec] | None = None,
    preprocessing: Preprocessing | None = None,
    series_uid: str | None = None,
    window: int | None = None,
) -> StudySaliency:
    """Score every slice window of a study and explain the best one.

    Args:
        model: a classification model taking ``(B, C, num_slices, H, W)``.
        volume: a study (DICOM folder/file, NIfTI, ``.npy``/``.npz`` path, or a `CTVolume`
            in HU), read with the model's own pipeline (as ``predict_study``); or an array
            ``(D, H, W)`` / ``(C, D, H, W)`` already in [0, 1].
        num_slices, stride: slice windows; default: the model's record (None there: the
            whole depth), else 32 and 24.
        target: output to explain; ``None``: 0 for one output, else the output with the
            highest logit over all windows.
        layer, method: the saliency method and (for Grad-CAM) its layer.
        batch_size: windows per forward pass when scoring.
        windows, preprocessing, series_uid: as in ``predict_study``.
        window: deprecated name of ``num_slices``.
    """
    num_slices = deprecated_alias("window", "num_slices", window, num_slices)  # type: ignore[assignment]
    pp, changes, vol, grid = None, [], None, None
    if isinstance(volume, (str, os.PathLike, CTVolume)):
        si = study_input(
            model, volume, preprocessing=preprocessing, series_uid=series_uid, windows=windows,
            num_slices=num_slices, stride=stride,
        )  # fmt: skip
        x, pp, changes, vol, grid = si.input, si.preprocessing, si.changes, si.volume, si.grid
        num_slices = pp.num_slices or x.shape[1]
        stride = pp.stride or num_slices
    else:
        x = _as_volume(volume, model.in_chans)
    # the windows are scored exactly as predict_study scores them (it is the one code path)
    pred = predict_study(
        model,
        x,
        num_slices=num_slices,
        stride=stride,
        batch_size=batch_size,
        reduce=None if pp is None else pp.reduce,
    )  # type: ignore[arg-type]
    n_out = pred.window_logits.shape[1]  # type: ignore[union-attr]
    if target is None:
        target = 0 if n_out == 1 else int(pred.window_logits.max(axis=0).argmax())  # type: ignore[union-attr]
    if not 0 <= target < n_out:
        raise ValueError(
            f"target={target} is not an output of this model: it has {n_out} (0 to {n_out - 1})"
        )
    scores = pred.window_logits[:, target].tolist()  # type: ignore[index]
    k = int(np.argmax(scores))
    s0, stop = pred.window_ranges[k]
    win, _ = next(islice(slice_windows(x, pred.num_slices, pred.stride, last="shift",
                                       pad_value=0.0), k, None))  # fmt: skip
    device = next(model.parameters()).device
    cam, used = _window_map(model, win[None].to(device), target=target, layer=layer, method=method)
    local = np.zeros(tuple(x.shape[1:]), dtype=np.float32)
    local[s0:stop] = cam.cpu().numpy()[: stop - s0]
    slice_scores = np.full(x.shape[1], -np.inf, dtype=np.float32)
    for (a, b), sc in zip(pred.window_ranges, scores):
        np.maximum(slice_scores[a:b], sc, out=slice_scores[a:b])
    study_map = local
    if pp is not None and vol is not None and grid is not None:
        study_map = pp.map_to_study(local, grid_shape=grid.shape, volume_shape=vol.shape)
    return StudySaliency(
        starts=tuple(a for a, _ in pred.window_ranges),
        scores=tuple(float(v) for v in scores),
        probabilities=tuple(float(v) for v in pred.window_scores[:, target]),
        best=(s0, stop),
        slice_scores=slice_scores,
        saliency=study_map,
        input_saliency=local,
        input=x,
        target=int(target),
        num_slices=pred.num_slices,
        method=used.method,
        method_title=used.title,
        reduce=pred.reduce,
        preprocessing=pp,
        changes=changes,
        volume=vol,
    )
