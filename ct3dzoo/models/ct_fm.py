"""CT-FM (Pai et al. 2025): a SegResNet encoder pretrained on 148,000 CTs by contrastive SSL.

The published feature extractor (Hub ``project-lighter/ct_fm_feature_extractor``,
``model.safetensors``) is MONAI's ``SegResEncoder`` with the settings of its ``config.json``
(``spatial_dims=3, in_channels=1, init_filters=32, blocks_down=(1, 2, 2, 4, 4)``) and MONAI's
defaults for the rest (BatchNorm with affine parameters, ReLU, isotropic 3x3x3 kernels, no
``head_module``, no ``anisotropic_scales``); lighter_zoo's ``SegResEncoder`` subclasses
MONAI's without renaming anything, so the file uses MONAI's key names. This module writes
that encoder itself (no MONAI needed at run time) with the same module tree and key names::

    conv_init                   Conv3d 1 -> 32, 3x3x3, no bias
    layers.i.blocks.j           pre-activation residual block: BN-ReLU-conv-BN-ReLU-conv + x
    layers.i.downsample         Conv3d C -> 2C, 3x3x3 stride 2, no bias (Identity on level 4)

Levels have 32, 64, 128, 256, 512 channels; total stride 16 along D, H and W (every strided
conv pads, so any D, H, W >= 1 runs). Pre-logits: the global average of the last level's
output (512-d), the "global average of the last level" of the model card.
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
from ._common import fold_stems, weights_row

__all__ = ["CTFM", "SegResEncoder"]

_CTFM_REPO = (
    "https://github.com/project-lighter/CT-FM/blob/f58c89a75ff0270ba6e339027e40bf04a221735d"
)

register_weights(
    weights_row(
        "ct_fm.idc148k",
        hf_hub_id="project-lighter/ct_fm_feature_extractor",
        hf_hub_filename="model.safetensors",
        # a commit of the Hub repo whose config.json is the one pushed with model.safetensors
        hf_hub_revision="23e05e9c3398ed305339d144e3642bbcf9ccc46f",
        file_format="monai_segresencoder",
        pretrain_source="ct",
        input_contract=hu_range_contract(
            -1024,
            2048,
            spacing=(3.0, 1.0, 1.0),
            orientation="SPL",
            source=(
                "CT-FM scripts/feature_extractor.py and pretraining configs: Orientation("
                "axcodes='SPL'), Spacing(pixdim=[3, 1, 1]), CropForeground, "
                "ScaleIntensityRange(-1024, 2048 -> 0, 1, clip=True)"
            ),
        ),
        # the upstream stem takes one channel with no normalisation: mean 0, std 1 make the
        # fold an identity for in_chans=1 and a repeat-and-rescale for more channels
        mean=(0.0,),
        std=(1.0,),
        input_size=(1, 32, 128, 128),
        stem=("conv_init",),
        dataset="148,000 CT scans from the NCI Imaging Data Commons (self-supervised)",
        publisher="project-lighter",
        license="Apache-2.0 (Hub model card of project-lighter/ct_fm_feature_extractor)",
        citation=(
            "Pai S, Hadzic I, Bontempi D, et al. Vision Foundation Models for Computed "
            "Tomography. arXiv:2501.09001 (2025)."
        ),
        paper="https://arxiv.org/abs/2501.09001",
        upstream_arch="monai.networks.nets.segresnet_ds.SegResEncoder",
        notes=(
            "Architecture: the Hub repo's config.json (blocks_down [1, 2, 2, 4, 4], "
            "in_channels 1, init_filters 32, spatial_dims 3) and lighter_zoo's SegResEncoder "
            "(a plain subclass of MONAI's, so MONAI key names, no prefix); the same encoder "
            f"as the pretraining config {_CTFM_REPO}/experiments/fm/backbones/segresenc.yaml. "
            "Contract: SimCLR pretraining on random 64x128x128 mm crops (32x128x128 voxels, "
            f"input_size) of whole scans, {_CTFM_REPO}/experiments/fm/frameworks/"
            "intrasample_simclr.yaml; feature extraction (the same transforms, 24x128x128 "
            "sliding-window patches, adaptive_avg_pool3d of the last level = ct3dzoo's "
            f"pre-logits): {_CTFM_REPO}/scripts/feature_extractor.py; orientation is MONAI's axis codes of the (D, H, W) axes, "
            "'SPL' = ct3dzoo's own CTVolume layout. Revision: commit 23e05e9c of the Hub repo "
            "(seen with config.json from the 'Push model using huggingface_hub' commit "
            "6a4c086). The code repo project-lighter/CT-FM is MIT-licensed; the weights' "
            "model card says Apache-2.0."
        ),
    )
)


class _SegResBlock(nn.Module):
    """MONAI's ``SegResBlock``: ``x + conv2(relu(norm2(conv1(relu(norm1(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm3d(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm3d(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(y)))


