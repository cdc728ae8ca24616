"""Bad data inputs (issue #14, "Data"): each gives a clear error or warning naming the problem.

One table: how the bad input is made -> what is called -> the error (or warning) class and
the words its message must contain.
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from ct3dzoo.data import CTDataset, CTVolume, read_dicom_series, read_volume  # noqa: E402
from ct3dzoo.errors import (  # noqa: E402
    CorruptVolumeError,
    DicomSeriesError,
    MissingFilesError,
    NonUniformSpacingWarning,
    SkippedFileWarning,
)


def dicom_series(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3.4"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(k)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [1, 1], 1, -1024
        ds.set_pixel_data(np.full((32, 32), 1000 + k, np.int16), "MONOCHROME2", 16)
        p = folder / f"slice{k}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def truncate(p: Path, keep: float = 0.6) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: int(len(b) * keep)])


def truncated_slice(tmp: Path) -> Callable[[], object]:
    files = dicom_series(tmp / "series")
    truncate(files[2])
    return lambda: read_dicom_series(tmp / "series")


def truncated_slice_strict(tmp: Path) -> Callable[[], object]:
    files = dicom_series(tmp / "series")
    truncate(files[2])
    return lambda: read_dicom_series(tmp / "series", strict=True)


def header_cut_slice(tmp: Path) -> Callable[[], object]:
    files = dicom_series(tmp / "series")
    files[3].write_bytes(files[3].read_bytes()[:300])  # cut inside the header
    return lambda: read_dicom_series(tmp / "series")


def header_cut_slice_strict(tmp: Path) -> Callable[[], object]:
    files = dicom_series(tmp / "series")
    files[3].write_bytes(files[3].read_bytes()[:300])
    return lambda: read_dicom_series(tmp / "series", strict=True)


def all_slices_truncated(tmp: Path) -> Callable[[], object]:
    for f in dicom_series(tmp / "series", n=2):
        truncate(f)
    return lambda: read_dicom_series(tmp / "series")


def nifti_file(tmp: Path) -> Path:
    img = nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4))
    p = tmp / "ct.nii.gz"
    nib.save(img, str(p))
    return p


def truncated_nifti(tmp: Path) -> Callable[[], object]:
    p = nifti_file(tmp)
    truncate(p, 0.5)
    return lambda: read_volume(p)


def garbage_nifti(tmp: Path) -> Callable[[], object]:
    p = tmp / "ct.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return lambda: read_volume(p)


def not_gzip_nifti(tmp: Path) -> Callable[[], object]:
    p = tmp / "ct.nii.gz"
    p.write_bytes(b"\x00\x01 plain bytes, no gzip magic")
    return lambda: read_volume(p)


def truncated_npy(tmp: Path) -> Callable[[], object]:
    p = tmp / "ct.npy"
    np.save(p, np.zeros((8, 8, 8), np.float32))
    truncate(p, 0.5)
    return lambda: read_volume(p, spacing=(1, 1, 1))


def corrupt_npz(tmp: Path) -> Callable[[], object]:
    p = tmp / "ct.npz"
    CTVolume(np.zeros((4, 4, 4))).save_npz(str(p))
    truncate(p, 0.5)
    return lambda: read_volume(p)


def manifest_with_missing_files(tmp: Path) -> Callable[[], object]:
    CTVolume(np.zeros((4, 4, 4))).save_npz(str(tmp / "ok.npz"))
    (tmp / "m.csv").write_text("path,label\nok.npz,1\ngone1.nii.gz,0\nsub/gone2,1\n")
    return lambda: CTDataset(tmp / "m.csv")


# (name, make the input and return the call, expected class, words in the message)
CASES = [
    ("truncated slice in a series", truncated_slice, SkippedFileWarning,
     ["slice2.dcm", "could not be decoded", "skipped", "bytes"]),
    ("truncated slice, strict", truncated_slice_strict, DicomSeriesError,
     ["slice2.dcm", "could not be decoded", "Remove or re-export"]),
    ("slice cut inside its header", header_cut_slice, SkippedFileWarning,
     ["slice3.dcm", "header that cannot be read", "truncated or damaged", "skipped"]),
    ("slice cut inside its header, strict", header_cut_slice_strict, DicomSeriesError,
     ["slice3.dcm", "header that cannot be read", "strict=True"]),
    ("every slice truncated", all_slices_truncated, DicomSeriesError,
     ["slice0.dcm", "slice1.dcm", "could not be decoded"]),
    ("truncated .nii.gz", truncated_nifti, CorruptVolumeError,
     ["ct.nii.gz", "truncated or not a NIfTI volume"]),
    ("gzip of garbage as .nii.gz", garbage_nifti, CorruptVolumeError,
     ["ct.nii.gz", "cannot be read as NIfTI"]),
    ("not gzip at all as .nii.gz", not_gzip_nifti, CorruptVolumeError,
     ["ct.nii.gz", "cannot be read as NIfTI"]),
    ("truncated .npy", truncated_npy, CorruptVolumeError, ["ct.npy", "truncated"]),
    ("truncated .npz", corrupt_npz, CorruptVolumeError, ["ct.npz", "truncated"]),
    ("manifest rows pointing to missing files", manifest_with_missing_files, MissingFilesError,
     ["2 manifest path(s) do not exist", "gone1.nii.gz", "gone2"]),
]  # fmt: skip


@pytest.mark.parametrize("name, make, cls, words", CASES, ids=[c[0] for c in CASES])
def test_bad_data_input(
    tmp_path: Path, name: str, make: Callable, cls: type, words: list[str]
) -> None:
    call = make(tmp_path)
    if issubclass(cls, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        msgs = [str(w.message) for w in caught if issubclass(w.category, cls)]
        assert msgs, f"no {cls.__name__}; got {[str(w.message) for w in caught]}"
        msg = msgs[0]
    else:
        with pytest.raises(cls) as info:
            call()
        msg = str(info.value)
    for word in words:
        assert re.search(re.escape(word), msg), f"{word!r} not in: {msg}"


def test_truncated_slice_is_left_out_and_the_gap_reported(tmp_path: Path) -> None:
    files = dicom_series(tmp_path / "s")
    truncate(files[2])
    with (
        pytest.warns(SkippedFileWarning),
        pytest.warns(NonUniformSpacingWarning, match="1 missing"),
    ):
        vol = read_dicom_series(tmp_path / "s")
    assert vol.shape == (5, 32, 32)  # the gap regularised: plane 2 interpolated and masked
    np.testing.assert_array_equal(vol.hu[:, 0, 0], [1000 + k - 1024 for k in range(5)])
    assert vol.meta["padding_mask"][:, 0, 0].tolist() == [0, 0, 1, 0, 0]
    assert vol.meta["skipped_files"] == 1


def test_missing_files_error_lists_paths(tmp_path: Path) -> None:
    call = manifest_with_missing_files(tmp_path)
    with pytest.raises(MissingFilesError) as info:
        call()
    assert [Path(p).name for p in info.value.paths] == ["gone1.nii.gz", "gone2"]
    assert isinstance(info.value, FileNotFoundError)
