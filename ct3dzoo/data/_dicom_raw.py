"""Fast path of DICOM header reading: the few elements the reader needs, straight from bytes.

Most CT series are single-frame, uncompressed, little-endian Part-10 files. For those,
:func:`read_raw_header` walks the data elements with ``struct`` (no pydicom ``Dataset``,
no value conversion of elements the reader does not use) and stops at ``PixelData``,
remembering where the pixels start. Anything else returns ``None`` and the caller parses
the file with pydicom as before: other transfer syntaxes (compressed, big endian,
deflated), multi-frame or enhanced files (functional groups), a Modality LUT, pixel
layouts that need pydicom's decoder, character sets other than ASCII / Latin-1 / UTF-8
in a value we read, and every file that is not a clean Part-10 file (no preamble,
truncated, malformed). Values come out as pydicom gives them: numbers for binary and
decimal/integer-string VRs (a list when multi-valued), stripped strings, ``None`` for an
empty numeric value.

Element encoding follows DICOM PS3.5 section 7.1 (explicit and implicit VR, 2- and
4-byte lengths, undefined-length sequences and items delimited by (FFFE,E00D)/(FFFE,E0DD)).
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "TAGS",
    "RawHeader",
    "native_layout",
    "read_raw_header",
    "read_stored",
]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: explicit-VR VRs with a 2-byte reserved field and a 4-byte length (PS3.5 table 7.1-1)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: binary VRs: struct format of one value
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
#: text VRs whose value is never split at backslashes
_SINGLE_TEXT = frozenset({"LT", "ST", "UT", "UR"})
#: elements that mean "let pydicom do it": sequences the reader interprets, encapsulated data
_NEEDS_PYDICOM = (
    "ModalityLUTSequence",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)
#: The only elements the reader parses; everything else in a header is skipped unread.
TAGS = [
    "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesDescription", "Modality",
    "ConvolutionKernel", "GantryDetectorTilt", "SliceThickness", "SpacingBetweenSlices",
    "ImagePositionPatient", "ImageOrientationPatient", "SamplesPerPixel",
    "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns", "PixelSpacing",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "ModalityLUTSequence", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PixelData",
]  # fmt: skip
_HEAD_BYTES = 1 << 16  # first read; headers longer than this are read on


class _Fallback(Exception):
    """Internal: this file is not for the fast path."""


class RawHeader:
    """The needed elements of one file, parsed from its bytes; duck-types the part of a
    pydicom ``Dataset`` the reader uses (``get``, ``in``, attribute access, ``file_meta``).

    ``pixel_offset`` / ``pixel_length``: where the native pixel data lie in the file.
    """

    __slots__ = ("file_meta", "pixel_length", "pixel_offset", "values")

    def __init__(self, values: dict[str, Any], ts: str, offset: int, length: int) -> None:
        from pydicom.uid import UID

        self.values = values
        self.file_meta = {"TransferSyntaxUID": UID(ts)}
        self.pixel_offset = offset
        self.pixel_length = length

    def get(self, keyword: str, default: Any = None) -> Any:
        v = self.values.get(keyword)
        return default if v is None else v

    def __contains__(self, keyword: object) -> bool:
        return keyword in self.values

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.values[keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def read_pixels(self, f: Path) -> np.ndarray:
        """The stored values ``(Rows, Columns)``, read with one ``readinto`` (GIL released)."""
        layout = native_layout(self.get)
        assert layout is not None  # checked when the header was parsed
        return read_stored(f, self.pixel_offset, *layout)


def native_layout(get: Any) -> tuple[tuple[int, int], str] | None:
    """``((rows, cols), dtype)`` of a single-frame greyscale image whose stored values are read
    as they lie on disk (8/16/32-bit, signed only when it fills its container: narrower signed
    data needs sign extension), else None. ``get(keyword, default)``: a pydicom ``Dataset``'s
    or a `RawHeader`'s ``get``."""
    rows, cols = get("Rows", None), get("Columns", None)
    ba = int(get("BitsAllocated", 0) or 0)
    pr = int(get("PixelRepresentation", 0) or 0)
    if (
        rows is None
        or cols is None
        or int(get("NumberOfFrames", 1) or 1) != 1
        or int(get("SamplesPerPixel", 1) or 1) != 1
        or ba not in (8, 16, 32)
        or pr not in (0, 1)
        or (pr == 1 and int(get("BitsStored", ba) or ba) != ba)
    ):
        return None
    return (int(rows), int(cols)), f"<{'ui'[pr]}{ba // 8}"


