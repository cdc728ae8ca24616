"""Class activation maps (Grad-CAM, LayerCAM) for every ct3dzoo architecture, through
``pytorch-grad-cam``; refuses layers whose map cannot resolve anything."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._model import CTModel
from ..errors import SaliencyWarning

__all__ = ["MIN_CAM_SIZE", "cam_layers", "check_classifier", "default_layer", "gradcam", "targets"]

#: a CAM layer's map must have at least this many voxels along every axis to be a default
#: (a 1x1x1 map is constant by construction; 2x2x2 says "which octant" at best)
MIN_CAM_SIZE = 4


def _require_grad_cam():
    try:
        from pytorch_grad_cam import GradCAM, LayerCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ImportError(
            "ct3dzoo.explain needs pytorch-grad-cam >= 1.5: pip install 'ct3dzoo[explain]'"
        ) from e
    return {"gradcam": GradCAM, "layercam": LayerCAM}, ClassifierOutputTarget


def default_layer(model: CTModel) -> str:
    """The module :func:`gradcam` hooks by default: the model's ``cam_layer()`` (its last
    stage). :func:`~ct3dzoo.explain.saliency` picks by map size instead (:func:`cam_layers`)."""
    return model.cam_layer()


def cam_layers(model: CTModel, input_size: Sequence[int]) -> list[str]:
    """The stage modules whose map at ``input_size`` ``(D, H, W)`` has at least
    :data:`MIN_CAM_SIZE` voxels along every axis, shallow to deep (the last stage as
    ``model.cam_layer()``). Raises ``ValueError`` when none has."""
    stages = model.stages()
    names = []
    for i, st in enumerate(stages):
        grid = [-(-int(n) // int(s)) for n, s in zip(input_size, st.stride)]
        if min(grid) >= MIN_CAM_SIZE:
            names.append(model.cam_layer() if i == len(stages) - 1 else st.module)
    if not names:
        raise ValueError(
            f"no stage of {model.arch or type(model).__name__} has a map of >= {MIN_CAM_SIZE} "
            f"voxels per axis at input {tuple(input_size)}: a CAM cannot resolve it. Use an "
            "input-resolution method (saliency(..., method='integrated_gradients')) or pass "
            "layer= explicitly"
        )
    return names


def check_classifier(model: CTModel, x: torch.Tensor) -> None:
    """Raise unless ``model`` is a classification CTModel and ``x`` a valid input for it."""
    if not isinstance(model, CTModel):
        raise TypeError(f"saliency takes a ct3dzoo CTModel, got {type(model).__name__}")
    if model.head.kind == "segmentation" or model.num_classes < 1:
        raise ValueError(
            "saliency explains a classification logit: load the model with num_classes >= 1 "
            "and a classification head"
        )
    model.check_input(x)


def targets(model: CTModel, x: torch.Tensor, target: int | Sequence[int] | None) -> list[int]:
    """One class index per volume: ``target`` checked, or each volume's highest logit."""
    if target is None:
        if model.num_classes == 1:
            return [0] * x.shape[0]
        with torch.no_grad():
            return [int(i) for i in model(x).argmax(1)]
    idx = [target] * x.shape[0] if isinstance(target, int) else [int(t) for t in target]
    if len(idx) != x.shape[0] or any(not 0 <= t < model.num_classes for t in idx):
        raise ValueError(
            f"target must be a class index in [0, {model.num_classes}) or one per volume "
            f"({x.shape[0]}), got {target!r}"
        )
    return idx


def warn_constant(maps: torch.Tensor, what: str) -> None:
    """Warn (:class:`~ct3dzoo.errors.SaliencyWarning`) naming the volumes whose map is flat."""
    flat = maps.flatten(1)
    const = [i for i in range(len(flat)) if float(flat[i].max() - flat[i].min()) == 0.0]
    if const:
        warnings.warn(
            f"{what}: the map of volume(s) {const} is constant ({float(flat[const[0]].max()):g}):"
            " no voxel has positive evidence for the target, so it shows nothing. Try another "
            "target, method or layer",
            SaliencyWarning,
            stacklevel=3,
        )


