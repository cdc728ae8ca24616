"""`CTVolume` and the array-orientation convention shared by every reader.

Convention (DICOM, NIfTI and ``.npz`` alike): ``hu[d, h, w]`` with
``D`` running inferior -> superior, ``H`` anterior -> posterior and ``W`` patient right ->
left, i.e. the array axes point along +z, +y, +x of the DICOM patient frame (LPS). This is
the usual radiological display of axial slices: ``hu[d]`` is an axial slice seen from the
feet, patient's right on the image's left. Readers reorient to the closest such axes
(flips and axis permutations only, no interpolation), so oblique acquisitions keep their
tilt in ``direction``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CTVolume", "reorient_to_lps"]


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units.

    Attributes:
        hu: float32 array ``(D, H, W)`` in HU; ``D`` inferior -> superior, ``H`` anterior ->
            posterior, ``W`` right -> left (see module docstring).
        spacing: voxel size ``(z, y, x)`` = ``(D, H, W)`` in mm.
        origin: LPS position in mm of the centre of voxel ``hu[0, 0, 0]``.
        direction: ``(3, 3)`` array; column ``k`` is the LPS unit vector of array axis ``k``
            (``D, H, W``). Identity-like ``[[0, 0, 1], [0, 1, 0], [1, 0, 0]]`` for a
            straight axial scan.
        meta: free-form metadata (``series_uid``, ``modality``, ``kernel``, ``source``...).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(
        default_factory=lambda: np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    )
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hu = np.asarray(self.hu, dtype=np.float32)
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (D, H, W); got shape {self.hu.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` map from array index ``(d, h, w, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def save_npz(self, path: str) -> None:
        """Write ``hu``, ``spacing``, ``origin`` and ``direction`` to ``path`` (``.npz``)."""
        np.savez(
            path,
            hu=self.hu,
            spacing=np.asarray(self.spacing),
            origin=np.asarray(self.origin),
            direction=self.direction,
        )

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        return f"CTVolume(shape={self.shape}, spacing=({sp}) mm, meta_keys={sorted(self.meta)})"


def reorient_to_lps(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute ``arr`` so its axes point along +z (S), +y (P), +x (L) of LPS.

    Args:
        arr: 3-D array in any axis order.
        affine: ``(4, 4)`` map from ``arr`` indices to LPS mm.

    Returns:
        ``(arr', affine')`` with ``arr'`` C-contiguous and ``affine'`` its index->LPS map.
    """
    affine = np.asarray(affine, dtype=np.float64)
    cols = affine[:3, :3]
    # Greedy assignment of array axes to world axes by largest |cosine| (handles oblique).
    norm = cols / np.linalg.norm(cols, axis=0, keepdims=True)
    world_of_axis = [-1, -1, -1]
    score = np.abs(norm).copy()
    for _ in range(3):
        w, a = np.unravel_index(np.argmax(score), score.shape)
        world_of_axis[a] = int(w)
        score[w, :] = -1
        score[:, a] = -1
    out = arr
    origin = affine[:3, 3].copy()
    cols = cols.copy()
    for a in range(3):
        if norm[world_of_axis[a], a] < 0:
            out = np.flip(out, axis=a)
            origin = origin + cols[:, a] * (arr.shape[a] - 1)
            cols[:, a] = -cols[:, a]
    # array axis order wanted: world z, y, x  -> world index 2, 1, 0
    perm = [world_of_axis.index(w) for w in (2, 1, 0)]
    out = np.ascontiguousarray(np.transpose(out, perm))
    new = np.eye(4)
    new[:3, :3] = cols[:, perm]
    new[:3, 3] = origin
    return out, new


def split_affine(
    affine: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """``affine`` -> ``(spacing, origin, direction)`` in the `CTVolume` sense."""
    cols = affine[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    return (
        tuple(float(s) for s in spacing),  # type: ignore[return-value]
        tuple(float(o) for o in affine[:3, 3]),  # type: ignore[return-value]
        cols / spacing[None, :],
    )
