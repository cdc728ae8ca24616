"""Refuse an output path that would overwrite one of the command's own inputs.

>>> check_outputs({"--out": "m.csv"}, {"MANIFEST": "m.csv"})  # doctest: +SKIP
OutputClobbersInputError: --out m.csv is the input MANIFEST (m.csv) ...

Checked before anything is written: ``ct3dzoo predict ... data/m.csv --out data/m.csv`` once
replaced the user's manifest with predictions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Union

from ..errors import OutputClobbersInputError

__all__ = ["check_outputs"]

StrPath = Union[str, "os.PathLike[str]"]


def _real(p: StrPath) -> Path:
    """Absolute, symlinks resolved, ``~`` expanded (the path need not exist)."""
    return Path(os.path.expanduser(os.fspath(p))).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:  # hard links, bind mounts, case-insensitive file systems
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _flat(value: StrPath | Sequence[StrPath] | None) -> list[StrPath]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return [v for v in value if v is not None]


def check_outputs(
    outputs: Mapping[str, StrPath | None],
    inputs: Mapping[str, StrPath | Sequence[StrPath] | None],
    *,
    writes: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Raise :class:`~ct3dzoo.errors.OutputClobbersInputError` when writing an output would
    overwrite or mix into an input.

    Args:
        outputs: ``{option: path}`` the command writes (a file, or a folder listed in
            ``writes``); ``None`` values are skipped.
        inputs: ``{option: path or paths}`` the command reads (files or folders); paths
            that do not exist are skipped.
        writes: for folder outputs, ``{option: names written inside it}`` (e.g.
            ``{"--out": ["studies", "errors.jsonl"]}``): an input at or under
            ``OUT/<name>`` is refused too. An output folder equal to an input folder is
            always refused.

    An output that is an existing file inside an input folder is refused too (it would
    replace one of the folder's files). Symlinks and ``~`` are resolved; hard links to one file count as the same file.
    """
    writes = writes or {}
    real_inputs = [  # an input that does not exist cannot be overwritten (e.g. an arch name)
        (opt, p, r) for opt, v in inputs.items() for p in _flat(v) if (r := _real(p)).exists()
    ]
    for opt, out in outputs.items():
        if out is None:
            continue
        o = _real(out)
        for in_opt, given, i in real_inputs:
            if _same(o, i):
                what = "folder" if i.is_dir() else "file"
                alias = "" if os.fspath(given) == os.fspath(out) else f" (both are {i})"
                raise OutputClobbersInputError(
                    f"{opt} {os.fspath(out)} is the input {in_opt} {os.fspath(given)}{alias}: "
                    f"writing it would overwrite the {what} being read. Choose another {opt}.",
                    option=opt,
                    path=str(o),
                )
            if o.is_file() and i.is_dir() and i in o.parents:
                raise OutputClobbersInputError(
                    f"{opt} {os.fspath(out)} would overwrite {o.name}, a file of the input "
                    f"{in_opt} folder {os.fspath(given)}. Choose another {opt}.",
                    option=opt,
                    path=str(o),
                )
        for name in writes.get(opt, ()):
            target = o / name
            for in_opt, given, i in real_inputs:
                if _same(target, i) or target in i.parents:
                    raise OutputClobbersInputError(
                        f"{opt} {os.fspath(out)} would overwrite the input {in_opt} "
                        f"({os.fspath(given)}): the command writes {target}. Choose an {opt} "
                        "folder that holds none of the inputs, or move the input.",
                        option=opt,
                        path=str(i),
                    )
