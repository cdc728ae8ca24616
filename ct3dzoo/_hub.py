"""Saved models in and out: ``save_pretrained``, ``push_to_hub``, ``hf-hub:`` and ``local-dir:``.

A saved model is a folder (or Hub repo) of three files:

* ``config.json``: ``model_config`` (arch, tag, in_chans, num_classes, head, drop_rate,
  num_slices, image_size, arch_kwargs, pretrain), the source weights (tag, URL, licence,
  citation), the input contract and the ct3dzoo version;
* ``model.safetensors``: ``model.state_dict()`` (ct3dzoo key names, adapted stem);
* ``README.md``: a model card.

``ct3dzoo.load("hf-hub:ORG/NAME")`` / ``ct3dzoo.load("local-dir:PATH")`` rebuild the model
with :func:`ct3dzoo.create_model` and load the weights strictly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "load_from_ref", "push_to_hub", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1

KE_2023 = (
    "Alexander Ke, Shih-Cheng Huang, Chloe P. O'Connell, Michal Klimont, Serena Yeung, "
    "Pranav Rajpurkar. Video Pretraining Advances 3D Deep Learning on Chest CT Tasks. "
    "Medical Imaging with Deep Learning (MIDL), 2023."
)
_KE_BIBTEX = """@inproceedings{ke2023video,
  title     = {Video Pretraining Advances 3D Deep Learning on Chest CT Tasks},
  author    = {Ke, Alexander and Huang, Shih-Cheng and O'Connell, Chloe P. and Klimont, Michal
               and Yeung, Serena and Rajpurkar, Pranav},
  booktitle = {Medical Imaging with Deep Learning (MIDL)},
  year      = {2023}
}"""

_CONFIG_KEYS = ("num_classes", "in_chans", "head", "drop_rate", "num_slices", "image_size")
_SIZE_KEYS = ("in_chans", "num_slices", "image_size")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@contextlib.contextmanager
def hf_progress(enabled: bool) -> Iterator[None]:
    """Silence huggingface_hub's progress bars inside the block when ``enabled`` is False."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()


# ----------------------------------------------------------------------------- save
def _source_info(model: Any) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    keys = ("arch", "tag", "url", "hf_hub_id", "dataset", "source", "license", "citation",
            "paper", "mean", "std", "input_size", "num_classes")  # fmt: skip
    return {k: cfg.get(k) for k in keys}


def _windows_info(windows: Sequence[Any] | None, in_chans: int) -> list[dict[str, Any]] | None:
    if windows is None:
        return None
    from .data.windows import resolve_window

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
    from . import __version__

    mc = dict(getattr(model, "model_config", None) or {})
    if not mc.get("arch"):
        raise ValueError(
            "this model has no model_config; save_pretrained needs a model built by "
            "ct3dzoo.load() or ct3dzoo.create_model()"
        )
    mc["arch_kwargs"] = _json_ready(mc.get("arch_kwargs") or {}, "arch_kwargs")
    mc.setdefault("pretrain", None)
    in_chans = int(mc["in_chans"])
    src = _source_info(model)
    native = src.get("input_size")
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
            "preprocessing": "HU windowed to [0, 1] (ct3dzoo.data.apply_window); the model "
            "normalises internally",
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


def _hf_license(text: str | None) -> str:
    t = (text or "").lower()
    if "apache" in t:
        return "apache-2.0"
    if "bsd-3" in t:
        return "bsd-3-clause"
    if "mit" in t.split():
        return "mit"
    return "other"


