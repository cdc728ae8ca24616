"""`prepare`: read every study of a manifest once into a memory-mappable cache.

Each study becomes int16 HU (optionally resampled to a spacing or a model-ready size) plus
its geometry and reader meta, in the layout of `ct3dzoo.data.cache`. Resumable (finished
studies are skipped, half-written ones redone), a broken study goes to ``errors.jsonl``
without stopping the run (a rerun retries it once its input has changed), and ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE``,
``SLURM_PROCID``/``SLURM_NTASKS``) splits the work across machines into one folder.
`CTDataset(manifest, prepared=OUT)` then reads the cache without decoding anything.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._cli_args import deprecated_alias
from .._io.atomic import atomic_path, atomic_write_text
from .cache import (
    PREPARE_VERSION,
    failed_studies,
    input_signature,
    jsonable_meta,
    read_options,
    study_dir,
    study_key,
)
from .dataset import read_manifest
from .geometry import resample
from .io import read_volume

__all__ = ["PrepareResult", "prepare", "resolve_shard"]


@dataclass
class PrepareResult:
    """What one `prepare` call did (for its shard)."""

    out: Path
    written: list[str] = field(default_factory=list)  # study keys cached by this call
    skipped: list[str] = field(default_factory=list)  # already cached or already failed
    failed: dict[str, str] = field(default_factory=dict)  # key -> error, new this call
    seconds: float = 0.0
    #: keys in ``skipped`` that failed before and whose input is unchanged since (a study
    #: whose file or folder changed after it failed is retried instead)
    skipped_failed: list[str] = field(default_factory=list)


def resolve_shard(shard: tuple[int, int] | str | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``shard`` (``(i, n)`` or ``"i/n"``), else ``RANK``/
    ``WORLD_SIZE`` (torchrun), else ``SLURM_PROCID``/``SLURM_NTASKS``, else ``(0, 1)``."""
    if shard is None:
        env = os.environ
        for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            if r in env and w in env:
                shard = (int(env[r]), int(env[w]))
                break
        else:
            return 0, 1
    if isinstance(shard, str):
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like I/N (e.g. 0/4); got {shard!r}") from None
    else:
        i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard index must be in [0, {n}) and count >= 1; got {i}/{n}")
    return i, n


def _options(spacing: Any, size: Any) -> dict[str, Any]:
    if spacing is not None and size is not None:
        raise ValueError(
            "Pass spacing= or shape=, not both (shape already fixes the voxel grid); "
            "to crop after resampling, use a transform at training time."
        )
    sp = None if spacing is None else [float(s) for s in np.broadcast_to(spacing, 3)]
    sz = None if size is None else [int(s) for s in size]
    if sz is not None and (len(sz) != 3 or min(sz) < 1):
        raise ValueError(f"shape must be three positive integers D H W; got {size!r}")
    if sp is not None and not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive mm values; got {spacing!r}")
    return {"version": PREPARE_VERSION, "dtype": "int16", "spacing": sp, "size": sz}


def _check_options(out: Path, opts: dict[str, Any]) -> None:
    have = read_options(out)
    if have is None:
        atomic_write_text(out / "prepare.json", json.dumps(opts, indent=1))
    elif have != opts:
        raise ValueError(
            f"{out} was prepared with {have}, not {opts}. Use another output folder, or the "
            "same --spacing/--shape."
        )


def _prepare_one(record: dict[str, Any], out: Path, opts: dict[str, Any]) -> tuple[int, int]:
    """Read, resample and write one study; returns ``(bytes written, slices)``."""
    vol = read_volume(record["path"], series_uid=record.get("series_uid"))
    if opts["spacing"] is not None:
        vol = resample(vol, spacing=opts["spacing"])
    elif opts["size"] is not None:
        vol = resample(vol, shape=opts["size"])
    hu = np.clip(np.rint(vol.hu), -32768, 32767).astype(np.int16)
    mask = vol.meta.get("padding_mask")
    info = {
        "id": record["id"],
        "source": str(record["path"]),
        "shape": list(hu.shape),
        "spacing": list(vol.spacing),
        "origin": list(vol.origin),
        "direction": np.asarray(vol.direction).tolist(),
        "meta": jsonable_meta(vol.meta),
    }
    with atomic_path(study_dir(out, record)) as tmp:
        tmp.mkdir()
        np.save(tmp / "hu.npy", hu)
        if isinstance(mask, np.ndarray) and mask.shape == hu.shape:
            np.save(tmp / "padding_mask.npy", mask)
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))
    return hu.nbytes, hu.shape[0]


