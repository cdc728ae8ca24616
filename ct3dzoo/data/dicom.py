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
    SkippedSeriesWarning,
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
    regularise,
)
from .volume import CTVolume, reorient_to_lps, split_affine

__all__ = [
    "DicomSeriesError",
    "GantryTiltWarning",
    "NonUniformSpacingWarning",
    "SkippedFileWarning",
    "SkippedSeriesWarning",
    "read_dicom_series",
]


#: In-plane drift of slice origins (pixels) beyond which a series counts as gantry-tilted;
#: below it, position rounding in the headers (e.g. 0.1 mm) is not mistaken for a tilt.
_MAX_SHEAR_PX = 0.25


def read_dicom_series(
    path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    series_uid: str | None = None,
    series: Literal["error", "largest", "thinnest"] = "error",
    gaps: Literal["regularise", "stack", "error"] = "regularise",
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

    - **Study folders**: objects that are not slices of a CT volume (localizers/scouts,
      ``ImageType`` LOCALIZER; secondary captures; structured/dose reports and other
      objects without pixels; other modalities; single-slice series when a multi-slice one
      is present) are left out with one `SkippedSeriesWarning` naming them
      (``meta["skipped_objects"]``). One CT series left: it is read; several: ``series``
      chooses (``"largest"``: most slices, then thinnest; ``"thinnest"``: smallest
      ``SliceThickness``, then most slices), or ``"error"`` (default) raises
      `DicomSeriesError` listing each with UID, slices, thickness, kernel, description.
    - **Irregular slice gaps** (a gap off the median by more than ``spacing_tolerance``:
      missing slices, variable spacing): ``gaps="regularise"`` (default) resamples onto a
      uniform grid along the slice normal from the first acquired slice, every ``step`` mm,
      the last plane within ``step / 2`` of the last acquired slice; each plane is linear
      between the two nearest acquired slices. ``step`` = the smallest regular gap: the
      smallest gap that occurs at least twice (the median of the gaps within
      ``spacing_tolerance`` above it; the median gap if none recurs), so no acquired detail
      is averaged away, a regular run of slices is copied exactly, and one odd pair of
      close slices does not set the grid. Planes farther than
      ``(1 + spacing_tolerance) * step / 2`` from every acquired slice (inside a missing
      slice or a wide gap) are marked in ``meta["padding_mask"]``; their values are
      interpolated. A `NonUniformSpacingWarning` names the gaps. ``gaps="stack"`` stacks
      the slices as found with the median gap as spacing (slices next to a gap sit at the
      wrong place); ``gaps="error"`` raises.
    - **Gantry tilt**: when the slice origins drift in-plane by more than a quarter pixel
      instead of stepping along the slice normal (a tilted gantry), ``tilt="resample"``
      shifts each slice in-plane (bilinear) onto a regular grid along the normal, as
      dcm2niix does, and warns (`GantryTiltWarning`); ``tilt="error"`` raises
      `DicomSeriesError` naming the tilt. Combines with ``gaps="regularise"`` (tilt first,
      then along the normal).
    - **Pixel padding** (``PixelPaddingValue``/``PixelPaddingRangeLimit``, C.7.5.1.1.2): not
      measured data; set to air (-1024 HU, or the series' lowest real value when higher),
      and ``meta["padding_mask"]`` (bool, same shape as ``hu``) marks those voxels (and,
      after tilt correction, those outside the acquired slab). Absent when none.
    - **Slice order** (for per-image labels): ``meta["sop_uids"]``: one
      ``SOPInstanceUID`` per slice of the array along the slice axis
      (``meta["slice_axis"]``, 0 for axial series); after regularisation the nearest
      acquired slice's, so a UID repeats across a gap (and, with jittered gaps, one may be
      nobody's nearest). To place every acquired slice: ``meta["acquired_sop_uids"]`` and
      ``meta["slice_positions"]`` give each in the same order with its position (mm)
      along that axis from array slice 0; its array index is
      ``slice_positions / spacing[slice_axis]`` (fractional between planes; not with
      ``gaps="stack"``, where acquired slice ``i`` is array slice ``i``).
      Enhanced multi-frame files have one SOP UID for all frames: it repeats, and
      ``meta["frame_numbers"]`` gives each slice's frame (1-based).
    - **Unreadable slices** (truncated or corrupt pixel data) are skipped with a
      `SkippedFileWarning` naming each file (an error with ``strict=True``).

    Args:
        path_or_files: a folder (searched recursively; non-DICOM files are skipped), a
            single file, or a list of files.
        series_uid: which ``SeriesInstanceUID`` to read (overrides ``series``).
        series: ``"error"``, ``"largest"`` or ``"thinnest"`` when several CT series remain.
        gaps: ``"regularise"``, ``"stack"`` or ``"error"`` for irregular slice gaps.
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
        DicomSeriesError: several CT series with ``series="error"`` (lists them), no CT
            volume at all (lists what was found), RGB, mixed orientations, duplicate
            positions, compressed data without a decoder, a tilted series with
            ``tilt="error"``, irregular gaps with ``gaps="error"``, or missing/unreadable
            slices or non-uniform spacing with ``strict=True``.
    """
    for name, value, allowed in (
        ("tilt", tilt, ("resample", "error")),
        ("gaps", gaps, ("regularise", "stack", "error")),
        ("series", series, ("error", "largest", "thinnest")),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    pydicom = pydicom_module()
    files = list_files(path_or_files)
    with warnings.catch_warnings():
        # anonymised datasets often carry non-conformant UIDs; they still identify series
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        return _read(
            path_or_files, files, pydicom, series_uid, series, gaps, strict, reorient,
            spacing_tolerance, tilt, workers or default_workers(),
        )  # fmt: skip


def _read(
    path_or_files: Any,
    files: list[Path],
    pydicom: Any,
    series_uid: str | None,
    policy: str,
    gaps: str,
    strict: bool,
    reorient: bool,
    spacing_tolerance: float,
    tilt: str,
    workers: int,
) -> CTVolume:
    found, skipped, broken = scan(files, pydicom)
    if broken:
        lines = "\n".join(f"  {f}: {why}" for f, why in broken.items())
        msg = f"{len(broken)} DICOM file(s) have a header that cannot be read:\n{lines}"
        if strict:
            raise DicomSeriesError(msg + "\nRemove or re-export them (strict=True).")
        warnings.warn(msg + "\nThey are skipped.", SkippedFileWarning, stacklevel=3)
    if not found:
        raise DicomSeriesError(
            f"No DICOM images among {len(files)} file(s) in {path_or_files!s} "
            f"({skipped} skipped as non-DICOM or without pixel data)."
        )
    series_uid, items, notes = pick_series(found, series_uid, policy)
    if notes:
        warnings.warn(
            f"Read series {series_uid!r}; left out {len(notes)} other object group(s) that "
            "are not this CT volume:\n" + "\n".join(notes) + "\nPass series_uid= to read "
            "another series.", SkippedSeriesWarning, stacklevel=3,
        )  # fmt: skip
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
    dz, regular = _slice_step(pos, frames[0], series_uid, strict, spacing_tolerance, gaps)

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

    rel = pos - pos[0]
    if regular:
        planes, nearest = rel, np.arange(len(frames))
    else:
        far = (1.0 + spacing_tolerance) * dz / 2
        hu, mask, nearest = regularise(hu, pad, rel, dz, far)
        planes = dz * np.arange(hu.shape[0])
        pad = mask if pad is not None or mask.any() else None
    affine = np.eye(4)
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos * ps[0]  # row index moves along the column direction
    affine[:3, 2] = row_cos * ps[1]
    affine[:3, 3] = frames[0].ipp
    meta.update(_slice_order(frames, rel, planes, nearest, affine if reorient else None))
    if reorient:
        if pad is not None:
            pad, _ = reorient_to_lps(pad, affine)
        hu, affine = reorient_to_lps(hu, affine)
    if pad is not None:
        meta["padding_mask"] = pad
    if notes:
        meta["skipped_objects"] = [n.strip() for n in notes]
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


def _slice_order(
    frames: list[Frame],
    rel: np.ndarray,
    planes: np.ndarray,
    nearest: np.ndarray,
    affine: np.ndarray | None,
) -> dict[str, Any]:
    """``sop_uids`` etc. (see `read_dicom_series`) in the array order after reorientation.

    ``rel``: acquired positions along the normal (mm from the first); ``planes``: the
    output planes' positions; ``nearest``: the acquired slice nearest to each plane.
    """
    n = len(planes)
    axis, flipped = 0, False
    if affine is not None and n > 1:
        lab, _ = reorient_to_lps(np.arange(n).reshape(n, 1, 1), affine)
        axis, flipped = int(np.argmax(lab.shape)), bool(lab.ravel()[0] > lab.ravel()[-1])
    uids = [str(fr.ds.get("SOPInstanceUID", "")) for fr in frames]
    out_idx = np.arange(n)[::-1] if flipped else np.arange(n)
    acq = np.arange(len(frames))[::-1] if flipped else np.arange(len(frames))
    positions = planes[-1] - rel[acq] if flipped else rel[acq] - planes[0]
    meta: dict[str, Any] = {
        "sop_uids": [uids[i] for i in nearest[out_idx]],
        "acquired_sop_uids": [uids[i] for i in acq],
        "slice_positions": [float(p) for p in positions],
        "slice_axis": axis,
    }
    if any(fr.index is not None for fr in frames):
        meta["frame_numbers"] = [(frames[i].index or 0) + 1 for i in nearest[out_idx]]
    return meta


def _slice_step(
    pos: np.ndarray, first: Frame, series_uid: str, strict: bool, tolerance: float, gaps: str
) -> tuple[float, bool]:
    """``(spacing along the normal, regular)`` from the positions (see `read_dicom_series`
    for the rule); one slice: ``SpacingBetweenSlices``, else ``SliceThickness``."""
    diffs = np.diff(pos)
    if not diffs.size:
        return float(first.spacing_between or first.thickness or 1.0), True
    dz = float(np.median(diffs))
    if not np.any(np.abs(diffs - dz) > tolerance * dz):
        return dz, True
    step = dz
    for g in np.sort(diffs):  # the smallest gap that recurs (see read_dicom_series)
        near = diffs[(diffs >= g) & (diffs <= g * (1 + tolerance))]
        if near.size >= 2:
            step = float(np.median(near))
            break
    ratio = diffs / step
    if np.all(np.abs(ratio - np.round(ratio)) <= tolerance):
        kind = f"about {int(np.sum(np.round(ratio) - 1))} missing slice(s)"
    else:
        kind = "variable spacing"
    uniq = np.unique(np.round(diffs, 2)).tolist()
    listed = f"{uniq}" if len(uniq) <= 12 else f"{len(uniq)} values from {uniq[0]} to {uniq[-1]}"
    msg = (
        f"Non-uniform slice spacing in series {series_uid!r}: measured gaps {listed} mm "
        f"(median {dz:g} mm; {kind})."
    )
    if strict or gaps == "error":
        raise DicomSeriesError(
            msg + (" (strict=True)" if strict else " (gaps='error')") + " gaps='regularise' "
            "(without strict=True) resamples it onto a uniform grid."
        )
    if gaps == "stack":
        warnings.warn(
            msg + f" Stacked as found with the median gap {dz:g} mm as spacing (gaps='stack'): "
            "slices next to a gap sit at the wrong positions.", NonUniformSpacingWarning,
            stacklevel=4,
        )  # fmt: skip
        return dz, True
    n = int(np.round((pos[-1] - pos[0]) / step)) + 1
    warnings.warn(
        msg + f" Resampled onto {n} planes every {step:g} mm (the smallest regular gap), "
        "linear between the two nearest acquired slices; meta['padding_mask'] marks planes "
        f"farther than {(1 + tolerance) * step / 2:g} mm from every acquired slice "
        "(gaps='stack' stacks as found, gaps='error' refuses).", NonUniformSpacingWarning,
        stacklevel=4,
    )  # fmt: skip
    return step, False
