"""Finetuning: :func:`finetune`, :func:`predict` and checkpoint helpers.

A thin, plain-PyTorch loop (see ``docs/finetuning.md``): CUDA-first mixed precision,
resumable atomic checkpoints, early stopping on validation AUROC and ``torchrun`` data
parallelism.
"""

from .api import FinetuneResult, finetune
from .checkpoint import load_checkpoint
from .config import FinetuneConfig
from .inference import predict
from .metrics import aggregate_by_group, classification_metrics

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "aggregate_by_group",
    "classification_metrics",
    "finetune",
    "load_checkpoint",
    "predict",
]
