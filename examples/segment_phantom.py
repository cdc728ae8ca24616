"""Train ``head="segmentation"`` on phantom chest CTs with lesion masks, and compare its
validation Dice with the Dice of an empty prediction.

    python examples/segment_phantom.py --out seg/                      # defaults below
    python examples/segment_phantom.py --out seg/ --n 8 --shape 8 32 32 --epochs 1   # tiny

The phantom (``ct3dzoo.phantom``) writes each case as NIfTI with its lesion mask; a
``CTDataset(..., mask_column="mask")`` yields ``(image, mask)`` items, and
``ct3dzoo.finetune`` picks the segmentation task from the mask labels (BCE + soft Dice loss,
Dice metric). The model starts from random weights unless ``--pretrain`` names weights you
have. ``val_dice`` is the Dice of all validation voxels together (an empty prediction scores
0); ``val_dice_case`` averages per-case Dice, where a negative case predicted empty scores 1
(so an empty prediction scores the fraction of negative cases). Writes ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ct3dzoo
from ct3dzoo.data import CTDataset
from ct3dzoo.phantom import make_phantom_dataset
from ct3dzoo.train import DiceAccumulator


def empty_prediction_dice(dataset: CTDataset) -> dict[str, float]:
    """Dice of predicting no lesion anywhere, computed like the validation Dice."""
    acc = DiceAccumulator(1)
    for i in range(len(dataset)):
        mask = dataset.load_mask(i)[None]
        acc.update(torch.full_like(mask, -1.0), mask)
    return acc.compute()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", default="resnet18_2d")
    ap.add_argument("--pretrain", default=None, help="weights tag (default: random init)")
    ap.add_argument("--n", type=int, default=24, help="phantom cases (3/4 train, 1/4 val)")
    ap.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(16, 64, 64),
        metavar=("D", "H", "W"),
        help="phantom and model input shape (default %(default)s)",
    )
    ap.add_argument("--nodule-mm", type=float, nargs=2, default=(25.0, 35.0),
                    help="range of the nodule radius (mm)")  # fmt: skip
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pos-weight", type=float, default=10.0,
                    help="BCE weight of lesion voxels (they are few)")  # fmt: skip
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    root = args.out / "phantom"
    make_phantom_dataset(
        root, n=args.n, seed=args.seed, shape=args.shape, formats=("nifti",),
        positive_fraction=0.75, nodule_radius_mm=tuple(args.nodule_mm),
    )  # fmt: skip
    cases = json.loads((root / "cases.json").read_text())
    rows = [
        {"path": root / "nifti" / f"{c['case']}.nii.gz", "mask": root / c["mask"],
         "group": c["group"]}
        for c in cases
    ]  # fmt: skip
    n_val = max(2, len(rows) // 4)
    train = CTDataset(rows[:-n_val], mask_column="mask", windows="lung")
    val = CTDataset(rows[-n_val:], mask_column="mask", windows="lung")

    torch.manual_seed(args.seed)
    model = ct3dzoo.load(
        args.arch, pretrain=args.pretrain, head="segmentation", num_classes=1,
        num_slices=args.shape[0], image_size=args.shape[1:],
    )  # fmt: skip
    result = ct3dzoo.finetune(
        model, train, val, out_dir=args.out / "run", epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, warmup_epochs=1, pos_weight=args.pos_weight, seed=args.seed, progress=False,
    )  # fmt: skip
    best = result.history[result.best_epoch - 1]
    empty = empty_prediction_dice(val)
    summary = {
        "arch": args.arch,
        "pretrain": args.pretrain,
        "size": list(args.shape),
        "n_train": len(train),
        "n_val": len(val),
        "epochs": args.epochs,
        "best_epoch": result.best_epoch,
        "val_dice": best["val_dice"],
        "val_dice_case": best["val_dice_case"],
        "empty_dice": empty["dice"],
        "empty_dice_case": empty["dice_case"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.arch} ({args.pretrain or 'random init'}), {len(train)} train / {len(val)} val "
          f"phantom cases at {tuple(args.shape)}, best epoch {result.best_epoch}/{args.epochs}")  # fmt: skip
    print(f"{'':24}{'Dice (all voxels)':>20}{'Dice (per case)':>18}")
    print(f"{'model':24}{best['val_dice']:>20.3f}{best['val_dice_case']:>18.3f}")
    print(f"{'empty prediction':24}{empty['dice']:>20.3f}{empty['dice_case']:>18.3f}")
    print(f"({summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
