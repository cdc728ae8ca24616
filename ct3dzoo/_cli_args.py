"""One vocabulary for every command: the shared options' names, order, units and parsing.

Every ``ct3dzoo`` command that takes the concept spells it the same way:

==================  ====================  ==================================================
concept             flag / keyword        value
==================  ====================  ==================================================
model reference     ``MODEL`` positional  arch, arch.tag, folder, ``local-dir:``, ``hf-hub:``
input shape         ``--shape`` /         D H W voxels (0 keeps an axis where a command says)
                    ``shape=``
voxel spacing       ``--spacing`` /       mm, z y x; one number = isotropic
                    ``spacing=``
HU windows          ``--windows`` /       presets (``lung``, ``pe``, ...) or ``C,W`` in HU,
                    ``windows=``          one channel each
slices per window   ``--num-slices`` /    slices
                    ``num_slices=``
window stride       ``--stride``          slices between window starts
study reduction     ``--reduce``          ``max`` (paper) or ``mean``
device              ``--device``          ``cpu``, ``cuda``, ``cuda:1``
batch size          ``--batch-size``      items per forward pass
==================  ====================  ==================================================

Old spellings (``--size``, ``--slices``, ``--image-size``, ``--hu-window``, ``window=``) stay
one release as hidden aliases that warn. Pure argparse: no torch import.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CONCEPTS",
    "DeprecatedFlag",
    "add_deprecated",
    "add_device",
    "add_model_reference",
    "add_preprocessing_flags",
    "deprecated_alias",
    "is_path_reference",
    "preprocessing_overrides",
    "spacing_value",
]

#: canonical spelling -> old spellings that must appear only as deprecated aliases
CONCEPTS: dict[str, tuple[str, ...]] = {
    "shape": ("size", "image_size", "input_size"),
    "spacing": ("voxel_size", "resolution"),
    "windows": ("hu_window", "hu_windows", "window_presets"),
    "num_slices": ("slices", "window", "window_slices", "depth"),
    "stride": ("step", "window_stride"),
    "reduce": ("reduction", "aggregate_by"),
    "device": ("gpu", "cuda"),
    "batch_size": ("bs", "batch"),
}


class DeprecatedFlag(argparse.Action):
    """A hidden old spelling: stores into the new option's ``dest`` and warns once."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", convert: Any = None,
                 **kw: Any) -> None:  # fmt: skip
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        msg = (
            f"{option_string} is deprecated and will be removed in the next release; use {self.new}"
        )
        warnings.warn(msg, FutureWarning, stacklevel=2)
        print(f"ct3dzoo: warning: {msg}", file=sys.stderr)
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def add_deprecated(
    p: Any, old: str, *, dest: str, new: str, convert: Any = None, **kw: Any
) -> None:
    """Register ``old`` as a hidden alias of ``new`` (same ``dest``)."""
    p.add_argument(old, dest=dest, action=DeprecatedFlag, new=new, convert=convert, **kw)


def spacing_value(values: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``--spacing`` (1 or 3 numbers, mm) -> ``(z, y, x)``; checked positive (``ValueError``:
    called after parsing, so the CLI reports it as one ``error:`` line)."""
    if values is None:
        return None
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(
            f"--spacing takes 1 number (isotropic) or 3 (z y x) in mm; got {len(vals)}"
        )
    if not all(v > 0 for v in vals):
        raise ValueError(f"--spacing must be positive mm; got {vals}")
    return tuple(vals)  # type: ignore[return-value]


def add_model_reference(p: Any, *, what: str = "model") -> None:
    """``MODEL`` (every reference form) plus ``--pretrain``/``--num-classes`` for arch names."""
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"the {what}: a finetuned folder (save_pretrained / finetune's final/), "
        "local-dir:PATH, hf-hub:ORG/NAME, or an architecture name (arch or arch.tag) with its "
        "source weights and a new head",
    )
    p.add_argument(
        "--pretrain",
        default="default",
        help="for an architecture name: 'default' (its default weights), a tag, a checkpoint "
        "path, or 'none' (random init)",
    )
    p.add_argument("--num-classes", type=int, default=1, help="outputs of a new head (arch)")


def is_path_reference(ref: str) -> bool:
    """``MODEL`` names a saved model (``hf-hub:``, ``local-dir:``, a path with a separator, an
    existing file or folder), not an architecture name."""
    return (
        ref.startswith(("hf-hub:", "local-dir:"))
        or any(sep and sep in ref for sep in ("/", os.sep, os.altsep))
        or Path(ref).expanduser().exists()
    )


def add_device(p: Any, *, batch_size: int | None = 4) -> None:
    """``--device`` and ``--batch-size``."""
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    if batch_size is not None:
        p.add_argument("--batch-size", type=int, default=batch_size,
                       help=f"slice windows per forward pass (default {batch_size})")  # fmt: skip


def add_preprocessing_flags(p: Any) -> argparse._ArgumentGroup:
    """Overrides of a model's preprocessing (default: what the model was trained with)."""
    g = p.add_argument_group(
        "preprocessing (default: the model's own, as trained; a flag overrides it and the "
        "difference is printed)"
    )
    g.add_argument("--windows", nargs="+", metavar="W",
                   help="HU window(s): presets or C,W in HU, one channel each")  # fmt: skip
    g.add_argument("--spacing", nargs="+", type=float, metavar="MM",
                   help="resample to this spacing: 1 number (isotropic) or 3 (z y x), mm")  # fmt: skip
    g.add_argument("--shape", nargs=3, type=int, metavar=("D", "H", "W"),
                   help="resample to this shape (0 keeps that axis, e.g. 0 224 224)")  # fmt: skip
    g.add_argument("--num-slices", type=int, help="slices per window (paper: 32)")
    g.add_argument("--stride", type=int, help="slices between window starts (paper: 24)")
    g.add_argument("--reduce", choices=["max", "mean"], help="study score over the windows")
    return g


def preprocessing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as :class:`~ct3dzoo.data.Preprocessing` fields (None: not given)."""
    out: dict[str, Any] = {}
    if getattr(args, "windows", None):
        for w in args.windows:
            try:  # a preset is checked where it is resolved; C,W is checked here
                cw = [float(v) for v in w.split(",")] if "," in w else None
            except ValueError:
                cw = []
            ok = cw is None or (len(cw) == 2 and all(map(math.isfinite, cw)) and cw[1] > 0)
            if not ok:
                raise ValueError(
                    f"--windows {w!r}: give a preset (lung, pe, mediastinal, ...) or CENTRE,WIDTH "
                    "in HU with a positive width, e.g. 40,400"
                )
        out["windows"] = tuple(args.windows)
    if getattr(args, "spacing", None):
        out["spacing"] = spacing_value(args.spacing)
    if getattr(args, "shape", None):
        out["shape"] = tuple(args.shape)
    for key in ("num_slices", "stride", "reduce"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def deprecated_alias(old: str, new: str, value: object, current: object) -> object:
    """``value`` of a deprecated keyword ``old``, with a FutureWarning naming ``new``; an
    error when both are given."""
    if value is None:
        return current
    if current is not None:
        raise TypeError(f"{old}= is the old name of {new}=; pass only {new}=")
    warnings.warn(
        f"{old}= is deprecated and will be removed in the next release; use {new}=",
        FutureWarning,
        stacklevel=3,
    )
    return value
