"""Quick looks at CT volumes (extra ``ct3dzoo[viz]``): `montage` writes a PNG grid of slices;
`saliency_montage` overlays a saliency map in colour; `slice_curve` plots a per-slice score."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["montage", "saliency_montage", "slice_curve"]


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


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("ct3dzoo.viz needs matplotlib: pip install 'ct3dzoo[viz]'") from e
    return Figure


def saliency_montage(
    volume: Any,
    saliency: Any,
    *,
    path: str | os.PathLike | None = None,
    slices: Any = None,
    num_slices: int = 12,
    cols: int | None = None,
    title: str | None = None,
    alpha: float = 0.6,
    cmap: str = "jet",
    contour: Any = None,
    dpi: int = 100,
) -> Any:
    """CT slices with a saliency map overlaid in colour.

    Args:
        volume: ``(D, H, W)`` (or ``(C, D, H, W)``: channel 0 shown) in [0, 1], HU windowed.
        saliency: ``(D, H, W)`` in [0, 1], e.g. ``gradcam(...)[0]`` or
            ``study_saliency(...).saliency``.
        slices: slice indices to show; default: ``num_slices`` evenly spaced over the slices
            where the map is non-zero (the explained window), first and last included, and
            always the slice through the map's maximum (titled "max").
        title: state the method (``resolve_saliency(...).title``), the HU window and the
            slice window used here; it is printed on top.
        alpha: opacity of the map where it is 1; it fades with the value (0: transparent),
            so low saliency does not tint the anatomy. The colour scale is fixed to [0, 1].
        contour: optional ``(D, H, W)`` 0/1 mask (e.g. the lesion) drawn as a white outline.

    Returns:
        The `matplotlib.figure.Figure` (written to ``path`` as PNG when given).
    """
    Figure = _figure()
    v = _to_numpy(volume)
    while v.ndim > 3:
        v = v[0]
    s = _to_numpy(saliency)
    while s.ndim > 3 and s.shape[0] == 1:
        s = s[0]
    if v.shape != s.shape:
        raise ValueError(f"volume {v.shape} and saliency {s.shape} must both be (D, H, W)")
    c = None if contour is None else _to_numpy(contour).reshape(s.shape)
    top = int(np.unravel_index(int(np.argmax(s)), s.shape)[0])
    if slices is None:
        nz = np.flatnonzero(s.reshape(s.shape[0], -1).max(1) > 0)
        lo, hi = (int(nz[0]), int(nz[-1])) if len(nz) else (0, s.shape[0] - 1)
        slices = np.linspace(lo, hi, min(num_slices, hi - lo + 1)).round().astype(int)
        if top not in slices:  # the slice through the maximum replaces its nearest neighbour
            slices[int(np.argmin(np.abs(slices - top)))] = top
        slices = np.unique(slices)
    slices = [int(i) for i in slices]
    n = len(slices)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * 2.0, rows * 2.0 + 0.4))
    for k, d in enumerate(slices):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(np.clip(v[d], 0, 1), cmap="gray", vmin=0, vmax=1)
        m = np.clip(s[d], 0, 1)
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1, alpha=alpha * m)
        if c is not None and c[d].any():
            ax.contour(c[d] > 0.5, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"slice {d}" + (" (max)" if d == top else ""), fontsize=7)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def slice_curve(
    slice_scores: Any,
    *,
    path: str | os.PathLike | None = None,
    best: tuple[int, int] | None = None,
    title: str | None = None,
    ylabel: str = "score (logit)",
    dpi: int = 100,
) -> Any:
    """Per-slice score curve (e.g. ``study_saliency(...).slice_scores``); ``best`` =
    ``(start, stop)`` shades the window that drove the maximum."""
    Figure = _figure()
    y = _to_numpy(slice_scores).reshape(-1)
    fig = Figure(figsize=(6.0, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(np.arange(len(y)), y, color="C0")
    if best is not None:
        ax.axvspan(
            best[0], best[1] - 1, color="C3", alpha=0.2, label=f"slices {best[0]}-{best[1] - 1}"
        )
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("slice")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig
