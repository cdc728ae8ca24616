"""MedicalNet / Med3D 3D ResNets (Chen, Ma, Zheng. Med3D: Transfer Learning for 3D Medical
Image Analysis. arXiv:1904.00625, 2019), in-domain weights from the Hugging Face Hub.

Layout (upstream ``Tencent/MedicalNet`` ``models/resnet.py``; key names identical)::

    conv1     Conv3d(1, 64, 7x7x7, stride (2, 2, 2), padding 3, no bias) -> bn1 -> ReLU
    maxpool   MaxPool3d(3, stride 2, padding 1)
    layer1    64 planes, stride 1         layer2   128 planes, stride 2
    layer3    256 planes, stride 1, dilation 2
    layer4    512 planes, stride 1, dilation 4
    (conv_seg: the segmentation decoder of the pretraining task; absent from the released
    files, dropped when present)

Blocks: BasicBlock (10: [1,1,1,1], 18: [2,2,2,2], 34: [3,4,6,3]) or Bottleneck x4 (50:
[3,4,6,3]). Shortcuts: type A (parameter-free: ``avg_pool3d(kernel 1, stride)`` + zero
channels) for 18 and 34, type B (``downsample.0`` 1x1x1 conv without bias + ``downsample.1``
BatchNorm) for 10 and 50 (as MONAI's ``get_medicalnet_pretrained_resnet_args`` records).

**Geometry.** The weights were trained with the dilated layer3/layer4 above (total stride 8,
layer4 at 1/8 resolution); their features are only those of the original in that geometry,
so ``dilated=True`` (the default) builds it. ``dilated=False`` builds the strided variant
MONAI's ``resnet*`` uses (layer3/4 stride 2, no dilation, total stride 32): same key names
and shapes, so the same file loads, ~20x fewer layer3/4 FLOPs, but features differ from the
original's (a finetune adapts them). Pre-logits: global average of layer4 (512 or 2048).

The stem takes one channel (a z-scored HU volume, see the rows' input contract); nothing is
folded. ``in_chans=n`` repeats the 1-channel kernel and divides it by n.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._features import Stage, norm_channels
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec, zscore_contract
from ..heads import AvgPool
from ._common import weights_row

__all__ = ["MedicalNetCT", "MedicalNetResNet"]

_CITATION = (
    "Chen, Ma, Zheng. Med3D: Transfer Learning for 3D Medical Image Analysis. "
    "arXiv:1904.00625, 2019."
)
_REPO = "https://github.com/Tencent/MedicalNet"
_CONTRACT_SOURCE = (
    "MedicalNet datasets/brains18.py __itensity_normalize_one_volume__: mean and std over the "
    "voxels > 0 of the (resized) volume, every voxel mapped to (v - mean) / std, voxels == 0 "
    "replaced by N(0, 1) noise. ct3dzoo.data.transforms_for z-scores over all voxels by "
    "default; zscore_threshold=0 uses the upstream's voxels > 0 statistic (no noise fill)."
)
#: depth -> (block, layers, shortcut type)
_DEPTHS: dict[int, tuple[str, tuple[int, ...], str]] = {
    10: ("basic", (1, 1, 1, 1), "B"),
    18: ("basic", (2, 2, 2, 2), "A"),
    34: ("basic", (3, 4, 6, 3), "A"),
    50: ("bottleneck", (3, 4, 6, 3), "B"),
}


#: Hub commits verified from their full ids on the Hub's pages: (depth, tag) -> commit.
#: MedicalNet-Resnet18 at ee59c99e... ("Upload resnet_18.pth") holds resnet_18.pth, unchanged
#: on main since; the other repos show only short ids, so their rows follow main.
_REVISIONS = {(18, "3dseg8"): "ee59c99e39a995fb8c20f2a2650a66161e2df584"}


def _row(depth: int, tag: str) -> WeightsSpec:
    filename = f"resnet_{depth}_23dataset.pth" if tag == "23datasets" else f"resnet_{depth}.pth"
    block, _, shortcut = _DEPTHS[depth]
    dataset = (
        "23 public 3D medical segmentation datasets (MedicalNet's 2019 release)"
        if tag == "23datasets"
        else "3DSeg-8 (8 public 3D medical segmentation datasets, CT and MRI; the Med3D paper)"
    )
    hub = f"TencentMedicalNet/MedicalNet-Resnet{depth}"
    return weights_row(
        f"medicalnet_resnet{depth}.{tag}",
        hf_hub_id=hub,
        hf_hub_filename=filename,
        hf_hub_revision=_REVISIONS.get((depth, tag)),
        url_info=f"https://huggingface.co/{hub}",
        filename=filename,
        file_format="medicalnet",
        pretrain_source="ct",
        input_contract=zscore_contract(source=_CONTRACT_SOURCE),
        classifier=("conv_seg",),
        dataset=dataset,
        publisher="Tencent (MedicalNet)",
        license="MIT (Tencent/MedicalNet LICENSE; Hub model card: mit)",
        citation=_CITATION,
        paper="https://arxiv.org/abs/1904.00625",
        upstream_arch=f"MedicalNet resnet{depth} ({block} blocks, shortcut type {shortcut})",
        notes=(
            "Segmentation-pretrained (Med3D); pickled {'state_dict': ...} with 'module.' "
            "prefixes, read with weights_only=True. Built in the original dilated geometry "
            "(layer3/4 stride 1, dilation 2/4; dilated=False gives MONAI's strided one). "
            + (
                "Hub revision pinned to the commit that uploaded the file. "
                if (depth, tag) in _REVISIONS
                else "Hub revision not pinned: the Hub pages show only short commit ids for this "
                "file, which could not be verified offline. "
            )
            + f"Sources: {_REPO} (models/resnet.py, "
            f"datasets/brains18.py), https://huggingface.co/{hub}, MONAI "
            "monai/networks/nets/resnet.py (get_medicalnet_pretrained_resnet_args)."
        ),
    )


register_weights(*(_row(d, t) for d in _DEPTHS for t in ("23datasets", "3dseg8")))


class _ShortcutA(nn.Module):
    """Type-A shortcut: subsample by ``stride`` and append zero channels (no parameters)."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))


