"""Building an architecture with random weights for a weights row: :func:`build_model`."""

from __future__ import annotations

from typing import Any

from . import models  # noqa: F401  (registers every family)
from ._model import CTModel
from ._registry import get_arch, get_pretrained_cfg
from ._specs import ModelOptions

__all__ = ["build_model"]


def build_model(
    arch: str, tag: str | None, opts: ModelOptions, arch_kwargs: dict[str, Any]
) -> CTModel:
    """Build ``arch`` with random weights for the weights spec ``arch.tag``."""
    spec = get_arch(arch)
    weights = get_pretrained_cfg(f"{arch}.{tag}") if tag else None
    dense = isinstance(opts.head, str) and opts.head == "segmentation"
    kw: dict[str, Any] = {
        "num_classes": opts.num_classes,
        "in_chans": opts.in_chans,
        "head": "linear" if dense else opts.head,  # the decoder needs the built stages
        "drop_rate": opts.drop_rate,
    }
    if spec.size_args:
        kw.update(num_slices=opts.num_slices, image_size=opts.image_size)
    model = spec.builder(spec=weights, **kw, **arch_kwargs)
    if dense:
        model.reset_classifier(opts.num_classes, "segmentation")
    model.arch = arch
    model.model_config = {
        "arch": arch,
        "tag": tag,
        **opts.to_dict(),
        "arch_kwargs": dict(arch_kwargs),
    }
    return model
