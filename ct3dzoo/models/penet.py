"""PENet: the squeeze-excite ResNeXt-50 3D classifier of Huang et al. (2020).

PENet ("PENet—a scalable deep-learning model for automated diagnosis of pulmonary
embolism using volumetric CT imaging", npj Digital Medicine 3, 61, 2020) was pretrained on
Kinetics-600 and fine-tuned on CT pulmonary angiography. This module is a clean
re-implementation of its classifier (``PENetClassifier`` upstream) whose parameter names and
shapes match the published checkpoint ``xnet_kin_90.pth.tar`` exactly (225 tensors,
29,626,056 values at 600 classes), so it loads with ``strict=True`` once the ``module.``
prefix left by ``nn.DataParallel`` is stripped.

Layout (input ``(B, C, D, H, W)``)::

    in_conv      Conv3d 7x7x7 stride (1,2,2) -> GroupNorm(4, 64) -> LeakyReLU(0.01)
    max_pool     MaxPool3d 3x3x3 stride 2 padding 1
    encoders     4 stages of 3, 4, 6, 3 bottlenecks; widths 256, 512, 1024, 2048
                 (stage 0 stride 1, others stride 2 in the first block)
    classifier   global average pool -> fc Linear(2048, num_classes)

Each bottleneck is 1x1x1 -> grouped 3x3x3 (cardinality 32) -> 1x1x1, GroupNorm with 16
channels per group, a squeeze-excite gate, a residual add and a LeakyReLU. In training,
block ``k`` (0-based over all 16 blocks) is skipped as a whole (output = shortcut) with
probability ``k / 16 * drop_path_rate``.

Total stride: 16 along D (max pool and stages 1-3), 32 along H and W. Every size >= 1 is accepted (all strided
layers pad), but the upstream training window was 24 x 192 x 192.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["PENET_CFG", "PENet", "PENetBottleneck"]

_KINETICS_MEAN = tuple(v / 255.0 for v in (110.63666788, 103.16065604, 96.29023126))
_KINETICS_STD = tuple(v / 255.0 for v in (38.7568578, 37.88248729, 40.02898126))

#: Facts about the published PENet weights, for the registry (one row: ``penet.kinetics600``).
PENET_CFG: dict = {
    "arch": "penet",
    "tag": "kinetics600",
    "file_name": "xnet_kin_90.pth.tar",
    # torch.save({"model_state": state_dict, ...}); keys carry a "module." prefix
    # (saved from nn.DataParallel). Strip it, then load strict.
    "checkpoint_format": {"state_key": "model_state", "key_prefix": "module."},
    "url": None,  # no stable direct URL: Stanford Box folder, see "source"
    "source": (
        "Stanford Box folder linked from the PENet repository README "
        "(https://github.com/marshuang80/penet, 'Download trained weights'): "
        "https://stanfordmedicine.box.com/s/uql0ikebseltkkntiwl5rrn6zzuww6jt"
    ),
    "repository": "https://github.com/marshuang80/penet",
    "citation": (
        "Huang S-C, Kothari T, Banerjee I, et al. PENet—a scalable deep-learning model for "
        "automated diagnosis of pulmonary embolism using volumetric CT imaging. "
        "npj Digital Medicine 3, 61 (2020). https://doi.org/10.1038/s41746-020-0266-y"
    ),
    # The repository has no LICENSE file (open upstream issue marshuang80/penet#3), so
    # neither code nor weights carry an explicit licence; treat as research use only.
    "license": "unspecified (no LICENSE in marshuang80/penet; see its issue #3)",
    "dataset": "Kinetics-600",
    "num_classes": 600,
    "in_chans": 3,
    # PE fine-tuning window in the upstream train.sh: 24 slices, resize 208x208, crop
    # 192x192 (the parser defaults were 32 slices, resize 224, crop 208). The Kinetics
    # pretraining clip size of this checkpoint is not recorded upstream.
    "input_size": (3, 24, 192, 192),
    # Kinetics pretraining (upstream data_loader/kinetics_data_loader.py): RGB in [0, 1],
    # then per-channel (x - mean) / std with the 3D-ResNets (Hara et al.) statistics.
    "mean": _KINETICS_MEAN,
    "std": _KINETICS_STD,
    # Upstream CT fine-tuning preprocessing (datasets/base_ct_dataset.py, ct/ct_pe_constants.py):
    # clip HU to [-100, 900], scale to [0, 1], subtract 0.15897 (no division by a std),
    # one channel, which the upstream forward repeats to 3 channels.
    "upstream_ct_preprocessing": {
        "hu_min": -100.0,
        "hu_max": 900.0,
        "mean": 0.15897,
        "std": 1.0,
    },
    "stem": "in_conv.0",
    "classifier": "classifier.fc",
    "num_features": 2048,
    "stride": (16, 32, 32),
}


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 16 channels per group, as everywhere in PENet."""
    return nn.GroupNorm(channels // 16, channels)


class _SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> Linear -> LeakyReLU -> Linear -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.excite = nn.Sequential(
            nn.Linear(channels, hidden), nn.LeakyReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(x.mean(dim=(2, 3, 4)))
        return x * gate[:, :, None, None, None]


class PENetBottleneck(nn.Module):
    """ResNeXt bottleneck with GroupNorm, squeeze-excite and whole-block stochastic depth.

    ``in_channels -> 2 * channels``; ``channels`` is also the width of the grouped 3x3x3 conv.
    ``drop_prob`` is the probability, in training mode only, that the block returns its
    shortcut alone. The draw uses ``torch.rand`` on the CPU default generator, so
    ``torch.manual_seed`` makes it reproducible (and checkpoint recomputation replays it).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        stride: int = 1,
        cardinality: int = 32,
        drop_prob: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = 2 * channels
        self.drop_prob = float(drop_prob)
        # Registered first so the state-dict order matches the upstream checkpoint.
        self.down_sample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.down_sample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                _group_norm(out_channels),
            )
        self.conv1 = nn.Conv3d(in_channels, channels, 1, bias=False)
        self.norm1 = _group_norm(channels)
        self.conv2 = nn.Conv3d(
            channels, channels, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.norm2 = _group_norm(channels)
        self.conv3 = nn.Conv3d(channels, out_channels, 1, bias=False)
        self.norm3 = _group_norm(out_channels)
        self.se_block = _SqueezeExcite(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.down_sample is None else self.down_sample(x)
        if self.training and self.drop_prob > 0.0 and float(torch.rand(())) < self.drop_prob:
            return shortcut
        y = F.leaky_relu(self.norm1(self.conv1(x)))
        y = F.leaky_relu(self.norm2(self.conv2(y)))
        y = self.se_block(self.norm3(self.conv3(y)))
        return F.leaky_relu(y + shortcut)


class _PENetStage(nn.Module):
    """One encoder stage; the ``penet_blocks`` name is kept for checkpoint compatibility."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.penet_blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.penet_blocks(x)


class _GAPLinear(nn.Module):
    """Global average pool over (D, H, W), then ``fc``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc: nn.Module = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


class PENet(nn.Module):
    """PENet classifier (ResNeXt-50-like, 32 groups, GroupNorm, squeeze-excite).

    Input ``(B, C, D, H, W)`` float with ``C == in_chans``; any ``D, H, W >= 1`` runs (every
    strided layer pads, total stride 16 x 32 x 32, so the smallest input is 1 x 1 x 1 and gives
    a 1 x 1 x 1 feature map). The upstream fine-tuning window was 24 x 192 x 192.

    Args:
        in_chans: input channels of the stem (3 for the Kinetics checkpoint).
        num_classes: classifier outputs (600 for Kinetics-600; 0 for no classifier).
        drop_path_rate: stochastic-depth probability scale; block ``k`` of ``n`` (0-based)
            is skipped in training with probability ``k / n * drop_path_rate`` (upstream 0.5).
        cardinality: groups of the 3x3x3 convs.
        layers: bottlenecks per stage.
        expand_grey: compatibility with the upstream forward: when the model has more than
            one input channel and receives a 1-channel volume, repeat it to ``in_chans``.
            Off by default, because ct3dzoo feeds grey volumes to an ``in_chans=1`` model
            whose stem is folded from the RGB one (same numbers, one third of the stem work).
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 600,
        drop_path_rate: float = 0.5,
        cardinality: int = 32,
        layers: Sequence[int] = (3, 4, 6, 3),
        expand_grey: bool = False,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.expand_grey = expand_grey
        self.grad_checkpointing = False

        stem_width = 64
        self.in_conv = nn.Sequential(
            nn.Conv3d(in_chans, stem_width, 7, stride=(1, 2, 2), padding=3, bias=False),
            _group_norm(stem_width),
            nn.LeakyReLU(),
        )
        self.max_pool = nn.MaxPool3d(3, stride=2, padding=1)

        total_blocks = sum(layers)
        block_idx = 0
        in_channels = stem_width
        stages = []
        for i, num_blocks in enumerate(layers):
            channels = 128 * 2**i
            blocks = []
            for j in range(num_blocks):
                blocks.append(
                    PENetBottleneck(
                        in_channels,
                        channels,
                        stride=2 if (i > 0 and j == 0) else 1,
                        cardinality=cardinality,
                        drop_prob=block_idx / total_blocks * drop_path_rate,
                    )
                )
                in_channels = 2 * channels
                block_idx += 1
            stages.append(_PENetStage(blocks))
        self.encoders = nn.ModuleList(stages)
        self.num_features = in_channels
        self.classifier = _GAPLinear(self.num_features, num_classes)

    # ------------------------------------------------------------------ timm-style API
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each encoder block in backward (``use_reentrant=False``) to save memory."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``classifier.fc`` by a fresh ``Linear(2048, num_classes)`` (0: identity)."""
        self.num_classes = num_classes
        self.classifier = _GAPLinear(self.num_features, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups (stem, blocks) in timm's format, for layer-wise learning rates."""
        blocks = r"^encoders\.(\d+)" if coarse else r"^encoders\.(\d+)\.penet_blocks\.(\d+)"
        return {"stem": r"^in_conv", "blocks": blocks}

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"PENet expects input (B, C, D, H, W); got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c != self.in_chans:
            if self.expand_grey and c == 1:
                return x.expand(-1, self.in_chans, -1, -1, -1)
            hint = " (set expand_grey=True to repeat 1 channel)" if c == 1 else ""
            raise ValueError(f"PENet built for in_chans={self.in_chans}, got {c} channels{hint}")
        if min(x.shape[2:]) < 1:
            raise ValueError(
                f"PENet needs D, H, W >= 1 (minimum input 1 x 1 x 1); got {tuple(x.shape[2:])}"
            )
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> unpooled map ``(B, 2048, ceil(D/16), ceil(H/32), ceil(W/32))``."""
        x = self._check_input(x)
        x = self.max_pool(self.in_conv(x))
        for stage in self.encoders:
            for block in stage.penet_blocks:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool to ``(B, 2048)``; then ``classifier.fc`` unless ``pre_logits``."""
        if pre_logits:
            return x.mean(dim=(2, 3, 4))
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- ct3dzoo model
from .._features import Stage, norm_channels  # noqa: E402
from .._model import CTModel, run_blocks  # noqa: E402
from .._registry import register_model, register_weights  # noqa: E402
from .._specs import WeightsSpec, window_contract  # noqa: E402
from ..heads import AvgPool  # noqa: E402
from ._common import fold_stems  # noqa: E402

register_weights(
    WeightsSpec(
        arch=PENET_CFG["arch"],
        tag=PENET_CFG["tag"],
        pretrain_source="video",
        file_format="penet",
        input_contract=window_contract(
            "Kinetics-600 pretraining; upstream's own CT finetuning clipped HU to "
            "[-100, 900] (the paper's PE window)"
        ),
        url=PENET_CFG["url"],
        url_info=PENET_CFG["source"],
        filename=PENET_CFG["file_name"],
        mean=PENET_CFG["mean"],
        std=PENET_CFG["std"],
        input_size=PENET_CFG["input_size"],
        stem=(PENET_CFG["stem"],),
        classifier=(PENET_CFG["classifier"],),
        num_classes=PENET_CFG["num_classes"],
        dataset=PENET_CFG["dataset"],
        publisher="penet",
        license=PENET_CFG["license"],
        citation=PENET_CFG["citation"],
        paper="https://doi.org/10.1038/s41746-020-0266-y",
        notes=(
            "No stable download URL: get xnet_kin_90.pth.tar from the Stanford Box folder "
            "linked in https://github.com/marshuang80/penet, then "
            "`ct3dzoo fetch penet.kinetics600 --from xnet_kin_90.pth.tar` or "
            "load('penet', pretrain='xnet_kin_90.pth.tar')."
        ),
    )
)


class PENetCT(CTModel):
    """PENet adapted to CT: stem ``in_conv.0`` folded with the Kinetics-600 mean/std."""

    def __init__(
        self, *, in_chans: int, spec: WeightsSpec | None, drop_path_rate: float = 0.5, **kw
    ) -> None:
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        super().__init__(
            in_chans=in_chans,
            feature_dim=2048,
            num_features=2048,
            default_pool=AvgPool(),
            spec=spec,
            stem_names=("backbone.in_conv",),
            **head_kw,
        )
        net = PENet(in_chans=3, num_classes=0, drop_path_rate=drop_path_rate, **kw)
        del net.classifier
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def stages(self) -> list[Stage]:
        """``in_conv`` (stride 1, 2, 2), then ``max_pool`` + ``encoders.0`` .. ``encoders.3``
        (each named by its last block, the module whose output the stage ends with)."""
        b = self.backbone
        groups = [("backbone.in_conv", [b.in_conv])] + [
            (  # named by the last block: the stage's blocks are run one by one
                f"backbone.encoders.{i}.penet_blocks.{len(e.penet_blocks) - 1}",
                ([b.max_pool] if i == 0 else []) + list(e.penet_blocks),
            )
            for i, e in enumerate(b.encoders)
        ]
        strides = [(1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16), (16, 32, 32)]
        return [
            Stage(name, norm_channels(g[-1]), st, self._runner(g))
            for (name, g), st in zip(groups, strides)
        ]

    def _runner(self, blocks: list[nn.Module]):
        return lambda x: run_blocks(blocks, x, self.grad_checkpointing)


@register_model("penet", family="penet", default_tag="kinetics600")
def penet(**kw) -> PENetCT:
    """PENet (Huang et al. 2020), Kinetics-600 weights; fine-tuned on 24x192x192 CTPA windows."""
    return PENetCT(**kw)
