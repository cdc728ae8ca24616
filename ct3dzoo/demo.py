"""``ct3dzoo demo``: the whole library end to end on a synthetic chest-CT phantom, on CPU.

1. writes a small phantom dataset (:func:`ct3dzoo.phantom.make_phantom_dataset`) as
   DICOM series and NIfTI files: half the cases hold a lung nodule;
2. reads it back with the real readers through :class:`ct3dzoo.data.CTDataset` (training
   cases from DICOM, validation cases from NIfTI), resamples and applies the lung window;
3. loads an architecture with its Kinetics weights (an arch without them, like the default
   2D ResNet-18, its own pretrained weights) when they are cached or downloadable, otherwise
   says so and starts from random weights;
4. finetunes it for a few epochs (:func:`ct3dzoo.finetune`) and prints validation AUROC;
5. writes a slice montage of a positive case and the model (``save_pretrained``).

Deterministic by ``seed`` (on the same machine and thread count). Python:
``ct3dzoo.demo.demo(out_dir=...)``; shell: ``ct3dzoo demo --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_demo_parser", "demo", "run_demo"]

#: the default demo. Measured from random weights (the offline case), 16x48x48 lung crop:
#: resnet18_2d (each slice through a 2D ResNet-18, mean over slices) learns the nodule in
#: 4-6 epochs of 256 cases (~17 s/epoch on 2 busy cores); r3d_18 and mc3_18 cost ~3.5x as
#: much per volume and stayed at chance (train loss ~0.7) for the ~100-160 optimiser steps
#: that fit this budget; x3d_xs does not move off chance (zero-initialised residual
#: branches). With cached Kinetics weights, ``--arch r3d_18`` is the 3D model to try.
DEFAULTS: dict[str, Any] = {
    "arch": "resnet18_2d",
    "n_cases": 320,
    "n_val": 64,
    "epochs": 6,
    "size": (16, 48, 48),
    "phantom_shape": (32, 96, 96),
    "window": "lung",
    "lr": 1e-3,
    "batch_size": 8,
    "nodule_radius_mm": (18.0, 28.0),
    "lung_vessel_hu": 300.0,
    "crop": 0.75,
}


def _split(labels: Sequence[int], n_val: int) -> tuple[list[int], list[int]]:
    """Stratified split by case order: the last ``n_val`` cases, balanced between labels."""
    pos = [i for i, y in enumerate(labels) if y]
    neg = [i for i, y in enumerate(labels) if not y]
    n_pos = min(len(pos) - 1, max(1, round(n_val * len(pos) / len(labels))))
    n_neg = min(len(neg) - 1, n_val - n_pos)
    if n_pos < 1 or n_neg < 1:
        raise ValueError(
            f"{len(labels)} cases ({len(pos)} positive) are too few for a validation set of "
            f"{n_val} with both labels and training cases left; use more cases"
        )
    val = sorted(pos[-n_pos:] + neg[-n_neg:])
    train = [i for i in range(len(labels)) if i not in set(val)]
    return train, val


def _load_model(
    arch: str, pretrain: str | None, say: Callable[[str], None], progress: bool, seed: int
) -> tuple[Any, str | None]:
    """``ct3dzoo.load`` with the pretrained weights, or random weights when they can't be had."""
    import torch

    import ct3dzoo
    from ct3dzoo.errors import WeightsUnavailableError

    if pretrain == "kinetics":
        from ct3dzoo._registry import get_arch

        aliases = list(get_arch(arch).pretrain_aliases)
        if aliases and "kinetics" not in aliases:
            say(f"weights: {arch} has no Kinetics weights; trying its {aliases[0]!r} weights")
            pretrain = aliases[0]
    if pretrain is not None:
        try:
            model = ct3dzoo.load(arch, pretrain=pretrain, num_classes=1, progress=progress)
            cfg = ct3dzoo.get_pretrained_cfg(f"{arch}.{model.model_config['tag']}")
            name = f"{cfg['arch']}.{cfg['tag']}"
            say(f"weights: {name} ({cfg.get('dataset') or 'Kinetics'}), adapted to 1 channel")
            return model, name
        except WeightsUnavailableError as e:
            reason = str(e).strip().splitlines()[0]
            say(
                f"weights: the {pretrain!r} weights of {arch} are not cached and could not be "
                f"downloaded ({reason}).\n"
                "         FALLING BACK TO RANDOM INITIALISATION (pretrain=None) for this demo. "
                f"To use them: `ct3dzoo fetch {arch}` with internet, or "
                f"`ct3dzoo fetch {arch} --from FILE` (see docs/weights.md)."
            )
    else:
        say("weights: none requested (pretrain=None): random initialisation")
    torch.manual_seed(seed)  # the same random weights whether or not a load was tried first
    return ct3dzoo.load(arch, pretrain=None, num_classes=1), None


