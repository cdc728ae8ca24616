"""Layout of a prepared-dataset folder (written by `prepare`, read by `CTDataset`).

::

    OUT/prepare.json               options every study was prepared with (spacing, size)
    OUT/studies/<key>/hu.npy       int16 HU (D, H, W), memory-mappable
    OUT/studies/<key>/meta.json    spacing, origin, direction, shape, source, reader meta
    OUT/studies/<key>/padding_mask.npy   bool (D, H, W), only when the series had padding
    OUT/errors.jsonl               one line per study that failed: key, id, path, error

A study folder appears in one atomic rename, so it is either complete or absent; ``<key>``
depends only on the manifest row (id and resolved path), so shards of one manifest fill
one folder without coordination.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PREPARE_VERSION", "failed_studies", "read_options", "study_dir", "study_key"]

#: Bumped when the on-disk layout changes.
PREPARE_VERSION = 1


def study_key(record: Mapping[str, Any]) -> str:
    """Folder name of a manifest record: its id (made file-safe) + a hash of its path."""
    path = str(Path(record["path"]).resolve())
    digest = hashlib.sha1(f"{record['id']}\0{path}".encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(record["id"]))[:80].lstrip(".") or "study"
    return f"{safe}-{digest}"


def study_dir(out: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """``OUT/studies/<key>``."""
    return Path(out) / "studies" / study_key(record)


def read_options(out: str | os.PathLike) -> dict[str, Any] | None:
    """The ``prepare.json`` of a prepared folder, or None when there is none."""
    p = Path(out) / "prepare.json"
    return json.loads(p.read_text()) if p.is_file() else None


def failed_studies(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``errors.jsonl`` as ``{key: last error record}``."""
    p = Path(out) / "errors.jsonl"
    errors: dict[str, dict[str, Any]] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a killed process
                    continue
                errors[rec["key"]] = rec
    return errors
