"""Pixel side of DICOM reading: parallel decode into one array, pixel padding, gantry tilt.

Decoding runs in a thread pool: the file reads (deferred ``PixelData``) and the numpy
rescale into the preallocated output release the GIL, so the work scales with cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._dicom_raw import EXPLICIT_LE, IMPLICIT_LE, RawHeader, native_layout, read_stored

__all__ = [
    "AIR_HU",
    "Frame",
    "correct_tilt",
    "decode_frames",
    "default_workers",
    "fill_padding",
    "in_plane_offsets",
    "regularise",
]

#: HU written where a voxel holds no measured data (pixel padding, outside a tilted slab).
AIR_HU = -1024.0


@dataclass
class Frame:
    """One image plane of a series: its header dataset and where it lies."""

    file: Path
    ds: Any  # RawHeader (fast path) or pydicom Dataset (header; PixelData deferred)
    index: int | None  # frame number inside a multi-frame file, None for a classic slice
    ipp: np.ndarray  # ImagePositionPatient (3,)
    iop: np.ndarray  # ImageOrientationPatient (6,)
    ps: tuple[float, float]  # PixelSpacing (row spacing, column spacing) mm
    slope: float
    inter: float
    thickness: float | None
    spacing_between: float | None


def default_workers() -> int:
    """Threads for decoding: the usable cores, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        n = os.cpu_count() or 1
    return max(1, min(16, n))


def _padding_range(ds: Any) -> tuple[float, float] | None:
    """Stored-value range that is padding (PS3.3 C.7.5.1.1.2), or None."""
    if "PixelPaddingValue" not in ds:
        return None
    v = float(ds.PixelPaddingValue)
    lim = ds.get("PixelPaddingRangeLimit")
    if lim is None:
        return v, v
    lim = float(lim)
    return min(v, lim), max(v, lim)


def _read_native(ds: Any, f: Path) -> np.ndarray | None:
    """Stored values of a single-frame uncompressed little-endian slice parsed by pydicom,
    read with one ``readinto`` at the offset pydicom found; None when pydicom's own decoder
    must do it (other syntaxes, and the layouts `_dicom_raw.native_layout` refuses)."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    layout = native_layout(ds.get) if ts in (EXPLICIT_LE, IMPLICIT_LE) else None
    if layout is None:
        return None
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    value, tell = getattr(elem, "value", None), getattr(elem, "value_tell", None)
    if value is None:
        return None if tell is None else read_stored(f, tell, *layout)
    out = np.empty(*layout)
    data = memoryview(value).cast("B")
    got = min(len(data), out.nbytes)
    memoryview(out).cast("B")[:got] = data[:got]
    if got < out.nbytes:
        raise ValueError(
            f"truncated: {got} of the {out.nbytes} bytes of pixel data are in the file"
        )
    return out


def decode_frames(
    frames: Sequence[Frame], rows: int, cols: int, *, workers: int
) -> tuple[np.ndarray, np.ndarray | None, dict[Path, str]]:
    """Decode every frame to HU into one preallocated ``(N, rows, cols)`` float32 array.

    Returns ``(hu, padding, failed)``: ``padding`` is a bool mask of pixel-padding voxels
    (None when no frame declares padding); ``failed`` maps each file that could not be
    decoded to the reason (its slots in ``hu`` are undefined).
    """
    from pydicom.pixels import apply_modality_lut, pixel_array

    hu = np.empty((len(frames), rows, cols), dtype=np.float32)
    has_pad = any("PixelPaddingValue" in fr.ds for fr in frames)
    pad = np.zeros(hu.shape, dtype=bool) if has_pad else None
    by_file: dict[Path, list[int]] = {}
    for k, fr in enumerate(frames):
        by_file.setdefault(fr.file, []).append(k)
    failed: dict[Path, str] = {}

    def work(f: Path) -> None:
        ks = by_file[f]
        ds = frames[ks[0]].ds
        try:
            if isinstance(ds, RawHeader):
                arr = ds.read_pixels(f)
            else:
                arr = _read_native(ds, f)
                if arr is None:
                    arr = pixel_array(ds)
        except Exception as e:  # any decoder failure: name the file
            failed[f] = f"{type(e).__name__}: {e}"
            return
        finally:
            if not isinstance(ds, RawHeader) and "PixelData" in ds:
                del ds.PixelData  # do not keep the raw bytes alive
        arr = arr.reshape(-1, *arr.shape[-2:])
        if arr.shape[1:] != (rows, cols):
            failed[f] = f"{arr.shape[1]}x{arr.shape[2]} pixels but the series is {rows}x{cols}"
            return
        rng = _padding_range(ds)
        for k in ks:
            fr = frames[k]
            src = arr[fr.index or 0]
            if pad is not None and rng is not None:
                np.logical_and(src >= rng[0], src <= rng[1], out=pad[k])
            if fr.index is None and "ModalityLUTSequence" in ds:
                hu[k] = apply_modality_lut(src, ds)
            elif fr.slope == 1.0:  # one pass over the output (the usual CT case)
                np.add(src, np.float32(fr.inter), out=hu[k], dtype=np.float32)
            else:
                np.multiply(src, np.float32(fr.slope), out=hu[k], dtype=np.float32)
                hu[k] += np.float32(fr.inter)

    if workers <= 1 or len(by_file) == 1:
        for f in by_file:
            work(f)
    else:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            list(ex.map(work, by_file))
    return hu, pad, failed


def fill_padding(hu: np.ndarray, pad: np.ndarray) -> float:
    """Set padding voxels to air: -1024 HU, or the lowest real value when that is higher.

    Returns the HU written. Works in place.
    """
    real = hu[~pad]
    fill = max(AIR_HU, float(real.min())) if real.size else AIR_HU
    hu[pad] = fill
    return fill


def in_plane_offsets(
    ipp: np.ndarray, normal: np.ndarray, row_cos: np.ndarray, col_cos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (mm) of each slice origin from slice 0, along the column and row directions.

    Zero for a regular stack; a gantry-tilted series steps its origins along the table
    axis, which is not the slice normal, so they drift in-plane slice by slice.
    """
    d = ipp - ipp[0]
    inplane = d - np.outer(d @ normal, normal)
    return inplane @ col_cos, inplane @ row_cos


