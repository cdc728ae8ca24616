"""Merlin's image encoder (Blankemeier et al. 2024/2026): an inflated ResNet-152 trained on
Stanford abdominal CTs against EHR phenotypes and radiology reports (CLIP-style).

The published checkpoint (Hub ``stanfordmimi/Merlin``,
``i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt``) is the flat state
dict of the whole ``MerlinArchitecture`` (``merlin/models/build.py``): the image tower under
``encode_image.i3_resnet.``, the Clinical-Longformer text tower under ``encode_text.`` and a
``logit_scale``. :meth:`MerlinI3ResNet.adapt_upstream_state_dict` keeps only the keys under
``encode_image.i3_resnet.`` and strips that prefix (a state dict of the image tower alone, as
the five-year-prediction checkpoint is, is taken as it is); the image tower's 512-d
``contrastive_head`` is dropped, and its 1692-phenotype ``classifier`` (a 1x1x1 Conv3d) is the
row's source classifier, kept when ``num_classes=1692`` with a linear head.

The image tower (``merlin/models/i3res.py`` + ``inflate.py``, torchvision ResNet-152 inflated
with ``center=True``; all convs without bias)::

    conv1      Conv3d 3 -> 64, kernel (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3)
    bn1, relu; maxpool MaxPool3d kernel 3, stride 2, padding 1 (also along D)
    layer1..4  3, 8, 36, 3 bottlenecks (widths 256, 512, 1024, 2048): 1x1x1 -> 3x3x3 with
               stride s along D, H and W (s = 2 in the first block of layer2..4) -> 1x1x1;
               downsample 1x1x1 conv stride s + BN
    avgpool    global average -> (B, 2048): the pre-logits (Merlin's ``ImageEmbedding``)

Merlin repeats its one-channel input to three channels without normalising; here that
repeat is folded into the stem (mean 0, std 1 in the row), so ``in_chans=1`` computes the same
numbers with a 1-channel kernel. Merlin feeds the network ``x.permute(0, 1, 4, 2, 3)`` of a
MONAI ``(x, y, z)`` array in RAS orientation: the network's ``(D, H, W)`` axes point S, R, A
(the row's ``orientation="SRA"``); from a ``CTVolume`` (S, P, L) that is
``hu.flip(-2, -1).transpose(-2, -1)``. Total stride 16 along D, 32 along H and W; any size runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec, hu_range_contract
from ..heads import AvgPool
from ._common import fold_stems, weights_row

__all__ = ["MerlinI3ResNet"]

_REPO = "https://github.com/StanfordMIMI/Merlin/blob/2489a96bab716b6b27e3e693e2e9e9a1587135a5"
_IMAGE_PREFIX = "encode_image.i3_resnet."
_DROPPED = ("contrastive_head.",)

register_weights(
    weights_row(
        "merlin_i3resnet152.stanford_abct",
        hf_hub_id="stanfordmimi/Merlin",
        hf_hub_filename="i3_resnet_clinical_longformer_best_clip_04-02-2024_23-21-36_epoch_99.pt",
        hf_hub_revision=None,
        file_format="merlin",
        pretrain_source="ct",
        input_contract=hu_range_contract(
            -1000,
            1000,
            spacing=(3.0, 1.5, 1.5),
            orientation="SRA",
            size=(160, 224, 224),
            source=(
                "merlin/data/monai_transforms.py: Orientationd('RAS'), Spacingd(1.5, 1.5, 3) mm, "
                "ScaleIntensityRanged(-1000, 1000 -> 0, 1, clip=True), pad + centre crop to "
                "224 x 224 x 160 (x, y, z); the model permutes (x, y, z) to (z, x, y)"
            ),
        ),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        input_size=(3, 160, 224, 224),
        stem=("conv1",),
        classifier=("classifier",),
        num_classes=1692,
        dataset=(
            "Merlin abdominal CT (Stanford emergency department 2012-2018), with EHR "
            "diagnosis codes and radiology reports"
        ),
        publisher="stanfordmimi",
        license="MIT (Hub model card of stanfordmimi/Merlin; StanfordMIMI/Merlin LICENSE)",
        citation=(
            "Blankemeier L, Kumar A, Cohen JP, et al. Merlin: a computed tomography "
            "vision-language foundation model and dataset. Nature (2026). "
            "doi:10.1038/s41586-026-10181-8 (arXiv:2406.06512, 2024)."
        ),
        paper="https://arxiv.org/abs/2406.06512",
        upstream_arch="merlin.models.i3res.I3ResNet(torchvision resnet152, conv_class=True)",
        notes=(
            f"Architecture and keys: {_REPO}/merlin/models/i3res.py, inflate.py, build.py "
            "(MerlinArchitecture.encode_image.i3_resnet); the file name and loading "
            f"(model.load_state_dict(torch.load(...))): {_REPO}/merlin/models/load.py. The "
            "ct3dzoo row keeps only the encode_image.i3_resnet.* tensors (prefix stripped); "
            "the text tower (encode_text.*, logit_scale) and the 512-d contrastive_head are "
            "dropped; classifier = the 1692 EHR-phenotype logits. The ct3dzoo cache holds the "
            "converted full checkpoint (about 1.1 GB). Contract: "
            f"{_REPO}/merlin/data/monai_transforms.py; orientation = MONAI axis codes of the "
            "network's (D, H, W) axes (RAS array permuted to z, x, y). Revision: the Hub "
            "repo's commits are seen only abbreviated (149c2de, README), so none is pinned. "
            "The Merlin abdominal CT dataset is released for non-commercial research only "
            f"({_REPO}/documentation/download.md)."
        ),
    )
)


class _Bottleneck3d(nn.Module):
    """Merlin's ``Bottleneck3d`` (inflated torchvision bottleneck, stride on the 3x3x3 conv)."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out = 4 * width
        self.conv1 = nn.Conv3d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + shortcut)


