"""``ct3dzoo finetune``: finetune a zoo model over CSV manifests of volumes and labels.

The main CLI wires it in with :func:`add_finetune_parser` and :func:`run_finetune`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, Field
from typing import Any

from .._cli_args import add_deprecated, spacing_value
from .._specs import ModelOptions
from .config import DATA, OPTIM, RUN, config_fields

__all__ = ["add_finetune_parser", "run_finetune"]

EPILOG = """\
A manifest is a CSV with a 'path' column (DICOM folder, .nii/.nii.gz, .npy/.npz; relative
paths resolve against the CSV's folder), optional 'id' and 'group' (study key: windows of a
study share it; study scores are the max over them) and one column per label.

The finetuned model is written to OUT/final with its preprocessing (preprocessor_config.json:
the resampling, HU windows and labels used here) and its validation scores, so
`ct3dzoo predict OUT/final ...` reads studies exactly as training did.

example:
  ct3dzoo finetune train.csv --val val.csv --model r3d_18 --out runs/r3d \\
      --shape 32 224 224 --windows pe --epochs 10 --lr 1e-4 --batch-size 4
  ct3dzoo predict runs/r3d/final test.csv --out scores.csv
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
    # one required group: the hidden old --arch satisfies "--model is required" (a plain
    # required=True is only met by --model itself) and giving both is refused
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument(
        "--model", metavar="MODEL",
        help="an architecture (arch or arch.tag, see `ct3dzoo list`) with --pretrain weights, or "
        "a finetuned folder / local-dir:PATH / hf-hub:ORG/NAME to finetune further",
    )  # fmt: skip
    add_deprecated(m, "--arch", dest="model", new="--model")
    p.add_argument(
        "--pretrain",
        default="default",
        help="for an architecture: 'default' (its default weights, e.g. Kinetics), a tag, a "
        "checkpoint path, or 'none' for random init",
    )
    p.add_argument("--num-classes", type=int, help="model outputs (default: label columns)")
    p.add_argument("--head", **ModelOptions.cli_kwargs("head"))
    p.add_argument("--drop-rate", **ModelOptions.cli_kwargs("drop_rate"))
    g = p.add_argument_group("data")
    g.add_argument("--windows", nargs="+", default=["pe"],
                   help="HU window(s): presets or C,W in HU, one channel each (default pe)")  # fmt: skip
    g.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"), help="resample to")
    g.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                   help="resample to this spacing: 1 number (isotropic) or 3 (z y x), mm")  # fmt: skip
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
        spacing=spacing_value(args.spacing),
        shape=args.shape,
        label_columns=args.label_columns,
    )


def _build_model(args: argparse.Namespace, num_classes: int) -> Any:
    from .._references import load_reference
    from .._saved import is_model_folder

    ref = str(args.model)
    if ref.startswith(("hf-hub:", "local-dir:")) or is_model_folder(ref):
        model = load_reference(ref, progress=False)
        if model.in_chans != len(args.windows):
            raise ValueError(
                f"{ref} takes {model.in_chans} input channel(s); give as many --windows "
                f"(got {len(args.windows)})"
            )
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        return model
    kwargs: dict[str, Any] = {}
    if args.shape is not None:
        kwargs.update(num_slices=args.shape[0], image_size=(args.shape[1], args.shape[2]))
    return load_reference(
        ref,
        pretrain=args.pretrain,
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
