"""Do the saliency maps point at the lesion? Validity checks on the demo's own model (issue 19).

Trains the model exactly as ``ct3dzoo demo`` does (``ct3dzoo.demo.demo``, its defaults,
random init as offline), then, on the held-out positive cases, with the phantom's lesion
masks put through the same resampling and centre crop as the images (the model-input grid),
for each method of ``ct3dzoo.explain.saliency``:

  1. the pointing game: the share of cases whose map maximum lies inside the lesion, or
     within 1 voxel of it (the mask dilated by a 3x3x3 cube), against chance (the share of the
     volume that counts as a hit, averaged over the cases); the same for a randomised model;
  2. mean saliency inside the lesion / mean saliency outside it (averaged over the cases);
  3. the model-randomisation check (Adebayo et al., "Sanity Checks for Saliency Maps",
     NeurIPS 2018): Spearman rank correlation between each case's map from the trained model
     and from the same architecture with fresh random weights (low = the map depends on
     what the model learned).

    python benchmarks/saliency_validity.py [--seed 0] [--methods integrated_gradients ...]
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
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional import spearman_corrcoef

import ct3dzoo
from ct3dzoo.data import CTDataset, read_manifest, read_volume, transforms
from ct3dzoo.demo import DEFAULT_ARCH_KWARGS, DEFAULTS, demo
from ct3dzoo.explain import METHODS, resolve_saliency, study_saliency


def _data(summary: dict) -> tuple[list[Path], torch.Tensor, np.ndarray, np.ndarray]:
    """The held-out positives: their DICOM folders, the images as the demo fed them to the
    model ``(N, 1, D, H, W)``, their lesion masks on that grid ``(N, D, H, W)`` (read,
    resampled and cropped as ``demo`` does) and on the study's own grid."""
    size, crop = DEFAULTS["shape"], DEFAULTS["crop"]
    read_shape = (size[0], round(size[1] / crop), round(size[2] / crop))  # as ct3dzoo.demo
    centre = transforms.CenterCrop(size)
    root = Path(summary["val_manifest"]).parent
    records, _ = read_manifest(summary["val_manifest"])
    cases = json.loads((root / "cases.json").read_text())  # the same order as the manifest
    rows = [{"path": r["path"], "mask": root / c["mask"], "label": 1}
            for r, c in zip(records, cases) if c["label"] == 1]  # fmt: skip
    kw = {"windows": DEFAULTS["windows"], "shape": read_shape}
    images = CTDataset([{k: r[k] for k in ("path", "label")} for r in rows], transform=centre, **kw)
    masks = CTDataset(rows, mask_column="mask", **kw)
    x = torch.stack([images[i]["image"] for i in range(len(rows))])
    m = torch.stack([centre(masks.load_mask(i))[0] for i in range(len(rows))])
    study = np.stack([read_volume(r["mask"]).hu > 0.5 for r in rows])
    return [Path(r["path"]) for r in rows], x, m.numpy() > 0.5, study


def _maps(model: ct3dzoo.CTModel, paths: list[Path], method: str, pp: Any = None) -> tuple:
    """``study_saliency`` of each study: maps on the model-input grid, on the study grid, and
    the model inputs it used."""
    res = [study_saliency(model, p, method=method, preprocessing=pp) for p in paths]
    return (torch.from_numpy(np.stack([r.input_saliency for r in res])),
            torch.from_numpy(np.stack([r.saliency for r in res])),
            torch.stack([r.input for r in res]), res[0].preprocessing)  # fmt: skip


def _pointing(maps: torch.Tensor, regions: np.ndarray) -> float:
    flat = maps.flatten(1).argmax(1).numpy()
    return float(np.mean([regions[i].flat[k] for i, k in enumerate(flat)]))


def _row(title: str, trained: torch.Tensor, rand: torch.Tensor, masks: np.ndarray) -> str:
    near = np.stack([ndimage.binary_dilation(m, structure=np.ones((3, 3, 3), bool)) for m in masks])
    hit, chance = _pointing(trained, near), float(near.mean())
    ratio = np.mean([float(s[m].mean() / max(float(s[~m].mean()), 1e-12))
                     for s, m in zip(trained.numpy(), masks)])  # fmt: skip
    rho = [float(spearman_corrcoef(a.flatten(), b.flatten())) for a, b in zip(trained, rand)]
    return (f"| {title} | {hit:.3f} ({hit / chance:.0f}x) | {_pointing(trained, masks):.3f} | "
            f"{_pointing(rand, near):.3f} | {ratio:.1f} | {np.nanmean(rho):.3f} "
            f"({np.nanmin(rho):.2f}..{np.nanmax(rho):.2f}) |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="the demo's seed")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = ap.parse_args(argv)
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), ct3dzoo {ct3dzoo.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        summary = demo(
            out_dir=out / "demo", pretrain=None, seed=args.seed, verbose=False, progress=False
        )
        train_s = time.perf_counter() - t0
        model = ct3dzoo.load(f"local-dir:{summary['model_dir']}").eval()
        torch.manual_seed(args.seed + 1)
        randomised = ct3dzoo.load(
            DEFAULTS["arch"], pretrain=None, num_classes=1, **DEFAULT_ARCH_KWARGS
        ).eval()
        paths, x, masks, study_masks = _data(summary)
        with torch.no_grad():
            prob = torch.sigmoid(model(x))[:, 0]
        near = [ndimage.binary_dilation(m, structure=np.ones((3, 3, 3), bool)) for m in masks]
        print(f"# the demo's model: {DEFAULTS['arch']} {DEFAULT_ARCH_KWARGS}, random init, "
              f"{summary['n_train']} train / {summary['n_val']} held-out cases at "
              f"{'x'.join(map(str, DEFAULTS['shape']))}, {DEFAULTS['epochs']} epochs, seed "
              f"{args.seed}: held-out AUROC {summary['val_auroc']:.3f} ({train_s:.0f} s); "
              f"{len(x)} held-out positives (p > 0.5: {int((prob > 0.5).sum())}); chance "
              f"within 1 voxel: {np.mean(near):.4f} (model input {tuple(x.shape[2:])}), study "
              f"grid {study_masks.shape[1:]}")  # fmt: skip
        head = ("| method (native grid) | pointing game, 1 voxel (x chance) | inside the lesion |"
                " randomised model, 1 voxel | mean inside / outside | Spearman trained vs "
                "randomised (mean; min..max) |\n|---|---|---|---|---|---|")  # fmt: skip
        tables: dict[str, list[str]] = {"model-input grid": [head], "study grid": [head]}
        for method in args.methods:
            title = resolve_saliency(model, x.shape[2:], method=method).title
            t = time.perf_counter()
            try:
                trained, trained_study, inputs, pp = _maps(model, paths, method)
            except ValueError as e:  # e.g. no stage resolves at this size
                print(f"# {title}: {e}")
                continue
            secs = (time.perf_counter() - t) / len(x)
            if not torch.allclose(inputs, x, atol=1e-5):  # the grids must be the same
                raise RuntimeError("study_saliency's model input differs from the demo's")
            rand, rand_study, _, _ = _maps(randomised, paths, method, pp)
            tables["model-input grid"].append(_row(title, trained, rand, masks))
            tables["study grid"].append(_row(title, trained_study, rand_study, study_masks))
            print(f"# {method}: {secs:.2f} s per study", flush=True)
    for grid, lines in tables.items():
        print(f"\n{grid}:\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