class SegResEncoder(nn.Module):
    """MONAI ``SegResEncoder`` (3-D, isotropic, BatchNorm, ReLU), same parameter names.

    Input ``(B, in_channels, D, H, W)``; :meth:`forward` returns the output of every level,
    ``(B, init_filters * 2**i, ceil(D / 2**i), ...)`` for ``i = 0 .. len(blocks_down) - 1``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        init_filters: int = 32,
        blocks_down: tuple[int, ...] = (1, 2, 2, 4, 4),
    ) -> None:
        super().__init__()
        self.conv_init = nn.Conv3d(in_channels, init_filters, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        c = init_filters
        for i, n in enumerate(blocks_down):
            last = i == len(blocks_down) - 1
            level = nn.ModuleDict(
                {
                    "blocks": nn.Sequential(*[_SegResBlock(c) for _ in range(n)]),
                    "downsample": nn.Identity()
                    if last
                    else nn.Conv3d(c, 2 * c, 3, stride=2, padding=1, bias=False),
                }
            )
            self.layers.append(level)
            if not last:
                c *= 2
        self.num_features = c

    def stages(self) -> list[nn.Module]:
        """The modules in order: ``conv_init``, then blocks and downsample of each level."""
        out: list[nn.Module] = [self.conv_init]
        for level in self.layers:
            out += [level["blocks"], level["downsample"]]
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = self.conv_init(x)
        for level in self.layers:
            x = level["blocks"](x)
            outputs.append(x)
            x = level["downsample"](x)
        return outputs


class CTFM(CTModel):
    """CT-FM's encoder adapted to ct3dzoo (see module docstring).

    Input ``(B, in_chans, D, H, W)``: HU clipped to [-1024, 2048] and scaled to [0, 1]
    (``pretrained_cfg.input_contract``); any ``D, H, W >= 1``. Features: the last level,
    ``(B, 512, ceil(D/16), ceil(H/16), ceil(W/16))``.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        init_filters: int = 32,
        blocks_down: tuple[int, ...] = (1, 2, 2, 4, 4),
        **kw: Any,
    ) -> None:
        if spec is None:
            raise ValueError("ct_fm is built for its weights row (ct_fm.idc148k)")
        net = SegResEncoder(in_channels=1, init_filters=init_filters, blocks_down=blocks_down)
        super().__init__(
            in_chans=in_chans,
            feature_dim=net.num_features,
            num_features=net.num_features,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.conv_init",),
            **{k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")},
        )
        if kw:
            raise TypeError(f"ct_fm got unexpected arguments {sorted(kw)}")
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def stages(self) -> list[Stage]:
        """Level ``i`` (``layers.i.blocks``, after the previous level's downsample; level 0
        after ``conv_init``): ``init_filters * 2**i`` channels, stride ``2**i``."""
        net = self.backbone
        out = []
        for i, level in enumerate(net.layers):
            first = net.conv_init if i == 0 else net.layers[i - 1]["downsample"]
            blocks = [first, level["blocks"]]
            out.append(
                Stage(
                    f"backbone.layers.{i}.blocks",
                    net.conv_init.out_channels * 2**i,
                    (2**i,) * 3,
                    lambda x, blocks=blocks: run_blocks(blocks, x, self.grad_checkpointing),
                )
            )
        return out


@register_model("ct_fm", family="ct_fm", default_tag="idc148k", aliases=("ct_fm",))
def ct_fm(**kw: Any) -> CTFM:
    """CT-FM SegResNet encoder (Pai et al. 2025), 148k-CT contrastive SSL; 512-d features."""
    return CTFM(**kw)
