"""Is Grad-CAM looking at the lesion? Two validity checks on the phantom (issue 12).

A classifier (random init, as offline) is finetuned on phantom chest CTs with nodules; on the
positive validation cases:

  1. the pointing game: the fraction of cases whose Grad-CAM maximum lies inside the lesion
     mask, against chance (the mask's volume fraction, averaged over the cases: where a
     uniformly random voxel would land);
  2. the weight-randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency
     Maps", NeurIPS 2018): Spearman rank correlation between each case's map from the
     trained model and from the same architecture with random weights; a map that explains
     the model must change (low correlation). The randomised model's pointing game is shown
     beside it.

    python benchmarks/saliency_validity.py [--arch resnet18_2d] [--n 64] [--size 16 64 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchmetrics.functional import spearman_corrcoef

import ct3dzoo
from ct3dzoo.data import CTDataset
from ct3dzoo.explain import gradcam
from ct3dzoo.phantom import make_phantom_dataset


def _maps(model: torch.nn.Module, data: CTDataset) -> list[torch.Tensor]:
    model.eval()
    return [gradcam(model, data[i]["image"][None])[0] for i in range(len(data))]


def _near(mask: torch.Tensor, spacing: list[float], tol_mm: float) -> torch.Tensor:
    """Voxels within ``tol_mm`` of the mask (the mask itself for 0), ``(D, H, W)`` bool."""
    if tol_mm <= 0:
        return mask > 0
    sp = torch.tensor(spacing, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in mask.shape), indexing="ij"))
    pts = grid.flatten(1).T.float() * sp
    lesion = pts[mask.flatten() > 0]
    return (torch.cdist(pts, lesion).min(1).values <= tol_mm).reshape(mask.shape)


def _pointing(maps: list[torch.Tensor], regions: list[torch.Tensor]) -> float:
    hits = [bool(r.flatten()[int(s.flatten().argmax())]) for s, r in zip(maps, regions)]
    return sum(hits) / len(hits)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet18_2d")
    ap.add_argument("--n", type=int, default=64, help="phantom cases (3/4 train, 1/4 val)")
    ap.add_argument("--size", type=int, nargs=3, default=(16, 64, 64), metavar=("D", "H", "W"))
    ap.add_argument("--nodule-mm", type=float, nargs=2, default=(16.0, 24.0))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--tolerance-mm",
        type=float,
        default=15.0,
        help="a hit may lie this close to the mask (Zhang et al. 2016: 15 px)",
    )
    ap.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = ap.parse_args(argv)
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), ct3dzoo {ct3dzoo.__version__}")  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        root = out / "phantom"
        make_phantom_dataset(
            root, n=args.n, seed=args.seed, shape=args.size, formats=("nifti",),
            nodule_radius_mm=tuple(args.nodule_mm),
        )  # fmt: skip
        cases = json.loads((root / "cases.json").read_text())
        rows = [
            {"path": root / "nifti" / f"{c['case']}.nii.gz", "mask": root / c["mask"],
             "label": c["label"], "group": c["group"]}
            for c in cases
        ]  # fmt: skip
        n_val = max(4, len(rows) // 4)
        cls_rows = [{k: r[k] for k in ("path", "label", "group")} for r in rows]
        train = CTDataset(cls_rows[:-n_val], windows="lung")
        val = CTDataset(cls_rows[-n_val:], windows="lung")
        pos = [r for r in rows[-n_val:] if r["label"] == 1]
        spacings = [c["spacing"] for c in cases[-n_val:] if c["label"] == 1]
        pos_data = CTDataset(pos, mask_column="mask", windows="lung")
        masks = [pos_data.load_mask(i)[0] for i in range(len(pos_data))]

        kw = dict(num_classes=1, num_slices=args.size[0], image_size=args.size[1:])
        torch.manual_seed(args.seed)
        model = ct3dzoo.load(args.arch, pretrain=None, **kw)
        result = ct3dzoo.finetune(
            model, train, val, out_dir=out / "run", epochs=args.epochs, lr=args.lr,
            batch_size=4, warmup_epochs=1, seed=args.seed, progress=False,
        )  # fmt: skip
        auroc = result.history[result.best_epoch - 1]["val_auroc"]
        torch.manual_seed(args.seed + 1)
        randomised = ct3dzoo.load(args.arch, pretrain=None, **kw)

        trained_maps, random_maps = _maps(model, pos_data), _maps(randomised, pos_data)
    table = []
    for tol in (0.0, args.tolerance_mm):
        regions = [_near(m, sp, tol) for m, sp in zip(masks, spacings)]
        chance = sum(float(r.float().mean()) for r in regions) / len(regions)
        hits = _pointing(trained_maps, regions), _pointing(random_maps, regions)
        table.append((tol, chance, *hits))
    rho = [float(spearman_corrcoef(a.flatten(), b.flatten()))
           for a, b in zip(trained_maps, random_maps)]  # fmt: skip
    rho_mean = sum(rho) / len(rho)
    secs = time.perf_counter() - t0

    print(f"# {args.arch}, random init, {len(train)} train / {len(val)} val phantom cases at "
          f"{tuple(args.size)}, {args.epochs} epochs, best val AUROC {auroc:.3f} (epoch "
          f"{result.best_epoch}); {len(masks)} positive val cases; {secs:.0f} s")  # fmt: skip
    print("| check | trained model | baseline | ratio |")
    print("|---|---|---|---|")
    for tol, chance, hit_trained, hit_random in table:
        where = "inside the lesion" if tol <= 0 else f"within {tol:g} mm of the lesion"
        print(f"| pointing game: Grad-CAM max {where} | {hit_trained:.3f} | "
              f"chance {chance:.4f} | {hit_trained / chance:.1f}x |")  # fmt: skip
        print(f"| same, randomised weights | {hit_random:.3f} | chance {chance:.4f} | "
              f"{hit_random / chance:.1f}x |")  # fmt: skip
    print(f"| Spearman rho, trained vs randomised maps (mean; min..max) | {rho_mean:.3f} "
          f"({min(rho):.3f}..{max(rho):.3f}) | 1 = identical maps | - |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
