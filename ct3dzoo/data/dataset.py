"""`CTDataset`: a manifest of CT volumes + labels -> model-ready tensors, with a disk cache."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io.atomic import atomic_path
from ..errors import MissingFilesError
from .cache import failed_studies, read_options, study_dir
from .geometry import resample
from .io import read_volume
from .volume import CTVolume
from .windows import WindowSpec, stack_windows

__all__ = ["CTDataset", "read_manifest"]

_META_COLS = {"path", "id", "group", "study"}


def read_manifest(
    manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
    label_columns: Sequence[str] | None = None,
    *,
    mask_column: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise a manifest to records ``{"path", "labels", "id", "group"}`` (+ ``"mask"``).

    CSV: column ``path`` (relative paths resolve against the CSV's folder), optional
    ``id`` and ``group``/``study``, every other column (or ``label_columns``) is a label.
    Lists: tuples ``(path, label, ...)`` or dicts with the same keys as the CSV. With
    ``mask_column``, that column holds a mask file's path (resolved like ``path``), kept as
    the record's ``"mask"`` and not a label.
    """
    rows: list[dict[str, Any]]
    base: Path | None = None
    if isinstance(manifest, (str, os.PathLike)):
        base = Path(manifest).resolve().parent
        with open(manifest, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(
                    f"{manifest}: the CSV needs a 'path' column (got {reader.fieldnames})"
                )
            rows = list(reader)
    else:
        rows = []
        for r in manifest:
            if isinstance(r, Mapping):
                rows.append(dict(r))
            else:
                r = list(r)
                rows.append({"path": r[0], **{f"label{i}": v for i, v in enumerate(r[1:])}})
    if not rows:
        raise ValueError("The manifest is empty")
    meta = _META_COLS | ({mask_column} if mask_column is not None else set())
    if label_columns is None:
        label_columns = [k for k in rows[0] if k not in meta]
    records = []
    for i, r in enumerate(rows):
        p = _resolve(r["path"], base)
        mask = None
        if mask_column is not None:
            if r.get(mask_column) in ("", None):
                raise ValueError(
                    f"Manifest row {i} ({r.get('path')}): no mask path in column {mask_column!r}"
                )
            mask = _resolve(r[mask_column], base)
        try:
            labels = [
                float(r[c]) if r[c] not in ("", None) else float("nan") for c in label_columns
            ]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"Manifest row {i} ({r.get('path')}): bad label ({e})") from e
        rid = str(r.get("id") or (p.stem.split(".")[0] if p.suffix else p.name))
        group = str(r.get("group") or r.get("study") or rid)
        records.append({"path": p, "labels": labels, "id": rid, "group": group})
        if mask is not None:
            records[-1]["mask"] = mask
    return records, list(label_columns)


def _resolve(path: Any, base: Path | None) -> Path:
    p = Path(str(path))
    return base / p if base is not None and not p.is_absolute() else p


