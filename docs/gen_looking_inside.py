"""Draw the pictures of docs/looking_inside.md into docs/img/ (CPU, 2 cores: a few minutes).

    python docs/gen_looking_inside.py

The pyramid figure shows the stage maps of r3d_18 with random weights (layout, not
evidence). The study view uses the demo's own trained model (``ct3dzoo.demo.demo`` with its
defaults, seed 0, random init as offline) on a phantom study three chests tall at the demo's
slice spacing, so the model's 16-slice window covers a third of it; the figure outlines the
phantom's lesion mask, and the script prints whether the map's maximum falls on it.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.ndimage import binary_dilation

import ct3dzoo
from ct3dzoo.data import CTDataset, apply_window, read_volume
from ct3dzoo.data.transforms import CenterCrop
from ct3dzoo.demo import DEFAULTS as DEMO
from ct3dzoo.explain import study_saliency
from ct3dzoo.phantom import make_chest_phantom, make_phantom_dataset
from ct3dzoo.viz import saliency_montage, slice_curve

IMG = Path(__file__).resolve().parent / "img"


def pyramid_figure(model: ct3dzoo.CTModel, x: torch.Tensor, path: Path) -> None:
    """The middle slice of each stage map (mean over channels), with its feature_info."""
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    info = model.feature_info
    fig = Figure(figsize=(2.2 * (len(maps) + 1), 2.6))
    ax = fig.add_subplot(1, len(maps) + 1, 1)
    ax.imshow(x[0, 0, x.shape[2] // 2], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"input {tuple(x.shape[2:])}", fontsize=7)
    ax.axis("off")
    for i, (m, level) in enumerate(zip(maps, info)):
        ax = fig.add_subplot(1, len(maps) + 1, i + 2)
        ax.imshow(m[0].abs().mean(0)[m.shape[2] // 2], cmap="magma")
        ax.set_title(
            f"{level['module']}\n{level['num_chs']} ch, stride {level['reduction']}", fontsize=6
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def slice_labels(manifest: Path) -> Path:
    """``slice_labels.csv`` (``id``, ``slice``, ``nodule``: 1 where the lesion mask touches
    the slice) for the phantom cases beside ``manifest``."""
    out = manifest.parent / "slice_labels.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "slice", "nodule"])
        for case in json.loads((manifest.parent / "cases.json").read_text()):
            mask = read_volume(manifest.parent / case["mask"]).hu
            for d, hit in enumerate(mask.reshape(mask.shape[0], -1).max(axis=1) > 0):
                w.writerow([case["case"], d, int(hit)])
    return out


def study_view(work: Path) -> None:
    """A model trained on slice windows (the paper's protocol, `CTDataset(slice_windows=,
    slice_labels=)`) with the demo's recipe, explained on a held-out study longer than its
    window: window scores, the best window, the map on the study's own grid."""
    t0 = time.perf_counter()
    num_slices, stride = 16, 8
    phantom = {"shape": (48, 43, 43), "nodule_radius_mm": DEMO["nodule_radius_mm"],
               "lung_vessel_hu": DEMO["lung_vessel_hu"], "workers": 2}  # fmt: skip
    train_m = make_phantom_dataset(work / "train", n=256, seed=0, formats=("nifti",), **phantom)
    val_m = make_phantom_dataset(work / "val", n=32, seed=1, formats=("dicom",), **phantom)
    data = {"slice_windows": (num_slices, stride), "windows": "lung", "in_memory": True,
            "transform": CenterCrop((None, 32, 32))}  # fmt: skip
    train = CTDataset(train_m, slice_labels=slice_labels(train_m), **data)
    val = CTDataset(val_m, slice_labels=slice_labels(val_m), **data)
    model = ct3dzoo.load(DEMO["arch"], pretrain=None, num_classes=1, dilated=False)
    result = ct3dzoo.finetune(
        model, train, val, out_dir=work / "run", epochs=6, lr=3e-3, batch_size=16,
        keep_checkpoints=False, restore_best=False, progress=False,
    )  # fmt: skip
    last = result.history[-1]
    print(f"trained on {len(train)} windows in {time.perf_counter() - t0:.0f} s: held-out "
          f"val_study_auroc {last['val_study_auroc']:.3f} {last.get('val_study_auroc_ci')}")  # fmt: skip
    model = ct3dzoo.load(work / "run" / "final")
    cases = json.loads((val_m.parent / "cases.json").read_text())
    case = next(c for c in cases if c["label"] == 1)
    study = val_m.parent / "dicom" / case["case"]  # a DICOM series, as exported
    mask = read_volume(val_m.parent / case["mask"]).hu > 0
    res = study_saliency(model, study)
    s0, s1 = res.best
    peak = np.unravel_index(int(np.argmax(res.saliency)), res.saliency.shape)
    near = binary_dilation(mask, np.ones((3, 3, 3), bool))
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    print(f"{case['case']}: windows {res.starts}, logits {np.round(res.scores, 2).tolist()}, "
          f"best {res.best}; lesion slices {zs.min()}-{zs.max()}; map maximum at "
          f"{tuple(map(int, peak))}, within 1 voxel of the lesion: {bool(near[peak])}")  # fmt: skip
    title = (
        f"{res.method_title}\nslice-window model ({num_slices} every {stride}), held-out "
        f"{case['case']}: best window {s0}-{s1 - 1} of {mask.shape[0]} slices "
        f"(p={max(res.probabilities):.2f}); white: lesion"
    )
    shown = apply_window(read_volume(study).hu, "lung")
    saliency_montage(shown, res.saliency, path=IMG / "looking_inside_montage.png", title=title,
                     contour=mask)  # fmt: skip
    slice_curve(res.slice_scores, best=res.best, path=IMG / "looking_inside_curve.png",
                title=f"max window logit per slice (window {num_slices}, stride {stride}); "
                f"lesion: slices {zs.min()}-{zs.max()}")  # fmt: skip


def main() -> None:
    IMG.mkdir(exist_ok=True)
    torch.manual_seed(0)
    case = make_chest_phantom(shape=(64, 128, 128), seed=3, finding=True)
    vol = torch.from_numpy(apply_window(case.hu, "lung")).float()
    model = ct3dzoo.load("r3d_18", pretrain=None, num_classes=1).eval()
    pyramid_figure(model, vol[None, None, 16:48], IMG / "looking_inside_pyramid.png")
    with tempfile.TemporaryDirectory() as work:
        study_view(Path(work))


if __name__ == "__main__":
    main()
