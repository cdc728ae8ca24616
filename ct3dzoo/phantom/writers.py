"""Writers: a phantom case as a DICOM CT series or a NIfTI-1 file (volume and lesion mask)."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io.atomic import atomic_path
from .case import PhantomCase

__all__ = ["nifti_affine", "write_dicom_series", "write_mask_nifti", "write_nifti"]


def _uid(*parts: object) -> str:
    """Deterministic DICOM UID (``2.25.<128-bit int>``) from ``parts``."""
    h = hashlib.sha256("/".join(str(p) for p in ("ct3dzoo-phantom", *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big"))


def require(module: str, extra: str) -> Any:
    """Import ``module`` or say which ct3dzoo extra installs it."""
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
    require("pydicom", "dicom")
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
    return _save_nifti(np.rint(case.hu).astype(np.int16), case, path)


def write_mask_nifti(case: PhantomCase, path: str | os.PathLike[str]) -> Path:
    """Write ``case.mask`` (uint8, 1 = finding) as a NIfTI-1 on the grid of :func:`write_nifti`.

    Read back with the same reader as the volume (e.g. ``ct3dzoo.data.read_volume``), the
    mask lands on the volume's ``(D, H, W)`` voxels.
    """
    return _save_nifti(case.mask, case, path)


def _save_nifti(array: np.ndarray, case: PhantomCase, path: str | os.PathLike[str]) -> Path:
    """``array`` (D, H, W) as NIfTI-1 with the case's affine; gzip when the name ends in .gz."""
    nib = require("nibabel", "nifti")
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz")
    affine = nifti_affine(case)
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(array.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)  # nibabel's level; reproducible
    with atomic_path(path, fsync=False) as tmp:  # regenerable: no fsync
        tmp.write_bytes(data)
    return path
