"""``ct3dzoo finetune``: finetune a zoo model over CSV manifests of volumes and labels.

The main CLI wires it in with :func:`add_finetune_parser` and :func:`run_finetune`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, Field
from typing import Any

from .._specs import ModelOptions
from .config import DATA, OPTIM, RUN, config_fields

__all__ = ["add_finetune_parser", "run_finetune"]

EPILOG = """\
A manifest is a CSV with a 'path' column (DICOM folder, .nii/.nii.gz, .npy/.npz; relative
paths resolve against the CSV's folder), optional 'id' and 'group' (study key: windows of a
study share it; study scores are the max over them) and one column per label.

example:
  ct3dzoo finetune train.csv --val val.csv --arch r3d_18 --out runs/r3d \\
      --shape 32 224 224 --windows pe --epochs 10 --lr 1e-4 --batch-size 4
  torchrun --nproc_per_node 4 --no-python ct3dzoo finetune train.csv ...   (data parallel)
"""


def add_finetune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``finetune`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "finetune",
        help="finetune a model on a manifest of CT volumes",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("train", help="training manifest (CSV)")
    p.add_argument("--val", help="validation manifest (CSV)")
    p.add_argument("--arch", required=True, help="architecture, e.g. r3d_18 (see list_models)")
    p.add_argument(
        "--pretrain",
        default="kinetics",
        help="'kinetics', a tag, a checkpoint path, or 'none' for random init",
    )
    p.add_argument("--num-classes", type=int, help="model outputs (default: label columns)")
    p.add_argument("--head", **ModelOptions.cli_kwargs("head"))
    p.add_argument("--drop-rate", **ModelOptions.cli_kwargs("drop_rate"))
    g = p.add_argument_group("data")
    g.add_argument("--windows", nargs="+", default=["pe"], help="HU window preset(s): channels")
    g.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"), help="resample to")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), help="in mm")
    g.add_argument("--cache-dir", help="cache of preprocessed volumes")
    g.add_argument("--label-columns", nargs="+", help="label columns (default: all others)")
    groups = {DATA: g, OPTIM: p.add_argument_group(OPTIM), RUN: p.add_argument_group(RUN)}
    for f in config_fields():
        if f.metadata["cli"]:
            _add_option(groups[f.metadata["group"]], f)
    p.set_defaults(func=run_finetune)
    return p


def _add_option(group: Any, f: Field[Any]) -> None:
    """One ``--flag`` from a :class:`FinetuneConfig` field: name, default, help, type."""
    meta = f.metadata
    flags = ["--" + f.name.replace("_", "-"), *meta["flags"]]
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    if f.default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
        if f.default is not None:
            kwargs["help"] += " (default: %(default)s)"
    if isinstance(f.default, bool) or f.type in ("bool", "bool | None"):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kind = meta["type"] or (type(f.default) if f.default not in (None, MISSING) else str)
        kwargs["type"] = kind
        for key in ("choices", "nargs"):
            if meta[key] is not None:
                kwargs[key] = meta[key]
    group.add_argument(*flags, **kwargs)


def _build_dataset(manifest: str, args: argparse.Namespace) -> Any:
    from ..data import CTDataset

    return CTDataset(
        manifest,
        windows=args.windows if len(args.windows) > 1 else args.windows[0],
        cache_dir=args.cache_dir,
        spacing=args.spacing,
        shape=args.shape,
        label_columns=args.label_columns,
    )


def _build_model(args: argparse.Namespace, num_classes: int) -> Any:
    from .. import load

    pretrain = None if str(args.pretrain).lower() == "none" else args.pretrain
    kwargs: dict[str, Any] = {}
    if args.shape is not None:
        kwargs.update(num_slices=args.shape[0], image_size=(args.shape[1], args.shape[2]))
    return load(
        args.arch,
        pretrain,
        num_classes=num_classes,
        in_chans=len(args.windows),
        head=args.head,
        drop_rate=args.drop_rate,
        **kwargs,
    )


def run_finetune(args: argparse.Namespace) -> int:
    """Run ``ct3dzoo finetune``; returns the process exit code."""
    from .api import finetune
    from .loop import TIMING_KEYS

    try:
        train = _build_dataset(args.train, args)
        val = _build_dataset(args.val, args) if args.val else None
        num_classes = args.num_classes or len(getattr(train, "label_columns", [])) or 1
        model = _build_model(args, num_classes)
        options = {f.name: getattr(args, f.name) for f in config_fields() if f.metadata["cli"]}
        if num_classes > 1:
            options["label_names"] = getattr(train, "label_columns", None)
        result = finetune(model, train, val, **options)
    except (ValueError, FileNotFoundError, FloatingPointError, KeyError) as e:
        print(f"ct3dzoo finetune: error: {e}", file=sys.stderr)
        return 1
    last = {k: v for k, v in (result.history or [{}])[-1].items() if k not in TIMING_KEYS}
    summary = {
        "epochs": len(result.history),
        "last": last,
        "monitor": result.monitor,
        "monitor_note": result.monitor_note,
        "best_metric": result.best_metric,
        "best_epoch": result.best_epoch,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "stopped_early": result.stopped_early,
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m ct3dzoo.train.cli train.csv ...``."""
    parser = argparse.ArgumentParser(prog="ct3dzoo")
    add_finetune_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["finetune", *(sys.argv[1:] if argv is None else argv)])
    return run_finetune(args)


if __name__ == "__main__":
    sys.exit(main())
