"""Environment settings read on every call: cache root, offline mode, mirror, timeouts."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

__all__ = [
    "ct3dzoo_home",
    "download_timeout",
    "is_offline",
    "lock_timeout",
    "mirror_url",
    "resolve_timeout",
]

_TRUE = frozenset({"1", "true", "yes", "on", "y"})


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def is_offline() -> bool:
    """``CT3DZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on (read on every call)."""
    return _env_true("CT3DZOO_OFFLINE") or _env_true("HF_HUB_OFFLINE")


def ct3dzoo_home() -> Path:
    """The cache root: ``$CT3DZOO_HOME``, default ``~/.cache/ct3dzoo``."""
    return Path(os.environ.get("CT3DZOO_HOME") or "~/.cache/ct3dzoo").expanduser()


def _seconds(name: str, default: str) -> float:
    raw = os.environ.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {raw!r}")
    return value


def download_timeout() -> float:
    """Seconds a download may wait for the server: ``$CT3DZOO_TIMEOUT`` (default 10)."""
    return _seconds("CT3DZOO_TIMEOUT", "10")


def resolve_timeout() -> float:
    """Seconds to wait for a host name to resolve, and then for a connection to it to open,
    before calling the machine offline: ``$CT3DZOO_RESOLVE_TIMEOUT`` (default 3)."""
    return _seconds("CT3DZOO_RESOLVE_TIMEOUT", "3")


def lock_timeout() -> float:
    """Seconds to wait for another process filling the same cache entry (default 3600)."""
    return _seconds("CT3DZOO_LOCK_TIMEOUT", "3600")


def mirror_url(url: str, mirror: str | None = None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (default ``$CT3DZOO_MIRROR``).

    The path is kept; a path in the mirror is prepended (``http://m:8080/zoo`` turns
    ``https://download.pytorch.org/models/x.pth`` into ``http://m:8080/zoo/models/x.pth``).
    """
    mirror = os.environ.get("CT3DZOO_MIRROR") if mirror is None else mirror
    if not mirror:
        return url
    m = urllib.parse.urlsplit(mirror)
    if not m.scheme or not m.netloc:
        raise ValueError(f"CT3DZOO_MIRROR must look like http://host:port, got {mirror!r}")
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))