class _I3ResNet(nn.Module):
    """The image tower's module tree with Merlin's parameter names (no pooling heads)."""

    def __init__(self, layers: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        in_ch = 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(_Bottleneck3d(in_ch, width, 2 if (i > 0 and j == 0) else 1))
                in_ch = 4 * width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = in_ch


class MerlinI3ResNet(CTModel):
    """Merlin's image encoder adapted to ct3dzoo (see module docstring).

    Input ``(B, in_chans, D, H, W)``: HU clipped to [-1000, 1000] and scaled to [0, 1],
    axes pointing S, R, A (``pretrained_cfg.input_contract``). Features ``(B, 2048, D', H', W')``.
    ``layers``: bottlenecks per stage; the published weights need the default (ResNet-152).
    """

    def __init__(
        self,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        layers: tuple[int, ...] = (3, 8, 36, 3),
        **kw: Any,
    ) -> None:
        if spec is None:
            raise ValueError("merlin_i3resnet152 is built for its weights row")
        super().__init__(
            in_chans=in_chans,
            feature_dim=2048,
            num_features=2048,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.conv1", "backbone.bn1"),
            **{k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")},
        )
        if kw:
            raise TypeError(f"merlin_i3resnet152 got unexpected arguments {sorted(kw)}")
        net = _I3ResNet(tuple(layers))
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The full Merlin checkpoint -> the image tower's tensors, prefix stripped; the
        text tower and the contrastive head are dropped (see module docstring)."""
        if any(k.startswith(_IMAGE_PREFIX) for k in sd):
            n = len(_IMAGE_PREFIX)
            sd = {k[n:]: v for k, v in sd.items() if k.startswith(_IMAGE_PREFIX)}
        return {k: v for k, v in sd.items() if not k.startswith(_DROPPED)}

    def stages(self) -> list[Stage]:
        """``relu`` (the stem, stride 1, 2, 2), then ``maxpool`` + ``layer1`` .. ``layer4``."""
        b = self.backbone
        groups = [("backbone.relu", [b.conv1, b.bn1, b.relu])] + [
            (  # named by the last block: the stage's blocks are run one by one
                f"backbone.layer{i}.{len(getattr(b, f'layer{i}')) - 1}",
                ([b.maxpool] if i == 1 else []) + list(getattr(b, f"layer{i}")),
            )
            for i in range(1, 5)
        ]
        strides = [(1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16), (16, 32, 32)]
        return [
            Stage(name, norm_channels(nn.ModuleList(g)), st, self._runner(g))
            for (name, g), st in zip(groups, strides)
        ]

    def _runner(self, blocks: list[nn.Module]):
        return lambda x: run_blocks(blocks, x, self.grad_checkpointing)


@register_model(
    "merlin_i3resnet152", family="merlin", default_tag="stanford_abct", aliases=("merlin",)
)
def merlin_i3resnet152(**kw: Any) -> MerlinI3ResNet:
    """Merlin image encoder (Blankemeier et al.), inflated ResNet-152; 2048-d features."""
    return MerlinI3ResNet(**kw)
