"""Saved models: rebuilding one from ``hf-hub:ORG/NAME[@REVISION]`` or ``local-dir:PATH``
(``config.json``, ``model.safetensors`` and, for a finetuned model, its
``preprocessor_config.json``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from ._builder import build_model
from ._io.checkpoint import read_safetensors
from ._io.download import hf_file
from ._loading import load_state_dict_into
from ._model import CTModel
from ._publish import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from ._registry import get_arch
from ._specs import ModelOptions
from .data.pipeline import PREPROCESSOR_NAME, Preprocessing
from .errors import CheckpointMismatchError

__all__ = ["is_model_folder", "load_saved"]

_SIZE_KEYS = ("in_chans", "num_slices", "image_size")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_D = ModelOptions  # defaults are read from the dataclass, never restated here


def is_model_folder(ref: str | os.PathLike) -> bool:
    """A plain path to a folder written by ``save_pretrained`` (it has ``config.json``)."""
    text = str(ref)
    if text.startswith(("hf-hub:", "local-dir:")):
        return False
    path = Path(text).expanduser()
    return path.is_dir() and (path / CONFIG_NAME).is_file()


# ------------------------------------------------------------------ hf-hub: / local-dir:
def _hub_files(repo_id: str, *, revision: str | None, progress: bool) -> tuple[Path, Path]:
    config = hf_file(repo_id, CONFIG_NAME, revision=revision, progress=progress)
    # pin the weights to the commit the config came from (the cache folder is named by it)
    commit = config.parent.name if _COMMIT.match(config.parent.name) else revision
    return config, hf_file(repo_id, WEIGHTS_NAME, revision=commit, progress=progress)


def _hub_preprocessor(repo_id: str, config: Path, *, progress: bool) -> Path | None:
    """The repo's ``preprocessor_config.json`` at the config's commit, or None when the repo
    has none (a model saved without a training record)."""
    commit = config.parent.name if _COMMIT.match(config.parent.name) else None
    try:
        return hf_file(repo_id, PREPROCESSOR_NAME, revision=commit, progress=progress)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def _local_files(path: str) -> tuple[Path, Path]:
    root = Path(path).expanduser()
    if not path.strip():
        raise ValueError("local-dir: needs a folder after the colon, e.g. local-dir:runs/r3d/final")
    if not root.exists():
        raise FileNotFoundError(
            f"local-dir:{path}: {root.resolve()} is not a folder (nothing is there); save a "
            "model there with model.save_pretrained(folder), or check the path"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"local-dir:{path}: {root} is a file, not a folder; pass the folder that "
            f"save_pretrained wrote ({CONFIG_NAME} + {WEIGHTS_NAME}), e.g. local-dir:{root.parent}"
        )
    config, weights = root / CONFIG_NAME, root / WEIGHTS_NAME
    missing = [f.name for f in (config, weights) if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"local-dir:{path}: {root} has no {' and no '.join(missing)}; a saved model folder "
            f"holds what save_pretrained writes ({CONFIG_NAME}, {WEIGHTS_NAME}). Re-save the "
            "model with model.save_pretrained(folder), or copy the missing file back."
        )
    return config, weights


def _fix(ref: str, path: Path) -> str:
    """How to get a good copy of a saved model's file, by where it came from."""
    if ref.startswith("hf-hub:"):
        return (
            f"Delete {path} from the Hugging Face cache and load {ref} again to re-download "
            "it (or re-upload the model if the Hub copy is broken)"
        )
    return "Re-save the model with model.save_pretrained(folder), or copy the file again"