def model_card(config: dict[str, Any]) -> str:
    """A README.md model card for a saved model's ``config``."""
    mc, src, inp = config["model_config"], config["source_weights"], config["input"]
    arch = mc["arch"]
    weights = f"{arch}.{mc['tag']}" if mc.get("tag") and mc.get("pretrain") else None
    if inp.get("windows"):
        win = "; ".join(
            f"channel {i}: {w['name'] + ' ' if w['name'] else ''}centre {w['centre']:g} / width "
            f"{w['width']:g} HU ([{w['hu_range'][0]:g}, {w['hu_range'][1]:g}] HU)"
            for i, w in enumerate(inp["windows"])
        )
    else:
        win = (
            "not recorded (pass windows= to save_pretrained); e.g. the paper's CTPA window "
            "is [-100, 900] HU (`ct3dzoo.data.WINDOWS['pe']`)"
        )
    size = inp.get("size")
    size_txt = (
        f"built for D x H x W = {' x '.join(str(s) for s in size if s is not None)}"
        if size
        else "any D, H, W the architecture's strides allow"
    )
    native = inp.get("native_size")
    lines = [
        "---",
        "library_name: ct3dzoo",
        f"license: {_hf_license(src.get('license'))}",
        "tags:",
        "  - ct3dzoo",
        "  - medical-imaging",
        "  - computed-tomography",
        "  - 3d",
        "  - video-pretraining",
        "---",
        "",
        f"# {arch} for CT (ct3dzoo)",
        "",
        f"A {'video-pretrained' if weights else 'randomly initialised'} `{arch}` adapted "
        f"exactly to {mc['in_chans']}-channel CT input by "
        "[ct3dzoo](https://github.com/ct3dzoo/ct3dzoo): the stem folds the source weights' "
        "RGB normalisation in, so the model takes HU-windowed volumes directly.",
        "",
        "## Model",
        "",
        f"- architecture: `{arch}`; {config['num_features']} features; head `{mc['head']}` with "
        f"{mc['num_classes']} outputs"
        + (" (pre-logits features)" if mc["num_classes"] == 0 else ""),
        (f"- source weights: `{weights}`" if weights else "- source weights: none (random init)")
        + (
            " (read from a local file; not checked against the published hash)"
            if mc.get("pretrain") == "file"
            else ""
        ),
    ]
    if weights:
        lines += [
            f"  - trained on {src.get('dataset') or '?'} by {src.get('source') or '?'}; "
            f"original file: {src.get('url') or src.get('hf_hub_id') or 'see the citation'}",
            f"  - licence of the source weights: {src.get('license') or 'unknown'}",
        ]
    lines += [
        "",
        "## Input contract",
        "",
        f"- tensor `(B, {mc['in_chans']}, D, H, W)`, float32, D = slices",
        f"- values: HU windowed to [0, 1]; windows: {win}",
        f"- size: {size_txt}"
        + (f" (source clip T x H x W = {' x '.join(map(str, native))})" if native else ""),
        "- no further normalisation: the model applies the source weights' mean/std itself",
        "",
        "## Usage",
        "",
        "```python",
        "import ct3dzoo",
        'model = ct3dzoo.load("hf-hub:ORG/NAME")  # or "local-dir:/path/to/this/folder"',
        "```",
        "",
        "## Citation",
        "",
    ]
    if weights and src.get("citation"):
        lines += ["Source model:", "", f"> {src['citation']}", ""]
    lines += [
        "Video pretraining for chest CT:",
        "",
        f"> {KE_2023}",
        "",
        "```bibtex",
        _KE_BIBTEX,
        "```",
        "",
    ]
    return "\n".join(lines)


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
    from ._weights import _atomic_write_bytes, save_safetensors

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
    _atomic_write_bytes(out / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    _atomic_write_bytes(out / CARD_NAME, model_card(config).encode())
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
    from huggingface_hub import HfApi

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


# ----------------------------------------------------------------------------- load
def _hub_files(repo_id: str, *, revision: str | None, progress: bool) -> tuple[Path, Path]:
    from huggingface_hub import hf_hub_download

    from ._weights import is_offline

    kw: dict[str, Any] = {
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "local_files_only": is_offline(),
    }
    with hf_progress(progress):
        config = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **kw))
        # pin the weights to the commit the config came from (the cache folder is named by it)
        commit = config.parent.name if _COMMIT.match(config.parent.name) else revision
        weights = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=commit, **kw))
    return config, weights


