"""torchvision's S3D (Xie et al., ECCV 2018): separable 3D Inception.

Stem ``features.0.0.0`` (Conv3d 3 -> 64, 1x7x7). Upstream pools with a fixed
``AvgPool3d((2, 7, 7), stride 1)`` and averages the 1x1x1-conv logits; ct3dzoo pools with
:class:`~ct3dzoo.heads.TemporalPairAvgPool`, identical at the native 224 px and defined at
any size. Pre-logits: that pooled 1024-d vector.
Stages end at ``features.{0, 3, 6, 12, 15}`` (before each max-pool).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.models import video as tvv

from .._features import Stage
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import TemporalPairAvgPool
from ._common import TV_LICENSE, fold_stems, weights_row

_MEAN = (0.43216, 0.394666, 0.37645)
_STD = (0.22803, 0.22145, 0.216989)
#: (first, last) index into ``features``, channels, stride (d, h, w)
_STAGES = (((0, 0), 64, (2, 2, 2)), ((1, 3), 192, (2, 4, 4)), ((4, 6), 480, (2, 8, 8)),
           ((7, 12), 832, (4, 16, 16)), ((13, 15), 1024, (8, 32, 32)))  # fmt: skip

register_weights(
    weights_row(
        "s3d.kinetics400",
        url="https://download.pytorch.org/models/s3d-d76dad2f.pth",
        file_format="torchvision",
        mean=_MEAN,
        std=_STD,
        input_size=(3, 128, 224, 224),
        stem=("features.0.0.0",),
        classifier=("classifier.1",),
        num_classes=400,
        dataset="Kinetics-400",
        publisher="torchvision",
        pretrain_source="video",
        license=TV_LICENSE,
        citation=(
            "Xie, Sun, Huang, Tu, Murphy. Rethinking Spatiotemporal Feature Learning: "
            "Speed-Accuracy Trade-offs in Video Classification. ECCV 2018."
        ),
        paper="https://arxiv.org/abs/1712.04851",
        notes="Kinetics-400 clip acc@1 68.368 (torchvision, clip_len=128); min 14 frames.",
    )
)


class TVS3D(CTModel):
    """torchvision S3D adapted to CT."""

    def __init__(self, *, in_chans: int, spec: WeightsSpec | None, **kw: Any) -> None:
        super().__init__(
            in_chans=in_chans,
            feature_dim=1024,
            num_features=1024,
            default_pool=TemporalPairAvgPool(),
            spec=spec,
            stem_names=("backbone.features.0",),
            min_size=(5, 32, 32),  # its temporal max-pools need 5 frames
            **{k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")},
        )
        net = tvv.s3d(weights=None, **kw)
        del net.avgpool, net.classifier
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def stages(self) -> list[Stage]:
        f = self.backbone.features
        return [
            Stage(f"backbone.features.{b}", c, st, self._runner(list(f[a : b + 1])))
            for (a, b), c, st in _STAGES
        ]

    def _runner(self, blocks: list[torch.nn.Module]):
        return lambda x: run_blocks(blocks, x, self.grad_checkpointing)


@register_model("s3d", family="tv_s3d", default_tag="kinetics400")
def s3d(**kw: Any) -> TVS3D:
    """S3D (8.3M parameters); native clip 128x224x224; needs D >= 5."""
    return TVS3D(**kw)
