"""Helpers shared by the family files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._features import Stage
from .._model import run_blocks_thw
from .._specs import WeightsSpec, window_contract
from ..adapt import FoldedStemConv

__all__ = ["TokenMaps", "fold_stems", "mvit_stages", "replace_submodule", "weights_row"]

#: pytorchvideo's (and MViT's) Kinetics normalisation
PV_MEAN = (0.45, 0.45, 0.45)
PV_STD = (0.225, 0.225, 0.225)
PV_LICENSE = "Apache-2.0 (pytorchvideo model zoo); Kinetics-400 video terms apply"
TV_LICENSE = "BSD-3-Clause (torchvision); Kinetics-400 video terms apply"


def replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def fold_stems(backbone: nn.Module, spec: WeightsSpec, *, in_chans: int) -> None:
    """Replace each RGB stem conv named in ``spec.stem`` by an exact :class:`FoldedStemConv`
    with ``spec.mean``/``spec.std`` (the row is the one place these facts live)."""
    for name in spec.stem:
        conv = backbone.get_submodule(name)
        replace_submodule(
            backbone, name, FoldedStemConv(conv, in_chans=in_chans, mean=spec.mean, std=spec.std)
        )


def weights_row(name: str, **kw: Any) -> WeightsSpec:
    """A :class:`WeightsSpec` named ``arch.tag``: ``filename`` from the URL and, for
    torchvision files (named ``name-<sha256 prefix>.pth``), the published ``hash_prefix``.
    Video and ImageNet rows take the user's HU window (``window_contract``) unless given."""
    arch, _, tag = name.partition(".")
    url = kw.get("url")
    if url:
        kw.setdefault("filename", url.rsplit("/", 1)[-1])
        if kw.get("file_format") == "torchvision":
            kw.setdefault("hash_prefix", kw["filename"].rsplit("-", 1)[-1].split(".")[0])
    kw.setdefault("input_contract", window_contract())
    return WeightsSpec(arch=arch, tag=tag, **kw)


def _q_stride(block: nn.Module) -> tuple[int, ...]:
    pool = getattr(block.attn, "pool_q", None)
    pool = getattr(pool, "pool", pool)  # torchvision wraps the conv in a Pool
    return tuple(pool.stride) if pool is not None else (1, 1, 1)


def _out_dim(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Linear)][-1].out_features


def mvit_stages(
    model: nn.Module,
    embed: Callable[[torch.Tensor], tuple[torch.Tensor, tuple[int, ...]]],
    blocks: Sequence[nn.Module],
    norm: nn.Module,
    *,
    patch_stride: Sequence[int],
    norm_name: str,
) -> list[Stage]:
    """MViT's blocks as stages: a new stage starts at each block that pools its queries
    (the resolution changes). The state is ``(tokens (B, 1 + N, C), (T, H, W))``; the first
    stage starts with ``embed`` (input -> state), the last ends with the final ``norm``."""
    starts = [0] + [i for i, b in enumerate(blocks) if i and max(_q_stride(b)) > 1]
    bounds = list(zip(starts, [*starts[1:], len(blocks)]))
    stride = list(patch_stride)
    stages = []
    for k, (a, z) in enumerate(bounds):
        stride = [s * q for s, q in zip(stride, _q_stride(blocks[a]))] if k else stride
        last = k == len(bounds) - 1

        def run(state: Any, a: int = a, z: int = z, first: bool = k == 0, last: bool = last):
            x, thw = embed(state) if first else state
            x, thw = run_blocks_thw(blocks[a:z], x, thw, model.grad_checkpointing)
            return (norm(x) if last else x), thw

        name = norm_name if last else f"backbone.blocks.{z - 1}"
        stages.append(Stage(name, _out_dim(blocks[z - 1]), tuple(stride), run))
    return stages


class TokenMaps:
    """Mixin for MViT-style models whose stage state is ``(tokens, thw)``: maps drop the
    class token and reshape to ``(B, C, T, H, W)``; forward_features gives the tokens."""

    def _stage_map(self, state: tuple[torch.Tensor, tuple[int, ...]]) -> torch.Tensor:
        x, thw = state
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *thw)

    def _final_features(self, state: tuple[torch.Tensor, tuple[int, ...]]) -> torch.Tensor:
        return state[0]

    def cam_layer(self) -> str:
        """The last block's ``norm1``: the tokens its attention reads. (After the final norm
        the logit depends on the class token alone: zero gradient on the others.)"""
        return f"backbone.blocks.{len(self.backbone.blocks) - 1}.norm1"

    def cam_reshape(self, output: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        thw = [s // r for s, r in zip(self.fixed_size, self.stages()[-1].stride)]
        return self._stage_map((output, tuple(thw)))
