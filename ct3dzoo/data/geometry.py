"""Resampling to a spacing or shape, and sliding slice windows along D."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from .volume import CTVolume

__all__ = ["resample", "slice_window_bounds", "slice_windows"]

T = TypeVar("T", CTVolume, np.ndarray, torch.Tensor)
_MODES = ("trilinear", "nearest", "nearest-exact", "area")


def _interp(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize the last three dims of ``x`` (any leading dims) with `F.interpolate`."""
    lead = x.shape[:-3]
    y = x.reshape(-1, 1, *x.shape[-3:])
    kw = {"align_corners": False} if mode in ("trilinear", "linear") else {}
    y = F.interpolate(y, size=tuple(int(s) for s in size), mode=mode, **kw)
    return y.reshape(*lead, *y.shape[-3:])


def resample(
    volume: T,
    *,
    spacing: Sequence[float] | float | None = None,
    shape: Sequence[int] | None = None,
    mode: str = "trilinear",
    src_spacing: Sequence[float] | None = None,
) -> T:
    """Resample to a voxel ``spacing`` (mm) or an output ``shape`` (D, H, W).

    The field of view is kept (voxel edges aligned, ``align_corners=False``), so the
    actual spacing is ``old_spacing * old_shape / new_shape`` — equal to the requested
    spacing up to rounding of the shape; a `CTVolume` result reports that actual spacing
    and the origin of its first voxel: for ``"nearest"``/``"nearest-exact"`` the centre of
    the source voxel actually copied there, otherwise the centre of the averaged cell.
    A ``meta["padding_mask"]`` is resampled along (True where any padding contributes).

    Args:
        volume: `CTVolume`, or array/tensor ``(..., D, H, W)`` (HU or [0, 1]).
        spacing: target ``(z, y, x)`` mm or one number for isotropic; needs the source
            spacing (from the `CTVolume` or ``src_spacing``).
        shape: target ``(D, H, W)``; exclusive with ``spacing``.
        mode: ``"trilinear"``, ``"nearest"``, ``"nearest-exact"`` or ``"area"``.

    Returns:
        Same type as ``volume``; tensors stay on their device.

    Raises:
        ValueError: both or neither of ``spacing``/``shape``; a spacing that is not
            positive and finite; a shape that is not three integers >= 1; an unknown mode.
    """
    if (spacing is None) == (shape is None):
        raise ValueError("Pass exactly one of spacing= or shape=")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    src = volume.hu if isinstance(volume, CTVolume) else volume
    if src.ndim < 3:
        raise ValueError(f"resample needs (..., D, H, W); got shape {tuple(src.shape)}")
    in_shape = tuple(src.shape[-3:])
    old_sp = volume.spacing if isinstance(volume, CTVolume) else src_spacing
    if spacing is not None:
        if old_sp is None:
            raise ValueError("resample(spacing=...) on an array needs src_spacing=(z, y, x) mm")
        sp = _triple(spacing, "spacing")
        _triple(old_sp, "src_spacing")
        shape = tuple(max(1, round(n * o / s)) for n, o, s in zip(in_shape, old_sp, sp))
    assert shape is not None
    shape = _shape3(shape)
    if isinstance(src, torch.Tensor):
        x = src if src.is_floating_point() else src.float()
        out = _interp(x, shape, mode)
    else:
        out = _interp_np(src, shape, mode)
    if not isinstance(volume, CTVolume):
        return out  # type: ignore[return-value]
    scale = np.asarray(in_shape, dtype=np.float64) / np.asarray(shape)
    new_sp = np.asarray(volume.spacing) * scale
    # array index (in the old grid) of the centre of new voxel 0: the voxel copied for the
    # nearest modes (torch: floor(i * scale) / floor((i + 0.5) * scale)), else the centre of
    # the averaged cell (voxel edges aligned)
    if mode == "nearest":
        first = np.zeros(3)
    elif mode == "nearest-exact":
        first = np.minimum(np.floor(0.5 * scale), np.asarray(in_shape) - 1)
    else:
        first = (scale - 1.0) / 2.0
    shift = volume.direction @ (first * np.asarray(volume.spacing))
    meta = dict(volume.meta)
    mask = meta.get("padding_mask")
    if isinstance(mask, np.ndarray) and mask.shape == in_shape:
        meta["padding_mask"] = _interp_np(mask.astype(np.float32), shape, mode) > 0
    return replace(
        volume,
        hu=out,
        spacing=tuple(new_sp),
        origin=tuple(np.asarray(volume.origin) + shift),
        meta=meta,
    )  # type: ignore[return-value]


