"""Synthetic chest-CT phantom: procedural, deterministic by seed, in Hounsfield units.

:func:`make_chest_phantom` draws one contrast-enhanced chest CT (a CT pulmonary angiogram)
as a float32 ``(D, H, W)`` volume in HU, with an optional binary *finding*: a spherical lung
nodule or a filling defect (embolus) in a contrast-filled pulmonary artery.
:func:`make_phantom_dataset` writes many cases as real DICOM series and/or NIfTI files plus a
``manifest.csv`` so that demos and tests exercise the real readers.

Conventions (the same as DICOM LPS, patient head-first supine):

* array axes ``(D, H, W)`` = ``(z, y, x)``; ``spacing`` is ``(z, y, x)`` in mm;
* ``D`` runs **inferior -> superior** (index 0 is the lung bases, ``D - 1`` the apices);
* ``H`` (rows) runs anterior -> posterior, ``W`` (columns) runs patient right -> left,
  i.e. the usual radiological display: the patient's right lung is on the image's left.

Anatomy is defined in millimetres around the centre of the field of view, so a different
``shape``/``spacing`` samples the same chest more or less finely. The default spacing covers
a 360 mm field of view in-plane (like 512 x 0.70 mm) and 240 mm craniocaudally (lung apex to
the diaphragm): ``spacing = (240 / D, 360 / H, 360 / W)``, i.e. (5.0, 2.8125, 2.8125) mm for
the default 48 x 128 x 128 grid.

Why a 3D model is needed: the lungs carry a network of small vessels that run mostly
craniocaudally, so in any single axial slice they appear as small round blobs -- exactly
like a nodule's cross-section. A nodule is a blob that *ends* after a few slices; a vessel
continues. Likewise an embolus is only a short dark segment along an artery.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "TISSUE_LABELS",
    "Finding",
    "PhantomCase",
    "default_spacing",
    "make_chest_phantom",
    "make_phantom_dataset",
    "nifti_affine",
    "write_dicom_series",
    "write_nifti",
]

FindingKind = Literal["nodule", "embolus"]

#: Codes of :attr:`PhantomCase.tissue` (the dominant tissue of each voxel).
TISSUE_LABELS: dict[str, int] = {
    "air": 0,  # outside the body, trachea and bronchi
    "fat": 1,  # subcutaneous and pericardial fat
    "soft": 2,  # muscle, mediastinum, heart, abdomen, discs
    "lung": 3,  # lung parenchyma including its small (unlabelled) vessels
    "vessel": 4,  # contrast-filled aorta, pulmonary arteries, SVC
    "bone": 5,  # vertebrae, ribs, sternum
    "finding": 6,  # the nodule or the embolus
    "table": 7,  # patient table
}

_FOV_MM = (240.0, 360.0, 360.0)  # default field of view (z, y, x) in mm
_CHEST_HALF_Z = 120.0  # the chest model spans z in [-120, 120] mm (u in [0, 1])
_HU_MIN, _HU_MAX = -1024.0, 3071.0  # 12-bit CT range


@dataclass(frozen=True)
class Finding:
    """The positive finding of a phantom case.

    ``centre`` is the voxel index ``(d, h, w)`` of its centre (floats, sub-voxel), ``radius_mm``
    its radius in mm and ``hu`` its mean attenuation in HU.
    """

    kind: FindingKind
    centre: tuple[float, float, float]
    radius_mm: float
    hu: float


@dataclass
class PhantomCase:
    """One synthetic chest CT.

    Attributes:
        hu: float32 ``(D, H, W)`` volume in HU (integer-valued, clipped to [-1024, 3071]).
        spacing: voxel size ``(z, y, x)`` in mm.
        label: 1 if the case holds a finding, else 0.
        finding: the finding (``None`` when ``label == 0``).
        seed: the seed that reproduces this case.
        tissue: uint8 ``(D, H, W)`` map of the dominant tissue, codes in :data:`TISSUE_LABELS`.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    label: int
    finding: Finding | None
    seed: int
    tissue: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient (LPS) position ``(x, y, z)`` in mm of voxel ``(0, 0, 0)``; the FOV is centred."""
        return _origin_lps(self.shape, self.spacing)


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing ``(z, y, x)`` in mm that puts a 240 x 360 x 360 mm chest field of view on ``shape``."""
    return tuple(float(f) / int(n) for f, n in zip(_FOV_MM, shape))  # type: ignore[return-value]


