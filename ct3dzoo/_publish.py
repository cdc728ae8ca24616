"""Publishing a model: ``save_pretrained``, the model card and ``push_to_hub``.

A saved model is a folder (or Hub repo) of three files:

* ``config.json``: ``model_config`` (arch, tag, in_chans, num_classes, head, drop_rate,
  num_slices, image_size, arch_kwargs, pretrain), the source weights (tag, URL, licence,
  citation), the input contract and the ct3dzoo version;
* ``model.safetensors``: ``model.state_dict()`` (ct3dzoo key names, adapted stem);
* ``preprocessor_config.json``: the training record of a finetuned model
  (:class:`~ct3dzoo.data.Preprocessing`: everything between a study on disk and the input
  tensor, label names, task, validation metrics); absent for source weights;
* ``README.md``: a model card.

``ct3dzoo.load("hf-hub:ORG/NAME")`` / ``ct3dzoo.load("local-dir:PATH")`` (in ``_factory``)
rebuild the model and load the weights strictly. This module writes a model and never
builds one, so it sits below the model base (``CTModel.save_pretrained`` calls it).

Why not ``huggingface_hub.ModelHubMixin``: its ``config.json`` is the model's ``__init__``
arguments and ``from_pretrained`` rebuilds one known class; a ct3dzoo model is built by the
factory from an architecture name, a weights spec and :class:`~ct3dzoo._specs.ModelOptions`,
and its config also records the source weights and the input contract. The transport
(``HfApi.upload_folder``, ``hf_hub_download``) is huggingface_hub's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi

from ._card import model_card
from ._io.atomic import atomic_write_text
from ._io.checkpoint import save_safetensors
from ._specs import WeightsSpec
from ._version import __version__
from .data.pipeline import PREPROCESSOR_NAME, Preprocessing
from .data.windows import resolve_window

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "build_config",
    "model_card",
    "push_to_hub",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- save
def _source_info(model: Any) -> dict[str, Any] | None:
    spec = getattr(model, "pretrained_cfg", None)
    return spec.to_dict() if isinstance(spec, WeightsSpec) else None


def _windows_info(windows: Sequence[Any] | None, in_chans: int) -> list[dict[str, Any]] | None:
    if windows is None:
        return None

    ws = [windows] if isinstance(windows, str) else list(windows)
    if ws and isinstance(ws[0], (int, float)):  # a single (centre, width) pair
        ws = [tuple(ws)]
    if len(ws) != in_chans:
        raise ValueError(
            f"windows: give one HU window per input channel ({in_chans}), got {len(ws)}"
        )
    out = []
    for w in ws:
        c, width = resolve_window(w)
        out.append({"name": w if isinstance(w, str) else None, "centre": c, "width": width,
                    "hu_range": [c - width / 2, c + width / 2]})  # fmt: skip
    return out


def _json_ready(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{what} cannot be written to config.json ({e}); save_pretrained only stores JSON "
            "values (numbers, strings, lists, dicts)"
        ) from None


def build_config(model: Any, *, windows: Sequence[Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` content of ``model`` (see the module docstring)."""
    mc = dict(getattr(model, "model_config", None) or {})
    if not mc.get("arch"):
        raise ValueError(
            "this model has no model_config; save_pretrained needs a model built by "
            "ct3dzoo.load() or ct3dzoo.create_model()"
        )
    mc["arch_kwargs"] = _json_ready(mc.get("arch_kwargs") or {}, "arch_kwargs")
    mc.setdefault("pretrain", None)
    in_chans = int(mc["in_chans"])
    src = _source_info(model) or {}
    native = src.get("input_size")
    contract = src.get("input_contract") or {"kind": "window"}
    pp = _record(model)
    if pp is not None:  # what training used, not the source weights' contract
        contract = {
            "kind": pp.intensity,
            "hu_range": None if pp.hu_range is None else list(pp.hu_range),
        }
        if windows is None and pp.windows is not None:
            windows = list(pp.windows)
    size = None
    if mc.get("num_slices") or mc.get("image_size"):
        size = [mc.get("num_slices"), *(mc.get("image_size") or [None, None])]
    return {
        "architecture": mc["arch"],
        "model_config": mc,
        "num_features": int(getattr(model, "num_features", 0)),
        "source_weights": _json_ready(src, "pretrained_cfg"),
        "input": {
            "layout": "(B, C, D, H, W), D = slices",
            "in_chans": in_chans,
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "preprocessing": _preprocessing(contract)
            if pp is None
            else f"as trained: see {PREPROCESSOR_NAME}",
            "contract": contract,
            "windows": _windows_info(windows, in_chans),
            "size": size,
            "native_size": None if native is None else list(native[1:]),
            "min_size": list(getattr(model, "min_size", ()) or ()),
            "size_divisor": list(getattr(model, "size_divisor", ()) or ()),
        },
        "library": "ct3dzoo",
        "ct3dzoo_version": __version__,
        "format_version": FORMAT_VERSION,
    }


