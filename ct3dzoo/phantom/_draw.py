"""Vectorised drawing helpers of the phantom: signed distances, partial volume, noise, paint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def ramp(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction in [0, 1] from a signed distance (mm, negative inside)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0).astype(np.float32, copy=False)


def ellipse_sd(x: Any, y: Any, cx: Any, cy: Any, a: Any, b: Any) -> np.ndarray:
    """First-order signed distance (mm) to an axis-aligned ellipse; broadcasts."""
    dx = (x - cx) / a
    dy = (y - cy) / b
    q = dx * dx + dy * dy
    g = 2.0 * np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return (q - 1.0) / np.maximum(g, 1e-6)


def paint(
    hu: np.ndarray, tissue: np.ndarray, frac: np.ndarray, value: Any, code: int, where: Any = ...
) -> None:
    """Blend ``value`` into ``hu[where]`` with weight ``frac``; relabel where ``frac > 0.5``."""
    sub = hu[where]
    sub += frac * (value - sub)
    hu[where] = sub
    t = tissue[where]
    t[frac > 0.5] = code
    tissue[where] = t


def value_noise(
    rng: np.random.Generator, shape: Sequence[int], cell: Sequence[float]
) -> np.ndarray:
    """Smooth, roughly unit-variance noise with feature size ``cell`` voxels per axis."""
    coarse = [int(np.ceil(n / c)) + 3 for n, c in zip(shape, cell)]
    g = rng.standard_normal(coarse, dtype=np.float32)
    for axis, (n, c) in enumerate(zip(shape, cell)):
        t = np.arange(n, dtype=np.float32) / np.float32(c) + rng.uniform(0.0, 1.0)
        i = t.astype(np.int64)
        f = t - i
        f = f * f * (3.0 - 2.0 * f)
        bshape = [1] * len(shape)
        bshape[axis] = n
        f = f.reshape(bshape)
        g = np.take(g, i, axis=axis) * (1.0 - f) + np.take(g, i + 1, axis=axis) * f
    g *= np.float32(1.0 / max(float(g.std()), 1e-6))
    return g


def capsule_sd_box(
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    shape: Sequence[int],
    spacing: Sequence[float],
    origin_zyx: np.ndarray,
    margin: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Signed distance (mm) to a tapered tube from ``p0`` to ``p1`` (mm, z/y/x) in its bounding box."""
    sp = np.asarray(spacing, dtype=np.float64)
    rmax = max(r0, r1) + margin
    lo = np.floor((np.minimum(p0, p1) - rmax - origin_zyx) / sp).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + rmax - origin_zyx) / sp).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    axes = [
        (origin_zyx[k] + sp[k] * np.arange(lo[k], hi[k], dtype=np.float32)).astype(np.float32)
        for k in range(3)
    ]
    z = axes[0][:, None, None]
    y = axes[1][None, :, None]
    x = axes[2][None, None, :]
    v = (p1 - p0).astype(np.float32)
    vv = float(v @ v) or 1e-6
    t = ((z - p0[0]) * v[0] + (y - p0[1]) * v[1] + (x - p0[2]) * v[2]) / vv
    t = np.clip(t, 0.0, 1.0)
    dz = z - (p0[0] + t * v[0])
    dy = y - (p0[1] + t * v[1])
    dx = x - (p0[2] + t * v[2])
    r = r0 + t * (r1 - r0)
    sd = np.sqrt(dz * dz + dy * dy + dx * dx) - r
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return box, sd
