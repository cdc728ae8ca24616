"""DICOM CT series -> `CTVolume` (pydicom, extra ``ct3dzoo[dicom]``).

Slices are ordered by their position along the slice normal (``ImageOrientationPatient``
x ``ImagePositionPatient``), never by file name or ``InstanceNumber``; the z spacing comes
from those positions, not from ``SliceThickness``; ``RescaleSlope``/``RescaleIntercept``
are applied per slice (per frame for enhanced multi-frame CT).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import (
    DicomSeriesError,
    GantryTiltWarning,
    NonUniformSpacingWarning,
    SkippedFileWarning,
)
from ._dicom_headers import (
    check_decoder,
    check_image,
    frames_of,
    list_files,
    pick_series,
    pydicom_module,
    scan,
)
from ._dicom_pixels import (
    AIR_HU,
    Frame,
    correct_tilt,
    decode_frames,
    default_workers,
    fill_padding,
    in_plane_offsets,
)
from .volume import CTVolume, reorient_to_lps, split_affine

__all__ = [
    "DicomSeriesError",
    "GantryTiltWarning",
    "NonUniformSpacingWarning",
    "SkippedFileWarning",
    "read_dicom_series",
]


#: In-plane drift of slice origins (pixels) beyond which a series counts as gantry-tilted;
#: below it, position rounding in the headers (e.g. 0.1 mm) is not mistaken for a tilt.
_MAX_SHEAR_PX = 0.25


def read_dicom_series(
    path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    series_uid: str | None = None,
    strict: bool = False,
    reorient: bool = True,
    spacing_tolerance: float = 0.05,
    tilt: Literal["resample", "error"] = "resample",
    workers: int | None = None,
) -> CTVolume:
    """Read one CT series (classic one-file-per-slice or enhanced multi-frame).

    Every pixel is placed where DICOM PS3.3 C.7.6.2.1.1 puts it. Headers are parsed once,
    only the needed elements (straight from the bytes for uncompressed little-endian
    single-frame files, by pydicom for all others); pixel data are decoded by ``workers``
    threads into one array.

    - **Gantry tilt**: when the slice origins drift in-plane by more than a quarter pixel
      instead of stepping along the slice normal (a tilted gantry), ``tilt="resample"``
      shifts each slice in-plane (bilinear) onto a regular grid along the normal, as
      dcm2niix does, and warns (`GantryTiltWarning`); ``tilt="error"`` raises
      `DicomSeriesError` naming the tilt.
    - **Pixel padding** (``PixelPaddingValue``/``PixelPaddingRangeLimit``, C.7.5.1.1.2): not
      measured data; set to air (-1024 HU, or the series' lowest real value when higher),
      and ``meta["padding_mask"]`` (bool, same shape as ``hu``) marks those voxels (and,
      after tilt correction, those outside the acquired slab). Absent when none.
    - **Unreadable slices** (truncated or corrupt pixel data) are skipped with a
      `SkippedFileWarning` naming each file (an error with ``strict=True``).

    Args:
        path_or_files: a folder (searched recursively; non-DICOM files are skipped), a
            single file, or a list of files.
        series_uid: which ``SeriesInstanceUID`` to read when several are present.
        strict: raise instead of warn on missing/unreadable slices or non-uniform spacing.
        reorient: reorient to the (D=S, H=P, W=L) convention of `CTVolume`; ``False`` keeps
            the acquisition's in-plane axes and orders slices along the slice normal.
        spacing_tolerance: relative deviation of a slice gap from the median gap that
            counts as non-uniform.
        tilt: ``"resample"`` (default) or ``"error"`` for gantry-tilted series.
        workers: decoding threads (default: the usable cores, at most 16; 1 = serial).

    Returns:
        `CTVolume` with ``hu`` float32 ``(D, H, W)``, spacing in mm (z from positions; a
        single slice uses ``SpacingBetweenSlices``, else ``SliceThickness``).

    Raises:
        DicomSeriesError: several series without ``series_uid`` (lists them), non-CT,
            RGB, secondary capture, mixed orientations, duplicate positions, compressed data
            without a decoder, a tilted series with ``tilt="error"``, or missing/unreadable
            slices or non-uniform spacing with ``strict=True``.
    """
    if tilt not in ("resample", "error"):
        raise ValueError(f"tilt must be 'resample' or 'error', got {tilt!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pydicom = pydicom_module()
    files = list_files(path_or_files)
    with warnings.catch_warnings():
        # anonymised datasets often carry non-conformant UIDs; they still identify series
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        return _read(
            path_or_files, files, pydicom, series_uid, strict, reorient, spacing_tolerance,
            tilt, workers or default_workers(),
        )  # fmt: skip


def _read(
    path_or_files: Any,
    files: list[Path],
    pydicom: Any,
    series_uid: str | None,
    strict: bool,
    reorient: bool,
    spacing_tolerance: float,
    tilt: str,
    workers: int,
) -> CTVolume:
    series, skipped, broken = scan(files, pydicom)
    if broken:
        lines = "\n".join(f"  {f}: {why}" for f, why in broken.items())
        msg = f"{len(broken)} DICOM file(s) have a header that cannot be read:\n{lines}"
        if strict:
            raise DicomSeriesError(msg + "\nRemove or re-export them (strict=True).")
        warnings.warn(msg + "\nThey are skipped.", SkippedFileWarning, stacklevel=3)
    if not series:
        raise DicomSeriesError(
            f"No DICOM images among {len(files)} file(s) in {path_or_files!s} "
            f"({skipped} skipped as non-DICOM or without pixel data)."
        )
    series_uid = pick_series(series, series_uid)
    items = series[series_uid]
    for f, ds in items:
        check_image(ds, f)
        check_decoder(ds, f)
    frames = [fr for f, ds in items for fr in frames_of(f, ds)]

    iop = frames[0].iop
    if not np.allclose(np.stack([fr.iop for fr in frames]), iop, atol=1e-3):
        raise DicomSeriesError(
            "Slices have different ImageOrientationPatient (a localizer or a mixed series); "
            "pass only the slices of one stack."
        )
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.array([normal @ fr.ipp for fr in frames])
    order = np.argsort(pos, kind="stable")
    frames = [frames[i] for i in order]
    if np.any(np.diff(pos[order]) < 1e-4):
        raise DicomSeriesError(
            "Two or more slices share a position along the slice normal (repeated acquisition "
            "or several stacks in one series); select the files of one stack."
        )

    first_ds = frames[0].ds
    rows, cols = int(first_ds.Rows), int(first_ds.Columns)
    hu, pad, failed = decode_frames(frames, rows, cols, workers=workers)
    if failed:
        lines = "\n".join(f"  {f}: {why}" for f, why in failed.items())
        msg = f"{len(failed)} file(s) of series {series_uid!r} could not be decoded:\n{lines}"
        if strict or len(failed) == len({fr.file for fr in frames}):
            raise DicomSeriesError(msg + "\nRemove or re-export them.")
        warnings.warn(msg + "\nThey are skipped.", SkippedFileWarning, stacklevel=3)
        keep = np.array([fr.file not in failed for fr in frames])
        frames = [fr for fr, k in zip(frames, keep) if k]
        hu = hu[keep]
        pad = pad[keep] if pad is not None else None
    pos = np.array([normal @ fr.ipp for fr in frames])
    dz = _slice_spacing(pos, frames[0], series_uid, strict, spacing_tolerance)

    meta: dict[str, Any] = {}
    fill = None
    if pad is not None and pad.any():
        fill = fill_padding(hu, pad)
        meta["padding_fill_hu"] = fill
    else:
        pad = None
    ps = frames[0].ps
    off_col, off_row = in_plane_offsets(
        np.stack([fr.ipp for fr in frames]), normal, row_cos, col_cos
    )
    shear = float(np.max(np.abs(np.concatenate([off_col / ps[0], off_row / ps[1]]))))
    if shear > _MAX_SHEAR_PX:
        span = frames[-1].ipp - frames[0].ipp
        angle = float(
            np.degrees(np.arctan2(np.linalg.norm(span - (span @ normal) * normal), span @ normal))
        )
        tag = first_ds.get("GantryDetectorTilt")
        what = (
            f"Series {series_uid!r} is gantry-tilted: slice origins step {angle:.2f} deg off the "
            f"slice normal (GantryDetectorTilt {tag if tag is not None else 'absent'}), "
            f"shearing the stack by up to {shear:.1f} pixels."
        )
        if tilt == "error":
            raise DicomSeriesError(
                what + " Pass tilt='resample' to resample it onto a regular grid."
            )
        warnings.warn(
            what + " Resampled each slice onto a regular grid along the slice normal "
            "(tilt='error' refuses instead).", GantryTiltWarning, stacklevel=3,
        )  # fmt: skip
        hu, pad = correct_tilt(hu, pad, off_col, off_row, ps, AIR_HU if fill is None else fill)
        meta["gantry_tilt_deg"] = angle

    affine = np.eye(4)
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos * ps[0]  # row index moves along the column direction
    affine[:3, 2] = row_cos * ps[1]
    affine[:3, 3] = frames[0].ipp
    if reorient:
        if pad is not None:
            pad, _ = reorient_to_lps(pad, affine)
        hu, affine = reorient_to_lps(hu, affine)
    if pad is not None:
        meta["padding_mask"] = pad
    spacing, origin, direction = split_affine(affine)
    meta = {
        "source": str(path_or_files) if isinstance(path_or_files, (str, os.PathLike)) else "files",
        "series_uid": series_uid,
        "study_uid": str(first_ds.get("StudyInstanceUID", "")),
        "modality": str(first_ds.get("Modality", "")),
        "kernel": str(first_ds.get("ConvolutionKernel", "")),
        "slice_thickness": frames[0].thickness,
        "num_files": len(items),
        "skipped_files": skipped + len(failed),
        "sop_class_uid": str(first_ds.get("SOPClassUID", "")),
        "transfer_syntax": str(first_ds.file_meta.get("TransferSyntaxUID", ""))
        if hasattr(first_ds, "file_meta")
        else "",
        **meta,
    }
    return CTVolume(hu=hu, spacing=spacing, origin=origin, direction=direction, meta=meta)


def _slice_spacing(
    pos: np.ndarray, first: Frame, series_uid: str, strict: bool, tolerance: float
) -> float:
    """Spacing along the normal from the positions; one slice: SpacingBetweenSlices."""
    gaps = np.diff(pos)
    if not gaps.size:
        return float(first.spacing_between or first.thickness or 1.0)
    dz = float(np.median(gaps))
    if np.any(np.abs(gaps - dz) > tolerance * dz):
        uniq = np.unique(np.round(gaps, 3))
        missing = int(np.sum(np.round(gaps / dz) - 1).clip(min=0))
        msg = (
            f"Non-uniform slice spacing in series {series_uid!r}: measured gaps {uniq.tolist()} "
            f"mm (median {dz:g} mm"
            + (f"; about {missing} missing slice(s)" if missing else "")
            + "). The volume stacks the slices as found and reports the median spacing; "
            "resample or fix the series if this matters."
        )
        if strict:
            raise DicomSeriesError(msg + " (strict=True)")
        warnings.warn(msg, NonUniformSpacingWarning, stacklevel=4)
    return dz
