"""Network transport: a verified-length streaming download, and Hub files through
``huggingface_hub`` (its cache, ``HF_ENDPOINT``, offline mode).

Offline is detected fast: before any request the host name is resolved once and a TCP
connection opened to it (each at most ``CT3DZOO_RESOLVE_TIMEOUT`` s); a name that does not
resolve, or a host that refuses or does not answer, is a
:class:`~ct3dzoo.errors.WeightsUnavailableError` at once, never retried (huggingface_hub
would otherwise back off for ~23 s on the same error). Through a proxy nothing is resolved
or probed here (the proxy connects).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.utils import (
    LocalEntryNotFoundError,
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import WeightsUnavailableError
from .settings import download_timeout, is_offline, resolve_timeout

__all__ = ["check_reachable", "check_resolves", "download", "hf_file", "hf_progress"]

_CHUNK = 1 << 20
_OFFLINE_HINT = (
    "this machine looks offline (nothing was retried). Set CT3DZOO_OFFLINE=1 to use only "
    "the caches without trying the network"
)


def _direct_target(url: str) -> tuple[str, int] | None:
    """``(host, port)`` that a request for ``url`` connects to itself; None through a proxy
    (the proxy resolves and connects) or without a host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host or (
        parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
    ):
        return None
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int) -> list[tuple]:
    """The host's stream addresses, within ``CT3DZOO_RESOLVE_TIMEOUT`` s (one lookup, no
    retries); :class:`WeightsUnavailableError` when the name does not resolve in time."""
    timeout = resolve_timeout()
    outcome: list[list[tuple] | BaseException] = []

    def resolve() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:  # socket.gaierror, or a resolver that is not there
            outcome.append(e)

    # getaddrinfo takes no timeout: a daemon thread bounds the wait without blocking exit
    worker = threading.Thread(target=resolve, name="ct3dzoo-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if outcome and not isinstance(outcome[0], BaseException):
        return outcome[0]
    reason = (
        str(outcome[0])
        if outcome
        else f"no answer from the name resolver in {timeout:g} s (CT3DZOO_RESOLVE_TIMEOUT)"
    )
    raise WeightsUnavailableError(f"cannot resolve the host {host!r} ({reason}): {_OFFLINE_HINT}")


def check_resolves(url: str) -> None:
    """Raise :class:`WeightsUnavailableError` when ``url``'s host name does not resolve
    within ``CT3DZOO_RESOLVE_TIMEOUT`` s (no retries). Skipped when a proxy serves ``url``."""
    if (target := _direct_target(url)) is not None:
        _resolve(*target)


def check_reachable(url: str) -> None:
    """`check_resolves`, then open (and close) a TCP connection to one of the addresses it
    found within ``CT3DZOO_RESOLVE_TIMEOUT`` s: a host that refuses or does not answer (a
    firewall that drops) raises :class:`WeightsUnavailableError` at once, never retried
    (huggingface_hub backs off ~23 s on a refused connection). Skipped through a proxy."""
    if (target := _direct_target(url)) is None:
        return
    host, port = target
    timeout = resolve_timeout()
    reason = "no address"
    for *_, sockaddr in _resolve(host, port):  # the addresses looked up once, not again
        try:
            socket.create_connection(sockaddr[:2], timeout=timeout).close()
            return
        except TimeoutError:
            reason = f"no answer in {timeout:g} s (CT3DZOO_RESOLVE_TIMEOUT)"
        except OSError as e:  # refused, unreachable network, ...
            reason = e.strerror or str(e)
    raise WeightsUnavailableError(
        f"cannot connect to {host}:{port} ({reason}): the host is down or blocked, or "
        f"{_OFFLINE_HINT}"
    )


def download(url: str, dest: Path, *, progress: bool) -> tuple[str, int]:
    """Stream ``url`` to ``dest``; return (sha256, size). Short bodies raise."""
    req = urllib.request.Request(url, headers={"User-Agent": f"ct3dzoo/{__version__}"})
    timeout = download_timeout()
    try:
        check_reachable(url)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(f"could not download {url}: {e}") from None
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
    """One file of a Hub repo through huggingface_hub (``HF_ENDPOINT``; offline: its cache).

    Offline mode, or an endpoint whose host does not resolve or answer, reads the HF cache only
    (no request at all, not even huggingface_hub's own best-effort ones); a file that is not
    there is a ``LocalEntryNotFoundError`` at once, naming the cause.
    """
    endpoint = os.environ.get("HF_ENDPOINT") or None
    unreachable: WeightsUnavailableError | None = None
    if not is_offline():
        try:
            check_reachable(endpoint or hf_constants.ENDPOINT)
        except WeightsUnavailableError as e:
            unreachable = e
        else:
            with hf_progress(progress):
                return Path(
                    hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint)
                )
    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    # huggingface_hub's own type for "not in the cache and no network" (callers that treat
    # an optional file's absence as None catch it), with the cause spelt out
    at = f"@{revision}" if revision else ""
    why = (
        str(unreachable)
        if unreachable is not None
        else "offline mode is on (CT3DZOO_OFFLINE / HF_HUB_OFFLINE), so it was not downloaded"
    )
    raise LocalEntryNotFoundError(
        f"{repo_id}{at}/{filename} is not in the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}) and {why}"
    )
