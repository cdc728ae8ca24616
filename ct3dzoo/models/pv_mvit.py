"""pytorchvideo's MViT-B 16x4 and 32x3 (Fan et al., ICCV 2021), Kinetics-400.

Stem ``patch_embed.patch_model`` (Conv3d 3 -> 96, 3x7x7, stride 2x4x4). Separate spatial,
temporal and class position embeddings are absolute, so ``num_slices``/``image_size``
choose the input size at load time (default: native) and the embeddings are resampled
(bicubic in space, linear in time; identity at the native size). Pre-logits: the class
token after the final norm (768-d). Stages: a new one at each block that pools its queries;
maps are the tokens without the class token, reshaped to ``(B, C, T, H, W)``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._features import Stage
from .._model import CTModel
from .._registry import register_model, register_weights
from .._specs import WeightsSpec
from ..adapt import resample_pos_embed_1d, resample_pos_embed_2d
from ..heads import ClsTokenPool
from ._common import TokenMaps, fold_stems, mvit_stages
from ._pytorchvideo import create_multiscale_vision_transformers
from ._pytorchvideo import hub_vision_transformers as pv_vit
from .pv_resnet import pv_row

_CITE = (
    "Fan, Xiong, Mangalam, Li, Yan, Malik, Feichtenhofer. Multiscale Vision Transformers. "
    "ICCV 2021."
)
_ROWS = {
    "mvit_base_16x4.kinetics400": dict(
        file="MVIT_B_16x4.pyth", frames=16, crop=224, head_block=0, citation=_CITE,
        paper="https://arxiv.org/abs/2104.11227", notes="Kinetics-400 top-1 78.9; 16x4 setting.",
    ),
    "mvit_base_32x3.kinetics400": dict(
        file="MVIT_B_32x3_f294077834.pyth", frames=32, crop=224, head_block=0, citation=_CITE,
        paper="https://arxiv.org/abs/2104.11227", notes="Kinetics-400 top-1 80.3; 32x3 setting.",
    ),
}  # fmt: skip
register_weights(*(
    pv_row(name, **kw, stem=("patch_embed.patch_model",), classifier=("head.proj",))
    for name, kw in _ROWS.items()
))  # fmt: skip


class PVMViT(TokenMaps, CTModel):
    """pytorchvideo MultiscaleVisionTransformers adapted to CT; built for one input size."""

    feature_format = "nlc_cls"

    def __init__(
        self,
        config: dict,
        *,
        in_chans: int,
        spec: WeightsSpec | None,
        num_slices: int | None,
        image_size: tuple[int, int] | None,
        **kw: Any,
    ) -> None:
        native = (config["temporal_size"], config["spatial_size"], config["spatial_size"])
        size = (num_slices or native[0], *(image_size or native[1:]))
        if size[0] % 2 or size[1] % 4 or size[2] % 4:
            raise ValueError(
                f"MViT needs num_slices divisible by 2 and image_size by 4, got {size}"
            )
        head_kw = {k: kw.pop(k) for k in ("num_classes", "head", "drop_rate")}
        cfg = {**config, "temporal_size": size[0], "spatial_size": size[1:], **kw}
        net = create_multiscale_vision_transformers(head=None, **cfg)
        dim = net.norm_embed.normalized_shape[0]
        super().__init__(
            in_chans=in_chans,
            feature_dim=dim,
            num_features=dim,
            default_pool=ClsTokenPool(),
            spec=spec,
            stem_names=("backbone.patch_embed",),
            fixed_size=size,
            min_size=(2, 32, 32),
            **head_kw,
        )
        fold_stems(net, spec, in_chans=in_chans)
        self.backbone = net

    def adapt_upstream_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pe = self.backbone.cls_positional_encoding
        t, h, w = pe.patch_embed_shape
        out = dict(sd)
        key = "cls_positional_encoding.pos_embed_spatial"
        if key in sd and sd[key].shape[1] != h * w:
            old = round(sd[key].shape[1] ** 0.5)
            out[key] = resample_pos_embed_2d(sd[key][0], (old, old), (h, w))[None]
        key = "cls_positional_encoding.pos_embed_temporal"
        if key in sd and sd[key].shape[1] != t:
            out[key] = resample_pos_embed_1d(sd[key][0], t)[None]
        return out

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        b = self.backbone
        x = b.cls_positional_encoding(b.patch_embed(x))
        if b.pos_drop is not None:
            x = b.pos_drop(x)
        return x, tuple(b.cls_positional_encoding.patch_embed_shape)

    def stages(self) -> list[Stage]:
        b = self.backbone
        return mvit_stages(
            self, self._embed, list(b.blocks), b.norm_embed,
            patch_stride=b.patch_embed.patch_model.stride, norm_name="backbone.norm_embed",
        )  # fmt: skip


@register_model("mvit_base_16x4", family="pv_mvit", default_tag="kinetics400", size_args=True)
def mvit_base_16x4(**kw: Any) -> PVMViT:
    """MViT-B 16x4 (36.6M parameters); native clip 16x224x224."""
    return PVMViT(pv_vit.mvit_video_base_config, **kw)


@register_model("mvit_base_32x3", family="pv_mvit", default_tag="kinetics400", size_args=True)
def mvit_base_32x3(**kw: Any) -> PVMViT:
    """MViT-B 32x3 (36.6M parameters) — the paper's MViT-B; native clip 32x224x224."""
    return PVMViT(pv_vit.mvit_video_base_32x3_config, **kw)
