"""`make_phantom_dataset`: many phantom cases on disk, as real DICOM series and NIfTI files."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .._io.atomic import atomic_path
from .anatomy import make_chest_phantom
from .case import FindingKind
from .writers import require, write_dicom_series, write_mask_nifti, write_nifti

__all__ = ["make_phantom_dataset"]

#: process start method for ``workers > 1``: fork, on Linux only (elsewhere the cases are
#: written serially)
_FORK = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


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
    workers: int = 1,
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

    ``workers > 1`` draws and writes the cases in that many processes (forked; Linux only,
    serial elsewhere); the files are the same as with one.

    Every file and DICOM series folder is written atomically (``ct3dzoo._io.atomic``), without
    fsync: the cases are regenerable from ``seed``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
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
    jobs = [
        (out, i, int(seed), case_seeds[i], bool(labels[i]), formats, masks, shape, spacing,
         finding_kind, phantom_kwargs)
        for i in range(n)
    ]  # fmt: skip
    if workers > 1 and n > 1 and _FORK is not None:
        # fork: the workers draw with numpy and write files only (no torch, no threads of
        # the parent are used); spawn would re-import the caller's __main__
        with ProcessPoolExecutor(min(workers, n), mp_context=_FORK) as ex:
            done = list(ex.map(_write_case, jobs, chunksize=max(1, n // (4 * workers))))
    else:
        done = [_write_case(job) for job in jobs]
    cases = []
    for case_rows, record in done:
        for fmt, row in case_rows.items():
            rows[fmt].append(row)
        cases.append(record)

    for fmt in formats:
        _write_csv(out / f"manifest_{fmt}.csv", rows[fmt])
    _write_csv(out / "manifest.csv", rows[formats[0]])
    with atomic_path(out / "cases.json", fsync=False) as tmp:
        tmp.write_text(json.dumps(cases, indent=1))
    return out / "manifest.csv"


def _write_case(job: tuple[Any, ...]) -> tuple[dict[str, tuple[str, int, str]], dict[str, Any]]:
    """Draw case ``i`` and write its files; returns its manifest rows and cases.json record."""
    out, i, seed, case_seed, label, formats, masks, shape, spacing, finding_kind, kw = job
    case = make_chest_phantom(
        shape=shape, spacing=spacing, seed=case_seed, finding=label, finding_kind=finding_kind,
        **kw,
    )  # fmt: skip
    name = f"case_{i:04d}"
    pid = f"ct3dzoo-phantom-{seed}-{i:04d}"
    rows = {}
    if "dicom" in formats:
        final = out / "dicom" / name
        with atomic_path(final, fsync=False) as tmp:
            write_dicom_series(case, tmp, patient_id=pid, uid_key=(seed, i, case.seed))
            if final.exists():  # a folder is replaced only by renaming onto an empty one
                shutil.rmtree(final)
        rows["dicom"] = (f"dicom/{name}", case.label, pid)
    if "nifti" in formats:
        write_nifti(case, out / "nifti" / f"{name}.nii.gz")
        rows["nifti"] = (f"nifti/{name}.nii.gz", case.label, pid)
    mask = f"masks/{name}.nii.gz" if masks else None
    if mask is not None:
        write_mask_nifti(case, out / mask)
    f = case.finding
    record = {
        "case": name,
        "group": pid,
        "seed": case.seed,
        "label": case.label,
        "shape": list(case.shape),
        "spacing": list(case.spacing),
        "finding": None
        if f is None
        else {"kind": f.kind, "centre": list(f.centre), "radius_mm": f.radius_mm, "hu": f.hu},
        "mask": mask,
    }
    return rows, record


def _write_csv(path: Path, rows: list[tuple[str, int, str]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "label", "group"])
    w.writerows(rows)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(buf.getvalue(), newline="")
