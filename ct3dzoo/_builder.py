"""``load()``: build an architecture and put (adapted) weights into it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._model import CTModel
from ._registry import get_arch, get_pretrained_cfg, resolve_tag, split_name
from .adapt import FoldedStemConv, fold_stem_weight, offset_weight
from .heads import HeadSpec

__all__ = ["create_model", "load", "load_state_dict_into"]

_CKPT_SUFFIXES = (".pth", ".pt", ".pyth", ".tar", ".ckpt", ".bin", ".safetensors")


def _looks_like_path(pretrain: Any) -> bool:
    if isinstance(pretrain, os.PathLike):
        return True
    return isinstance(pretrain, str) and (
        os.sep in pretrain or pretrain.endswith(_CKPT_SUFFIXES) or os.path.exists(pretrain)
    )


def create_model(
    arch: str,
    *,
    num_classes: int = 1,
    in_chans: int = 1,
    head: HeadSpec = "linear",
    drop_rate: float = 0.0,
    num_slices: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    pretrained_tag: str | None = None,
    **arch_kwargs: Any,
) -> CTModel:
    """Build ``arch`` with random weights (its stem folded with the weights' mean/std)."""
    arch, tag = split_name(arch)
    spec = get_arch(arch)
    tag = resolve_tag(arch, pretrained_tag or tag)
    cfg = get_pretrained_cfg(f"{arch}.{tag}") if tag else {"arch": arch, "tag": None}
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    model = spec.builder(
        num_classes=num_classes,
        in_chans=in_chans,
        head=head,
        drop_rate=drop_rate,
        num_slices=num_slices,
        image_size=None if image_size is None else tuple(image_size),
        pretrained_cfg=cfg,
        **arch_kwargs,
    )
    model.arch = arch
    model.model_config = {
        "arch": arch,
        "tag": tag,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "head": head if isinstance(head, str) else "custom",
        "drop_rate": drop_rate,
        "num_slices": num_slices,
        "image_size": None if image_size is None else list(image_size),
        "arch_kwargs": dict(arch_kwargs),
    }
    return model


def load(
    arch: str,
    pretrain: str | os.PathLike | None = "kinetics",
    *,
    num_classes: int = 1,
    in_chans: int = 1,
    head: HeadSpec = "linear",
    drop_rate: float = 0.0,
    num_slices: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    progress: bool = True,
    revision: str | None = None,
    **arch_kwargs: Any,
) -> CTModel:
    """Build a CT model from a video architecture, with adapted pretrained weights.

    Args:
        arch: a name from :func:`list_models` (optionally ``arch.tag``), or
            ``"hf-hub:ORG/NAME"`` / ``"local-dir:PATH"`` for a model saved with
            ``save_pretrained``.
        pretrain: ``"kinetics"`` (the arch's default Kinetics weights), a weights tag
            (``"kinetics400"``, ...), ``None`` (random init), or a path to a checkpoint in the
            upstream's own format (torchvision ``.pth`` state dict, pytorchvideo ``.pyth``
            ``{"model_state": ...}``) or a ``.safetensors`` file.
        num_classes: outputs of the new head; 0 returns pre-logits ``(B, num_features)``.
        in_chans: input channels (1: one HU window; 3: three windows as RGB; n: repeat+rescale).
        head: ``"linear"``, ``"mlp"``, ``"attention"`` (attention pooling over the
            spatio-temporal tokens), an ``nn.Module`` or ``(num_features, num_classes) -> nn.Module``.
        drop_rate: dropout before the classifier.
        num_slices, image_size: the input size for architectures with size-dependent
            parameters (MViT position embeddings, resampled from the native size).
        progress: show a download progress bar.
        revision: Hub revision for ``hf-hub:`` names. For ``hf-hub:``/``local-dir:`` the saved
            config is used; options given here that differ from the defaults override it.
        **arch_kwargs: passed to the upstream builder (e.g. ``stochastic_depth_prob``).

    Returns:
        a :class:`CTModel` taking ``(B, in_chans, D, H, W)`` float in [0, 1].
    """
    if isinstance(arch, str) and arch.startswith(("hf-hub:", "local-dir:")):
        from . import _hub

        # arguments that differ from load()'s defaults override the saved config
        given = {"num_classes": num_classes, "in_chans": in_chans, "head": head,
                 "drop_rate": drop_rate, "num_slices": num_slices, "image_size": image_size}  # fmt: skip
        overrides = {k: v for k, v in given.items() if not _is_default(k, v)}
        return _hub.load_from_ref(
            arch, revision=revision, progress=progress, **overrides, **arch_kwargs
        )

    name, tag_in_name = split_name(arch)
    spec = get_arch(name)
    if pretrain == "kinetics" and "kinetics" not in spec.pretrain_aliases:
        raise ValueError(
            f"{name} has no Kinetics weights: use pretrain={spec.pretrain_aliases[0]!r} "
            f"(tags: {', '.join(_tags(name))}), a checkpoint path, or None for random init"
        )
    from_file = pretrain is not None and _looks_like_path(pretrain)
    if from_file or pretrain is None:
        tag = tag_in_name
    else:
        tag = str(pretrain) if pretrain not in spec.pretrain_aliases else tag_in_name
        tag = resolve_tag(name, tag)
        if tag is None:
            raise ValueError(
                f"{name} has no default pretrained weights; pass pretrain=None for random "
                "init or a checkpoint path"
            )
        get_pretrained_cfg(f"{name}.{tag}")  # raises with the nearest tags when unknown
    model = create_model(
        name,
        num_classes=num_classes,
        in_chans=in_chans,
        head=head,
        drop_rate=drop_rate,
        num_slices=num_slices,
        image_size=image_size,
        pretrained_tag=tag,
        **arch_kwargs,
    )
    if pretrain is None:
        model.model_config["pretrain"] = None
        return model
    if from_file:
        from ._weights import read_checkpoint

        path = Path(pretrain)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrain={str(pretrain)!r} is not a file. Pass an existing checkpoint path, a "
                f"weights tag ({', '.join(_tags(name)) or 'none known'}) or None."
            )
        sd = read_checkpoint(path)
        source = str(path)
    else:
        from ._weights import load_pretrained_state_dict

        sd = load_pretrained_state_dict(model.pretrained_cfg, progress=progress)
        source = f"{name}.{tag}"
    load_state_dict_into(model, sd, source=source)
    model.model_config["pretrain"] = source if not from_file else "file"
    return model


