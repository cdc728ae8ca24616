"""Network transport: a verified-length streaming download, and Hub files through
``huggingface_hub`` (its cache, ``HF_ENDPOINT``, offline mode)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import WeightsUnavailableError
from .settings import download_timeout, is_offline

__all__ = ["download", "hf_file", "hf_progress"]

_CHUNK = 1 << 20


def download(url: str, dest: Path, *, progress: bool) -> tuple[str, int]:
    """Stream ``url`` to ``dest``; return (sha256, size). Short bodies raise."""
    req = urllib.request.Request(url, headers={"User-Agent": f"ct3dzoo/{__version__}"})
    timeout = download_timeout()
    h = hashlib.sha256()
    size = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            )
            with open(dest, "wb") as f, bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise WeightsUnavailableError(
            f"downloading {url} failed: HTTP {e.code} {e.reason}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(e, http.client.IncompleteRead):
            reason = f"the server closed the connection after {size + len(e.partial)} bytes"
        raise WeightsUnavailableError(
            f"could not download {url} (timeout {timeout:g} s, CT3DZOO_TIMEOUT): {reason}"
        ) from None
    if total is not None and size != total:
        raise WeightsUnavailableError(
            f"download of {url} was cut short: got {size} of {total} bytes; nothing was cached, "
            "try again"
        )
    return h.hexdigest(), size


@contextlib.contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """Silence huggingface_hub's progress bars inside the block when ``enabled`` is False."""
    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


def hf_file(repo_id: str, filename: str, *, revision: str | None, progress: bool) -> Path:
    """One file of a Hub repo through huggingface_hub (``HF_ENDPOINT``; offline: its cache)."""
    with hf_progress(progress):
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                local_files_only=is_offline(),
            )
        )
