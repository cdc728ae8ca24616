"""Irregular slice gaps (missing slices, variable spacing) with and without gantry tilt,
judged by DICOM PS3.3 C.7.6.2.1.1: every output voxel is compared with the raw slices
interpolated at that voxel's world position, computed here from the headers alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from scipy.ndimage import map_coordinates  # noqa: E402
from test_data_dicom_geometry import ct_slice, tilted_geometry, write  # noqa: E402

from ct3dzoo.data import read_dicom_series, read_volume  # noqa: E402
from ct3dzoo.errors import (  # noqa: E402
    DicomSeriesError,
    GantryTiltWarning,
    NonUniformSpacingWarning,
)

ROWS, COLS, PS, GAP, TOL = 32, 32, (0.8, 0.7), 1.25, 0.05
DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"


def irregular_series(
    tmp_path: Path,
    tilt_deg: float,
    seed: int,
    *,
    feet_first: bool = False,
    raws: list[np.ndarray] | None = None,
    ps: tuple[float, float] = PS,
) -> tuple[Path, list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    """24 slices of 32 x 32 (or ``raws``): mostly ``GAP`` apart along the table, with
    missing slices (2, 3 gaps) and odd gaps (1.6, 2.5), +-0.1 % jitter; files shuffled.

    Returns ``(folder, raws, ipps, row, col, sop_uids)`` in acquisition order."""
    rng = np.random.default_rng(seed)
    n = 24 if raws is None else len(raws)
    mult = rng.choice([1.0] * 6 + [2.0, 3.0, 1.6, 2.5], size=n - 1)
    mult[:4] = 1.0  # a regular run to define the step
    jitter = 1 + rng.uniform(-1e-3, 1e-3, n - 1)
    table = np.concatenate([[0.0], np.cumsum(GAP * mult * jitter)])
    iop, row, col = tilted_geometry(tilt_deg)
    ipp0 = np.array([-12.0, 7.0, -40.0])
    if feet_first:  # normal along -z: slices ascend downwards
        iop, row = np.concatenate([-row, col]), -row
        table = -table
    ipps = [ipp0 + np.array([0.0, 0.0, t]) for t in table]
    if raws is None:
        raws = [rng.integers(-1000, 2000, (ROWS, COLS)).astype(np.int16) for _ in table]
    slices = [ct_slice(r, p, iop, ps, GantryDetectorTilt=tilt_deg) for r, p in zip(raws, ipps)]
    uids = [str(ds.SOPInstanceUID) for ds in slices]
    perm = rng.permutation(len(slices))
    folder = write(tmp_path / f"s{seed}", [slices[i] for i in perm])
    return folder, raws, ipps, row, col, uids


def expected_volume(
    vol,
    raws: list[np.ndarray],
    ipps: list[np.ndarray],
    row: np.ndarray,
    col: np.ndarray,
    *,
    ps: tuple[float, float] = PS,
    every: int = 1,
) -> tuple[np.ndarray, ...]:
    """HU at every output voxel's world position per the DICOM formula, linear along the
    normal between the two bracketing slices, bilinear in each slice; voxels outside an
    acquired slice (tilt); voxels farther than (1 + tol) * step / 2 from every acquired
    slice (the documented padding rule); the nearest acquired slice of each plane; the
    acquisition order along the normal. On ``vol.hu[:, ::every, ::every]``."""
    normal = np.cross(row, col)
    s_acq = np.array([normal @ p for p in ipps])
    order = np.argsort(s_acq)
    s_acq = s_acq[order]
    raws = [raws[i] for i in order]
    ipps = [ipps[i] for i in order]
    gaps = np.diff(s_acq)
    step = np.median(gaps[gaps <= gaps.min() * (1 + TOL)])
    rows, cols = raws[0].shape
    d, h, w = np.meshgrid(
        np.arange(vol.shape[0]), *(np.arange(0, n, every) for n in vol.shape[1:]), indexing="ij"
    )
    p = np.stack([d, h, w], -1) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    s = p @ normal
    k = np.clip(np.searchsorted(s_acq, s, side="right") - 1, 0, len(s_acq) - 2)
    wgt = np.clip((s - s_acq[k]) / (s_acq[k + 1] - s_acq[k]), 0, 1)
    out = np.zeros(d.shape)
    outside = np.zeros(d.shape, bool)
    for side, wk in ((0, 1 - wgt), (1, wgt)):
        for j in range(len(raws)):
            sel = (k + side == j) & (wk > 1e-6)
            rel = p[sel] - ipps[j]
            r, c = rel @ col / ps[0], rel @ row / ps[1]
            img = raws[j].astype(float)
            out[sel] += wk[sel] * map_coordinates(img, [r, c], order=1, mode="nearest")
            outside[sel] |= (
                (r < -1e-6) | (r > rows - 1 + 1e-6) | (c < -1e-6) | (c > cols - 1 + 1e-6)
            )
    far = np.minimum(s - s_acq[k], s_acq[k + 1] - s) > (1 + TOL) * step / 2
    nearest = np.where(np.abs(s - s_acq[k]) <= np.abs(s_acq[k + 1] - s), k, k + 1)
    return out - 1024.0, outside, far, nearest, order


@pytest.mark.parametrize("tilt_deg, seed", [(0.0, 1), (14.0, 2), (-9.5, 3)])
def test_random_gaps_missing_slices_and_tilt_match_the_dicom_formula(
    tmp_path: Path, tilt_deg: float, seed: int
) -> None:
    folder, raws, ipps, row, col, uids = irregular_series(tmp_path, tilt_deg, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_dicom_series(folder)
    kinds = [w.category for w in caught]
    assert kinds.count(NonUniformSpacingWarning) == 1
    assert (GantryTiltWarning in kinds) == (tilt_deg != 0)
    msg = str(next(w.message for w in caught if w.category is NonUniformSpacingWarning))
    cos = np.cos(np.radians(tilt_deg))
    assert "Resampled onto" in msg and f"[{GAP * cos:.2f}, " in msg  # names the gaps
    assert vol.spacing[0] == pytest.approx(GAP * cos, rel=2e-3)  # the smallest regular gap
    normal = np.cross(row, col)
    s_acq = np.sort([normal @ p for p in ipps])
    span = (vol.shape[0] - 1) * vol.spacing[0]
    assert abs(span - (s_acq[-1] - s_acq[0])) <= vol.spacing[0] / 2  # spans the slab

    hu, outside, far, nearest, order = expected_volume(vol, raws, ipps, row, col)
    # every voxel with measured data on both sides, far planes (interpolated) included
    assert np.max(np.abs(vol.hu[~outside] - hu[~outside])) < 0.02
    np.testing.assert_array_equal(vol.meta["padding_mask"], outside | far)
    assert far.any() and 0 < (outside | far).mean() < 0.6
    assert outside.any() == (tilt_deg != 0)

    # slice order: each output slice's nearest acquired SOP UID; acquired ones with positions
    ordered = [uids[i] for i in order]
    assert vol.meta["sop_uids"] == [ordered[i] for i in nearest[:, 0, 0]]
    assert vol.meta["acquired_sop_uids"] == ordered
    np.testing.assert_allclose(vol.meta["slice_positions"], s_acq - s_acq[0], atol=1e-6)
    # every acquired slice's array index from its position; here (0.1 % jitter) the plane
    # nearest to each acquired slice carries its UID
    idx = np.round(np.asarray(vol.meta["slice_positions"]) / vol.spacing[0]).astype(int)
    assert idx[0] == 0 and idx[-1] == vol.shape[0] - 1
    assert [vol.meta["sop_uids"][i] for i in idx] == ordered


def test_feet_first_lists_follow_the_array(tmp_path: Path) -> None:
    folder, raws, ipps, row, col, uids = irregular_series(tmp_path, 0.0, 4, feet_first=True)
    with pytest.warns(NonUniformSpacingWarning):
        vol = read_dicom_series(folder)
    hu, outside, far, nearest, order = expected_volume(vol, raws, ipps, row, col)
    assert np.max(np.abs(vol.hu - hu)) < 0.02
    np.testing.assert_array_equal(vol.meta["padding_mask"], outside | far)
    ordered = [uids[i] for i in order]  # ascending along the normal (-z)
    assert vol.meta["sop_uids"] == [ordered[i] for i in nearest[:, 0, 0]]
    assert vol.meta["slice_axis"] == 0 and vol.direction[2, 0] > 0.99  # array goes +z
    # acquired lists in array order: position / spacing is each slice's array index
    z = np.array([ipps[i][2] for i in range(len(ipps))])
    assert vol.meta["acquired_sop_uids"] == [uids[i] for i in np.argsort(z)]
    idx = np.asarray(vol.meta["slice_positions"]) / vol.spacing[0]
    planes = vol.origin[2] + idx * vol.spacing[0]
    np.testing.assert_allclose(planes, np.sort(z), atol=1e-6)


@pytest.mark.filterwarnings("ignore::ct3dzoo.errors.GantryTiltWarning")
def test_gap_policies_and_strict(tmp_path: Path) -> None:
    folder, raws, *_ = irregular_series(tmp_path, 10.0, 5)
    with pytest.raises(DicomSeriesError, match=r"strict=True"):
        read_dicom_series(folder, strict=True)
    with pytest.raises(DicomSeriesError, match=r"gaps='error'.*gaps='regularise'"):
        read_dicom_series(folder, gaps="error")
    with pytest.warns(NonUniformSpacingWarning, match=r"gaps='stack'"):
        stacked = read_dicom_series(folder, gaps="stack")
    assert stacked.shape[0] == len(raws)  # as found: one array slice per file
    assert stacked.meta["sop_uids"] == stacked.meta["acquired_sop_uids"]
    with pytest.raises(ValueError, match="gaps must be one of"):
        read_dicom_series(folder, gaps="interpolate")
    with pytest.warns(NonUniformSpacingWarning, match="Resampled"):
        assert read_volume(folder, gaps="regularise").shape[0] > len(raws)


def test_regular_series_is_not_resampled(tmp_path: Path) -> None:
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    raws = [np.full((4, 4), 1000 + k, np.int16) for k in range(6)]
    z = [0.0, 1.0, 2.0, 3.0, 4.02, 5.0]  # jitter inside spacing_tolerance
    slices = [ct_slice(a, np.array([0.0, 0.0, zk]), iop, (1.0, 1.0)) for a, zk in zip(raws, z)]
    folder = write(tmp_path / "r", slices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_dicom_series(folder)
    np.testing.assert_array_equal(vol.hu[:, 0, 0], np.arange(6) + 1000 - 1024.0)
    assert "padding_mask" not in vol.meta
    assert vol.meta["sop_uids"] == [str(s.SOPInstanceUID) for s in slices]
    np.testing.assert_allclose(vol.meta["slice_positions"], z, atol=1e-9)


@pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo absent")
def test_rsna_slices_with_gaps_and_tilt_match_the_dicom_formula(tmp_path: Path) -> None:
    """Real CT pixels (the 12 RSNA demo slices, 512 x 512) on irregular tilted positions."""
    src = [pydicom.dcmread(f) for f in sorted(DEMO.glob("*.dcm"))]
    src.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    raws = [d.pixel_array.astype(np.int16) for d in src]
    ps = tuple(float(v) for v in src[0].PixelSpacing)
    folder, raws, ipps, row, col, uids = irregular_series(tmp_path, 12.0, 7, raws=raws, ps=ps)
    with pytest.warns(NonUniformSpacingWarning), pytest.warns(GantryTiltWarning):
        vol = read_dicom_series(folder)
    hu, outside, far, nearest, order = expected_volume(vol, raws, ipps, row, col, ps=ps, every=5)
    got = vol.hu[:, ::5, ::5]
    assert np.max(np.abs(got[~outside] - hu[~outside])) < 0.05
    np.testing.assert_array_equal(vol.meta["padding_mask"][:, ::5, ::5], outside | far)
    assert far.any() and outside.any()
    assert vol.meta["sop_uids"] == [[uids[i] for i in order][j] for j in nearest[:, 0, 0]]


def test_one_odd_close_pair_does_not_set_the_step(tmp_path: Path) -> None:
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    z = [0.0, 1.0, 2.0, 3.0, 3.3, 4.3, 5.3, 7.3]  # gaps 1 x5, one 0.3, one 2 (missing)
    slices = [
        ct_slice(np.full((4, 4), 100 * k, np.int16), np.array([0.0, 0.0, zk]), iop, (1.0, 1.0))
        for k, zk in enumerate(z)
    ]
    with pytest.warns(NonUniformSpacingWarning, match=r"every 1 mm"):
        vol = read_dicom_series(write(tmp_path / "o", slices))
    assert vol.spacing[0] == pytest.approx(1.0) and vol.shape[0] == 8  # planes 0..7 mm
    # plane 4 mm lies between 3.3 (k=4) and 4.3 (k=5): 0.3 * 400 + 0.7 * 500; plane 6 mm
    # between 5.3 (k=6) and 7.3 (k=7): 0.65 * 600 + 0.35 * 700; plane 7 mm: 0.15/0.85
    expected = [0, 100, 200, 300, 470, 570, 635, 685]
    np.testing.assert_allclose(vol.hu[:, 0, 0], np.array(expected) - 1024.0, atol=1e-3)
    # only plane 6 mm (0.7 mm from 5.3, 1.3 from 7.3) is farther than 1.05 / 2 mm
    assert vol.meta["padding_mask"][:, 0, 0].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]


def test_sagittal_series_lists_along_its_slice_axis(tmp_path: Path) -> None:
    iop = np.array([0.0, 1, 0, 0, 0, -1])  # normal -x: slices stack along W after reorient
    x = [3.0, 0.0, 5.0, 1.0, 2.0, 4.0]
    slices = [
        ct_slice(np.full((4, 5), 10 * xk, np.int16), np.array([xk, 0.0, 0.0]), iop, (1.0, 1.0))
        for xk in x
    ]
    vol = read_dicom_series(write(tmp_path / "sag", slices))
    assert vol.meta["slice_axis"] == 2 and vol.shape == (4, 5, 6)
    by_x = [str(slices[i].SOPInstanceUID) for i in np.argsort(x)]  # array W runs +x (L)
    assert vol.meta["sop_uids"] == by_x == vol.meta["acquired_sop_uids"]
    np.testing.assert_array_equal(vol.hu[0, 0, :], np.sort(x) * 10 - 1024.0)
    np.testing.assert_allclose(vol.meta["slice_positions"], np.arange(6.0))
