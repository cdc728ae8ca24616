"""The model ``ct3dzoo demo`` finetunes: any model reference the other commands take.

``--arch`` is an architecture name (``r3d_18``), a name with its weights tag
(``r3d_18.kinetics400``), a folder written by ``save_pretrained``/``finetune`` (its
``final/``), ``local-dir:PATH`` or ``hf-hub:ORG/NAME``. An architecture starts from its
pretrained weights when they can be had and says so plainly when they cannot; a saved model
starts from its own weights (its head reset to the demo's one output when it has another).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._specs import ModelOptions

__all__ = ["check_demo_model", "load_demo_model"]

#: the model options the demo exposes (``--head``, ``--drop-rate``): defaults and help come
#: from :class:`ct3dzoo._specs.ModelOptions`; the demo's task fixes ``num_classes=1``.
MODEL_OPTIONS = ("head", "drop_rate")


def check_demo_model(ref: str, pretrain: str | None) -> bool:
    """Refuse a reference that cannot be loaded before any data is written (an unknown
    architecture with the nearest names, a missing folder: `check_reference`; a tag with
    ``pretrain=None``). True for a saved model, False for an architecture name."""
    from ct3dzoo import models  # noqa: F401  (fills the registry that get_arch reads)
    from ct3dzoo._references import check_reference
    from ct3dzoo._registry import split_name

    if check_reference(ref):
        return True
    name, tag = split_name(ref)
    if tag is not None and pretrain is None:
        raise ValueError(
            f"--arch {ref} names the {tag!r} weights but --no-pretrain asks for none: "
            f"drop one (--arch {name} --no-pretrain for random weights)"
        )
    return False


def load_demo_model(
    ref: str,
    pretrain: str | None,
    say: Callable[[str], None],
    progress: bool,
    seed: int,
    options: ModelOptions | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, str | None]:
    """The model and the weights it starts from (``arch.tag``, the saved model's reference,
    or None for random weights)."""
    import torch

    import ct3dzoo
    from ct3dzoo._references import load_reference
    from ct3dzoo._registry import get_arch, split_name
    from ct3dzoo.errors import WeightsUnavailableError

    if check_demo_model(ref, pretrain):
        model = load_reference(ref, progress=progress)
        note = "its own weights"
        if model.num_classes != 1:
            model.reset_classifier(1)
            note += ", its head reset to 1 output"
        say(f"weights: {ref} (a saved {model.model_config['arch']}: {note})")
        return model, ref

    options = options or ModelOptions()
    kw = {name: getattr(options, name) for name in ("num_classes", *MODEL_OPTIONS)}
    kw.update(arch_kwargs or {})
    arch, tag = split_name(ref)
    pretrain = tag or pretrain
    if pretrain == "kinetics":
        aliases = list(get_arch(arch).pretrain_aliases)
        if aliases and "kinetics" not in aliases:
            say(f"weights: {arch} has no Kinetics weights; trying its {aliases[0]!r} weights")
            pretrain = aliases[0]
    if pretrain is not None:
        try:
            model = ct3dzoo.load(arch, pretrain=pretrain, progress=progress, **kw)
            cfg = ct3dzoo.get_pretrained_cfg(f"{arch}.{model.model_config['tag']}")
            name = f"{cfg.arch}.{cfg.tag}"
            say(f"weights: {name} ({cfg.dataset or 'Kinetics'}), adapted to 1 channel")
            return model, name
        except WeightsUnavailableError as e:
            reason = str(e).strip().splitlines()[0]
            say(
                f"weights: the {pretrain!r} weights of {arch} are not cached and could not be "
                f"downloaded ({reason}).\n"
                "         FALLING BACK TO RANDOM INITIALISATION (pretrain=None) for this demo. "
                f"To use them: `ct3dzoo fetch {arch}` with internet, or "
                f"`ct3dzoo fetch {arch} --from FILE` (see docs/weights.md)."
            )
    else:
        say("weights: none requested (pretrain=None): random initialisation")
    torch.manual_seed(seed)  # the same random weights whether or not a load was tried first
    return ct3dzoo.load(arch, pretrain=None, **kw), None
