"""The registry of transforms a saved pipeline may name, and their JSON form.

A ``preprocessor_config.json`` names transforms only by these registered names; nothing is
imported from a name. Each registered class has ``to_config()`` (its arguments as JSON
values) and ``eval_counterpart()`` (itself, its deterministic twin, or ``None`` for a random
augmentation).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "TRANSFORMS",
    "eval_transform",
    "plain",
    "register_transform",
    "transform_from_config",
    "transform_to_config",
]

#: name -> class of every transform a saved pipeline may name
TRANSFORMS: dict[str, type] = {}
C = TypeVar("C", bound=type)


def register_transform(cls: C) -> C:
    """Class decorator: make ``cls`` nameable in a saved pipeline."""
    TRANSFORMS[cls.__name__] = cls
    return cls


def plain(v: Any) -> Any:
    """Tuples -> lists, recursively (JSON values)."""
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


def _is_registered(t: Any) -> bool:
    return TRANSFORMS.get(type(t).__name__) is type(t)


def transform_to_config(t: Any) -> dict[str, Any] | None:
    """``{"name": ..., **arguments}`` of a registered transform, or ``None`` for any other
    callable (a user function cannot be written to JSON)."""
    return t.to_config() if _is_registered(t) else None


def transform_from_config(cfg: Mapping[str, Any]) -> Any:
    """Rebuild a transform from :func:`transform_to_config`'s dict (registered names only)."""
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ValueError(f"a transform config is a dict with a 'name'; got {cfg!r}")
    name = cfg["name"]
    if name not in TRANSFORMS:
        near = difflib.get_close_matches(str(name), list(TRANSFORMS), n=3)
        raise ValueError(
            f"unknown transform {name!r} in a saved pipeline; ct3dzoo builds only its own "
            f"registered transforms ({', '.join(sorted(TRANSFORMS))})"
            + (f"; did you mean {', '.join(near)}?" if near else "")
        )
    args = {k: v for k, v in cfg.items() if k != "name"}
    if "transforms" in args:  # Compose: its members are configs too
        args["transforms"] = [transform_from_config(c) for c in args["transforms"]]
    try:
        return TRANSFORMS[name](**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad arguments for transform {name!r}: {e}") from None


def eval_transform(t: Any) -> Any:
    """The evaluation counterpart of a transform: random augmentations are dropped (``None``),
    ``RandomCrop`` becomes ``CenterCrop`` of the same size, a registered composition maps its
    members; deterministic transforms and unregistered callables are returned as they are."""
    return t.eval_counterpart() if _is_registered(t) else t
