"""Reading upstream checkpoints safely and writing safetensors.

Upstream files are read with ``torch.load(weights_only=True)`` only; ct3dzoo's own files are
safetensors. :func:`read_checkpoint` returns a flat ``{key: tensor}`` state dict in the
upstream's own key naming (``module.`` prefixes stripped, ``{"model_state": ...}`` unwrapped).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CorruptCheckpointError, NotACheckpointError, UnsafeCheckpointError
from .atomic import atomic_path
from .hashing import sha256_file

__all__ = [
    "read_checkpoint",
    "read_safetensors",
    "save_safetensors",
    "sha256_file",
    "unwrap_state_dict",
]

#: containers upstream checkpoints put their state dict in
_WRAPPER_KEYS = ("model_state", "state_dict", "model", "module")
#: magic bytes of files people pass by mistake, with what they are
_NOT_CHECKPOINTS = (
    (b"\x1f\x8b", "a gzip file (e.g. a .nii.gz volume)"),
    (b"\x5c\x01\x00\x00", "a NIfTI-1 volume"),
    (b"\x1c\x02\x00\x00", "a NIfTI-2 volume"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
)


_TRUNCATED_ZIP = "a zip archive cut short"


def _is_tensor_dict(d: Mapping) -> bool:
    vals = list(d.values())
    return bool(vals) and sum(isinstance(v, torch.Tensor) for v in vals) >= max(1, len(vals) // 2)


def unwrap_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor state dict in a loaded checkpoint and strip a ``module.`` prefix."""
    sd = obj
    for _ in range(3):
        if isinstance(sd, Mapping) and not _is_tensor_dict(sd):
            inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping) or not _is_tensor_dict(sd):
        keys = list(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise NotACheckpointError(
            f"{source} holds no state dict of tensors (top level: {keys}); expected a "
            "torchvision state dict or pytorchvideo's {'model_state': {...}}"
        )
    out = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _what_is(path: Path) -> str | None:
    """Name the file type when ``path`` is clearly not a torch or safetensors checkpoint."""
    with open(path, "rb") as f:
        head = f.read(348)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # torch zip or legacy pickle
        return None
    if head.startswith(b"PK\x03\x04"):
        return _TRUNCATED_ZIP
    for magic, what in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return what
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "a NIfTI-1 volume"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    return "not a torch checkpoint (neither a zip archive nor a pickle)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat CPU state dict.

    ``.safetensors`` through safetensors; anything else (``.pth``, ``.pyth``, ``.pth.tar``,
    ``.pt``) through ``torch.load(weights_only=True)``. Raises :class:`NotACheckpointError`
    for files that are no checkpoint (a NIfTI volume, an image, ...) and
    :class:`UnsafeCheckpointError` for one that needs full unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    what = _what_is(path)
    if what == _TRUNCATED_ZIP:
        raise CorruptCheckpointError(
            f"{path} is a truncated or corrupt torch checkpoint (a zip archive without its "
            "end): the download or copy was cut short. Delete it and download or copy it again."
        )
    if what is not None:
        raise NotACheckpointError(
            f"{path} is not a checkpoint: it looks like {what}. Pass a weights file "
            "(.pth/.pyth/.pt/.safetensors) as pretrain=, or None for random init."
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as e:  # a pickle cut short, a zip member missing
        raise CorruptCheckpointError(
            f"{path} is a truncated or corrupt torch checkpoint; delete it and download or "
            f"copy it again. (torch said: {str(e).splitlines()[0]})"
        ) from None
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path} contains pickled objects other than tensors and plain containers; ct3dzoo "
            "only reads checkpoints with torch.load(weights_only=True). If you trust the file, "
            "re-save its tensors: torch.save(state_dict, 'clean.pth') and pass that path. "
            f"(torch said: {str(e).splitlines()[0]})"
        ) from None
    return unwrap_state_dict(obj, source=str(path))


def read_safetensors(path: str | os.PathLike, *, fix: str | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into a CPU state dict.

    A truncated or corrupt file raises :class:`CorruptCheckpointError` naming it; ``fix``
    says how to get a good copy (default: re-save it or download it again).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a .safetensors weights file")
    with open(path, "rb"):  # FileNotFoundError / PermissionError name the file
        pass
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError (not importable typed)
        size = path.stat().st_size if path.exists() else 0
        raise CorruptCheckpointError(
            f"{path} is not a readable safetensors file ({size:,} bytes; safetensors said: "
            f"{e}). It is truncated or corrupt. "
            f"{fix or 'Re-save it (save_pretrained / save_safetensors) or download it again'}."
        ) from None


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, *, metadata: dict[str, str]
) -> Path:
    """Write ``state_dict`` to ``path`` atomically; return the path.

    Tensors sharing storage, or views of a larger storage, are copied first (safetensors
    stores each tensor on its own).
    """
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if v.numel():
            storage = v.untyped_storage()
            ptr = storage.data_ptr()
            whole = storage.nbytes() == v.numel() * v.element_size()
            if ptr in seen or not whole or not v.is_contiguous():
                v = v.contiguous().clone()
            seen.add(ptr)
        tensors[k] = v
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
