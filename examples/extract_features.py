"""Extract embeddings (pre-logits) of CT volumes to ``.npy`` for linear probing.

    python examples/extract_features.py MANIFEST.csv --arch r3d_18 --out feats/
    python examples/extract_features.py --phantom 16 --out feats/      # synthetic data

MANIFEST.csv: ``path,label[,group]`` (DICOM folders, NIfTI files, .npy/.npz), as
``ct3dzoo.data.CTDataset`` reads it. Writes ``features.npy`` ``(N, num_features)`` float32,
``labels.npy`` ``(N, num_labels)`` and ``ids.txt`` (one id per row), in manifest order. The
model is loaded with ``num_classes=0``, so it returns the features its upstream feeds into
its classifier (e.g. 512-d for r3d_18, 2048-d for x3d).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import ct3dzoo
from ct3dzoo.data import CTDataset
from ct3dzoo.errors import WeightsUnavailableError


def extract(
    model: torch.nn.Module, dataset: CTDataset, batch_size: int = 4
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(features (N, F), labels (N, L), ids)`` of every item, in order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels, ids = [], [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            feats.append(model(batch["image"]).float().numpy())
            labels.append(batch["label"].numpy())
            ids += list(batch["id"])
    return np.concatenate(feats), np.concatenate(labels), ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("manifest", nargs="?", help="CSV with path,label[,group] columns")
    p.add_argument("--phantom", type=int, metavar="N", help="use N synthetic phantom cases instead")
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
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="features", help="output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    manifest = args.manifest
    if manifest is None:
        if not args.phantom:
            p.error("give a MANIFEST.csv or --phantom N")
        from ct3dzoo.phantom import make_phantom_dataset

        shape = (max(16, args.shape[0]), max(64, args.shape[1]), max(64, args.shape[2]))
        manifest = make_phantom_dataset(
            out / "phantom", n=args.phantom, seed=0, shape=shape, formats=("nifti",)
        )
    dataset = CTDataset(
        manifest, windows=args.windows, shape=tuple(args.shape), cache_dir=out / "cache"
    )

    pretrain = None if args.no_pretrain else "kinetics"
    try:
        model = ct3dzoo.load(
            args.arch, pretrain=pretrain, num_classes=0, in_chans=len(args.windows)
        )
    except WeightsUnavailableError as e:
        print(f"{e}\nNo pretrained weights: rerun with --no-pretrain for random features.")
        return 1
    feats, labels, ids = extract(model, dataset, args.batch_size)
    np.save(out / "features.npy", feats)
    np.save(out / "labels.npy", labels)
    (out / "ids.txt").write_text("\n".join(ids) + "\n")
    print(f"{args.arch}: features {feats.shape} -> {out / 'features.npy'} (+ labels.npy, ids.txt)")
    print(
        "linear probe, e.g.: sklearn.linear_model.LogisticRegression().fit(features, labels[:, 0])"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
