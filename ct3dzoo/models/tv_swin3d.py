"""torchvision's Video Swin Transformer (Liu et al., CVPR 2022): swin3d_t/s/b.

Stem ``patch_embed.proj`` (Conv3d 3 -> C, 2x4x4 patches). Upstream zero-pads the input to a
multiple of the patch size *after* normalisation; :class:`FoldedPatchEmbed3d` reproduces
that exactly (the padded voxels get no mean/std term). Windows shrink to the input, so any
D, H, W works. Pre-logits: global average of the final normed tokens.
Stages: ``features.{0, 2, 4, 6}`` (each with the patch merging before it; the first with the
patch embedding, the last with the final ``norm``), strides (2, 4, 4) .. (2, 32, 32). Between
stages the tokens are channels-last ``(B, D, H, W, C)``; the maps are permuted to
``(B, C, D, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import video as tvv

from .._features import Stage
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..adapt import FoldedStemConv
from ..heads import AvgPool
from ._common import TV_LICENSE, weights_row

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_CITATION = "Liu, Ning, Cao, Wei, Zhang, Lin, Hu. Video Swin Transformer. CVPR 2022."


def _row(name: str, url: str, notes: str, dataset: str = "Kinetics-400") -> WeightsSpec:
    return weights_row(
        name,
        url=url,
        file_format="torchvision",
        mean=_MEAN,
        std=_STD,
        input_size=(3, 32, 224, 224),
        stem=("patch_embed.proj",),
        classifier=("head",),
        num_classes=400,
        dataset=dataset,
        publisher="torchvision",
        pretrain_source="video",
        license=TV_LICENSE,
        citation=_CITATION,
        paper="https://arxiv.org/abs/2106.13230",
        notes=notes,
    )


register_weights(
    _row(
        "swin3d_t.kinetics400",
        "https://download.pytorch.org/models/swin3d_t-7615ae03.pth",
        "Kinetics-400 acc@1 77.715 (torchvision); ImageNet-1k init.",
    ),
    _row(
        "swin3d_s.kinetics400",
        "https://download.pytorch.org/models/swin3d_s-da41c237.pth",
        "Kinetics-400 acc@1 79.521 (torchvision); ImageNet-1k init.",
    ),
    _row(
        "swin3d_b.kinetics400",
        "https://download.pytorch.org/models/swin3d_b_1k-24f7c7c6.pth",
        "Kinetics-400 acc@1 79.427 (torchvision); ImageNet-1k init.",
    ),
    _row(
        "swin3d_b.kinetics400_imagenet22k",
        "https://download.pytorch.org/models/swin3d_b_22k-7c6ae6fa.pth",
        "Kinetics-400 acc@1 81.643 (torchvision); ImageNet-22k init.",
        dataset="Kinetics-400 (ImageNet-22k init)",
    ),
)


class FoldedPatchEmbed3d(nn.Module):
    """Swin's patch embedding with the normalisation folded into ``proj`` exactly."""

    def __init__(self, upstream: nn.Module, *, in_chans: int, spec: WeightsSpec) -> None:
        super().__init__()
        self.patch_size = tuple(upstream.tuple_patch_size)
        self.proj = FoldedStemConv(upstream.proj, in_chans=in_chans, mean=spec.mean, std=spec.std)
        self.norm = upstream.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dhw = tuple(x.shape[2:])
        pad = [(p - s % p) % p for s, p in zip(dhw, self.patch_size)]
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        x = self.proj(x, valid_shape=dhw).permute(0, 2, 3, 4, 1)
        return x if self.norm is None else self.norm(x)


class TVSwin3d(CTModel):
    """torchvision SwinTransformer3d adapted to CT."""

    def __init__(self, builder, *, in_chans: int, spec: WeightsSpec | None, **kw: Any) -> None:
        net = builder(
            weights=None,
            **{k: v for k, v in kw.items() if k not in ("num_classes", "head", "drop_rate")},
        )
        super().__init__(
            in_chans=in_chans,
            feature_dim=net.num_features,
            num_features=net.num_features,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.patch_embed",),
            num_classes=kw["num_classes"],
            head=kw["head"],
            drop_rate=kw["drop_rate"],
        )
        del net.head, net.avgpool
        net.patch_embed = FoldedPatchEmbed3d(net.patch_embed, in_chans=in_chans, spec=spec)
        self.backbone = net

    def stages(self) -> list[Stage]:
        b = self.backbone
        f = list(b.features)
        embed = [b.patch_embed, b.pos_drop]
        groups = [embed + f[:1], f[1:3], f[3:5], [*f[5:7], b.norm]]
        dim = b.patch_embed.proj.out_channels
        pt, ph, pw = b.patch_embed.patch_size
        return [
            Stage(
                "backbone.norm" if i == 3 else f"backbone.features.{2 * i}",
                dim * 2**i,
                (pt, ph * 2**i, pw * 2**i),
                self._runner(g),
            )
            for i, g in enumerate(groups)
        ]

    def _runner(self, blocks: list[nn.Module]):
        return lambda x: run_blocks(blocks, x, self.grad_checkpointing)

    def _stage_map(self, state: torch.Tensor) -> torch.Tensor:
        return state.permute(0, 4, 1, 2, 3)

    def _final_features(self, state: torch.Tensor) -> torch.Tensor:
        return state.permute(0, 4, 1, 2, 3)

    def cam_reshape(self, output: torch.Tensor, input_shape) -> torch.Tensor:
        return output.permute(0, 4, 1, 2, 3)  # channels-last tokens


def _build(builder, **kw):
    return TVSwin3d(builder, **kw)


@register_model("swin3d_t", family="tv_swin3d", default_tag="kinetics400")
def swin3d_t(**kw: Any) -> TVSwin3d:
    """Video Swin-T (28.2M parameters) — the paper's Swin-T; native clip 32x224x224."""
    return _build(tvv.swin3d_t, **kw)


@register_model("swin3d_s", family="tv_swin3d", default_tag="kinetics400")
def swin3d_s(**kw: Any) -> TVSwin3d:
    """Video Swin-S (49.8M parameters)."""
    return _build(tvv.swin3d_s, **kw)


@register_model("swin3d_b", family="tv_swin3d", default_tag="kinetics400")
def swin3d_b(**kw: Any) -> TVSwin3d:
    """Video Swin-B (88.0M parameters); tags kinetics400 (IN-1k init), kinetics400_imagenet22k."""
    return _build(tvv.swin3d_b, **kw)
