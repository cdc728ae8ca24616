"""The registry: two pure tables, architecture name -> builder, ``arch.tag`` -> weights spec.

Family modules fill them at import (``ct3dzoo.models``); this module imports nothing above
it, so it never builds or imports a network itself.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._specs import WeightsSpec

__all__ = [
    "ArchSpec",
    "get_arch",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "model_loader",
    "register_loader",
    "register_model",
    "register_weights",
    "resolve_tag",
    "split_name",
]


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its builder, family, default weights tag and the
    ``pretrain=`` aliases that mean that tag (``"kinetics"``, ``"imagenet"``, ...).

    ``size_args``: True when the builder takes ``num_slices``/``image_size`` (its parameters
    depend on the input size, e.g. MViT position embeddings); other builders never see them.
    """

    name: str
    builder: Callable[..., Any]
    family: str
    default_tag: str | None
    pretrain_aliases: tuple[str, ...] = ("kinetics",)
    size_args: bool = False
    doc: str = ""


_ARCHS: dict[str, ArchSpec] = {}
_WEIGHTS: dict[str, WeightsSpec] = {}
_LOADER: list[Callable[..., Any]] = []


def register_loader(fn: Callable[..., Any]) -> None:
    """The factory registers ``load`` here, so ``CTModel.from_pretrained`` (a floor below the
    factory) can call it without importing upwards."""
    _LOADER[:] = [fn]


def model_loader() -> Callable[..., Any]:
    """The registered ``load`` (``ct3dzoo.load``)."""
    if not _LOADER:
        raise RuntimeError("no model loader registered: import ct3dzoo (it registers load)")
    return _LOADER[0]


def register_model(
    name: str,
    *,
    family: str,
    default_tag: str | None,
    aliases: tuple[str, ...] = ("kinetics",),
    size_args: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(**kwargs) -> CTModel`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _ARCHS[name] = ArchSpec(name, fn, family, default_tag, aliases, size_args, doc)
        return fn

    return deco


def register_weights(*specs: WeightsSpec) -> None:
    """Add weights rows (each a :class:`~ct3dzoo._specs.WeightsSpec`)."""
    for spec in specs:
        if not isinstance(spec, WeightsSpec):
            raise TypeError(f"register_weights takes WeightsSpec rows, got {type(spec).__name__}")
        if spec.name in _WEIGHTS:
            raise ValueError(f"weights {spec.name!r} registered twice")
        _WEIGHTS[spec.name] = spec


def _nearest(name: str, candidates: list[str]) -> str:
    return ", ".join(difflib.get_close_matches(name, candidates, n=3, cutoff=0.0))


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Sorted architecture names matching an fnmatch ``pattern`` (e.g. ``"x3d*"``).

    ``pretrained=True`` keeps only architectures with at least one weights tag.
    """
    names = [n for n in _ARCHS if fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        with_w = {w.arch for w in _WEIGHTS.values()}
        names = [n for n in names if n in with_w]
    return sorted(names)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted ``arch.tag`` names of known weights matching ``pattern``."""
    return sorted(k for k in _WEIGHTS if fnmatch.fnmatchcase(k, pattern))


def split_name(name: str) -> tuple[str, str | None]:
    """``"arch.tag"`` -> ``("arch", "tag")``; ``"arch"`` -> ``("arch", None)``."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; unknown names raise with the three nearest."""
    spec = _ARCHS.get(name)
    if spec is None:
        raise ValueError(
            f"unknown architecture {name!r}; nearest: {_nearest(name, list(_ARCHS))}. "
            "ct3dzoo.list_models() lists them all."
        )
    return spec


def resolve_tag(arch: str, tag: str | None) -> str | None:
    """Map an alias (``"kinetics"``, ``"imagenet"``, ...) or ``None`` to the default tag."""
    spec = get_arch(arch)
    if tag is None or tag in spec.pretrain_aliases:
        return spec.default_tag
    return tag


def tags_of(arch: str) -> list[str]:
    """The weights tags registered for ``arch``."""
    return sorted(w.tag for w in _WEIGHTS.values() if w.arch == arch)


def get_pretrained_cfg(name: str) -> WeightsSpec:
    """The :class:`~ct3dzoo._specs.WeightsSpec` of ``arch`` (its default weights) or
    ``arch.tag``; unknown tags raise with the nearest known ones."""
    arch, tag = split_name(name)
    spec = get_arch(arch)
    tag = resolve_tag(arch, tag)
    key = f"{arch}.{tag}"
    if tag is None or key not in _WEIGHTS:
        known = [f"{arch}.{t}" for t in tags_of(arch)]
        if not known:
            raise ValueError(f"{spec.name} has no pretrained weights registered")
        raise ValueError(
            f"unknown weights {name!r}; nearest: {_nearest(key, known)}. "
            "ct3dzoo.list_pretrained() lists them all."
        )
    return _WEIGHTS[key]
