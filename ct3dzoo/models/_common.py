"""Helpers shared by the family files."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._specs import WeightsSpec, window_contract
from ..adapt import FoldedStemConv

__all__ = ["fold_stems", "replace_submodule", "weights_row"]

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