def _read_config(ref: str, path: Path) -> dict[str, Any]:
    fix = _fix(ref, path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(
            f"{ref}: {path} is not text (not a ct3dzoo {CONFIG_NAME}). {fix}."
        ) from None
    except ValueError as e:
        raise ValueError(
            f"{ref}: {path} is not valid JSON ({e}); it is truncated or was edited by hand. {fix}."
        ) from None
    mc = config.get("model_config") if isinstance(config, dict) else None
    if not isinstance(mc, dict) or not isinstance(mc.get("arch"), str):
        what = "no 'model_config' with an 'arch'" if isinstance(config, dict) else "not an object"
        raise ValueError(f"{ref}: {path} is not a ct3dzoo {CONFIG_NAME} ({what}). {fix}.")
    ints = {f"model_config.{k}": mc.get(k) for k in ("num_classes", "in_chans")}
    for key, value in {**ints, "format_version": config.get("format_version", 1)}.items():
        if type(value) is not int:  # bool and float too
            raise ValueError(f"{ref}: {path} has {key}={value!r}; expected an integer. {fix}.")
    if config.get("format_version", 1) > FORMAT_VERSION:
        raise ValueError(
            f"{ref} was saved by ct3dzoo {config.get('ct3dzoo_version')} (format "
            f"{config['format_version']}); upgrade ct3dzoo to load it"
        )
    return config


def _check_sizes(ref: str, mc: dict[str, Any], overrides: dict[str, Any]) -> None:
    """``in_chans``/``num_slices``/``image_size`` must equal the saved ones."""
    for key in _SIZE_KEYS:
        if key not in overrides:
            continue
        saved, given = mc.get(key), overrides.pop(key)
        norm = list(given) if isinstance(given, (tuple, list)) else given
        if norm != saved:
            raise ValueError(
                f"{ref} was saved with {key}={saved}; its weights are adapted to that, so "
                f"{key}={given} cannot be loaded from it. Load the source weights instead: "
                f"ct3dzoo.load({mc['arch']!r}, pretrain={mc.get('tag')!r}, {key}={given!r})"
            )


def load_saved(
    ref: str, *, revision: str | None = None, progress: bool = True, **overrides: Any
) -> CTModel:
    """Rebuild a saved model from ``hf-hub:ORG/NAME[@REVISION]`` or ``local-dir:PATH``.

    ``overrides`` (options that differ from their defaults): ``num_classes``/``head`` (a new
    head replaces the saved one after loading), ``drop_rate``, ``head`` for models saved
    with a custom head, extra ``arch_kwargs``. ``in_chans``, ``num_slices`` and
    ``image_size`` must equal the saved ones (the weights were adapted to them).
    """
    kind, _, target = ref.partition(":")
    if kind == "hf-hub":
        repo_id, _, at = target.partition("@")
        if at and revision and at != revision:
            raise ValueError(f"{ref}: revision given twice ({at!r} and revision={revision!r})")
        config_path, weights_path = _hub_files(
            repo_id, revision=revision or at or None, progress=progress
        )
        pp_path = _hub_preprocessor(repo_id, config_path, progress=progress)
    elif kind == "local-dir":
        config_path, weights_path = _local_files(target)
        pp_path = Path(target).expanduser() / PREPROCESSOR_NAME
        pp_path = pp_path if pp_path.is_file() else None
    else:
        raise ValueError(f"unknown model reference {ref!r}; use hf-hub:ORG/NAME or local-dir:PATH")
    mc = dict(_read_config(ref, config_path)["model_config"])
    try:
        get_arch(mc["arch"])
    except ValueError as e:
        raise ValueError(f"{ref}: {config_path} names an {e}") from None
    _check_sizes(ref, mc, overrides)
    num_classes = overrides.pop("num_classes", None)
    new_head = overrides.pop("head", None)
    drop_rate = overrides.pop("drop_rate", mc.get("drop_rate", _D.drop_rate))
    saved_head = mc.get("head", _D.head)
    build_head: Any = saved_head
    if saved_head == "custom":
        if new_head is None or isinstance(new_head, str):
            raise ValueError(
                f"{ref} was saved with a custom head; pass the same module or factory as head= "
                "to rebuild it"
            )
        build_head, new_head = new_head, None
    opts = ModelOptions(
        num_classes=int(mc["num_classes"]),
        in_chans=int(mc["in_chans"]),
        head=build_head,
        drop_rate=float(drop_rate),
        num_slices=mc.get("num_slices"),
        image_size=None if mc.get("image_size") is None else tuple(mc["image_size"]),
    )
    arch_kwargs = {**(mc.get("arch_kwargs") or {}), **overrides}
    model = build_model(mc["arch"], mc.get("tag"), opts, arch_kwargs)
    sd = read_safetensors(weights_path, fix=_fix(ref, weights_path))
    try:
        load_state_dict_into(model, sd, source=ref)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(
            f"{weights_path.name} does not match the model {config_path.name} describes (were "
            f"the files of two saved models mixed?). {_fix(ref, weights_path)}.\n  {e}"
        ) from None
    model.model_config["pretrain"] = mc.get("pretrain")
    model.model_config["loaded_from"] = ref
    if pp_path is not None:
        model.preprocessing = Preprocessing.from_pretrained(pp_path)
    if (num_classes is not None and num_classes != model.num_classes) or new_head is not None:
        model.reset_classifier(model.num_classes if num_classes is None else num_classes, new_head)
    return model
