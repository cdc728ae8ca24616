"""`Preprocessing`: everything between a study on disk and the tensor a model sees, as data.

One typed, versioned, JSON-serialisable object (transformers' ``preprocessor_config.json``,
timm's data config, a MONAI bundle's inference transforms) that

- `CTDataset` is built from (its keyword options build one: ``dataset.preprocessing``),
- :func:`ct3dzoo.finetune` writes beside the weights (``preprocessor_config.json``, with the
  label names, the task and the run's validation metrics),
- :func:`ct3dzoo.load` attaches to the model again (``model.preprocessing``), and
- ``transforms_for(model)``, ``predict_study``, ``ct3dzoo predict`` and ``ct3dzoo explain``
  apply, so the tensor made from a study at use equals the one the model was validated on.

The steps, always in this order::

    read (reader options: series, tilt)            -> CTVolume in HU, array layout "SPL"
    resample (spacing mm z, y, x XOR shape D, H, W) -> HU on the model's grid
    hu_dtype "int16" (a `prepare` cache: rounded)  -> HU as the cache held them
    transforms (registered, deterministic: CenterCrop, Resize, ...; in the "SPL" layout)
    reorient (axis codes, e.g. Merlin's "SRA")
    intensity: HU window(s) -> [0, 1] channels | a fixed HU range -> [0, 1] | z-score
    slice windows (num_slices every stride; None: the whole depth) -> model -> reduce

A config names only registered transforms (`ct3dzoo.data.transforms.TRANSFORMS`); nothing is
imported from a name. A pipeline built from a user callable (a custom ``transform=`` or
``reader=``) cannot be written to JSON: it is saved with ``unserialisable`` naming it, and
using it raises an error that says how to pass the preprocessing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .._io.atomic import atomic_write_text
from .._specs import InputContract, WeightsSpec
from ..errors import PreprocessingError
from ._pipeline_json import pipeline_fields, pipeline_to_dict
from ._pipeline_steps import PipelineSteps, describe_callable
from .contract import _ARRAY_CONVENTION, InputTransform, array_order_spacing, reorientation
from .io import read_volume
from .transforms import (
    Compose,
    Window,
    eval_transform,
    transform_to_config,
)
from .volume import CTVolume
from .windows import WINDOWS, WindowSpec, resolve_window, window_list

__all__ = [
    "PREPROCESSOR_NAME",
    "TASKS",
    "Preprocessing",
    "PreprocessingError",
]

#: the file beside ``config.json`` that holds a saved model's preprocessing
PREPROCESSOR_NAME = "preprocessor_config.json"
TASKS = ("binary", "multilabel", "multiclass", "segmentation")
Intensity = Literal["window", "hu_range", "zscore"]
Reduce = Literal["max", "mean"]


def _tuple(v: Any, n: int | None, kind: type, what: str) -> tuple | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and n == 3 and kind is float:
        v = (v, v, v)
    try:
        out = tuple(kind(x) for x in v)
    except (TypeError, ValueError):
        raise PreprocessingError(f"{what} must be {n or 'some'} numbers; got {v!r}") from None
    if n is not None and len(out) != n:
        raise PreprocessingError(f"{what} must be {n} numbers; got {v!r}")
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class Preprocessing(PipelineSteps):
    """A study -> model-input pipeline (see the module docstring for the order of steps).

    Attributes:
        series_uid: the DICOM series to read (None: the folder's one volumetric CT series).
        series: how to choose among several series ("error", "largest", "thinnest").
        tilt: gantry-tilt policy of the DICOM reader ("resample" or "error").
        gaps: irregular slice gaps ("regularise" onto a uniform grid, "stack", "error").
        spacing: resample to this voxel size, mm ``(z, y, x)``; exclusive with ``shape``.
        shape: resample to this ``(D, H, W)``.
        resample_mode: interpolation of the resampling ("trilinear", "area", ...).
        hu_dtype: "int16": HU rounded to integers after resampling (what a `prepare`
            cache holds); "float32": kept as read.
        orientation: axis codes of the model input's ``(D, H, W)`` (None: "SPL", ct3dzoo's).
        transforms: registered deterministic transforms on the HU tensor ``(1, D, H, W)``.
        intensity: "window" (``windows``, one channel each), "hu_range" (``hu_range``
            clipped and scaled to [0, 1]) or "zscore" (over the volume's voxels, optionally
            only those above ``zscore_threshold`` HU).
        num_slices, stride: slice windows a study is cut into (None: the whole depth in one).
        reduce: study score from the windows' probabilities ("max", the paper's, or "mean").
        label_names, task: the model's outputs.
        unserialisable: descriptions of steps that were user callables (not reproducible).
        validation: the training run's validation record (metrics, ``n_studies``, epoch).
    """

    series_uid: str | None = None
    series: str = "error"
    tilt: str = "resample"
    gaps: str = "regularise"
    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    resample_mode: str = "trilinear"
    hu_dtype: Literal["float32", "int16"] = "float32"
    orientation: str | None = None
    transforms: tuple[Any, ...] = ()
    intensity: Intensity = "window"
    windows: tuple[WindowSpec, ...] | None = (WINDOWS["pe"],)
    hu_range: tuple[float, float] | None = None
    zscore_threshold: float | None = None
    num_slices: int | None = None
    stride: int | None = None
    reduce: Reduce = "max"
    label_names: tuple[str, ...] = ()
    task: str | None = None
    unserialisable: tuple[str, ...] = ()
    validation: Mapping[str, Any] | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ checks
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Preprocessing):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        a.pop("validation"), b.pop("validation")
        return a == b

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "spacing", _tuple(self.spacing, 3, float, "spacing"))
        set_(self, "shape", _tuple(self.shape, 3, int, "shape"))
        if self.spacing is not None and self.shape is not None:
            raise PreprocessingError("give spacing= or shape= for the resampling, not both")
        if self.spacing is not None and not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise PreprocessingError(f"spacing must be positive mm; got {self.spacing}")
        if self.shape is not None and not all(s >= 0 for s in self.shape):
            raise PreprocessingError(
                f"shape must be >= 1 voxel per axis (0: keep that axis); got {self.shape}"
            )
        for name, allowed in (("series", ("error", "largest", "thinnest")),
                              ("tilt", ("resample", "error")),
                              ("gaps", ("regularise", "stack", "error"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise PreprocessingError(
                    f"{name}={getattr(self, name)!r}: one of {', '.join(map(repr, allowed))}"
                )
        if self.hu_dtype not in ("float32", "int16"):
            raise PreprocessingError(
                f"hu_dtype must be 'float32' or 'int16'; got {self.hu_dtype!r}"
            )
        if self.intensity not in ("window", "hu_range", "zscore"):
            raise PreprocessingError(
                f"intensity must be 'window', 'hu_range' or 'zscore'; got {self.intensity!r}"
            )
        if self.intensity == "window":
            set_(self, "windows", tuple(window_list(self.windows or WINDOWS["pe"])))
            for w in self.windows:  # type: ignore[union-attr]
                resolve_window(w)
        else:
            set_(self, "windows", None)
        if self.intensity == "hu_range":
            hr = _tuple(self.hu_range, 2, float, "hu_range")
            if hr is None or not hr[0] < hr[1]:
                raise PreprocessingError(f"hu_range must be (lo, hi) HU, lo < hi; got {hr}")
            set_(self, "hu_range", hr)
        for name in ("num_slices", "stride"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise PreprocessingError(f"{name} must be a whole number >= 1; got {v!r}")
        if self.reduce not in ("max", "mean"):
            raise PreprocessingError(f"reduce must be 'max' or 'mean'; got {self.reduce!r}")
        if self.task is not None and self.task not in TASKS:
            near = difflib.get_close_matches(str(self.task), TASKS, n=1)
            raise PreprocessingError(
                f"unknown task {self.task!r}; one of {', '.join(TASKS)}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
            )
        set_(self, "label_names", tuple(str(n) for n in self.label_names))
        set_(self, "transforms", tuple(self.transforms))
        set_(self, "unserialisable", tuple(self.unserialisable))
        if self.orientation is not None:
            reorientation(_ARRAY_CONVENTION, self.orientation)  # validates the codes

    @property
    def num_channels(self) -> int:
        """Channels of the model input: one per HU window, else 1."""
        return len(self.windows) if self.windows is not None else 1

    @property
    def complete(self) -> bool:
        """False when a step was a user callable that the saved pipeline cannot rebuild."""
        return not self.unserialisable

    def require_complete(self, what: str = "this") -> Preprocessing:
        """Raise :class:`PreprocessingError` when the pipeline cannot be reproduced."""
        if self.unserialisable:
            raise PreprocessingError(
                f"{what}: the model was trained with preprocessing ct3dzoo cannot rebuild ("
                + "; ".join(self.unserialisable)
                + "). Pass the preprocessing explicitly: a ct3dzoo.data.Preprocessing "
                "(preprocessing=...) or the CLI's --windows/--shape/--spacing/--num-slices flags, "
                "or retrain with registered transforms (ct3dzoo.data.transforms)"
            )
        return self

    # ------------------------------------------------------------------ building
    @classmethod
    def from_weights(
        cls,
        spec: WeightsSpec,
        *,
        windows: Sequence[WindowSpec] | WindowSpec | None = None,
        zscore_threshold: float | None = None,
    ) -> Preprocessing:
        """The source weights' input contract as a pipeline (no training record)."""
        c: InputContract = spec.input_contract
        spacing = array_order_spacing(c)
        kw: dict[str, Any] = {}
        if c.kind == "window":
            kw["windows"] = tuple(window_list(windows if windows is not None else WINDOWS["pe"]))
        return cls(
            spacing=spacing,  # type: ignore[arg-type]
            orientation=c.orientation if c.orientation not in (None, _ARRAY_CONVENTION) else None,
            intensity=c.kind,
            hu_range=c.hu_range,
            zscore_threshold=zscore_threshold,
            **kw,
        )

    @classmethod
    def from_options(
        cls,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        windows: Sequence[WindowSpec] | WindowSpec | None = "pe",
        spacing: Sequence[float] | float | None = None,
        shape: Sequence[int] | None = None,
        reader: Callable[..., CTVolume] | None = None,
        **fields: Any,
    ) -> Preprocessing:
        """A pipeline from `CTDataset`-style options; ``transform`` is reduced to its
        evaluation counterpart (`transforms.eval_transform`); user callables are recorded
        in ``unserialisable``. ``windows=None`` with a registered ``Window`` (or a ct3dzoo
        `InputTransform`) at the end of ``transform`` takes the intensity from there."""
        notes: list[str] = list(fields.pop("unserialisable", ()))
        steps: list[Any] = []
        intensity: dict[str, Any] = {}
        if transform is not None:
            ev = eval_transform(transform)
            flat = list(ev.transforms) if isinstance(ev, Compose) else ([] if ev is None else [ev])
            if windows is None and flat and isinstance(flat[-1], Window):
                intensity = {"intensity": "window", "windows": flat.pop().windows}
            elif windows is None and flat and isinstance(flat[-1], InputTransform):
                intensity = _intensity_of(flat.pop())
            for t in flat:
                if transform_to_config(t) is None:
                    notes.append(
                        f"transform {describe_callable(t)} is not a registered ct3dzoo transform"
                    )
                steps.append(t)
        if not intensity:
            if windows is None:
                notes.append("the HU -> [0, 1] mapping was left to a user transform (windows=None)")
                intensity = {"intensity": "window", "windows": (WINDOWS["pe"],)}
            else:
                intensity = {"intensity": "window", "windows": tuple(window_list(windows))}
        if reader is not None and reader is not read_volume:
            notes.append(f"reader {describe_callable(reader)} is a user function")
        sp = None if spacing is None else _tuple(spacing, 3, float, "spacing")
        return cls(
            spacing=sp,  # type: ignore[arg-type]
            shape=None if shape is None else tuple(shape),  # type: ignore[arg-type]
            transforms=tuple(steps),
            unserialisable=tuple(notes),
            **intensity,
            **fields,
        )

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with ``changes`` (field names as in the class); checked like a new one."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"Preprocessing has no field(s) {unknown}")
        if "windows" in changes and changes["windows"] is not None:
            changes.setdefault("intensity", "window")
        if "spacing" in changes and changes["spacing"] is not None:
            changes.setdefault("shape", None)
        if "shape" in changes and changes["shape"] is not None:
            changes.setdefault("spacing", None)
        return dataclasses.replace(self, **changes)

    def differences(self, other: Preprocessing) -> list[str]:
        """Human-readable ``field: self -> other`` lines for the fields that differ."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in a:
            if key in ("validation", "format", "version"):
                continue
            if a[key] != b.get(key):
                out.append(f"{key}: {a[key]} -> {b.get(key)}")
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``from_dict`` rebuilds an equal pipeline)."""
        return pipeline_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "preprocessing") -> Preprocessing:
        """Rebuild from :meth:`to_dict`'s output; names only registered transforms."""
        return cls(**pipeline_fields(d, source=source))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` into ``folder`` (atomically); return its path."""
        path = Path(folder) / PREPROCESSOR_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Preprocessing:
        """Read a ``preprocessor_config.json`` (or the folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / PREPROCESSOR_NAME
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: no such preprocessing file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PreprocessingError(f"{p} is not valid JSON ({e}); re-save the model") from None
        return cls.from_dict(d, source=str(p))


def _intensity_of(t: InputTransform) -> dict[str, Any]:
    """What a `transforms_for` step does inside a dataset: reorient and map intensities (it
    gets HU tensors without a spacing there, so it does not resample)."""
    c = t.contract
    return {
        "intensity": c.kind,
        "windows": tuple(t.windows) if t.windows is not None else None,
        "hu_range": c.hu_range,
        "zscore_threshold": t.zscore_threshold,
        "orientation": c.orientation if c.orientation not in (None, _ARRAY_CONVENTION) else None,
    }
