"""pytorchvideo's SlowFast-R50 and SlowFast-R101 8x8 (Feichtenhofer et al., ICCV 2019).

SlowFast takes one volume: the fast pathway sees all D slices, the slow pathway the
``torch.linspace(0, D - 1, D // alpha).long()`` slices (alpha = 4), as the paper's code does.
D must be a multiple of alpha so the lateral connections line up. Stems
``blocks.0.multipathway_blocks.{0,1}.conv`` (both folded). Upstream pools each pathway with a
fixed ``AvgPool3d`` and concatenates; ct3dzoo averages globally (identical at the native
32x224x224). Pre-logits: 2048 (slow) + 256 (fast) = 2304-d.

Stages (``forward_intermediates``, ``feature_info``, Grad-CAM): ``blocks.0``..``blocks.4``;
each map is the slow pathway after the stage's fast-to-slow fusion (the fused map the next
stage reads; stride ``alpha`` = 4 in D). For the fast pathway's maps (stride 1 in D, 1/8 of
the channels) set ``model.feature_pathway = 1``; ``feature_info`` follows.
"""

from __future__ import annotations

from typing import Any

import torch

from .._features import Stage, norm_channels
from .._model import CTModel
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import MultiPathwayAvgPool
from ._common import fold_stems
from ._pytorchvideo import hub as pvh
from .pv_resnet import _SLOWFAST_CITE, pv_row, res_stages

ALPHA = 4
_STEMS = ("blocks.0.multipathway_blocks.0.conv", "blocks.0.multipathway_blocks.1.conv")
_ROWS = {
    "slowfast_r50.kinetics400": dict(
        file="SLOWFAST_8x8_R50.pyth", frames=32, crop=224, head_block=6, citation=_SLOWFAST_CITE,
        paper="https://arxiv.org/abs/1812.03982",
        notes="Kinetics-400 top-1 76.94; 8x8 setting (slow 8 of 32 frames).",
    ),
    "slowfast_r101.kinetics400": dict(
        file="SLOWFAST_8x8_R101.pyth", frames=32, crop=224, head_block=6, citation=_SLOWFAST_CITE,
        paper="https://arxiv.org/abs/1812.03982",
        notes="Kinetics-400 top-1 77.90; 8x8 setting (slow 8 of 32 frames).",
    ),
}  # fmt: skip
register_weights(*(pv_row(name, **kw, stem=_STEMS) for name, kw in _ROWS.items()))


def slow_indices(num_slices: int, alpha: int = ALPHA, device=None) -> torch.Tensor:
    """The slices the slow pathway sees: ``linspace(0, D - 1, D // alpha).long()``."""
    return torch.linspace(0, num_slices - 1, num_slices // alpha, device=device).long()


class PVSlowFast(CTModel):
    """pytorchvideo SlowFast adapted to CT: one volume in, two pathways inside."""

    feature_format = "pathways"
    #: which pathway's map the stages give: 0 slow (fused), 1 fast
    feature_pathway: int = 0

    def __init__(self, builder, *, in_chans: int, spec: WeightsSpec | None, **kw: Any) -> None:
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        super().__init__(
            in_chans=in_chans,
            feature_dim=(2048, 256),
            num_features=2304,
            default_pool=MultiPathwayAvgPool(),
            spec=spec,
            stem_names=("backbone.blocks.0",),
            min_size=(ALPHA, 32, 32),
            size_divisor=(ALPHA, 1, 1),
            **head_kw,
        )
        net = builder(pretrained=False, **kw)
        del net.blocks[-1]  # dropout + proj
        del net.blocks[-1]  # fixed-size PoolConcatPathway
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def _stage_input(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.index_select(2, slow_indices(x.shape[2], device=x.device)), x]

    def _stage_map(self, state: list[torch.Tensor]) -> torch.Tensor:
        return state[self.feature_pathway]

    def cam_layer(self) -> str:
        """The last stage's ``feature_pathway`` module (the stage itself returns a list)."""
        return f"{self.stages()[-1].module}.multipathway_blocks.{self.feature_pathway}"

    def stages(self) -> list[Stage]:
        if self.feature_pathway not in (0, 1):
            raise ValueError(
                f"feature_pathway must be 0 (slow) or 1 (fast), got {self.feature_pathway}"
            )
        blocks = list(self.backbone.blocks)
        t = ALPHA if self.feature_pathway == 0 else 1
        strides = tuple((t, s, s) for s in (4, 4, 8, 16, 32))
        out = res_stages(self, blocks, strides)
        return [
            Stage(st.module, _pathway_channels(blocks[i], self.feature_pathway), st.stride, st.run)
            for i, st in enumerate(out)
        ]


def _pathway_channels(block: torch.nn.Module, pathway: int) -> int:
    """A MultiPathWayWithFuse block's output channels on ``pathway`` (after fusion)."""
    chs = norm_channels(block.multipathway_blocks[pathway])
    fusion = block.multipathway_fusion
    if pathway == 0 and fusion is not None and hasattr(fusion, "conv_fast_to_slow"):
        chs += fusion.conv_fast_to_slow.out_channels
    return chs


def _build(builder, **kw):
    return PVSlowFast(builder, **kw)


@register_model("slowfast_r50", family="pv_slowfast", default_tag="kinetics400")
def slowfast_r50(**kw: Any) -> PVSlowFast:
    """SlowFast-R50 8x8 (34.6M parameters) — the paper's SlowFast; native clip 32x224x224."""
    return _build(pvh.slowfast_r50, **kw)


@register_model("slowfast_r101", family="pv_slowfast", default_tag="kinetics400")
def slowfast_r101(**kw: Any) -> PVSlowFast:
    """SlowFast-R101 8x8 (62.9M parameters); native clip 32x224x224."""
    return _build(pvh.slowfast_r101, **kw)
