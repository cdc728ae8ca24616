"""`make_phantom_dataset`: many phantom cases on disk, as real DICOM series and NIfTI files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io.atomic import atomic_path
from .anatomy import make_chest_phantom
from .case import FindingKind
from .writers import require, write_dicom_series, write_mask_nifti, write_nifti

__all__ = ["make_phantom_dataset"]


def make_phantom_dataset(
    out_dir: str | os.PathLike[str],
    *,
    n: int,
    seed: int,
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] | None = None,
    formats: Sequence[str] = ("dicom", "nifti"),
    positive_fraction: float = 0.5,
    finding_kind: FindingKind = "nodule",
    masks: bool = True,
    **phantom_kwargs: Any,
) -> Path:
    """Write ``n`` phantom cases under ``out_dir``; returns the path of ``manifest.csv``.

    Layout::

        out_dir/dicom/case_0000/IM0001.dcm ...   (one DICOM series per case)
        out_dir/nifti/case_0000.nii.gz ...
        out_dir/masks/case_0000.nii.gz ...       (lesion masks, when ``masks``)
        out_dir/manifest.csv                     (rows for the first format in ``formats``)
        out_dir/manifest_dicom.csv, manifest_nifti.csv   (one per format)
        out_dir/cases.json                       (seed, label, finding and mask of each case)

    Manifests have the columns ``path,label,group``; ``path`` is relative to the manifest's
    folder (POSIX separators), ``group`` is the case's PatientID (one patient per case), for
    grouped splits. Exactly ``round(n * positive_fraction)`` cases are positive, in an order
    shuffled by ``seed``; each case's phantom seed is derived from ``seed`` and its index.

    With ``masks`` (needs nibabel), each case's lesion mask
    (:attr:`~ct3dzoo.phantom.PhantomCase.mask`: uint8, 1 inside the nodule or embolus, all
    zeros for a negative case) is written as a NIfTI on the volume's grid, and its path
    (relative to ``out_dir``) is the ``"mask"`` entry of the case in ``cases.json``; read
    with ``ct3dzoo.data.read_volume`` it is ``(D, H, W)``, aligned with the volume read from
    either format. ``phantom_kwargs`` go to :func:`~ct3dzoo.phantom.make_chest_phantom`.

    Every file and DICOM series folder is written atomically (``ct3dzoo._io.atomic``), without
    fsync: the cases are regenerable from ``seed``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    formats = tuple(formats)
    if not formats or any(f not in ("dicom", "nifti") for f in formats):
        raise ValueError(f"formats must be a non-empty subset of ('dicom', 'nifti'), got {formats}")
    if "dicom" in formats:
        require("pydicom", "dicom")
    if "nifti" in formats or masks:
        require("nibabel", "nifti")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    ss = np.random.SeedSequence([int(seed), 0xDA7A])
    n_pos = round(n * positive_fraction)
    labels = np.zeros(n, dtype=int)
    labels[:n_pos] = 1
    labels = np.random.default_rng(ss).permutation(labels)
    case_seeds = [int(c.generate_state(1, np.uint32)[0]) for c in ss.spawn(n)]

    rows: dict[str, list[tuple[str, int, str]]] = {f: [] for f in formats}
    cases = []
    for i in range(n):
        case = make_chest_phantom(
            shape=shape,
            spacing=spacing,
            seed=case_seeds[i],
            finding=bool(labels[i]),
            finding_kind=finding_kind,
            **phantom_kwargs,
        )
        name = f"case_{i:04d}"
        pid = f"ct3dzoo-phantom-{int(seed)}-{i:04d}"
        if "dicom" in formats:
            final = out / "dicom" / name
            with atomic_path(final, fsync=False) as tmp:
                write_dicom_series(case, tmp, patient_id=pid, uid_key=(int(seed), i, case.seed))
                if final.exists():  # a folder is replaced only by renaming onto an empty one
                    shutil.rmtree(final)
            rows["dicom"].append((f"dicom/{name}", case.label, pid))
        if "nifti" in formats:
            write_nifti(case, out / "nifti" / f"{name}.nii.gz")
            rows["nifti"].append((f"nifti/{name}.nii.gz", case.label, pid))
        mask = f"masks/{name}.nii.gz" if masks else None
        if mask is not None:
            write_mask_nifti(case, out / mask)
        f = case.finding
        cases.append(
            {
                "case": name,
                "group": pid,
                "seed": case.seed,
                "label": case.label,
                "shape": list(case.shape),
                "spacing": list(case.spacing),
                "finding": None
                if f is None
                else {
                    "kind": f.kind,
                    "centre": list(f.centre),
                    "radius_mm": f.radius_mm,
                    "hu": f.hu,
                },
                "mask": mask,
            }
        )

    for fmt in formats:
        _write_csv(out / f"manifest_{fmt}.csv", rows[fmt])
    _write_csv(out / "manifest.csv", rows[formats[0]])
    with atomic_path(out / "cases.json", fsync=False) as tmp:
        tmp.write_text(json.dumps(cases, indent=1))
    return out / "manifest.csv"


def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "label", "group"])
    w.writerows(rows)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(buf.getvalue(), newline="")