def _run_one(args: tuple[dict[str, Any], Path, dict[str, Any]]) -> tuple[str, Any]:
    record, out, opts = args
    try:
        return "ok", _prepare_one(record, out, opts)
    except Exception as e:  # a broken study is recorded, the run goes on
        return "error", f"{type(e).__name__}: {e}"


def _results(
    todo: list[dict[str, Any]], out: Path, opts: dict[str, Any], workers: int
) -> Iterator[tuple[dict[str, Any], tuple[str, Any]]]:
    jobs = [(r, out, opts) for r in todo]
    if workers <= 1 or len(todo) <= 1:
        for job in jobs:
            yield job[0], _run_one(job)
        return
    # threads, not processes: reading is file IO and resampling is torch, both release the
    # GIL; and a thread pool works from a plain script, where spawned processes would re-run
    # the caller's script (no `if __name__ == "__main__":` guard needed, any start method)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ct3dzoo-prepare") as ex:
        yield from zip(todo, ex.map(_run_one, jobs))


def prepare(
    manifest: str | os.PathLike | Sequence[Sequence[Any] | Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    spacing: Sequence[float] | float | None = None,
    shape: Sequence[int] | None = None,
    workers: int = 1,
    shard: tuple[int, int] | str | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    size: Sequence[int] | None = None,
) -> PrepareResult:
    """Cache every study of ``manifest`` under ``out`` as int16 HU + geometry.

    Args:
        manifest: CSV or list (see `read_manifest`); each ``path`` a DICOM folder/file,
            NIfTI or ``.npy``/``.npz``.
        out: cache folder (layout in `ct3dzoo.data.cache`); one folder for all shards.
        spacing: resample to this ``(z, y, x)`` mm spacing (or one number), or
        shape: resample to this ``(D, H, W)`` (model-ready); neither: native grid.
        workers: studies prepared in parallel (threads); 1 = one at a time.
        shard: ``(i, n)`` or ``"i/n"``: this call does rows ``i, i + n, ...``; default
            from ``RANK``/``WORLD_SIZE`` or ``SLURM_PROCID``/``SLURM_NTASKS``.
        retry_errors: also redo studies listed in ``errors.jsonl`` whose input is unchanged
            (a failed study whose file or folder changed since is always retried).
        progress: show a tqdm bar with studies/s and MB/s.
        size: deprecated name of ``shape``.

    Returns:
        `PrepareResult`; failures are also appended to ``out/errors.jsonl``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    shape = deprecated_alias("size", "shape", size, shape)  # type: ignore[assignment]
    opts = _options(spacing, shape)
    records, _ = read_manifest(manifest)
    index, count = resolve_shard(shard)
    mine = records[index::count]
    out.mkdir(parents=True, exist_ok=True)
    _check_options(out, opts)
    failed_before = {} if retry_errors else failed_studies(out)
    result = PrepareResult(out=out)
    todo = []
    for r in mine:
        key = study_key(r)
        if (study_dir(out, r) / "meta.json").is_file():
            result.skipped.append(key)
            continue
        if key in failed_before:
            then = failed_before[key].get("input")
            if then is None or then == input_signature(r["path"]):  # unchanged: skip
                result.skipped.append(key)
                result.skipped_failed.append(key)
                continue
        for stale in (out / "studies").glob(f".{key}.*.tmp"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        todo.append(r)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="study", disable=not progress or not todo,
               desc=f"prepare {index}/{count}" if count > 1 else "prepare")  # fmt: skip
    nbytes = 0
    with bar:
        for r, (status, value) in _results(todo, out, opts, workers):
            key = study_key(r)
            if status == "ok":
                result.written.append(key)
                nbytes += value[0]
            else:
                result.failed[key] = value
                line = {"key": key, "id": r["id"], "path": str(r["path"]), "error": value,
                        "input": input_signature(r["path"])}  # fmt: skip
                with open(out / "errors.jsonl", "a") as fh:  # one short append per line
                    fh.write(json.dumps(line) + "\n")
            bar.update(1)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(MBps=f"{nbytes / elapsed / 1e6:.1f}", failed=len(result.failed))
    result.seconds = time.perf_counter() - t0
    return result
