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
    "sop_class",
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


_DICOMDIR = "1.2.840.10008.1.3.10"


def _read_header(f: Path, pydicom: Any) -> tuple[Any, str | None]:
    """``(dataset, None)`` for an image or another DICOM object (report, presentation
    state...: no ``PixelData``), ``(None, None)`` for a non-DICOM file or a DICOMDIR,
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
        sop = sop_class(ds)
        if sop in _CT_IMAGE:
            return None, "a CT image without Rows/PixelData: the file is truncated or damaged"
        if sop == _DICOMDIR or not sop:
            return None, None
    return ds, None


def sop_class(ds: Any) -> str:
    """``SOPClassUID``, else the file meta's ``MediaStorageSOPClassUID``, else ``""``."""
    meta = getattr(ds, "file_meta", None)
    return str(
        ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
    )


def scan(
    files: Sequence[Path], pydicom: Any
) -> tuple[dict[str, list[tuple[Path, Any]]], int, dict[Path, str]]:
    """Group the DICOM objects (images and others) by ``SeriesInstanceUID``; count the
    skipped files (non-DICOM, DICOMDIR) and return the DICOM files whose header could not
    be read, with the reason.

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


def _as_list(v: Any) -> list[str]:
    """A possibly multi-valued element as strings (``None`` -> ``[]``)."""
    if v is None:
        return []
    return [str(v)] if isinstance(v, str) else [str(x) for x in v]


def _num_frames(items: list[tuple[Path, Any]]) -> int:
    return sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)


def _sop_name(sop: str) -> str:
    return str(pydicom_module().uid.UID(sop).name)


def _not_volume(ds: Any) -> str | None:
    """Why this object is not a slice of a CT volume, or None when it may be one."""
    sop = sop_class(ds)
    modality = str(ds.get("Modality", "") or "")
    if "Rows" not in ds or "PixelData" not in ds:
        name = _sop_name(sop) if sop else "unknown SOP class"
        return f"not an image ({name}, Modality {modality or '(missing)'})"
    if sop in _SECONDARY_CAPTURE:
        return (
            f"Secondary Capture image ({_sop_name(sop)}): a screenshot without HU calibration "
            "or patient geometry"
        )
    if "LOCALIZER" in (t.upper() for t in _as_list(ds.get("ImageType"))):
        return "localizer/scout (ImageType LOCALIZER)"
    if modality.upper() != "CT":
        return f"Modality {modality or '(missing)'!r}, not CT (ct3dzoo reads CT only)"
    return None


def _summary(uid: str, items: list[tuple[Path, Any]]) -> tuple[int, float | None, str]:
    """``(slices, SliceThickness mm or None, one listing line)`` of a candidate series."""
    ds = items[0][1]
    thk = _opt(_fg(ds, None, "PixelMeasuresSequence", "SliceThickness"))
    kernel = "\\".join(_as_list(ds.get("ConvolutionKernel"))) or "?"
    n = _num_frames(items)
    line = (
        f"  {uid or '(no SeriesInstanceUID)'}: {n} slice(s), thickness "
        f"{'?' if thk is None else f'{thk:g} mm'}, kernel {kernel}, "
        f"{str(ds.get('SeriesDescription', '') or '(no description)')!r}"
    )
    return n, thk, line


def pick_series(
    series: dict[str, list[tuple[Path, Any]]], series_uid: str | None, policy: str
) -> tuple[str, list[tuple[Path, Any]], list[str]]:
    """Choose the series to read among the DICOM objects `scan` grouped.

    Objects that are not slices of a CT volume (`_not_volume`: reports, secondary captures,
    localizers, other modalities) are set aside; single-slice series too when a multi-slice
    one remains. One candidate left: it. Several: ``policy`` ``"largest"`` (most slices,
    then thinnest), ``"thinnest"`` (smallest ``SliceThickness``, then most slices), or
    ``"error"`` (raise, listing each). ``series_uid`` overrides all of this.

    Returns ``(uid, its files, notes)``: one line per object set aside (empty when
    ``series_uid`` is given).
    """
    if series_uid is not None:
        if series_uid not in series:
            raise DicomSeriesError(
                f"series_uid {series_uid!r} not found; available: {', '.join(sorted(series))}"
            )
        items = series[series_uid]
        kept = [(f, ds) for f, ds in items if _not_volume(ds) is None]
        return series_uid, kept or items, []
    aside: dict[tuple[str, str], int] = {}
    candidates: dict[str, list[tuple[Path, Any]]] = {}
    for uid, items in series.items():
        for f, ds in items:
            why = _not_volume(ds)
            if why is None:
                candidates.setdefault(uid, []).append((f, ds))
            else:
                desc = str(ds.get("SeriesDescription", "") or "")
                key = (uid, why + (f", {desc!r}" if desc else ""))
                aside[key] = aside.get(key, 0) + 1
    pool = {u: it for u, it in candidates.items() if _num_frames(it) > 1} or candidates
    for uid, items in candidates.items():
        if uid not in pool:
            desc = str(items[0][1].get("SeriesDescription", "") or "")
            aside[(uid, "a single slice, not a volume" + (f", {desc!r}" if desc else ""))] = 1
    notes = [
        f"  {uid or '(no SeriesInstanceUID)'}: {n} file(s), {why}"
        for (uid, why), n in aside.items()
    ]
    if not pool:
        raise DicomSeriesError(
            f"No CT volume among the {sum(map(len, series.values()))} DICOM object(s) found:\n"
            + "\n".join(notes)
            + "\nPoint the reader at the folder or files of the original CT series."
        )
    if len(pool) == 1:
        uid = next(iter(pool))
        return uid, pool[uid], notes
    info = {u: _summary(u, it) for u, it in pool.items()}
    listing = "\n".join(line for _, _, line in info.values())
    if policy == "error":
        raise DicomSeriesError(
            f"{len(pool)} series found that are CT volumes; choose one with "
            "series='largest' (most slices), series='thinnest' (smallest SliceThickness) or "
            f"series_uid=:\n{listing}"
        )
    inf = float("inf")
    if policy == "largest":
        key = {u: (-n, inf if t is None else t) for u, (n, t, _) in info.items()}
    else:
        key = {u: (inf if t is None else t, -n) for u, (n, t, _) in info.items()}
    ranked = sorted(key, key=key.__getitem__)
    if key[ranked[0]] == key[ranked[1]]:
        raise DicomSeriesError(
            f"series={policy!r} cannot choose: {ranked[0]} and {ranked[1]} tie (same slice "
            f"count and thickness). Pass series_uid= to choose one of:\n{listing}"
        )
    notes += [f"{info[u][2]} (not chosen: series={policy!r})" for u in ranked[1:]]
    return ranked[0], pool[ranked[0]], notes
