"""The phantom's findings: a solid lung nodule, or a filling defect (embolus) in an artery.

Each ``add_*`` paints its finding into ``hu`` and labels it ``TISSUE_LABELS["finding"]`` in
``tissue`` where the partial-volume fraction exceeds 0.5 (that region is the case's lesion
mask, :attr:`~ct3dzoo.phantom.PhantomCase.mask`), and returns its :class:`Finding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._draw import capsule_sd_box, paint, ramp
from .case import TISSUE_LABELS, Finding

__all__ = ["add_embolus", "add_nodule"]


def add_nodule(
    rng: np.random.Generator,
    hu: np.ndarray,
    tissue: np.ndarray,
    spacing: Sequence[float],
    origin_zyx: np.ndarray,
    radius_mm: tuple[float, float],
    width: float,
    hu_range: tuple[float, float] = (20.0, 60.0),
) -> Finding:
    """Place a solid spherical nodule fully inside a lung; returns its :class:`Finding`."""
    lung = tissue == TISSUE_LABELS["lung"]
    cand = np.flatnonzero(lung)
    if cand.size == 0:
        raise ValueError("no lung in this field of view to place a nodule in")
    sp = np.asarray(spacing, dtype=np.float64)
    r = float(rng.uniform(*radius_mm))
    val = float(rng.uniform(*hu_range))
    for attempt in range(200):
        rr = r if attempt < 150 else max(2.0, r * 0.5)
        c_idx = np.array(
            np.unravel_index(cand[rng.integers(cand.size)], hu.shape), dtype=np.float64
        )
        c_idx += rng.uniform(-0.5, 0.5, 3)
        half = np.ceil((rr + 3.0) / sp).astype(int)
        lo = np.maximum(np.round(c_idx).astype(int) - half, 0)
        hi = np.minimum(np.round(c_idx).astype(int) + half + 1, hu.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        zz, yy, xx = (
            ((np.arange(lo[k], hi[k]) - c_idx[k]) * sp[k]).reshape(
                [-1 if j == k else 1 for j in range(3)]
            )
            for k in range(3)
        )
        dist = np.sqrt(zz * zz + yy * yy + xx * xx)
        ball = dist <= rr + 2.0
        if (
            ball.sum() == 0
            or lung[box][ball].mean() < 0.97
            or np.any(np.asarray(hi - lo) < 2 * half + 1)
        ):
            continue
        tex = rng.normal(0.0, 6.0, size=dist.shape).astype(np.float32)
        paint(
            hu,
            tissue,
            ramp((dist - rr).astype(np.float32), width),
            val + tex,
            TISSUE_LABELS["finding"],
            box,
        )
        return Finding("nodule", tuple(float(c) for c in c_idx), rr, val)  # type: ignore[arg-type]
    raise ValueError("could not place a nodule inside the lungs; use a larger field of view")


def add_embolus(
    rng: np.random.Generator,
    hu: np.ndarray,
    tissue: np.ndarray,
    spacing: Sequence[float],
    origin_zyx: np.ndarray,
    tubes: list[Any],
    width: float,
) -> Finding:
    """Put a ~40 HU filling defect inside a pulmonary artery; returns its :class:`Finding`."""
    arteries = [t for t in tubes if t[6] in ("rpa", "lpa") or t[6].startswith("lobar")]
    order = rng.permutation(len(arteries))
    sp = np.asarray(spacing, dtype=np.float64)
    val = float(rng.uniform(25.0, 55.0))
    for k in order:
        p0, p1, r0, r1, _, _, _ = arteries[k]
        t = rng.uniform(0.25, 0.7)
        c = p0 + t * (p1 - p0)
        vr = r0 + t * (r1 - r0)
        c_idx = (c - origin_zyx) / sp
        if vr < 6.0 or np.any(c_idx < 1) or np.any(c_idx > np.asarray(hu.shape) - 2):
            continue
        re = float(vr * rng.uniform(0.75, 1.0))
        res = capsule_sd_box(p0, p1, r0, r1, hu.shape, spacing, origin_zyx, 2 * width)
        if res is None:
            continue
        box, sd_v = res
        zz, yy, xx = (
            ((np.arange(box[k2].start, box[k2].stop) - c_idx[k2]) * sp[k2]).reshape(
                [-1 if j == k2 else 1 for j in range(3)]
            )
            for k2 in range(3)
        )
        # elongated along the vessel: shrink the distance component along the axis
        ax = (p1 - p0) / max(float(np.linalg.norm(p1 - p0)), 1e-6)
        along = zz * ax[0] + yy * ax[1] + xx * ax[2]
        d2 = zz * zz + yy * yy + xx * xx - along * along + (along / 2.5) ** 2
        f = ramp((np.sqrt(d2) - re).astype(np.float32), width) * ramp(sd_v + 0.5 * width, width)
        if (f > 0.5).sum() < 6:
            continue
        paint(hu, tissue, f, val, TISSUE_LABELS["finding"], box)
        return Finding("embolus", tuple(float(v) for v in c_idx), re, val)  # type: ignore[arg-type]
    raise ValueError("could not place an embolus in this field of view")