def _origin_lps(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    d, h, w = shape
    sz, sy, sx = spacing
    return (-(w - 1) * sx / 2.0, -(h - 1) * sy / 2.0, -(d - 1) * sz / 2.0)


# --------------------------------------------------------------------------------------
# small vectorised helpers
# --------------------------------------------------------------------------------------


def _ramp(sd: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction in [0, 1] from a signed distance (mm, negative inside)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0).astype(np.float32, copy=False)


def _ellipse_sd(x: Any, y: Any, cx: Any, cy: Any, a: Any, b: Any) -> np.ndarray:
    """First-order signed distance (mm) to an axis-aligned ellipse; broadcasts."""
    dx = (x - cx) / a
    dy = (y - cy) / b
    q = dx * dx + dy * dy
    g = 2.0 * np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    return (q - 1.0) / np.maximum(g, 1e-6)


def _paint(
    hu: np.ndarray, tissue: np.ndarray, frac: np.ndarray, value: Any, code: int, where: Any = ...
) -> None:
    """Blend ``value`` into ``hu[where]`` with weight ``frac``; relabel where ``frac > 0.5``."""
    sub = hu[where]
    sub += frac * (value - sub)
    hu[where] = sub
    t = tissue[where]
    t[frac > 0.5] = code
    tissue[where] = t


def _value_noise(
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


def _capsule_sd_box(
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


# --------------------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------------------


def make_chest_phantom(
    *,
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    finding: bool | None = None,
    finding_kind: FindingKind = "nodule",
    nodule_radius_mm: tuple[float, float] = (5.0, 10.0),
    noise_hu: tuple[float, float] = (10.0, 20.0),
    table: bool = True,
    lung_vessel_hu: float = 750.0,
    nodule_hu: tuple[float, float] = (20.0, 60.0),
) -> PhantomCase:
    """Draw one synthetic contrast-enhanced chest CT in HU.

    Args:
        shape: ``(D, H, W)``; ``D`` runs inferior -> superior.
        spacing: ``(z, y, x)`` voxel size in mm; default :func:`default_spacing` (shape)
            (5.0, 2.8125, 2.8125 mm for the default shape).
        seed: everything (anatomy, finding, noise) is a function of the seed.
        finding: add a finding (label 1), none (label 0), or ``None`` to draw it at random.
        finding_kind: ``"nodule"`` (solid sphere of 20..60 HU inside a lung) or ``"embolus"``
            (filling defect of ~40 HU in a contrast-filled pulmonary artery).
        nodule_radius_mm: range of the nodule radius in mm (default 5..10 mm: 10..20 mm across).
        noise_hu: range of the standard deviation (HU) of the correlated CT noise.
        table: draw the patient table under the back.
        lung_vessel_hu: peak attenuation (HU) of the small intrapulmonary vessels above the
            parenchyma (default 750: their cores reach about -115 HU, close to a nodule in a
            lung window). Lower values (e.g. 300) give a smoother, less vascular lung, in
            which a nodule stands out more, as small vessels do at coarse resolution.
        nodule_hu: range of the mean attenuation (HU) of a nodule (default 20..60, solid).

    Returns:
        A :class:`PhantomCase` (``hu`` is integer-valued float32, clipped to [-1024, 3071]).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be (D, H, W) with every size >= 4, got {shape}")
    spacing = default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values (z, y, x), got {spacing}")
    if finding_kind not in ("nodule", "embolus"):
        raise ValueError(f"finding_kind must be 'nodule' or 'embolus', got {finding_kind!r}")
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED_C7]))
    if finding is None:
        finding = bool(rng.integers(0, 2))

    D, H, W = shape
    sz, sy, sx = spacing
    ox, oy, oz = _origin_lps(shape, spacing)
    origin_zyx = np.array([oz, oy, ox], dtype=np.float64)
    z1 = (oz + sz * np.arange(D, dtype=np.float32)).astype(np.float32)
    y1 = (oy + sy * np.arange(H, dtype=np.float32)).astype(np.float32)
    x1 = (ox + sx * np.arange(W, dtype=np.float32)).astype(np.float32)
    u = ((z1 + _CHEST_HALF_Z) / (2 * _CHEST_HALF_Z))[:, None, None]  # 0 = bases, 1 = apices
    y2 = y1[None, :, None]
    x2 = x1[None, None, :]
    h2 = float(max(sy, sx))  # in-plane partial-volume width (mm)
    h3 = float((sz + sy + sx) / 3.0)  # 3D partial-volume width (mm)

    def U(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    # patient build
    s = U(0.9, 1.05)
    a_body, b_body = 155.0 * s * U(0.95, 1.05), 110.0 * s * U(0.95, 1.05)
    yc = -10.0
    fat = U(8.0, 20.0)
    contrast = U(280.0, 320.0)

    hu = np.full(shape, -1000.0, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    T = TISSUE_LABELS

    # table (z-invariant)
    if table:
        top = yc + b_body + 6.0
        sd_t = np.maximum(np.abs(y2 - (top + 6.0)) - 6.0, np.abs(x2) - 170.0)
        f = np.broadcast_to(_ramp(sd_t, h2), shape)
        _paint(hu, tissue, f, -150.0, T["table"])

    # body taper towards the thoracic inlet
    taper = 1.0 - 0.10 * np.clip(u, 0, 1) ** 2
    a_u, b_u = a_body * taper, b_body * (1.0 - 0.05 * np.clip(u, 0, 1) ** 2)
    tex = _value_noise(rng, shape, (10.0 / sz, 6.0 / sy, 6.0 / sx))
    _paint(
        hu, tissue, _ramp(_ellipse_sd(x2, y2, 0.0, yc, a_u, b_u), h2), -100.0 + 8.0 * tex, T["fat"]
    )
    _paint(
        hu,
        tissue,
        _ramp(_ellipse_sd(x2, y2, 0.0, yc, a_u - fat, b_u - fat), h2),
        50.0 + 5.0 * tex,
        T["soft"],
    )

    # thoracic cavity (inside ribs); posterior wall is thicker (paraspinal muscles)
    ac = a_u - fat - 22.0
    bc = b_u - fat - 30.0
    ycc = yc - 8.0
    sd_cav = _ellipse_sd(x2, y2, 0.0, ycc, ac, bc)
    _paint(hu, tissue, _ramp(sd_cav, h2), 40.0 + 4.0 * tex, T["soft"])

    # diaphragm domes (right higher): lungs exist only above them
    rx = float(np.max(ac))
    dome_r = (
        0.22 + U(-0.03, 0.03) - 0.30 * (((x2 + 0.45 * rx) / rx) ** 2 + ((y2 - ycc) / bc.max()) ** 2)
    )
    dome_l = (
        0.15 + U(-0.03, 0.03) - 0.30 * (((x2 - 0.45 * rx) / rx) ** 2 + ((y2 - ycc) / bc.max()) ** 2)
    )
    dome = np.maximum(dome_r, dome_l)  # (1, H, W)

    # lungs: two ellipses tapering to domed apices, inside the cavity, above the diaphragm
    apex = np.sqrt(np.clip(1.0 - ((u - 0.55) / 0.47).clip(0) ** 2, 0.0, 1.0))
    lung_sd = None
    for side in (-1.0, 1.0):
        cxl = side * 0.5 * ac
        sd = _ellipse_sd(
            x2, y2, cxl, ycc + 0.05 * bc, 0.52 * ac * apex + 1e-3, 0.92 * bc * apex + 1e-3
        )
        lung_sd = sd if lung_sd is None else np.minimum(lung_sd, sd)
    lung_sd = np.maximum(lung_sd, sd_cav + 3.0)  # pleura
    lung_sd = np.maximum(lung_sd, (dome - u) * (2 * _CHEST_HALF_Z))  # diaphragm
    f_lung = _ramp(lung_sd, h2)
    n1 = _value_noise(rng, shape, (24.0 / sz, 9.0 / sy, 9.0 / sx))
    n2 = _value_noise(rng, shape, (24.0 / sz, 9.0 / sy, 9.0 / sx))
    vessels = np.exp(-(n1 * n1 + n2 * n2) * np.float32(1.0 / (2 * 0.2**2)))
    fine = _value_noise(rng, shape, (6.0 / sz, 4.0 / sy, 4.0 / sx))
    lung_hu = -865.0 + 20.0 * fine + 50.0 * ((y2 - ycc) / bc) + float(lung_vessel_hu) * vessels
    _paint(hu, tissue, f_lung, lung_hu, T["lung"])
    del n1, n2, vessels, fine, lung_hu

    # mediastinum: a tall band between sternum and spine
    wm = 22.0 * s + 10.0 * np.clip(0.7 - u, 0, 1)
    f_med = _ramp(np.maximum(_ellipse_sd(x2, y2, 4.0, ycc, wm, bc), sd_cav), h2)
    _paint(hu, tissue, f_med, 35.0 + 6.0 * tex, T["soft"])

    # heart with pericardial fat, lower half, anterior-left
    zc_h = (0.28 + U(-0.03, 0.03)) * 2 * _CHEST_HALF_Z - _CHEST_HALF_Z
    hx, hy, hz = 20.0 * s + U(-5, 5), ycc - 0.2 * bc.max(), zc_h
    ha, hb, hc = 62.0 * s, 50.0 * s, 52.0
    z3 = z1[:, None, None]

    def _ellipsoid_sd(a: float, b: float, c: float) -> np.ndarray:
        q = ((x2 - hx) / a) ** 2 + ((y2 - hy) / b) ** 2 + ((z3 - hz) / c) ** 2
        return (np.sqrt(q) - 1.0) * min(a, b, c)

    _paint(hu, tissue, _ramp(_ellipsoid_sd(ha + 5, hb + 5, hc + 5), h3), -90.0, T["fat"])
    _paint(hu, tissue, _ramp(_ellipsoid_sd(ha, hb, hc), h3), 40.0 + 5.0 * tex, T["soft"])
    del tex

    # below the diaphragm: liver / upper abdomen
    f_abd = np.minimum(_ramp(sd_cav + 1.0, h2), (u < dome - 0.01).astype(np.float32))
    f_abd = np.minimum(f_abd, 1.0 - _ramp(_ellipsoid_sd(ha, hb, hc), h3))
    _paint(hu, tissue, f_abd, 58.0, T["soft"])
    del f_abd, f_med, f_lung, lung_sd

    # ------------------------------------------------------------------ vessels and airways
    def zmm(uu: float) -> float:
        return uu * 2 * _CHEST_HALF_Z - _CHEST_HALF_Z

    def P(x: float, y: float, uu: float) -> np.ndarray:
        return np.array([zmm(uu), y, x], dtype=np.float64)

    bcm = float(np.max(bc))
    acm = float(np.max(ac))
    y_spine = ycc + bcm - 14.0  # vertebral body centre
    tubes: list[tuple[np.ndarray, np.ndarray, float, float, float, int, str]] = []

    def tube(
        p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, val: float, code: int, name: str = ""
    ) -> None:
        tubes.append((p0, p1, r0, r1, val, code, name))

    # airways (air): trachea and main bronchi
    carina = P(0.0, ycc + 0.15 * bcm, 0.62)
    tube(P(0.0, ycc + 0.05 * bcm, 1.05), carina, 9.0 * s, 8.5 * s, -990.0, T["air"])
    tube(carina, P(-0.32 * acm, ycc + 0.2 * bcm, 0.55), 7.0 * s, 5.0 * s, -990.0, T["air"])
    tube(carina, P(0.30 * acm, ycc + 0.22 * bcm, 0.52), 6.5 * s, 4.5 * s, -990.0, T["air"])
    # aorta: ascending, arch, descending
    ax_d, ay_d = 24.0 * s, y_spine - 12.0
    asc_top = P(-4.0, ycc - 0.25 * bcm, 0.80)
    tube(P(4.0, ycc - 0.15 * bcm, 0.42), asc_top, 14.0 * s, 14.0 * s, contrast, T["vessel"])
    tube(asc_top, P(ax_d, ay_d, 0.82), 13.0 * s, 12.0 * s, contrast, T["vessel"])
    tube(
        P(ax_d, ay_d, 0.82),
        P(ax_d - 6.0, ay_d - 2.0, -0.05),
        12.0 * s,
        11.0 * s,
        contrast,
        T["vessel"],
    )
    # superior vena cava
    tube(
        P(-28.0 * s, ycc - 0.15 * bcm, 1.02),
        P(-26.0 * s, ycc - 0.1 * bcm, 0.45),
        9.0 * s,
        9.0 * s,
        contrast,
        T["vessel"],
    )
    # pulmonary trunk, right/left pulmonary arteries and lobar branches
    bif = P(6.0, ycc - 0.05 * bcm, 0.60)
    hil_r = P(-0.42 * acm, ycc + 0.08 * bcm, 0.56 + U(-0.03, 0.03))
    hil_l = P(0.42 * acm, ycc + 0.12 * bcm, 0.60 + U(-0.03, 0.03))
    tube(
        P(20.0 * s, ycc - 0.40 * bcm, 0.46), bif, 13.0 * s, 12.0 * s, contrast, T["vessel"], "trunk"
    )
    tube(bif, hil_r, 11.0 * s, 9.0 * s, contrast, T["vessel"], "rpa")
    tube(bif, hil_l, 10.0 * s, 8.5 * s, contrast, T["vessel"], "lpa")
    for side, hil in ((-1.0, hil_r), (1.0, hil_l)):
        for k, (du, lat, dy) in enumerate(
            ((0.22, 0.12, -0.10), (0.0, 0.30, 0.05), (-0.28, 0.10, 0.25))
        ):
            end = hil + np.array(
                [
                    du * 2 * _CHEST_HALF_Z + U(-10, 10),
                    dy * bcm + U(-10, 10),
                    side * (lat * acm + U(0, 15)),
                ]
            )
            tube(hil, end, 6.5 * s, 3.5 * s, contrast, T["vessel"], f"lobar{'rl'[side > 0]}{k}")
            mid = 0.5 * (hil + end)
            for _ in range(2):
                tip = mid + np.array([U(-35, 35), U(-25, 25), side * U(10, 35)])
                tube(mid, tip, 4.0 * s, 2.5 * s, contrast, T["vessel"])

    for p0, p1, r0, r1, val, code, _ in tubes:
        res = _capsule_sd_box(p0, p1, r0, r1, shape, spacing, origin_zyx, 2 * h3)
        if res is None:
            continue
        box, sd = res
        _paint(hu, tissue, _ramp(sd, h3), val, code, box)

    # ------------------------------------------------------------------ bones
    # vertebral bodies: cortical shell ~950 HU, cancellous ~450 HU; discs every ~28 mm
    r_vb = 16.0 * s
    pitch = 28.0 * U(0.95, 1.05)
    phase = U(0.0, pitch)
    disc = (np.mod(z1 + phase, pitch) < 5.0)[:, None, None].astype(np.float32)
    rr = np.sqrt(x2 * x2 + (y2 - y_spine) ** 2)
    f_vb = _ramp(rr - r_vb, h2)
    _paint(hu, tissue, np.broadcast_to(f_vb * disc, shape), 80.0, T["soft"])
    bone_nd = 1.0 - disc
    _paint(hu, tissue, np.broadcast_to(f_vb * bone_nd, shape), 950.0, T["bone"])
    _paint(
        hu, tissue, np.broadcast_to(_ramp(rr - (r_vb - 2.5), h2) * bone_nd, shape), 450.0, T["bone"]
    )
    # posterior arch around the spinal canal, spinous process
    y_can = y_spine + r_vb + 9.0
    rc = np.sqrt(x2 * x2 + (y2 - y_can) ** 2)
    f_arch = np.maximum(
        _ramp(rc - 13.0, h2), _ramp(_ellipse_sd(x2, y2, 0.0, y_can + 20.0, 4.0, 14.0), h2)
    )
    _paint(hu, tissue, np.broadcast_to(f_arch * bone_nd, shape), 700.0, T["bone"])
    _paint(hu, tissue, np.broadcast_to(_ramp(rc - 8.0, h2), shape), 15.0, T["soft"])
    # sternum (anterior midline, above the xiphoid)
    f_st = _ramp(_ellipse_sd(x2, y2, 0.0, ycc - bcm - 6.0, 14.0, 5.0), h2) * (u > 0.15)
    _paint(hu, tissue, np.broadcast_to(f_st, shape), 600.0, T["bone"])
    # ribs: bone arcs just outside the cavity, sloping down anteriorly, 12 over the chest
    theta = np.arctan2(y2 - ycc, x2)  # +pi/2 posterior
    sinth = np.sin(theta)
    rib_pitch = 24.0 * U(0.95, 1.05)
    rib_z = z1[:, None, None] + 45.0 * (1.0 - sinth) / 2.0 + U(0.0, rib_pitch)
    in_rib = (np.mod(rib_z, rib_pitch) < 9.0) & (sinth > -0.8) & (np.abs(x2) > 18.0)
    # band 0 < sd_cav < 9 mm outside the cavity wall
    ring = (_ramp(sd_cav - 9.0, h2) * (1.0 - _ramp(sd_cav, h2))) * in_rib
    _paint(hu, tissue, ring, 800.0, T["bone"])
    del ring, rib_z, in_rib, sd_cav

    # ------------------------------------------------------------------ finding
    info: Finding | None = None
    if finding:
        if finding_kind == "nodule":
            info = _add_nodule(
                rng, hu, tissue, spacing, origin_zyx, nodule_radius_mm, h3, nodule_hu
            )
        else:
            info = _add_embolus(rng, hu, tissue, spacing, origin_zyx, tubes, h3)

    # ------------------------------------------------------------------ noise, quantisation
    sigma = U(*noise_hu)
    w = rng.standard_normal(shape, dtype=np.float32)
    n = 0.5 * w
    n[:, :, 1:] += 0.25 * w[:, :, :-1]
    n[:, :, :-1] += 0.25 * w[:, :, 1:]
    w = 0.5 * n
    w[:, 1:, :] += 0.25 * n[:, :-1, :]
    w[:, :-1, :] += 0.25 * n[:, 1:, :]
    hu += w * np.float32(sigma / 0.375)
    np.rint(hu, out=hu)
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    return PhantomCase(
        hu=hu, spacing=spacing, label=int(info is not None), finding=info, seed=seed, tissue=tissue
    )


def _add_nodule(
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
        _paint(
            hu,
            tissue,
            _ramp((dist - rr).astype(np.float32), width),
            val + tex,
            TISSUE_LABELS["finding"],
            box,
        )
        return Finding("nodule", tuple(float(c) for c in c_idx), rr, val)  # type: ignore[arg-type]
    raise ValueError("could not place a nodule inside the lungs; use a larger field of view")


def _add_embolus(
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
        res = _capsule_sd_box(p0, p1, r0, r1, hu.shape, spacing, origin_zyx, 2 * width)
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
        f = _ramp((np.sqrt(d2) - re).astype(np.float32), width) * _ramp(sd_v + 0.5 * width, width)
        if (f > 0.5).sum() < 6:
            continue
        _paint(hu, tissue, f, val, TISSUE_LABELS["finding"], box)
        return Finding("embolus", tuple(float(v) for v in c_idx), re, val)  # type: ignore[arg-type]
    raise ValueError("could not place an embolus in this field of view")


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    """Deterministic DICOM UID (``2.25.<128-bit int>``) from ``parts``."""
    h = hashlib.sha256("/".join(str(p) for p in ("ct3dzoo-phantom", *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{module} is needed to write this format; install it with `pip install ct3dzoo[{extra}]`"
        ) from e


def write_dicom_series(
    case: PhantomCase,
    folder: str | os.PathLike[str],
    *,
    patient_id: str = "PHANTOM",
    uid_key: Any = None,
) -> Path:
    """Write ``case`` as a DICOM CT series (one file per slice) into ``folder``; returns it.

    CT Image Storage, Explicit VR Little Endian, 12-bit unsigned pixels with
    ``RescaleSlope = 1`` and ``RescaleIntercept = -1024`` (pixel + intercept = HU exactly).
    Slices are numbered head -> feet (``InstanceNumber`` 1 is the most superior slice, as a
    scanner numbers a craniocaudal acquisition); readers must sort by ``ImagePositionPatient``.
    UIDs are derived from ``uid_key`` (default: the case seed and ``patient_id``).
    """
    _require("pydicom", "dicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (case.seed, patient_id) if uid_key is None else uid_key
    D, H, W = case.shape
    sz, sy, sx = case.spacing
    ox, oy, oz = case.origin
    pixels = np.clip(np.rint(case.hu) + 1024.0, 0, 4095).astype("<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = _uid(key, "study")
    ds.SeriesInstanceUID = _uid(key, "series")
    ds.FrameOfReferenceUID = _uid(key, "frame")
    ds.Modality = "CT"
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.StudyDescription = "Synthetic CT pulmonary angiogram"
    ds.SeriesDescription = f"ct3dzoo chest phantom seed {case.seed}"
    ds.Manufacturer = "ct3dzoo"
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.ContrastBolusAgent = "synthetic iodine"
    ds.SliceThickness = f"{sz:.6g}"
    ds.SpacingBetweenSlices = f"{sz:.6g}"
    ds.PixelSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = 100, 700

    for k in range(D):
        inst = D - k  # head -> feet numbering
        sop = _uid(key, "sop", k)
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = inst
        z = oz + k * sz
        ds.ImagePositionPatient = [f"{ox:.6g}", f"{oy:.6g}", f"{z:.6g}"]
        ds.SliceLocation = f"{z:.6g}"
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(folder / f"IM{inst:04d}.dcm", enforce_file_format=True)
    return folder


def nifti_affine(case: PhantomCase) -> np.ndarray:
    """RAS+ affine (mm) of the NIfTI array ``hu.transpose(2, 1, 0)`` (axes x, y, z = W, H, D)."""
    sz, sy, sx = case.spacing
    ox, oy, oz = case.origin
    return np.array(
        [[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]], dtype=np.float64
    )


def write_nifti(case: PhantomCase, path: str | os.PathLike[str]) -> Path:
    """Write ``case`` as an int16 HU NIfTI-1 (``.nii`` or ``.nii.gz``) atomically; returns the path.

    The array is stored in the usual NIfTI axis order ``(x, y, z) = (W, H, D)`` with
    :func:`nifti_affine` as both sform and qform (code 1, scanner), units mm; the third
    axis runs inferior -> superior.
    """
    nib = _require("nibabel", "nifti")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(np.rint(case.hu).astype(np.int16).transpose(2, 1, 0))
    img = nib.Nifti1Image(data, nifti_affine(case))
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.int16)
    img.set_sform(nifti_affine(case), code=1)
    img.set_qform(nifti_affine(case), code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name[: -len(suffix)]}{suffix}")
    nib.save(img, tmp)
    os.replace(tmp, path)
    return path


def make_phantom_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] | None = None,
    formats: Sequence[str] = ("dicom", "nifti"),
    positive_fraction: float = 0.5,
    finding_kind: FindingKind = "nodule",
    **phantom_kwargs: Any,
) -> Path:
    """Write ``n`` phantom cases under ``out_dir``; returns the path of ``manifest.csv``.

    Layout::

        out_dir/dicom/case_0000/IM0001.dcm ...   (one DICOM series per case)
        out_dir/nifti/case_0000.nii.gz ...
        out_dir/manifest.csv                     (rows for the first format in ``formats``)
        out_dir/manifest_dicom.csv, manifest_nifti.csv   (one per format)
        out_dir/cases.json                       (seed, label and finding of each case)

    Manifests have the columns ``path,label,group``; ``path`` is relative to the manifest's
    folder (POSIX separators), ``group`` is the case's PatientID (one patient per case), for
    grouped splits. Exactly ``round(n * positive_fraction)`` cases are positive, in an order
    shuffled by ``seed``; each case's phantom seed is derived from ``seed`` and its index.
    Manifests and NIfTI files are written atomically (temporary file + rename).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    formats = tuple(formats)
    if not formats or any(f not in ("dicom", "nifti") for f in formats):
        raise ValueError(f"formats must be a non-empty subset of ('dicom', 'nifti'), got {formats}")
    if "dicom" in formats:
        _require("pydicom", "dicom")
    if "nifti" in formats:
        _require("nibabel", "nifti")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ss = np.random.SeedSequence([int(seed), 0xDA7A])
    n_pos = round(n * positive_fraction)
    labels = np.zeros(n, dtype=int)
    labels[:n_pos] = 1
    labels = np.random.default_rng(ss).permutation(labels)
    case_seeds = [int(c.generate_state(1, np.uint32)[0]) for c in ss.spawn(n)]

    rows: dict[str, list[tuple[str, int, str]]] = {f: [] for f in formats}
    cases = []
    for i in range(n):
        case = make_chest_phantom(
            shape=shape,
            spacing=spacing,
            seed=case_seeds[i],
            finding=bool(labels[i]),
            finding_kind=finding_kind,
            **phantom_kwargs,
        )
        name = f"case_{i:04d}"
        pid = f"ct3dzoo-phantom-{int(seed)}-{i:04d}"
        if "dicom" in formats:
            final = out / "dicom" / name
            tmp = out / "dicom" / f".tmp-{os.getpid()}-{name}"
            if tmp.exists():
                shutil.rmtree(tmp)
            write_dicom_series(case, tmp, patient_id=pid, uid_key=(int(seed), i, case.seed))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            rows["dicom"].append((f"dicom/{name}", case.label, pid))
        if "nifti" in formats:
            write_nifti(case, out / "nifti" / f"{name}.nii.gz")
            rows["nifti"].append((f"nifti/{name}.nii.gz", case.label, pid))
        f = case.finding
        cases.append(
            {
                "case": name,
                "group": pid,
                "seed": case.seed,
                "label": case.label,
                "shape": list(case.shape),
                "spacing": list(case.spacing),
                "finding": None
                if f is None
                else {
                    "kind": f.kind,
                    "centre": list(f.centre),
                    "radius_mm": f.radius_mm,
                    "hu": f.hu,
                },
            }
        )

    for fmt in formats:
        _write_csv_atomic(out / f"manifest_{fmt}.csv", rows[fmt])
    _write_csv_atomic(out / "manifest.csv", rows[formats[0]])
    tmp = out / f".tmp-{os.getpid()}-cases.json"
    tmp.write_text(json.dumps(cases, indent=1))
    os.replace(tmp, out / "cases.json")
    return out / "manifest.csv"


def _write_csv_atomic(path: Path, rows: list[tuple[str, int, str]]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group"])
        w.writerows(rows)
    os.replace(tmp, path)
