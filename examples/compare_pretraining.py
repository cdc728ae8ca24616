"""Compare pretraining sources: the same finetune, data and budget for several (arch, pretrain)
pairs at several training-set sizes; a CSV and a learning curve (AUROC vs training studies).

    python examples/compare_pretraining.py train.csv --val val.csv --sizes 25 50 100 200 \\
        --pairs r3d_18:kinetics medicalnet_resnet18:medicalnet resnet18_2d:imagenet r3d_18:none
    python examples/compare_pretraining.py --phantom 24 --sizes 4 8 --epochs 1 --out cmp/

Manifests as in ``finetune_dicom_folder.py`` (``path``, a binary ``label``, optional
``group``). Each pair's input follows its weights' contract (``ct3dzoo.data.transforms_for``):
video/ImageNet rows get the ``--window``, MedicalNet a z-score, Models Genesis HU
-1000..1000 -> [0, 1]. Training subsets are nested and label-balanced (the first ``n`` of one
fixed interleaved order), the validation set is the same for all. ``PAIR:none`` is random
init. When a pair's weights cannot be had (offline, no file), it trains from random init
instead and the output and the CSV's ``weights`` column say so (``--strict`` stops instead).
Writes ``OUT/results.csv`` and ``OUT/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import ct3dzoo
from ct3dzoo.data import CTDataset, transforms_for
from ct3dzoo.errors import WeightsUnavailableError
from ct3dzoo.phantom import make_phantom_dataset

FIELDS = ["arch", "pretrain", "weights", "n_train", "metric", "auroc", "best_epoch", "seconds"]


def balanced_order(labels: list[float], seed: int) -> list[int]:
    """Indices alternating positive/negative (each class shuffled by ``seed``), so every
    prefix is as balanced as the data allows and smaller subsets nest in larger ones."""
    rng = random.Random(seed)
    pos = [i for i, y in enumerate(labels) if y >= 0.5]
    neg = [i for i, y in enumerate(labels) if y < 0.5]
    rng.shuffle(pos)
    rng.shuffle(neg)
    out = []
    for k in range(max(len(pos), len(neg))):
        out += [lst[k] for lst in (pos, neg) if k < len(lst)]
    return out


def load_pair(arch: str, pretrain: str | None, *, strict: bool) -> tuple[ct3dzoo.CTModel, str]:
    """The model and what it was initialised with (said when weights were unavailable)."""
    if pretrain is None:
        return ct3dzoo.load(arch, pretrain=None, num_classes=1), "random init"
    try:
        model = ct3dzoo.load(arch, pretrain=pretrain, num_classes=1)
        return model, str(model.model_config["pretrain"])
    except WeightsUnavailableError as e:
        if strict:
            raise
        first = str(e).splitlines()[0]
        print(f"  {arch}:{pretrain}: weights unavailable, training from RANDOM init instead\n"
              f"    ({first})")  # fmt: skip
        return ct3dzoo.load(arch, pretrain=None, num_classes=1), "random init (unavailable)"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["arch"], r["pretrain"], r["weights"]) for r in rows):
        pts = sorted(
            (r["n_train"], r["auroc"])
            for r in rows
            if (r["arch"], r["pretrain"], r["weights"]) == key
        )
        label = f"{key[0]} / {key[1]}" + (
            "" if key[2] == key[1] or "." in key[2] else f" [{key[2]}]"
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training studies")
    ax.set_ylabel("validation AUROC")
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", nargs="?", help="CSV: path, label[, group] (training pool)")
    p.add_argument("--val", help="validation manifest (default: a split of the manifest)")
    p.add_argument("--val-fraction", type=float, default=1 / 3)
    p.add_argument("--phantom", type=int, metavar="N", help="make N synthetic series instead")
    p.add_argument("--pairs", nargs="+", metavar="ARCH:PRETRAIN",
                   default=["r3d_18:kinetics", "medicalnet_resnet18:medicalnet",
                            "resnet18_2d:imagenet", "r3d_18:none"])  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200],
                   help="training-set sizes (studies)")  # fmt: skip
    p.add_argument("--size", type=int, nargs=3, default=(32, 128, 128), metavar=("D", "H", "W"))
    p.add_argument("--window", default="pe", help="HU window for video/ImageNet rows")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="stop when weights are unavailable")
    p.add_argument("--out", default="compare-pretraining")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    manifest = args.manifest
    if manifest is None:
        if not args.phantom:
            p.error("give a MANIFEST.csv or --phantom N")
        shape = (max(16, args.size[0]), max(64, args.size[1]), max(64, args.size[2]))
        manifest = make_phantom_dataset(
            out / "phantom", n=args.phantom, seed=args.seed, shape=shape, formats=("dicom",),
            nodule_radius_mm=(12.0, 20.0),
        )  # fmt: skip
        print(f"wrote {args.phantom} synthetic DICOM series; manifest {manifest}")

    common = {"windows": None, "shape": tuple(args.size), "cache_dir": out / "cache"}
    pool = CTDataset(manifest, **common)
    labels = [r["labels"][0] for r in pool.records]
    order = balanced_order(labels, args.seed)
    if args.val:
        val_manifest, train_idx = args.val, order
    else:  # hold out a label-balanced validation set (whole groups are not split here:
        n_val = max(2, round(len(order) * args.val_fraction))  # one study per row)
        col = pool.label_columns[0]
        val_manifest = [
            {
                "path": str(pool.records[i]["path"]),
                col: labels[i],
                "group": pool.records[i]["group"],
            }
            for i in order[:n_val]
        ]
        train_idx = order[n_val:]
    sizes = sorted({min(n, len(train_idx)) for n in args.sizes})
    print(f"training pool {len(train_idx)}, sizes {sizes}")

    rows: list[dict] = []
    for pair in args.pairs:
        arch, _, pretrain = pair.partition(":")
        pretrain = None if pretrain in ("", "none", "None") else pretrain
        for n in sizes:
            torch.manual_seed(args.seed)  # the same random init (head, or all) for every run
            model, weights = load_pair(arch, pretrain, strict=args.strict)
            window_row = model.pretrained_cfg.input_contract.kind == "window"
            tf = transforms_for(model, windows=args.window if window_row else None)
            train = Subset(CTDataset(manifest, transform=tf, **common), train_idx[:n])
            val = CTDataset(val_manifest, transform=tf, **common)
            t0 = time.perf_counter()
            res = ct3dzoo.finetune(
                model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                out_dir=out / "runs" / f"{arch}-{pretrain}-{n}", seed=args.seed, progress=False,
            )  # fmt: skip
            row = {
                "arch": arch, "pretrain": str(pretrain), "weights": weights, "n_train": n,
                "metric": res.monitor, "auroc": res.best_metric, "best_epoch": res.best_epoch,
                "seconds": round(time.perf_counter() - t0, 1),
            }  # fmt: skip
            rows.append(row)
            print(f"  {arch:<22} {pretrain!s:<12} n={n:<4} {res.monitor}={res.best_metric}"
                  f"  [{weights}]")  # fmt: skip
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    plot(rows, out / "learning_curve.png")
    print(f"results -> {out / 'results.csv'}; learning curve -> {out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
