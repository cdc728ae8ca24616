"""``ct3dzoo finetune``: finetune a zoo model over CSV manifests of volumes and labels.

The main CLI wires it in with :func:`add_finetune_parser` and :func:`run_finetune`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    p.add_argument("--out", required=True, help="output directory (checkpoints, log.jsonl)")
    p.add_argument("--num-classes", type=int, help="model outputs (default: label columns)")
    p.add_argument("--task", choices=["binary", "multilabel", "multiclass"])
    p.add_argument("--head", default="linear", help="linear, mlp or attention")
    p.add_argument("--drop-rate", type=float, default=0.0)
    g = p.add_argument_group("data")
    g.add_argument("--windows", nargs="+", default=["pe"], help="HU window preset(s): channels")
    g.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"), help="resample to")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"), help="in mm")
    g.add_argument("--cache-dir", help="cache of preprocessed volumes")
    g.add_argument("--label-columns", nargs="+", help="label columns (default: all others)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    g.add_argument("--balanced", action="store_true", help="class-balanced sampling")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--batch-size", type=int, default=2, help="per process")
    g.add_argument("--accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--backbone-lr-scale", type=float, default=1.0)
    g.add_argument("--freeze", choices=["none", "backbone", "stem"], default="none")
    g.add_argument("--warmup-epochs", type=float, default=1.0)
    g.add_argument("--max-grad-norm", type=float)
    g.add_argument("--pos-weight", type=float, nargs="+", help="BCE positive weight(s)")
    g.add_argument("--patience", type=int, help="early-stopping patience (epochs)")
    g.add_argument("--monitor", help="metric for best/early stopping (default: val AUROC)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("hardware and checkpoints")
    g.add_argument("--device", help="default: cuda if available, else cpu")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    g.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, help="default: on CUDA"
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true")
    g.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_finetune)
    return p


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
    from .loop import TIMING_KEYS, finetune

    try:
        train = _build_dataset(args.train, args)
        val = _build_dataset(args.val, args) if args.val else None
        num_classes = args.num_classes or len(getattr(train, "label_columns", [])) or 1
        model = _build_model(args, num_classes)
        result = finetune(
            model,
            train,
            val,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            out_dir=args.out,
            task=args.task,
            weight_decay=args.weight_decay,
            backbone_lr_scale=args.backbone_lr_scale,
            freeze=args.freeze,
            warmup_epochs=args.warmup_epochs,
            grad_accum_steps=args.accum,
            max_grad_norm=args.max_grad_norm,
            pos_weight=args.pos_weight,
            balanced_sampling=args.balanced,
            precision=args.precision,
            channels_last=args.channels_last,
            compile=args.compile,
            grad_checkpointing=args.grad_checkpointing,
            patience=args.patience,
            monitor=args.monitor,
            checkpoint_every_steps=args.checkpoint_every,
            resume=args.resume,
            seed=args.seed,
            num_workers=args.workers,
            device=args.device,
            label_names=getattr(train, "label_columns", None) if num_classes > 1 else None,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FloatingPointError, KeyError) as e:
        print(f"ct3dzoo finetune: error: {e}", file=sys.stderr)
        return 1
    last = {k: v for k, v in (result.history or [{}])[-1].items() if k not in TIMING_KEYS}
    summary = {
        "epochs": len(result.history),
        "last": last,
        "monitor": result.monitor,
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
