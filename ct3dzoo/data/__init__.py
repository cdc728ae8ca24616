"""CT volumes in: readers, HU windows, resampling, slice windows, transforms, datasets.

Needs only numpy and torch; pydicom (``ct3dzoo[dicom]``), nibabel (``ct3dzoo[nifti]``) are
imported when a reader needs them. Array convention for every reader: ``hu[d, h, w]`` in
HU, ``D`` inferior -> superior, ``H`` anterior -> posterior, ``W`` patient right -> left
(see `CTVolume`).
"""

from . import transforms
from .contract import InputTransform
from .dataset import CTDataset
from .dicom import (
    DicomSeriesError,
    GantryTiltWarning,
    NonUniformSpacingWarning,
    SkippedFileWarning,
    read_dicom_series,
)
from .geometry import resample, slice_window_bounds, slice_windows
from .io import read_nifti, read_volume
from .manifest import RESERVED_COLUMNS, read_manifest
from .model_input import resolve_preprocessing, study_input, transforms_for
from .pipeline import PREPROCESSOR_NAME, Preprocessing, PreprocessingError
from .preparation import PrepareResult, prepare
from .rsna import RSNA_PE_STUDY_LABELS, rsna_pe_manifests
from .slices import SliceLabels, read_slice_labels, resample_slice_labels
from .volume import CTVolume
from .windows import WINDOWS, apply_window, resolve_window, stack_windows

__all__ = [
    "PREPROCESSOR_NAME",
    "RESERVED_COLUMNS",
    "RSNA_PE_STUDY_LABELS",
    "WINDOWS",
    "CTDataset",
    "CTVolume",
    "DicomSeriesError",
    "GantryTiltWarning",
    "InputTransform",
    "NonUniformSpacingWarning",
    "PrepareResult",
    "Preprocessing",
    "PreprocessingError",
    "SkippedFileWarning",
    "SliceLabels",
    "apply_window",
    "prepare",
    "read_dicom_series",
    "read_manifest",
    "read_nifti",
    "read_slice_labels",
    "read_volume",
    "resample",
    "resample_slice_labels",
    "resolve_preprocessing",
    "resolve_window",
    "rsna_pe_manifests",
    "slice_window_bounds",
    "slice_windows",
    "stack_windows",
    "study_input",
    "transforms",
    "transforms_for",
]
