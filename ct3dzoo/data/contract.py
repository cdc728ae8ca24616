"""From an HU volume to what a weights row expects: :func:`transforms_for`.

timm's ``resolve_data_config`` + ``create_transform``, for CT: the row's
:class:`~ct3dzoo._specs.InputContract` says how HU become model input, and this module turns
it into one callable, so nobody copies numbers from a model card:

- ``"window"`` (video and ImageNet rows): the user's HU window(s) -> [0, 1], one channel each
  (``windows=``, default the paper's PE window ``WINDOWS["pe"]`` = [-100, 900] HU);
- ``"hu_range"`` (Models Genesis, CT-FM, Merlin): HU clipped to the row's range, scaled to
  [0, 1];
- ``"zscore"`` (MedicalNet): ``(HU - mean) / std`` with the volume's own statistics.

When the row states a voxel spacing and the input is a :class:`CTVolume` (or the call gives
``spacing=``), the volume is resampled to it first (:func:`ct3dzoo.data.resample`, trilinear).
Orientation: ct3dzoo's readers put every volume in one array convention, axis codes
``"SPL"`` (``D`` inferior->superior, ``H`` anterior->posterior, ``W`` right->left; each letter
names where an axis points, as MONAI's ``Orientation(axcodes=...)``). A row stating other
codes for its ``(D, H, W)`` axes (Merlin: ``"SRA"``) gets the array permuted and flipped to
them (exact: no interpolation); the row's spacing is in its own axis order. Sizes are not changed (models run at any size their strides
allow; crop or resize with :mod:`ct3dzoo.data.transforms`).

This module sits below the models: it reads a weights spec, an object with
``.pretrained_cfg`` (a :class:`~ct3dzoo.CTModel`), or a name (``"arch"``/``"arch.tag"``)
looked up in the live registry when the families are loaded, otherwise in ``catalog.json``
(the registry's torch-free snapshot). It never imports a network.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _registry
from .._specs import InputContract, WeightsSpec
from .geometry import resample
from .volume import CTVolume
from .windows import WINDOWS, WindowSpec, stack_windows

__all__ = ["InputTransform", "contract_transform", "resolve_weights_spec"]

_CATALOG = Path(__file__).resolve().parents[1] / "catalog.json"
#: the axis convention every ct3dzoo reader returns (see ct3dzoo.data.volume)
_ARRAY_CONVENTION = "SPL"  # D inferior->superior, H anterior->posterior, W right->left
_OPPOSITE = {"S": "I", "I": "S", "P": "A", "A": "P", "L": "R", "R": "L"}


def reorientation(src: str, dst: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How to turn axis codes ``src`` into ``dst`` (e.g. ``"SPL"`` -> ``"SRA"``): for each
    target axis, the source axis it comes from and whether it is flipped."""
    src, dst = src.upper(), dst.upper()
    if (
        sorted(_OPPOSITE.get(c, c) if c in "IAR" else c for c in src)
        != sorted(_OPPOSITE.get(c, c) if c in "IAR" else c for c in dst)
        or len(src) != 3
        or any(c not in _OPPOSITE for c in src + dst)
    ):
        raise ValueError(
            f"cannot reorient axis codes {src!r} to {dst!r}: use S/I, P/A, L/R once each"
        )
    perm, flips = [], []
    for t in dst:
        j = next(i for i, c in enumerate(src) if c in (t, _OPPOSITE[t]))
        perm.append(j)
        flips.append(src[j] != t)
    return tuple(perm), tuple(flips)  # type: ignore[return-value]


def array_order_spacing(contract: InputContract) -> tuple[float, float, float] | None:
    """A row's stated spacing (given in its own axis order, ``contract.orientation``) in the
    readers' ``(z, y, x)`` order; None when the row states none."""
    if contract.spacing is None:
        return None
    perm, _ = reorientation(_ARRAY_CONVENTION, contract.orientation or _ARRAY_CONVENTION)
    out = [0.0, 0.0, 0.0]
    for i, j in enumerate(perm):
        out[j] = float(contract.spacing[i])
    return tuple(out)  # type: ignore[return-value]


