"""``ct3dzoo prepare``: cache a manifest's studies once (int16 HU + geometry), resumable.

The main CLI wires it in with :func:`add_prepare_parser` and :func:`run_prepare`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._cli_args import add_deprecated
from .._io.paths import check_outputs

__all__ = ["add_prepare_parser", "run_prepare", "study_paths"]

EPILOG = """\
The cache layout (OUT/studies/<key>/hu.npy + meta.json, OUT/errors.jsonl) is described in
ct3dzoo.data.cache. A rerun skips finished studies and redoes half-written ones; studies
that failed are listed in OUT/errors.jsonl and skipped unless --retry-errors.

examples:
  ct3dzoo prepare train.csv --out cache/ --spacing 1.5 1 1 --workers 8
  ct3dzoo prepare train.csv --out cache/ --shape 64 224 224 --shard 0/4   (one of 4 machines)
  then: CTDataset("train.csv", prepared="cache/")
"""


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``prepare`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "prepare",
        help="cache every study of a manifest as int16 HU (resumable, shardable)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("manifest", help="CSV with a 'path' column (DICOM folder, NIfTI, npy/npz)")
    p.add_argument("--out", required=True, help="cache folder (shared by all shards)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                   help="resample to Z Y X mm (or one number: isotropic)")  # fmt: skip
    g.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"),
                   help="resample to this model-ready shape")  # fmt: skip
    add_deprecated(g, "--size", dest="shape", new="--shape", nargs=3, type=int)
    p.add_argument("--workers", type=int, default=1, help="studies in parallel (threads)")
    p.add_argument("--shard", help="I/N: do every N-th study from the I-th "
                   "(default: RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)")  # fmt: skip
    p.add_argument("--retry-errors", action="store_true", help="redo studies in errors.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def study_paths(manifest: Any) -> list[str]:
    """The study paths a CSV manifest names (resolved like `read_manifest`); ``[]`` when it
    cannot be read (the command itself then reports why)."""
    from .dataset import read_manifest  # torch: only when a command reads a manifest

    try:
        records, _ = read_manifest(manifest, label_columns=[])
    except Exception:  # the command itself reports a bad manifest
        return []
    return [str(r["path"]) for r in records]


def _check_numbers(args: argparse.Namespace) -> None:
    spacing = args.spacing
    if spacing is not None and len(spacing) not in (1, 3):
        raise SystemExit(f"--spacing takes one number or three (Z Y X mm); got {len(spacing)}")
    for opt, values in (("--spacing", spacing), ("--shape", args.shape)):
        bad = [v for v in values or () if not 0 < v < float("inf")]  # NaN fails too
        if bad:
            raise SystemExit(f"{opt} values must be positive and finite; got {values}")
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1; got {args.workers}")


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``ct3dzoo prepare``; exit code 1 when a study failed in this run."""
    from .preparation import prepare

    _check_numbers(args)
    spacing = args.spacing
    check_outputs(
        {"--out": args.out},
        {"MANIFEST": args.manifest, "a study of the manifest": study_paths(args.manifest)},
        writes={"--out": ("studies", "errors.jsonl")},
    )
    res = prepare(
        args.manifest,
        args.out,
        spacing=spacing[0] if spacing is not None and len(spacing) == 1 else spacing,
        shape=args.shape,
        workers=args.workers,
        shard=args.shard,
        retry_errors=args.retry_errors,
        progress=not args.no_progress,
    )
    print(
        f"{len(res.written)} written, {len(res.skipped)} already done, {len(res.failed)} "
        f"failed in {res.seconds:.1f} s -> {res.out}"
    )
    if res.skipped_failed:
        print(
            f"  {len(res.skipped_failed)} of those failed before and their input is unchanged: "
            "not retried (fix the file, or pass --retry-errors)"
        )
    for key, err in res.failed.items():
        print(f"  failed {key}: {err}")
    if res.failed:
        print(f"  (listed in {res.out / 'errors.jsonl'})")
    return 1 if res.failed else 0
