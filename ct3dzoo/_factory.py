"""The factory: ``create_model`` / ``load`` (architecture names, ``hf-hub:`` and ``local-dir:``)
and ``fetch``. Importing it registers every family (``ct3dzoo.models``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import models  # noqa: F401  (registers every family)
from ._builder import build_model
from ._features import FeatureListNet
from ._io import weights as _weights
from ._io.checkpoint import read_checkpoint
from ._loading import load_state_dict_into
from ._model import CTModel
from ._registry import (
    get_arch,
    get_pretrained_cfg,
    register_loader,
    resolve_tag,
    split_name,
    tags_of,
)
from ._saved import is_model_folder, load_saved
from ._specs import ModelOptions
from .errors import CheckpointMismatchError
from .heads import HeadSpec

__all__ = ["create_model", "fetch", "load"]

_CKPT_SUFFIXES = (".pth", ".pt", ".pyth", ".tar", ".ckpt", ".bin", ".safetensors")
_D = ModelOptions  # defaults are read from the dataclass, never restated here


def _looks_like_path(pretrain: Any) -> bool:
    if isinstance(pretrain, os.PathLike):
        return True
    return isinstance(pretrain, str) and (
        os.sep in pretrain or pretrain.endswith(_CKPT_SUFFIXES) or os.path.exists(pretrain)
    )


def create_model(
    arch: str,
    *,
    num_classes: int = _D.num_classes,
    in_chans: int = _D.in_chans,
    head: HeadSpec = _D.head,
    drop_rate: float = _D.drop_rate,
    num_slices: int | None = _D.num_slices,
    image_size: int | tuple[int, int] | None = _D.image_size,
    pretrained_tag: str | None = None,
    features_only: bool = False,
    out_indices: int | tuple[int, ...] | None = None,
    **arch_kwargs: Any,
) -> CTModel | FeatureListNet:
    """Build ``arch`` (or ``arch.tag``) with random weights, its stem folded with the weights'
    mean/std. Options as :func:`load`."""
    # the keyword arguments named like ModelOptions fields (validated there)
    opts = ModelOptions(**{k: v for k, v in locals().items() if k in ModelOptions.names()})
    name, tag = split_name(arch)
    get_arch(name)
    model = build_model(name, resolve_tag(name, pretrained_tag or tag), opts, arch_kwargs)
    return _features(model, features_only, out_indices)


def _features(
    model: CTModel, features_only: bool, out_indices: int | tuple[int, ...] | None
) -> CTModel | FeatureListNet:
    if not features_only:
        if out_indices is not None:
            raise ValueError("out_indices is used only with features_only=True")
        return model
    return FeatureListNet(model, out_indices)


def load(
    arch: str,
    pretrain: str | os.PathLike | None = "kinetics",
    *,
    num_classes: int = _D.num_classes,
    in_chans: int = _D.in_chans,
    head: HeadSpec = _D.head,
    drop_rate: float = _D.drop_rate,
    num_slices: int | None = _D.num_slices,
    image_size: int | tuple[int, int] | None = _D.image_size,
    progress: bool = True,
    revision: str | None = None,
    features_only: bool = False,
    out_indices: int | tuple[int, ...] | None = None,
    **arch_kwargs: Any,
) -> CTModel | FeatureListNet:
    """Build a CT model with adapted pretrained weights.

    Args:
        arch: a name from :func:`list_models` (optionally ``arch.tag``), or
            ``"hf-hub:ORG/NAME"`` / ``"local-dir:PATH"`` for a model saved with
            ``save_pretrained``.
        pretrain: the arch's default weights by their source (``"kinetics"`` for video
            archs, ``"imagenet"`` for the 2D baselines, ...), a weights tag
            (``"kinetics400"``, ...), ``None`` (random init), or a path to a checkpoint in the
            upstream's own format (torchvision ``.pth`` state dict, pytorchvideo ``.pyth``
            ``{"model_state": ...}``) or a ``.safetensors`` file.
        num_classes: outputs of the new head; 0 returns pre-logits ``(B, num_features)``.
        in_chans: input channels (1: one HU window; 3: three windows as RGB; n: repeat+rescale).
        head: ``"linear"``, ``"mlp"``, ``"attention"`` (attention pooling over the
            spatio-temporal tokens), ``"segmentation"`` (a light FPN decoder over every stage:
            ``model(x)`` gives ``(B, num_classes, D, H, W)`` logits at the input size), an
            ``nn.Module`` or ``(num_features, num_classes) -> nn.Module``.
        drop_rate: dropout before the classifier.
        num_slices, image_size: the input size D and (H, W) for architectures with
            size-dependent parameters (MViT position embeddings, resampled from the native
            size); other architectures run at any size and ignore them.
        progress: show a download progress bar.
        revision: Hub revision for ``hf-hub:`` names. For ``hf-hub:``/``local-dir:`` the saved
            config is used; options given here that differ from the defaults override it.
        features_only: return a module whose ``forward(x)`` gives the list of stage maps
            ``(B, C, D', H', W')`` and whose ``feature_info`` gives each level's channels,
            stride ``(d, h, w)`` and module name (timm's ``features_only``).
        out_indices: the stages it returns (timm's meaning: ``None`` all, an int ``n`` the
            last ``n``, a tuple of indices); only with ``features_only``.
        **arch_kwargs: passed to the upstream builder (e.g. ``stochastic_depth_prob``).

    Returns:
        a :class:`CTModel` taking ``(B, in_chans, D, H, W)`` float in [0, 1] (with
        ``features_only``, a ``FeatureListNet`` around it).

    Raises:
        ct3dzoo.errors.WeightsUnavailableError: the weights are neither cached nor
            downloadable (the message says how to get them by hand). Never falls back to
            random weights.
    """
    # the keyword arguments named like ModelOptions fields (validated there)
    opts = ModelOptions(**{k: v for k, v in locals().items() if k in ModelOptions.names()})
    if isinstance(arch, (str, os.PathLike)) and is_model_folder(arch):
        arch = f"local-dir:{arch}"
    if isinstance(arch, str) and arch.startswith(("hf-hub:", "local-dir:")):
        overrides = {k: getattr(opts, k) for k in opts.names() if not opts.is_default(k)}
        model = load_saved(arch, revision=revision, progress=progress, **overrides, **arch_kwargs)
        return _features(model, features_only, out_indices)

    name, tag_in_name = split_name(arch)
    spec = get_arch(name)
    if pretrain == "kinetics" and "kinetics" not in spec.pretrain_aliases:
        raise ValueError(
            f"{name} has no Kinetics weights: use pretrain={spec.pretrain_aliases[0]!r} "
            f"(tags: {', '.join(tags_of(name))}), a checkpoint path, or None for random init"
        )
    from_file = pretrain is not None and _looks_like_path(pretrain)
    if from_file or pretrain is None:
        tag = resolve_tag(name, tag_in_name)
    else:
        tag = str(pretrain) if pretrain not in spec.pretrain_aliases else tag_in_name
        tag = resolve_tag(name, tag)
        if tag is None:
            raise ValueError(
                f"{name} has no default pretrained weights; pass pretrain=None for random "
                "init or a checkpoint path"
            )
        get_pretrained_cfg(f"{name}.{tag}")  # raises with the nearest tags when unknown
    model = build_model(name, tag, opts, arch_kwargs)
    if pretrain is None:
        model.model_config["pretrain"] = None
        return _features(model, features_only, out_indices)
    if from_file:
        path = Path(pretrain)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrain={str(pretrain)!r} is not a file. Pass an existing checkpoint path, a "
                f"weights tag ({', '.join(tags_of(name)) or 'none known'}) or None."
            )
        sd = read_checkpoint(path)
        source = str(path)
    else:
        sd = _weights.load_pretrained_state_dict(
            model.pretrained_cfg,
            progress=progress,
            validate=_fits(model.pretrained_cfg, model.pretrained_cfg.name, model),
        )
        source = f"{name}.{tag}"
    load_state_dict_into(model, sd, source=source)
    model.model_config["pretrain"] = source if not from_file else "file"
    return _features(model, features_only, out_indices)


register_loader(load)


def _fits(spec: Any, source: str, model: CTModel | None = None) -> Any:
    """A validator for ``_io.weights``: refuse a state dict whose keys and shapes do not fit
    ``model`` (default: ``spec``'s architecture with default options), before anything is
    cached."""

    def check(sd: dict[str, Any]) -> None:
        target = model or build_model(spec.arch, spec.tag, ModelOptions(num_classes=0), {})
        try:
            load_state_dict_into(target, sd, source=source)
        except CheckpointMismatchError as e:
            what = (
                f"the file downloaded for {spec.name} does not fit its architecture"
                if source == spec.name
                else f"{source} is not a checkpoint of {spec.name}"
            )
            raise CheckpointMismatchError(f"{what}; nothing was cached.\n  {e}") from None

    return check


def fetch(name: str, *, from_file: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Fill the ct3dzoo cache with the weights ``arch.tag`` (or ``arch``: its default weights).

    With ``from_file``, an already downloaded upstream file is checked first: that it is a
    checkpoint at all, against every known hash, then that its keys and shapes fit the
    architecture; then it is converted (no network). Otherwise the Hub file or upstream URL
    is used, with the same checks before caching. Returns the local safetensors path.
    """
    spec = get_pretrained_cfg(name)
    source = str(from_file) if from_file is not None else spec.name
    return _weights.fetch(
        spec, from_file=from_file, progress=progress, validate=_fits(spec, source)
    )
