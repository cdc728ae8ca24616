"""``FinetuneConfig``: every :func:`ct3dzoo.finetune` option, its default and its help, once.

:func:`~ct3dzoo.train.api.finetune` builds one from its keyword options
(:meth:`FinetuneConfig.from_options`: an unknown option is an error naming the nearest valid
one), ``ct3dzoo finetune`` derives its flags from the fields (name, default, help, group),
and the checkpoint stores the fields marked ``reproduce`` to warn when a resumed run changes
them. This module imports neither torch nor anything else heavy, so the CLI can build its
parser cheaply.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import torch

__all__ = ["FinetuneConfig", "Freeze", "Precision", "Task"]

Task = Literal["binary", "multilabel", "multiclass", "segmentation"]
Freeze = Literal["none", "backbone", "stem"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: CLI argument groups of ``ct3dzoo finetune``
OPTIM, DATA, RUN = "optimisation", "data", "hardware and checkpoints"


def _opt(
    default: Any = MISSING,
    help: str = "",
    *,
    group: str = OPTIM,
    flags: tuple[str, ...] = (),
    type: Any = None,
    choices: tuple[Any, ...] | None = None,
    nargs: str | None = None,
    cli: bool = True,
    reproduce: bool = False,
) -> Any:
    """A config field. ``help``/``group``/``flags`` (extra CLI spellings)/``type``/``choices``/
    ``nargs`` describe the CLI flag (``type`` defaults to the default's type); ``cli=False``
    keeps it off the CLI; ``reproduce`` marks options a resumed run should not change."""
    meta = dict(help=help, group=group, flags=flags, cli=cli, reproduce=reproduce)
    meta.update(type=type, choices=choices, nargs=nargs)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Options of :func:`ct3dzoo.finetune` (all keyword-only; only ``out_dir`` is required).

    ``lr`` defaults to 1e-4: the usual AdamW rate for finetuning a pretrained backbone at
    small batch sizes (CT volumes give a batch of a few per GPU) - large enough to fit a new
    head in a few epochs, small enough not to wash out the pretrained features. Raise it
    (e.g. 1e-3) for a linear probe (``freeze="backbone"``) or training from scratch.
    """

    out_dir: str | Path = _opt(
        help="output folder: last/, best/, final/ checkpoints and log.jsonl",
        group=RUN,
        flags=("--out",),
    )
    epochs: int = _opt(10, "training epochs (the cosine schedule spans them; see resume)")
    lr: float = _opt(1e-4, "AdamW learning rate of the head (peak of the schedule)", reproduce=True)
    batch_size: int = _opt(2, "volumes per batch, per process", reproduce=True)
    grad_accum_steps: int = _opt(
        1, "batches per optimiser step (gradient accumulation)", flags=("--accum",), reproduce=True
    )
    weight_decay: float = _opt(0.05, "AdamW weight decay (weights only)", reproduce=True)
    backbone_lr_scale: float = _opt(
        1.0, "learning rate of everything but model.head, relative to lr", reproduce=True
    )
    freeze: Freeze = _opt(
        "none",
        "'backbone': train model.head only (linear probe); 'stem': fix model.stem_modules()",
        choices=get_args(Freeze),
        reproduce=True,
    )
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs", reproduce=True)
    min_lr_ratio: float = _opt(0.0, "the cosine schedule ends at lr * min_lr_ratio", reproduce=True)
    max_grad_norm: float | None = _opt(
        None, "clip the gradient norm to this", type=float, reproduce=True
    )
    task: Task | None = _opt(
        None,
        "default: inferred from the first label (a mask: segmentation) and model.num_classes",
        choices=get_args(Task),
    )
    pos_weight: float | Sequence[float] | torch.Tensor | None = _opt(
        None, "BCE weight of positives (one number, or one per label)", type=float, nargs="+"
    )
    monitor: str | None = _opt(
        None,
        "history key that picks the best epoch and drives early stopping (maximised; a *loss "
        "key is minimised). Default: val_study_auroc when the validation data has groups, "
        "else val_auroc; val_loss when the validation set holds one class only; val_dice "
        "for segmentation",
        type=str,
    )
    patience: int | None = _opt(None, "stop after this many epochs without improvement", type=int)
    min_delta: float = _opt(0.0, "smallest change of the monitor that counts as improvement")
    seed: int = _opt(
        0, "seeds the global torch RNG, data order and per-item augmentation", reproduce=True
    )
    balanced_sampling: bool = _opt(
        False, "draw items with weight 1/count(label)", group=DATA, flags=("--balanced",),
        reproduce=True,
    )  # fmt: skip
    num_workers: int = _opt(0, "DataLoader worker processes", group=DATA, flags=("--workers",))
    label_names: Sequence[str] | None = _opt(None, "names for per-label metric keys", cli=False)
    device: str | torch.device | None = _opt(
        None, "default: cuda:LOCAL_RANK if available, else cpu", group=RUN, type=str
    )
    precision: Precision = _opt(
        "auto",
        "auto: bf16 autocast on CUDA (fp16 + GradScaler without bf16), fp32 on CPU",
        group=RUN,
        choices=get_args(Precision),
        reproduce=True,
    )
    channels_last: bool | None = _opt(
        None,
        "channels_last_3d layout (default: on CUDA, except models with grouped 3D convolutions, "
        "e.g. X3D and CSN, which ran far slower in it)",
        group=RUN,
    )
    compile: bool = _opt(False, "torch.compile the model", group=RUN)
    grad_checkpointing: bool = _opt(False, "model.set_grad_checkpointing(True)", group=RUN)
    checkpoint_every_steps: int | None = _opt(
        None, "also write last/ every N optimiser steps", group=RUN, type=int,
        flags=("--checkpoint-every",),
    )  # fmt: skip
    resume: bool = _opt(
        False,
        "continue from out_dir/last (fresh start if none); a larger epochs extends a finished run",
        group=RUN,
    )
    restore_best: bool = _opt(
        True, "load the best epoch's weights into the model at the end", group=RUN
    )
    keep_checkpoints: bool = _opt(
        True,
        "write last/ (resumable, with optimiser state) and best/ each epoch; False writes only "
        "final/ and log.jsonl (no resume, no restore_best)",
        group=RUN,
    )
    progress: bool = _opt(True, "tqdm progress bar (rank 0)", group=RUN)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr_ratio", "min_delta"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.keep_checkpoints and (self.resume or self.restore_best):
            raise ValueError(
                "keep_checkpoints=False writes no last/ or best/, so it needs resume=False and "
                "restore_best=False"
            )
        for f in fields(self):
            choices = f.metadata["choices"]
            v = getattr(self, f.name)
            if choices and v not in choices and not (v is None and f.default is None):
                names = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
                raise ValueError(f"{f.name} must be {names}, got {v!r}")

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], *, base: FinetuneConfig | None = None
    ) -> FinetuneConfig:
        """A config from keyword options (over ``base`` when given).

        Raises ``TypeError`` for an unknown option, naming the nearest valid one, and for a
        missing ``out_dir``."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                initials = "".join(w[:1] for w in k.split("_"))  # learning_rate -> lr
                near = [initials] if initials in names else []
                near = near or difflib.get_close_matches(k, names, n=1, cutoff=0.6)
                hints.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise TypeError(
                f"finetune() got unknown option(s) {', '.join(hints)}; the options are the "
                f"fields of FinetuneConfig: {', '.join(names)}"
            )
        if base is not None:
            return replace(base, **options)
        if "out_dir" not in options:
            raise TypeError("finetune() needs out_dir= (the folder for checkpoints and log.jsonl)")
        return cls(**options)

    def reproducible(self) -> dict[str, Any]:
        """The options a resumed run should keep (stored in each checkpoint)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["reproduce"]}


def config_fields() -> tuple[Field[Any], ...]:
    """The fields of :class:`FinetuneConfig`, in declaration order."""
    return fields(FinetuneConfig)


def options_doc() -> str:
    """A reST bullet list of every option with its default and help (for docstrings)."""
    lines = []
    for f in fields(FinetuneConfig):
        default = "required" if f.default is MISSING else f"default ``{f.default!r}``"
        lines.append(f"- ``{f.name}`` ({default}): {f.metadata['help']}.")
    return "\n".join(lines)
