"""``ct3dzoo predict``: whole-study scores of a finetuned model, one CSV row per study.

The main CLI wires it in with :func:`add_predict_parser` and :func:`run_predict`.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

__all__ = ["add_predict_parser", "run_predict"]

EPILOG = """\
MODEL is a folder written by save_pretrained (config.json + model.safetensors), or
hf-hub:ORG/NAME / local-dir:PATH. STUDY is a DICOM folder, .nii/.nii.gz or .npy/.npz, or
one CSV manifest (its 'path' and 'id' columns). Each study is read in HU, optionally
resampled, windowed, cut into windows of --num-slices slices every --stride slices, and
scored; the study score is the max (or mean) over its windows.

CSV columns: id, path, slices, windows, score (score_K per output when there are several),
best_start, best_stop (the top window), top_slice (slice with the highest score), error.

example:
  ct3dzoo predict runs/r3d/model study1/ study2.nii.gz --out scores.csv --size 224 224
"""


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "predict",
        help="score whole studies with a finetuned model (sliding slice windows) into a CSV",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="save_pretrained folder, hf-hub:ORG/NAME or local-dir:PATH")
    p.add_argument("studies", nargs="+", metavar="STUDY", help="volumes, or one CSV manifest")
    p.add_argument("--out", required=True, help="CSV to write (one row per study)")
    p.add_argument("--windows", nargs="+", default=["pe"], help="HU window preset(s)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="resample to this spacing (mm) first")  # fmt: skip
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="in-plane size")
    p.add_argument("--num-slices", type=int, default=32, help="slices per window (paper: 32)")
    p.add_argument("--stride", type=int, default=24, help="window stride (paper: 24)")
    p.add_argument("--reduce", choices=["max", "mean"], default="max")
    p.add_argument("--task", choices=["binary", "multilabel", "multiclass"], default="binary")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", help="default: cuda if available, else cpu")
    return p


def _studies(paths: list[str]) -> list[tuple[str, Path]]:
    if len(paths) == 1 and paths[0].lower().endswith(".csv"):
        from ..data.dataset import read_manifest

        records, _ = read_manifest(paths[0], label_columns=[])
        return [(r["id"], r["path"]) for r in records]
    out = []
    for p in map(Path, paths):
        name = p.name
        for ext in (".nii.gz", ".nii", ".npz", ".npy", ".dcm"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
        out.append((name, p))
    return out


def _model_source(model: str) -> str:
    if model.startswith(("hf-hub:", "local-dir:")):
        return model
    if Path(model).is_dir():
        return f"local-dir:{model}"
    raise SystemExit(
        f"MODEL {model!r} is neither a save_pretrained folder nor hf-hub:/local-dir:. "
        "Predictions need a finetuned model (see `ct3dzoo finetune`)."
    )


def run_predict(args: argparse.Namespace) -> int:
    """Run ``ct3dzoo predict``; exit code 1 when a study could not be scored."""
    import numpy as np
    import torch

    from .. import load
    from .._io.atomic import atomic_write_text
    from ..data import read_volume, resample
    from .study import predict_study

    studies = _studies(args.studies)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(_model_source(args.model), progress=False).to(device)
    windows = args.windows if len(args.windows) > 1 else args.windows[0]
    rows: list[dict[str, Any]] = []
    for sid, path in studies:
        row: dict[str, Any] = {"id": sid, "path": str(path), "error": ""}
        try:
            vol = read_volume(path)
            if args.spacing:
                vol = resample(vol, spacing=args.spacing)
            if args.size:
                vol = resample(vol, shape=(vol.shape[0], *args.size))
            res = predict_study(
                model, vol, window=args.num_slices, stride=args.stride, reduce=args.reduce,
                batch_size=args.batch_size, windows=windows, task=args.task, device=device,
            )  # fmt: skip
        except Exception as e:  # one unreadable study does not stop the others
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"{sid}: {row['error']}")
            rows.append(row)
            continue
        top = int(np.argmax(res.window_scores.max(axis=1)))
        row.update(
            slices=res.slice_scores.shape[0],
            windows=len(res.window_ranges),
            best_start=res.window_ranges[top][0],
            best_stop=res.window_ranges[top][1],
            top_slice=int(np.argmax(res.slice_scores.max(axis=1))),
        )
        if res.score.size == 1:
            row["score"] = f"{float(res.score[0]):.6f}"
        else:
            row.update({f"score_{k}": f"{float(v):.6f}" for k, v in enumerate(res.score)})
        rows.append(row)
        print(f"{sid}: score {res.score.round(4).tolist()} over {len(res.window_ranges)} windows")
    fields = ["id", "path", "slices", "windows"]
    fields += sorted(
        {k for r in rows for k in r if k.startswith("score")}, key=lambda k: (len(k), k)
    )
    fields += ["best_start", "best_stop", "top_slice", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(args.out, buf.getvalue())
    print(f"{len(rows)} studies -> {args.out}")
    return 1 if any(r["error"] for r in rows) else 0
