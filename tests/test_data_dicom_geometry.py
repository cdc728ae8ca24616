"""DICOM geometry on awkward series, judged by DICOM PS3.3 C.7.6.2.1.1 and C.7.5.1.1.2.

Gantry-tilted and padded series are built with pydicom from the RSNA demo slices (skipped
when ../shared/data is absent) and from synthetic ramps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from ct3dzoo.data import read_dicom_series  # noqa: E402
from ct3dzoo.errors import DicomSeriesError, GantryTiltWarning  # noqa: E402

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"
needs_demo = pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo absent")


def ct_slice(
    raw: np.ndarray,
    ipp: np.ndarray,
    iop: np.ndarray,
    ps: tuple[float, float],
    *,
    intercept: float = -1024.0,
    **extra: object,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [float(ps[0]), float(ps[1])]
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
    ds.set_pixel_data(raw, "MONOCHROME2", raw.dtype.itemsize * 8)
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def tilted_geometry(tilt_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image plane rotated about x by the tilt; the table (slice origins) moves along +z."""
    t = np.radians(tilt_deg)
    row, col = np.array([1.0, 0, 0]), np.array([0.0, np.cos(t), -np.sin(t)])
    return np.concatenate([row, col]), row, col


def write(folder: Path, slices: list[Dataset]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(slices):
        ds.save_as(folder / f"{(k * 7919) % 1000:04d}.dcm", enforce_file_format=True)
    return folder


def standard_position(ipp: np.ndarray, row: np.ndarray, col: np.ndarray, ps, r, c) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1: P = S + X * di * i + Y * dj * j (i = column index, j = row index)."""
    return ipp + np.multiply.outer(c * ps[1], row) + np.multiply.outer(r * ps[0], col)


def to_index(vol, p: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(vol.affine)
    return p @ inv[:3, :3].T + inv[:3, 3]


@needs_demo
def test_tilted_rsna_series_puts_every_pixel_where_the_standard_does(tmp_path: Path) -> None:
    files = sorted(DEMO.glob("*.dcm"))
    src = sorted(
        (pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2])
    )
    ps = tuple(float(v) for v in src[0].PixelSpacing)
    dz = 2.0
    tilt = float(np.degrees(np.arcsin(ps[0] / dz)))  # origins drift exactly 1 row per slice
    iop, row, col = tilted_geometry(tilt)
    ipp0 = np.array([float(v) for v in src[0].ImagePositionPatient])
    raws = [d.pixel_array.astype(np.int16) for d in src]
    ipps = [ipp0 + np.array([0.0, 0.0, dz * k]) for k in range(len(src))]
    slices = [ct_slice(r, p, iop, ps, GantryDetectorTilt=tilt) for r, p in zip(raws, ipps)]
    folder = write(tmp_path / "tilted", slices)

    with pytest.warns(GantryTiltWarning, match=r"gantry-tilted.*15\.\d\d deg"):
        vol = read_dicom_series(folder)
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(tilt, abs=1e-3)
    # spacing along the normal is dz * cos(tilt), not dz
    assert vol.spacing[0] == pytest.approx(dz * np.cos(np.radians(tilt)), rel=1e-6)
    rr, cc = np.meshgrid(np.arange(0, 512, 7), np.arange(0, 512, 5), indexing="ij")
    hits = 0
    for k in range(len(src)):
        idx = to_index(vol, standard_position(ipps[k], row, col, ps, rr, cc))
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-4)  # lands on a voxel centre
        idx = np.round(idx).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(vol.shape)), axis=-1)
        d, h, w = idx[inside].T
        np.testing.assert_array_equal(vol.hu[d, h, w], raws[k][rr, cc][inside] - 1024.0)
        hits += int(inside.sum())
    assert hits > 0.9 * rr.size * len(src)

    with pytest.raises(DicomSeriesError, match=r"gantry-tilted.*GantryDetectorTilt 15\.\d+"):
        read_dicom_series(folder, tilt="error")


@pytest.mark.parametrize("tilt_deg", [7.0, -12.5])
def test_tilted_ramp_is_resampled_exactly_and_masked(tmp_path: Path, tilt_deg: float) -> None:
    # a linear ramp: bilinear interpolation of it is exact anywhere inside the slice
    rows, cols, n, ps, dz = 20, 12, 6, (0.7, 0.6), 1.25
    r, c = np.mgrid[:rows, :cols]
    iop, row, col = tilted_geometry(tilt_deg)
    ipp0 = np.array([-3.0, 4.0, 10.0])
    ipps = [ipp0 + np.array([0.0, 0.0, dz * k]) for k in range(n)]
    raws = [(30 * r + 2 * c + 5 * k + 100).astype(np.int16) for k in range(n)]
    folder = write(tmp_path / "t", [ct_slice(a, p, iop, ps) for a, p in zip(raws, ipps)])
    with pytest.warns(GantryTiltWarning):
        vol = read_dicom_series(folder)
    normal = np.cross(row, col)
    d, h, w = np.meshgrid(*(np.arange(s) for s in vol.shape), indexing="ij")
    p = np.stack([d, h, w], -1) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    k = (p - ipp0) @ normal / (dz * (normal @ [0, 0, 1]))
    np.testing.assert_allclose(k, np.round(k), atol=1e-6)  # each output slice is a source plane
    k = np.round(k).astype(int)
    rel = p - np.asarray(ipps)[k]
    src_r, src_c = rel @ col / ps[0], rel @ row / ps[1]
    outside = (src_r < -1e-6) | (src_r > rows - 1 + 1e-6) | (src_c < -1e-6) | (src_c > cols - 1)
    expected = 30 * src_r + 2 * src_c + 5 * k + 100 - 1024.0
    np.testing.assert_allclose(vol.hu[~outside], expected[~outside], atol=1e-3)
    np.testing.assert_array_equal(vol.meta["padding_mask"], outside)
    assert np.all(vol.hu[outside] == -1024.0)
    assert outside.any() and not outside.all()


@pytest.mark.parametrize("decimals", [None, 1])
def test_oblique_series_stepping_along_its_normal_is_not_tilted(
    tmp_path: Path, decimals: int | None
) -> None:
    iop, row, col = tilted_geometry(20.0)
    normal = np.cross(row, col)
    raws = [np.full((8, 8), 1000 + k, np.int16) for k in range(6)]
    ipps = [np.array([1.0, 2.0, 3.0]) + 3.0 * k * normal for k in range(6)]
    if decimals is not None:  # headers that round positions to 0.1 mm are not "tilted"
        ipps = [np.round(p, decimals) for p in ipps]
    slices = [ct_slice(a, p, iop, (0.3, 0.3)) for a, p in zip(raws, ipps)]
    folder = write(tmp_path / "o", slices)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_dicom_series(folder, tilt="error")
    assert vol.spacing[0] == pytest.approx(3.0, abs=0.05)
    np.testing.assert_array_equal(vol.hu[:, 0, 0], np.arange(6) + 1000 - 1024.0)
    assert "gantry_tilt_deg" not in vol.meta and "padding_mask" not in vol.meta


@needs_demo
def test_pixel_padding_becomes_air_with_a_mask(tmp_path: Path) -> None:
    by_z = sorted(
        DEMO.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2])
    )
    files = by_z[:3]  # three consecutive slices
    yy, xx = np.mgrid[:512, :512]
    outside = (yy - 256) ** 2 + (xx - 256) ** 2 > 250**2
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        raw = ds.pixel_array.astype(np.int16)
        raw[outside] = -2000  # the scanner's padding: -3024 HU after rescale
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        slices.append(
            ct_slice(raw, ipp, np.array([1.0, 0, 0, 0, 1, 0]), ds.PixelSpacing,
                     PixelPaddingValue=-2000)
        )  # fmt: skip
    vol = read_dicom_series(write(tmp_path / "pad", slices))
    mask = vol.meta["padding_mask"]
    assert mask.shape == vol.shape and mask.dtype == bool
    np.testing.assert_array_equal(mask, np.broadcast_to(outside, vol.shape))
    assert vol.hu.min() == -1024.0  # no -3024 left
    assert np.all(vol.hu[mask] == -1024.0)
    assert vol.meta["padding_fill_hu"] == -1024.0
    ref = read_dicom_series(files)  # the same slices without padding
    np.testing.assert_array_equal(vol.hu[~mask], ref.hu[~mask])


def test_padding_range_and_fill_above_air(tmp_path: Path) -> None:
    raw = np.full((3, 6, 6), 200, np.int16)  # -824 HU: the lowest real value
    raw[:, 0, :] = -2000
    raw[:, :, 0] = -1500  # inside PixelPaddingRangeLimit
    raw[1, 3, 3] = 500
    ipps = [np.array([0.0, 0.0, float(k)]) for k in range(3)]
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    slices = [
        ct_slice(a, p, iop, (1.0, 1.0), PixelPaddingValue=-2000, PixelPaddingRangeLimit=-1400)
        for a, p in zip(raw, ipps)
    ]
    vol = read_dicom_series(write(tmp_path / "r", slices))
    pad = (raw == -2000) | (raw == -1500)
    np.testing.assert_array_equal(vol.meta["padding_mask"], pad)
    assert np.all(vol.hu[pad] == -824.0) and vol.meta["padding_fill_hu"] == -824.0
    assert vol.hu[1, 3, 3] == 500 - 1024.0


def test_single_slice_uses_spacing_between_slices(tmp_path: Path) -> None:
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    one = ct_slice(np.zeros((4, 4), np.int16), np.zeros(3), iop, (1.0, 1.0),
                   SliceThickness=9.0, SpacingBetweenSlices=3.0)  # fmt: skip
    write(tmp_path / "a", [one])
    assert read_dicom_series(tmp_path / "a").spacing[0] == pytest.approx(3.0)
    only_thk = ct_slice(np.zeros((4, 4), np.int16), np.zeros(3), iop, (1.0, 1.0),
                        SliceThickness=9.0)  # fmt: skip
    write(tmp_path / "b", [only_thk])
    assert read_dicom_series(tmp_path / "b").spacing[0] == pytest.approx(9.0)


def test_serial_and_threaded_decoding_agree(tmp_path: Path) -> None:
    raws = [np.arange(64, dtype=np.int16).reshape(8, 8) * (k + 1) for k in range(9)]
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    slices = [
        ct_slice(a, np.array([0.0, 0.0, 2.0 * k]), iop, (1.0, 1.0), intercept=-k)
        for k, a in enumerate(raws)
    ]
    folder = write(tmp_path / "s", slices)
    one = read_dicom_series(folder, workers=1, reorient=False)
    many = read_dicom_series(folder, workers=4, reorient=False)
    np.testing.assert_array_equal(one.hu, many.hu)
    np.testing.assert_array_equal(one.hu, np.stack(raws).astype(np.float32)
                                  - np.arange(9, dtype=np.float32)[:, None, None])  # fmt: skip
    with pytest.raises(ValueError, match="workers must be >= 1"):
        read_dicom_series(folder, workers=0)


@pytest.mark.parametrize(
    "dtype, bits_stored, implicit",
    [(np.uint16, 12, False), (np.int16, 16, False), (np.uint8, 8, True), (np.int16, 12, False),
     (np.uint16, 16, True)],
)  # fmt: skip
def test_fast_pixel_read_equals_pydicom(
    tmp_path: Path, dtype: type, bits_stored: int, implicit: bool
) -> None:
    from pydicom.uid import ImplicitVRLittleEndian

    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    lo = max(info.min, -(2 ** (bits_stored - 1))) if info.min < 0 else 0
    hi = min(info.max, 2**bits_stored - 1 if info.min == 0 else 2 ** (bits_stored - 1) - 1)
    iop = np.array([1.0, 0, 0, 0, 1, 0])
    slices = []
    for k in range(3):
        raw = rng.integers(lo, hi, (40, 48), endpoint=True).astype(dtype)  # > defer size
        ds = ct_slice(raw, np.array([0.0, 0.0, k]), iop, (1.0, 1.0), intercept=0.0)
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        slices.append(ds)
    folder = write(tmp_path / "n", slices)
    vol = read_dicom_series(folder, reorient=False)
    ref = sorted((pydicom.dcmread(f) for f in folder.iterdir()),
                 key=lambda d: float(d.ImagePositionPatient[2]))  # fmt: skip
    np.testing.assert_array_equal(vol.hu, np.stack([d.pixel_array for d in ref]).astype(np.float32))
