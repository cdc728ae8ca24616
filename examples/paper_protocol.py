"""The paper's RSNA-PE protocol (Ke et al., MIDL 2023), on real RSNA data or on phantoms.

    python examples/paper_protocol.py --rsna /data/rsna-pe --max-studies 200 --out pe-run/
    python examples/paper_protocol.py --out pe-run/                  # synthetic CTPA phantoms

Protocol: each series is resized in-plane to ``--shape`` (``0 224 224``), windowed with the PE window
(centre 400, width 1000 HU) and cut into windows of 32 consecutive slices every 24 slices
(the last window shifted to end at the last slice). A window is positive when one of its
slices shows PE; the model is finetuned on windows, and a **study's score is the max over
its windows' probabilities**, scored with study-level AUROC (``val_study_auroc``).

All of it is library API: `ct3dzoo.data.rsna_pe_manifests` turns the Kaggle layout
(``ROOT/train.csv`` with StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID,
pe_present_on_image, ...; images in ``ROOT/train/<study>/<series>/<sop>.dcm``) into a study
manifest and a slice-label CSV; `ct3dzoo.data.CTDataset(slice_windows=, slice_labels=)`
serves labelled windows; `ct3dzoo.predict_study` scores whole studies. Without ``--rsna``,
CT pulmonary-angiogram phantoms with a filling defect (embolus) stand in, their slices
labelled from the lesion masks. Writes ``window_scores.csv``, ``study_scores.csv``, the run
and the model under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

import ct3dzoo
from ct3dzoo.data import CTDataset, read_volume, rsna_pe_manifests, transforms
from ct3dzoo.errors import WeightsUnavailableError

PE_WINDOW = (400.0, 1000.0)  # [-100, 900] HU


def phantom_manifests(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """Phantom CTPAs (DICOM) + ``slice_labels.csv`` (``id``, ``slice``, ``pe``: 1 where the
    embolus mask touches the slice)."""
    from ct3dzoo.phantom import make_phantom_dataset

    manifest = make_phantom_dataset(
        out / "phantom", n=args.phantom, seed=args.seed, shape=tuple(args.phantom_shape),
        formats=("dicom",), finding_kind="embolus",
    )  # fmt: skip
    labels = out / "phantom" / "slice_labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "slice", "pe"])
        for case in json.loads((manifest.parent / "cases.json").read_text()):
            mask = read_volume(manifest.parent / case["mask"]).hu  # (D, H, W), the CT's grid
            for d, positive in enumerate(mask.reshape(mask.shape[0], -1).max(axis=1) > 0):
                w.writerow([case["case"], d, int(positive)])
    return manifest, labels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rsna", type=Path, help="RSNA PE root (train.csv, train/); else phantoms")
    p.add_argument("--max-studies", type=int, help="use the first N studies of train.csv")
    p.add_argument("--phantom", type=int, default=24, help="phantom studies (default 24)")
    p.add_argument("--phantom-shape", type=int, nargs=3, default=(64, 128, 128))
    p.add_argument("--arch", default="x3d_xs")
    p.add_argument("--no-pretrain", action="store_true", help="random weights")
    p.add_argument("--num-slices", type=int, default=32, help="slices per window (paper: 32)")
    p.add_argument("--stride", type=int, default=24, help="window stride (paper: 24)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(0, 224, 224),
        metavar=("D", "H", "W"),
        help="resize to (0 keeps an axis; default %(default)s: in-plane only, paper)",
    )
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("pe-run"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.rsna:
        manifest, slice_labels = rsna_pe_manifests(
            args.rsna / "train.csv", args.rsna / "train", args.out / "manifests",
            max_studies=args.max_studies,
        )  # fmt: skip
    else:
        manifest, slice_labels = phantom_manifests(args, args.out)
    resize = transforms.Resize(tuple(n or None for n in args.shape))  # 0/None keeps the axis
    data = CTDataset(
        manifest, slice_windows=(args.num_slices, args.stride), slice_labels=slice_labels,
        transform=resize, windows=PE_WINDOW, cache_dir=args.out / "cache",
    )  # fmt: skip
    studies = sorted({r["group"] for r in data.records})
    rng = np.random.default_rng(args.seed)
    val_studies = set(rng.permutation(studies)[: max(1, round(len(studies) * args.val_fraction))])
    val_idx = [i for i, r in enumerate(data.records) if r["group"] in val_studies]
    train = Subset(data, [i for i, r in enumerate(data.records) if r["group"] not in val_studies])
    val = Subset(data, val_idx)
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
    window_label = {(data.records[i]["group"], data.records[i]["slices"][0]):
                    int(data.records[i]["labels"][0]) for i in val_idx}  # fmt: skip
    with (
        open(args.out / "window_scores.csv", "w", newline="") as fw,
        open(args.out / "study_scores.csv", "w", newline="") as fs,
    ):
        ww, ws = csv.writer(fw), csv.writer(fs)
        ww.writerow(["study", "start", "stop", "label", "prob"])
        ws.writerow(["study", "label", "prob", "top_slice"])
        for study in data.studies:
            if study["id"] not in val_studies:
                continue
            hu = read_volume(study["path"], series_uid=study.get("series_uid")).hu
            x = resize(torch.from_numpy(hu)[None])[0]  # HU (D, H, W), resized in-plane
            res = ct3dzoo.predict_study(
                model, x, window=args.num_slices, stride=args.stride, reduce="max",
                windows=PE_WINDOW, batch_size=args.batch_size,
            )  # fmt: skip
            labels = []
            for (a, b), prob in zip(res.window_ranges, res.window_scores[:, 0].tolist()):
                labels.append(window_label[(study["id"], a)])
                ww.writerow([study["id"], a, b, labels[-1], f"{prob:.6f}"])
            top = int(res.slice_scores[:, 0].argmax())
            ws.writerow([study["id"], max(labels), f"{float(res.score[0]):.6f}", top])
    model.save_pretrained(str(args.out / "model"))
    print(f"study scores (max over windows) -> {args.out / 'study_scores.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
