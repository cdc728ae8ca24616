"""The evaluation pipeline a `CTDataset`'s keyword options amount to (and the check that
``preprocessing=`` is not combined with options that would contradict it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .pipeline import Preprocessing

__all__ = ["check_given_options", "dataset_pipeline"]


def check_given_options(
    preprocessing: Preprocessing, *, windows: Any, prepared: Any, **given: Any
) -> None:
    """``CTDataset(preprocessing=...)`` takes no ``transform``/``spacing``/``shape``/
    ``windows``/``prepared``: the pipeline already says how to read, resample and window."""
    if windows != "pe":  # the keyword's default
        given["windows"] = windows
    clash = [k for k, v in given.items() if v is not None]
    if clash or prepared is not None:
        raise ValueError(
            f"preprocessing= already says how to read, resample and window; drop "
            f"{', '.join(clash or ['prepared'])}= (or change the pipeline with "
            "preprocessing.replace(...))"
        )
    preprocessing.require_complete("CTDataset(preprocessing=...)")


def dataset_pipeline(
    *,
    transform: Callable[..., Any] | None,
    windows: Any,
    spacing: Sequence[float] | float | None,
    shape: Sequence[int] | None,
    reader: Callable[..., Any],
    label_names: Sequence[str],
    prepared: Mapping[str, Any] | None,
    slice_windows: tuple[int, int] | None,
) -> Preprocessing:
    """A dataset's evaluation pipeline: a `prepare` cache's resampling (and its int16
    rounding) when ``prepared`` (its ``prepare.json``) is given, slice windows with max over
    them when ``slice_windows`` is."""
    extra: dict[str, Any] = {"label_names": tuple(label_names)}
    if prepared is not None:
        spacing, shape = prepared.get("spacing"), prepared.get("size")
        extra["hu_dtype"] = "int16"
    if slice_windows is not None:  # the paper's protocol: windows, max over them
        extra.update(num_slices=slice_windows[0], stride=slice_windows[1])
    return Preprocessing.from_options(
        transform=transform, windows=windows, spacing=spacing, shape=shape, reader=reader,
        **extra,
    )  # fmt: skip