def _from_catalog(name: str) -> WeightsSpec:
    cat = json.loads(_CATALOG.read_text())
    arch, tag = _registry.split_name(name)
    if arch not in cat["archs"]:
        raise ValueError(f"unknown architecture {arch!r}; ct3dzoo.list_models() lists them all")
    info = cat["archs"][arch]
    if tag is None or tag in info["aliases"]:
        tag = info["default_tag"]
    key = f"{arch}.{tag}"
    if key not in cat["weights"]:
        known = sorted(k for k in cat["weights"] if k.startswith(arch + "."))
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(known) or 'none'}")
    return WeightsSpec.from_dict(cat["weights"][key])


def resolve_weights_spec(model_or_cfg: Any) -> WeightsSpec:
    """The :class:`WeightsSpec` of a spec, a model (its ``.pretrained_cfg``) or a name."""
    if isinstance(model_or_cfg, WeightsSpec):
        return model_or_cfg
    if isinstance(model_or_cfg, str):
        arch = _registry.split_name(model_or_cfg)[0]
        if arch in _registry.list_models():
            return _registry.get_pretrained_cfg(model_or_cfg)
        return _from_catalog(model_or_cfg)
    spec = getattr(model_or_cfg, "pretrained_cfg", None)
    if isinstance(spec, WeightsSpec):
        return spec
    raise TypeError(
        "transforms_for takes a WeightsSpec, a ct3dzoo model (with .pretrained_cfg) or an "
        f"architecture name; got {type(model_or_cfg).__name__}"
        + (
            " without weights (pretrained_cfg is None)"
            if hasattr(model_or_cfg, "pretrained_cfg")
            else ""
        )
    )


def _hu_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a CTVolume, numpy array or tensor of HU, got {type(x).__name__}")
    return x.float() if x.dtype != torch.float32 else x


class InputTransform:
    """HU -> model input for one input contract (build it with :func:`transforms_for`).

    Call it on a :class:`CTVolume`, or an HU array/tensor ``(D, H, W)``, ``(1, D, H, W)`` or
    ``(B, 1, D, H, W)``. Returns float32 ``(C, D, H, W)`` (``(B, C, D, H, W)`` for a batch),
    ``C`` = number of windows for ``"window"`` rows, else 1. ``spacing=(z, y, x)`` mm gives
    an array's voxel size so rows with a stated spacing can resample it.
    """

    def __init__(
        self,
        contract: InputContract,
        *,
        windows: Sequence[WindowSpec] | None = None,
        zscore_threshold: float | None = None,
        name: str = "",
    ) -> None:
        self.contract = contract
        self.windows = list(windows) if windows is not None else None
        self.zscore_threshold = zscore_threshold
        self.name = name
        self._warned = False

    @property
    def num_channels(self) -> int:
        return len(self.windows) if self.contract.kind == "window" else 1

    def _geometry(self, x: Any, spacing: Sequence[float] | None) -> Any:
        c = self.contract
        perm, flips = reorientation(_ARRAY_CONVENTION, c.orientation or _ARRAY_CONVENTION)
        target = array_order_spacing(c)
        if isinstance(x, CTVolume):
            x = x.hu if target is None else resample(x, spacing=tuple(target)).hu
        elif target is not None and spacing is not None:
            x = resample(_hu_tensor(x), spacing=tuple(target), src_spacing=tuple(spacing))
        elif target is not None and not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.name}: the weights expect {c.spacing} mm voxels but an array came without "
                "spacing=; not resampled. Pass a CTVolume or spacing=(z, y, x).",
                UserWarning,
                stacklevel=3,
            )
        if perm == (0, 1, 2) and not any(flips):
            return x
        t = _hu_tensor(x)
        lead = t.ndim - 3
        t = t.permute(*range(lead), *(lead + j for j in perm))
        dims = [lead + i for i, f in enumerate(flips) if f]
        return t.flip(dims) if dims else t

    def __call__(self, x: Any, *, spacing: Sequence[float] | None = None) -> torch.Tensor:
        x = _hu_tensor(self._geometry(x, spacing))
        if x.ndim == 3:
            x = x[None]
        if x.ndim not in (4, 5) or x.shape[-4] != 1:
            raise ValueError(
                "expected one HU channel: (D, H, W), (1, D, H, W) or (B, 1, D, H, W); got shape "
                f"{tuple(x.shape)}"
            )
        cdim = x.ndim - 4
        c = self.contract
        if c.kind == "window":
            return stack_windows(x.squeeze(cdim), self.windows, dim=cdim).float()
        if c.kind == "hu_range":
            lo, hi = c.hu_range  # type: ignore[misc]
            return ((x.clamp(lo, hi) - lo) * (1.0 / (hi - lo))).float()
        return self._zscore(x)

    def _zscore(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1) if x.ndim == 5 else x.reshape(1, -1)
        out = []
        for row, vol in zip(flat, x if x.ndim == 5 else x[None]):
            sel = row if self.zscore_threshold is None else row[row > self.zscore_threshold]
            if sel.numel() < 2:
                raise ValueError(
                    f"{self.name}: no voxels above zscore_threshold={self.zscore_threshold} HU "
                    "to take the z-score statistics from"
                )
            mean, std = sel.double().mean(), sel.double().std(correction=0)
            if not std > 0:
                raise ValueError(f"{self.name}: the volume is constant ({float(mean):g}); its "
                                 "z-score is undefined")  # fmt: skip
            out.append(((vol.double() - mean) / std).float())
        z = torch.stack(out)
        return z if x.ndim == 5 else z[0]

    def __repr__(self) -> str:
        extra = ""
        if self.contract.kind == "window":
            extra = f", windows={self.windows!r}"
        elif self.contract.kind == "zscore" and self.zscore_threshold is not None:
            extra = f", zscore_threshold={self.zscore_threshold:g}"
        return f"InputTransform({self.name}: {self.contract.describe()}{extra})"


