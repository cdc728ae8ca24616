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

__all__ = ["REFERENCE_FORMS", "check_reference", "load_reference"]


#: every form a model reference can take, for error messages
REFERENCE_FORMS = (
    "give a folder written by save_pretrained or finetune (its final/), local-dir:PATH, "
    "hf-hub:ORG/NAME or an architecture name (`ct3dzoo list`)"
)


def check_reference(ref: str) -> bool:
    """Refuse a reference that cannot name a model, without loading anything: a folder
    without ``config.json``, a missing path, an unknown architecture (with the nearest
    names). Returns True for a saved model (folder, ``local-dir:``, ``hf-hub:``), False for
    an architecture name ``arch[.tag]``."""
    if ref.startswith(("hf-hub:", "local-dir:")) or is_model_folder(ref):
        return True
    path = Path(ref).expanduser()
    if path.is_dir():
        raise FileNotFoundError(f"{ref} is a folder without {CONFIG_NAME}: {REFERENCE_FORMS}")
    if is_path_reference(ref):  # a path that is not a folder, not an architecture name
        what = "is a file, not a model folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"model folder {ref} {what}: {REFERENCE_FORMS}")
    get_arch(split_name(ref)[0])  # unknown names: an error with the nearest ones
    return False


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
    if check_reference(ref):
        return load(ref, progress=progress)  # type: ignore[return-value]
    arch = get_arch(split_name(ref)[0])
    choice: Any = pretrain
    if pretrain is None or str(pretrain).lower() == "none":
        choice = None
    elif pretrain == "default":
        choice = arch.pretrain_aliases[0] if arch.default_tag is not None else None
    return load(ref, choice, num_classes=num_classes, progress=progress, **kwargs)  # type: ignore[return-value]
