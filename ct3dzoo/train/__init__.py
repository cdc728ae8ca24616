"""Finetuning: :func:`finetune`, :func:`predict` and checkpoint helpers.

A thin, plain-PyTorch loop (see ``docs/finetuning.md``): CUDA-first mixed precision,
resumable atomic checkpoints, early stopping on validation AUROC and ``torchrun`` data
parallelism. The names load lazily, so ``ct3dzoo.train.cli`` (the ``ct3dzoo finetune``
parser) and ``ct3dzoo.train.config`` import without torchmetrics or the loop.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {
    "DiceAccumulator": "segmentation",
    "FinetuneConfig": "config",
    "FinetuneResult": "state",
    "aggregate_by_group": "metrics",
    "bootstrap_ci": "bootstrap",
    "classification_metrics": "metrics",
    "compare_sources": "compare",
    "finetune": "api",
    "load_checkpoint": "checkpoint",
    "predict": "inference",
    "segmentation_loss": "segmentation",
    "study_metrics": "bootstrap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ct3dzoo.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