def read_stored(f: Path, offset: int, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """``shape`` stored values of ``dtype`` at byte ``offset`` of ``f``, one ``readinto``
    (the GIL is released while it reads); a short file raises ``ValueError`` ("truncated")."""
    out = np.empty(shape, dtype)
    with open(f, "rb") as fh:
        fh.seek(offset)
        got = fh.readinto(memoryview(out).cast("B"))
    if got < out.nbytes:
        raise ValueError(
            f"truncated: {got} of the {out.nbytes} bytes of pixel data are in the file"
        )
    return out


@functools.cache
def _wanted() -> dict[int, tuple[str, str]]:
    """tag -> (keyword, dictionary VR) of the elements the reader needs (`TAGS` less
    PixelData), plus SpecificCharacterSet; VRs from pydicom's data dictionary."""
    from pydicom import datadict

    out = {}
    for kw in (*TAGS, "SpecificCharacterSet"):
        tag = datadict.tag_for_keyword(kw)
        if tag is not None and tag != _PIXEL_DATA:
            out[tag] = (kw, datadict.dictionary_VR(tag))
    return out


@functools.cache
def _fallback_tags() -> frozenset[int]:
    from pydicom import datadict

    return frozenset(datadict.tag_for_keyword(k) for k in _NEEDS_PYDICOM)


_TEXT_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _decode(raw: bytes, vr: str, charset: str) -> Any:
    """One element's value as pydicom converts it (for the VRs the reader needs)."""
    if vr in _BINARY:
        fmt = _BINARY[vr]
        n = len(raw) // struct.calcsize(fmt)
        if n == 0:
            return None
        vals = struct.unpack(f"<{n}{fmt}", raw[: n * struct.calcsize(fmt)])
        return vals[0] if n == 1 else list(vals)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        codec = _TEXT_CODECS.get(charset)
        if codec is None or codec == "ascii":
            raise _Fallback from None  # another character set: pydicom knows them all
        text = raw.decode(codec)
    if vr in ("DS", "IS"):
        parts = [p.strip(" \0") for p in text.split("\\")]
        parts = [p for p in parts if p]
        if not parts:
            return None
        nums = [float(p) if vr == "DS" else int(float(p)) for p in parts]
        return nums[0] if len(nums) == 1 else nums
    text = text.rstrip(" \0")
    if vr not in _SINGLE_TEXT and "\\" in text:
        return [p.strip(" \0") for p in text.split("\\")]
    return text.lstrip(" ") if vr not in _SINGLE_TEXT else text


class _Reader:
    """Walks the elements of a buffer; reads more of the file when the buffer runs out."""

    def __init__(self, fh: Any, explicit: bool) -> None:
        self.fh, self.explicit = fh, explicit
        self.buf = fh.read(_HEAD_BYTES)
        self.base = 0  # file offset of buf[0]

    def need(self, pos: int, n: int) -> None:
        """Make ``buf[pos - base : pos - base + n]`` available (reads on; EOF -> fallback)."""
        end = pos + n - self.base
        if end <= len(self.buf):
            return
        more = self.fh.read(max(end - len(self.buf), _HEAD_BYTES))
        if len(self.buf) + len(more) < end:
            raise _Fallback  # truncated: pydicom reports it
        self.buf += more

    def element(self, pos: int) -> tuple[int, str | None, int, int]:
        """``(tag, explicit VR or None, value length, value offset)`` of the element at ``pos``."""
        self.need(pos, 8)
        b = pos - self.base
        group, elem = struct.unpack_from("<HH", self.buf, b)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item / delimiters: never carry a VR
            return tag, None, struct.unpack_from("<I", self.buf, b + 4)[0], pos + 8
        if not self.explicit:
            return tag, None, struct.unpack_from("<I", self.buf, b + 4)[0], pos + 8
        vr = bytes(self.buf[b + 4 : b + 6])
        if vr in _LONG_VRS:
            self.need(pos, 12)
            return tag, vr.decode("ascii"), struct.unpack_from("<I", self.buf, b + 8)[0], pos + 12
        if not (vr.isalpha() and vr.isupper()):
            raise _Fallback  # not a VR: malformed or not what the syntax says
        return tag, vr.decode("ascii"), struct.unpack_from("<H", self.buf, b + 6)[0], pos + 8

    def skip_undefined(self, pos: int, end_tag: int) -> int:
        """Position after the delimiter ``end_tag`` of an undefined-length sequence or item."""
        while True:
            tag, _, length, at = self.element(pos)
            if tag == end_tag:
                return at
            if length == _UNDEFINED:
                pos = self.skip_undefined(at, _ITEM_END if tag == _ITEM else _SEQ_END)
            else:
                pos = at + length


def read_raw_header(f: Path) -> RawHeader | None:
    """The needed elements of ``f`` parsed from its bytes, or None when pydicom must read it."""
    try:
        with open(f, "rb") as fh:
            return _parse(fh)
    except (_Fallback, struct.error, ValueError):
        return None


def _parse(fh: Any) -> RawHeader | None:
    r = _Reader(fh, explicit=True)
    if r.buf[128:132] != b"DICM":
        return None
    # file meta (group 0002, always explicit VR little endian)
    pos, ts = 132, None
    while True:
        r.need(pos, 8)
        if struct.unpack_from("<H", r.buf, pos - r.base)[0] != 0x0002:
            break
        tag, _, length, at = r.element(pos)
        if length == _UNDEFINED:
            return None
        if tag == 0x00020010:
            r.need(at, length)
            ts = bytes(r.buf[at - r.base : at + length - r.base]).decode("ascii").strip(" \0")
        pos = at + length
    if ts not in (EXPLICIT_LE, IMPLICIT_LE):
        return None
    r.explicit = ts == EXPLICIT_LE
    wanted, fallback = _wanted(), _fallback_tags()
    values: dict[str, Any] = {}
    charset = ""
    while True:
        tag, vr, length, at = r.element(pos)
        if tag == _PIXEL_DATA:
            if length == _UNDEFINED:
                return None  # encapsulated pixel data
            break
        if tag in fallback:
            return None
        if tag > _PIXEL_DATA:
            return None  # no pixel data before the trailing elements
        if length == _UNDEFINED:
            if tag in wanted:
                return None
            pos = r.skip_undefined(at, _SEQ_END)
            continue
        if tag in wanted:
            kw, dict_vr = wanted[tag]
            vr = vr or dict_vr
            if vr == "US or SS":  # implicit VR: PS3.5 resolves it by PixelRepresentation
                vr = "SS" if values.get("PixelRepresentation") == 1 else "US"
            r.need(at, length)
            raw = bytes(r.buf[at - r.base : at + length - r.base])
            if kw == "SpecificCharacterSet":
                charset = raw.decode("ascii", "replace").split("\\")[-1].strip(" \0")
            else:
                if vr not in _BINARY and vr not in (
                    "DS",
                    "IS",
                    "CS",
                    "LO",
                    "SH",
                    "UI",
                    "PN",
                    "LT",
                    "ST",
                ):
                    return None  # an unexpected VR (e.g. UN): pydicom's rules
                values[kw] = _decode(raw, vr, charset)
        pos = at + length
    values["PixelData"] = None  # present; its bytes stay on disk
    if native_layout(lambda k, d=None: d if values.get(k) is None else values[k]) is None:
        return None
    return RawHeader(values, ts, at, length)
