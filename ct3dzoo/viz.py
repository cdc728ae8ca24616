"""Quick looks at CT volumes: `montage` writes a PNG grid of slices (extra ``ct3dzoo[viz]``)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["montage"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def montage(
    volume: Any,
    *,
    window: Any = "pe",
    path: str | os.PathLike | None = None,
    num_slices: int = 16,
    cols: int | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Any:
    """Grid of evenly spaced axial slices, to check windows and crops by eye.

    Args:
        volume: `CTVolume`, or array/tensor ``(D, H, W)``, ``(C, D, H, W)`` or
            ``(1, C, D, H, W)``. With ``window`` the values are HU; with ``window=None``
            they are taken as already in [0, 1]. Three channels show as RGB (e.g. the
            output of ``stack_windows(hu, ["lung", "pe", "mediastinal"])``), others as
            grey from channel 0.
        window: preset name, ``(centre, width)`` in HU, or ``None``.
        path: where to write the PNG; ``None`` only returns the figure.
        num_slices: how many slices (evenly spaced over D, first and last included).
        cols: grid columns (default ``ceil(sqrt(n))``).

    Returns:
        The `matplotlib.figure.Figure`.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("montage needs matplotlib: pip install 'ct3dzoo[viz]'") from e
    from .data.volume import CTVolume
    from .data.windows import apply_window

    spacing = None
    if isinstance(volume, CTVolume):
        spacing = volume.spacing
        volume = volume.hu
    x = _to_numpy(volume)
    while x.ndim > 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"Expected (D, H, W) or (C, D, H, W), got shape {x.shape}")
    if window is not None:
        x = apply_window(x, window)
    rgb = x.shape[0] == 3
    depth = x.shape[1]
    n = min(num_slices, depth)
    idx = np.unique(np.linspace(0, depth - 1, n).round().astype(int))
    n = len(idx)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = x.shape[-2:]
    aspect = 1.0 if spacing is None else spacing[1] / spacing[2]
    fig = Figure(figsize=(cols * 2.0 * w / max(h, w), rows * 2.0 * h * aspect / max(h, w) + 0.3))
    for k, d in enumerate(idx):
        ax = fig.add_subplot(rows, cols, k + 1)
        img = np.moveaxis(x[:, d], 0, -1) if rgb else x[0, d]
        ax.imshow(np.clip(img, 0, 1), cmap=None if rgb else "gray", vmin=0, vmax=1, aspect=aspect)
        ax.set_title(f"d={d}", fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
