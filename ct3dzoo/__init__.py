"""ct3dzoo: video-pretrained 3D networks adapted exactly to single-channel chest CT.

>>> import ct3dzoo
>>> model = ct3dzoo.load("slowfast_r50", pretrain="kinetics", num_classes=1)

Models take ``(B, in_chans, D, H, W)`` float volumes, HU already windowed to [0, 1].
``import ct3dzoo`` is light: torch and the model families load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

__all__ = [
    "CTModel",
    "FinetuneResult",
    "StudyPrediction",
    "__version__",
    "create_model",
    "errors",
    "fetch",
    "finetune",
    "get_arch",
    "get_pretrained_cfg",
    "list_models",
    "list_pretrained",
    "load",
    "predict",
    "predict_study",
]
_LAZY_MODULES = ("data", "errors", "explain", "phantom", "viz", "train")
#: public name -> the module that defines it (imported on first access)
_LAZY_NAMES = {
    "create_model": "._factory",
    "load": "._factory",
    "fetch": "._factory",
    "CTModel": "._model",
    "get_arch": "._registry",
    "get_pretrained_cfg": "._registry",
    "list_models": "._registry",
    "list_pretrained": "._registry",
    "finetune": ".train",
    "predict": ".train",
    "FinetuneResult": ".train",
    "predict_study": ".train.study",
    "StudyPrediction": ".train.study",
}


def __getattr__(name: str) -> Any:  # PEP 562: keep `import ct3dzoo` light
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        importlib.import_module("._factory", __name__)  # registers every family first
        value = getattr(importlib.import_module(_LAZY_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ct3dzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_MODULES))
