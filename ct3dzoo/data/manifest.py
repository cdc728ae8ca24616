"""Manifests: a CSV (or list) of studies -> records; the reserved columns in one place."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RESERVED_COLUMNS", "read_manifest"]

#: Manifest columns that are never labels (documented here and in docs/preprocessing.md):
#: ``path`` (the study's file or folder), ``id`` (unique per volume), ``group``/``study``
#: (the study or patient key for grouped splits and study-level metrics) and ``series_uid``
#: (the SeriesInstanceUID to read from a folder holding several series). A ``mask_column``
#: given to `read_manifest`/`CTDataset` is reserved too.
RESERVED_COLUMNS = frozenset({"path", "id", "group", "study", "series_uid"})


def read_manifest(
    manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
    label_columns: Sequence[str] | None = None,
    *,
    mask_column: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalise a manifest to records ``{"path", "labels", "id", "group"}`` (+ ``"mask"``,
    ``"series_uid"``).

    CSV: column ``path`` (relative paths resolve against the CSV's folder), optional
    ``id``, ``group``/``study`` and ``series_uid``; every column not in `RESERVED_COLUMNS`
    (or those in ``label_columns``) is a label. Lists: tuples ``(path, label, ...)`` or
    dicts with the same keys as the CSV. With ``mask_column``, that column holds a mask
    file's path (resolved like ``path``), kept as the record's ``"mask"``, not a label.

    ``id`` defaults to the file name without extension (the folder name for DICOM) and
    names one volume: rows sharing an id must share ``path`` and ``series_uid`` (a repeated
    row, e.g. to oversample, is allowed); ``group`` defaults to ``id``.

    Raises:
        ValueError: no ``path`` column; a blank ``path`` (or mask) cell; a label that is
            not a number; one id naming two volumes; a reserved column asked for as a label.
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

    def where(i: int) -> str:  # a row as the user sees it
        return f"{manifest} line {i + 2}" if base is not None else f"manifest item {i}"

    meta = RESERVED_COLUMNS | ({mask_column} if mask_column is not None else set())
    if label_columns is None:
        label_columns = [k for k in rows[0] if k not in meta]
    elif set(label_columns) & meta:
        raise ValueError(
            f"label_columns {sorted(set(label_columns) & meta)} are reserved manifest columns "
            f"(never labels: {sorted(meta)}); rename the label column."
        )
    records = []
    seen: dict[str, tuple[Path, str | None, list[int]]] = {}
    for i, r in enumerate(rows):
        if _blank(r.get("path")):
            raise ValueError(
                f"{where(i)}: the 'path' cell is blank; give the study's file or folder "
                "(relative to the CSV's folder), or delete the row."
            )
        p = _resolve(r["path"], base)
        mask = None
        if mask_column is not None:
            if _blank(r.get(mask_column)):
                raise ValueError(f"{where(i)} ({r.get('path')}): no mask path in column "
                                 f"{mask_column!r}")  # fmt: skip
            mask = _resolve(r[mask_column], base)
        try:
            labels = [float(r[c]) if not _blank(r[c]) else float("nan") for c in label_columns]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{where(i)} ({r.get('path')}): bad label ({e})") from e
        default_id = p.stem.split(".")[0] if p.suffix else p.name
        rid = default_id if _blank(r.get("id")) else str(r["id"]).strip()
        group = str(r.get("group") or r.get("study") or rid)
        uid = None if _blank(r.get("series_uid")) else str(r["series_uid"]).strip()
        first = seen.setdefault(rid, (p, uid, []))
        first[2].append(i)
        if (first[0].resolve(), first[1]) != (p.resolve(), uid):
            raise ValueError(
                f"id {rid!r} names two volumes: {where(first[2][0])} ({first[0]}"
                + (f", series {first[1]}" if first[1] else "")
                + f") and {where(i)} ({p}"
                + (f", series {uid}" if uid else "")
                + "). Give every study its own id (an 'id' column; without one the id is the "
                "file or folder name); rows of one patient share a 'group' instead."
            )
        records.append({"path": p, "labels": labels, "id": rid, "group": group})
        if uid is not None:
            records[-1]["series_uid"] = uid
        if mask is not None:
            records[-1]["mask"] = mask
    return records, list(label_columns)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _resolve(path: Any, base: Path | None) -> Path:
    p = Path(str(path))
    return base / p if base is not None and not p.is_absolute() else p
