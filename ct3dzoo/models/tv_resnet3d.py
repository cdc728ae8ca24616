"""torchvision's 3D ResNets: R3D-18, MC3-18 and R(2+1)D-18 (Tran et al., CVPR 2018).

Stem ``stem.0`` (Conv3d, 3 -> 64 or 45), four residual stages, global average pool, ``fc``.
Fully convolutional with adaptive pooling upstream, so any D, H, W >= 1 works.
Pre-logits: the flattened global average of ``layer4`` (512-d).
Stages: ``stem``, ``layer1``..``layer4``; R3D and R(2+1)D halve D in layers 2-4, MC3 never.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models import video as tvv

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import AvgPool
from ._common import TV_LICENSE, fold_stems, weights_row

_MEAN = (0.43216, 0.394666, 0.37645)
_STD = (0.22803, 0.22145, 0.216989)
_CITATION = (
    "Tran, Wang, Torresani, Ray, LeCun, Paluri. A Closer Look at Spatiotemporal Convolutions "
    "for Action Recognition. CVPR 2018."
)


def _row(name: str, url: str, acc1: float) -> WeightsSpec:
    return weights_row(
        name,
        url=url,
        file_format="torchvision",
        mean=_MEAN,
        std=_STD,
        input_size=(3, 16, 112, 112),
        stem=("stem.0",),
        classifier=("fc",),
        num_classes=400,
        dataset="Kinetics-400",
        publisher="torchvision",
        pretrain_source="video",
        license=TV_LICENSE,
        citation=_CITATION,
        paper="https://arxiv.org/abs/1711.11248",
        notes=f"Kinetics-400 video acc@1 {acc1} (torchvision); clips 16x112x112 resized from 128x171.",
    )


register_weights(
    _row("r3d_18.kinetics400", "https://download.pytorch.org/models/r3d_18-b3b3357e.pth", 63.2),
    _row("mc3_18.kinetics400", "https://download.pytorch.org/models/mc3_18-a90a0ba3.pth", 63.96),
    _row(
        "r2plus1d_18.kinetics400",
        "https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
        67.463,
    ),
)


class TVResNet3d(CTModel):
    """torchvision VideoResNet adapted to CT (see module docstring)."""

    def __init__(
        self, builder, *, in_chans: int, spec: WeightsSpec | None, t_strides, **kw: Any
    ) -> None:
        self._t_strides = t_strides
        super().__init__(
            in_chans=in_chans,
            feature_dim=512,
            num_features=512,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.stem",),
            **{k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")},
        )
        net = builder(weights=None, **kw)
        del net.fc, net.avgpool
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def stages(self) -> list[Stage]:
        names = ("stem", "layer1", "layer2", "layer3", "layer4")
        hw = (2, 2, 4, 8, 16)
        return [
            Stage(f"backbone.{n}", norm_channels(m), (t, s, s), self._runner(m))
            for n, m, t, s in zip(
                names, map(self.backbone.get_submodule, names), self._t_strides, hw
            )
        ]

    def _runner(self, block: torch.nn.Module):
        return lambda x: run_blocks([block], x, self.grad_checkpointing)


def _build(builder, t_strides=(1, 1, 2, 4, 8), **kw):
    return TVResNet3d(builder, t_strides=t_strides, **kw)


@register_model("r3d_18", family="tv_resnet3d", default_tag="kinetics400")
def r3d_18(**kw: Any) -> TVResNet3d:
    """R3D-18: 3D convolutions throughout (33.2M parameters)."""
    return _build(tvv.r3d_18, **kw)


@register_model("mc3_18", family="tv_resnet3d", default_tag="kinetics400")
def mc3_18(**kw: Any) -> TVResNet3d:
    """MC3-18: 3D convolutions in the early layers, 2D later (11.5M parameters)."""
    return _build(tvv.mc3_18, t_strides=(1, 1, 1, 1, 1), **kw)


@register_model("r2plus1d_18", family="tv_resnet3d", default_tag="kinetics400")
def r2plus1d_18(**kw: Any) -> TVResNet3d:
    """R(2+1)D-18: each 3D convolution factorised into spatial + temporal (31.5M parameters)."""
    return _build(tvv.r2plus1d_18, **kw)