_LOAD_DEFAULTS = {"num_classes": 1, "in_chans": 1, "head": "linear", "drop_rate": 0.0,
                  "num_slices": None, "image_size": None}  # fmt: skip


def _is_default(key: str, value: Any) -> bool:
    default = _LOAD_DEFAULTS[key]
    return value is default or (isinstance(value, (int, float, str)) and value == default)


def _tags(arch: str) -> list[str]:
    from ._registry import list_pretrained

    return [k.partition(".")[2] for k in list_pretrained(f"{arch}.*")]


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
    cfg = model.pretrained_cfg
    sd = model.adapt_upstream_state_dict(sd)
    classifier_prefixes = tuple(cfg.get("classifier") or ())
    classifier = {
        k: sd.pop(k)
        for k in list(sd)
        if any(k == p or k.startswith(p + ".") for p in classifier_prefixes)
    }
    new: dict[str, torch.Tensor] = {}
    for stem in cfg.get("stem") or ():
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
            raise ValueError(
                f"{source}: no stem weight {stem}.weight; is this a {model.arch} checkpoint?"
            )
        expect = (conv.out_channels, len(conv.mean), *conv.kernel_size)
        if tuple(w.shape) != expect:
            raise ValueError(
                f"{source}: stem {stem}.weight has shape {tuple(w.shape)}, {model.arch} expects "
                f"{expect}"
            )
        new[f"{target}.weight"] = fold_stem_weight(w, conv.mean, conv.std, conv.in_chans)
        new[f"{target}.offset"] = offset_weight(w, conv.mean, conv.std)
        b = sd.pop(f"{stem}.bias", None)
        if conv.bias is not None:
            if b is None:
                raise ValueError(f"{source}: missing key {stem}.bias")
            new[f"{target}.bias"] = b
        elif b is not None:
            raise ValueError(f"{source}: unexpected key {stem}.bias")
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
        raise ValueError("\n  ".join(parts))
    for k in expected - given:  # num_batches_tracked absent from old checkpoints
        sd[k] = own[k]
    for k in own:  # modules the upstream does not have keep their fresh initialisation
        if fresh and k.startswith(fresh) and k not in sd:
            sd[k] = own[k]
    model.load_state_dict(sd, strict=True)
