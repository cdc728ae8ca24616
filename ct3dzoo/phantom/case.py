"""The phantom's records: :class:`PhantomCase`, :class:`Finding`, tissue codes and geometry.

Array axes ``(D, H, W)`` = ``(z, y, x)``, ``D`` inferior -> superior, ``H`` anterior ->
posterior, ``W`` patient right -> left (DICOM LPS, head-first supine); spacing in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "TISSUE_LABELS",
    "Finding",
    "FindingKind",
    "PhantomCase",
    "default_spacing",
    "origin_lps",
]

FindingKind = Literal["nodule", "embolus"]

#: Codes of :attr:`PhantomCase.tissue` (the dominant tissue of each voxel).
TISSUE_LABELS: dict[str, int] = {
    "air": 0,  # outside the body, trachea and bronchi
    "fat": 1,  # subcutaneous and pericardial fat
    "soft": 2,  # muscle, mediastinum, heart, abdomen, discs
    "lung": 3,  # lung parenchyma including its small (unlabelled) vessels
    "vessel": 4,  # contrast-filled aorta, pulmonary arteries, SVC
    "bone": 5,  # vertebrae, ribs, sternum
    "finding": 6,  # the nodule or the embolus
    "table": 7,  # patient table
}

FOV_MM = (240.0, 360.0, 360.0)  # default field of view (z, y, x) in mm
CHEST_HALF_Z = 120.0  # the chest model spans z in [-120, 120] mm (u in [0, 1])
HU_MIN, HU_MAX = -1024.0, 3071.0  # 12-bit CT range


@dataclass(frozen=True)
class Finding:
    """The positive finding of a phantom case.

    ``centre`` is the voxel index ``(d, h, w)`` of its centre (floats, sub-voxel), ``radius_mm``
    its radius in mm and ``hu`` its mean attenuation in HU.
    """

    kind: FindingKind
    centre: tuple[float, float, float]
    radius_mm: float
    hu: float


@dataclass
class PhantomCase:
    """One synthetic chest CT.

    Attributes:
        hu: float32 ``(D, H, W)`` volume in HU (integer-valued, clipped to [-1024, 3071]).
        spacing: voxel size ``(z, y, x)`` in mm.
        label: 1 if the case holds a finding, else 0.
        finding: the finding (``None`` when ``label == 0``).
        seed: the seed that reproduces this case.
        tissue: uint8 ``(D, H, W)`` map of the dominant tissue, codes in :data:`TISSUE_LABELS`.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    label: int
    finding: Finding | None
    seed: int
    tissue: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def mask(self) -> np.ndarray:
        """uint8 ``(D, H, W)`` lesion mask: 1 where the finding dominates the voxel, else 0.

        Aligned with :attr:`hu` (the voxels labelled ``TISSUE_LABELS["finding"]``, i.e. where
        the finding's partial-volume fraction exceeds 0.5); all zeros for a negative case.
        """
        return (self.tissue == TISSUE_LABELS["finding"]).astype(np.uint8)

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient (LPS) position ``(x, y, z)`` in mm of voxel ``(0, 0, 0)``; the FOV is centred."""
        return origin_lps(self.shape, self.spacing)


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Spacing ``(z, y, x)`` in mm that puts a 240 x 360 x 360 mm chest field of view on ``shape``."""
    return tuple(float(f) / int(n) for f, n in zip(FOV_MM, shape))  # type: ignore[return-value]


def origin_lps(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """LPS position ``(x, y, z)`` in mm of voxel ``(0, 0, 0)`` of a grid centred on the FOV."""
    d, h, w = shape
    sz, sy, sx = spacing
    return (-(w - 1) * sx / 2.0, -(h - 1) * sy / 2.0, -(d - 1) * sz / 2.0)
