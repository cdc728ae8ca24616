"""Grad-CAM for every ct3dzoo architecture, through ``pytorch-grad-cam``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .._model import CTModel

__all__ = ["default_layer", "gradcam"]


def _require_grad_cam():
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ImportError(
            "ct3dzoo.explain needs pytorch-grad-cam >= 1.5: pip install 'ct3dzoo[explain]'"
        ) from e
    return GradCAM, ClassifierOutputTarget


def default_layer(model: CTModel) -> str:
    """The module Grad-CAM hooks by default: the model's ``cam_layer()`` (its last stage)."""
    return model.cam_layer()


def gradcam(
    model: CTModel,
    x: torch.Tensor,
    target: int | Sequence[int] | None = None,
    layer: str | nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM saliency of ``model``'s logit ``target`` for volumes ``x``.

    Args:
        model: a classification :class:`~ct3dzoo.CTModel` (``num_classes >= 1``).
        x: ``(B, in_chans, D, H, W)`` in [0, 1], the size the model takes.
        target: class index (one for all, or one per volume); ``None``: each volume's
            highest logit (with ``num_classes=1``: that logit).
        layer: module (or its name in ``model``) to explain; default: the last stage
            (:func:`default_layer`). Its output must be a tensor the model's
            ``cam_reshape`` turns into ``(B, C, d, h, w)``.

    Returns:
        ``(B, D, H, W)`` float32 in [0, 1] at the input size (each map scaled to max 1;
        all zero when no voxel has positive evidence).
    """
    if not isinstance(model, CTModel):
        raise TypeError(f"gradcam takes a ct3dzoo CTModel, got {type(model).__name__}")
    if model.head.kind == "segmentation" or model.num_classes < 1:
        raise ValueError(
            "gradcam explains a classification logit: load the model with num_classes >= 1 "
            "and a classification head"
        )
    GradCAM, ClassifierOutputTarget = _require_grad_cam()
    model.check_input(x)
    module = (
        model.get_submodule(layer or default_layer(model))
        if not isinstance(layer, nn.Module)
        else layer
    )
    targets = None
    if target is not None:
        idx = [target] * x.shape[0] if isinstance(target, int) else list(target)
        if len(idx) != x.shape[0] or any(not 0 <= t < model.num_classes for t in idx):
            raise ValueError(
                f"target must be a class index in [0, {model.num_classes}) or one per volume "
                f"({x.shape[0]}), got {target!r}"
            )
        targets = [ClassifierOutputTarget(t) for t in idx]
    shape = tuple(x.shape)

    def reshape(out: torch.Tensor) -> torch.Tensor:
        out = model.cam_reshape(out, shape)
        if out.ndim != 5:
            raise ValueError(
                f"layer output {tuple(out.shape)} is not a (B, C, D, H, W) map; pick a layer "
                "from model.feature_info (default: the last stage)"
            )
        return out

    was_training, ckpt = model.training, model.grad_checkpointing
    model.eval()
    model.grad_checkpointing = False
    seen: list[bool] = []
    probe = module.register_forward_hook(lambda *_: seen.append(True))
    try:
        with GradCAM(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            maps = cam(input_tensor=x, targets=targets)
    except AttributeError:
        if seen:
            raise
        raise ValueError(
            f"layer {layer or default_layer(model)!r} is not called in the forward pass; pick "
            "a module from model.feature_info.module_name()"
        ) from None
    finally:
        probe.remove()
        model.train(was_training)
        model.grad_checkpointing = ckpt
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
    if maps.shape[1:] != shape[2:]:  # zoom rounds sizes; never seen, but say so
        raise RuntimeError(f"Grad-CAM map {maps.shape} does not match the input {shape}")
    return torch.from_numpy(maps)
