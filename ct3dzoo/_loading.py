"""Putting a state dict into a built model: upstream key names mapped, RGB stems folded
(``adapt.fold_stem_weight``), the source classifier kept when it fits, and a strict load
whose errors name the keys and shapes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ._model import CTModel
from .adapt import FoldedStemConv, fold_stem_weight, offset_weight
from .errors import CheckpointMismatchError

__all__ = ["load_state_dict_into"]


def _fmt(items: list[str], n: int = 8) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_state_dict_into(
    model: CTModel, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Load an upstream state dict (upstream key names, RGB stem) or a ct3dzoo one (keys
    starting ``backbone.``) into ``model``, strictly; errors name keys and shapes."""
    sd = dict(state_dict)
    if any(k.startswith("backbone.") for k in sd):
        _strict_load(model, sd, source=source, skip_head=False)
        return
    spec = model.pretrained_cfg
    sd = model.adapt_upstream_state_dict(sd)
    classifier_prefixes = spec.classifier if spec is not None else ()
    classifier = {
        k: sd.pop(k)
        for k in list(sd)
        if any(k == p or k.startswith(p + ".") for p in classifier_prefixes)
    }
    new: dict[str, torch.Tensor] = {}
    for stem in spec.stem if spec is not None else ():
        target = model.upstream_key(stem)
        try:
            conv = model.get_submodule(target)
        except AttributeError:
            raise RuntimeError(
                f"registry error: stem {stem!r} is not a module of {model.arch}"
            ) from None
        assert isinstance(conv, FoldedStemConv)
        w = sd.pop(f"{stem}.weight", None)
        if w is None:
            raise CheckpointMismatchError(
                f"{source}: no stem weight {stem}.weight; is this a {model.arch} checkpoint?"
            )
        expect = (conv.out_channels, len(conv.mean), *conv.kernel_size)
        if tuple(w.shape) != expect:
            raise CheckpointMismatchError(
                f"{source}: stem {stem}.weight has shape {tuple(w.shape)}, {model.arch} expects "
                f"{expect}"
            )
        new[f"{target}.weight"] = fold_stem_weight(w, conv.mean, conv.std, conv.in_chans)
        new[f"{target}.offset"] = offset_weight(w, conv.mean, conv.std)
        b = sd.pop(f"{stem}.bias", None)
        if conv.bias is not None:
            if b is None:
                raise CheckpointMismatchError(f"{source}: missing key {stem}.bias")
            new[f"{target}.bias"] = b
        elif b is not None:
            raise CheckpointMismatchError(f"{source}: unexpected key {stem}.bias")
    for k, v in sd.items():
        new[model.upstream_key(k)] = v
    _load_source_classifier(model, classifier, new)
    _strict_load(model, new, source=source, skip_head=True)


def _load_source_classifier(
    model: CTModel, classifier: dict[str, torch.Tensor], new: dict[str, torch.Tensor]
) -> None:
    """Keep the source classifier when the new head is linear with the same class count."""
    fc = model.head.fc
    if not isinstance(fc, torch.nn.Linear) or model.head.kind != "linear":
        return
    ws = [v for k, v in classifier.items() if k.endswith("weight")]
    bs = [v for k, v in classifier.items() if k.endswith("bias")]
    if len(ws) != 1 or len(bs) != 1:
        return
    w = ws[0].reshape(ws[0].shape[0], -1)
    if tuple(w.shape) == tuple(fc.weight.shape) and tuple(bs[0].shape) == tuple(fc.bias.shape):
        new["head.fc.weight"] = w
        new["head.fc.bias"] = bs[0]


def _strict_load(
    model: CTModel, sd: dict[str, torch.Tensor], *, source: str, skip_head: bool
) -> None:
    own = model.state_dict()
    fresh = tuple(model.fresh_prefixes) if skip_head else ()
    expected = {k for k in own if not (fresh and k.startswith(fresh))}
    given = set(sd)
    missing = sorted(k for k in expected - given if not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in given - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in given & set(own)
        if tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {model.arch} (in_chans={model.in_chans}):"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_fmt(shapes, 5)}")
        parts.append("Is it a checkpoint of this architecture, built with the same arch_kwargs?")
        raise CheckpointMismatchError("\n  ".join(parts))
    for k in expected - given:  # num_batches_tracked absent from old checkpoints
        sd[k] = own[k]
    for k in own:  # modules the upstream does not have keep their fresh initialisation
        if fresh and k.startswith(fresh) and k not in sd:
            sd[k] = own[k]
    model.load_state_dict(sd, strict=True)
