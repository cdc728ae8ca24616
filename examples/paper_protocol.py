"""The paper's RSNA-PE protocol (Ke et al., MIDL 2023), on real RSNA data or on phantoms.

    python examples/paper_protocol.py --rsna /data/rsna-pe --max-studies 200 --out pe-run/
    python examples/paper_protocol.py --out pe-run/                  # synthetic CTPA phantoms

Protocol: each series is windowed with the PE window (centre 400, width 1000 HU), resized
in-plane to ``--image-size``, and cut into windows of 32 consecutive slices every 24 slices
(the last window is shifted to end at the last slice). A window is positive when one of its
slices shows PE; the model is finetuned on windows, and a **study's score is the max over
its windows' probabilities**, scored with study-level AUROC.

``--rsna ROOT`` expects the Kaggle layout of the RSNA-STR PE Detection data:
``ROOT/train.csv`` (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID,
pe_present_on_image, ...) and ``ROOT/train/<study>/<series>/<sop>.dcm``. Without it, CT
pulmonary-angiogram phantoms with a filling defect (embolus) in a pulmonary artery stand in.
Validation studies are scored whole with `ct3dzoo.predict_study` (every window, max over
windows, per-slice scores). Writes ``window_scores.csv``, ``study_scores.csv``, the run and
the model under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import ct3dzoo
from ct3dzoo.data import apply_window, read_dicom_series, read_volume, resample
from ct3dzoo.data.geometry import slice_window_bounds
from ct3dzoo.errors import WeightsUnavailableError

PE_WINDOW = (400.0, 1000.0)  # [-100, 900] HU


class WindowDataset(Dataset):
    """Slice windows of preprocessed studies (memory-mapped ``.npy``), labelled per window."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        vol = np.load(it["npy"], mmap_mode="r")
        x = torch.from_numpy(np.array(vol[it["start"] : it["stop"]], dtype=np.float32))
        return {
            "image": x[None],
            "label": torch.tensor([it["label"]], dtype=torch.float32),
            "id": f"{it['study']}:{it['start']}",
            "group": it["study"],
        }


def windows_of_study(
    hu: np.ndarray,
    slice_labels: Sequence[int],
    *,
    study: str,
    cache: Path,
    image_size: int,
    num_slices: int,
    stride: int,
) -> list[dict[str, Any]]:
    """Window, resize and cache one study; one item per slice window (label = any slice)."""
    from ct3dzoo.data import CTVolume

    depth = hu.shape[0]
    vol = resample(CTVolume(hu, spacing=(1.0, 1.0, 1.0)), shape=(depth, image_size, image_size))
    x = apply_window(vol.hu, PE_WINDOW).astype(np.float16)
    if depth < num_slices:  # pad with air (0 after windowing) to one full window
        x = np.concatenate([x, np.zeros((num_slices - depth, *x.shape[1:]), x.dtype)])
    npy = cache / f"{study}.npy"
    np.save(npy, x)
    labels = list(slice_labels) + [0] * (x.shape[0] - depth)
    return [
        {"npy": str(npy), "study": study, "start": a, "stop": b, "label": int(max(labels[a:b]))}
        for a, b in slice_window_bounds(x.shape[0], num_slices, stride, "shift")
    ]


