"""The chest phantom's body: :func:`make_chest_phantom` draws one CT pulmonary angiogram in HU.

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

from collections.abc import Sequence

import numpy as np

from ._draw import capsule_sd_box, ellipse_sd, paint, ramp, value_noise
from .case import (
    CHEST_HALF_Z,
    HU_MAX,
    HU_MIN,
    TISSUE_LABELS,
    Finding,
    FindingKind,
    PhantomCase,
    default_spacing,
    origin_lps,
)
from .findings import add_embolus, add_nodule

__all__ = ["make_chest_phantom"]


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
    ox, oy, oz = origin_lps(shape, spacing)
    origin_zyx = np.array([oz, oy, ox], dtype=np.float64)
    z1 = (oz + sz * np.arange(D, dtype=np.float32)).astype(np.float32)
    y1 = (oy + sy * np.arange(H, dtype=np.float32)).astype(np.float32)
    x1 = (ox + sx * np.arange(W, dtype=np.float32)).astype(np.float32)
    u = ((z1 + CHEST_HALF_Z) / (2 * CHEST_HALF_Z))[:, None, None]  # 0 = bases, 1 = apices
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
        f = np.broadcast_to(ramp(sd_t, h2), shape)
        paint(hu, tissue, f, -150.0, T["table"])

    # body taper towards the thoracic inlet
    taper = 1.0 - 0.10 * np.clip(u, 0, 1) ** 2
    a_u, b_u = a_body * taper, b_body * (1.0 - 0.05 * np.clip(u, 0, 1) ** 2)
    tex = value_noise(rng, shape, (10.0 / sz, 6.0 / sy, 6.0 / sx))
    paint(hu, tissue, ramp(ellipse_sd(x2, y2, 0.0, yc, a_u, b_u), h2), -100.0 + 8.0 * tex, T["fat"])
    paint(
        hu,
        tissue,
        ramp(ellipse_sd(x2, y2, 0.0, yc, a_u - fat, b_u - fat), h2),
        50.0 + 5.0 * tex,
        T["soft"],
    )

    # thoracic cavity (inside ribs); posterior wall is thicker (paraspinal muscles)
    ac = a_u - fat - 22.0
    bc = b_u - fat - 30.0
    ycc = yc - 8.0
    sd_cav = ellipse_sd(x2, y2, 0.0, ycc, ac, bc)
    paint(hu, tissue, ramp(sd_cav, h2), 40.0 + 4.0 * tex, T["soft"])

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
        sd = ellipse_sd(
            x2, y2, cxl, ycc + 0.05 * bc, 0.52 * ac * apex + 1e-3, 0.92 * bc * apex + 1e-3
        )
        lung_sd = sd if lung_sd is None else np.minimum(lung_sd, sd)
    lung_sd = np.maximum(lung_sd, sd_cav + 3.0)  # pleura
    lung_sd = np.maximum(lung_sd, (dome - u) * (2 * CHEST_HALF_Z))  # diaphragm
    f_lung = ramp(lung_sd, h2)
    n1 = value_noise(rng, shape, (24.0 / sz, 9.0 / sy, 9.0 / sx))
    n2 = value_noise(rng, shape, (24.0 / sz, 9.0 / sy, 9.0 / sx))
    vessels = np.exp(-(n1 * n1 + n2 * n2) * np.float32(1.0 / (2 * 0.2**2)))
    fine = value_noise(rng, shape, (6.0 / sz, 4.0 / sy, 4.0 / sx))
    lung_hu = -865.0 + 20.0 * fine + 50.0 * ((y2 - ycc) / bc) + float(lung_vessel_hu) * vessels
    paint(hu, tissue, f_lung, lung_hu, T["lung"])
    del n1, n2, vessels, fine, lung_hu

    # mediastinum: a tall band between sternum and spine
    wm = 22.0 * s + 10.0 * np.clip(0.7 - u, 0, 1)
    f_med = ramp(np.maximum(ellipse_sd(x2, y2, 4.0, ycc, wm, bc), sd_cav), h2)
    paint(hu, tissue, f_med, 35.0 + 6.0 * tex, T["soft"])

    # heart with pericardial fat, lower half, anterior-left
    zc_h = (0.28 + U(-0.03, 0.03)) * 2 * CHEST_HALF_Z - CHEST_HALF_Z
    hx, hy, hz = 20.0 * s + U(-5, 5), ycc - 0.2 * bc.max(), zc_h
    ha, hb, hc = 62.0 * s, 50.0 * s, 52.0
    z3 = z1[:, None, None]

    def _ellipsoid_sd(a: float, b: float, c: float) -> np.ndarray:
        q = ((x2 - hx) / a) ** 2 + ((y2 - hy) / b) ** 2 + ((z3 - hz) / c) ** 2
        return (np.sqrt(q) - 1.0) * min(a, b, c)

    paint(hu, tissue, ramp(_ellipsoid_sd(ha + 5, hb + 5, hc + 5), h3), -90.0, T["fat"])
    paint(hu, tissue, ramp(_ellipsoid_sd(ha, hb, hc), h3), 40.0 + 5.0 * tex, T["soft"])
    del tex

    # below the diaphragm: liver / upper abdomen
    f_abd = np.minimum(ramp(sd_cav + 1.0, h2), (u < dome - 0.01).astype(np.float32))
    f_abd = np.minimum(f_abd, 1.0 - ramp(_ellipsoid_sd(ha, hb, hc), h3))
    paint(hu, tissue, f_abd, 58.0, T["soft"])
    del f_abd, f_med, f_lung, lung_sd

    # ------------------------------------------------------------------ vessels and airways
    def zmm(uu: float) -> float:
        return uu * 2 * CHEST_HALF_Z - CHEST_HALF_Z

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
                    du * 2 * CHEST_HALF_Z + U(-10, 10),
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
        res = capsule_sd_box(p0, p1, r0, r1, shape, spacing, origin_zyx, 2 * h3)
        if res is None:
            continue
        box, sd = res
        paint(hu, tissue, ramp(sd, h3), val, code, box)

    # ------------------------------------------------------------------ bones
    # vertebral bodies: cortical shell ~950 HU, cancellous ~450 HU; discs every ~28 mm
    r_vb = 16.0 * s
    pitch = 28.0 * U(0.95, 1.05)
    phase = U(0.0, pitch)
    disc = (np.mod(z1 + phase, pitch) < 5.0)[:, None, None].astype(np.float32)
    rr = np.sqrt(x2 * x2 + (y2 - y_spine) ** 2)
    f_vb = ramp(rr - r_vb, h2)
    paint(hu, tissue, np.broadcast_to(f_vb * disc, shape), 80.0, T["soft"])
    bone_nd = 1.0 - disc
    paint(hu, tissue, np.broadcast_to(f_vb * bone_nd, shape), 950.0, T["bone"])
    paint(
        hu, tissue, np.broadcast_to(ramp(rr - (r_vb - 2.5), h2) * bone_nd, shape), 450.0, T["bone"]
    )
    # posterior arch around the spinal canal, spinous process
    y_can = y_spine + r_vb + 9.0
    rc = np.sqrt(x2 * x2 + (y2 - y_can) ** 2)
    f_arch = np.maximum(
        ramp(rc - 13.0, h2), ramp(ellipse_sd(x2, y2, 0.0, y_can + 20.0, 4.0, 14.0), h2)
    )
    paint(hu, tissue, np.broadcast_to(f_arch * bone_nd, shape), 700.0, T["bone"])
    paint(hu, tissue, np.broadcast_to(ramp(rc - 8.0, h2), shape), 15.0, T["soft"])
    # sternum (anterior midline, above the xiphoid)
    f_st = ramp(ellipse_sd(x2, y2, 0.0, ycc - bcm - 6.0, 14.0, 5.0), h2) * (u > 0.15)
    paint(hu, tissue, np.broadcast_to(f_st, shape), 600.0, T["bone"])
    # ribs: bone arcs just outside the cavity, sloping down anteriorly, 12 over the chest
    theta = np.arctan2(y2 - ycc, x2)  # +pi/2 posterior
    sinth = np.sin(theta)
    rib_pitch = 24.0 * U(0.95, 1.05)
    rib_z = z1[:, None, None] + 45.0 * (1.0 - sinth) / 2.0 + U(0.0, rib_pitch)
    in_rib = (np.mod(rib_z, rib_pitch) < 9.0) & (sinth > -0.8) & (np.abs(x2) > 18.0)
    # band 0 < sd_cav < 9 mm outside the cavity wall
    ring = (ramp(sd_cav - 9.0, h2) * (1.0 - ramp(sd_cav, h2))) * in_rib
    paint(hu, tissue, ring, 800.0, T["bone"])
    del ring, rib_z, in_rib, sd_cav

    # ------------------------------------------------------------------ finding
    info: Finding | None = None
    if finding:
        if finding_kind == "nodule":
            info = add_nodule(rng, hu, tissue, spacing, origin_zyx, nodule_radius_mm, h3, nodule_hu)
        else:
            info = add_embolus(rng, hu, tissue, spacing, origin_zyx, tubes, h3)

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
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    return PhantomCase(
        hu=hu, spacing=spacing, label=int(info is not None), finding=info, seed=seed, tissue=tissue
    )