class CTDataset(Dataset):
    """CT volumes from a manifest, windowed to [0, 1].

    Per item: read HU (`read_volume`), optionally resample (``spacing``/``shape``), and
    cache as ``.npy`` under ``cache_dir`` (memory-mapped on later reads, so epochs after
    the first never decode DICOM); then ``transform`` on the HU tensor ``(1, D, H, W)``;
    then the ``windows`` (``None`` = leave to the transform).

    Args:
        manifest: CSV path or list of ``(path, label, ...)`` tuples / dicts (`read_manifest`).
        transform: callable on the float32 HU tensor ``(1, D, H, W)`` (e.g. a
            `transforms.Compose`; fills in HU).
        windows: preset, ``(centre, width)``, or a list of them (one channel each).
        cache_dir: folder for the preprocessed-volume cache (created if missing).
        spacing, shape: resample to this spacing (mm) or shape before caching.
        label_columns: which CSV columns are labels (default: all but path/id/group/study).
        prepared: a folder filled by `prepare` (``ct3dzoo prepare``) for this manifest:
            items are read from its int16 HU arrays, memory-mapped, nothing is decoded;
            ``spacing``/``shape``/``cache_dir`` must then be left unset.
        mask_column: a manifest column holding a 0/1 mask file per row (for segmentation):
            read with `read_volume`, resampled with the volume (``spacing``/``shape``,
            nearest neighbour), it becomes the item's ``"label"``, float32 ``(1, D, H, W)``
            on the image's grid. A random ``transform`` would move the image but not the
            mask, so ``transform`` (and ``prepared``) cannot be combined with it.
        in_memory: keep each volume in RAM once read and resampled (before ``transform``,
            so random transforms stay random): later epochs skip the reader and the disk
            cache. Per process: DataLoader workers each fill their own copy (use
            ``num_workers=0`` or persistent workers); for data that fit in memory.

    Raises:
        MissingFilesError: manifest rows whose file/folder does not exist (all listed),
            or, with ``prepared``, studies absent from the cache (with their errors).

    Items: ``{"image": float32 (C, D, H, W) in [0, 1], "label": float32 (num_labels,)
    (the mask (1, D, H, W) with ``mask_column``),
    "id": str, "group": str}`` (``group`` = study key, defaults to ``id``).
    """

    def __init__(
        self,
        manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        windows: Sequence[WindowSpec] | WindowSpec | None = "pe",
        cache_dir: str | os.PathLike | None = None,
        spacing: Sequence[float] | float | None = None,
        shape: Sequence[int] | None = None,
        label_columns: Sequence[str] | None = None,
        reader: Callable[[Path], CTVolume] = read_volume,
        prepared: str | os.PathLike | None = None,
        mask_column: str | None = None,
        in_memory: bool = False,
    ) -> None:
        if mask_column is not None and (transform is not None or prepared is not None):
            raise ValueError(
                "mask_column= reads masks on the source grid and moves them with spacing=/"
                "shape= only: a transform= or prepared= volume would no longer align with "
                "its mask. Resample with spacing=/shape= instead, or build (image, mask) "
                "pairs yourself and transform both alike"
            )
        self.mask_column = mask_column
        self.records, self.label_columns = read_manifest(
            manifest, label_columns, mask_column=mask_column
        )
        self.transform, self.windows = transform, windows
        self.prepared = Path(prepared) if prepared is not None else None
        if self.prepared is not None:
            if spacing is not None or shape is not None or cache_dir is not None:
                raise ValueError(
                    "prepared= holds volumes already resampled by `prepare`; leave spacing=, "
                    "shape= and cache_dir= unset (pass them to prepare instead)."
                )
            self._check_prepared()
        elif reader is read_volume:
            paths = [r[k] for r in self.records for k in ("path", "mask") if k in r]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise MissingFilesError(
                    f"{len(missing)} manifest path(s) do not exist:\n  " + "\n  ".join(missing),
                    missing,
                )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.spacing, self.shape, self.reader = spacing, shape, reader
        self.in_memory = bool(in_memory)
        self._held: dict[int, tuple[np.ndarray, tuple[float, ...]]] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_labels(self) -> int:
        return len(self.label_columns)

    def _key(self, path: Path) -> str:
        st = path.stat()
        ident = json.dumps(
            [str(path.resolve()), st.st_mtime_ns, st.st_size, self.spacing, self.shape],
            default=list,
        )
        return hashlib.sha1(ident.encode()).hexdigest()[:20]

    def _check_prepared(self) -> None:
        assert self.prepared is not None
        if read_options(self.prepared) is None:
            raise FileNotFoundError(
                f"{self.prepared} is not a prepared folder (no prepare.json); run "
                "`ct3dzoo prepare MANIFEST --out DIR` first."
            )
        absent = [r for r in self.records if not (study_dir(self.prepared, r) / "hu.npy").is_file()]
        if absent:
            errors = failed_studies(self.prepared)
            lines = []
            for r in absent:
                err = errors.get(study_dir(self.prepared, r).name)
                lines.append(
                    f"{r['id']} ({r['path']}): " + (err["error"] if err else "not prepared yet")
                )
            raise MissingFilesError(
                f"{len(absent)} study(ies) of the manifest are not in {self.prepared}:\n  "
                + "\n  ".join(lines),
                [str(r["path"]) for r in absent],
            )

    def _load_prepared(self, rec: dict[str, Any]) -> tuple[np.ndarray, tuple[float, ...]]:
        assert self.prepared is not None
        d = study_dir(self.prepared, rec)
        spacing = tuple(json.loads((d / "meta.json").read_text())["spacing"])
        return np.load(d / "hu.npy", mmap_mode="r"), spacing

    def _load(self, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
        def fresh() -> CTVolume:
            vol = self.reader(path)
            if self.spacing is not None or self.shape is not None:
                vol = resample(vol, spacing=self.spacing, shape=self.shape)
            return vol

        if self.cache_dir is None:
            v = fresh()
            return v.hu, v.spacing
        key = self._key(path)
        npy, side = self.cache_dir / f"{key}.npy", self.cache_dir / f"{key}.json"
        if npy.exists() and side.exists():
            return np.load(npy, mmap_mode="r"), tuple(json.loads(side.read_text())["spacing"])
        v = fresh()
        _atomic_write(npy, lambda fh: np.save(fh, v.hu))
        info = {"spacing": list(v.spacing), "source": str(path), "meta": _jsonable(v.meta)}
        _atomic_write(side, lambda fh: fh.write(json.dumps(info).encode()))
        return v.hu, v.spacing

    def load_hu(self, index: int) -> tuple[np.ndarray, tuple[float, ...]]:
        """HU array ``(D, H, W)`` (memory-mapped when cached) and its spacing."""
        if index in self._held:
            return self._held[index]
        if self.prepared is not None:
            out = self._load_prepared(self.records[index])
        else:
            out = self._load(self.records[index]["path"])
        if self.in_memory:
            self._held[index] = (np.array(out[0]), out[1])  # a copy: no open memory map
        return out

    def load_mask(self, index: int) -> torch.Tensor:
        """The mask of item ``index``: float32 ``(1, D, H, W)`` of 0/1, on the grid of the
        item's image (needs ``mask_column``)."""
        if self.mask_column is None:
            raise ValueError("this CTDataset has no masks: pass mask_column= (a manifest column)")
        vol = self.reader(self.records[index]["mask"])
        if self.spacing is not None or self.shape is not None:
            vol = resample(vol, spacing=self.spacing, shape=self.shape, mode="nearest")
        return torch.from_numpy(np.asarray(vol.hu, dtype=np.float32) > 0.5).float()[None]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        hu, _ = self.load_hu(index)
        x = torch.from_numpy(np.array(hu, dtype=np.float32)).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        if self.windows is not None:
            if x.shape[0] != 1:
                raise ValueError(
                    f"windows= needs one HU channel after the transform, got {x.shape[0]}; "
                    "pass windows=None when the transform windows itself."
                )
            x = stack_windows(x[0], self.windows)
        label = torch.tensor(rec["labels"], dtype=torch.float32)
        if self.mask_column is not None:
            label = self.load_mask(index)
            if label.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"{rec['mask']}: mask shape {tuple(label.shape[1:])} differs from the image "
                    f"shape {tuple(x.shape[1:])} of {rec['path']}; masks must be on the "
                    "volume's grid"
                )
        return {
            "image": x.float().contiguous(),
            "label": label,
            "id": rec["id"],
            "group": rec["group"],
        }


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through ``write(fh)`` atomically (safe with many workers filling one cache)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None)))}