def rsna_studies(root: Path, max_studies: int | None) -> list[tuple[str, Path, dict[str, int]]]:
    """``(study, series folder, {SOPInstanceUID: pe_present_on_image})`` from train.csv."""
    per_series: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    with open(root / "train.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["StudyInstanceUID"], r["SeriesInstanceUID"])
            per_series[key][r["SOPInstanceUID"]] = int(r["pe_present_on_image"])
    out = [(s, root / "train" / s / se, lab) for (s, se), lab in sorted(per_series.items())]
    return out[:max_studies] if max_studies else out


def slice_sops(folder: Path) -> list[str]:
    """SOPInstanceUIDs in the readers' slice order (inferior -> superior along the normal)."""
    import pydicom

    keyed = []
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        o = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(o[:3], o[3:])
        normal *= np.sign(normal[2]) or 1.0  # +z: towards the head
        keyed.append(
            (float(normal @ np.asarray(ds.ImagePositionPatient, float)), ds.SOPInstanceUID)
        )
    return [s for _, s in sorted(keyed)]


def rsna_items(root: Path, args: argparse.Namespace, cache: Path) -> list[dict[str, Any]]:
    items = []
    for study, folder, sop_labels in rsna_studies(root, args.max_studies):
        vol = read_dicom_series(folder)
        labels = [sop_labels.get(s, 0) for s in slice_sops(folder)]
        if len(labels) != vol.hu.shape[0]:
            raise SystemExit(f"{folder}: {len(labels)} files for {vol.hu.shape[0]} slices")
        items += windows_of_study(vol.hu, labels, study=study, cache=cache, **_win_kw(args))
    return items


def phantom_items(args: argparse.Namespace, out: Path, cache: Path) -> list[dict[str, Any]]:
    from ct3dzoo.data.synthetic import make_phantom_dataset

    manifest = make_phantom_dataset(
        out / "phantom", n=args.phantom, seed=args.seed, shape=tuple(args.phantom_shape),
        formats=("dicom",), finding_kind="embolus",
    )  # fmt: skip
    cases = json.loads((manifest.parent / "cases.json").read_text())
    items = []
    for case in cases:
        vol = read_volume(manifest.parent / "dicom" / case["case"])
        depth = vol.hu.shape[0]
        labels = [0] * depth
        f = case["finding"]
        if f:  # slices the finding touches
            half = f["radius_mm"] / case["spacing"][0]
            lo, hi = int(np.floor(f["centre"][0] - half)), int(np.ceil(f["centre"][0] + half))
            for d in range(max(lo, 0), min(hi + 1, depth)):
                labels[d] = 1
        items += windows_of_study(vol.hu, labels, study=case["group"], cache=cache, **_win_kw(args))
    return items


def _win_kw(args: argparse.Namespace) -> dict[str, int]:
    return {"image_size": args.image_size, "num_slices": args.num_slices, "stride": args.stride}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rsna", type=Path, help="RSNA PE root (train.csv, train/); else phantoms")
    p.add_argument("--max-studies", type=int, help="use the first N series of train.csv")
    p.add_argument("--phantom", type=int, default=24, help="phantom studies (default 24)")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=(64, 128, 128))
    p.add_argument("--arch", default="x3d_xs")
    p.add_argument("--no-pretrain", action="store_true", help="random weights")
    p.add_argument("--num-slices", type=int, default=32, help="slices per window (paper: 32)")
    p.add_argument("--stride", type=int, default=24, help="window stride (paper: 24)")
    p.add_argument("--image-size", type=int, default=224, help="in-plane size (paper: 224)")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("pe-run"))
    args = p.parse_args(argv)
    cache = args.out / "windows"
    cache.mkdir(parents=True, exist_ok=True)

    items = (
        rsna_items(args.rsna, args, cache) if args.rsna else phantom_items(args, args.out, cache)
    )
    studies = sorted({it["study"] for it in items})
    rng = np.random.default_rng(args.seed)
    val_studies = set(rng.permutation(studies)[: max(1, round(len(studies) * args.val_fraction))])
    train = WindowDataset([it for it in items if it["study"] not in val_studies])
    val = WindowDataset([it for it in items if it["study"] in val_studies])
    print(f"{len(studies)} studies -> {len(train)} training / {len(val)} validation windows")

    try:
        pretrain = None if args.no_pretrain else "kinetics"
        model = ct3dzoo.load(args.arch, pretrain=pretrain, num_classes=1)
    except WeightsUnavailableError as e:
        print(f"{e}\nNo pretrained weights: rerun with --no-pretrain to train from scratch.")
        return 1
    result = ct3dzoo.finetune(
        model, train, val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        out_dir=args.out / "run", seed=args.seed,
    )  # fmt: skip
    print(f"best {result.monitor} {result.best_metric} at epoch {result.best_epoch}")

    # whole-study prediction: every window of each validation study, max over windows
    study_npy = {it["study"]: it["npy"] for it in val.items}
    study_label: dict[str, int] = defaultdict(int)
    window_label = {(it["study"], it["start"]): it["label"] for it in val.items}
    for it in val.items:
        study_label[it["study"]] = max(study_label[it["study"]], it["label"])
    with (
        open(args.out / "window_scores.csv", "w", newline="") as fw,
        open(args.out / "study_scores.csv", "w", newline="") as fs,
    ):
        ww, ws = csv.writer(fw), csv.writer(fs)
        ww.writerow(["study", "start", "stop", "label", "prob"])
        ws.writerow(["study", "label", "prob", "top_slice"])
        for study, npy in sorted(study_npy.items()):
            x = np.load(npy, mmap_mode="r").astype(np.float32)  # windowed [0, 1], (D, H, W)
            res = ct3dzoo.predict_study(
                model, x, window=args.num_slices, stride=args.stride, reduce="max",
                batch_size=args.batch_size,
            )  # fmt: skip
            for (a, b), prob in zip(res.window_ranges, res.window_scores[:, 0].tolist()):
                ww.writerow([study, a, b, window_label.get((study, a), ""), f"{prob:.6f}"])
            top = int(res.slice_scores[:, 0].argmax())
            ws.writerow([study, study_label[study], f"{float(res.score[0]):.6f}", top])
    model.save_pretrained(str(args.out / "model"))
    print(f"study scores (max over windows) -> {args.out / 'study_scores.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