def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, down: nn.Module | None):
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, down: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class MedicalNetResNet(nn.Module):
    """The MedicalNet encoder (upstream module names), without ``conv_seg``."""

    def __init__(
        self, depth: int, *, in_chans: int = 1, dilated: bool = True, shortcut: str | None = None
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"MedicalNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        kind, layers, default_shortcut = _DEPTHS[depth]
        shortcut = shortcut or default_shortcut
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        block = _BasicBlock if kind == "basic" else _Bottleneck
        self.dilated = dilated
        self.conv1 = nn.Conv3d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        self.inplanes = 64
        geometry = [(1, 1), (2, 1), (1, 2), (1, 4)] if dilated else [(1, 1), (2, 1), (2, 1), (2, 1)]
        for i, (planes, n, (stride, dil)) in enumerate(zip((64, 128, 256, 512), layers, geometry)):
            self.add_module(f"layer{i + 1}", self._layer(block, planes, n, stride, dil, shortcut))
        self.num_features = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def _layer(self, block, planes: int, n: int, stride: int, dil: int, shortcut: str):
        out = planes * block.expansion
        down: nn.Module | None = None
        if stride != 1 or self.inplanes != out:
            if shortcut == "A":
                down = _ShortcutA(out, stride)
            else:
                conv = nn.Conv3d(self.inplanes, out, 1, stride=stride, bias=False)
                down = nn.Sequential(conv, nn.BatchNorm3d(out))
        blocks = [block(self.inplanes, planes, stride, dil, down)]
        self.inplanes = out
        blocks += [block(out, planes, 1, dil, None) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def stages(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]


class MedicalNetCT(CTModel):
    """A MedicalNet ResNet as a ct3dzoo model (see the module docstring)."""

    def __init__(
        self,
        depth: int,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        dilated: bool = True,
        shortcut: str | None = None,
        **kw: Any,
    ) -> None:
        net = MedicalNetResNet(depth, in_chans=in_chans, dilated=dilated, shortcut=shortcut)
        super().__init__(
            in_chans=in_chans,
            feature_dim=net.num_features,
            num_features=net.num_features,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.conv1", "backbone.bn1"),
            **kw,
        )
        self.backbone = net

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``in_chans=n``: repeat the 1-channel ``conv1`` kernel n times and divide by n."""
        w = sd.get("conv1.weight")
        if w is not None and w.shape[1] == 1 and self.in_chans != 1:
            sd = {**sd, "conv1.weight": w.repeat(1, self.in_chans, 1, 1, 1) / self.in_chans}
        return sd

    def stages(self) -> list[Stage]:
        """Stem (conv1 + pool, stride 4) and layer1..4; layer3/4 keep stride 8 when dilated."""
        net = self.backbone
        spatial = (4, 4, 8, 8, 8) if net.dilated else (4, 4, 8, 16, 32)
        names = ("maxpool", "layer1", "layer2", "layer3", "layer4")
        return [
            Stage(
                f"backbone.{name}",
                64 if i == 0 else norm_channels(module),
                (s, s, s),
                lambda x, module=module: run_blocks([module], x, self.grad_checkpointing),
            )
            for i, (name, module, s) in enumerate(zip(names, net.stages(), spatial))
        ]


def _build(depth: int, **kw: Any) -> MedicalNetCT:
    return MedicalNetCT(depth, **kw)


_ALIASES = ("medicalnet",)


@register_model(
    "medicalnet_resnet10", family="medicalnet", default_tag="23datasets", aliases=_ALIASES
)
def medicalnet_resnet10(**kw: Any) -> MedicalNetCT:
    """MedicalNet ResNet-10 (BasicBlock [1,1,1,1], shortcut B), Med3D CT/MR weights."""
    return _build(10, **kw)


@register_model(
    "medicalnet_resnet18", family="medicalnet", default_tag="23datasets", aliases=_ALIASES
)
def medicalnet_resnet18(**kw: Any) -> MedicalNetCT:
    """MedicalNet ResNet-18 (BasicBlock [2,2,2,2], shortcut A), Med3D CT/MR weights."""
    return _build(18, **kw)


@register_model(
    "medicalnet_resnet34", family="medicalnet", default_tag="23datasets", aliases=_ALIASES
)
def medicalnet_resnet34(**kw: Any) -> MedicalNetCT:
    """MedicalNet ResNet-34 (BasicBlock [3,4,6,3], shortcut A), Med3D CT/MR weights."""
    return _build(34, **kw)


@register_model(
    "medicalnet_resnet50", family="medicalnet", default_tag="23datasets", aliases=_ALIASES
)
def medicalnet_resnet50(**kw: Any) -> MedicalNetCT:
    """MedicalNet ResNet-50 (Bottleneck [3,4,6,3], shortcut B), Med3D CT/MR weights."""
    return _build(50, **kw)
