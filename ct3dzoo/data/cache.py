"""Layout of a prepared-dataset folder (written by `prepare`, read by `CTDataset`).

::

    OUT/prepare.json               options every study was prepared with (spacing, size)
    OUT/studies/<key>/hu.npy       int16 HU (D, H, W), memory-mappable
    OUT/studies/<key>/meta.json    spacing, origin, direction, shape, source, reader meta
    OUT/studies/<key>/padding_mask.npy   bool (D, H, W), only when the series had padding
    OUT/errors.jsonl               one line per study that failed: key, id, path, error,
                                   input (the input's signature when it failed)

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

__all__ = [
    "PREPARE_VERSION",
    "failed_studies",
    "input_signature",
    "jsonable_meta",
    "read_options",
    "study_dir",
    "study_key",
]

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


def input_signature(path: str | os.PathLike) -> str | None:
    """A short digest of a study's input as it is now: size and mtime of the file, or of
    every file under the folder (names included); None when it cannot be read.

    Recorded with a failure, so that a rerun retries a study whose input changed since."""
    root = Path(path)
    h = hashlib.sha1()
    try:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    st = os.stat(os.path.join(dirpath, name))
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            st = root.stat()
            h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
    except OSError:
        return None
    return h.hexdigest()[:16]


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


def jsonable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a volume's ``meta``: scalars and lists of strings (e.g. the
    ``sop_uids`` that map per-image labels to slices)."""

    def ok(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(isinstance(x, str) for x in v)
        return isinstance(v, (str, int, float, bool, type(None)))

    return {k: list(v) if isinstance(v, tuple) else v for k, v in meta.items() if ok(v)}
