"""Model references as the command line takes them: :func:`load_reference`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._cli_args import is_path_reference
from ._factory import load
from ._model import CTModel
from ._publish import CONFIG_NAME
from ._registry import get_arch, split_name
from ._saved import is_model_folder

__all__ = ["load_reference"]


def load_reference(
    ref: str,
    *,
    pretrain: str | None = "default",
    num_classes: int = 1,
    progress: bool = True,
    **kwargs: Any,
) -> CTModel:
    """Any model reference the command line takes: a saved folder, ``local-dir:PATH``,
    ``hf-hub:ORG/NAME`` (``pretrain``/``num_classes`` unused), or an architecture name
    ``arch[.tag]`` built with ``pretrain`` (``"default"``: its default weights; ``"none"``:
    random init; a tag or a checkpoint path) and a new ``num_classes`` head."""
    if ref.startswith(("hf-hub:", "local-dir:")) or is_model_folder(ref):
        return load(ref, progress=progress)  # type: ignore[return-value]
    path = Path(ref).expanduser()
    forms = (
        "give a folder written by save_pretrained or finetune (its final/), local-dir:PATH, "
        "hf-hub:ORG/NAME or an architecture name (`ct3dzoo list`)"
    )
    if path.is_dir():
        raise FileNotFoundError(f"{ref} is a folder without {CONFIG_NAME}: {forms}")
    if is_path_reference(ref):  # a path that is not a folder, not an architecture name
        what = "is a file, not a model folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {ref} {what}: {forms}")
    name = split_name(ref)[0]
    arch = get_arch(name)  # unknown names: an error with the nearest ones
    choice: Any = pretrain
    if pretrain is None or str(pretrain).lower() == "none":
        choice = None
    elif pretrain == "default":
        choice = arch.pretrain_aliases[0] if arch.default_tag is not None else None
    return load(ref, choice, num_classes=num_classes, progress=progress, **kwargs)  # type: ignore[return-value]
