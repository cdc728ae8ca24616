"""Every exception and warning a ct3dzoo user may catch.

>>> from ct3dzoo.errors import WeightsUnavailableError

This module imports nothing from ct3dzoo, so every other module can import it.
"""

from __future__ import annotations

__all__ = [
    "CT3DZooError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "CorruptVolumeError",
    "DicomSeriesError",
    "GantryTiltWarning",
    "HashMismatchError",
    "MissingFilesError",
    "NonUniformSpacingWarning",
    "NotACheckpointError",
    "OutputClobbersInputError",
    "PreprocessingError",
    "SaliencyWarning",
    "SingleClassValidationWarning",
    "SkippedFileWarning",
    "SkippedSeriesWarning",
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


class SaliencyWarning(UserWarning):
    """A saliency map is constant (e.g. no voxel has positive evidence for the target), so it
    shows nothing; the message names the volumes."""


class SkippedFileWarning(UserWarning):
    """A file of a series could not be read (truncated or corrupt) and was left out; the
    message names it."""


class SkippedSeriesWarning(UserWarning):
    """A study folder held DICOM objects besides the CT series read (localizers, secondary
    captures, reports, single slices, other series); the message names them."""


class MissingFilesError(CT3DZooError, FileNotFoundError):
    """Files a manifest names do not exist (or were not prepared); ``.paths`` lists them all."""

    def __init__(self, message: str, paths: list[str]) -> None:
        super().__init__(message)
        self.paths = list(paths)


class CorruptVolumeError(CT3DZooError, ValueError):
    """A volume file (NIfTI, ``.npy``/``.npz``) is truncated or not what its name says; the
    message names the file."""


class PreprocessingError(CT3DZooError, ValueError):
    """A preprocessing pipeline that cannot be used as asked: incomplete (a user callable
    that a saved model cannot rebuild), unreadable, or inconsistent with the model."""


class CorruptCheckpointError(NotACheckpointError):
    """A weights file (``model.safetensors``, ``.pth``) is truncated or corrupt; the message
    names the file and says how to get a good copy (re-save or re-download)."""


class OutputClobbersInputError(CT3DZooError, ValueError):
    """An output path is (or would overwrite) one of the command's inputs; refused before
    anything is written. ``.option`` is the output option, ``.path`` the file at risk."""

    def __init__(self, message: str, *, option: str, path: str) -> None:
        super().__init__(message)
        self.option = option
        self.path = path
