"""Every exception and warning a ct3dzoo user may catch.

>>> from ct3dzoo.errors import WeightsUnavailableError

This module imports nothing from ct3dzoo, so every other module can import it.
"""

from __future__ import annotations

__all__ = [
    "CT3DZooError",
    "CheckpointMismatchError",
    "CorruptVolumeError",
    "DicomSeriesError",
    "GantryTiltWarning",
    "HashMismatchError",
    "MissingFilesError",
    "NonUniformSpacingWarning",
    "NotACheckpointError",
    "SingleClassValidationWarning",
    "SkippedFileWarning",
    "UnsafeCheckpointError",
    "UnverifiedWeightsWarning",
    "WeightsUnavailableError",
]


class CT3DZooError(Exception):
    """Base class of ct3dzoo's own errors."""


class WeightsUnavailableError(CT3DZooError, RuntimeError):
    """Pretrained weights could not be obtained (offline, no network, no direct URL).

    The message says where to get the file and how to hand it over
    (``ct3dzoo fetch ARCH.TAG --from FILE``)."""


class HashMismatchError(CT3DZooError, RuntimeError):
    """A downloaded or given file does not have the expected sha256."""


class UnsafeCheckpointError(CT3DZooError, RuntimeError):
    """The file needs full unpickling (arbitrary code) to load; ct3dzoo refuses it."""


class NotACheckpointError(CT3DZooError, ValueError):
    """The file is not a checkpoint at all (e.g. a NIfTI volume passed as ``pretrain=``)."""


class CheckpointMismatchError(CT3DZooError, ValueError):
    """A checkpoint's keys or shapes do not fit the architecture it is loaded into."""


class DicomSeriesError(CT3DZooError, ValueError):
    """The files do not form one readable CT series (message says why and what to do)."""


class NonUniformSpacingWarning(UserWarning):
    """Slice positions are not equally spaced (missing slices or variable spacing)."""


class UnverifiedWeightsWarning(UserWarning):
    """Weights were cached without a published hash to check them against."""


class SingleClassValidationWarning(UserWarning):
    """The validation labels hold one class only (for some or all labels): AUROC and AUPRC
    are undefined there; with none defined, ``finetune`` monitors the validation loss."""


class GantryTiltWarning(UserWarning):
    """A gantry-tilted DICOM series was resampled onto a regular grid along the slice normal."""


class SkippedFileWarning(UserWarning):
    """A file of a series could not be read (truncated or corrupt) and was left out; the
    message names it."""


class MissingFilesError(CT3DZooError, FileNotFoundError):
    """Files a manifest names do not exist (or were not prepared); ``.paths`` lists them all."""

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = list(paths)


class CorruptVolumeError(CT3DZooError, ValueError):
    """A volume file (NIfTI, ``.npy``/``.npz``) is truncated or not what its name says; the
    message names the file."""