def _local_files(path: str) -> tuple[Path, Path]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"local-dir: {root} is not a folder (save one with model.save_pretrained)"
        )
    config, weights = root / CONFIG_NAME, root / WEIGHTS_NAME
    for f in (config, weights):
        if not f.is_file():
            raise FileNotFoundError(
                f"local-dir: {root} has no {f.name}; it should hold what save_pretrained writes "
                f"({CONFIG_NAME}, {WEIGHTS_NAME})"
            )
    return config, weights


def load_from_ref(
    ref: str, *, revision: str | None = None, progress: bool = True, **overrides: Any
) -> torch.nn.Module:
    """Rebuild a saved model from ``hf-hub:ORG/NAME[@REVISION]`` or ``local-dir:PATH``.

    ``overrides``: ``num_classes``/``head`` (a new head replaces the saved one after loading),
    ``drop_rate``, ``head`` for models saved with a custom head, extra ``arch_kwargs``.
    ``in_chans``, ``num_slices`` and ``image_size`` must equal the saved ones (the weights
    were adapted to them).
    """
    from safetensors.torch import load_file

    from ._builder import create_model, load_state_dict_into

    kind, _, target = ref.partition(":")
    if kind == "hf-hub":
        repo_id, _, at = target.partition("@")
        if at and revision and at != revision:
            raise ValueError(f"{ref}: revision given twice ({at!r} and revision={revision!r})")
        config_path, weights_path = _hub_files(
            repo_id, revision=revision or at or None, progress=progress
        )
    elif kind == "local-dir":
        config_path, weights_path = _local_files(target)
    else:
        raise ValueError(f"unknown model reference {ref!r}; use hf-hub:ORG/NAME or local-dir:PATH")
    try:
        config = json.loads(config_path.read_text())
        mc = dict(config["model_config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ref}: {CONFIG_NAME} is not a ct3dzoo config ({e})") from None
    if int(config.get("format_version", 1)) > FORMAT_VERSION:
        raise ValueError(
            f"{ref} was saved by ct3dzoo {config.get('ct3dzoo_version')} (format "
            f"{config['format_version']}); upgrade ct3dzoo to load it"
        )
    for key in _SIZE_KEYS:
        if key in overrides and overrides[key] is not None:
            saved, given = mc.get(key), overrides.pop(key)
            norm = list(given) if isinstance(given, (tuple, list)) else given
            if key == "image_size" and isinstance(given, int):
                norm = [given, given]
            if norm != saved:
                raise ValueError(
                    f"{ref} was saved with {key}={saved}; its weights are adapted to that, so "
                    f"{key}={given} cannot be loaded from it. Load the source weights instead: "
                    f"ct3dzoo.load({mc['arch']!r}, pretrain={mc.get('tag')!r}, {key}={given!r})"
                )
    num_classes = overrides.pop("num_classes", None)
    new_head = overrides.pop("head", None)
    drop_rate = overrides.pop("drop_rate", mc.get("drop_rate", 0.0))
    saved_head = mc.get("head", "linear")
    build_head: Any = saved_head
    if saved_head == "custom":
        if new_head is None or isinstance(new_head, str):
            raise ValueError(
                f"{ref} was saved with a custom head; pass the same module or factory as head= "
                "to rebuild it"
            )
        build_head, new_head = new_head, None
    arch_kwargs = {**(mc.get("arch_kwargs") or {}), **overrides}
    model = create_model(
        mc["arch"],
        num_classes=int(mc["num_classes"]),
        in_chans=int(mc["in_chans"]),
        head=build_head,
        drop_rate=float(drop_rate),
        num_slices=mc.get("num_slices"),
        image_size=None if mc.get("image_size") is None else tuple(mc["image_size"]),
        pretrained_tag=mc.get("tag"),
        **arch_kwargs,
    )
    load_state_dict_into(model, load_file(str(weights_path), device="cpu"), source=ref)
    model.model_config["pretrain"] = mc.get("pretrain")
    model.model_config["loaded_from"] = ref
    if (num_classes is not None and num_classes != model.num_classes) or new_head is not None:
        model.reset_classifier(model.num_classes if num_classes is None else num_classes, new_head)
    return model
