"""Helpers shared by the family files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..adapt import FoldedStemConv

__all__ = ["cfg_row", "fold_stems", "replace_submodule"]

#: pytorchvideo's (and MViT's) Kinetics normalisation
PV_MEAN = (0.45, 0.45, 0.45)
PV_STD = (0.225, 0.225, 0.225)
PV_LICENSE = "Apache-2.0 (pytorchvideo model zoo); Kinetics-400 video terms apply"
TV_LICENSE = "BSD-3-Clause (torchvision); Kinetics-400 video terms apply"


def replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def fold_stems(
    backbone: nn.Module,
    names: Sequence[str],
    *,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Replace each RGB stem ``Conv3d`` in ``backbone`` by an exact :class:`FoldedStemConv`."""
    for name in names:
        conv = backbone.get_submodule(name)
        replace_submodule(
            backbone, name, FoldedStemConv(conv, in_chans=in_chans, mean=mean, std=std)
        )


def cfg_row(**kw: Any) -> dict[str, Any]:
    """A pretrained cfg row: ``filename`` from the URL and, for torchvision files (named
    ``name-<sha256 prefix>.pth``), the published ``hash_prefix``."""
    url = kw.get("url")
    if url:
        kw.setdefault("filename", url.rsplit("/", 1)[-1])
        if kw.get("file_format") == "torchvision":
            kw.setdefault("hash_prefix", kw["filename"].rsplit("-", 1)[-1].split(".")[0])
    return kw
