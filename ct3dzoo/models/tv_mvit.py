"""torchvision's Multiscale Vision Transformers: MViT-v1-B (Fan et al., ICCV 2021) and
MViT-v2-S (Li et al., CVPR 2022).

Stem ``conv_proj`` (Conv3d 3 -> 96, 3x7x7, stride 2x4x4). Both have size-dependent
parameters, so ``num_slices``/``image_size`` choose the input size at load time (default:
native 16x224x224): v1's absolute spatial/temporal position embeddings are resampled
(bicubic in space, linear in time); v2's relative position tables are rebuilt for the new
size and linearly resampled exactly as torchvision itself would at run time. Resampling to
the native size is the identity. Pre-logits: the class token after the final norm (768-d).
Stages: a new one at each block that pools its queries (blocks 1, 3, 14); maps are the tokens
without the class token, reshaped to ``(B, C, T, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models import video as tvv
from torchvision.models.video import mvit as tvmvit

from .._features import Stage
from .._model import CTModel
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..adapt import resample_pos_embed_1d, resample_pos_embed_2d
from ..heads import ClsTokenPool
from ._common import PV_MEAN, PV_STD, TV_LICENSE, TokenMaps, fold_stems, mvit_stages, weights_row

_NATIVE = (16, 224, 224)


def _row(name: str, url: str, citation: str, paper: str, acc1: float) -> WeightsSpec:
    return weights_row(
        name,
        url=url,
        file_format="torchvision",
        mean=PV_MEAN,
        std=PV_STD,
        input_size=(3, *_NATIVE),
        stem=("conv_proj",),
        classifier=("head.1",),
        num_classes=400,
        dataset="Kinetics-400",
        publisher="torchvision",
        pretrain_source="video",
        license=TV_LICENSE,
        citation=citation,
        paper=paper,
        notes=f"Kinetics-400 acc@1 {acc1} (torchvision); weights ported from PySlowFast.",
    )


register_weights(
    _row(
        "mvit_v1_b.kinetics400",
        "https://download.pytorch.org/models/mvit_v1_b-dbeb1030.pth",
        "Fan, Xiong, Mangalam, Li, Yan, Malik, Feichtenhofer. Multiscale Vision "
        "Transformers. ICCV 2021.",
        "https://arxiv.org/abs/2104.11227",
        78.477,
    ),
    _row(
        "mvit_v2_s.kinetics400",
        "https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth",
        "Li, Wu, Fan, Mangalam, Xiong, Malik, Feichtenhofer. MViTv2: Improved Multiscale "
        "Vision Transformers for Classification and Detection. CVPR 2022.",
        "https://arxiv.org/abs/2112.01526",
        80.757,
    ),
)


def _rebuild_for_size(net: nn.Module, size: tuple[int, int, int]) -> None:
    """Re-create torchvision MViT's size-dependent parts for input ``size`` (D, H, W), as
    torchvision's own constructor would have built them (fresh values; weights are
    resampled into them when loaded)."""
    stride = net.conv_proj.stride
    grid = [s // st for s, st in zip(size, stride)]
    old = net.pos_encoding
    net.pos_encoding = tvmvit.PositionalEncoding(
        embed_size=old.class_token.shape[0],
        spatial_size=(grid[1], grid[2]),
        temporal_size=grid[0],
        rel_pos_embed=old.spatial_pos is None,
    )
    for block in net.blocks:
        attn = block.attn
        stride_q = list(attn.pool_q.pool.stride) if attn.pool_q is not None else []
        stride_kv = list(attn.pool_k.pool.stride) if attn.pool_k is not None else []
        if attn.rel_pos_h is not None:
            span = max(grid[1:])
            q_size = span // stride_q[1] if stride_q else span
            kv_size = span // stride_kv[1] if stride_kv else span
            spatial = 2 * max(q_size, kv_size) - 1
            for name, n in (("rel_pos_h", spatial), ("rel_pos_w", spatial),
                            ("rel_pos_t", 2 * grid[0] - 1)):  # fmt: skip
                p = nn.Parameter(torch.zeros(n, attn.head_dim))
                nn.init.trunc_normal_(p, std=0.02)
                setattr(attn, name, p)
        if stride_q:
            grid = [g // st for g, st in zip(grid, stride_q)]


class TVMViT(TokenMaps, CTModel):
    """torchvision MViT adapted to CT; built for one input size (see module docstring)."""

    feature_format = "nlc_cls"

    def __init__(
        self,
        builder,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        num_slices: int | None,
        image_size: tuple[int, int] | None,
        **kw: Any,
    ) -> None:
        size = (num_slices or _NATIVE[0], *(image_size or _NATIVE[1:]))
        if size[0] % 2 or size[1] % 4 or size[2] % 4:
            raise ValueError(
                f"MViT needs num_slices divisible by 2 and image_size by 4, got {size}"
            )
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        net = builder(weights=None, **kw)
        if size != _NATIVE:
            _rebuild_for_size(net, size)
        dim = net.norm.normalized_shape[0]
        super().__init__(
            in_chans=in_chans,
            feature_dim=dim,
            num_features=dim,
            default_pool=ClsTokenPool(),
            spec=spec,
            stem_names=("backbone.conv_proj",),
            fixed_size=size,
            min_size=(2, 32, 32),
            **head_kw,
        )
        del net.head
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = self.backbone.state_dict()
        pe = self.backbone.pos_encoding
        out = {}
        for k, v in sd.items():
            target = own.get(k)
            if target is None or target.shape == v.shape:
                out[k] = v
            elif k == "pos_encoding.spatial_pos":
                old = round(v.shape[0] ** 0.5)
                if old * old != v.shape[0]:
                    raise ValueError(f"cannot resample non-square spatial_pos {tuple(v.shape)}")
                out[k] = resample_pos_embed_2d(v, (old, old), pe.spatial_size)
            elif k == "pos_encoding.temporal_pos":
                out[k] = resample_pos_embed_1d(v, pe.temporal_size)
            elif k.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t"):
                out[k] = resample_pos_embed_1d(v, target.shape[0])
            else:
                out[k] = v  # the strict loader reports the mismatch
        return out

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        b = self.backbone
        x = b.pos_encoding(b.conv_proj(x).flatten(2).transpose(1, 2))
        return x, (b.pos_encoding.temporal_size, *b.pos_encoding.spatial_size)

    def stages(self) -> list[Stage]:
        b = self.backbone
        return mvit_stages(
            self, self._embed, list(b.blocks), b.norm,
            patch_stride=b.conv_proj.stride, norm_name="backbone.norm",
        )  # fmt: skip


@register_model("mvit_v1_b", family="tv_mvit", default_tag="kinetics400", size_args=True)
def mvit_v1_b(**kw: Any) -> TVMViT:
    """MViT-v1-B 16x4 (36.6M parameters); native clip 16x224x224."""
    return TVMViT(tvv.mvit_v1_b, **kw)


@register_model("mvit_v2_s", family="tv_mvit", default_tag="kinetics400", size_args=True)
def mvit_v2_s(**kw: Any) -> TVMViT:
    """MViT-v2-S (34.5M parameters); native clip 16x224x224."""
    return TVMViT(tvv.mvit_v2_s, **kw)
