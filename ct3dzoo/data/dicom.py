"""DICOM CT series -> `CTVolume` (pydicom, extra ``ct3dzoo[dicom]``).

Slices are ordered by their position along the slice normal (``ImageOrientationPatient``
x ``ImagePositionPatient``), never by file name or ``InstanceNumber``; the z spacing comes
from those positions, not from ``SliceThickness``; ``RescaleSlope``/``RescaleIntercept``
are applied per slice (per frame for enhanced multi-frame CT).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DicomSeriesError, NonUniformSpacingWarning
from .volume import CTVolume, reorient_to_lps, split_affine

__all__ = ["DicomSeriesError", "NonUniformSpacingWarning", "read_dicom_series"]

_SECONDARY_CAPTURE = (
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
)
_DICOM_EXTRA = "pip install 'ct3dzoo[dicom]'"


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"Reading DICOM needs pydicom: {_DICOM_EXTRA}") from e
    return pydicom


def _list_files(path_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(path_or_files, (str, os.PathLike)):
        p = Path(path_or_files)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"No such DICOM file or folder: {p}")
    else:
        files = [Path(f) for f in path_or_files]
    if not files:
        raise FileNotFoundError(f"No files found in {path_or_files!s}")
    return files


def _fg(ds: Any, frame_item: Any, seq: str, attr: str, default: Any = None) -> Any:
    """Attribute from the per-frame functional group, else the shared one, else ``ds``."""
    for holder in (frame_item, _shared(ds)):
        if holder is not None and seq in holder and len(holder[seq].value):
            item = holder[seq].value[0]
            if attr in item:
                return item[attr].value
    return ds.get(attr, default)


def _shared(ds: Any) -> Any:
    sfg = ds.get("SharedFunctionalGroupsSequence")
    return sfg[0] if sfg else None


def _check_image(ds: Any, f: Path) -> None:
    sop = str(ds.get("SOPClassUID", ""))
    if sop in _SECONDARY_CAPTURE:
        raise DicomSeriesError(
            f"{f.name} is a Secondary Capture image (SOP class {sop}): a screenshot without "
            "HU calibration or patient geometry. Export the original CT series instead."
        )
    modality = str(ds.get("Modality", "")).upper()
    if modality != "CT":
        raise DicomSeriesError(
            f"{f.name} has Modality {modality or '(missing)'!r}; ct3dzoo reads CT only "
            "(HU windows are meaningless for other modalities). Pick the CT series."
        )
    spp = int(ds.get("SamplesPerPixel", 1))
    photo = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if spp != 1 or not photo.startswith("MONOCHROME"):
        raise DicomSeriesError(
            f"{f.name} is a colour image ({photo}, {spp} samples per pixel), not CT "
            "attenuation values. Use the original greyscale CT series."
        )


def _decode(ds: Any, f: Path) -> np.ndarray:
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed:
        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DicomSeriesError(
                f"{f.name} is compressed ({ts.name}, {ts}) and no decoder for it is "
                f"installed. Install one with: {_DICOM_EXTRA} (pylibjpeg, pylibjpeg-openjpeg, "
                "pylibjpeg-libjpeg) or `pip install python-gdcm`."
            )
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        raise DicomSeriesError(
            f"Could not decode the pixel data of {f.name} ({ts.name if ts else '?'}): {e}. "
            f"Install the decoders with: {_DICOM_EXTRA}"
        ) from e


def _scan(files: Sequence[Path], pydicom: Any) -> tuple[dict[str, list[tuple[Path, Any]]], int]:
    series: dict[str, list[tuple[Path, Any]]] = {}
    skipped = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size="2 KB")
        except (pydicom.errors.InvalidDicomError, OSError):
            skipped += 1
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            skipped += 1  # DICOMDIR, structured reports, presentation states...
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, []).append((f, ds))
    return series, skipped


def read_dicom_series(
    path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    series_uid: str | None = None,
    strict: bool = False,
    reorient: bool = True,
    spacing_tolerance: float = 0.05,
) -> CTVolume:
    """Read one CT series (classic one-file-per-slice or enhanced multi-frame).

    Args:
        path_or_files: a folder (searched recursively; non-DICOM files are skipped), a
            single file, or a list of files.
        series_uid: which ``SeriesInstanceUID`` to read when several are present.
        strict: raise instead of warn on missing slices / non-uniform spacing.
        reorient: reorient to the (D=S, H=P, W=L) convention of `CTVolume`; ``False`` keeps
            the acquisition's in-plane axes and orders slices along the slice normal.
        spacing_tolerance: relative deviation of a slice gap from the median gap that
            counts as non-uniform.

    Returns:
        `CTVolume` with ``hu`` float32 ``(D, H, W)``, spacing in mm (z from positions).

    Raises:
        DicomSeriesError: several series without ``series_uid`` (lists them), non-CT,
            RGB, secondary capture, mixed orientations, duplicate positions, compressed data
            without a decoder, or non-uniform spacing with ``strict=True``.
    """
    pydicom = _pydicom()
    files = _list_files(path_or_files)
    with warnings.catch_warnings():
        # anonymised datasets often carry non-conformant UIDs; they still identify series
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        return _read(path_or_files, files, pydicom, series_uid, strict, reorient, spacing_tolerance)


def _read(
    path_or_files: Any,
    files: list[Path],
    pydicom: Any,
    series_uid: str | None,
    strict: bool,
    reorient: bool,
    spacing_tolerance: float,
) -> CTVolume:
    series, skipped = _scan(files, pydicom)
    if not series:
        raise DicomSeriesError(
            f"No DICOM images among {len(files)} file(s) in {path_or_files!s} "
            f"({skipped} skipped as non-DICOM or without pixel data)."
        )
    if series_uid is None:
        if len(series) > 1:
            lines = [
                f"  {uid or '(no SeriesInstanceUID)'}: {len(items)} file(s), "
                f"{items[0][1].get('Modality', '?')}, "
                f"{items[0][1].get('SeriesDescription', '')!s}"
                for uid, items in series.items()
            ]
            raise DicomSeriesError(
                f"{len(series)} series found; pass series_uid= to choose one:\n" + "\n".join(lines)
            )
        series_uid = next(iter(series))
    elif series_uid not in series:
        raise DicomSeriesError(
            f"series_uid {series_uid!r} not found; available: {', '.join(sorted(series))}"
        )
    items = series[series_uid]
    for f, ds in items:
        _check_image(ds, f)

    # Gather frames: (position, iop, pixel spacing, slope, intercept, source)
    frames: list[dict[str, Any]] = []
    for f, ds in items:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        pffg = ds.get("PerFrameFunctionalGroupsSequence")
        if pffg is not None or n > 1:
            if pffg is None or len(pffg) != n:
                raise DicomSeriesError(
                    f"{f.name} has {n} frames but no matching PerFrameFunctionalGroupsSequence; "
                    "cannot place its frames in space."
                )
            for i, item in enumerate(pffg):
                frames.append(
                    {
                        "ipp": _fg(ds, item, "PlanePositionSequence", "ImagePositionPatient"),
                        "iop": _fg(ds, item, "PlaneOrientationSequence", "ImageOrientationPatient"),
                        "ps": _fg(ds, item, "PixelMeasuresSequence", "PixelSpacing"),
                        "thk": _fg(ds, item, "PixelMeasuresSequence", "SliceThickness"),
                        "slope": _fg(
                            ds, item, "PixelValueTransformationSequence", "RescaleSlope", 1
                        ),
                        "inter": _fg(
                            ds, item, "PixelValueTransformationSequence", "RescaleIntercept", 0
                        ),
                        "src": (f, ds, i),
                    }
                )
        else:
            frames.append(
                {
                    "ipp": ds.get("ImagePositionPatient"),
                    "iop": ds.get("ImageOrientationPatient"),
                    "ps": ds.get("PixelSpacing"),
                    "thk": ds.get("SliceThickness"),
                    "slope": ds.get("RescaleSlope", 1),
                    "inter": ds.get("RescaleIntercept", 0),
                    "src": (f, ds, None),
                }
            )

    for fr in frames:
        if fr["ipp"] is None or fr["iop"] is None or fr["ps"] is None:
            f = fr["src"][0]
            raise DicomSeriesError(
                f"{f.name} lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
                "slices cannot be ordered in space."
            )
    iop = np.asarray([float(v) for v in frames[0]["iop"]])
    for fr in frames[1:]:
        if not np.allclose([float(v) for v in fr["iop"]], iop, atol=1e-3):
            raise DicomSeriesError(
                "Slices have different ImageOrientationPatient (a localizer or a mixed series); "
                "pass only the slices of one stack."
            )
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pos = np.array([np.dot(normal, [float(v) for v in fr["ipp"]]) for fr in frames])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    frames = [frames[i] for i in order]
    gaps = np.diff(pos)
    if gaps.size and np.min(gaps) < 1e-4:
        raise DicomSeriesError(
            "Two or more slices share a position along the slice normal (repeated acquisition "
            "or several stacks in one series); select the files of one stack."
        )
    if gaps.size:
        dz = float(np.median(gaps))
        if np.any(np.abs(gaps - dz) > spacing_tolerance * dz):
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
    else:
        dz = float(frames[0]["thk"] or 1.0)

    # Decode
    ps = [float(v) for v in frames[0]["ps"]]
    first_ds = frames[0]["src"][1]
    rows, cols = int(first_ds.Rows), int(first_ds.Columns)
    hu = np.empty((len(frames), rows, cols), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}
    from pydicom.pixels import apply_modality_lut

    for k, fr in enumerate(frames):
        f, ds, i = fr["src"]
        if i is None:
            arr = _decode(ds, f)
            if arr.shape != (rows, cols):
                raise DicomSeriesError(
                    f"{f.name} is {arr.shape[0]}x{arr.shape[1]} but the series is {rows}x{cols}."
                )
            hu[k] = apply_modality_lut(arr, ds) if "ModalityLUTSequence" in ds else arr
            if "ModalityLUTSequence" not in ds:
                hu[k] *= float(fr["slope"])
                hu[k] += float(fr["inter"])
        else:
            if f not in decoded:
                decoded[f] = _decode(ds, f).reshape(-1, rows, cols)
            hu[k] = decoded[f][i]
            hu[k] *= float(fr["slope"])
            hu[k] += float(fr["inter"])

    affine = np.eye(4)
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos * ps[0]  # row index moves along the column direction
    affine[:3, 2] = row_cos * ps[1]
    affine[:3, 3] = [float(v) for v in frames[0]["ipp"]]
    if reorient:
        hu, affine = reorient_to_lps(hu, affine)
    spacing, origin, direction = split_affine(affine)
    meta = {
        "source": str(path_or_files) if isinstance(path_or_files, (str, os.PathLike)) else "files",
        "series_uid": series_uid,
        "study_uid": str(first_ds.get("StudyInstanceUID", "")),
        "modality": str(first_ds.get("Modality", "")),
        "kernel": str(first_ds.get("ConvolutionKernel", "")),
        "slice_thickness": float(frames[0]["thk"]) if frames[0]["thk"] else None,
        "num_files": len(items),
        "skipped_files": skipped,
        "sop_class_uid": str(first_ds.get("SOPClassUID", "")),
        "transfer_syntax": str(first_ds.file_meta.get("TransferSyntaxUID", ""))
        if hasattr(first_ds, "file_meta")
        else "",
    }
    return CTVolume(hu=hu, spacing=spacing, origin=origin, direction=direction, meta=meta)