def _shift_axis(x: np.ndarray, s: float, axis: int, fill: float) -> np.ndarray:
    """``out[i] = x[i + s]`` along ``axis`` by linear interpolation; ``fill`` outside."""
    n = x.shape[axis]
    i0 = int(np.floor(s))
    f = s - i0
    if abs(f) < 1e-6:
        f = 0.0
    src = np.arange(n) + i0
    lo = np.take(x, np.clip(src, 0, n - 1), axis=axis).astype(np.float32)
    if f:
        hi = np.take(x, np.clip(src + 1, 0, n - 1), axis=axis)
        lo *= np.float32(1.0 - f)
        lo += np.float32(f) * hi
    bad = (src < 0) | (src > n - 1) | ((src + 1 > n - 1) & (f > 0))
    idx = [slice(None)] * x.ndim
    idx[axis] = bad
    lo[tuple(idx)] = fill
    return lo


def correct_tilt(
    hu: np.ndarray,
    pad: np.ndarray | None,
    off_col: np.ndarray,
    off_row: np.ndarray,
    ps: tuple[float, float],
    fill: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) stack onto the grid of slice 0 along the normal.

    Slice ``k`` of the output lies in the same plane as input slice ``k`` but with the
    in-plane origin of slice 0, so the volume is a regular grid: output pixel ``(k, r, c)``
    is input ``(k, r - off_col[k] / ps[0], c - off_row[k] / ps[1])`` (bilinear), and
    pixels whose source falls outside the acquired slice get ``fill``.

    Returns ``(hu, not_measured)``: the corrected volume and a bool mask of voxels that
    are padding or outside the acquired slab.
    """
    out = np.empty_like(hu)
    mask = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        sr, sc = -off_col[k] / ps[0], -off_row[k] / ps[1]
        src = hu[k]
        m = pad[k].astype(np.float32) if pad is not None else np.zeros(src.shape, np.float32)
        # out-of-slab pixels get mask weight 1 through the fill
        out[k] = _shift_axis(_shift_axis(src, sr, 0, fill), sc, 1, fill)
        mk = _shift_axis(_shift_axis(m, sr, 0, 1.0), sc, 1, 1.0)
        mask[k] = mk > 0
    return out, mask


def regularise(
    hu: np.ndarray, pad: np.ndarray | None, pos: np.ndarray, step: float, far: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample slices at ascending positions ``pos`` (mm along the normal) onto the planes
    ``pos[0] + j * step``, the last one within ``step / 2`` of ``pos[-1]`` (a plane past it
    copies the last slice), linearly between the two nearest slices.

    Returns ``(hu, mask, nearest)``: the ``(n, H, W)`` float32 volume; a bool mask of voxels
    on planes farther than ``far`` mm from every acquired slice, or that draw on a padding
    voxel of ``pad``; and for each plane the index of the nearest acquired slice.
    A plane within 1e-6 of a slice copies it exactly.
    """
    n = int(np.round((pos[-1] - pos[0]) / step)) + 1
    z = pos[0] + step * np.arange(n)
    k = np.clip(np.searchsorted(pos, z, side="right") - 1, 0, len(pos) - 2)
    w = np.clip((z - pos[k]) / (pos[k + 1] - pos[k]), 0.0, 1.0)
    w[w < 1e-6], w[w > 1 - 1e-6] = 0.0, 1.0
    far_plane = np.minimum(z - pos[k], pos[k + 1] - z) > far
    out = np.empty((n, *hu.shape[1:]), dtype=np.float32)
    mask = np.zeros(out.shape, dtype=bool)
    for j in range(n):
        a, b, wj = k[j], k[j] + 1, float(w[j])
        if wj == 0.0 or wj == 1.0:
            out[j] = hu[a if wj == 0.0 else b]
        else:
            np.multiply(hu[a], np.float32(1.0 - wj), out=out[j])
            out[j] += np.float32(wj) * hu[b]
        if far_plane[j]:
            mask[j] = True
        elif pad is not None:
            if wj < 1.0:
                mask[j] |= pad[a]
            if wj > 0.0:
                mask[j] |= pad[b]
    return out, mask, np.where(w <= 0.5, k, k + 1)
