"""The paper's 2D baselines: ImageNet ResNet-18 / ResNeXt-101 32x8d applied to every slice.

- ``resnet18_2d``, ``resnext101_32x8d_2d``: each slice goes through the 2D trunk (its stem
  ``conv1`` folded to ``in_chans`` exactly, as for the 3D models); the per-slice maps are
  stacked into a ``(B, C, D, h, w)`` feature map and pooled over slices (``slice_pool``:
  ``"mean"`` (default), ``"max"`` or ``"attention"``) -> head.
- ``lrcn_resnet18``, ``lrcn_resnext101_32x8d`` (Donahue et al., CVPR 2015): per-slice
  features -> bidirectional GRU (hidden 256) -> pooled over slices -> head. The GRU is new,
  so it lives in the head (``head.pool.gru``) with the other freshly initialised layers.

Input ``(B, in_chans, D, H, W)`` in [0, 1] like every ct3dzoo model; weights
``pretrain="imagenet"`` (torchvision's ImageNet-1k).
Stages: the stem (``conv1``/``bn1``/``relu``), ``layer1`` (with the max-pool) .. ``layer4``,
each run slice by slice; maps ``(B, C, D, h, w)``, strides (1, 2, 2) .. (1, 32, 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision import models as tvm

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..heads import AttentionPool, AvgPool, ClassifierHead, create_fc
from ._common import fold_stems, weights_row

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_LICENSE = "BSD-3-Clause (torchvision); ImageNet terms apply"
_RESNET = ("He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.",
           "https://arxiv.org/abs/1512.03385")  # fmt: skip
_RESNEXT = ("Xie, Girshick, Dollar, Tu, He. Aggregated Residual Transformations for Deep "
            "Neural Networks. CVPR 2017.", "https://arxiv.org/abs/1611.05431")  # fmt: skip
_LRCN = (" LRCN: Donahue et al. Long-term Recurrent Convolutional Networks for Visual "
         "Recognition and Description. CVPR 2015.")  # fmt: skip
_WEIGHTS = {
    "resnet18": {"imagenet1k_v1": ("https://download.pytorch.org/models/resnet18-f37072fd.pth", 69.758)},
    "resnext101_32x8d": {
        "imagenet1k_v1": ("https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth", 79.312),
        "imagenet1k_v2": ("https://download.pytorch.org/models/resnext101_32x8d-110c445d.pth", 82.834),
    },
}  # fmt: skip


def _rows() -> list[WeightsSpec]:
    rows = []
    for trunk, tags in _WEIGHTS.items():
        cite, paper = _RESNET if trunk == "resnet18" else _RESNEXT
        for arch in (f"{trunk}_2d", f"lrcn_{trunk}"):
            for tag, (url, acc) in tags.items():
                rows.append(weights_row(
                    f"{arch}.{tag}",
                    url=url,
                    file_format="torchvision",
                    upstream_arch=trunk,
                    mean=_MEAN,
                    std=_STD,
                    input_size=(3, 1, 224, 224),
                    stem=("conv1",),
                    classifier=("fc",),
                    num_classes=1000,
                    dataset="ImageNet-1k",
                    publisher="torchvision",
                    pretrain_source="imagenet",
                    license=_LICENSE,
                    citation=cite + (_LRCN if arch.startswith("lrcn") else ""),
                    paper=paper,
                    notes=f"ImageNet-1k acc@1 {acc} (torchvision); applied slice by slice.",
                ))  # fmt: skip
    return rows


register_weights(*_rows())


class SliceMaxPool(nn.Module):
    """Spatial average per slice, then the maximum over slices: ``(B, C, D, h, w) -> (B, C)``."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=(3, 4)).amax(dim=2)


class SliceAttentionPool(nn.Module):
    """Spatial average per slice, then attention pooling over the slices."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn = AttentionPool(dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.attn(feats.mean(dim=(3, 4)).transpose(1, 2))


def slice_pool_module(kind: str, dim: int) -> nn.Module:
    """``"mean"``, ``"max"`` or ``"attention"`` pooling of ``(B, C, D, h, w)`` over slices."""
    if kind == "mean":
        return AvgPool()
    if kind == "max":
        return SliceMaxPool()
    if kind == "attention":
        return SliceAttentionPool(dim)
    raise ValueError(f"slice_pool must be 'mean', 'max' or 'attention', got {kind!r}")


class LRCNPool(nn.Module):
    """LRCN's aggregator: per-slice vectors -> bidirectional GRU -> pooled over slices.

    ``(B, C, D, h, w) -> (B, 2 * hidden)``. Part of the (new, trainable) head.
    """

    def __init__(self, dim: int, hidden: int = 256, slice_pool: str = "mean") -> None:
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.reduce = slice_pool_module(slice_pool, 2 * hidden)

    def sequence(self, feats: torch.Tensor) -> torch.Tensor:
        """The GRU's per-slice outputs ``(B, 2 * hidden, D, 1, 1)``."""
        seq, _ = self.gru(feats.mean(dim=(3, 4)).transpose(1, 2))
        return seq.transpose(1, 2)[..., None, None]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.sequence(feats))


