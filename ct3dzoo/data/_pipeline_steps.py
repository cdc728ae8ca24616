"""How a :class:`~ct3dzoo.data.Preprocessing` is applied: read, resample, transform, map
intensities (the mixin the dataclass inherits; its fields are declared there)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._specs import InputContract
from ..errors import PreprocessingError
from .contract import _ARRAY_CONVENTION, InputTransform, reorientation
from .geometry import resample
from .io import read_volume
from .volume import CTVolume
from .windows import resolve_window

__all__ = ["PipelineSteps", "describe_callable"]


class PipelineSteps:
    """The applying half of :class:`~ct3dzoo.data.Preprocessing`."""

    # fields of the dataclass (declared there)
    series_uid: str | None
    series: str
    tilt: str
    gaps: str
    spacing: tuple[float, float, float] | None
    shape: tuple[int, int, int] | None
    resample_mode: str
    hu_dtype: str
    orientation: str | None
    transforms: tuple[Any, ...]
    intensity: Any
    windows: tuple[Any, ...] | None
    hu_range: tuple[float, float] | None
    zscore_threshold: float | None
    num_slices: int | None
    stride: int | None
    reduce: str
    unserialisable: tuple[str, ...]

    def require_complete(self, what: str = "this") -> Any:  # defined by the dataclass
        raise NotImplementedError

    # ------------------------------------------------------------------ applying
    def read(self, study: str | os.PathLike | CTVolume) -> CTVolume:
        """Read a study (DICOM folder/file, NIfTI, ``.npy``/``.npz``) and resample it: the
        HU volume on the model's grid, before transforms (a `CTVolume` is resampled only)."""
        self.require_complete("read")
        vol = study if isinstance(study, CTVolume) else self.read_raw(study)
        return self.resample_volume(vol)

    def read_raw(self, study: str | os.PathLike) -> CTVolume:
        """Read a study with the pipeline's reader options, on its own voxel grid."""
        return read_volume(study, **self.reader_kwargs())

    def reader_kwargs(self) -> dict[str, Any]:
        """Keyword options for `read_volume` (only those that differ from its defaults)."""
        kw: dict[str, Any] = {}
        if self.series_uid is not None:
            kw["series_uid"] = self.series_uid
        if self.series != "error":
            kw["series"] = self.series
        if self.tilt != "resample":
            kw["tilt"] = self.tilt
        if self.gaps != "regularise":
            kw["gaps"] = self.gaps
        return kw

    def resample_volume(self, vol: CTVolume) -> CTVolume:
        """The resampling and ``hu_dtype`` steps on a `CTVolume` in HU."""
        if self.spacing is not None or self.shape is not None:
            shape = self.shape
            if shape is not None:  # 0 keeps that axis
                shape = tuple(s or n for s, n in zip(shape, vol.shape))  # type: ignore[assignment]
            if shape != vol.shape or self.spacing is not None:
                vol = resample(vol, spacing=self.spacing, shape=shape, mode=self.resample_mode)
        if self.hu_dtype == "int16":
            hu = np.clip(np.rint(vol.hu), -32768, 32767).astype(np.int16).astype(np.float32)
            vol = dataclasses.replace(vol, hu=hu)
        return vol

    def hu_tensor(self, hu: np.ndarray | torch.Tensor) -> torch.Tensor:
        """HU ``(D, H, W)`` -> float32 tensor ``(1, D, H, W)`` (a copy)."""
        if isinstance(hu, torch.Tensor):
            return hu.detach().to(torch.float32).clone().reshape(1, *hu.shape[-3:])
        return torch.from_numpy(np.array(hu, dtype=np.float32)).unsqueeze(0)

    def apply_transforms(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic transforms on an HU tensor ``(1, D, H, W)``."""
        for t in self.transforms:
            x = t(x)
        return x

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Orientation and intensity on HU ``(1, D, H, W)`` -> ``(C, D, H, W)`` float32."""
        return self.input_transform()(x)

    def input_transform(self) -> InputTransform:
        """The orientation + intensity step as an :class:`InputTransform` (built once per
        pipeline: datasets call it for every item)."""
        cached = self.__dict__.get("_input_transform")
        if cached is not None:
            return cached
        contract = InputContract(
            kind=self.intensity,
            hu_range=self.hu_range,
            orientation=self.orientation,
            source="preprocessing",
        )
        t = InputTransform(
            contract,
            windows=list(self.windows) if self.windows is not None else None,
            zscore_threshold=self.zscore_threshold,
            name="preprocessing",
        )
        self.__dict__["_input_transform"] = t  # frozen dataclass: not a field, not compared
        return t

    def volume_to_input(self, vol: CTVolume) -> torch.Tensor:
        """A `CTVolume` already on the model's grid (from :meth:`read`) -> ``(C, D, H, W)``."""
        return self.to_input(self.apply_transforms(self.hu_tensor(vol.hu)))

    def __call__(
        self,
        study: str | os.PathLike | CTVolume | np.ndarray | torch.Tensor,
        *,
        spacing: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """A study (path or `CTVolume`, or an HU array ``(D, H, W)`` with ``spacing=``) ->
        the model input ``(C, D, H, W)``, float32."""
        self.require_complete("this pipeline")
        if isinstance(study, (str, os.PathLike, CTVolume)):
            return self.volume_to_input(self.read(study))
        arr = study.detach().cpu().numpy() if isinstance(study, torch.Tensor) else np.asarray(study)
        arr = np.squeeze(arr, axis=tuple(range(arr.ndim - 3))) if arr.ndim > 3 else arr
        if arr.ndim != 3:
            raise PreprocessingError(f"expected HU (D, H, W); got shape {tuple(np.shape(study))}")
        if self.spacing is not None and spacing is None:
            raise PreprocessingError(
                f"the pipeline resamples to {self.spacing} mm: pass spacing=(z, y, x) with an "
                "array, or a CTVolume / path"
            )
        vol = CTVolume(hu=arr.astype(np.float32), spacing=tuple(spacing or (1.0, 1.0, 1.0)))
        return self.volume_to_input(self.resample_volume(vol))

    def map_to_study(
        self,
        m: np.ndarray | torch.Tensor,
        *,
        grid_shape: Sequence[int],
        volume_shape: Sequence[int],
    ) -> np.ndarray:
        """Carry a map on the model's input grid ``(D', H', W')`` (e.g. a saliency map)
        back to the study's own voxel grid ``volume_shape``: undo the reorientation, each
        transform (a crop pads back with zeros, a resize resizes back) and the resampling
        (trilinear over the same field of view). ``grid_shape``: the study after resampling
        (`StudyInput.grid`). Returns float32 ``volume_shape``."""
        t = torch.as_tensor(np.asarray(m, dtype=np.float32))
        if self.orientation:
            perm, flips = reorientation(_ARRAY_CONVENTION, self.orientation)
            dims = [i for i, f in enumerate(flips) if f]
            t = t.flip(dims) if dims else t
            t = t.permute(*[perm.index(j) for j in range(3)])
        shapes, shape = [], tuple(int(n) for n in grid_shape)
        for tr in self.transforms:
            if not hasattr(tr, "invert_map"):
                raise PreprocessingError(
                    f"cannot carry a map back through {describe_callable(tr)}: only crops and "
                    "resizes are invertible; use the map on the model's input grid"
                )
            shapes.append(shape)
            shape = tr.output_shape(shape)
        for tr, before in zip(reversed(self.transforms), reversed(shapes)):
            t = tr.invert_map(t, before)
        if tuple(t.shape) != tuple(volume_shape):
            t = F.interpolate(t[None, None].float(), size=tuple(int(n) for n in volume_shape),
                              mode="trilinear", align_corners=False)[0, 0]  # fmt: skip
        return t.clamp(0.0, 1.0).numpy().astype(np.float32)

    # ------------------------------------------------------------------ text
    def describe(self) -> list[str]:
        """Markdown bullet lines for a model card."""
        lines = []
        rd = f"series {self.series_uid}" if self.series_uid else f"series policy {self.series!r}"
        lines.append(f"- read: DICOM/NIfTI/.npy in HU ({rd}; gantry tilt: {self.tilt}; "
                     f"irregular slice gaps: {self.gaps})")  # fmt: skip
        if self.spacing is not None:
            lines.append(f"- resampled to {' x '.join(f'{s:g}' for s in self.spacing)} mm (z, y, x)"
                         f", {self.resample_mode}")  # fmt: skip
        elif self.shape is not None:
            lines.append(f"- resampled to D x H x W = {' x '.join(map(str, self.shape))}, "
                         f"{self.resample_mode}")  # fmt: skip
        else:
            lines.append("- not resampled (native grid)")
        if self.hu_dtype == "int16":
            lines.append("- HU rounded to integers (int16 cache)")
        if self.orientation:
            lines.append(f"- reoriented to axis codes {self.orientation}")
        for t in self.transforms:
            lines.append(f"- {describe_callable(t)}")
        if self.intensity == "window":
            parts = []
            for i, w in enumerate(self.windows or ()):
                c, wd = resolve_window(w)
                name = f"{w} " if isinstance(w, str) else ""
                parts.append(f"channel {i}: {name}C {c:g} / W {wd:g} HU "
                             f"([{c - wd / 2:g}, {c + wd / 2:g}] HU -> [0, 1])")  # fmt: skip
            lines.append("- HU windows: " + "; ".join(parts))
        elif self.intensity == "hu_range":
            lo, hi = self.hu_range  # type: ignore[misc]
            lines.append(f"- HU clipped to [{lo:g}, {hi:g}] and scaled to [0, 1]")
        else:
            thr = "" if self.zscore_threshold is None else f" above {self.zscore_threshold:g} HU"
            lines.append(f"- z-score over the volume's voxels{thr}")
        if self.num_slices is None:
            lines.append("- the whole volume is one input (no slice windows)")
        else:
            lines.append(f"- slice windows of {self.num_slices} slices every "
                         f"{self.stride or self.num_slices}; study score = {self.reduce} over "
                         "the windows")  # fmt: skip
        for note in self.unserialisable:
            lines.append(f"- NOT REPRODUCIBLE from this file: {note}")
        return lines


def describe_callable(t: Any) -> str:
    name = getattr(t, "__qualname__", None) or type(t).__qualname__
    r = repr(t)
    return r if len(r) < 120 and not r.startswith("<") else name
