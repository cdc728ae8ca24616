"""Readers: DICOM (real and synthetic, every error path), NIfTI, npy/npz."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from ct3dzoo.data import (  # noqa: E402
    CTVolume,
    DicomSeriesError,
    NonUniformSpacingWarning,
    read_dicom_series,
    read_volume,
)

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"
STD_DIR = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


# ---------------------------------------------------------------- synthetic DICOM writer
def raw_volume(n: int = 5, rows: int = 6, cols: int = 8) -> np.ndarray:
    """int16 raw values that encode (slice, row, col): 100*d + 10*h + w."""
    d, h, w = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    return (100 * d + 10 * h + w).astype(np.int16)


def make_slice(
    pixels: np.ndarray,
    *,
    ipp: tuple[float, float, float],
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance: int = 1,
    spacing: tuple[float, float] = (0.5, 0.75),
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 9.0  # deliberately wrong: spacing must come from positions
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        ds.set_pixel_data(pixels.astype(np.uint8), "RGB", 8)
    else:
        ds.set_pixel_data(pixels, "MONOCHROME2", 16)
    return ds


def write_series(
    folder: Path,
    raw: np.ndarray,
    z: list[float] | None = None,
    name: str = "s",
    **kw,
) -> list[Path]:
    """Write ``raw`` (D, H, W) as one file per slice at z positions; instance numbers reversed."""
    folder.mkdir(parents=True, exist_ok=True)
    z = list(range(len(raw))) if z is None else z
    paths = []
    for k, (sl, zk) in enumerate(zip(raw, z)):
        ds = make_slice(sl, ipp=(-10.0, -20.0, float(zk)), instance=len(raw) - k, **kw)
        p = folder / f"{name}{(k * 7919) % 1000:04d}.dcm"  # names not in z order
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


# ---------------------------------------------------------------- real data
def test_pydicom_example_ct() -> None:
    from pydicom import examples

    path = examples.get_path("ct")
    ds = pydicom.dcmread(path)
    vol = read_volume(path)
    assert vol.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.hu[0], ds.pixel_array.astype(np.float32) - 1024.0)
    assert vol.hu.dtype == np.float32
    assert vol.spacing == pytest.approx((5.0, 0.661468, 0.661468))  # z: SliceThickness (1 slice)
    assert vol.origin == pytest.approx((-158.135803, -179.035797, -75.699997))
    np.testing.assert_allclose(vol.direction, STD_DIR)
    assert vol.meta["modality"] == "CT" and vol.meta["kernel"] == "STANDARD"


@pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo not present")
def test_rsna_demo_series_order_range_spacing() -> None:
    vol = read_volume(DEMO)
    assert vol.shape == (12, 512, 512)
    assert vol.spacing == pytest.approx((2.0, 0.5234375, 0.5234375))
    assert vol.origin[2] == pytest.approx(-480.5)  # D runs inferior -> superior
    assert vol.hu.min() == -1024.0 and vol.hu.max() == 1501.0
    # each slice k is the file at z = -480.5 + 2k (instance numbers run the other way)
    files = sorted(DEMO.glob("*.dcm"))
    by_z = {float(pydicom.dcmread(f).ImagePositionPatient[2]): f for f in files}
    for k in (0, 5, 11):
        ds = pydicom.dcmread(by_z[-480.5 + 2 * k])
        np.testing.assert_array_equal(vol.hu[k], ds.pixel_array.astype(np.float32) - 1024)
    shuffled = files[:]
    random.Random(0).shuffle(shuffled)
    vol2 = read_dicom_series(shuffled)
    np.testing.assert_array_equal(vol2.hu, vol.hu)
    assert vol2.spacing == vol.spacing


# ---------------------------------------------------------------- synthetic DICOM
def test_synthetic_order_rescale_spacing_and_shuffle(tmp_path: Path) -> None:
    raw = raw_volume()
    z = [30.0, 32.5, 35.0, 37.5, 40.0]
    files = write_series(tmp_path, raw, z, slope=2.0, intercept=-1000.0)
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.hu, raw * 2.0 - 1000.0)
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.75))  # not SliceThickness=9
    assert vol.origin == pytest.approx((-10.0, -20.0, 30.0))
    np.testing.assert_allclose(vol.direction, STD_DIR)
    rev = read_dicom_series(list(reversed(files)))
    np.testing.assert_array_equal(rev.hu, vol.hu)
    assert vol.affine @ np.array([4, 5, 7, 1.0]) == pytest.approx(
        [-10 + 7 * 0.75, -20 + 5 * 0.5, 40, 1]
    )


def test_per_slice_rescale(tmp_path: Path) -> None:
    raw = raw_volume(3)
    for k in range(3):
        make_slice(raw[k], ipp=(0, 0, k), slope=1.0 + k, intercept=-10.0 * k).save_as(
            tmp_path / f"{k}.dcm", enforce_file_format=True
        )
    vol = read_volume(tmp_path)
    for k in range(3):
        np.testing.assert_array_equal(vol.hu[k], raw[k] * (1.0 + k) - 10.0 * k)


def test_flipped_acquisition_gives_same_volume(tmp_path: Path) -> None:
    """Feet-first-like geometry (row direction -x, normal -z) reorients to the same array."""
    raw = raw_volume()
    write_series(tmp_path / "std", raw, z=[0, 1, 2, 3, 4])
    std = read_volume(tmp_path / "std")
    # same physical voxels, stored with columns reversed and slices going down
    flipped = raw[::-1, :, ::-1]
    x0 = -10.0 + 7 * 0.75  # first stored column is the old last one
    out = tmp_path / "flip"
    out.mkdir()
    for k, sl in enumerate(flipped):
        make_slice(
            np.ascontiguousarray(sl), ipp=(x0, -20.0, 4.0 - k), iop=(-1, 0, 0, 0, 1, 0)
        ).save_as(out / f"{k}.dcm", enforce_file_format=True)
    vol = read_volume(out)
    np.testing.assert_array_equal(vol.hu, std.hu)
    assert vol.origin == pytest.approx(std.origin)
    np.testing.assert_allclose(vol.direction, STD_DIR, atol=1e-12)
    keep = read_dicom_series(out, reorient=False)  # slice-normal order, in-plane as stored
    np.testing.assert_array_equal(keep.hu, flipped - 1024.0)  # ascending along -z


def test_non_dicom_files_are_skipped(tmp_path: Path) -> None:
    write_series(tmp_path, raw_volume(3))
    (tmp_path / "README.txt").write_text("not dicom")
    vol = read_volume(tmp_path)
    assert vol.shape == (3, 6, 8) and vol.meta["skipped_files"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(DicomSeriesError, match="No DICOM images"):
        read_volume(empty)


def test_multiple_series_needs_series_uid(tmp_path: Path) -> None:
    raw = raw_volume(3)
    write_series(tmp_path, raw, series_uid="1.2.3.100", name="a")
    write_series(tmp_path, raw + 1, series_uid="1.2.3.200", name="b")
    with pytest.raises(DicomSeriesError, match="2 series found") as e:
        read_volume(tmp_path)
    assert "1.2.3.100" in str(e.value) and "1.2.3.200" in str(e.value)
    vol = read_volume(tmp_path, series_uid="1.2.3.200")
    np.testing.assert_array_equal(vol.hu, raw + 1 - 1024.0)
    with pytest.raises(DicomSeriesError, match="not found"):
        read_dicom_series(tmp_path, series_uid="9.9")


def test_missing_slice_warns_then_strict_raises(tmp_path: Path) -> None:
    write_series(tmp_path, raw_volume(4), z=[0.0, 2.0, 6.0, 8.0])  # slice at z=4 missing
    with pytest.warns(NonUniformSpacingWarning, match=r"1 missing slice") as rec:
        vol = read_volume(tmp_path)
    assert "[2.0, 4.0]" in str(rec[0].message)
    # regularised: the missing plane is interpolated (raw slices 1 and 2) and masked
    raw = raw_volume(4)
    assert vol.shape[0] == 5 and vol.spacing[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(vol.hu[2], (raw[1] + raw[2]) / 2 - 1024.0)
    np.testing.assert_array_equal(vol.meta["padding_mask"].any(axis=(1, 2)), [0, 0, 1, 0, 0])
    with pytest.warns(NonUniformSpacingWarning, match="gaps='stack'"):
        assert read_volume(tmp_path, gaps="stack").shape[0] == 4
    with pytest.raises(DicomSeriesError, match="strict=True"):
        read_volume(tmp_path, strict=True)


def test_non_uniform_spacing_strict(tmp_path: Path) -> None:
    write_series(tmp_path, raw_volume(4), z=[0.0, 1.0, 2.0, 3.5])
    with pytest.raises(DicomSeriesError, match=r"\[1\.0, 1\.5\]"):
        read_dicom_series(tmp_path, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_series(tmp_path / "ok", raw_volume(4), z=[0.0, 1.0, 2.0, 3.0001])
        read_dicom_series(tmp_path / "ok", strict=True)  # tiny jitter is fine


def test_duplicate_positions_and_mixed_orientation(tmp_path: Path) -> None:
    write_series(tmp_path / "dup", raw_volume(3), z=[0.0, 1.0, 1.0])
    with pytest.raises(DicomSeriesError, match="share a position"):
        read_volume(tmp_path / "dup")
    d = tmp_path / "mixed"
    write_series(d, raw_volume(2), z=[0.0, 1.0])
    make_slice(raw_volume(1)[0], ipp=(0, 0, 5), iop=(0, 1, 0, 0, 0, -1)).save_as(
        d / "loc.dcm", enforce_file_format=True
    )
    with pytest.raises(DicomSeriesError, match="ImageOrientationPatient"):
        read_volume(d)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"modality": "MR", "sop_class": MRImageStorage}, "Modality 'MR'"),
        ({"sop_class": SecondaryCaptureImageStorage}, "Secondary Capture"),
    ],
)
def test_rejects_non_ct(tmp_path: Path, kw: dict, match: str) -> None:
    write_series(tmp_path, raw_volume(2), **kw)
    with pytest.raises(DicomSeriesError, match=match):
        read_volume(tmp_path)


def test_rejects_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((6, 8, 3), dtype=np.uint8)
    make_slice(rgb, ipp=(0, 0, 0)).save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    with pytest.raises(DicomSeriesError, match="colour image"):
        read_volume(tmp_path)


def test_compressed_decodes_with_decoder(tmp_path: Path) -> None:
    pytest.importorskip("openjpeg")
    raw = raw_volume(3, 64, 64)  # openjpeg's default 6 resolutions need >= 32 px
    for k in range(3):
        ds = make_slice(raw[k], ipp=(0, 0, 2.0 * k))
        ds.compress(JPEG2000Lossless)
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.hu, raw - 1024.0)
    assert vol.meta["transfer_syntax"] == JPEG2000Lossless


def test_compressed_without_decoder_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydicom.pixels import get_decoder

    raw = raw_volume(2)
    for k in range(2):
        ds = make_slice(raw[k], ipp=(0, 0, k))
        ds.compress(RLELossless)
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    assert read_volume(tmp_path).hu[1, 0, 1] == 101 - 1024  # decodes normally
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    with pytest.raises(DicomSeriesError, match=r"ct3dzoo\[dicom\]") as e:
        read_volume(tmp_path)
    assert "RLE Lossless" in str(e.value)


def test_enhanced_multiframe_ct(tmp_path: Path) -> None:
    raw = raw_volume(4)
    z = [6.0, 0.0, 4.0, 2.0]  # frames stored out of order
    intercepts = [-1024.0, -1000.0, -1024.0, -1024.0]
    ds = make_slice(raw[0], ipp=(0, 0, 0), sop_class=EnhancedCTImageStorage)
    for tag in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
    ):
        delattr(ds, tag)
    ds.set_pixel_data(raw, "MONOCHROME2", 16)
    ds.NumberOfFrames = 4
    shared = Dataset()
    pm, po, pvt = Dataset(), Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [0.5, 0.75], 2.0
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pvt.RescaleSlope, pvt.RescaleIntercept = 1, -1024
    shared.PixelMeasuresSequence = [pm]
    shared.PlaneOrientationSequence = [po]
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for zk, ic in zip(z, intercepts):
        fr, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [-10.0, -20.0, zk]
        fr.PlanePositionSequence = [pp]
        if ic != -1024.0:
            t = Dataset()
            t.RescaleSlope, t.RescaleIntercept = 1, ic
            fr.PixelValueTransformationSequence = [t]
        frames.append(fr)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(tmp_path / "enh.dcm", enforce_file_format=True)
    vol = read_volume(tmp_path / "enh.dcm")
    order = np.argsort(z)  # frame 1 (z=0), 3, 2, 0
    expected = raw[order].astype(np.float32) + np.asarray(intercepts)[order][:, None, None]
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.75))
    assert vol.origin == pytest.approx((-10.0, -20.0, 0.0))
    assert vol.meta["sop_class_uid"] == EnhancedCTImageStorage


# ---------------------------------------------------------------- NIfTI and numpy
def _to_nifti(vol: CTVolume):
    nib = pytest.importorskip("nibabel")
    aff = vol.affine[:, [2, 1, 0, 3]]  # nifti index order (i, j, k) = (W, H, D)
    aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # LPS -> RAS
    return nib.Nifti1Image(np.ascontiguousarray(vol.hu.transpose(2, 1, 0)), aff)


def test_nifti_matches_dicom_in_any_storage_orientation(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    write_series(tmp_path / "dcm", raw_volume(), z=[30, 32.5, 35, 37.5, 40])
    ref = read_volume(tmp_path / "dcm")
    img = _to_nifti(ref)
    nib.save(img, tmp_path / "lps.nii.gz")
    nib.save(nib.as_closest_canonical(img), tmp_path / "ras.nii")  # x and y flipped on disk
    for name in ("lps.nii.gz", "ras.nii"):
        vol = read_volume(tmp_path / name)
        np.testing.assert_array_equal(vol.hu, ref.hu)
        assert vol.spacing == pytest.approx(ref.spacing)
        assert vol.origin == pytest.approx(ref.origin)
        np.testing.assert_allclose(vol.direction, STD_DIR, atol=1e-6)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(ValueError, match="3-D NIfTI"):
        read_volume(tmp_path / "4d.nii")


def test_numpy_formats(tmp_path: Path) -> None:
    hu = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 1000
    np.save(tmp_path / "v.npy", hu)
    with pytest.raises(ValueError, match="spacing="):
        read_volume(tmp_path / "v.npy")
    v = read_volume(tmp_path / "v.npy", spacing=(2, 1, 1))
    np.testing.assert_array_equal(v.hu, hu)
    assert v.spacing == (2.0, 1.0, 1.0)
    CTVolume(hu, spacing=(3, 0.5, 0.5), origin=(1, 2, 3)).save_npz(tmp_path / "v.npz")
    v2 = read_volume(tmp_path / "v.npz")
    np.testing.assert_array_equal(v2.hu, hu)
    assert v2.spacing == (3.0, 0.5, 0.5) and v2.origin == (1.0, 2.0, 3.0)
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "nope.nii")
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        CTVolume(np.zeros((2, 2)))