def gradcam(
    model: CTModel,
    x: torch.Tensor,
    target: int | Sequence[int] | None = None,
    layer: str | nn.Module | Sequence[str] | None = None,
    *,
    method: str = "gradcam",
    native: list[tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """Grad-CAM (or LayerCAM, ``method="layercam"``) of ``model``'s logit ``target``.

    Args:
        model: a classification :class:`~ct3dzoo.CTModel` (``num_classes >= 1``).
        x: ``(B, in_chans, D, H, W)`` in [0, 1], the size the model takes.
        target: class index (one for all, or one per volume); ``None``: each volume's
            highest logit (with ``num_classes=1``: that logit).
        layer: module (or its name in ``model``; LayerCAM: a list of names, fused) to
            explain; default: the last stage (:func:`default_layer`). Its output must be a
            tensor the model's ``cam_reshape`` turns into ``(B, C, d, h, w)``.
        native: if given, each hooked layer's map size ``(d, h, w)`` is appended to it.

    Returns:
        ``(B, D, H, W)`` float32 in [0, 1] at the input size (each map scaled to max 1).

    Raises:
        ValueError: a hooked map is 1x1x1 (constant by construction: pick an earlier
            layer, or :func:`~ct3dzoo.explain.saliency`, whose default resolves).

    Warns:
        SaliencyWarning: a map is constant (no voxel has positive evidence).
    """
    check_classifier(model, x)
    cams, ClassifierOutputTarget = _require_grad_cam()
    if method not in cams:
        raise ValueError(f"method must be one of {sorted(cams)}, got {method!r}")
    names: list[str | nn.Module]
    if layer is None:
        names = [default_layer(model)]
    elif isinstance(layer, (str, nn.Module)):
        names = [layer]
    else:
        names = list(layer)
    modules = [n if isinstance(n, nn.Module) else model.get_submodule(n) for n in names]
    idx = targets(model, x, target) if target is not None else None
    tgts = None if idx is None else [ClassifierOutputTarget(t) for t in idx]
    shape = tuple(x.shape)
    grids: list[tuple[int, ...]] = []

    def reshape(out: torch.Tensor) -> torch.Tensor:
        out = model.cam_reshape(out, shape)
        if out.ndim != 5:
            raise ValueError(
                f"layer output {tuple(out.shape)} is not a (B, C, D, H, W) map; pick a layer "
                "from model.feature_info (default: the last stage)"
            )
        if len(grids) < len(modules):
            grids.append(tuple(out.shape[2:]))
        return out

    was_training, ckpt = model.training, model.grad_checkpointing
    model.eval()
    model.grad_checkpointing = False
    seen: list[bool] = []
    probes = [m.register_forward_hook(lambda *_: seen.append(True)) for m in modules]
    try:
        with (
            torch.enable_grad(),
            cams[method](model=model, target_layers=modules, reshape_transform=reshape) as cam,
        ):
            maps = cam(input_tensor=x, targets=tgts)
    except AttributeError:
        if len(seen) >= len(modules):
            raise
        raise ValueError(
            f"layer {layer or default_layer(model)!r} is not called in the forward pass; pick "
            "a module from model.feature_info.module_name()"
        ) from None
    finally:
        for p in probes:
            p.remove()
        model.train(was_training)
        model.grad_checkpointing = ckpt
    tiny = [(n if isinstance(n, str) else type(n).__name__, g) for n, g in zip(names, grids)]
    tiny = [(n, g) for n, g in tiny if np.prod(g) == 1]
    if tiny:
        raise ValueError(
            f"the map of layer {tiny[0][0]!r} is {'x'.join(map(str, tiny[0][1]))} for input "
            f"{'x'.join(map(str, shape[2:]))}: a CAM there is constant by construction. Pick an "
            "earlier layer (model.feature_info) or call ct3dzoo.explain.saliency(model, x), "
            "whose default resolves"
        )
    if native is not None:
        native.extend(grids)
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
    if maps.shape[1:] != shape[2:]:  # zoom rounds sizes; never seen, but say so
        raise RuntimeError(f"Grad-CAM map {maps.shape} does not match the input {shape}")
    out = torch.from_numpy(maps)
    warn_constant(out, method)
    return out
