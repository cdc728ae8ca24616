"""Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021): the encoder of the self-supervised
3D U-Net pretrained on LUNA16 chest CT (``Genesis_Chest_CT.pt``).

Layout (upstream ``MrGiovanni/ModelsGenesis`` ``pytorch/unet3d.py``; key names identical)::

    down_tr64    ops: LUConv(1 -> 32), LUConv(32 -> 64)      -> MaxPool3d(2)
    down_tr128   ops: LUConv(64 -> 64), LUConv(64 -> 128)    -> MaxPool3d(2)
    down_tr256   ops: LUConv(128 -> 128), LUConv(128 -> 256) -> MaxPool3d(2)
    down_tr512   ops: LUConv(256 -> 256), LUConv(256 -> 512)    (no pool)

``LUConv`` = ``conv1`` Conv3d 3x3x3 (padding 1, with bias) -> ``bn1`` -> ReLU. The decoder
(``up_tr256``, ``up_tr128``, ``up_tr64``, ``out_tr``) is in the file and dropped by
:meth:`GenesisUNet3dEncoder.adapt_upstream_state_dict` (the encoder has no classifier to
list as the row's ``classifier``). Pre-logits: global average of ``down_tr512`` (512-d).
Total stride 8: the U-Net needs D, H, W divisible by 8 (three 2x pools before the skips are
concatenated back), which the row's contract records and ``check_input`` enforces.

**Batch norm.** Upstream's ``ContBatchNorm3d`` normalises with the batch's statistics also in
eval mode. ``bn_batch_stats=False`` (default) uses ordinary BatchNorm (the file's running
statistics in eval); ``bn_batch_stats=True`` reproduces the upstream exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._features import Stage
from .._model import CTModel, run_blocks
from .._registry import register_model, register_weights
from .._specs import WeightsSpec, hu_range_contract
from ..heads import AvgPool
from ._common import weights_row

__all__ = ["GenesisEncoder", "GenesisUNet3dEncoder"]

_HUB = "MrGiovanni/ModelsGenesis"
_DECODER = ("up_tr256.", "up_tr128.", "up_tr64.", "out_tr.")

register_weights(
    weights_row(
        "genesis_unet3d.genesis_chest_ct",
        hf_hub_id=_HUB,
        hf_hub_filename="Genesis_Chest_CT.pt",
        hf_hub_revision=None,
        url_info=f"https://huggingface.co/{_HUB}",
        filename="Genesis_Chest_CT.pt",
        file_format="genesis",
        pretrain_source="ct",
        input_contract=hu_range_contract(
            -1000,
            1000,
            size=(32, 64, 64),
            size_divisor=(8, 8, 8),
            source=(
                "ModelsGenesis pytorch/config.py: hu_min -1000, hu_max 1000 (HU clipped, "
                "scaled to [0, 1]); sub-volumes 64 x 64 x 32 (rows x cols x deps)"
            ),
        ),
        input_size=(1, 32, 64, 64),
        dataset="LUNA16 chest CT (623 scans, self-supervised restoration of transformed cubes)",
        publisher="Zongwei Zhou (JLiangLab, Arizona State University)",
        license="Apache-2.0 on the Hub model card; MIT in the GitHub repo's LICENSE",
        citation=(
            "Zhou, Sodha, Rahman Siddiquee, Feng, Tajbakhsh, Gotway, Liang. Models Genesis: "
            "Generic Autodidactic Models for 3D Medical Image Analysis. MICCAI 2019; "
            "Medical Image Analysis 67, 101840 (2021)."
        ),
        paper="https://arxiv.org/abs/1908.06912",
        upstream_arch="ModelsGenesis UNet3D (pytorch/unet3d.py), encoder only",
        notes=(
            "Checkpoint {'state_dict': ...} with 'module.' prefixes; decoder keys (up_tr*, "
            "out_tr) dropped by the family's adapt_upstream_state_dict. The issue asked for "
            "sizes divisible by 16; unet3d.py pools three times, so 8 is what the weights need. "
            "Hub revision not pinned (only the short commit 4f4e9cb is visible, not verifiable "
            "offline). Sources: https://github.com/MrGiovanni/ModelsGenesis (pytorch/unet3d.py, "
            "pytorch/config.py, LICENSE), https://huggingface.co/MrGiovanni/ModelsGenesis."
        ),
    )
)


class _BatchStatNorm3d(nn.BatchNorm3d):
    """Upstream ``ContBatchNorm3d``: batch statistics in train and eval (running statistics
    are updated in training only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        track = self.training
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            True,
            self.momentum or 0.0,
            self.eps,
        )