def contract_transform(
    model_or_cfg: Any,
    *,
    windows: Sequence[WindowSpec] | WindowSpec | None = None,
    zscore_threshold: float | None = None,
) -> InputTransform:
    """The transform from HU to what ``model_or_cfg``'s source weights expect (their input
    contract; :func:`ct3dzoo.data.transforms_for` uses it for models with no training record).

    Args:
        model_or_cfg: a :class:`~ct3dzoo.CTModel`, a weights spec
            (``ct3dzoo.get_pretrained_cfg(...)``) or a name ``"arch"``/``"arch.tag"``.
        windows: for ``"window"`` rows, the HU window(s) (preset names or ``(centre,
            width)``), one output channel each; default ``WINDOWS["pe"]``. A model's
            ``in_chans`` must equal their number. Refused for rows with a fixed mapping.
        zscore_threshold: for ``"zscore"`` rows (MedicalNet), take mean/std only over voxels
            above this HU value; ``0`` is the upstream's own rule (voxels > 0, written for
            MRI). Default: all voxels.

    Returns:
        an :class:`InputTransform`: ``CTVolume``/array/tensor in HU -> float32 tensor.
    """
    spec = resolve_weights_spec(model_or_cfg)
    kind = spec.input_contract.kind
    if kind != "window" and windows is not None:
        raise ValueError(
            f"{spec.name} was trained on a fixed input mapping "
            f"({spec.input_contract.describe()}); it takes no HU window. Drop windows=."
        )
    if kind != "zscore" and zscore_threshold is not None:
        raise ValueError(f"zscore_threshold applies to z-score rows only; {spec.name} is {kind!r}")
    win: list[WindowSpec] | None = None
    in_chans = getattr(model_or_cfg, "in_chans", None)
    if kind != "window" and isinstance(in_chans, int) and in_chans != 1:
        raise ValueError(
            f"{spec.name} takes one channel ({spec.input_contract.describe()}) but the model was "
            f"built with in_chans={in_chans}; load it with in_chans=1"
        )
    if kind == "window":
        if windows is None:
            windows = WINDOWS["pe"]
        single = isinstance(windows, str) or (
            isinstance(windows, tuple) and len(windows) == 2 and not isinstance(windows[0], str)
        )
        win = [windows] if single else list(windows)  # type: ignore[list-item]
        if isinstance(in_chans, int) and in_chans != len(win):
            raise ValueError(
                f"the model takes in_chans={in_chans} channel(s) but {len(win)} window(s) were "
                f"given ({win}); pass {in_chans} window(s) or load it with in_chans={len(win)}"
            )
    return InputTransform(
        spec.input_contract, windows=win, zscore_threshold=zscore_threshold, name=spec.name
    )
