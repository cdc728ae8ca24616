"""Composable 3-D transforms on torch tensors ``(C, D, H, W)`` or ``(B, C, D, H, W)``.

All work on CPU and CUDA tensors with torch ops only (no per-slice loops). Random
transforms draw per sample from ``generator`` (a CPU `torch.Generator`) or, when ``None``,
from torch's global RNG (`torch.manual_seed`).

**Units.** Transforms that fill new voxels (`RandomRotation`, crops that pad) take
``fill`` in the units of their input and default to ``-1000`` (air in HU): put them
*before* `Window`, on HU tensors, so air stays air whatever the window. (The paper's code
rotated after windowing and filled with -1000, i.e. far below 0 in [0, 1] units.)
`RandomIntensity` defaults are also in HU. A typical chain::

    Compose([RandomCrop((32, 448, 448)), RandomFlip(), RandomRotation(10),
             RandomIntensity(), Resize((32, 224, 224)), Window("pe")])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._transform_registry import (
    TRANSFORMS,
    eval_transform,
    plain,
    register_transform,
    transform_from_config,
    transform_to_config,
)
from .geometry import box_downsample
from .windows import WindowSpec, stack_windows, window_list

__all__ = [
    "TRANSFORMS",
    "CenterCrop",
    "Compose",
    "RandomCrop",
    "RandomFlip",
    "RandomIntensity",
    "RandomRotation",
    "Resize",
    "Window",
    "eval_transform",
    "transform_from_config",
    "transform_to_config",
]

Size3 = Sequence[int | None]


def _as5d(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 4:
        return x.unsqueeze(0), True
    if x.ndim == 5:
        return x, False
    raise ValueError(f"Expected (C, D, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")


def _back(x: torch.Tensor, squeeze: bool) -> torch.Tensor:
    return x.squeeze(0) if squeeze else x


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


def _target(size: Size3, shape: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3:
        raise ValueError(f"size must be (D, H, W) (None keeps a dim), got {size}")
    return tuple(int(s) if s is not None else int(n) for s, n in zip(size, shape))  # type: ignore[return-value]


def _pad_to(x: torch.Tensor, size: Sequence[int], fill: float) -> torch.Tensor:
    """Centre-pad the last three dims up to ``size`` with ``fill``."""
    pads: list[int] = []
    for n, s in zip(reversed(x.shape[-3:]), reversed(size)):
        extra = max(0, s - n)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads, value=fill) if any(pads) else x


@register_transform
class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"

    def to_config(self) -> dict[str, Any] | None:
        parts = [transform_to_config(t) for t in self.transforms]
        return None if any(p is None for p in parts) else {"name": "Compose", "transforms": parts}

    def eval_counterpart(self) -> Compose | None:
        kept = [e for e in (eval_transform(m) for m in self.transforms) if e is not None]
        return Compose(kept) if kept else None


@register_transform
class CenterCrop:
    """Crop the centre ``size`` = (D, H, W) (``None`` keeps a dim); pads with ``fill`` if smaller."""

    def __init__(self, size: Size3, fill: float = -1000.0) -> None:
        self.size, self.fill = tuple(size), fill

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = _target(self.size, x.shape[-3:])
        x = _pad_to(x, t, self.fill)
        sl = [slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(x.shape[-3:], t)]
        return x[(..., *sl)]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return _target(self.size, shape)

    def invert_map(self, m: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Put a map ``(..., d, h, w)`` on this crop's output back onto the input grid
        ``shape`` (zero where the crop cut; padded margins dropped)."""
        t = self.output_shape(shape)
        padded = [max(n, s) for n, s in zip(shape, t)]
        full = m.new_zeros((*m.shape[:-3], *padded))
        sl = [slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(padded, t)]
        full[(..., *sl)] = m
        pads = [slice((p - n) // 2, (p - n) // 2 + n) for p, n in zip(padded, shape)]
        return full[(..., *pads)]

    def to_config(self) -> dict[str, Any]:
        return {"name": "CenterCrop", "size": plain(self.size), "fill": self.fill}

    def eval_counterpart(self) -> Any:
        return self


@register_transform
class RandomCrop:
    """Crop a random ``size`` = (D, H, W) box per sample; pads with ``fill`` if smaller."""

    def __init__(
        self, size: Size3, fill: float = -1000.0, generator: torch.Generator | None = None
    ) -> None:
        self.size, self.fill, self.generator = tuple(size), fill, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x5, sq = _as5d(x)
        t = _target(self.size, x5.shape[-3:])
        x5 = _pad_to(x5, t, self.fill)
        room = torch.tensor([n - s for n, s in zip(x5.shape[-3:], t)], dtype=torch.float64)
        u = torch.rand(x5.shape[0], 3, generator=self.generator, dtype=torch.float64)
        starts = torch.floor(u * (room + 1)).long().tolist()
        crops = [
            x5[b, :, d : d + t[0], h : h + t[1], w : w + t[2]] for b, (d, h, w) in enumerate(starts)
        ]
        out = crops[0].unsqueeze(0) if len(crops) == 1 else torch.stack(crops)
        return _back(out, sq)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"

    def to_config(self) -> dict[str, Any]:
        return {"name": "RandomCrop", "size": plain(self.size), "fill": self.fill}

    def eval_counterpart(self) -> Any:
        return CenterCrop(self.size, fill=self.fill)


@register_transform
class RandomFlip:
    """Flip each of ``axes`` (negative = spatial dims, -1 = W) with probability ``p`` per sample."""

    def __init__(
        self,
        axes: Sequence[int] = (-1,),
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        if any(a not in (-1, -2, -3) for a in axes):
            raise ValueError(f"axes must be among -3 (D), -2 (H), -1 (W); got {axes}")
        self.axes, self.p, self.generator = tuple(axes), p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x5, sq = _as5d(x)
        for a in self.axes:
            m = _rand(x5.shape[0], self.generator, x5.device) < self.p
            if bool(m.all()):
                x5 = x5.flip(a)
            elif bool(m.any()):
                x5 = torch.where(m.view(-1, 1, 1, 1, 1), x5.flip(a), x5)
        return _back(x5, sq)

    def __repr__(self) -> str:
        return f"RandomFlip(axes={self.axes}, p={self.p})"

    def to_config(self) -> dict[str, Any]:
        return {"name": "RandomFlip", "axes": plain(self.axes), "p": self.p}

    def eval_counterpart(self) -> Any:
        return None


@register_transform
class RandomRotation:
    """Rotate in the (H, W) plane by a uniform angle per sample, about the centre.

    ``degrees``: ``d`` for ``[-d, d]`` or a ``(lo, hi)`` range; positive angles turn the
    displayed slice (row 0 on top) counter-clockwise, like ``torch.rot90``. New voxels get ``fill`` (default -1000 = air
    in HU; apply before `Window`). In-plane pixels are assumed square.
    """

    def __init__(
        self,
        degrees: float | tuple[float, float] = 10.0,
        fill: float = -1000.0,
        p: float = 1.0,
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        lo, hi = (-float(degrees), float(degrees)) if np.isscalar(degrees) else degrees  # type: ignore[misc]
        self.degrees = (float(lo), float(hi))
        self.fill, self.p, self.mode = fill, p, mode
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x5, sq = _as5d(x)
        b = x5.shape[0]
        lo, hi = self.degrees
        ang = lo + torch.rand(b, generator=self.generator, dtype=torch.float64) * (hi - lo)
        ang = torch.where(torch.rand(b, generator=self.generator) < self.p, ang, 0.0)
        if not bool((ang != 0).any()):
            return x
        rad = ang * math.pi / 180.0
        c, s = torch.cos(rad), torch.sin(rad)
        h, w = x5.shape[-2], x5.shape[-1]
        theta = torch.zeros(b, 3, 4, dtype=torch.float64)
        # grid coords are (x=W, y=H, z=D) normalised to [-1, 1]; correct for aspect ratio
        theta[:, 0, 0], theta[:, 0, 1] = c, -s * h / w
        theta[:, 1, 0], theta[:, 1, 1] = s * w / h, c
        theta[:, 2, 2] = 1.0
        theta = theta.to(device=x5.device, dtype=x5.dtype)
        grid = F.affine_grid(theta, list(x5.shape), align_corners=False)
        out = F.grid_sample(
            x5 - self.fill, grid, mode=self.mode, padding_mode="zeros", align_corners=False
        )
        return _back(out.add_(self.fill), sq)

    def __repr__(self) -> str:
        return f"RandomRotation(degrees={self.degrees}, fill={self.fill}, p={self.p})"

    def to_config(self) -> dict[str, Any]:
        return {
            "name": "RandomRotation",
            "degrees": plain(self.degrees),
            "fill": self.fill,
            "p": self.p,
            "mode": self.mode,
        }

    def eval_counterpart(self) -> Any:
        return None


@register_transform
class RandomIntensity:
    """``x * (1 + a) + b`` with ``a ~ U(-scale, scale)``, ``b ~ U(-shift, shift)`` per sample.

    Defaults are in HU (±25 HU, ±5 %); on windowed [0, 1] input use e.g. ``shift=0.05``.
    """

    def __init__(
        self,
        shift: float = 25.0,
        scale: float = 0.05,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.shift, self.scale, self.p, self.generator = shift, scale, p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x5, sq = _as5d(x)
        b = x5.shape[0]
        r = torch.rand(b, 3, generator=self.generator)
        on = (r[:, 2] < self.p).float()
        a = (1 + (r[:, 0] * 2 - 1) * self.scale * on).to(x5.device, x5.dtype).view(-1, 1, 1, 1, 1)
        off = ((r[:, 1] * 2 - 1) * self.shift * on).to(x5.device, x5.dtype).view(-1, 1, 1, 1, 1)
        return _back(torch.addcmul(off, x5, a), sq)

    def __repr__(self) -> str:
        return f"RandomIntensity(shift={self.shift}, scale={self.scale}, p={self.p})"

    def to_config(self) -> dict[str, Any]:
        return {"name": "RandomIntensity", "shift": self.shift, "scale": self.scale, "p": self.p}

    def eval_counterpart(self) -> Any:
        return None


@register_transform
class Resize:
    """Resize the spatial dims to ``size`` = (D, H, W) (``None`` keeps a dim).

    ``mode="area"`` (default, anti-aliased like OpenCV ``INTER_AREA``): box average; uses
    `F.avg_pool3d` when the sizes divide exactly, else `F.adaptive_avg_pool3d` — upsampling
    axes fall back to trilinear. Other modes go to `F.interpolate`.
    """

    def __init__(self, size: Size3, mode: str = "area") -> None:
        self.size, self.mode = tuple(size), mode

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x5, sq = _as5d(x)
        if not x5.is_floating_point():
            x5 = x5.float()
        t = _target(self.size, x5.shape[-3:])
        src = tuple(x5.shape[-3:])
        if t == src:
            return x
        if self.mode == "area":
            if any(s < n for s, n in zip(src, t)):  # some axis grows: trilinear for it
                up = tuple(max(s, n) for s, n in zip(src, t))
                x5 = F.interpolate(x5, size=up, mode="trilinear", align_corners=False)
                src = up
            if all(s % n == 0 for s, n in zip(src, t)):
                k = tuple(s // n for s, n in zip(src, t))
                out = box_downsample(x5, k) if k != (1, 1, 1) else x5
            else:
                out = F.adaptive_avg_pool3d(x5, t)
        else:
            kw = {"align_corners": False} if self.mode == "trilinear" else {}
            out = F.interpolate(x5, size=t, mode=self.mode, **kw)
        return _back(out, sq)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, mode={self.mode!r})"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return _target(self.size, shape)

    def invert_map(self, m: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Resize a map ``(..., d, h, w)`` on this transform's output back to ``shape``."""
        lead = m.shape[:-3]
        x = m.reshape(1, -1, *m.shape[-3:]).float()
        x = F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=False)
        return x.reshape(*lead, *shape)

    def to_config(self) -> dict[str, Any]:
        return {"name": "Resize", "size": plain(self.size), "mode": self.mode}

    def eval_counterpart(self) -> Any:
        return self


@register_transform
class Window:
    """HU ``(1, D, H, W)`` / ``(B, 1, D, H, W)`` -> ``(n, ...)`` channels in [0, 1], one per window."""

    def __init__(self, windows: Sequence[WindowSpec] | WindowSpec = "pe") -> None:
        self.windows = windows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        cdim = x.ndim - 4
        if x.shape[cdim] != 1:
            raise ValueError(
                f"Window expects a single HU channel, got {x.shape[cdim]} channels; "
                "window once, on the HU tensor."
            )
        return stack_windows(x.squeeze(cdim), self.windows, dim=cdim)

    def __repr__(self) -> str:
        return f"Window({self.windows!r})"

    def to_config(self) -> dict[str, Any]:
        return {"name": "Window", "windows": plain(window_list(self.windows))}

    def eval_counterpart(self) -> Any:
        return self