class SliceNet2d(CTModel):
    """A 2D ImageNet trunk applied slice by slice; pooled over slices, or through a BiGRU
    (LRCN). ``forward_features`` returns the per-slice trunk maps ``(B, C, D, h, w)``."""

    def __init__(
        self,
        trunk: str,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        lrcn: bool = False,
        slice_pool: str = "mean",
        gru_hidden: int = 256,
        **kw: Any,
    ) -> None:
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        net = getattr(tvm, trunk)(weights=None, **kw)
        dim = net.fc.in_features
        self._lrcn = (dim, gru_hidden) if lrcn else None
        pool = LRCNPool(dim, gru_hidden, slice_pool) if lrcn else slice_pool_module(slice_pool, dim)
        super().__init__(
            in_chans=in_chans,
            feature_dim=dim,
            num_features=2 * gru_hidden if lrcn else dim,
            default_pool=pool,
            spec=spec,
            stem_names=("backbone.conv1", "backbone.bn1"),
            min_size=(1, 32, 32),
            **head_kw,
        )
        del net.fc, net.avgpool
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net
        self.slice_pool = slice_pool

    def _make_head(self, head, num_classes):
        if self._lrcn is not None and isinstance(head, str) and head == "attention":
            dim, hidden = self._lrcn  # LRCN + attention: attend over the GRU's outputs
            fc = create_fc(head, 2 * hidden, num_classes)
            pool = LRCNPool(dim, hidden, "attention")
            return ClassifierHead(pool, fc, self.drop_rate, kind="attention")
        return super()._make_head(head, num_classes)

    def stages(self) -> list[Stage]:
        net = self.backbone
        groups = [
            ("backbone.relu", [net.conv1, net.bn1, net.relu]),
            ("backbone.layer1", [net.maxpool, net.layer1]),
            ("backbone.layer2", [net.layer2]),
            ("backbone.layer3", [net.layer3]),
            ("backbone.layer4", [net.layer4]),
        ]
        return [
            Stage(
                name,
                norm_channels(nn.ModuleList(g)),
                (1, 2 ** (i + 1), 2 ** (i + 1)),
                self._runner(g),
            )
            for i, (name, g) in enumerate(groups)
        ]

    def _runner(self, blocks: list[nn.Module]):
        def run(x: torch.Tensor) -> torch.Tensor:  # (B, C, D, H, W), slice by slice
            b, c, d, h, w = x.shape
            s = x.transpose(1, 2).reshape(b * d, c, h, w)
            s = run_blocks(blocks, s, self.grad_checkpointing)
            return s.reshape(b, d, *s.shape[1:]).transpose(1, 2)

        return run

    def cam_reshape(self, output: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        """A trunk layer's per-slice output ``(B*D, C, h, w)`` as ``(B, C, D, h, w)``."""
        b, d = input_shape[0], input_shape[2]
        return output.reshape(b, d, *output.shape[1:]).transpose(1, 2)


def _register(arch: str, trunk: str, lrcn: bool, default: str, doc: str) -> None:
    def build(**kw: Any) -> SliceNet2d:
        return SliceNet2d(trunk, lrcn=lrcn, **kw)

    build.__doc__ = doc
    build.__name__ = arch
    register_model(arch, family="resnet2d", default_tag=default, aliases=("imagenet",))(build)


_register(
    "resnet18_2d",
    "resnet18",
    False,
    "imagenet1k_v1",
    "ImageNet ResNet-18 on every slice, slice features pooled (11.2M parameters).",
)
_register(
    "resnext101_32x8d_2d",
    "resnext101_32x8d",
    False,
    "imagenet1k_v1",
    "ImageNet ResNeXt-101 32x8d on every slice, slice features pooled (86.7M parameters).",
)
_register(
    "lrcn_resnet18",
    "resnet18",
    True,
    "imagenet1k_v1",
    "LRCN: ResNet-18 slice features -> BiGRU(256) -> pooled over slices.",
)
_register("lrcn_resnext101_32x8d", "resnext101_32x8d", True, "imagenet1k_v1",
          "LRCN: ResNeXt-101 32x8d slice features -> BiGRU(256) -> pooled over slices.")  # fmt: skip
