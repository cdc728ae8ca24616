"""pytorchvideo's ResNet-style video networks: Slow-R50, C2D-R50, I3D-R50, R(2+1)D-R50 and
CSN-R101 (Kinetics-400 model zoo).

The upstream ``Net`` is kept as ``backbone.blocks`` minus its head (fixed ``AvgPool3d``
sized to the training clip, dropout, ``proj``); ct3dzoo pools globally, which equals the
upstream at the native clip and works at any size. Stem ``blocks.0.conv``.
Pre-logits: the global average of the last stage (2048-d).
Stages: the stem and the four residual stages (a temporal max-pool between them, C2D/I3D's
``blocks.2``, runs with the stage after it); strides per arch in the builders.
"""

from __future__ import annotations

from typing import Any

import torch

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import AvgPool
from ._common import PV_LICENSE, PV_MEAN, PV_STD, fold_stems, weights_row
from ._pytorchvideo import hub as pvh

_ZOO = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
_SLOWFAST_CITE = (
    "Feichtenhofer, Fan, Malik, He. SlowFast Networks for Video Recognition. ICCV 2019."
)


def pv_row(
    name: str,
    *,
    file: str,
    frames: int,
    crop: int,
    stem: tuple[str, ...],
    head_block: int,
    citation: str,
    paper: str,
    notes: str,
    classifier: tuple[str, ...] | None = None,
) -> WeightsSpec:
    """A pytorchvideo Kinetics-400 model-zoo row (no published hash: sha256 recorded on
    first download)."""
    return weights_row(
        name,
        url=f"{_ZOO}/{file}",
        stem=stem,
        file_format="pytorchvideo",
        mean=PV_MEAN,
        std=PV_STD,
        input_size=(3, frames, crop, crop),
        classifier=classifier or (f"blocks.{head_block}.proj",),
        num_classes=400,
        dataset="Kinetics-400",
        publisher="pytorchvideo",
        pretrain_source="video",
        license=PV_LICENSE,
        citation=citation,
        paper=paper,
        notes=notes,
    )


_ROWS = {
    "slow_r50.kinetics400": dict(
        file="SLOW_8x8_R50.pyth", frames=8, crop=224, head_block=5, citation=_SLOWFAST_CITE,
        paper="https://arxiv.org/abs/1812.03982", notes="Kinetics-400 top-1 74.58; 8x8 setting.",
    ),
    "c2d_r50.kinetics400": dict(
        file="C2D_8x8_R50.pyth", frames=8, crop=224, head_block=6,
        citation="Wang, Girshick, Gupta, He. Non-local Neural Networks. CVPR 2018.",
        paper="https://arxiv.org/abs/1711.07971", notes="Kinetics-400 top-1 71.46; 8x8 setting.",
    ),
    "i3d_r50.kinetics400": dict(
        file="I3D_8x8_R50.pyth", frames=8, crop=224, head_block=6,
        citation=(
            "Carreira, Zisserman. Quo Vadis, Action Recognition? A New Model and the Kinetics "
            "Dataset. CVPR 2017."
        ),
        paper="https://arxiv.org/abs/1705.07750", notes="Kinetics-400 top-1 73.27; 8x8 setting.",
    ),
    "r2plus1d_r50.kinetics400": dict(
        file="R2PLUS1D_16x4_R50.pyth", frames=16, crop=224, head_block=5,
        citation=(
            "Tran, Wang, Torresani, Ray, LeCun, Paluri. A Closer Look at Spatiotemporal "
            "Convolutions for Action Recognition. CVPR 2018."
        ),
        paper="https://arxiv.org/abs/1711.11248", notes="Kinetics-400 top-1 76.01; 16x4 setting.",
    ),
    "csn_r101.kinetics400": dict(
        file="CSN_32x2_R101.pyth", frames=32, crop=224, head_block=5,
        citation=(
            "Tran, Wang, Torresani, Feiszli. Video Classification with Channel-Separated "
            "Convolutional Networks. ICCV 2019."
        ),
        paper="https://arxiv.org/abs/1904.02811", notes="Kinetics-400 top-1 77.0; 32x2 setting.",
    ),
}  # fmt: skip
register_weights(*(pv_row(name, **kw, stem=("blocks.0.conv",)) for name, kw in _ROWS.items()))


