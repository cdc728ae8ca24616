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
from .geometry import resample
from .io import read_volume
from .volume import CTVolume
from .windows import WindowSpec, stack_windows

__all__ = ["CTDataset", "read_manifest"]

_META_COLS = {"path", "id", "group", "study"}


def read_manifest(
    manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
    label_columns: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise a manifest to records ``{"path", "labels", "id", "group"}``.

    CSV: column ``path`` (relative paths resolve against the CSV's folder), optional
    ``id`` and ``group``/``study``, every other column (or ``label_columns``) is a label.
    Lists: tuples ``(path, label, ...)`` or dicts with the same keys as the CSV.
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
    if label_columns is None:
        label_columns = [k for k in rows[0] if k not in _META_COLS]
    records = []
    for i, r in enumerate(rows):
        p = Path(str(r["path"]))
        if base is not None and not p.is_absolute():
            p = base / p
        try:
            labels = [
                float(r[c]) if r[c] not in ("", None) else float("nan") for c in label_columns
            ]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"Manifest row {i} ({r.get('path')}): bad label ({e})") from e
        rid = str(r.get("id") or (p.stem.split(".")[0] if p.suffix else p.name))
        group = str(r.get("group") or r.get("study") or rid)
        records.append({"path": p, "labels": labels, "id": rid, "group": group})
    return records, list(label_columns)


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

    Items: ``{"image": float32 (C, D, H, W) in [0, 1], "label": float32 (num_labels,),
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
    ) -> None:
        self.records, self.label_columns = read_manifest(manifest, label_columns)
        self.transform, self.windows = transform, windows
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.spacing, self.shape, self.reader = spacing, shape, reader

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
        return self._load(self.records[index]["path"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        hu, _ = self._load(rec["path"])
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
        return {
            "image": x.float().contiguous(),
            "label": torch.tensor(rec["labels"], dtype=torch.float32),
            "id": rec["id"],
            "group": rec["group"],
        }


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through ``write(fh)`` atomically (safe with many workers filling one cache)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None)))}
