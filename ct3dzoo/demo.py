"""``ct3dzoo demo``: the whole library end to end on a synthetic chest-CT phantom, on CPU.

1. writes a small phantom dataset (:func:`ct3dzoo.phantom.make_phantom_dataset`): training
   cases as NIfTI files, held-out validation cases (another seed) as DICOM series, with
   their lesion masks; half the cases hold a lung nodule;
2. reads it back through :class:`ct3dzoo.data.CTDataset`: resample, crop, lung window;
3. loads an architecture with its Kinetics weights (an arch without them, like the default
   MedicalNet ResNet-10, its own pretrained weights) when they are cached or downloadable,
   otherwise says so and starts from random weights;
4. finetunes it (:func:`ct3dzoo.finetune`), a line per epoch (loss, AUROC, seconds);
5. writes a montage of a positive validation case, its saliency (``saliency.png``) and the
   model with its preprocessing (``run/final``), all under one output folder.

Deterministic by ``seed`` (same machine and thread count). ``ct3dzoo demo --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli_args import add_deprecated, deprecated_alias
from ._demo_model import MODEL_OPTIONS, check_demo_model, load_demo_model
from ._demo_output import EpochLines, ci_note, folder_bytes, write_montage, write_saliency
from ._specs import ModelOptions

__all__ = ["add_demo_parser", "demo", "run_demo"]

#: the default demo: MedicalNet's 3D ResNet-10 (strided, `DEFAULT_ARCH_KWARGS`) from random
#: weights (the offline case) on 16x32x32 lung crops of 16x43x43 phantoms, 256 training
#: cases, 6 epochs, no random flips: held-out validation AUROC 0.933-0.976 (seeds 0-2, two
#: machines) in 25-57 s wall on 2-core VMs, 73 MB written (``python benchmarks/demo.py``;
#: runs and what else was tried: docs/benchmarks.md). Cached weights: ``--arch r3d_18``.
DEFAULTS: dict[str, Any] = {
    "arch": "medicalnet_resnet10",
    "n_cases": 320,
    "n_val": 64,
    "epochs": 6,
    "shape": (16, 32, 32),
    "phantom_shape": (16, 43, 43),
    "windows": "lung",
    "lr": 3e-3,
    "batch_size": 16,
    "nodule_radius_mm": (18.0, 28.0),
    "lung_vessel_hu": 300.0,
    "crop": 0.75,
    "keep_checkpoints": False,
}
#: the default arch's options: MedicalNet's ResNet-10 with strided layer3/4 (as MONAI builds
#: it) instead of the original dilated ones: the same weights, half the CPU time per volume
DEFAULT_ARCH_KWARGS: dict[str, Any] = {"dilated": False}
#: the default demo's measured wall time (``python benchmarks/demo.py``, docs/benchmarks.md)
MEASURED = "measured 25-57 s on 2-core VMs"


def demo(
    *,
    out_dir: str | Path = "ct3dzoo-demo",
    arch: str = DEFAULTS["arch"],
    n_cases: int = DEFAULTS["n_cases"],
    n_val: int = DEFAULTS["n_val"],
    epochs: int = DEFAULTS["epochs"],
    shape: Sequence[int] = DEFAULTS["shape"],
    phantom_shape: Sequence[int] = DEFAULTS["phantom_shape"],
    windows: str | tuple[float, float] = DEFAULTS["windows"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    nodule_radius_mm: tuple[float, float] = DEFAULTS["nodule_radius_mm"],
    lung_vessel_hu: float = DEFAULTS["lung_vessel_hu"],
    crop: float = DEFAULTS["crop"],
    head: str = ModelOptions.default("head"),
    drop_rate: float = ModelOptions.default("drop_rate"),
    pretrain: str | None = "kinetics",
    arch_kwargs: dict[str, Any] | None = None,
    keep_checkpoints: bool = DEFAULTS["keep_checkpoints"],
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    verbose: bool = True,
    size: Sequence[int] | None = None,
    window: str | tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Run the phantom demo; returns what it measured and wrote.

    Args:
        out_dir: everything goes here (``data/train``, ``data/val``, ``run/`` (``log.jsonl``,
            the finetuned model ``run/final``, checkpoints with ``keep_checkpoints``),
            ``montage.png``, ``saliency.png``, ``summary.json``); existing demo files are
            overwritten. Volumes are read once and held in memory (no disk cache).
        arch: the model: a name from ``ct3dzoo.list_models()``, ``name.tag`` (those weights),
            a saved model's folder, ``local-dir:PATH`` or ``hf-hub:ORG/NAME`` (its weights).
        n_cases, n_val: phantom cases in all, and how many of them validate: the validation
            cases come from their own seed (held out), each set half positive.
        epochs, lr, batch_size: finetuning (AdamW, cosine schedule, BCE).
        shape: ``(D, H, W)`` the model sees.
        phantom_shape: ``(D, H, W)`` of the written phantoms (a 240 x 360 x 360 mm chest).
        windows: HU window preset or ``(centre, width)`` (one channel).
        nodule_radius_mm: range of the nodule radius of positive cases.
        lung_vessel_hu: contrast of the small lung vessels in the phantoms
            (:func:`~ct3dzoo.phantom.make_chest_phantom`; 750 there by default, 300
            here: a smoother lung in which the nodule is what stands out).
        crop: fraction of the in-plane field of view kept (centre crop, 0.75 = the central
            270 of 360 mm, which holds both lungs): volumes are resampled to
            ``shape / crop`` in-plane, then cropped to ``shape``; 1.0 = no crop.
        head, drop_rate: model options (:class:`ct3dzoo._specs.ModelOptions`, one output).
        arch_kwargs: passed to the architecture (e.g. ``{"slice_pool": "max"}`` for the 2D
            baselines); None: `DEFAULT_ARCH_KWARGS` for the default arch, none for others.
        keep_checkpoints: False (default) writes only ``run/final`` and ``run/log.jsonl``;
            True adds the resumable ``last/`` and ``best/`` checkpoints (with optimiser
            state; see ``finetune(keep_checkpoints=...)``).
        pretrain: ``"kinetics"`` (used when cached or downloadable, else random init with a
            message; an arch without Kinetics weights, like the default 2D ResNet-18, tries
            its own pretrained weights, e.g. ImageNet) or ``None`` (random init).
        seed: the phantoms, the data order and the initialisation follow from it.
        device: where to finetune (default: cuda if available, else cpu).
        progress: progress bars; verbose: print the story and a line per epoch.
        size, window: deprecated names of ``shape`` and ``windows``.

    Returns:
        ``{"val_auroc", "best_val_auroc", "best_epoch", "history", "weights" (``arch.tag`` or
        None), "pretrained", "model_options", "n_train", "n_val", "runtime_s", "out_dir",
        "manifest", "val_manifest", "montage" (None without matplotlib), "model_dir",
        "run_dir", "bytes"}`` (``bytes``: the size of everything under ``out_dir``).
    """
    import torch

    import ct3dzoo
    from ct3dzoo.data import CTDataset, transforms
    from ct3dzoo.data._dicom_pixels import default_workers
    from ct3dzoo.phantom import make_phantom_dataset

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    t0 = time.perf_counter()
    out = Path(out_dir).absolute()
    shape = deprecated_alias("size", "shape", size, None) or shape  # type: ignore[assignment]
    windows = deprecated_alias("window", "windows", window, None) or windows  # type: ignore[assignment]
    size, phantom_shape = tuple(int(s) for s in shape), tuple(int(s) for s in phantom_shape)
    window = windows
    if not 0.0 < crop <= 1.0:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if not value > 0:  # checked before any phantom is written
            raise ValueError(f"{name} must be > 0, got {value}")
    n_train = n_cases - n_val
    if n_val < 2 or n_train < 2:
        raise ValueError(
            f"{n_cases} cases with {n_val} for validation are too few: training and validation "
            "each need at least 2 (one of each label); use more cases"
        )
    check_demo_model(arch, pretrain)  # before any phantom is written
    options = ModelOptions(num_classes=1, head=head, drop_rate=drop_rate)
    if arch_kwargs is None:
        arch_kwargs = dict(DEFAULT_ARCH_KWARGS) if arch == DEFAULTS["arch"] else {}
    read_shape = (size[0], round(size[1] / crop), round(size[2] / crop))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    say(f"ct3dzoo demo: {arch} on {n_cases} synthetic chest CTs (seed {seed})\n  output: {out}")
    phantom = {
        "shape": phantom_shape,
        "nodule_radius_mm": nodule_radius_mm,
        "lung_vessel_hu": lung_vessel_hu,
    }
    workers = default_workers()  # the phantoms are drawn and written on every usable core
    manifest = make_phantom_dataset(
        out / "data" / "train", n=n_train, seed=seed, formats=("nifti",), workers=workers,
        **phantom,
    )  # fmt: skip
    val_manifest = make_phantom_dataset(
        out / "data" / "val", n=n_val, seed=seed + 1, formats=("dicom",), workers=workers,
        **phantom,
    )  # fmt: skip
    say(
        f"data: {n_train} training phantoms {'x'.join(map(str, phantom_shape))} as NIfTI, "
        f"{n_val} held-out validation phantoms as DICOM series (half with a lung nodule; "
        f"lesion masks in masks/) in {time.perf_counter() - t0:.1f} s\n"
        f"      read back, resampled to {'x'.join(map(str, read_shape))}, centre "
        f"{crop:.0%} cropped to {'x'.join(map(str, size))}, window {window!r}"
    )
    # each volume is read once with the real readers and kept in memory (the data are small)
    common = {"windows": window, "shape": read_shape, "in_memory": True}
    centre = transforms.CenterCrop(size)
    # no random flips: on this budget they slowed learning from random weights (held-out AUROC
    # 0.566 with flips of D and W vs 0.933 without, same 6 epochs; docs/benchmarks.md)
    train = CTDataset(manifest, transform=centre, **common)
    val = CTDataset(val_manifest, transform=centre, **common)

    model, weights = load_demo_model(arch, pretrain, say, progress, seed, options, arch_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    say(
        f"model: {arch}{arch_kwargs or ''}, {n_params / 1e6:.1f} M parameters, "
        f"input (B, 1, {', '.join(map(str, size))})"
    )

    t_train = time.perf_counter()
    with EpochLines(out / "run" / "log.jsonl", epochs, t_train, say if verbose else None):
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
            keep_checkpoints=keep_checkpoints,  # False: only run/final (smaller output)
            progress=progress,
            device=device,
        )
    train_s = time.perf_counter() - t_train
    last = result.history[-1]
    val_auroc = float(last["val_auroc"])

    model_dir = out / "run" / "final"
    montage_path = write_montage(out, val, window, say)
    saliency_path = write_saliency(out, model, val, window, say)
    runtime = time.perf_counter() - t0
    summary = {
        "arch": arch,
        "weights": weights,
        "pretrained": weights is not None,
        "model_options": options.to_dict(),
        "arch_kwargs": arch_kwargs,
        "val_auroc": val_auroc,
        "val_auroc_ci": last.get("val_auroc_ci"),  # 95%, bootstrap over the held-out cases
        "best_val_auroc": None if result.best_metric is None else float(result.best_metric),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        "train_s": train_s,
        "runtime_s": runtime,
        "out_dir": str(out),
        "manifest": str(manifest),
        "val_manifest": str(val_manifest),
        "montage": None if montage_path is None else str(montage_path),
        "saliency": None if saliency_path is None else str(saliency_path),
        "model_dir": str(model_dir),
        "run_dir": str(out / "run"),
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=1, default=str))
    summary["bytes"] = folder_bytes(out)
    init = f"from {weights}" if weights else "from random weights"
    say(
        f"\nvalidation AUROC {val_auroc:.3f}{ci_note(last.get('val_auroc_ci'), n_val)} after "
        f"{epochs} epoch{'s' * (epochs != 1)} ({init}; chance = 0.5) in {runtime:.0f} s "
        f"({train_s:.0f} s training)\n"
        f"  data        {out / 'data'}  (train/: NIfTI, val/: DICOM; masks/, cases.json)\n"
        f"  montage     {montage_path or '- (pip install ct3dzoo[viz] for montages)'}\n"
        f"  saliency    {saliency_path or '- (pip install ct3dzoo[explain,viz])'}\n"
        f"  model       {model_dir}  (load: ct3dzoo.load('{model_dir}'); it carries its "
        "preprocessing)\n"
        f"  predict     ct3dzoo predict {model_dir} {val_manifest} --out predictions.csv\n"
        f"  run         {out / 'run'}  "
        f"({'last/, best/, ' if keep_checkpoints else ''}log.jsonl)\n"
        f"  summary     {summary_path}\n"
        f"everything is in {out} ({summary['bytes'] / 1e6:.0f} MB)"
    )
    if not math.isfinite(val_auroc):
        say("warning: validation AUROC is undefined (one class only in validation)")
    return summary


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ct3dzoo demo`` on an argparse subparsers object."""
    d = DEFAULTS
    p = subparsers.add_parser(
        "demo",
        help=f"end to end on a synthetic chest-CT phantom (offline, CPU, {MEASURED})",
        description=(
            "Write a synthetic chest-CT phantom dataset (DICOM + NIfTI), read it back, finetune "
            "a model on CPU, printing loss and validation AUROC per epoch; saves a montage and "
            f"the model, all under --out. Measured: {MEASURED} (docs/benchmarks.md)."
        ),
    )
    p.add_argument("--out", default="ct3dzoo-demo", help="output folder (default ct3dzoo-demo)")
    p.add_argument("--arch", default=d["arch"],
                   help=f"the model: an architecture (default {d['arch']}), NAME.TAG, a saved "
                   "model's folder, local-dir:PATH or hf-hub:ORG/NAME")  # fmt: skip
    p.add_argument("--cases", type=int, default=d["n_cases"], help="phantom cases in all")
    p.add_argument("--val", type=int, default=d["n_val"], help="validation cases")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument(
        "--shape", type=int, nargs=3, default=d["shape"], metavar=("D", "H", "W"),
        help="model input shape (default %(default)s)",
    )  # fmt: skip
    add_deprecated(p, "--size", dest="shape", new="--shape", type=int, nargs=3)
    p.add_argument(
        "--phantom-shape", type=int, nargs=3, default=d["phantom_shape"], metavar=("D", "H", "W"),
        help="size of the written phantoms (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--windows", default=d["windows"],
                   help="HU window: a preset or C,W in HU (default lung)")  # fmt: skip
    add_deprecated(p, "--window", dest="windows", new="--windows")
    p.add_argument("--crop", type=float, default=d["crop"],
                   help="in-plane fraction of the field of view kept (default %(default)s)")  # fmt: skip
    p.add_argument("--lung-vessel-hu", type=float, default=d["lung_vessel_hu"],
                   help="contrast of the phantoms' small lung vessels (default %(default)s)")  # fmt: skip
    for name in MODEL_OPTIONS:  # defaults and help from ModelOptions, the one place they live
        default = ModelOptions.default(name)
        p.add_argument(
            f"--{name.replace('_', '-')}", type=type(default), default=default,
            help=f"{ModelOptions.help(name)} (default %(default)s)",
        )  # fmt: skip
    p.add_argument(
        "--keep-checkpoints", action="store_true",
        help="also write the resumable run/last and run/best checkpoints (larger output)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pretrain", action="store_true",
                   help="random init; don't look for Kinetics weights")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
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
        shape=tuple(args.shape),
        phantom_shape=tuple(args.phantom_shape),
        windows=args.windows,
        crop=args.crop,
        lung_vessel_hu=args.lung_vessel_hu,
        **{name: getattr(args, name) for name in MODEL_OPTIONS},
        pretrain=None if args.no_pretrain else "kinetics",
        keep_checkpoints=args.keep_checkpoints,
        seed=args.seed,
        progress=not args.no_progress,
        device=args.device,
    )
    return 0
