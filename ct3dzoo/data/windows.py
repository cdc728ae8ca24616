"""HU windows: named presets, `apply_window` and `stack_windows` (numpy or torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "WINDOWS",
    "WindowSpec",
    "apply_window",
    "resolve_window",
    "stack_windows",
    "window_list",
]

#: Named windows as ``(centre, width)`` in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "pe": (400.0, 1000.0),  # the paper's CTPA window: [-100, 900] HU
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
}

WindowSpec = str | tuple[float, float]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def resolve_window(window: WindowSpec) -> tuple[float, float]:
    """Preset name or ``(centre, width)`` -> ``(centre, width)`` in HU."""
    if isinstance(window, str) and "," in window:  # "C,W" as the command line gives it
        try:
            window = tuple(float(v) for v in window.split(","))  # type: ignore[assignment]
        except ValueError:
            raise ValueError(
                f"bad HU window {window!r}: give a preset ({', '.join(WINDOWS)}) or CENTRE,WIDTH "
                "in HU, e.g. 40,400"
            ) from None
        if len(window) != 2:
            raise ValueError(f"bad HU window {window!r}: CENTRE,WIDTH is two numbers, e.g. 40,400")
    if isinstance(window, str):
        try:
            return WINDOWS[window]
        except KeyError:
            raise KeyError(
                f"Unknown window {window!r}; presets: {', '.join(WINDOWS)} "
                "or pass (centre, width) in HU."
            ) from None
    try:
        c, w = (float(v) for v in window)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"bad HU window {window!r}: an HU window is a preset name or (centre, width) in HU, "
            "e.g. (40, 400)"
        ) from None
    if not (np.isfinite(c) and np.isfinite(w)):
        raise ValueError(f"HU window centre and width must be finite numbers; got {window!r}")
    if w <= 0:
        raise ValueError(f"Window width must be > 0 HU, got {w}")
    return float(c), float(w)


def apply_window(hu: ArrayT, window: WindowSpec) -> ArrayT:
    """Map HU to [0, 1]: ``clip((hu - (c - w/2)) / w, 0, 1)``.

    Args:
        hu: numpy array or torch tensor of any shape (0-d included), or a number, in HU.
        window: preset name (see `WINDOWS`) or ``(centre, width)`` in HU.

    Returns:
        Same type (and torch device) as ``hu``, float32 unless ``hu`` is float64/float16;
        a Python number gives a float, a list an array.
    """
    c, w = resolve_window(window)
    lo = c - w / 2.0
    if isinstance(hu, torch.Tensor):
        x = hu if hu.is_floating_point() else hu.float()
        return ((x - lo) * (1.0 / w)).clamp_(0.0, 1.0)
    x = np.asarray(hu)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    out = np.asarray((x - x.dtype.type(lo)) * x.dtype.type(1.0 / w))
    np.clip(out, 0.0, 1.0, out=out)
    if isinstance(hu, np.ndarray):
        return out  # type: ignore[return-value]
    if x.ndim == 0:  # a number in, a number out (numpy scalars keep their dtype)
        return out[()] if isinstance(hu, np.generic) else float(out)  # type: ignore[return-value]
    return out  # type: ignore[return-value]


def window_list(windows: Sequence[WindowSpec] | WindowSpec) -> list[WindowSpec]:
    """One HU window or several -> a list of presets / ``(centre, width)`` tuples (a JSON
    ``[c, w]`` pair counts as one window; ``"C,W"`` strings are parsed)."""

    def one(w: object) -> bool:
        return isinstance(w, str) or (
            isinstance(w, (tuple, list))
            and len(w) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
        )

    items = [windows] if one(windows) else list(windows)  # type: ignore[arg-type]
    out: list[WindowSpec] = []
    for w in items:
        if not one(w):
            raise ValueError(f"bad HU window {w!r}: a preset name or (centre, width) in HU")
        if isinstance(w, str) and "," in w:
            w = resolve_window(w)
        out.append(w if isinstance(w, str) else (float(w[0]), float(w[1])))  # type: ignore[index]
    if not out:
        raise ValueError("no HU window given: pass at least one preset or (centre, width)")
    return out


def stack_windows(hu: ArrayT, windows: Sequence[WindowSpec] | WindowSpec, dim: int = 0) -> ArrayT:
    """Apply several windows and stack them as channels.

    Args:
        hu: ``(D, H, W)`` (or any shape) in HU; for batched ``(B, 1, D, H, W)`` pass
            ``dim=1`` after squeezing the channel, or use `transforms.Window`.
        windows: list of presets / ``(centre, width)``; a single one gives one channel.
        dim: where the channel axis goes.

    Returns:
        ``(len(windows), D, H, W)`` in [0, 1], same type/device as ``hu``.
    """
    cw = [resolve_window(w) for w in window_list(windows)]
    lo = [c - w / 2.0 for c, w in cw]
    inv = [1.0 / w for _, w in cw]
    n = len(cw)
    if isinstance(hu, torch.Tensor):
        x = hu if hu.is_floating_point() else hu.float()
        d = dim % (x.ndim + 1)
        shape = [1] * (x.ndim + 1)
        shape[d] = n
        lo_t = torch.tensor(lo, dtype=x.dtype, device=x.device).view(shape)
        inv_t = torch.tensor(inv, dtype=x.dtype, device=x.device).view(shape)
        return ((x.unsqueeze(d) - lo_t) * inv_t).clamp_(0.0, 1.0)
    x = np.asarray(hu)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return np.stack([apply_window(x, w) for w in cw], axis=dim)
