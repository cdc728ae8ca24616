"""Study folders as a PACS exports them: a CT series (files shuffled) beside its scouts, a
screen capture, a dose report and a single-slice series; several reconstructions; enhanced
multi-frame slice order. Fixtures are written with pydicom (24 slices of 32 x 32).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayRadiationDoseSRStorage,
    generate_uid,
)
from test_data_dicom_geometry import ct_slice, write  # noqa: E402

from ct3dzoo.data import _dicom_headers, read_dicom_series, read_volume  # noqa: E402
from ct3dzoo.data._dicom_raw import read_raw_header  # noqa: E402
from ct3dzoo.errors import DicomSeriesError, SkippedSeriesWarning  # noqa: E402

AXIAL = np.array([1.0, 0, 0, 0, 1, 0])
CORONAL = np.array([1.0, 0, 0, 0, 0, -1])
LATERAL = np.array([0.0, 1, 0, 0, 0, -1])
UID_A, UID_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"
UID_SCOUT, UID_SC = "1.2.826.0.1.3680043.8.498.103", "1.2.826.0.1.3680043.8.498.104"
UID_SR, UID_ONE = "1.2.826.0.1.3680043.8.498.105", "1.2.826.0.1.3680043.8.498.106"


def ct_series(uid: str, n: int, dz: float, thickness: float, kernel: str, desc: str, seed: int):
    rng = np.random.default_rng(seed)
    return [
        ct_slice(
            rng.integers(0, 2000, (32, 32)).astype(np.int16), np.array([-10.0, -10.0, dz * k]),
            AXIAL, (0.7, 0.7), SeriesInstanceUID=uid, SliceThickness=thickness,
            ConvolutionKernel=kernel, SeriesDescription=desc,
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        )
        for k in range(n)
    ]  # fmt: skip


def scouts() -> list[Dataset]:
    return [
        ct_slice(
            np.full((32, 32), 500, np.int16),
            np.zeros(3),
            iop,
            (1.0, 1.0),
            SeriesInstanceUID=UID_SCOUT,
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
            SeriesDescription="Topogram",
        )
        for iop in (CORONAL, LATERAL)
    ]


def screen_capture() -> Dataset:
    ds = ct_slice(np.zeros((16, 16, 3), np.uint8), np.zeros(3), AXIAL, (1.0, 1.0),
                  SeriesInstanceUID=UID_SC, SeriesDescription="Dose Info")  # fmt: skip
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    return ds


def dose_report() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = XRayRadiationDoseSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "SR", UID_SR, "Dose Report"
    item = Dataset()
    item.ValueType, item.TextValue = "TEXT", "DLP 412 mGy.cm"
    ds.ContentSequence = [item]
    return ds


def study(tmp_path: Path, *, second: bool = False) -> tuple[Path, list[Dataset]]:
    """Study folder: CT series A (24 x 1 mm, 1.5 mm thick) + scouts + SC + SR + one slice
    [+ series B: 12 x 2 mm, 1 mm thick]; returns the folder and A's slices."""
    a = ct_series(UID_A, 24, 1.0, 1.5, "B30f", "Thorax 1.5 B30f", 0)
    rng = np.random.default_rng(1)
    write(tmp_path / "A", [a[i] for i in rng.permutation(len(a))])
    write(tmp_path / "scout", scouts())
    write(tmp_path / "sc", [screen_capture()])
    write(tmp_path / "sr", [dose_report()])
    write(tmp_path / "one", ct_series(UID_ONE, 1, 1.0, 5.0, "B30f", "Bolus tracking", 3))
    (tmp_path / "README.txt").write_text("exported by PACS")
    if second:
        write(tmp_path / "B", ct_series(UID_B, 12, 2.0, 1.0, "B70f", "Lung 1.0 B70f", 2))
    return tmp_path, a


def read_quiet(*args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_dicom_series(*args, **kw)
    return vol, [w for w in caught if w.category is SkippedSeriesWarning], caught


@pytest.mark.parametrize("fast_headers", [True, False])
def test_study_folder_reads_the_ct_and_names_what_it_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_headers: bool
) -> None:
    folder, a = study(tmp_path)
    if not fast_headers:  # every file through pydicom: same decisions
        monkeypatch.setattr(_dicom_headers, "read_raw_header", lambda f: None)
    vol, notes, caught = read_quiet(folder)
    assert len(notes) == 1 and len(caught) == 1  # one warning, nothing else
    msg = str(notes[0].message)
    for word in (UID_SCOUT, "2 file(s), localizer/scout (ImageType LOCALIZER)", UID_SC,
                 "Secondary Capture", UID_SR, "X-Ray Radiation Dose SR", "Modality SR",
                 UID_ONE, "single slice", UID_A):  # fmt: skip
        assert word in msg, f"{word!r} not in {msg}"
    assert len(vol.meta["skipped_objects"]) == 4
    ref, none, _ = read_quiet(tmp_path / "A")
    assert not none
    np.testing.assert_array_equal(vol.hu, ref.hu)
    expected = np.stack([s.pixel_array for s in a]).astype(np.float32) - 1024.0
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.meta["series_uid"] == UID_A and vol.meta["skipped_files"] == 1  # README
    # slice order: SOP UIDs in array order (ascending z), the files were shuffled
    uids = [str(s.SOPInstanceUID) for s in a]
    assert vol.meta["sop_uids"] == uids == vol.meta["acquired_sop_uids"]
    np.testing.assert_allclose(vol.meta["slice_positions"], np.arange(24.0))


