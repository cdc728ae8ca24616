"""Classification heads and pooling.

A ct3dzoo model's head is ``pool -> [pre-logits projection] -> dropout -> fc``:

- ``pool`` turns the unpooled feature map into a vector. The default reproduces the
  upstream's own pooling (global average, S3D's temporal pair average, MViT's class token,
  SlowFast's per-pathway averages); ``head="attention"`` swaps in :class:`AttentionPool`.
- ``fc`` is ``"linear"``, ``"mlp"``, any ``nn.Module`` or a callable
  ``(num_features, num_classes) -> nn.Module``; it maps ``(B, num_features)`` to logits.

``head="segmentation"`` is the dense alternative: :class:`SegmentationHead`, a light
FPN-style decoder over every stage map, giving ``(B, num_classes, D, H, W)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HEAD_KINDS",
    "AttentionPool",
    "AvgPool",
    "ClassifierHead",
    "ClsTokenPool",
    "MLPHead",
    "MultiPathwayAvgPool",
    "SegmentationHead",
    "TemporalPairAvgPool",
    "create_fc",
]

HEAD_KINDS = ("linear", "mlp", "attention", "segmentation")
HeadSpec = str | nn.Module | Callable[[int, int], nn.Module]


def _tokens(feats: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, T*H*W, C)``; ``(B, N, C)`` passes through."""
    if feats.ndim == 5:
        return feats.flatten(2).transpose(1, 2)
    if feats.ndim == 3:
        return feats
    raise ValueError(
        f"expected a (B, C, T, H, W) map or (B, N, C) tokens, got {tuple(feats.shape)}"
    )


class AvgPool(nn.Module):
    """Global average over all spatio-temporal positions: ``(B, C, T, H, W) -> (B, C)``."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=(2, 3, 4))


class TemporalPairAvgPool(nn.Module):
    """S3D's pooling made size-independent: average adjacent frame pairs (stride 1), then
    average everything. Equals torchvision's ``AvgPool3d((2, 7, 7), 1)`` + mean at 7x7."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        kt = min(2, feats.shape[2])
        pooled = F.avg_pool3d(feats.mean(dim=(3, 4), keepdim=True), (kt, 1, 1), stride=1)
        return pooled.mean(dim=(2, 3, 4))


class ClsTokenPool(nn.Module):
    """The class token of ``(B, 1 + N, C)`` tokens (MViT): ``-> (B, C)``."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats[:, 0]


class MultiPathwayAvgPool(nn.Module):
    """SlowFast: average each pathway's map and concatenate: ``[(B, C_i, ...)] -> (B, sum C_i)``."""

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([f.mean(dim=(2, 3, 4)) for f in feats], dim=1)


class AttentionPool(nn.Module):
    """Attention pooling: a learned query attends over the spatio-temporal tokens.

    Input ``(B, C, T, H, W)``, ``(B, N, C)`` tokens (``has_cls_token`` drops the first), or
    a list of pathway maps (one pool per pathway, outputs concatenated). Output ``(B, C)``.
    """

    def __init__(
        self,
        dim: int | Sequence[int],
        *,
        num_heads: int = 8,
        has_cls_token: bool = False,
    ) -> None:
        super().__init__()
        self.has_cls_token = has_cls_token
        if not isinstance(dim, int):
            self.pathways = nn.ModuleList(AttentionPool(d, num_heads=num_heads) for d in dim)
            return
        self.pathways = None
        heads = num_heads
        while dim % heads:
            heads //= 2
        self.num_heads = max(heads, 1)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, feats: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if self.pathways is not None:
            return torch.cat([p(f) for p, f in zip(self.pathways, feats)], dim=1)
        x = _tokens(feats)
        if self.has_cls_token:
            x = x[:, 1:]
        b, n, c = x.shape
        h = self.num_heads
        k, v = self.kv(self.norm(x)).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        q = self.query.expand(b, -1, -1).reshape(b, 1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, 1, c/h)
        return self.proj(out.transpose(1, 2).reshape(b, c))


class MLPHead(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear``; hidden width = ``num_features // 2``."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        *,
        hidden: int | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = hidden or max(num_features // 2, 1)
        self.fc1 = nn.Linear(num_features, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


def create_fc(head: HeadSpec, num_features: int, num_classes: int) -> nn.Module:
    """The classifier part of a head: maps ``(B, num_features)`` to ``(B, num_classes)``."""
    if num_classes == 0:
        return nn.Identity()
    if isinstance(head, nn.Module):
        return head
    if isinstance(head, str):
        if head in ("linear", "attention"):
            return nn.Linear(num_features, num_classes)
        if head == "mlp":
            return MLPHead(num_features, num_classes)
        raise ValueError(
            f"unknown head {head!r}: use one of {HEAD_KINDS}, an nn.Module, or a callable "
            "(num_features, num_classes) -> nn.Module"
        )
    if callable(head):
        module = head(num_features, num_classes)
        if not isinstance(module, nn.Module):
            raise TypeError(f"head callable returned {type(module).__name__}, not an nn.Module")
        return module
    raise TypeError(f"head must be a str, nn.Module or callable, got {type(head).__name__}")


class ClassifierHead(nn.Module):
    """Holds the trainable head: ``pool`` (family default or attention), ``drop`` and ``fc``.

    The model's forward_head runs ``fc(drop(pre_logits(pool(features))))`` where
    ``pre_logits`` is a pretrained projection some families have (X3D's ``lin_5``).
    """

    def __init__(
        self, pool: nn.Module, fc: nn.Module, drop_rate: float = 0.0, kind: str = "linear"
    ) -> None:
        super().__init__()
        self.kind = kind
        self.pool = pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = fc


class SegmentationHead(nn.Module):
    """A light FPN/U-Net-style decoder: per stage a 1x1x1 lateral conv to ``width``
    channels; top-down, the coarser sum is upsampled (trilinear) to the finer stage, added,
    and refined by a 3x3x3 conv + GroupNorm + ReLU; a 1x1x1 conv (``fc``) gives the logits,
    upsampled (trilinear) to the input size.

    ``forward(maps, size)``: stage maps ``[(B, C_i, D_i, H_i, W_i)]`` finest first and the
    input ``(D, H, W)`` -> logits ``(B, num_classes, D, H, W)`` (sigmoid/softmax not applied).
    """

    kind = "segmentation"

    def __init__(self, in_chs: Sequence[int], num_classes: int, *, width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, width, 1) for c in in_chs)
        self.smooth = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(width, width, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, width), width),
                nn.ReLU(inplace=True),
            )
            for _ in in_chs
        )
        self.fc = nn.Conv3d(width, num_classes, 1)

    def forward(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        if len(maps) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} stage maps, got {len(maps)}")
        y = self.smooth[-1](self.lateral[-1](maps[-1]))
        for i in range(len(maps) - 2, -1, -1):
            lat = self.lateral[i](maps[i])
            y = F.interpolate(y, size=lat.shape[2:], mode="trilinear", align_corners=False)
            y = self.smooth[i](y + lat)
        y = self.fc(y)
        return F.interpolate(y, size=tuple(size), mode="trilinear", align_corners=False)