def demo(
    *,
    out_dir: str | Path = "ct3dzoo-demo",
    arch: str = DEFAULTS["arch"],
    n_cases: int = DEFAULTS["n_cases"],
    n_val: int = DEFAULTS["n_val"],
    epochs: int = DEFAULTS["epochs"],
    size: Sequence[int] = DEFAULTS["size"],
    phantom_shape: Sequence[int] = DEFAULTS["phantom_shape"],
    window: str | tuple[float, float] = DEFAULTS["window"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    nodule_radius_mm: tuple[float, float] = DEFAULTS["nodule_radius_mm"],
    lung_vessel_hu: float = DEFAULTS["lung_vessel_hu"],
    crop: float = DEFAULTS["crop"],
    pretrain: str | None = "kinetics",
    seed: int = 0,
    progress: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the phantom demo; returns what it measured and wrote.

    Args:
        out_dir: everything goes here (``data/``, ``cache/``, ``run/``, ``model/``,
            ``montage.png``, ``summary.json``); existing demo files are overwritten.
        arch: a name from ``ct3dzoo.list_models()``.
        n_cases, n_val: phantom cases in all, and how many of them validate (stratified).
        epochs, lr, batch_size: finetuning (AdamW, cosine schedule, BCE).
        size: ``(D, H, W)`` the volumes are resampled to for the model.
        phantom_shape: ``(D, H, W)`` of the written phantoms (a 240 x 360 x 360 mm chest).
        window: HU window preset or ``(centre, width)``.
        nodule_radius_mm: range of the nodule radius of positive cases.
        lung_vessel_hu: contrast of the small lung vessels in the phantoms
            (:func:`~ct3dzoo.phantom.make_chest_phantom`; 750 there by default, 300
            here: a smoother lung in which the nodule is what stands out).
        crop: fraction of the in-plane field of view kept (centre crop, 0.75 = the central
            270 of 360 mm, which holds both lungs): volumes are resampled to
            ``size / crop`` in-plane, then cropped to ``size``; 1.0 = no crop.
        pretrain: ``"kinetics"`` (used when cached or downloadable, else random init with a
            message; an arch without Kinetics weights, like the default 2D ResNet-18, tries
            its own pretrained weights, e.g. ImageNet) or ``None`` (random init).
        seed: the phantoms, the split, the data order and the initialisation follow from it.
        progress: progress bars; verbose: print the story.

    Returns:
        ``{"val_auroc", "best_val_auroc", "best_epoch", "history", "weights" (``arch.tag`` or
        None), "pretrained", "n_train", "n_val", "runtime_s", "out_dir", "manifest",
        "montage" (None without matplotlib), "model_dir", "run_dir"}``.
    """
    import torch
    from torch.utils.data import Subset

    import ct3dzoo
    from ct3dzoo.data import CTDataset, read_manifest, transforms
    from ct3dzoo.phantom import make_phantom_dataset

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size, phantom_shape = tuple(int(s) for s in size), tuple(int(s) for s in phantom_shape)
    torch.manual_seed(seed)
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    read_shape = (size[0], round(size[1] / crop), round(size[2] / crop))

    say(f"ct3dzoo demo: {arch} on {n_cases} synthetic chest CTs (seed {seed}) -> {out}")
    manifest = make_phantom_dataset(
        out / "data",
        n=n_cases,
        seed=seed,
        shape=phantom_shape,
        formats=("dicom", "nifti"),
        nodule_radius_mm=nodule_radius_mm,
        lung_vessel_hu=lung_vessel_hu,
    )
    records, _ = read_manifest(manifest)
    labels = [int(r["labels"][0]) for r in records]
    train_idx, val_idx = _split(labels, n_val)
    say(
        f"data: {n_cases} phantoms {'x'.join(map(str, phantom_shape))} written as DICOM series "
        f"and NIfTI ({sum(labels)} with a lung nodule) in {out / 'data'}\n"
        f"      train {len(train_idx)} (read from DICOM), validation {len(val_idx)} (read from "
        f"NIfTI); resampled to {'x'.join(map(str, read_shape))}, centre {crop:.0%} cropped to "
        f"{'x'.join(map(str, size))}, window {window!r}, random flips"
    )
    common = {"windows": window, "shape": read_shape, "cache_dir": out / "cache"}
    centre = transforms.CenterCrop(size)
    flips = transforms.RandomFlip(axes=(-3, -1))  # the finding's presence doesn't care
    train_tf = transforms.Compose([centre, flips])
    train_ds = CTDataset(out / "data" / "manifest_dicom.csv", transform=train_tf, **common)
    train = Subset(train_ds, train_idx)
    val = Subset(
        CTDataset(out / "data" / "manifest_nifti.csv", transform=centre, **common), val_idx
    )

    model, weights = _load_model(arch, pretrain, say, progress, seed)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"model: {arch}, {n_params / 1e6:.1f} M parameters, input (B, 1, {', '.join(map(str, size))})"
    )

    t_train = time.perf_counter()
    result = ct3dzoo.finetune(
        model,
        train,
        val,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        out_dir=out / "run",
        weight_decay=0.01,
        warmup_epochs=min(1.0, epochs / 4),
        seed=seed,
        restore_best=False,  # report and save the last epoch, not one picked on validation
        progress=progress,
    )
    train_s = time.perf_counter() - t_train
    if verbose:
        say("epoch  train_loss  val_loss  val_auroc")
        for h in result.history:
            say(
                f"{int(h['epoch']):>5}  {h['train_loss']:>10.4f}  {h['val_loss']:>8.4f}  "
                f"{h['val_auroc']:>9.3f}"
            )
    last = result.history[-1]
    val_auroc = float(last["val_auroc"])

    model_dir = Path(model.save_pretrained(str(out / "model")))
    montage_path = _write_montage(out, records, labels, val_idx, window, say)
    runtime = time.perf_counter() - t0
    summary = {
        "arch": arch,
        "weights": weights,
        "pretrained": weights is not None,
        "val_auroc": val_auroc,
        "best_val_auroc": None if result.best_metric is None else float(result.best_metric),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "seed": seed,
        "train_s": train_s,
        "runtime_s": runtime,
        "out_dir": str(out),
        "manifest": str(manifest),
        "montage": None if montage_path is None else str(montage_path),
        "model_dir": str(model_dir),
        "run_dir": str(out / "run"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    init = f"from {weights}" if weights else "from random weights"
    say(
        f"\nvalidation AUROC {val_auroc:.3f} after {epochs} epochs ({init}; {len(val_idx)} "
        f"cases; chance = 0.5) in {runtime:.0f} s ({train_s:.0f} s training)\n"
        f"  data        {out / 'data'}  (manifest.csv, dicom/, nifti/, cases.json)\n"
        f"  montage     {montage_path or '- (pip install ct3dzoo[viz] for montages)'}\n"
        f"  model       {model_dir}  (load: ct3dzoo.load('local-dir:{model_dir}'))\n"
        f"  checkpoints {out / 'run'}  (last/, best/, log.jsonl)\n"
        f"  summary     {out / 'summary.json'}"
    )
    if not math.isfinite(val_auroc):
        say("warning: validation AUROC is undefined (one class only in validation)")
    return summary


def _write_montage(
    out: Path,
    records: list[dict[str, Any]],
    labels: Sequence[int],
    val_idx: Sequence[int],
    window: str | tuple[float, float],
    say: Callable[[str], None],
) -> Path | None:
    """Montage of the first positive validation case, read from its DICOM series."""
    from ct3dzoo.data import read_volume

    try:
        from ct3dzoo.viz import montage
    except ImportError:  # pragma: no cover - viz is a module of ours; matplotlib is checked below
        return None
    i = next((j for j in val_idx if labels[j]), val_idx[0])
    cases = json.loads((out / "data" / "cases.json").read_text())
    finding = cases[i]["finding"]
    vol = read_volume(records[i]["path"])
    title = f"{records[i]['id']} (label {labels[i]}"
    if finding:
        title += f"; nodule r={finding['radius_mm']:.0f} mm at slice {finding['centre'][0]:.0f}"
    path = out / "montage.png"
    try:
        montage(vol, window=window, path=path, num_slices=16, title=title + ")")
    except ImportError as e:
        say(f"montage: skipped ({e})")
        return None
    return path


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ct3dzoo demo`` on an argparse subparsers object."""
    d = DEFAULTS
    p = subparsers.add_parser(
        "demo",
        help="end to end on a synthetic chest-CT phantom (offline, CPU, ~3 min)",
        description=(
            "Write a synthetic chest-CT phantom dataset (DICOM + NIfTI), read it back, finetune "
            "a model on CPU and print validation AUROC; saves a montage and the model."
        ),
    )
    p.add_argument("--out", default="ct3dzoo-demo", help="output folder (default ct3dzoo-demo)")
    p.add_argument("--arch", default=d["arch"], help=f"architecture (default {d['arch']})")
    p.add_argument("--cases", type=int, default=d["n_cases"], help="phantom cases in all")
    p.add_argument("--val", type=int, default=d["n_val"], help="validation cases")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument(
        "--size", type=int, nargs=3, default=d["size"], metavar=("D", "H", "W"),
        help="model input size (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--phantom-shape", type=int, nargs=3, default=d["phantom_shape"], metavar=("D", "H", "W"),
        help="size of the written phantoms (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--window", default=d["window"], help="HU window preset (default lung)")
    p.add_argument(
        "--crop", type=float, default=d["crop"],
        help="in-plane fraction of the field of view kept (default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--lung-vessel-hu", type=float, default=d["lung_vessel_hu"],
        help="contrast of the phantoms' small lung vessels (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-pretrain", action="store_true", help="random init; don't look for Kinetics weights"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run_demo(args: argparse.Namespace) -> int:
    """The ``ct3dzoo demo`` handler; returns the exit status."""
    demo(
        out_dir=args.out,
        arch=args.arch,
        n_cases=args.cases,
        n_val=args.val,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        size=tuple(args.size),
        phantom_shape=tuple(args.phantom_shape),
        window=args.window,
        crop=args.crop,
        lung_vessel_hu=args.lung_vessel_hu,
        pretrain=None if args.no_pretrain else "kinetics",
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0
