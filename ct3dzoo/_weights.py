"""Reading upstream checkpoints safely, and the pretrained-weights cache.

Upstream files are read with ``torch.load(weights_only=True)`` only; ct3dzoo's own files are
safetensors. :func:`read_checkpoint` returns a flat ``{key: tensor}`` state dict in the
upstream's own key naming (``module.`` prefixes stripped, ``{"model_state": ...}`` unwrapped).

:func:`load_pretrained_state_dict` resolves a pretrained cfg row to that state dict through
the ct3dzoo cache, the Hub, or the upstream URL (see ``docs/weights.md``); :func:`fetch`
fills the cache, from the network or from a file.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import HashMismatchError, UnsafeCheckpointError, WeightsUnavailableError

__all__ = [
    "CachePaths",
    "HashMismatchError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "cache_paths",
    "ct3dzoo_home",
    "fetch",
    "is_offline",
    "load_pretrained_state_dict",
    "mirror_url",
    "read_checkpoint",
    "save_safetensors",
    "sha256_file",
    "unwrap_state_dict",
]

#: containers upstream checkpoints put their state dict in
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "module")


def unwrap_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor state dict in a loaded checkpoint and strip a ``module.`` prefix."""
    sd = obj
    for _ in range(3):
        if isinstance(sd, Mapping) and not _is_tensor_dict(sd):
            inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not _is_tensor_dict(sd):
        keys = list(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise ValueError(
            f"{source} holds no state dict of tensors (top level: {keys}); expected a "
            "torchvision state dict or pytorchvideo's {'model_state': {...}}"
        )
    out = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _is_tensor_dict(d: Mapping) -> bool:
    vals = list(d.values())
    return bool(vals) and sum(isinstance(v, torch.Tensor) for v in vals) >= max(1, len(vals) // 2)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat CPU state dict.

    ``.safetensors`` through safetensors; anything else (``.pth``, ``.pyth``, ``.pth.tar``,
    ``.pt``) through ``torch.load(weights_only=True)``. A file that needs full unpickling is
    refused with :class:`UnsafeCheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path} contains pickled objects other than tensors and plain containers; ct3dzoo "
            "only reads checkpoints with torch.load(weights_only=True). If you trust the file, "
            "re-save its tensors: torch.save(state_dict, 'clean.pth') and pass that path. "
            f"(torch said: {str(e).splitlines()[0]})"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


# --------------------------------------------------------------------------------------
# The pretrained-weights cache: resolve a cfg row -> upstream state dict
# --------------------------------------------------------------------------------------
#
# Layout under $CT3DZOO_HOME (default ~/.cache/ct3dzoo):
#   weights/ARCH.TAG.safetensors   upstream state dict (upstream key names), converted
#   weights/ARCH.TAG.json          record: source URL, sha256 of upstream + safetensors, date
#   locks/ARCH.TAG.lock            file lock held while the entry is (re)built
#   tmp/                           downloads in progress (removed on failure)

_TRUE = frozenset({"1", "true", "yes", "on", "y"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CachePaths:
    """Where the cache entry of one ``arch.tag`` lives."""

    weights: Path
    record: Path
    lock: Path
    tmp: Path


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def is_offline() -> bool:
    """``CT3DZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on (read on every call)."""
    return _env_true("CT3DZOO_OFFLINE") or _env_true("HF_HUB_OFFLINE")


def ct3dzoo_home() -> Path:
    """The cache root: ``$CT3DZOO_HOME``, default ``~/.cache/ct3dzoo``."""
    return Path(os.environ.get("CT3DZOO_HOME") or "~/.cache/ct3dzoo").expanduser()


def cache_paths(name: str) -> CachePaths:
    """Cache paths of the weights ``arch.tag`` (nothing is created)."""
    home = ct3dzoo_home()
    return CachePaths(
        weights=home / "weights" / f"{name}.safetensors",
        record=home / "weights" / f"{name}.json",
        lock=home / "locks" / f"{name}.lock",
        tmp=home / "tmp",
    )


def _timeout() -> float:
    raw = os.environ.get("CT3DZOO_TIMEOUT", "10")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"CT3DZOO_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"CT3DZOO_TIMEOUT must be > 0 seconds, got {raw!r}")
    return value


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict[str, str]
) -> None:
    """Write ``state_dict`` to ``path`` atomically (temp file + ``os.replace``).

    Tensors sharing storage, or views of a larger storage, are copied first (safetensors
    stores each tensor on its own).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if v.numel():
            storage = v.untyped_storage()
            ptr = storage.data_ptr()
            whole = storage.nbytes() == v.numel() * v.element_size()
            if ptr in seen or not whole or not v.is_contiguous():
                v = v.contiguous().clone()
            seen.add(ptr)
        tensors[k] = v
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _cached_entry(name: str) -> Path | None:
    """The cached safetensors of ``name`` when its record exists and its sha256 matches."""
    paths = cache_paths(name)
    if not (paths.weights.is_file() and paths.record.is_file()):
        return None
    rec = _read_record(paths.record)
    if not rec or not rec.get("safetensors_sha256"):
        return None
    actual = sha256_file(paths.weights)
    if actual == rec["safetensors_sha256"]:
        return paths.weights
    warnings.warn(
        f"cached weights {paths.weights} are damaged (sha256 {actual}, its record "
        f"{paths.record.name} says {rec['safetensors_sha256']}); removing them and fetching again",
        stacklevel=3,
    )
    with _lock(paths):
        if paths.weights.is_file() and sha256_file(paths.weights) != rec["safetensors_sha256"]:
            paths.weights.unlink(missing_ok=True)
    return None


def _lock(paths: CachePaths) -> Any:
    from filelock import FileLock

    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    timeout = float(os.environ.get("CT3DZOO_LOCK_TIMEOUT", "3600"))
    return FileLock(str(paths.lock), timeout=timeout)


def _name(cfg: Mapping[str, Any]) -> str:
    return f"{cfg['arch']}.{cfg['tag']}"


def _how_to_get(cfg: Mapping[str, Any]) -> str:
    """The manual route: where to download the file, where it goes, and the alternatives."""
    name = _name(cfg)
    paths = cache_paths(name)
    filename = cfg.get("filename") or cfg.get("file_name") or "the checkpoint file"
    where = cfg.get("url") or (
        cfg.get("url_info") or cfg.get("source") or cfg.get("notes") or "its publisher"
    )
    return (
        f"To use {name} on this machine: download {where} where there is internet "
        f"(or set CT3DZOO_MIRROR=http://host:port to a mirror of it), copy {filename} here, then\n"
        f"    ct3dzoo fetch {name} --from /path/to/{filename}\n"
        f"which checks it and converts it into the cache ({paths.weights}); or copy "
        f"{paths.weights.name} and {paths.record.name} from a machine that has them into "
        f"{paths.weights.parent}/; or skip the cache: "
        f"ct3dzoo.load({cfg['arch']!r}, pretrain='/path/to/{filename}')."
    )


def _no_url_error(cfg: Mapping[str, Any]) -> WeightsUnavailableError:
    name = _name(cfg)
    where = cfg.get("url_info") or cfg.get("source") or cfg.get("notes") or "its publisher"
    return WeightsUnavailableError(
        f"{name} weights have no direct download URL; get "
        f"{cfg.get('filename') or cfg.get('file_name') or 'the checkpoint'} from: {where}. Then "
        f"run `ct3dzoo fetch {name} --from FILE` to check and cache it, or pass "
        f"pretrain='/path/to/FILE' to ct3dzoo.load."
    )


def _download(url: str, dest: Path, *, progress: bool) -> tuple[str, int]:
    """Stream ``url`` to ``dest``; return (sha256, size). Short bodies raise."""
    from tqdm.auto import tqdm

    from . import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"ct3dzoo/{__version__}"})
    timeout = _timeout()
    h = hashlib.sha256()
    size = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with (
                open(dest, "wb") as f,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
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


def _check_hashes(
    cfg: Mapping[str, Any], sha: str, record: Mapping[str, Any] | None, origin: str
) -> None:
    """Compare the upstream file's sha256 with every hash known for it."""
    name = _name(cfg)
    checks: list[tuple[str, str, bool]] = []
    if cfg.get("hash_prefix"):
        prefix = str(cfg["hash_prefix"]).lower()
        checks.append(
            (
                f"the hash prefix in the file name {cfg.get('filename')}",
                prefix,
                sha.startswith(prefix),
            )
        )
    if cfg.get("sha256"):
        full = str(cfg["sha256"]).lower()
        checks.append(("the registry", full, sha == full))
    if record and record.get("upstream_sha256"):
        known = str(record["upstream_sha256"]).lower()
        checks.append(
            (
                f"the sha256 recorded at first download ({record.get('created', '?')})",
                known,
                sha == known,
            )
        )
    for what, expected, ok in checks:
        if not ok:
            fix = (
                f" If the publisher replaced the file on purpose, delete {cache_paths(name).record} "
                "and fetch again."
                if what.startswith("the sha256 recorded")
                else " Download it again (or check CT3DZOO_MIRROR serves the published file)."
            )
            raise HashMismatchError(
                f"{origin} does not match {name}: its sha256 is {sha}, but {what} expects "
                f"{expected}. The file was not kept.{fix}"
            )


def _convert_into_cache(
    cfg: Mapping[str, Any],
    path: Path,
    *,
    sha: str,
    size: int,
    origin: str,
    verify: bool = True,
) -> Path:
    """Check ``path`` (an upstream-format file), convert it to safetensors, write the record.

    Call with the entry's lock held.
    """
    from . import __version__

    name = _name(cfg)
    paths = cache_paths(name)
    record = _read_record(paths.record)
    if verify:
        _check_hashes(cfg, sha, record, origin)
    try:
        sd = read_checkpoint(path)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{origin} ({name}): {e}") from None
    except (RuntimeError, ValueError, EOFError) as e:
        raise ValueError(f"{origin} is not a readable {name} checkpoint: {e}") from None
    meta = {"format": "pt", "ct3dzoo_name": name, "source": str(cfg.get("url") or origin)}
    save_safetensors(sd, paths.weights, metadata=meta)
    new_record = {
        "name": name,
        "arch": cfg["arch"],
        "tag": cfg["tag"],
        "file_format": cfg.get("file_format"),
        "source_url": cfg.get("url"),
        "fetched_from": origin,
        "upstream_filename": cfg.get("filename") or path.name,
        "upstream_sha256": sha if verify else (record or {}).get("upstream_sha256"),
        "upstream_size": size if verify else (record or {}).get("upstream_size"),
        "hash_prefix": cfg.get("hash_prefix"),
        "safetensors": paths.weights.name,
        "safetensors_sha256": sha256_file(paths.weights),
        "num_tensors": len(sd),
        "created": (record or {}).get("created")
        or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ct3dzoo_version": __version__,
    }
    _atomic_write_bytes(paths.record, (json.dumps(new_record, indent=2) + "\n").encode())
    return paths.weights


def _fill_from_url(cfg: Mapping[str, Any], *, progress: bool, context: str = "") -> Path:
    """Download the upstream file (through ``CT3DZOO_MIRROR``), verify, convert, cache."""
    name = _name(cfg)
    url = cfg.get("url")
    if not url:
        raise _no_url_error(cfg)
    if is_offline():
        raise WeightsUnavailableError(
            f"{name} is not in the ct3dzoo cache and offline mode is on "
            f"(CT3DZOO_OFFLINE / HF_HUB_OFFLINE), so {url} was not fetched.{context}\n"
            + _how_to_get(cfg)
        )
    paths = cache_paths(name)
    with _lock(paths):
        hit = _cached_entry(name)  # another process may have filled it while we waited
        if hit is not None:
            return hit
        paths.tmp.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=paths.tmp))
        try:
            dest = workdir / (cfg.get("filename") or url.rsplit("/", 1)[-1] or "weights.pth")
            source = mirror_url(url)
            try:
                sha, size = _download(source, dest, progress=progress)
            except WeightsUnavailableError as e:
                raise WeightsUnavailableError(f"{e}{context}\n{_how_to_get(cfg)}") from None
            return _convert_into_cache(cfg, dest, sha=sha, size=size, origin=source)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _hub_file(cfg: Mapping[str, Any], *, progress: bool) -> Path:
    """The upstream state dict of a row with ``hf_hub_id``, through huggingface_hub."""
    from huggingface_hub import hf_hub_download

    from ._hub import hf_progress

    with hf_progress(progress):
        return Path(
            hf_hub_download(
                cfg["hf_hub_id"],
                cfg.get("hf_hub_filename") or "model.safetensors",
                revision=cfg.get("hf_hub_revision"),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                local_files_only=is_offline(),
            )
        )


def load_pretrained_state_dict(
    cfg: Mapping[str, Any], *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The upstream (unadapted) state dict of a pretrained cfg row.

    Resolution: (1) the ct3dzoo cache; (2) the Hub repo ``cfg["hf_hub_id"]`` through
    huggingface_hub (its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``); (3) ``cfg["url"]``
    (through ``CT3DZOO_MIRROR``), verified, converted to safetensors and cached.
    Offline (``CT3DZOO_OFFLINE``/``HF_HUB_OFFLINE``) only (1) and the HF cache are used.
    """
    from safetensors.torch import load_file

    name = _name(cfg)
    hit = _cached_entry(name)
    if hit is not None:
        return load_file(str(hit), device="cpu")
    context = ""
    if cfg.get("hf_hub_id"):
        try:
            return read_checkpoint(_hub_file(cfg, progress=progress))
        except Exception as e:  # any Hub failure: fall back to the upstream URL
            context = f"\n(The Hub repo {cfg['hf_hub_id']} failed too: {type(e).__name__}: {e})"
            if not cfg.get("url"):
                raise WeightsUnavailableError(
                    f"{name}: could not get the weights from the Hub repo {cfg['hf_hub_id']} "
                    f"({type(e).__name__}: {e}) and the row has no upstream URL.\n"
                    + _how_to_get(cfg)
                ) from None
    path = _fill_from_url(cfg, progress=progress, context=context)
    return load_file(str(path), device="cpu")


def fetch(name: str, *, from_file: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Fill the ct3dzoo cache with the weights ``arch.tag`` (or ``arch``: its default weights).

    With ``from_file``, an already downloaded upstream file is checked against every known
    hash and converted (no network); otherwise the Hub repo (when the row has one) or the
    upstream URL is used. Returns the cached safetensors path.
    """
    from ._registry import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    name = _name(cfg)
    paths = cache_paths(name)
    if from_file is not None:
        src = Path(from_file).expanduser()
        if not src.is_file():
            raise FileNotFoundError(f"--from file not found: {src}")
        with _lock(paths):
            sha = sha256_file(src)
            hit = _cached_entry(name)
            rec = _read_record(paths.record)
            if hit is not None and rec and rec.get("upstream_sha256") == sha:
                return hit
            return _convert_into_cache(cfg, src, sha=sha, size=src.stat().st_size, origin=str(src))
    hit = _cached_entry(name)
    if hit is not None:
        return hit
    context = ""
    if cfg.get("hf_hub_id"):
        try:
            hub_path = _hub_file(cfg, progress=progress)
        except Exception as e:
            context = f"\n(The Hub repo {cfg['hf_hub_id']} failed too: {type(e).__name__}: {e})"
            if not cfg.get("url"):
                raise WeightsUnavailableError(
                    f"{name}: the Hub repo {cfg['hf_hub_id']} failed ({type(e).__name__}: {e}) "
                    "and the row has no upstream URL.\n" + _how_to_get(cfg)
                ) from None
        else:
            with _lock(paths):
                return _convert_into_cache(
                    cfg, hub_path, sha="", size=0, origin=f"hf-hub:{cfg['hf_hub_id']}", verify=False
                )
    return _fill_from_url(cfg, progress=progress, context=context)