class PVResNet(CTModel):
    """A pytorchvideo ResNet-style ``Net`` adapted to CT (see module docstring)."""

    def __init__(
        self,
        builder,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        min_size=(1, 32, 32),
        strides: tuple[tuple[int, int, int], ...],
        **kw: Any,
    ) -> None:
        self._strides = strides
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        super().__init__(
            in_chans=in_chans,
            feature_dim=2048,
            num_features=2048,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.blocks.0",),
            min_size=min_size,
            **head_kw,
        )
        net = builder(pretrained=False, **kw)
        del net.blocks[-1]
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def stages(self) -> list[Stage]:
        return res_stages(self, list(self.backbone.blocks), self._strides)


def res_stages(
    model: CTModel, blocks: list[torch.nn.Module], strides: tuple[tuple[int, int, int], ...]
) -> list[Stage]:
    """pytorchvideo ``Net`` blocks as stages: a pooling block joins the stage after it."""
    groups: list[list[int]] = []
    pending: list[int] = []
    for i, blk in enumerate(blocks):
        pending.append(i)
        if not isinstance(blk, torch.nn.modules.pooling._MaxPoolNd):
            groups.append(pending)
            pending = []

    def runner(idx: list[int]):
        return lambda x: run_blocks([blocks[i] for i in idx], x, model.grad_checkpointing)

    return [
        Stage(f"backbone.blocks.{g[-1]}", norm_channels(blocks[g[-1]]), st, runner(g))
        for g, st in zip(groups, strides, strict=True)
    ]


def _strides(t: tuple[int, ...], stem: int = 4) -> tuple[tuple[int, int, int], ...]:
    return tuple((ti, s, s) for ti, s in zip(t, (stem, 4, 8, 16, 32)))


def _build(builder, t=(1, 1, 1, 1, 1), stem=4, **kw):  # sizes are free: pools are global
    return PVResNet(builder, strides=_strides(t, stem), **kw)


@register_model("slow_r50", family="pv_resnet", default_tag="kinetics400")
def slow_r50(**kw: Any) -> PVResNet:
    """Slow-R50 8x8 (32.5M parameters) — the paper's Slow-R50; native clip 8x224x224."""
    return _build(pvh.slow_r50, **kw)


@register_model("c2d_r50", family="pv_resnet", default_tag="kinetics400")
def c2d_r50(**kw: Any) -> PVResNet:
    """C2D-R50 8x8 (24.3M parameters); native clip 8x224x224; needs D >= 2."""
    return _build(pvh.c2d_r50, t=(1, 1, 2, 2, 2), min_size=(2, 32, 32), **kw)


@register_model("i3d_r50", family="pv_resnet", default_tag="kinetics400")
def i3d_r50(**kw: Any) -> PVResNet:
    """I3D-R50 8x8 (28.0M parameters); native clip 8x224x224; needs D >= 2."""
    return _build(pvh.i3d_r50, t=(1, 1, 2, 2, 2), min_size=(2, 32, 32), **kw)


@register_model("r2plus1d_r50", family="pv_resnet", default_tag="kinetics400")
def r2plus1d_r50(**kw: Any) -> PVResNet:
    """R(2+1)D-R50 16x4 (28.1M parameters) — the paper's R(2+1)D; native clip 16x224x224."""
    return _build(pvh.r2plus1d_r50, t=(1, 1, 1, 2, 4), stem=2, **kw)


@register_model("csn_r101", family="pv_resnet", default_tag="kinetics400")
def csn_r101(**kw: Any) -> PVResNet:
    """CSN-R101 32x2 (22.2M parameters) — the paper's CSN-R101; native clip 32x224x224."""
    return _build(pvh.csn_r101, t=(1, 1, 2, 4, 8), **kw)
