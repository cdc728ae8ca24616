"""Header side of DICOM reading: find the series, parse only the needed elements, list frames.

Each file's header is parsed once (``specific_tags``); ``PixelData`` stays on disk
(deferred) until `_dicom_pixels.decode_frames` reads it.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DicomSeriesError
from ._dicom_pixels import Frame
from ._dicom_raw import TAGS, RawHeader, read_raw_header

__all__ = [
    "check_decoder",
    "check_image",
    "frames_of",
    "list_files",
    "pick_series",
    "pydicom_module",
    "scan",
]

_SECONDARY_CAPTURE = (
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.7.1",
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
)
_CT_IMAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
)
_DICOM_EXTRA = "pip install 'ct3dzoo[dicom]'"


def pydicom_module() -> Any:
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"Reading DICOM needs pydicom: {_DICOM_EXTRA}") from e
    return pydicom


def list_files(path_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
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
    return _top(ds, attr, default)


def _top(ds: Any, attr: str, default: Any = None) -> Any:
    """Top-level element value; a decimal string (DS) not yet converted is parsed to
    float(s) directly, skipping pydicom's per-value ``DSfloat`` objects (same numbers,
    several times faster, and this runs for every slice)."""
    if isinstance(ds, RawHeader):
        return ds.get(attr, default)
    pydicom = pydicom_module()
    tag = pydicom.datadict.tag_for_keyword(attr)
    elem = ds.get_item(tag, keep_deferred=True) if tag is not None else None
    raw = getattr(elem, "value", None)
    if (
        isinstance(raw, bytes)
        and getattr(elem, "is_raw", False)
        and pydicom.datadict.dictionary_VR(tag) == "DS"
    ):
        vals = [float(v) for v in raw.split(b"\\") if v.strip(b" \0")]
        return default if not vals else vals[0] if len(vals) == 1 else vals
    return ds.get(attr, default)


def _shared(ds: Any) -> Any:
    sfg = ds.get("SharedFunctionalGroupsSequence")
    return sfg[0] if sfg else None


def check_image(ds: Any, f: Path) -> None:
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


def check_decoder(ds: Any, f: Path) -> None:
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


@functools.cache
def _tag_ints() -> list[int]:
    """`TAGS` as ints (pydicom matches ints faster than keywords)."""
    return [int(pydicom_module().tag.Tag(t)) for t in TAGS]


def _read_header(f: Path, pydicom: Any) -> tuple[Any, str | None]:
    """``(dataset, None)`` for an image, ``(None, None)`` for a non-image or non-DICOM file,
    ``(None, reason)`` for a DICOM file whose header cannot be read (e.g. truncated).

    Most files take the fast path (`_dicom_raw.read_raw_header`: the needed elements straight
    from the bytes); the others are parsed by pydicom, only `TAGS`, with ``PixelData`` left on
    disk until decoded (deferred read)."""
    raw = read_raw_header(f)
    if raw is not None:
        return raw, None
    try:
        ds = pydicom.dcmread(f, defer_size=1024, specific_tags=_tag_ints())
    except pydicom.errors.InvalidDicomError:
        return None, None
    except (OSError, EOFError, ValueError, struct.error) as e:
        return None, f"{type(e).__name__}: {e}"
    if "Rows" not in ds or "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = str(
            ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
        )
        if sop in _CT_IMAGE:
            return None, "a CT image without Rows/PixelData: the file is truncated or damaged"
        return None, None  # DICOMDIR, structured reports, presentation states...
    return ds, None


def scan(
    files: Sequence[Path], pydicom: Any
) -> tuple[dict[str, list[tuple[Path, Any]]], int, dict[Path, str]]:
    """Group the image files by ``SeriesInstanceUID``; count the skipped ones and return
    the DICOM files whose header could not be read, with the reason.

    Serial on purpose: header parsing is pure Python (holds the GIL), and threads measured
    slower here than one loop; the pixel reads are the part that runs in parallel.
    """
    series: dict[str, list[tuple[Path, Any]]] = {}
    skipped = 0
    broken: dict[Path, str] = {}
    for f in files:
        ds, why = _read_header(f, pydicom)
        if ds is None:
            skipped += 1
            if why is not None:
                broken[f] = why
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    return series, skipped, broken


def _floats(v: Any) -> np.ndarray | None:
    return None if v is None else np.asarray([float(x) for x in v], dtype=np.float64)


def _opt(v: Any) -> float | None:
    return float(v) if v not in (None, "") else None


def frames_of(f: Path, ds: Any) -> list[Frame]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    pffg = ds.get("PerFrameFunctionalGroupsSequence")
    if pffg is None and n == 1:
        items: list[tuple[int | None, Any]] = [(None, None)]
    elif pffg is None or len(pffg) != n:
        raise DicomSeriesError(
            f"{f.name} has {n} frames but no matching PerFrameFunctionalGroupsSequence; "
            "cannot place its frames in space."
        )
    else:
        items = list(enumerate(pffg))
    out = []
    for i, item in items:

        def g(seq: str, attr: str, default: Any = None, item: Any = item) -> Any:
            return _fg(ds, item, seq, attr, default)

        ipp = _floats(g("PlanePositionSequence", "ImagePositionPatient"))
        iop = _floats(g("PlaneOrientationSequence", "ImageOrientationPatient"))
        ps = g("PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise DicomSeriesError(
                f"{f.name} lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
                "slices cannot be ordered in space."
            )
        pvt = "PixelValueTransformationSequence"
        out.append(
            Frame(
                file=f, ds=ds, index=i, ipp=ipp, iop=iop,
                ps=(float(ps[0]), float(ps[1])),
                slope=float(g(pvt, "RescaleSlope", 1) or 1),
                inter=float(g(pvt, "RescaleIntercept", 0) or 0),
                thickness=_opt(g("PixelMeasuresSequence", "SliceThickness")),
                spacing_between=_opt(g("PixelMeasuresSequence", "SpacingBetweenSlices")),
            )
        )  # fmt: skip
    return out


def pick_series(series: dict[str, list[tuple[Path, Any]]], series_uid: str | None) -> str:
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
        return next(iter(series))
    if series_uid not in series:
        raise DicomSeriesError(
            f"series_uid {series_uid!r} not found; available: {', '.join(sorted(series))}"
        )
    return series_uid