class _LUConv(nn.Module):
    def __init__(self, cin: int, cout: int, batch_stats: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = (_BatchStatNorm3d if batch_stats else nn.BatchNorm3d)(cout)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn1(self.conv1(x)))


class _Down(nn.Module):
    def __init__(self, cin: int, depth: int, batch_stats: bool, pool: bool) -> None:
        super().__init__()
        mid = 32 * 2**depth
        self.ops = nn.Sequential(_LUConv(cin, mid, batch_stats), _LUConv(mid, 2 * mid, batch_stats))
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ops(x)
        return F.max_pool3d(x, 2) if self.pool else x


class GenesisEncoder(nn.Module):
    """The four down transitions of Models Genesis' 3D U-Net (upstream module names)."""

    def __init__(self, *, in_chans: int = 1, bn_batch_stats: bool = False) -> None:
        super().__init__()
        self.down_tr64 = _Down(in_chans, 0, bn_batch_stats, pool=True)
        self.down_tr128 = _Down(64, 1, bn_batch_stats, pool=True)
        self.down_tr256 = _Down(128, 2, bn_batch_stats, pool=True)
        self.down_tr512 = _Down(256, 3, bn_batch_stats, pool=False)

    def stages(self) -> list[nn.Module]:
        return [self.down_tr64, self.down_tr128, self.down_tr256, self.down_tr512]


class GenesisUNet3dEncoder(CTModel):
    """Models Genesis' U-Net encoder as a ct3dzoo model (see the module docstring)."""

    def __init__(
        self, *, in_chans: int, spec: WeightsSpec | None, bn_batch_stats: bool = False, **kw: Any
    ) -> None:
        super().__init__(
            in_chans=in_chans,
            feature_dim=512,
            num_features=512,
            default_pool=AvgPool(),
            spec=spec,
            min_size=(8, 8, 8),
            size_divisor=(8, 8, 8),
            stem_names=("backbone.down_tr64.ops.0",),
            **kw,
        )
        self.backbone = GenesisEncoder(in_chans=in_chans, bn_batch_stats=bn_batch_stats)

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the U-Net decoder; ``in_chans=n`` repeats the first kernel and divides by n."""
        sd = {k: v for k, v in sd.items() if not k.startswith(_DECODER)}
        key = "down_tr64.ops.0.conv1.weight"
        w = sd.get(key)
        if w is not None and w.shape[1] == 1 and self.in_chans != 1:
            sd[key] = w.repeat(1, self.in_chans, 1, 1, 1) / self.in_chans
        return sd

    def stages(self) -> list[Stage]:
        """down_tr64/128/256 (each ends in a 2x max-pool) and down_tr512 (no pool)."""
        names = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
        return [
            Stage(
                f"backbone.{name}",
                64 * 2**i,
                (min(2 ** (i + 1), 8),) * 3,
                lambda x, module=module: run_blocks([module], x, self.grad_checkpointing),
            )
            for i, (name, module) in enumerate(zip(names, self.backbone.stages()))
        ]


@register_model(
    "genesis_unet3d", family="genesis", default_tag="genesis_chest_ct", aliases=("genesis",)
)
def genesis_unet3d(**kw: Any) -> GenesisUNet3dEncoder:
    """Models Genesis 3D U-Net encoder (Zhou et al. 2019), self-supervised on LUNA16 chest CT."""
    return GenesisUNet3dEncoder(**kw)
