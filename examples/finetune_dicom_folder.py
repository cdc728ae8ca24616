"""Finetune a Kinetics-pretrained 3D model on DICOM series listed in a manifest.

    python examples/finetune_dicom_folder.py train.csv --val val.csv --arch r3d_18 --out run/
    python examples/finetune_dicom_folder.py all.csv --val-fraction 0.2 --out run/
    python examples/finetune_dicom_folder.py --phantom 24 --out run/       # synthetic DICOM

A manifest is a CSV with a ``path`` column (one DICOM series folder per row; relative paths
are relative to the CSV), one column per label (e.g. ``label``) and optionally ``group`` (the
study or patient: rows of one group stay on one side of the split and their scores are
max-aggregated). Volumes are read once, resampled to ``--shape`` and cached as ``.npy`` under
``OUT/cache``. Writes the finetune run (``OUT/run``: checkpoints, ``log.jsonl``), the final
model (``OUT/model``, for ``ct3dzoo.load("local-dir:OUT/model")``) and validation
probabilities (``OUT/val_predictions.csv``).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

from torch.utils.data import Subset

import ct3dzoo
from ct3dzoo.data import CTDataset
from ct3dzoo.errors import WeightsUnavailableError


def split_by_group(
    dataset: CTDataset, val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Train and validation indices; the groups (studies/patients) are split, not the rows."""
    groups = sorted({r["group"] for r in dataset.records})
    random.Random(seed).shuffle(groups)
    n_val = max(1, round(len(groups) * val_fraction))
    val_groups = set(groups[:n_val])
    val = [i for i, r in enumerate(dataset.records) if r["group"] in val_groups]
    train = [i for i, r in enumerate(dataset.records) if r["group"] not in val_groups]
    if not train:
        raise SystemExit("no training rows left after the split; lower --val-fraction")
    return train, val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", nargs="?", help="CSV: path (DICOM folder), label(s)[, group]")
    p.add_argument("--val", help="a separate validation manifest")
    p.add_argument("--val-fraction", type=float, default=0.25, help="without --val (default 0.25)")
    p.add_argument("--phantom", type=int, metavar="N", help="make N synthetic DICOM series instead")
    p.add_argument("--arch", default="x3d_xs")
    p.add_argument("--no-pretrain", action="store_true", help="random weights")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(32, 160, 160),
        metavar=("D", "H", "W"),
        help="model input shape, resampled to (default %(default)s)",
    )
    p.add_argument(
        "--windows",
        nargs="+",
        default=["pe"],
        help="HU windows: presets or C,W, one channel each (default pe)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="run-dicom")
    args = p.parse_args(argv)
    out = Path(args.out)

    manifest = args.manifest
    if manifest is None:
        if not args.phantom:
            p.error("give a MANIFEST.csv or --phantom N")
        from ct3dzoo.phantom import make_phantom_dataset

        shape = (max(16, args.shape[0]), max(64, args.shape[1]), max(64, args.shape[2]))
        manifest = make_phantom_dataset(
            out / "phantom", n=args.phantom, seed=args.seed, shape=shape, formats=("dicom",),
            nodule_radius_mm=(12.0, 20.0),
        )  # fmt: skip
        print(f"wrote {args.phantom} synthetic DICOM series; manifest {manifest}")

    common = {"windows": args.windows, "shape": tuple(args.shape), "cache_dir": out / "cache"}
    data = CTDataset(manifest, **common)
    if args.val:
        train, val = data, CTDataset(args.val, **common)
    else:
        tr_idx, va_idx = split_by_group(data, args.val_fraction, args.seed)
        train, val = Subset(data, tr_idx), Subset(data, va_idx)
    print(f"{len(train)} training and {len(val)} validation series, labels {data.label_columns}")

    kw = {"num_classes": data.num_labels, "in_chans": len(args.windows)}  # a channel per window
    try:
        pretrain = None if args.no_pretrain else "kinetics"
        model = ct3dzoo.load(args.arch, pretrain=pretrain, **kw)
    except WeightsUnavailableError as e:
        print(f"{e}\nNo pretrained weights: rerun with --no-pretrain to train from scratch.")
        return 1
    result = ct3dzoo.finetune(
        model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        out_dir=out / "run", seed=args.seed, label_names=data.label_columns,
    )  # fmt: skip
    print(f"best {result.monitor} {result.best_metric} at epoch {result.best_epoch}")

    task = "binary" if data.num_labels == 1 else "multilabel"
    probs = ct3dzoo.predict(model, val, batch_size=args.batch_size, task=task)
    ids = [val[i]["id"] for i in range(len(val))]
    with open(out / "val_predictions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *data.label_columns])
        for rid, row in zip(ids, probs.tolist()):
            w.writerow([rid, *(f"{v:.6f}" for v in row)])
    model_dir = model.save_pretrained(str(out / "model"))
    print(f"model -> {model_dir}; validation probabilities -> {out / 'val_predictions.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
