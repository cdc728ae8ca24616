"""``ct3dzoo explain MODEL STUDY --out DIR``: Grad-CAM over a whole study.

MODEL is an architecture name (``--pretrain``: its default weights, a tag, a checkpoint
path, or ``none`` for random init) or a ``local-dir:``/``hf-hub:`` reference; STUDY is a
DICOM folder, NIfTI or ``.npy``/``.npz`` file. The study is windowed (``--hu-window``),
resized in-plane to ``--image-size`` and scored in ``--slices``-slice windows; the best one
is explained. Writes ``saliency_montage.png``, ``slice_scores.png`` and ``saliency.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._factory import load
from .._io.atomic import atomic_write_text
from .._registry import get_arch
from ..data import apply_window, read_volume, resolve_window
from ..viz import saliency_montage, slice_curve
from .study import study_saliency

__all__ = ["add_explain_parser", "run_explain"]


def add_explain_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("explain", help="Grad-CAM saliency over a CT study (PNG + JSON)")
    p.add_argument("model", metavar="MODEL", help="arch name, local-dir:PATH or hf-hub:ORG/NAME")
    p.add_argument("study", metavar="STUDY", help="DICOM folder, NIfTI, .npy/.npz")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    p.add_argument(
        "--pretrain", default="default",
        help="for an arch name: 'default' (its default weights), a tag, a path, or 'none'",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int, default=1, help="classes of a new head (arch)")
    p.add_argument("--hu-window", default="pe", help="window preset or CENTER,WIDTH in HU")
    p.add_argument("--slices", type=int, default=32, help="slices per window (default 32)")
    p.add_argument("--stride", type=int, default=24, help="window step in slices (default 24)")
    p.add_argument("--image-size", type=int, default=128, help="in-plane size H = W (default 128)")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: best)")
    return p


def _window(spec: str) -> Any:
    if "," in spec:
        c, w = (float(v) for v in spec.split(","))
        return (c, w)
    return spec


def run_explain(args: argparse.Namespace) -> int:
    size = (args.image_size, args.image_size)
    if args.model.startswith(("local-dir:", "hf-hub:")):
        model = load(args.model)
    else:
        pretrain = {"default": "kinetics", "none": None}.get(args.pretrain, args.pretrain)
        if pretrain == "kinetics":
            pretrain = get_arch(args.model.split(".")[0]).pretrain_aliases[0]
        model = load(
            args.model, pretrain=pretrain, num_classes=args.num_classes,
            num_slices=args.slices, image_size=size,
        )  # fmt: skip
    vol = read_volume(args.study)
    window = _window(args.hu_window)
    x = torch.from_numpy(apply_window(vol.hu, window)).float()
    x = F.interpolate(x[None, None], size=(x.shape[0], *size), mode="trilinear")[0, 0]
    res = study_saliency(model, x, window=args.slices, stride=args.stride, target=args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    c, w = resolve_window(window)
    s0, s1 = res.best
    title = (
        f"{args.model}: Grad-CAM, class {res.target}, slices {s0}-{s1 - 1} of {x.shape[0]} "
        f"(score {res.score:.3f}); HU window {args.hu_window} (C {c:g}, W {w:g})"
    )
    saliency_montage(x, res.saliency, path=out / "saliency_montage.png", title=title)
    slice_curve(res.slice_scores, best=res.best, path=out / "slice_scores.png",
                title=f"{args.model}: max window score per slice")  # fmt: skip
    summary = {
        "model": args.model, "study": str(args.study), "target": res.target,
        "window_slices": args.slices, "stride": args.stride, "image_size": list(size),
        "hu_window": [c, w], "best_window": list(res.best), "score": res.score,
        "window_starts": list(res.starts), "window_scores": list(res.scores),
    }  # fmt: skip
    atomic_write_text(out / "saliency.json", json.dumps(summary, indent=2) + "\n")
    for f in ("saliency_montage.png", "slice_scores.png", "saliency.json"):
        print(out / f)
    return 0
