"""ct3dzoo: video-pretrained 3D networks adapted exactly to single-channel chest CT.

>>> import ct3dzoo
>>> model = ct3dzoo.load("slowfast_r50", pretrain="kinetics", num_classes=1)

Models take ``(B, in_chans, D, H, W)`` float volumes, HU already windowed to [0, 1].
"""

from __future__ import annotations

from typing import Any

from ._builder import create_model, load
from ._model import CTModel
from ._registry import get_pretrained_cfg, list_models, list_pretrained

__version__ = "0.1.0"

__all__ = [
    "CTModel",
    "FinetuneResult",
    "StudyPrediction",
    "__version__",
    "create_model",
    "finetune",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "load",
    "predict",
    "predict_study",
]
_LAZY_MODULES = ("data", "viz", "train")


def __getattr__(name: str) -> Any:  # lazy: keep `import ct3dzoo` light
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name in ("finetune", "predict", "FinetuneResult"):
        from . import train

        return getattr(train, name)
    if name in ("predict_study", "StudyPrediction"):
        from .train import study

        return getattr(study, name)
    raise AttributeError(f"module 'ct3dzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_MODULES))
