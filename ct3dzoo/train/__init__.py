"""Finetuning: :func:`finetune`, :func:`predict` and checkpoint helpers.

A thin, plain-PyTorch loop (see ``docs/finetuning.md``): CUDA-first mixed precision,
resumable atomic checkpoints, early stopping on validation AUROC and ``torchrun`` data
parallelism.
"""

from .checkpoint import load_checkpoint
from .inference import predict
from .loop import FinetuneResult, finetune
from .metrics import aggregate_by_group, classification_metrics

__all__ = [
    "FinetuneResult",
    "aggregate_by_group",
    "classification_metrics",
    "finetune",
    "load_checkpoint",
    "predict",
]
