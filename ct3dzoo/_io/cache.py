"""The pretrained-weights cache: one safetensors file and one JSON record per ``arch.tag``.

Torch-free (the CLI's ``info`` reads it without building a network); converting a file into
the cache is :mod:`ct3dzoo._io.weights`' job.

Layout under ``$CT3DZOO_HOME`` (default ``~/.cache/ct3dzoo``)::

    weights/ARCH.TAG.safetensors   upstream state dict (upstream key names), converted
    weights/ARCH.TAG.json          record: source, sha256 of upstream file + safetensors, dates
    locks/ARCH.TAG.lock            file lock held while the entry is (re)built
    tmp/                           downloads in progress (removed on failure)
"""

from __future__ import annotations

import datetime
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from safetensors import safe_open

from .._specs import WeightsSpec
from .._version import __version__
from ..errors import HashMismatchError, UnverifiedWeightsWarning
from .atomic import atomic_write_text
from .hashing import sha256_file
from .settings import ct3dzoo_home, lock_timeout

__all__ = [
    "CachePaths",
    "cache_lock",
    "cache_paths",
    "cached_entry",
    "check_hashes",
    "now",
    "read_record",
]


@dataclass(frozen=True)
class CachePaths:
    """Where the cache entry of one ``arch.tag`` lives."""

    weights: Path
    record: Path
    lock: Path
    tmp: Path


def cache_paths(name: str) -> CachePaths:
    """Cache paths of the weights ``arch.tag`` (nothing is created)."""
    home = ct3dzoo_home()
    return CachePaths(
        weights=home / "weights" / f"{name}.safetensors",
        record=home / "weights" / f"{name}.json",
        lock=home / "locks" / f"{name}.lock",
        tmp=home / "tmp",
    )


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def cache_lock(paths: CachePaths) -> FileLock:
    """The inter-process lock of one entry (``CT3DZOO_LOCK_TIMEOUT`` seconds, default 3600)."""
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(paths.lock), timeout=lock_timeout())


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _intact_safetensors(path: Path) -> dict[str, str] | None:
    """The metadata of a complete, readable safetensors file; None when it is damaged."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                f.get_tensor(k)  # reads every tensor: a truncated file fails here
        return meta
    except Exception:
        return None


def _repair_record(name: str, paths: CachePaths) -> Path | None:
    """Rebuild a missing/unreadable record from an intact safetensors file, and say so."""
    meta = _intact_safetensors(paths.weights)
    if meta is None or meta.get("ct3dzoo_name") != name:
        return None
    with cache_lock(paths):
        rec = read_record(paths.record)
        if rec and rec.get("safetensors_sha256"):
            return paths.weights  # another process repaired it meanwhile
        record = {
            "name": name,
            "fetched_from": meta.get("source"),
            "upstream_sha256": None,
            "safetensors": paths.weights.name,
            "safetensors_sha256": sha256_file(paths.weights),
            "created": now(),
            "repaired": True,
            "ct3dzoo_version": __version__,
        }
        atomic_write_text(paths.record, json.dumps(record, indent=2) + "\n")
    warnings.warn(
        f"the cache record {paths.record} of {name} was missing or unreadable; it was rebuilt "
        f"from the intact {paths.weights.name} (the upstream file's hash is no longer known)",
        UserWarning,
        stacklevel=4,
    )
    return paths.weights


def cached_entry(name: str) -> Path | None:
    """The cached safetensors of ``name`` when its sha256 matches its record.

    A damaged safetensors file is removed (and fetched again by the caller); a broken record
    beside an intact safetensors file is rebuilt with a warning.
    """
    paths = cache_paths(name)
    if not paths.weights.is_file():
        return None
    rec = read_record(paths.record)
    if not rec or not rec.get("safetensors_sha256"):
        return _repair_record(name, paths)
    actual = sha256_file(paths.weights)
    if actual == rec["safetensors_sha256"]:
        return paths.weights
    warnings.warn(
        f"cached weights {paths.weights} are damaged (sha256 {actual}, its record "
        f"{paths.record.name} says {rec['safetensors_sha256']}); removing them and fetching again",
        stacklevel=3,
    )
    with cache_lock(paths):
        if paths.weights.is_file() and sha256_file(paths.weights) != rec["safetensors_sha256"]:
            paths.weights.unlink(missing_ok=True)
    return None


def check_hashes(spec: WeightsSpec, sha: str, record: dict[str, Any] | None, origin: str) -> None:
    """Compare the upstream file's sha256 with every hash known for it; warn when none is."""
    checks: list[tuple[str, str, bool]] = []
    if spec.hash_prefix:
        prefix = spec.hash_prefix.lower()
        checks.append(
            (f"the hash prefix in the file name {spec.filename}", prefix, sha.startswith(prefix))
        )
    if spec.sha256:
        checks.append(("the registry", spec.sha256.lower(), sha == spec.sha256.lower()))
    if record and record.get("upstream_sha256"):
        known = str(record["upstream_sha256"]).lower()
        checks.append(
            (f"the sha256 recorded at first download ({record.get('created', '?')})", known,
             sha == known)
        )  # fmt: skip
    for what, expected, ok in checks:
        if not ok:
            fix = (
                f" If the publisher replaced the file on purpose, delete "
                f"{cache_paths(spec.name).record} and fetch again."
                if what.startswith("the sha256 recorded")
                else " Download it again (or check CT3DZOO_MIRROR serves the published file)."
            )
            raise HashMismatchError(
                f"{origin} does not match {spec.name}: its sha256 is {sha}, but {what} expects "
                f"{expected}. The file was not kept.{fix}"
            )
    if not checks:
        warnings.warn(
            f"{spec.name}: {origin} was not verified against a published hash (its publisher "
            f"gives none); its sha256 {sha} is recorded now, and later downloads must match it",
            UnverifiedWeightsWarning,
            stacklevel=4,
        )
