"""CT volumes in: readers, HU windows, resampling, slice windows, transforms, datasets.

Needs only numpy and torch; pydicom (``ct3dzoo[dicom]``), nibabel (``ct3dzoo[nifti]``) are
imported when a reader needs them. Array convention for every reader: ``hu[d, h, w]`` in
HU, ``D`` inferior -> superior, ``H`` anterior -> posterior, ``W`` patient right -> left
(see `CTVolume`).
"""

from . import transforms
from .dataset import CTDataset, read_manifest
from .dicom import (
    DicomSeriesError,
    GantryTiltWarning,
    NonUniformSpacingWarning,
    SkippedFileWarning,
    read_dicom_series,
)
from .geometry import resample, slice_window_bounds, slice_windows
from .io import read_nifti, read_volume
from .preparation import PrepareResult, prepare
from .volume import CTVolume
from .windows import WINDOWS, apply_window, resolve_window, stack_windows

__all__ = [
    "WINDOWS",
    "CTDataset",
    "CTVolume",
    "DicomSeriesError",
    "GantryTiltWarning",
    "NonUniformSpacingWarning",
    "PrepareResult",
    "SkippedFileWarning",
    "apply_window",
    "prepare",
    "read_dicom_series",
    "read_manifest",
    "read_nifti",
    "read_volume",
    "resample",
    "resolve_window",
    "slice_window_bounds",
    "slice_windows",
    "stack_windows",
    "transforms",
]