def _interp_np(src: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
        return _interp(x, shape, mode).numpy()


def _triple(v: Sequence[float] | float, name: str) -> tuple[float, float, float]:
    t = (float(v),) * 3 if np.isscalar(v) else tuple(float(s) for s in v)  # type: ignore[arg-type,union-attr]
    if len(t) != 3 or not all(np.isfinite(s) and s > 0 for s in t):
        raise ValueError(f"{name} must be one positive number or three (z, y, x) in mm; got {v!r}")
    return t  # type: ignore[return-value]


def _shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        t = tuple(int(s) for s in shape)
        ok = len(t) == 3 and all(s >= 1 and s == float(v) for s, v in zip(t, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shape must be three positive integers (D, H, W); got {shape!r}")
    return t  # type: ignore[return-value]


def slice_window_bounds(
    depth: int,
    num_slices: int = 32,
    stride: int = 24,
    last: Literal["shift", "pad", "drop"] = "shift",
) -> list[tuple[int, int]]:
    """``(start, stop)`` slice ranges of the windows `slice_windows` yields (see there)."""
    if num_slices < 1 or stride < 1:
        raise ValueError("num_slices and stride must be >= 1")
    if last not in ("shift", "pad", "drop"):
        raise ValueError(f"last must be 'shift', 'pad' or 'drop', got {last!r}")
    if depth <= num_slices:
        return [] if (last == "drop" and depth < num_slices) else [(0, depth)]
    starts = list(range(0, depth - num_slices + 1, stride))
    bounds = [(s, s + num_slices) for s in starts]
    if bounds[-1][1] < depth:
        if last == "shift":
            bounds.append((depth - num_slices, depth))
        elif last == "pad":
            bounds.append((starts[-1] + stride, depth))
    return bounds


def slice_windows(
    x: torch.Tensor | np.ndarray,
    num_slices: int = 32,
    stride: int = 24,
    *,
    last: Literal["shift", "pad", "drop"] = "shift",
    pad_value: float = 0.0,
) -> Iterator[tuple[torch.Tensor | np.ndarray, tuple[int, int]]]:
    """Yield ``(window, (start, stop))`` over the D axis of ``x`` ``(..., D, H, W)``.

    Windows are views of ``num_slices`` slices every ``stride`` slices (the paper: 32 and
    24; a study score is the max over its windows). The tail is handled by ``last``:

    - ``"shift"`` (default): one extra window ending exactly at the last slice
      (``start = D - num_slices``), overlapping its neighbour more; every slice is
      covered and every window has ``num_slices`` slices.
    - ``"pad"``: the next window on the stride grid, padded at the end with ``pad_value``
      (0 = air after windowing; use -1000 on HU); ``stop`` is the last real slice + 1.
    - ``"drop"``: tail slices not covered by a full window are ignored.

    A volume with ``D <= num_slices`` gives one window ``(0, D)``, padded with ``pad_value``
    to ``num_slices`` (except with ``"drop"`` when ``D < num_slices``: no window).
    """
    depth = x.shape[-3]
    for start, stop in slice_window_bounds(depth, num_slices, stride, last):
        w = x[..., start:stop, :, :]
        if stop - start < num_slices:
            n = num_slices - (stop - start)
            if isinstance(w, torch.Tensor):
                w = F.pad(w, (0, 0, 0, 0, 0, n), value=pad_value)
            else:
                pad = [(0, 0)] * (w.ndim - 3) + [(0, n), (0, 0), (0, 0)]
                w = np.pad(w, pad, constant_values=pad_value)
        yield w, (start, stop)


def box_downsample(
    x: torch.Tensor, k: tuple[int, int, int], block_bytes: int = 16 << 20
) -> torch.Tensor:
    """Exact box average by integer factors ``k`` of ``(B, C, D, H, W)`` (== `F.avg_pool3d`).

    Works in blocks of output slices sized to stay in cache (blocks, not slices: a 128-slice
    volume to 32 is about 6 blocks): sum ``k[0]`` input slices with adds, then
    `F.avg_pool2d` in-plane. On CPU this is 2-6x faster than `F.avg_pool3d`.
    """
    if x.is_cuda:
        return F.avg_pool3d(x, kernel_size=k, stride=k)
    b, c, d, h, w = x.shape
    kd, kh, kw = k
    do = d // kd
    v = x.reshape(b * c, do, kd, h, w)
    out = torch.empty(b * c, do, h // kh, w // kw, dtype=x.dtype, device=x.device)
    per_slice = kd * h * w * x.element_size()
    cs = max(1, block_bytes // per_slice)
    for i in range(0, do, cs):
        blk = v[:, i : i + cs]
        acc = blk[:, :, 0].clone() if kd > 1 else blk[:, :, 0]
        for j in range(1, kd):
            acc += blk[:, :, j]
        n = acc.shape[1]
        pooled = F.avg_pool2d(acc.reshape(-1, 1, h, w), (kh, kw)) if kh * kw > 1 else acc
        out[:, i : i + n] = pooled.reshape(b * c, n, h // kh, w // kw)
    if kd > 1:
        out.mul_(1.0 / kd)
    return out.reshape(b, c, do, h // kh, w // kw)
