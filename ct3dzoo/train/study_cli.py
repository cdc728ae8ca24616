"""``ct3dzoo predict``: whole-study scores of a model, one CSV row per study.

The main CLI wires it in with :func:`add_predict_parser` and :func:`run_predict`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from .._cli_args import (
    add_deprecated,
    add_device,
    add_model_reference,
    add_preprocessing_flags,
    preprocessing_overrides,
)

__all__ = ["add_predict_parser", "run_predict"]

EPILOG = """\
MODEL is a folder written by finetune or save_pretrained (e.g. runs/r3d/final), local-dir:PATH,
hf-hub:ORG/NAME, or an architecture name (its source weights and a new, untrained head).
STUDY is a DICOM folder, .nii/.nii.gz or .npy/.npz, or one CSV manifest (its 'path', 'id',
'series_uid' and label columns). Each study is read and preprocessed exactly as the model was
trained (the preprocessor_config.json beside its weights: resampling, crop, HU windows, slice
windows); the preprocessing flags override that and the difference is printed. The study score
is the max (or mean) over its slice windows.

CSV columns: id, group (a manifest's study key), path, slices, windows, score_<label> (probability) and logit_<label> per
output, best_start, best_stop (the top window), top_slice (slice with the highest score),
error. A manifest with labels also gets AUROC on stdout and <out stem>.metrics.json.

example:
  ct3dzoo predict runs/r3d/final study1/ study2.nii.gz --out scores.csv
  ct3dzoo predict ct3dzoo-demo/run/final ct3dzoo-demo/data/val/manifest_dicom.csv --out p.csv
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
    add_model_reference(p)
    p.add_argument("studies", nargs="+", metavar="STUDY", help="volumes, or one CSV manifest")
    p.add_argument("--out", required=True, help="CSV to write (one row per study)")
    add_preprocessing_flags(p)
    p.add_argument("--task", help="binary, multilabel or multiclass (default: the model's)")
    add_device(p)
    add_deprecated(p, "--size", dest="shape", new="--shape 0 H W", nargs=2, type=int,
                   convert=lambda hw: [0, *hw])  # fmt: skip
    return p


def _studies(paths: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """``[{"id", "path", "series_uid", "labels"}]`` and the label names (manifest only)."""
    from ..data.dataset import read_manifest

    if len(paths) == 1 and paths[0].lower().endswith(".csv"):
        records, labels = read_manifest(paths[0])
        return records, labels
    out = []
    for p in map(Path, paths):
        name = p.name
        for ext in (".nii.gz", ".nii", ".npz", ".npy", ".dcm"):
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
        out.append({"id": name, "path": p, "labels": []})
    return out, []


def _refuse_overwriting_inputs(out: str, inputs: list[str]) -> None:
    target = Path(out).expanduser().resolve()
    for src in inputs:
        if Path(src).expanduser().resolve() == target:
            raise SystemExit(
                f"ct3dzoo predict: error: --out {out} is one of the inputs; it would be "
                "replaced by the predictions. Choose another --out file"
            )


def _fmt(v: float) -> str:
    return f"{float(v):.6f}"


def run_predict(args: argparse.Namespace) -> int:
    """Run ``ct3dzoo predict``; exit code 1 when a study could not be scored."""
    import numpy as np
    import torch

    from .._io.atomic import atomic_write_text
    from .._references import load_reference
    from ..data.model_input import resolve_preprocessing
    from .study import model_task, predict_study

    _refuse_overwriting_inputs(args.out, list(args.studies))
    studies, label_cols = _studies(args.studies)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = preprocessing_overrides(args)  # bad flags refused before a model is fetched
    model = load_reference(
        args.model, pretrain=args.pretrain, num_classes=args.num_classes, progress=False
    ).to(device)
    pp, changes = resolve_preprocessing(model, **overrides)
    model_task(model, args.task, int(model.num_classes))  # refuse an impossible task up front
    for line in changes:
        print(f"note: differs from training: {line}", file=sys.stderr)
    names = list(pp.label_names) or [str(k) for k in range(int(model.num_classes))]
    if len(names) != int(model.num_classes):
        names = [str(k) for k in range(int(model.num_classes))]
    rows: list[dict[str, Any]] = []
    scored: list[tuple[np.ndarray, list[float]]] = []
    for rec in studies:
        row: dict[str, Any] = {"id": rec["id"], "path": str(rec["path"]), "error": ""}
        if "group" in rec:
            row["group"] = rec["group"]
        try:
            res = predict_study(
                model, rec["path"], preprocessing=pp, series_uid=rec.get("series_uid"),
                batch_size=args.batch_size, task=args.task, device=device,
            )  # fmt: skip
        except Exception as e:  # one unreadable study does not stop the others
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"{rec['id']}: {row['error']}")
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
        row.update({f"score_{n}": _fmt(v) for n, v in zip(names, res.score)})
        row.update({f"logit_{n}": _fmt(v) for n, v in zip(names, res.logit)})  # type: ignore[arg-type]
        rows.append(row)
        scored.append((res.score, rec["labels"]))
        shown = ", ".join(f"score_{n} {float(v):.4f}" for n, v in zip(names, res.score))
        k = len(res.window_ranges)
        print(f"{rec['id']}: {shown} ({k} window{'' if k == 1 else 's'})")
    fields = ["id", *(["group"] if any("group" in r for r in rows) else []), "path", "slices",
              "windows"]  # fmt: skip
    fields += [f"score_{n}" for n in names] + [f"logit_{n}" for n in names]
    fields += ["best_start", "best_stop", "top_slice", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(args.out, buf.getvalue())
    print(f"{len(rows)} studies -> {args.out}")
    if label_cols and scored:
        _report_metrics(args.out, scored, label_cols, names, task=args.task or pp.task)
    return 1 if any(r["error"] for r in rows) else 0


def _report_metrics(
    out: str, scored: list[Any], label_cols: list[str], names: list[str], *, task: str | None
) -> None:
    """AUROC (with its 95% CI) of the scored studies against the manifest's labels."""
    import numpy as np

    from .._io.atomic import atomic_write_text
    from .bootstrap import study_metrics

    probs = np.stack([s for s, _ in scored])
    labels = np.asarray([lab for _, lab in scored], dtype=np.float64)
    if labels.shape[1] != probs.shape[1]:
        print(
            f"note: the manifest has {labels.shape[1]} label column(s) ({', '.join(label_cols)}) "
            f"for {probs.shape[1]} output(s); no metrics"
        )
        return
    try:
        report = study_metrics(probs, labels, label_names=names, task=task or "binary")
    except ValueError as e:  # e.g. one class only: AUROC is undefined
        print(f"note: no metrics ({e})")
        return
    path = Path(out).with_suffix("").as_posix() + ".metrics.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    ci = report.get("auroc_ci")
    ci_txt = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    print(f"AUROC {report['auroc']:.4f}{ci_txt} over {report['n_studies']} studies -> {path}")
