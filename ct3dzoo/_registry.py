"""Architecture registry and pretrained-weight table (one row per ``arch.tag``)."""

from __future__ import annotations

import copy
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ArchSpec",
    "get_arch",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "register_model",
    "register_pretrained",
    "split_name",
]

#: keys every pretrained cfg row carries (see :func:`get_pretrained_cfg`)
CFG_KEYS = (
    "arch", "tag", "url", "file_format", "filename", "hash_prefix", "sha256", "hf_hub_id",
    "mean", "std", "input_size", "stem", "classifier", "num_classes", "dataset", "source",
    "license", "citation", "paper", "notes", "upstream_arch", "url_info",
)  # fmt: skip


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its builder, family and default weights tag."""

    name: str
    builder: Callable[..., Any]
    family: str
    default_tag: str | None
    pretrain_aliases: tuple[str, ...] = ("kinetics",)


_ARCHS: dict[str, ArchSpec] = {}
_CFGS: dict[str, dict[str, Any]] = {}


def register_model(
    name: str,
    *,
    family: str,
    default_tag: str | None,
    aliases: tuple[str, ...] = ("kinetics",),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(**kwargs) -> CTModel`` under ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        _ARCHS[name] = ArchSpec(name, fn, family, default_tag, aliases)
        return fn

    return deco


def register_pretrained(rows: dict[str, dict[str, Any]]) -> None:
    """Add ``{"arch.tag": cfg}`` rows; missing keys are filled with ``None``."""
    for full, row in rows.items():
        arch, _, tag = full.partition(".")
        if not tag:
            raise ValueError(f"pretrained rows are named arch.tag, got {full!r}")
        cfg = {k: None for k in CFG_KEYS}
        cfg.update(row)
        cfg.update(arch=arch, tag=tag)
        _CFGS[full] = cfg


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (registers every family on import)


def _nearest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.0)
    return ", ".join(close)


def list_models(pattern: str = "*", *, pretrained: bool = False) -> list[str]:
    """Sorted architecture names matching an fnmatch ``pattern`` (e.g. ``"x3d*"``).

    ``pretrained=True`` keeps only architectures with at least one weights tag.
    """
    _ensure_loaded()
    names = [n for n in _ARCHS if fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        with_w = {k.partition(".")[0] for k in _CFGS}
        names = [n for n in names if n in with_w]
    return sorted(names)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Sorted ``arch.tag`` names of known weights matching ``pattern``."""
    _ensure_loaded()
    return sorted(k for k in _CFGS if fnmatch.fnmatchcase(k, pattern))


def split_name(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def get_arch(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; unknown names raise with the three nearest."""
    _ensure_loaded()
    spec = _ARCHS.get(name)
    if spec is None:
        raise ValueError(
            f"unknown architecture {name!r}; nearest: {_nearest(name, list(_ARCHS))}. "
            "ct3dzoo.list_models() lists them all."
        )
    return spec


def resolve_tag(arch: str, tag: str | None) -> str | None:
    """Map an alias (``"kinetics"``, ``"imagenet"``) or ``None`` to the arch's default tag."""
    spec = get_arch(arch)
    if tag is None or tag in spec.pretrain_aliases:
        return spec.default_tag
    return tag


def get_pretrained_cfg(name: str) -> dict[str, Any]:
    """The weights cfg of ``arch`` (its default weights) or ``arch.tag``.

    Keys: arch, tag, url, file_format (``torchvision`` state dict, ``pytorchvideo``
    ``{"model_state": ...}``, ``penet``), filename, hash_prefix / sha256 (when published),
    hf_hub_id, mean, std, input_size ``(C, T, H, W)`` (native clip), stem (input conv
    layer names in the upstream's naming), classifier (upstream key prefixes of the source
    classifier), num_classes (source classes), dataset, source, license, citation, paper,
    notes. Returns a copy.
    """
    arch, tag = split_name(name)
    spec = get_arch(arch)
    tag = resolve_tag(arch, tag)
    key = f"{arch}.{tag}"
    if tag is None or key not in _CFGS:
        known = [k for k in _CFGS if k.startswith(arch + ".")]
        if not known:
            raise ValueError(f"{spec.name} has no pretrained weights registered")
        raise ValueError(
            f"unknown weights {name!r}; nearest: {_nearest(key, known)}. "
            "ct3dzoo.list_pretrained() lists them all."
        )
    return copy.deepcopy(_CFGS[key])
