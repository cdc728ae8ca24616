"""Stages and feature pyramids: what every family declares once (:class:`Stage`), and the
timm-style pieces built on it (:class:`FeatureInfo`, :func:`take_indices`,
:class:`FeatureListNet`).

A family's ``stages()`` lists its backbone as consecutive stages. Running them in order is the
model's ``forward_features``; the state after stage ``i``, turned into a ``(B, C, D, H, W)``
map by the family's ``_stage_map``, is pyramid level ``i``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FeatureInfo", "FeatureListNet", "Stage", "norm_channels", "take_indices"]


@dataclass(frozen=True)
class Stage:
    """One stage of a backbone.

    ``module``: the model's submodule whose output this stage ends with (feature_info's
    ``module``; Grad-CAM hooks it); ``num_chs``: channels of the stage map; ``stride``:
    ``(d, h, w)`` reduction of the map against the input (map size = ``ceil(input / stride)``
    for sizes the arch accepts); ``run``: the state before the stage -> the state after it.
    """

    module: str
    num_chs: int
    stride: tuple[int, int, int]
    run: Callable[[Any], Any]


def norm_channels(module: nn.Module) -> int:
    """Output channels of a residual stage read off its last normalisation layer."""
    for m in reversed(list(module.modules())):
        for attr in ("num_features", "num_channels"):
            if isinstance(getattr(m, attr, None), int):
                return getattr(m, attr)
    raise ValueError(f"no normalisation layer in {type(module).__name__} to read channels from")


def take_indices(num_stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's meaning: ``None`` all stages, an int ``n`` the last ``n``, a sequence those
    indices (negative counts from the end). Returns sorted non-negative indices."""
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices}: take the last n of {num_stages} stages, n >= 1")
        return list(range(num_stages - indices, num_stages))
    out = []
    for i in indices:
        j = i + num_stages if i < 0 else i
        if not 0 <= j < num_stages:
            raise ValueError(
                f"stage index {i} out of range: this model has {num_stages} stages "
                f"(0..{num_stages - 1}, or negative from the end)"
            )
        out.append(j)
    return sorted(set(out))


class FeatureInfo:
    """timm-style description of the pyramid levels: one dict per level with ``num_chs``,
    ``reduction`` (the stride ``(d, h, w)``), ``module`` and ``index`` (the stage)."""

    def __init__(self, stages: Sequence[Stage], out_indices: Sequence[int]) -> None:
        self.out_indices = tuple(out_indices)
        self.info = [
            {"num_chs": stages[i].num_chs, "reduction": stages[i].stride,
             "module": stages[i].module, "index": i}
            for i in self.out_indices
        ]  # fmt: skip

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.info]

    def reduction(self) -> list[tuple[int, int, int]]:
        return [f["reduction"] for f in self.info]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self.info]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.info[i]

    def __len__(self) -> int:
        return len(self.info)

    def __iter__(self):
        return iter(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.info})"


class FeatureListNet(nn.Module):
    """What ``load(..., features_only=True, out_indices=...)`` returns: ``forward(x)`` gives
    the list of ``(B, C, D, H, W)`` maps at ``out_indices``; stages after the last one taken
    are not run. ``feature_info`` describes the levels. The wrapped model is ``.model``."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.out_indices = take_indices(len(model.stages()), out_indices)
        self.feature_info = FeatureInfo(model.stages(), self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=self.out_indices, stop_early=True, intermediates_only=True
        )
