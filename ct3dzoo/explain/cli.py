"""``ct3dzoo explain MODEL STUDY --out DIR``: saliency over a whole study.

MODEL is any model reference (a finetuned folder, ``local-dir:``/``hf-hub:``, or an
architecture name with ``--pretrain`` weights and a new head); STUDY is a DICOM folder, NIfTI
or ``.npy``/``.npz`` file. The study is read and preprocessed as the model was trained (its
``preprocessor_config.json``; flags override it), scored in slice windows, and the best window
is explained. Writes ``saliency.nii.gz`` (the map on the study's own grid, with its geometry),
``saliency_montage.png``, ``slice_scores.png`` and ``saliency.json``.
"""

from __future__ import annotations

import argparse
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
from .._io.atomic import atomic_write_text
from .._references import load_reference
from ..data.io import write_nifti
from ..data.model_input import resolve_preprocessing
from ..viz import saliency_montage, slice_curve
from .attribution import METHODS
from .study import study_saliency

__all__ = ["add_explain_parser", "run_explain"]

#: in-plane size for an architecture name without a training record (no --shape)
ARCH_DEFAULT_SHAPE = (0, 128, 128)


def add_explain_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "explain",
        help="saliency over a CT study: NIfTI on the study's grid, montage, per-slice curve",
        description=__doc__.splitlines()[0],
        epilog="example:\n  ct3dzoo explain runs/r3d/final study/ --out explained/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_reference(p)
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI, .npy/.npz")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    add_preprocessing_flags(p)
    p.add_argument("--target", type=int, default=None, help="output to explain (default: best)")
    p.add_argument("--method", choices=sorted(METHODS),
                   help="saliency method (default: integrated_gradients; see docs/looking_inside.md)")  # fmt: skip
    add_device(p)
    add_deprecated(p, "--hu-window", dest="windows", new="--windows", convert=lambda v: [v])
    add_deprecated(p, "--slices", dest="num_slices", new="--num-slices", type=int)
    add_deprecated(p, "--image-size", dest="shape", new="--shape 0 N N", type=int,
                   convert=lambda n: [0, n, n])  # fmt: skip
    return p


def run_explain(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = preprocessing_overrides(args)
    shape = overrides.get("shape") or ARCH_DEFAULT_SHAPE
    sizes = {"num_slices": overrides.get("num_slices", 32), "image_size": tuple(shape[1:])}
    model = load_reference(
        args.model, pretrain=args.pretrain, num_classes=args.num_classes, progress=False, **sizes
    )  # fmt: skip  (sizes: arch names only)
    if model.preprocessing is None and "shape" not in overrides:
        overrides["shape"] = ARCH_DEFAULT_SHAPE
    n_out = int(model.num_classes)
    if args.target is not None and not 0 <= args.target < n_out:
        raise ValueError(
            f"--target {args.target}: the model has {n_out} output(s), 0 to {n_out - 1}"
        )
    model = model.to(device)
    pp, changes = resolve_preprocessing(model, **overrides)
    for line in changes:
        print(f"note: differs from training: {line}", file=sys.stderr)
    res = study_saliency(model, args.study, preprocessing=pp, target=args.target,
                         method=args.method, batch_size=args.batch_size)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s0, s1 = res.best
    depth = res.input.shape[1]
    map_shape = "x".join(map(str, res.input_saliency.shape))
    name = "/".join(Path(args.model).parts[-2:]) if Path(args.model).exists() else args.model
    labels = res.preprocessing.label_names if res.preprocessing is not None else ()
    what = f"{labels[res.target]} (output {res.target})" if labels else f"output {res.target}"
    title = (  # two lines: a long model path must not push the figures out of the title
        f"{name}: {what}, slices {s0}-{s1 - 1} of {depth}, p {res.score:.3f} "
        f"(logit {res.logit:.2f}); input {map_shape}\n{res.method_title or res.method}"
    )
    saliency_montage(res.input, res.input_saliency, path=out / "saliency_montage.png", title=title)
    files = ["saliency_montage.png", "saliency.json"]
    if len(res.starts) > 1:  # one window: every slice has the same score, nothing to plot
        slice_curve(res.slice_scores, best=res.best, path=out / "slice_scores.png",
                    title=f"{name}: max window logit per slice")  # fmt: skip
        files.insert(1, "slice_scores.png")
    else:
        print("one slice window covers the study: no per-slice curve (slice_scores.png)")
    if res.volume is not None:
        write_nifti(res.saliency, res.volume, out / "saliency.nii.gz")
        files.insert(0, "saliency.nii.gz")
    summary = {
        "model": args.model, "study": str(args.study), "target": res.target,
        "method": res.method, "num_slices": res.num_slices, "best_window": list(res.best),
        "score": res.score, "logit": res.logit, "window_starts": list(res.starts),
        "window_logits": list(res.scores), "window_scores": list(res.probabilities),
        "study_shape": None if res.volume is None else list(res.volume.shape),
        "input_shape": list(res.input.shape), "preprocessing": pp.to_dict(),
        "differs_from_training": changes,
    }  # fmt: skip
    atomic_write_text(out / "saliency.json", json.dumps(summary, indent=2) + "\n")
    for f in files:
        print(out / f)
    return 0
