"""The fast DICOM header path (`ct3dzoo.data._dicom_raw`) gives what pydicom gives, and hands
every file it does not fully understand back to pydicom.

Files are written with pydicom in the encodings the fast path reads (explicit and implicit
VR little endian, undefined-length sequences before the pixels, signed padding values,
multi-valued strings, UTF-8) and in ones it must not (compressed, enhanced multi-frame,
Modality LUT, other character sets, no preamble, truncated); the RSNA demo slices are used
too when ../shared/data is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.multival import MultiValue  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from ct3dzoo.data import _dicom_headers, read_dicom_series  # noqa: E402
from ct3dzoo.data._dicom_raw import TAGS, RawHeader, read_raw_header  # noqa: E402

DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-pe-demo"
needs_demo = pytest.mark.skipif(not DEMO.is_dir(), reason="../shared/data/rsna-pe-demo absent")
SERIES = "1.2.826.0.1.3680043.8.498.4242"


def make_slice(k: int, *, signed: bool = True, **extra: object) -> Dataset:
    """One 24 x 20 CT slice at z = 2.5 k mm (explicit VR little endian)."""
    rng = np.random.default_rng(k)
    raw = rng.integers(-1100, 1500, (24, 20)).astype(np.int16 if signed else np.uint16)
    if not signed:
        raw = rng.integers(0, 2500, (24, 20)).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = SERIES
    ds.SeriesDescription = "CTA chest  "
    ds.ConvolutionKernel = ["B30f", "SOFT"]
    ds.SliceThickness = "2.5"
    ds.ImagePositionPatient = [-120.5, -99.25, 2.5 * k - 300.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024" if not signed else "0"
    ds.RescaleType = "HU"
    ds.InstanceNumber = k + 1
    ds.set_pixel_data(raw, "MONOCHROME2", 16)
    for key, v in extra.items():
        setattr(ds, key, v)
    return ds


def save(ds: Dataset, path: Path, *, implicit: bool = False) -> Path:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def plain(v: object) -> object:
    """pydicom's value types as plain Python (MultiValue -> list, DSfloat -> float, UID -> str)."""
    if isinstance(v, (MultiValue, list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, float):
        return float(v)
    if isinstance(v, int):
        return int(v)
    if isinstance(v, str):
        return str(v)
    return v


def assert_same_as_pydicom(f: Path) -> RawHeader:
    raw = read_raw_header(f)
    assert isinstance(raw, RawHeader), f"{f.name} should take the fast path"
    ds = pydicom.dcmread(f, defer_size=1024, specific_tags=_dicom_headers._tag_ints())
    for kw in TAGS:
        if kw == "PixelData":
            assert "PixelData" in raw
            continue
        want = _dicom_headers._top(ds, kw)
        assert (kw in raw) == (kw in ds), kw
        got = raw.get(kw)
        if want in ("", None):
            assert got in ("", None), (kw, got, want)
        else:
            assert plain(got) == plain(want), (kw, got, want)
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if elem.value_tell is not None:
        assert raw.pixel_offset == elem.value_tell
    return raw


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_values_match_pydicom(tmp_path: Path, implicit: bool) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = generate_uid()
    nested = Dataset()
    nested.CodeValue = "X"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds = make_slice(
        3,
        PixelPaddingValue=-2000,  # signed: 'US or SS' resolved by PixelRepresentation
        GantryDetectorTilt="0.0",
        SpacingBetweenSlices="2.5",
        ReferencedImageSequence=Sequence([item, item]),  # undefined length, before the pixels
    )
    ds["ReferencedImageSequence"].is_undefined_length = True
    for it in ds.ReferencedImageSequence:
        it.is_undefined_length_sequence_item = True
    raw = assert_same_as_pydicom(save(ds, tmp_path / "a.dcm", implicit=implicit))
    assert raw.get("PixelPaddingValue") == -2000
    assert raw.get("ConvolutionKernel") == ["B30f", "SOFT"]
    assert raw.get("ImagePositionPatient") == [-120.5, -99.25, -292.5]
    assert raw.get("SeriesDescription") == "CTA chest"
    assert raw.file_meta["TransferSyntaxUID"] == (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )
    stored = raw.read_pixels(tmp_path / "a.dcm")
    np.testing.assert_array_equal(stored, ds.pixel_array)


def test_utf8_and_latin1_strings_match_pydicom(tmp_path: Path) -> None:
    for i, (charset, text) in enumerate(
        [("ISO_IR 192", "Thorax \u2013 Lunge"), ("ISO_IR 100", "Thorax Lünge")]
    ):
        ds = make_slice(i, SpecificCharacterSet=charset, SeriesDescription=text)
        raw = assert_same_as_pydicom(save(ds, tmp_path / f"{i}.dcm"))
        assert raw.get("SeriesDescription") == text


@needs_demo
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the demo's anonymised UIDs
def test_rsna_demo_slices_match_pydicom() -> None:
    files = sorted(DEMO.glob("*.dcm"))
    assert files
    for f in files:
        raw = assert_same_as_pydicom(f)
        np.testing.assert_array_equal(raw.read_pixels(f), pydicom.dcmread(f).pixel_array)


def test_files_for_pydicom_are_handed_back(tmp_path: Path) -> None:
    cases = {}
    ds = make_slice(0)
    ds.compress(RLELossless)
    cases["compressed (RLE)"] = ds
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.LUTData = np.arange(4, dtype=np.uint16).tobytes()
    cases["Modality LUT"] = make_slice(1, ModalityLUTSequence=Sequence([lut]))
    cases["other character set"] = make_slice(
        2, SpecificCharacterSet="ISO_IR 144", SeriesDescription="Грудь"
    )
    cases["signed 12 bits in 16"] = make_slice(3, BitsStored=12, HighBit=11)
    mf = make_slice(4, NumberOfFrames=1)
    mf.PerFrameFunctionalGroupsSequence = Sequence([Dataset()])
    cases["functional groups"] = mf
    for name, d in cases.items():
        f = tmp_path / f"{name}.dcm"
        d.save_as(f, enforce_file_format=True)
        assert read_raw_header(f) is None, name
    # not Part 10 (no preamble), truncated header, not DICOM at all
    bare = make_slice(5)
    bare.save_as(tmp_path / "bare.dcm", enforce_file_format=False)
    data = (tmp_path / "bare.dcm").read_bytes()
    assert data[128:132] != b"DICM"
    assert read_raw_header(tmp_path / "bare.dcm") is None
    whole = save(make_slice(6), tmp_path / "whole.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:300])
    assert read_raw_header(tmp_path / "cut.dcm") is None
    (tmp_path / "notes.txt").write_text("not dicom\n" * 40)
    assert read_raw_header(tmp_path / "notes.txt") is None


def _read_both(folder: Path, monkeypatch: pytest.MonkeyPatch):
    fast = read_dicom_series(folder)
    with monkeypatch.context() as m:
        m.setattr(_dicom_headers, "read_raw_header", lambda f: None)
        slow = read_dicom_series(folder)
    return fast, slow


def test_series_reads_the_same_with_and_without_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    for k in range(8):  # a mix: fast explicit, fast implicit, pydicom (RLE), unsigned+intercept
        ds = make_slice(k, signed=k % 3 != 0, PixelPaddingValue=0 if k % 3 == 0 else -2000)
        if k == 5:
            ds.compress(RLELossless)
            ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        else:
            save(ds, folder / f"{k}.dcm", implicit=k % 2 == 1)
    fast, slow = _read_both(folder, monkeypatch)
    np.testing.assert_array_equal(fast.hu, slow.hu)
    for attr in ("spacing", "origin", "direction"):
        np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr))
    assert fast.meta.keys() == slow.meta.keys()
    for key, v in fast.meta.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, slow.meta[key])
        else:
            assert v == slow.meta[key], key
    assert fast.meta["padding_mask"].any()


@needs_demo
def test_rsna_series_reads_the_same_with_and_without_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = _read_both(DEMO, monkeypatch)
    np.testing.assert_array_equal(fast.hu, slow.hu)
    np.testing.assert_array_equal(fast.origin, slow.origin)
    assert fast.meta["transfer_syntax"] == slow.meta["transfer_syntax"]


def test_truncated_pixels_still_named(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for k in range(4):
        save(make_slice(k), folder / f"{k}.dcm")
    data = (folder / "3.dcm").read_bytes()
    (folder / "3.dcm").write_bytes(data[:-100])
    assert isinstance(read_raw_header(folder / "3.dcm"), RawHeader)  # header intact
    with pytest.warns(UserWarning, match=r"3\.dcm.*truncated"):
        vol = read_dicom_series(folder, strict=False)
    assert vol.hu.shape[0] == 3
