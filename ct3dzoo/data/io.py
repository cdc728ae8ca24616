"""`read_volume`: DICOM folders/files, NIfTI (``.nii``/``.nii.gz``) and ``.npy``/``.npz``."""

from __future__ import annotations

import contextlib
import gzip
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._io.atomic import atomic_write_bytes
from ..errors import CorruptVolumeError
from .dicom import read_dicom_series
from .volume import CTVolume, reorient_to_lps, split_affine

__all__ = ["read_nifti", "read_volume", "write_nifti"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_nifti(path: str | os.PathLike, *, reorient: bool = True) -> CTVolume:
    """Read a NIfTI CT volume (nibabel, extra ``ct3dzoo[nifti]``).

    The NIfTI affine (RAS) is converted to LPS and the array reoriented to the `CTVolume`
    convention (D inferior -> superior, H anterior -> posterior, W right -> left), the
    same as `read_dicom_series`. ``scl_slope``/``scl_inter`` are applied; values are
    assumed to be HU.
    """
    try:
        import nibabel as nib
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("Reading NIfTI needs nibabel: pip install 'ct3dzoo[nifti]'") from e
    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
            raise ValueError(
                f"{path}: expected a 3-D NIfTI volume, got shape {shape}; split 4-D series first."
            )
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3])
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError) as e:
        raise CorruptVolumeError(
            f"{path} cannot be read as NIfTI ({type(e).__name__}: {e}): the file is truncated "
            "or not a NIfTI volume. Re-export or copy it again."
        ) from e
    affine = _RAS_TO_LPS @ img.affine
    if reorient:
        data, affine = reorient_to_lps(data, affine)
    spacing, origin, direction = split_affine(affine)
    meta = {"source": str(path), "modality": "CT", "format": "nifti"}
    return CTVolume(hu=data, spacing=spacing, origin=origin, direction=direction, meta=meta)


def write_nifti(
    array: np.ndarray, like: CTVolume, path: str | os.PathLike, *, dtype: Any = np.float32
) -> Path:
    """Write ``array`` ``(D, H, W)`` on ``like``'s voxel grid as NIfTI (written atomically),
    with ``like``'s geometry (LPS -> RAS affine), e.g. a saliency map over its study: it
    overlays the study in any viewer, and `read_nifti` gives the grid back."""
    try:
        import nibabel as nib
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("Writing NIfTI needs nibabel: pip install 'ct3dzoo[nifti]'") from e
    arr = np.asarray(array, dtype=dtype)
    if arr.shape != like.shape:
        raise ValueError(f"array {arr.shape} is not on the volume's grid {like.shape}")
    img = nib.Nifti1Image(arr, _RAS_TO_LPS @ like.affine)
    img.header.set_xyzt_units("mm")
    data = img.to_bytes()
    return atomic_write_bytes(path, gzip.compress(data) if str(path).endswith(".gz") else data)


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turn numpy's low-level read errors into `CorruptVolumeError` naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CorruptVolumeError(
            f"{path} cannot be read as {path.suffix} ({type(e).__name__}: {e}): the file is "
            "truncated or not a numpy array file. Save it again (CTVolume.save_npz)."
        ) from e


def _read_numpy(path: Path, spacing: Sequence[float] | None) -> CTVolume:
    meta: dict[str, Any] = {"source": str(path), "format": path.suffix.lstrip(".")}
    kw: dict[str, Any] = {}
    stored = None
    if path.suffix == ".npz":
        with _readable(path), np.load(path) as z:
            key = next((k for k in ("hu", "image", "volume", "arr_0") if k in z), None)
            files = sorted(z.files)
            if key is not None:
                kw["hu"] = z[key]
                for k in ("origin", "direction"):
                    if k in z:
                        kw[k] = z[k]
                stored = z.get("spacing", None)
        if key is None:
            raise ValueError(f"{path}: no 'hu' array inside (keys: {files})")
    else:
        with _readable(path):
            kw["hu"] = np.load(path, mmap_mode="r")
    sp = spacing if spacing is not None else stored
    if sp is None:
        raise ValueError(
            f"{path} stores no voxel spacing; pass spacing=(z, y, x) in mm, or save an .npz "
            "with a 'spacing' array (CTVolume.save_npz does)."
        )
    return CTVolume(spacing=tuple(float(s) for s in sp), meta=meta, **kw)


def read_volume(
    path: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    spacing: Sequence[float] | None = None,
    series_uid: str | None = None,
    series: Literal["error", "largest", "thinnest"] = "error",
    gaps: Literal["regularise", "stack", "error"] = "regularise",
    tilt: Literal["resample", "error"] = "resample",
    strict: bool = False,
) -> CTVolume:
    """Read a CT volume from any supported source.

    Args:
        path: a DICOM folder, a DICOM file or list of files, ``.nii``/``.nii.gz``, or
            ``.npy``/``.npz`` holding ``(D, H, W)`` HU in the `CTVolume` orientation.
        spacing: ``(z, y, x)`` mm for ``.npy`` (required) or to override ``.npz``.
        series_uid, series, gaps, tilt, strict: passed to `read_dicom_series` (which series
            of a study folder; irregular slice gaps; gantry tilt; raise instead of warn).

    Returns:
        `CTVolume` (float32 HU, D inferior -> superior).
    """
    dicom = {"series_uid": series_uid, "series": series, "gaps": gaps, "tilt": tilt,
             "strict": strict}  # fmt: skip
    if not isinstance(path, (str, os.PathLike)):
        return read_dicom_series(path, **dicom)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"No such file or folder: {p}")
    name = p.name.lower()
    if p.is_dir():
        return read_dicom_series(p, **dicom)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(p)
    if name.endswith((".npy", ".npz")):
        return _read_numpy(p, spacing)
    return read_dicom_series(p, **dicom)
