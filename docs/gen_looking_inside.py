"""Draw the pictures of docs/looking_inside.md into docs/img/ (CPU, about a minute).

    python docs/gen_looking_inside.py

The phantom comes from the library's own generator; the model has random weights (no
download), so the pictures show what the tools produce and how they are laid out, not what
a trained model looks at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ct3dzoo.data.synthetic import make_chest_phantom
from matplotlib.figure import Figure

import ct3dzoo
from ct3dzoo.data import apply_window
from ct3dzoo.explain import study_saliency
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


def main() -> None:
    IMG.mkdir(exist_ok=True)
    torch.manual_seed(0)
    case = make_chest_phantom(shape=(64, 128, 128), seed=3, finding=True)
    vol = torch.from_numpy(apply_window(case.hu, "lung")).float()
    model = ct3dzoo.load("r3d_18", pretrain=None, num_classes=1).eval()
    pyramid_figure(model, vol[None, None, 16:48], IMG / "looking_inside_pyramid.png")
    res = study_saliency(model, vol, window=32, stride=16)
    s0, s1 = res.best
    d = case.finding.centre[0] if case.finding else float("nan")
    title = (
        f"r3d_18 (random weights): Grad-CAM of the best window, slices {s0}-{s1 - 1} of "
        f"{vol.shape[0]}; lung window; phantom nodule at slice {d:.0f}"
    )
    saliency_montage(vol, res.saliency, path=IMG / "looking_inside_montage.png", title=title)
    slice_curve(res.slice_scores, best=res.best, path=IMG / "looking_inside_curve.png",
                title="max window score per slice (window 32, stride 16)")  # fmt: skip
    print(f"best window {res.best}, scores {np.round(res.scores, 3).tolist()}")


if __name__ == "__main__":
    main()