def _record(model: Any) -> Preprocessing | None:
    pp = getattr(model, "preprocessing", None)
    return pp if isinstance(pp, Preprocessing) else None


def _preprocessing(contract: dict[str, Any]) -> str:
    if contract["kind"] == "hu_range":
        lo, hi = contract["hu_range"]
        return f"HU clipped to [{lo:g}, {hi:g}] and scaled to [0, 1] (ct3dzoo.data.transforms_for)"
    if contract["kind"] == "zscore":
        return "z-score over the volume's voxels (ct3dzoo.data.transforms_for)"
    return "HU windowed to [0, 1] (ct3dzoo.data.apply_window); the model normalises internally"


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    windows: Sequence[Any] | None = None,
    allow_custom_head: bool = False,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a README model card; return the folder.

    Args:
        model: a model built by :func:`ct3dzoo.load` / :func:`ct3dzoo.create_model`.
        save_directory: created if missing; existing files of the same names are replaced.
        safe_serialization: must be True (ct3dzoo writes safetensors only); kept for
            familiarity with ``transformers``/``timm``.
        windows: the HU window of each input channel (preset names or ``(centre, width)``),
            recorded in the config and the card.
        allow_custom_head: a head given as a module/callable cannot be written to JSON; with
            True its weights are saved anyway and loading needs the same ``head=`` again.
    """
    if not safe_serialization:
        raise ValueError("ct3dzoo saves safetensors only; drop safe_serialization=False")
    config = build_config(model, windows=windows)
    if config["model_config"].get("head") == "custom" and not allow_custom_head:
        raise ValueError(
            "this model has a custom head (a module or callable), which config.json cannot "
            "describe. Pass allow_custom_head=True to save it anyway and rebuild it with "
            "ct3dzoo.load('local-dir:...', head=<the same module or factory>), or reset it to a "
            "named head first: model.reset_classifier(n, head='linear'|'mlp'|'attention')."
        )
    out = Path(save_directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), out / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    pp = _record(model)
    if pp is not None:
        pp.save(out)
    else:  # a record left by an earlier save would describe other weights
        (out / PREPROCESSOR_NAME).unlink(missing_ok=True)
    atomic_write_text(out / CARD_NAME, model_card(config, pp))
    return out


def push_to_hub(
    model: torch.nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload ct3dzoo model",
    create_pr: bool = False,
    **save_kwargs: Any,
) -> Any:
    """Save ``model`` to a temporary folder and upload it to the Hub repo ``repo_id``.

    The repo is created if missing (``private`` applies then); ``revision`` names a branch,
    created from main if missing. ``save_kwargs`` go to :func:`save_pretrained`. Returns
    huggingface_hub's ``CommitInfo``. Honours ``HF_ENDPOINT`` and ``HF_TOKEN``.
    """
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="ct3dzoo-push-") as tmp:
        save_pretrained(model, tmp, **save_kwargs)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
