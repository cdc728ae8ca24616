"""Synthetic chest-CT phantom: procedural, deterministic by seed, in Hounsfield units.

:func:`make_chest_phantom` draws one contrast-enhanced chest CT (a CT pulmonary angiogram)
as a float32 ``(D, H, W)`` volume in HU, with an optional binary *finding*: a spherical lung
nodule or a filling defect (embolus) in a contrast-filled pulmonary artery, and its lesion
mask (:attr:`PhantomCase.mask`). :func:`make_phantom_dataset` writes many cases as real DICOM
series and/or NIfTI files (plus masks) and a ``manifest.csv``, so that demos and tests
exercise the real readers of :mod:`ct3dzoo.data`.

Conventions (the same as DICOM LPS, patient head-first supine):

* array axes ``(D, H, W)`` = ``(z, y, x)``; ``spacing`` is ``(z, y, x)`` in mm;
* ``D`` runs **inferior -> superior** (index 0 is the lung bases, ``D - 1`` the apices);
* ``H`` (rows) runs anterior -> posterior, ``W`` (columns) runs patient right -> left,
  i.e. the usual radiological display: the patient's right lung is on the image's left.

Modules: ``case`` (records, tissue codes, geometry), ``anatomy`` (the chest), ``findings``
(nodule, embolus), ``writers`` (DICOM, NIfTI), ``dataset`` (many cases on disk). The phantom
sits above :mod:`ct3dzoo.data`; the readers never import it.
"""

from .anatomy import make_chest_phantom
from .case import TISSUE_LABELS, Finding, FindingKind, PhantomCase, default_spacing
from .dataset import make_phantom_dataset
from .writers import nifti_affine, write_dicom_series, write_mask_nifti, write_nifti

__all__ = [
    "TISSUE_LABELS",
    "Finding",
    "FindingKind",
    "PhantomCase",
    "default_spacing",
    "make_chest_phantom",
    "make_phantom_dataset",
    "nifti_affine",
    "write_dicom_series",
    "write_mask_nifti",
    "write_nifti",
]
