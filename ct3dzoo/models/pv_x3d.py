"""pytorchvideo's X3D-XS/S/M/L (Feichtenhofer, CVPR 2020), Kinetics-400.

Stem ``blocks.0.conv.conv_t`` (the spatial 1x3x3 conv, 3 -> 24; pytorchvideo names it
``conv_t``). The head's ``pre_conv`` (1x1x1, 192 -> 432) + BN + ReLU belong to the feature
map; upstream then pools with a fixed ``AvgPool3d`` and projects with ``lin_5``
(``post_conv``, 432 -> 2048) + ReLU. ct3dzoo pools globally (identical at the native clip,
any size works) and keeps ``lin_5`` as the pre-logits projection. Pre-logits: 2048-d.
Stages: ``blocks.0``..``blocks.4`` (D is never reduced; H, W by 2, 4, 8, 16, 32); the last
one includes ``pre_conv``/``pre_norm``/``pre_act`` (its map is the feature map).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import AvgPool
from ._common import fold_stems
from ._pytorchvideo import hub as pvh
from .pv_resnet import pv_row

_CITE = "Feichtenhofer. X3D: Expanding Architectures for Efficient Video Recognition. CVPR 2020."
_PAPER = "https://arxiv.org/abs/2004.04730"
_SIZES = {"x3d_xs": (4, 160, 69.12), "x3d_s": (13, 160, 73.33), "x3d_m": (16, 224, 75.94),
          "x3d_l": (16, 312, 77.44)}  # fmt: skip

register_weights(*(
    pv_row(
        f"{_n}.kinetics400", file=f"{_n.upper()}.pyth", frames=_t, crop=_c,
        stem=("blocks.0.conv.conv_t",), head_block=5, citation=_CITE, paper=_PAPER,
        notes=f"Kinetics-400 top-1 {_acc}; clip {_t}x{_c}x{_c}.",
    )
    for _n, (_t, _c, _acc) in _SIZES.items()
))  # fmt: skip


class Lin5(nn.Module):
    """X3D's ``lin_5``: a bias-free 1x1x1 conv + ReLU applied to the pooled vector."""

    def __init__(self, post_conv: nn.Conv3d) -> None:
        super().__init__()
        self.post_conv = post_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.linear(x, self.post_conv.weight.flatten(1), self.post_conv.bias))


class PVX3D(CTModel):
    """pytorchvideo X3D adapted to CT (see module docstring)."""

    def __init__(self, builder, *, in_chans: int, spec: WeightsSpec | None, **kw: Any) -> None:
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        net = builder(pretrained=False, **kw)
        proj_pool = net.blocks[-1].pool
        super().__init__(
            in_chans=in_chans,
            feature_dim=proj_pool.pre_conv.out_channels,
            num_features=proj_pool.post_conv.out_channels,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.blocks.0",),
            min_size=(1, 32, 32),
            **head_kw,
        )
        # keep pre_conv/pre_norm/pre_act under their upstream names, drop the fixed pool,
        # dropout, proj and output pool; lin_5 becomes the pre-logits projection
        head5 = nn.Module()
        head5.pool = nn.Module()
        for name in ("pre_conv", "pre_norm", "pre_act"):
            setattr(head5.pool, name, getattr(proj_pool, name))
        net.blocks[-1] = head5
        self.pre_logits = Lin5(proj_pool.post_conv)
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def upstream_key(self, key: str) -> str:
        src = f"blocks.{len(self.backbone.blocks) - 1}.pool.post_conv."
        if key.startswith(src):
            return "pre_logits.post_conv." + key[len(src) :]
        return super().upstream_key(key)

    def stages(self) -> list[Stage]:
        blocks = list(self.backbone.blocks)
        p = blocks[-1].pool
        last = len(blocks) - 1
        groups = [[b] for b in blocks[:-2]] + [[blocks[-2], p.pre_conv, p.pre_norm, p.pre_act]]
        return [
            Stage(
                f"backbone.blocks.{last}.pool.pre_act" if i == last - 1 else f"backbone.blocks.{i}",
                p.pre_conv.out_channels if i == last - 1 else norm_channels(g[0]),
                (1, 2 ** (i + 1), 2 ** (i + 1)),
                self._runner(g),
            )
            for i, g in enumerate(groups)
        ]

    def _runner(self, blocks: list[nn.Module]):
        return lambda x: run_blocks(blocks, x, self.grad_checkpointing)


def _build(builder, **kw):
    return PVX3D(builder, **kw)


@register_model("x3d_xs", family="pv_x3d", default_tag="kinetics400")
def x3d_xs(**kw: Any) -> PVX3D:
    """X3D-XS (3.8M parameters); native clip 4x160x160."""
    return _build(pvh.x3d_xs, **kw)


@register_model("x3d_s", family="pv_x3d", default_tag="kinetics400")
def x3d_s(**kw: Any) -> PVX3D:
    """X3D-S (3.8M parameters); native clip 13x160x160."""
    return _build(pvh.x3d_s, **kw)


@register_model("x3d_m", family="pv_x3d", default_tag="kinetics400")
def x3d_m(**kw: Any) -> PVX3D:
    """X3D-M (3.8M parameters); native clip 16x224x224."""
    return _build(pvh.x3d_m, **kw)


@register_model("x3d_l", family="pv_x3d", default_tag="kinetics400")
def x3d_l(**kw: Any) -> PVX3D:
    """X3D-L (6.2M parameters); native clip 16x312x312."""
    return _build(pvh.x3d_l, **kw)
