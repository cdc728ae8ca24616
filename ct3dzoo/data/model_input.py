"""What a model's input is: :func:`transforms_for`, :func:`resolve_preprocessing` and
:func:`study_input` (the one path from a study on disk to a model's input that ``predict``,
``explain``, ``predict_study`` and ``study_saliency`` share).

Models are duck-typed here (``.preprocessing``, ``.pretrained_cfg``, ``.in_chans``): this
module sits in the data floor, below the models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._specs import WeightsSpec
from ..errors import PreprocessingError
from .contract import InputTransform, contract_transform
from .pipeline import Preprocessing
from .volume import CTVolume
from .windows import WindowSpec, window_list

__all__ = ["StudyInput", "resolve_preprocessing", "study_input", "transforms_for"]


def transforms_for(
    model_or_cfg: Any,
    *,
    windows: Sequence[WindowSpec] | WindowSpec | None = None,
    zscore_threshold: float | None = None,
) -> Preprocessing | InputTransform:
    """What turns HU into ``model_or_cfg``'s input.

    A model with a training record (finetuned here, or loaded from a folder or the Hub with
    a ``preprocessor_config.json``) returns exactly its :class:`Preprocessing` (``windows=``
    overrides its HU windows); a pipeline that cannot be rebuilt raises
    :class:`PreprocessingError`. Any other model, weights spec or ``"arch[.tag]"`` name gets
    the source weights' input contract as an :class:`InputTransform` (your ``windows`` for
    video/ImageNet rows; a fixed HU range or a z-score for in-domain CT rows; the row's
    spacing and orientation).

    Both are called on a :class:`CTVolume` or an HU array/tensor and return float32
    ``(C, D, H, W)``; a :class:`Preprocessing` also reads a path.
    """
    pp = getattr(model_or_cfg, "preprocessing", None)
    if isinstance(pp, Preprocessing):
        pp.require_complete(f"transforms_for({type(model_or_cfg).__name__})")
        if zscore_threshold is not None:
            raise PreprocessingError(
                "this model carries its training preprocessing; zscore_threshold= does not "
                "apply (pass a changed Preprocessing via model.preprocessing.replace(...))"
            )
        if windows is not None:
            in_chans = getattr(model_or_cfg, "in_chans", None)
            wl = window_list(windows)
            if isinstance(in_chans, int) and in_chans != len(wl):
                raise PreprocessingError(
                    f"the model takes {in_chans} channel(s); {len(wl)} window(s) given ({wl})"
                )
            return pp.replace(intensity="window", windows=tuple(wl))
        return pp
    return contract_transform(model_or_cfg, windows=windows, zscore_threshold=zscore_threshold)


#: the paper's RSNA-PE protocol: windows of 32 slices every 24 (Ke et al. 2023)
PAPER_NUM_SLICES, PAPER_STRIDE = 32, 24


def resolve_preprocessing(
    model: Any, preprocessing: Preprocessing | None = None, **overrides: Any
) -> tuple[Preprocessing, list[str]]:
    """The pipeline to feed ``model`` with, and how it differs from the model's training.

    Order: ``preprocessing`` if given, else the model's training record
    (``model.preprocessing``), else its source weights' input contract with the paper's slice
    windows (32 slices every 24). ``overrides`` are :class:`Preprocessing` fields (``windows``,
    ``spacing``, ``shape``, ``num_slices``, ``stride``, ``reduce``, ``series_uid``, ...);
    ``None`` values are ignored. A training record that cannot be rebuilt (a user callable)
    is refused unless ``preprocessing`` or overrides say what to use instead.

    Returns:
        ``(pipeline, changes)``: ``changes`` lists ``"field: training -> now"`` lines for
        every field that differs from the training record (empty without one).
    """
    recorded = getattr(model, "preprocessing", None)
    recorded = recorded if isinstance(recorded, Preprocessing) else None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = preprocessing if preprocessing is not None else recorded
    if base is not None and not base.complete:
        if preprocessing is None and not overrides:
            base.require_complete("this model")
        base = Preprocessing(label_names=base.label_names, task=base.task)
    if base is None:
        spec = getattr(model, "pretrained_cfg", None)
        spec = spec if isinstance(spec, WeightsSpec) else None
        windows = overrides.get("windows")
        base = (
            Preprocessing(windows=tuple(window_list(windows or "pe")))
            if spec is None
            else Preprocessing.from_weights(spec, windows=windows)
        ).replace(num_slices=PAPER_NUM_SLICES, stride=PAPER_STRIDE)
    pp = base.replace(**overrides) if overrides else base
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int) and in_chans != pp.num_channels:
        raise PreprocessingError(
            f"the model takes {in_chans} input channel(s) but the preprocessing makes "
            f"{pp.num_channels} ({pp.intensity}"
            + (f": windows {list(pp.windows)}" if pp.windows else "")
            + f"); give {in_chans} HU window(s)"
        )
    changes = recorded.differences(pp) if recorded is not None and recorded.complete else []
    return pp, changes


@dataclass(frozen=True)
class StudyInput:
    """A study made ready for a model by :func:`study_input`.

    Attributes:
        input: ``(C, D, H, W)`` float32, what the model sees (before slice windows).
        volume: the study as read, in HU on its own voxel grid.
        grid: the study resampled onto the model's grid (before crops), in HU.
        preprocessing: the pipeline used; ``changes``: how it differs from training.
    """

    input: torch.Tensor
    volume: CTVolume
    grid: CTVolume
    preprocessing: Preprocessing
    changes: list[str]


def study_input(
    model: Any,
    study: str | os.PathLike | CTVolume,
    *,
    preprocessing: Preprocessing | None = None,
    series_uid: str | None = None,
    **overrides: Any,
) -> StudyInput:
    """Read ``study`` and turn it into ``model``'s input with :func:`resolve_preprocessing`'s
    pipeline: the one path that ``predict``, ``explain``, :func:`ct3dzoo.predict_study` and
    :func:`ct3dzoo.explain.study_saliency` share, so they see the same tensor.

    ``series_uid`` picks a DICOM series for this study only (e.g. a manifest's column).
    """
    pp, changes = resolve_preprocessing(model, preprocessing, **overrides)
    if not isinstance(study, (str, os.PathLike, CTVolume)):
        raise TypeError(
            f"study must be a path (DICOM folder/file, NIfTI, .npy/.npz) or a CTVolume; got "
            f"{type(study).__name__}"
        )
    reader = pp if series_uid is None else pp.replace(series_uid=series_uid)
    volume = study if isinstance(study, CTVolume) else reader.read_raw(study)
    grid = pp.resample_volume(volume)
    return StudyInput(pp.volume_to_input(grid), volume, grid, pp, changes)
