"""Resolve a weights spec to its upstream state dict: the ct3dzoo cache, the Hub, the URL.

Resolution (one path for :func:`load_pretrained_state_dict` and :func:`fetch`):

1. the ct3dzoo cache (``weights/ARCH.TAG.safetensors``, sha256-checked against its record);
2. the Hub file ``hf_hub_id``/``hf_hub_filename`` at ``hf_hub_revision`` through
   huggingface_hub (its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``): a safetensors file is
   read from the HF cache as is; any other format is read with ``weights_only=True`` and
   converted into the ct3dzoo cache;
3. the upstream ``url`` (through ``CT3DZOO_MIRROR``), verified, converted and cached.

Offline (``CT3DZOO_OFFLINE``/``HF_HUB_OFFLINE``) only the caches are used. Every failure
raises :class:`~ct3dzoo.errors.WeightsUnavailableError` saying how to get the file by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from .._specs import WeightsSpec
from .._version import __version__
from ..errors import NotACheckpointError, UnsafeCheckpointError, WeightsUnavailableError
from .atomic import atomic_write_text
from .cache import cache_lock, cache_paths, cached_entry, check_hashes, now, read_record
from .checkpoint import read_checkpoint, save_safetensors
from .download import download, hf_file
from .hashing import sha256_file
from .settings import is_offline, mirror_url

__all__ = ["fetch", "how_to_get", "load_pretrained_state_dict"]


def how_to_get(spec: WeightsSpec) -> str:
    """The manual route: where to download the file, where it goes, and the alternatives."""
    paths = cache_paths(spec.name)
    filename = spec.download_filename
    if spec.url:
        where = spec.url
    elif spec.hf_hub_id:
        where = f"the Hub repo {spec.hf_hub_id} (file {spec.hf_hub_filename})"
    else:
        where = spec.url_info or spec.publisher or "its publisher"
    return (
        f"To use {spec.name} on this machine: download {where} where there is internet "
        f"(or set CT3DZOO_MIRROR=http://host:port / HF_ENDPOINT to a mirror of it), copy "
        f"{filename} here, then\n"
        f"    ct3dzoo fetch {spec.name} --from /path/to/{filename}\n"
        f"which checks it and converts it into the cache ({paths.weights}); or copy "
        f"{paths.weights.name} and {paths.record.name} from a machine that has them into "
        f"{paths.weights.parent}/; or skip the cache: "
        f"ct3dzoo.load({spec.arch!r}, pretrain='/path/to/{filename}')."
    )


Validator = Callable[[dict[str, torch.Tensor]], None]


def convert_into_cache(
    spec: WeightsSpec,
    path: Path,
    *,
    sha: str | None,
    size: int | None,
    origin: str,
    validate: Validator | None = None,
) -> Path:
    """Check ``path`` (an upstream-format file), convert it to safetensors, write the record.

    ``sha=None``: the file came through a channel that verified it already (the Hub), so no
    hash check is made. ``validate(state_dict)`` may raise to refuse the file before anything
    is written (e.g. keys and shapes that do not fit the architecture). Call with the entry's
    lock held.
    """
    paths = cache_paths(spec.name)
    record = read_record(paths.record)
    if sha is not None:
        check_hashes(spec, sha, record, origin)
    try:
        sd = read_checkpoint(path)
    except (UnsafeCheckpointError, NotACheckpointError) as e:
        raise type(e)(f"{origin} ({spec.name}): {e}") from None
    except (RuntimeError, ValueError, EOFError) as e:
        raise NotACheckpointError(
            f"{origin} is not a readable {spec.name} checkpoint: {e}"
        ) from None
    if validate is not None:
        validate(sd)
    meta = {"format": "pt", "ct3dzoo_name": spec.name, "source": str(spec.url or origin)}
    save_safetensors(sd, paths.weights, metadata=meta)
    keep = sha is None
    new_record = {
        "name": spec.name,
        "arch": spec.arch,
        "tag": spec.tag,
        "file_format": spec.file_format,
        "source_url": spec.url,
        "hf_hub": spec.hf_hub_id and f"{spec.hf_hub_id}/{spec.hf_hub_filename}",
        "fetched_from": origin,
        "upstream_filename": spec.filename or path.name,
        "upstream_sha256": (record or {}).get("upstream_sha256") if keep else sha,
        "upstream_size": (record or {}).get("upstream_size") if keep else size,
        "hash_prefix": spec.hash_prefix,
        "verified": bool(spec.hash_prefix or spec.sha256) and not keep,
        "safetensors": paths.weights.name,
        "safetensors_sha256": sha256_file(paths.weights),
        "num_tensors": len(sd),
        "created": (record or {}).get("created") or now(),
        "updated": now(),
        "ct3dzoo_version": __version__,
    }
    atomic_write_text(paths.record, json.dumps(new_record, indent=2) + "\n")
    return paths.weights


def _from_url(spec: WeightsSpec, *, progress: bool, context: str) -> Path:
    """Download the upstream file (through ``CT3DZOO_MIRROR``), verify, convert, cache."""
    if not spec.url:
        where = spec.url_info or spec.publisher or "its publisher"
        raise WeightsUnavailableError(
            f"{spec.name} weights have no direct download URL; get {spec.download_filename} "
            f"from: {where}.{context} Then run `ct3dzoo fetch {spec.name} --from FILE` to check "
            "and cache it, or pass pretrain='/path/to/FILE' to ct3dzoo.load."
        )
    if is_offline():
        raise WeightsUnavailableError(
            f"{spec.name} is not in the ct3dzoo cache and offline mode is on "
            f"(CT3DZOO_OFFLINE / HF_HUB_OFFLINE), so {spec.url} was not fetched.{context}\n"
            + how_to_get(spec)
        )
    paths = cache_paths(spec.name)
    with cache_lock(paths):
        hit = cached_entry(spec.name)  # another process may have filled it while we waited
        if hit is not None:
            return hit
        paths.tmp.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{spec.name}.", dir=paths.tmp))
        try:
            dest = workdir / spec.download_filename
            source = mirror_url(spec.url)
            try:
                sha, size = download(source, dest, progress=progress)
            except WeightsUnavailableError as e:
                raise WeightsUnavailableError(f"{e}{context}\n{how_to_get(spec)}") from None
            return convert_into_cache(spec, dest, sha=sha, size=size, origin=source)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _resolve(spec: WeightsSpec, *, progress: bool) -> Path:
    """A local file holding the upstream state dict: a safetensors file (ours or the HF
    cache's) or, never, an unconverted pickle."""
    hit = cached_entry(spec.name)
    if hit is not None:
        return hit
    context = ""
    if spec.hf_hub_id:
        filename = spec.hf_hub_filename or "model.safetensors"
        try:
            path = hf_file(
                spec.hf_hub_id, filename, revision=spec.hf_hub_revision, progress=progress
            )
        except Exception as e:  # any Hub failure: fall back to the upstream URL
            context = (
                f"\n(The Hub file {spec.hf_hub_id}/{filename} failed: {type(e).__name__}: {e})"
            )
            if not spec.url:
                raise WeightsUnavailableError(
                    f"{spec.name}: could not get {filename} from the Hub repo {spec.hf_hub_id}"
                    f"{' at ' + spec.hf_hub_revision if spec.hf_hub_revision else ''} "
                    f"({type(e).__name__}: {e}) and the row has no other source.\n"
                    + how_to_get(spec)
                ) from None
        else:
            if path.suffix == ".safetensors":
                return path
            with cache_lock(cache_paths(spec.name)):
                origin = f"hf-hub:{spec.hf_hub_id}/{filename}"
                return convert_into_cache(spec, path, sha=None, size=None, origin=origin)
    return _from_url(spec, progress=progress, context=context)


def load_pretrained_state_dict(
    spec: WeightsSpec, *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The upstream (unadapted) state dict of a weights spec (see the module docstring)."""
    path = _resolve(spec, progress=progress)
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    return read_checkpoint(path)


def fetch(
    spec: WeightsSpec,
    *,
    from_file: str | os.PathLike | None = None,
    progress: bool = True,
    validate: Validator | None = None,
) -> Path:
    """Fill the ct3dzoo cache with ``spec``'s weights; return the local safetensors path.

    With ``from_file``, an already downloaded upstream file is checked against every known
    hash, then by ``validate(state_dict)`` (:func:`ct3dzoo.fetch` checks keys and shapes
    against the architecture), and converted (no network).
    """
    if from_file is None:
        return _resolve(spec, progress=progress)
    src = Path(from_file).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"--from file not found: {src}")
    paths = cache_paths(spec.name)
    with cache_lock(paths):
        sha = sha256_file(src)
        hit = cached_entry(spec.name)
        rec = read_record(paths.record)
        if hit is not None and rec and rec.get("upstream_sha256") == sha:
            return hit
        return convert_into_cache(
            spec, src, sha=sha, size=src.stat().st_size, origin=str(src), validate=validate
        )
