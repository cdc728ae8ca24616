"""Compare pretraining sources: the same finetune, data and budget for several (arch, pretrain)
pairs at several training-set sizes and seeds; each source's validation AUROC with a 95%
interval over studies and seeds, paired tests between sources, and a learning curve with
interval bands.

    python examples/compare_pretraining.py train.csv --val val.csv --sizes 25 50 100 200 \\
        --seeds 0 1 2 --pairs r3d_18:kinetics medicalnet_resnet18:medicalnet \\
        resnet18_2d:imagenet r3d_18:none
    python examples/compare_pretraining.py --phantom 24 --sizes 4 8 --epochs 1 --out cmp/

Manifests as in ``finetune_dicom_folder.py`` (``path``, a binary ``label``, optional
``group``). Each pair's input follows its weights' contract (``ct3dzoo.data.transforms_for``):
video/ImageNet rows get the ``--windows``, MedicalNet a z-score, Models Genesis HU
-1000..1000 -> [0, 1]. The validation set is the same for every run (``--val``, or a
label-balanced split drawn with ``--split-seed``). For each training seed, training subsets
are nested and label-balanced (the first ``n`` of one interleaved order drawn with that
seed), and every pair trains on the same subsets from the same random init. ``PAIR:none``
is random init. When a pair's weights cannot be had (offline, no file), it trains from
random init instead and the output and the CSV's ``weights`` column say so (``--strict``
stops instead). The comparison is ``ct3dzoo.train.compare_sources`` on each run's study
scores (see docs/comparing_pretraining.md).
Writes ``OUT/results.csv`` (one row per run), ``OUT/summary.csv`` (AUROC and interval per
pair and size), ``OUT/comparisons.csv`` (paired tests), ``OUT/comparison.json`` and
``OUT/learning_curve.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

import ct3dzoo
from ct3dzoo.data import CTDataset, transforms_for
from ct3dzoo.errors import WeightsUnavailableError
from ct3dzoo.phantom import make_phantom_dataset
from ct3dzoo.train import compare_sources

FIELDS = ["arch", "pretrain", "weights", "n_train", "seed", "metric", "auroc", "best_epoch",
          "seconds"]  # fmt: skip
SUMMARY = ["n_train", "source", "weights", "n_seeds", "auroc", "auroc_ci_low", "auroc_ci_high"]
TESTS = ["n_train", "a", "b", "auroc_diff", "diff_ci_low", "diff_ci_high", "p_value"]


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


def load_pair(
    arch: str, pretrain: str | None, *, seed: int, strict: bool
) -> tuple[ct3dzoo.CTModel, str]:
    """The model and what it was initialised with (said when weights were unavailable). The
    random parts (the new head, or everything) are drawn from ``seed``, also on fallback."""
    torch.manual_seed(seed)
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
        torch.manual_seed(seed)
        return ct3dzoo.load(arch, pretrain=None, num_classes=1), "random init (unavailable)"


def plot(summary: list[dict], path: Path) -> None:
    """AUROC against training studies, one line per source, its interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for source in dict.fromkeys(r["source"] for r in summary):
        pts = sorted((r["n_train"], r) for r in summary if r["source"] == source)
        x = [n for n, _ in pts]
        weights = pts[0][1]["weights"]
        label = source + ("" if "." in weights else f" [{weights}]")
        (line,) = ax.plot(x, [r["auroc"] for _, r in pts], marker="o", label=label)
        low, high = [r["auroc_ci_low"] for _, r in pts], [r["auroc_ci_high"] for _, r in pts]
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, lw=0)
        ax.plot(x, low, color=line.get_color(), lw=0.6, ls=":")
        ax.plot(x, high, color=line.get_color(), lw=0.6, ls=":")
    n_seeds = summary[0]["n_seeds"]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training studies")
    ax.set_ylabel("validation AUROC (study level)")
    ax.set_title(f"mean over {n_seeds} seed(s); bands: 95% bootstrap interval over "
                 "studies and seeds", fontsize=8)  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", nargs="?", help="CSV: path, label[, group] (training pool)")
    p.add_argument("--val", help="validation manifest (default: a split of the manifest)")
    p.add_argument("--val-fraction", type=float, default=1 / 3)
    p.add_argument("--phantom", type=int, metavar="N", help="make N synthetic series instead")
    p.add_argument(
        "--nodule-radius-mm",
        type=float,
        nargs=2,
        default=(12.0, 20.0),
        metavar=("LO", "HI"),
        help="phantom nodule radius range (default 12 20)",
    )
    p.add_argument(
        "--lung-vessel-hu",
        type=float,
        default=750.0,
        help="phantom lung-vessel contrast (default 750; the demo's 300: smoother)",
    )
    p.add_argument("--pairs", nargs="+", metavar="ARCH:PRETRAIN",
                   default=["r3d_18:kinetics", "medicalnet_resnet18:medicalnet",
                            "resnet18_2d:imagenet", "r3d_18:none"])  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200],
                   help="training-set sizes (studies)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (init, data order, training subsets); paired across "
                   "pairs")  # fmt: skip
    p.add_argument("--split-seed", type=int, default=0, help="of the validation split")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(32, 128, 128),
        metavar=("D", "H", "W"),
        help="model input shape, resampled to (default %(default)s)",
    )
    p.add_argument(
        "--windows",
        nargs=1,
        default=["pe"],
        metavar="WINDOW",
        help="the HU window (a preset or C,W) of video/ImageNet rows: one, so that every "
        "source sees one channel (default pe)",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--strict", action="store_true", help="stop when weights are unavailable")
    p.add_argument("--out", default="compare-pretraining")
    args = p.parse_args(argv)
    if len(set(args.pairs)) != len(args.pairs):
        p.error(f"--pairs lists a pair twice: {args.pairs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    manifest = args.manifest
    if manifest is None:
        if not args.phantom:
            p.error("give a MANIFEST.csv or --phantom N")
        shape = (max(16, args.shape[0]), max(64, args.shape[1]), max(64, args.shape[2]))
        manifest = make_phantom_dataset(
            out / "phantom", n=args.phantom, seed=args.split_seed, shape=shape,
            formats=("dicom",), nodule_radius_mm=tuple(args.nodule_radius_mm),
            lung_vessel_hu=args.lung_vessel_hu,
        )  # fmt: skip
        print(f"wrote {args.phantom} synthetic DICOM series; manifest {manifest}")

    common = {"windows": None, "shape": tuple(args.shape), "cache_dir": out / "cache"}
    pool = CTDataset(manifest, **common)
    labels = [r["labels"][0] for r in pool.records]
    order = balanced_order(labels, args.split_seed)
    if args.val:
        val_manifest, pool_idx = args.val, order
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
        pool_idx = order[n_val:]
    # per seed, one label-balanced order of the training pool: nested subsets, shared by pairs
    train_order = {
        seed: [pool_idx[j] for j in balanced_order([labels[i] for i in pool_idx], seed)]
        for seed in args.seeds
    }
    sizes = sorted({min(n, len(pool_idx)) for n in args.sizes})
    val_records = CTDataset(val_manifest, **common).records
    studies = list(dict.fromkeys(r["group"] for r in val_records))
    study_label = {r["group"]: r["labels"][0] for r in val_records}
    targets = np.array([float(study_label[s] >= 0.5) for s in studies])
    print(f"training pool {len(pool_idx)}, sizes {sizes}, seeds {args.seeds}; "
          f"{len(studies)} validation studies ({int(targets.sum())} positive)")  # fmt: skip

    rows: list[dict] = []
    scores: dict[int, dict[str, list[np.ndarray]]] = {n: {} for n in sizes}
    weights_of: dict[str, str] = {}
    for pair in args.pairs:
        arch, _, pretrain = pair.partition(":")
        pretrain = None if pretrain in ("", "none", "None") else pretrain
        source = f"{arch}:{pretrain or 'none'}"
        for n in sizes:
            for seed in args.seeds:
                model, weights = load_pair(arch, pretrain, seed=seed, strict=args.strict)
                weights_of[source] = weights
                window_row = model.pretrained_cfg.input_contract.kind == "window"
                tf = transforms_for(model, windows=args.windows if window_row else None)
                train = Subset(CTDataset(manifest, transform=tf, **common), train_order[seed][:n])
                val = CTDataset(val_manifest, transform=tf, **common)
                t0 = time.perf_counter()
                res = ct3dzoo.finetune(
                    model, train, val, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, seed=seed, progress=False,
                    out_dir=out / "runs" / f"{arch}-{pretrain}-{n}-seed{seed}",
                )  # fmt: skip
                # the best epoch's weights (restored by finetune) on the validation studies
                by_study = ct3dzoo.predict(model, val, aggregate="max", batch_size=args.batch_size)
                scores[n].setdefault(source, []).append(
                    np.array([float(by_study[s][0]) for s in studies])
                )
                rows.append({
                    "arch": arch, "pretrain": str(pretrain), "weights": weights, "n_train": n,
                    "seed": seed, "metric": res.monitor, "auroc": res.best_metric,
                    "best_epoch": res.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                })  # fmt: skip
                print(f"  {arch:<22} {pretrain!s:<12} n={n:<4} seed={seed:<3} "
                      f"{res.monitor}={res.best_metric}  [{weights}]")  # fmt: skip

    summary, tests, report = [], [], {}
    for n in sizes:
        runs = {source: np.stack(v) for source, v in scores[n].items()}
        comp = compare_sources(runs, targets, n_resamples=args.resamples, seed=args.split_seed)
        report[n] = comp
        print(f"n_train={n}: validation AUROC, {comp['interval']}")
        if "note" in comp:
            print(f"  NOTE: {comp['note']}")
        for source, r in comp["sources"].items():
            lo, hi = r["auroc_ci"]
            summary.append({
                "n_train": n, "source": source, "weights": weights_of[source],
                "n_seeds": comp["n_seeds"], "auroc": r["auroc"], "auroc_ci_low": lo,
                "auroc_ci_high": hi,
            })  # fmt: skip
            print(f"  {source:<34} {r['auroc']:.3f} [{lo:.3f}, {hi:.3f}]")
        for c in comp["comparisons"]:
            lo, hi = c["diff_ci"]
            tests.append({
                "n_train": n, "a": c["a"], "b": c["b"], "auroc_diff": c["auroc_diff"],
                "diff_ci_low": lo, "diff_ci_high": hi, "p_value": c["p_value"],
            })  # fmt: skip
            print(f"  {c['a']} - {c['b']}: {c['auroc_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                  f"p={c['p_value']:.3g}")  # fmt: skip
    _write_csv(out / "results.csv", FIELDS, rows)
    _write_csv(out / "summary.csv", SUMMARY, summary)
    _write_csv(out / "comparisons.csv", TESTS, tests)
    (out / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(summary, out / "learning_curve.png")
    print(f"results -> {out / 'results.csv'}, {out / 'summary.csv'}, "
          f"{out / 'comparisons.csv'}; learning curve -> {out / 'learning_curve.png'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