def test_fast_header_path_reads_image_type_and_sop_uid(tmp_path: Path) -> None:
    folder, _ = study(tmp_path)
    for f in [*sorted((folder / "scout").iterdir()), *sorted((folder / "A").iterdir())[:2]]:
        raw, ref = read_raw_header(f), pydicom.dcmread(f, stop_before_pixels=True)
        assert raw is not None
        assert raw.get("ImageType") == list(ref.ImageType)
        assert raw.get("SOPInstanceUID") == ref.SOPInstanceUID


def test_several_reconstructions_error_lists_them_and_policies_choose(tmp_path: Path) -> None:
    folder, _ = study(tmp_path, second=True)
    with pytest.raises(DicomSeriesError, match="2 series found") as e:
        read_dicom_series(folder)
    msg = str(e.value)
    for word in (f"{UID_A}: 24 slice(s), thickness 1.5 mm, kernel B30f, 'Thorax 1.5 B30f'",
                 f"{UID_B}: 12 slice(s), thickness 1 mm, kernel B70f, 'Lung 1.0 B70f'",
                 "series='largest'", "series='thinnest'", "series_uid="):  # fmt: skip
        assert word in msg, f"{word!r} not in {msg}"
    assert UID_SCOUT not in msg  # only the candidates are listed

    largest, notes, _ = read_quiet(folder, series="largest")
    assert largest.meta["series_uid"] == UID_A and largest.shape == (24, 32, 32)
    assert f"{UID_B}: 12 slice(s)" in str(notes[0].message) and "not chosen" in str(
        notes[0].message
    )
    thinnest, _, _ = read_quiet(folder, series="thinnest")
    assert thinnest.meta["series_uid"] == UID_B and thinnest.shape == (12, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice: no note
        chosen = read_dicom_series(folder, series_uid=UID_B)
    with pytest.warns(SkippedSeriesWarning, match="not chosen: series='thinnest'"):
        via_io = read_volume(folder, series="thinnest")
    np.testing.assert_array_equal(chosen.hu, thinnest.hu)
    np.testing.assert_array_equal(via_io.hu, thinnest.hu)
    with pytest.raises(ValueError, match="series must be one of"):
        read_dicom_series(folder, series="newest")


def test_policy_tie_and_no_volume(tmp_path: Path) -> None:
    write(tmp_path / "t" / "a", ct_series(UID_A, 6, 1.0, 1.0, "B30f", "a", 0))
    write(tmp_path / "t" / "b", ct_series(UID_B, 6, 1.0, 1.0, "B70f", "b", 1))
    with pytest.raises(DicomSeriesError, match=r"series='largest' cannot choose.*tie"):
        read_dicom_series(tmp_path / "t", series="largest")
    write(tmp_path / "n" / "scout", scouts())
    write(tmp_path / "n" / "sc", [screen_capture()])
    write(tmp_path / "n" / "sr", [dose_report()])
    with pytest.raises(DicomSeriesError, match="No CT volume among the 4 DICOM") as e:
        read_dicom_series(tmp_path / "n")
    for word in ("localizer", "Secondary Capture", "X-Ray Radiation Dose SR"):
        assert word in str(e.value)


def test_localizer_inside_the_chosen_series_is_dropped(tmp_path: Path) -> None:
    a = ct_series(UID_A, 5, 2.0, 2.0, "B30f", "a", 0)
    loc = scouts()[0]
    loc.SeriesInstanceUID = UID_A
    write(tmp_path / "s", [*a, loc])
    vol, notes, _ = read_quiet(tmp_path / "s")
    assert vol.shape == (5, 32, 32) and "localizer" in str(notes[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_dicom_series(tmp_path / "s", series_uid=UID_A).shape == (5, 32, 32)


def test_enhanced_multiframe_slice_order(tmp_path: Path) -> None:
    z = [6.0, 0.0, 4.0, 2.0]  # frames stored out of order
    raw = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8)
    ds = ct_slice(raw[0], np.zeros(3), AXIAL, (1.0, 1.0))
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, tag)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.set_pixel_data(raw, "MONOCHROME2", 16)
    ds.NumberOfFrames = 4
    shared, pm, po = Dataset(), Dataset(), Dataset()
    pm.PixelSpacing, po.ImageOrientationPatient = [1.0, 1.0], list(AXIAL)
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [pm], [po]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for zk in z:
        fr, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [0.0, 0.0, zk]
        fr.PlanePositionSequence = [pp]
        per.append(fr)
    ds.PerFrameFunctionalGroupsSequence = per
    write(tmp_path / "e", [ds])
    vol = read_dicom_series(tmp_path / "e")
    order = np.argsort(z)
    np.testing.assert_array_equal(vol.hu, raw[order] - 1024.0)
    assert vol.meta["sop_uids"] == [str(ds.SOPInstanceUID)] * 4  # one SOP UID for all frames
    assert vol.meta["frame_numbers"] == (order + 1).tolist()
