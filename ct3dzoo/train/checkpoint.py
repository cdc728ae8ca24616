"""Atomic training checkpoints: ``model.safetensors`` + ``state.pt`` in one directory.

A checkpoint directory is written complete under a temporary name and then swapped in with
``os.replace`` (``ct3dzoo._io.atomic.atomic_path``), so a run killed at any moment leaves
either the old or the new checkpoint, never a mix. ``state.pt`` holds only tensors and plain containers (RNG states included), so
it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._io.atomic import atomic_path, atomic_write_text, fsync_dir
from .._publish import CONFIG_NAME, build_config
from ..data.pipeline import Preprocessing

__all__ = [
    "STATE_NAME",
    "WEIGHTS_NAME",
    "find_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.pt"


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    # Copies: safetensors refuses shared or non-contiguous (channels_last) storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _write_model_files(model: nn.Module, folder: Path) -> None:
    """``config.json`` and ``preprocessor_config.json`` of a ct3dzoo model, so a checkpoint
    folder loads like a saved model (``ct3dzoo.load(folder)``, ``ct3dzoo predict``)."""
    if (getattr(model, "model_config", None) or {}).get("arch"):
        atomic_write_text(folder / CONFIG_NAME, json.dumps(build_config(model), indent=2) + "\n")
    pp = getattr(model, "preprocessing", None)
    if isinstance(pp, Preprocessing):
        pp.save(folder)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``model``'s weights and ``state`` as the directory ``path``.

    ``metadata`` (JSON-serialisable values) goes into the safetensors header.
    """
    path = Path(path)
    prev = path.with_name(f".{path.name}.prev")
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    # flushed here (not by atomic_path) so that the old checkpoint is parked only right
    # before the rename: a kill finds ``path`` or ``.prev`` complete, never neither for long
    with atomic_path(path, fsync=False) as tmp:
        tmp.mkdir()
        save_file(_weights(model), tmp / WEIGHTS_NAME, metadata=meta)
        if state is not None:
            torch.save(state, tmp / STATE_NAME)
        _write_model_files(model, tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        # A folder cannot replace a non-empty one: park the old checkpoint first. A crash
        # before the swap leaves ``.prev``, which find_checkpoint() falls back to.
        if path.exists():
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(path, prev)
    fsync_dir(path.parent)
    shutil.rmtree(prev, ignore_errors=True)
    return path


def find_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """``path`` if it holds a checkpoint, else the parked copy of a half-finished swap."""
    path = Path(path)
    for cand in (path, path.with_name(f".{path.name}.prev")):
        if (cand / WEIGHTS_NAME).is_file():
            return cand
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint directory written by :func:`finetune`.

    Loads the weights into ``model`` (strictly) when given, and returns the training state
    (``{}`` for a weights-only checkpoint) with the safetensors metadata under ``"metadata"``.
    """
    found = find_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint ({WEIGHTS_NAME}) in {path}")
    if model is not None:
        model.load_state_dict(load_file(found / WEIGHTS_NAME), strict=True)
    state: dict[str, Any] = {}
    if (found / STATE_NAME).is_file():
        state = torch.load(found / STATE_NAME, map_location=map_location, weights_only=True)
    from safetensors import safe_open

    with safe_open(found / WEIGHTS_NAME, framework="pt") as f:
        raw = f.metadata() or {}
    state["metadata"] = {k: json.loads(v) for k, v in raw.items()}
    return state


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), Python and NumPy RNG states as tensors and plain containers."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    state["python"] = [version, torch.tensor(internal, dtype=torch.int64), gauss]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
