"""One entry point for saliency maps: :func:`saliency` (class activation maps through
``pytorch-grad-cam``, input-resolution attributions through ``captum``), and
:func:`resolve_saliency`, which says what a call would compute and at what resolution.

The default (``method=None``) is integrated gradients at the input resolution, chosen by
measurement on the demo's trained model (docs/looking_inside.md, docs/benchmarks.md): its
maximum fell within 1 voxel of the lesion in 24 of 32 held-out positives, Grad-CAM's (on the
finest stage) in 5, LayerCAM's in 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .._model import CTModel
from .gradcam import cam_layers, check_classifier, gradcam, targets, warn_constant

__all__ = ["DEFAULT_METHOD", "METHODS", "SaliencyMethod", "resolve_saliency", "saliency"]

#: method name -> what a figure calls it
METHODS: dict[str, str] = {
    "integrated_gradients": "integrated gradients",
    "input_x_gradient": "input x gradient",
    "gradient": "input gradient",
    "smoothgrad": "SmoothGrad",
    "occlusion": "occlusion",
    "gradcam": "Grad-CAM",
    "layercam": "LayerCAM",
}
#: what ``method=None`` computes (measured: docs/benchmarks.md#saliency-validity-on-the-phantom)
DEFAULT_METHOD = "integrated_gradients"
_CAM = ("gradcam", "layercam")


def _grid(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


@dataclass(frozen=True)
class SaliencyMethod:
    """What :func:`saliency` computes for one input size.

    ``method``: a key of :data:`METHODS`; ``layers``: the hooked modules (CAMs; empty for
    input-resolution methods); ``native``: the grid(s) ``(d, h, w)`` the map is computed on
    before it is resampled to ``input_size``; ``smooth``: width in voxels of the box mean
    applied at the input resolution (1 = none).
    """

    method: str
    layers: tuple[str, ...]
    native: tuple[tuple[int, int, int], ...]
    input_size: tuple[int, int, int]
    smooth: int = 1

    @property
    def title(self) -> str:
        """E.g. ``"LayerCAM (maxpool+layer1, 4x8x8 -> 16x32x32)"``, for figure titles."""
        short = "+".join(n.rsplit(".", 1)[-1] for n in self.layers)
        natives = "+".join(dict.fromkeys(_grid(g) for g in self.native))
        what = f"{short}, " if short else ""
        box = f", {self.smooth}^3 mean" if self.smooth > 1 else ""
        return f"{METHODS[self.method]} ({what}{natives} -> {_grid(self.input_size)}{box})"


def _occlusion_window(size: Sequence[int], window: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(window) if window is not None else tuple(max(1, -(-int(n) // 4)) for n in size)


def resolve_saliency(
    model: CTModel,
    input_size: Sequence[int],
    *,
    method: str | None = None,
    layer: str | Sequence[str] | None = None,
    smooth: int = 3,
    window: Sequence[int] | None = None,
) -> SaliencyMethod:
    """What ``saliency(model, x, method=..., layer=...)`` computes for ``x`` of spatial size
    ``input_size`` ``(D, H, W)``: the method, the layers, the native grid.

    Default layers (CAMs): stages whose map has at least
    :data:`~ct3dzoo.explain.gradcam.MIN_CAM_SIZE` voxels per axis; Grad-CAM the deepest of
    them, LayerCAM all of them fused.
    """
    name = DEFAULT_METHOD if method is None else method
    if name not in METHODS:
        raise ValueError(f"method must be None or one of {list(METHODS)}, got {method!r}")
    size = tuple(int(s) for s in input_size)
    if len(size) != 3:
        raise ValueError(f"input_size must be (D, H, W), got {input_size!r}")
    if name in _CAM:
        if layer is None:
            ok = cam_layers(model, size)
            layers = tuple(ok[-1:] if name == "gradcam" else ok)
        else:
            layers = (layer,) if isinstance(layer, str) else tuple(layer)
            if name == "gradcam" and len(layers) != 1:
                raise ValueError("gradcam hooks one layer; use method='layercam' to fuse several")
        native = _probe(model, size, layers)
        return SaliencyMethod(name, layers, native, size)
    if layer is not None:
        raise ValueError(f"layer= is for method='gradcam' or 'layercam', not {name!r}")
    if smooth < 1 or smooth % 2 == 0:
        raise ValueError(f"smooth must be an odd box width in voxels >= 1, got {smooth}")
    native = size
    if name == "occlusion":
        win = _occlusion_window(size, window)
        native = tuple(max(1, (n - w) // max(1, w // 2) + 1) for n, w in zip(size, win))
    return SaliencyMethod(name, (), (native,), size, smooth)


def _probe(model: CTModel, size: tuple[int, ...], layers: Sequence[str]) -> tuple:
    """Each layer's map size ``(d, h, w)``, from one forward pass without gradients."""
    shape = (1, model.in_chans, *size)
    grids: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(_m: Any, _i: Any, out: Any) -> None:
            if name not in grids:
                grids[name] = (
                    tuple(model.cam_reshape(out, shape).shape[2:]) if torch.is_tensor(out) else ()
                )

        return record

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [n for n in layers if len(grids.get(n, ())) != 3]
    if missing:
        raise ValueError(
            f"layer {missing[0]!r} is not called in the forward pass or its output is not a "
            "(B, C, D, H, W) map; pick a module from model.feature_info.module_name()"
        )
    return tuple(grids[n] for n in layers)


def _require_captum():
    try:
        import captum.attr as attr
    except ImportError as e:
        raise ImportError(
            "input-resolution saliency needs captum >= 0.7: pip install 'ct3dzoo[explain]'"
        ) from e
    return attr


def _attribute(
    model: CTModel, x: torch.Tensor, idx: list[int], spec: SaliencyMethod, kw: dict[str, Any]
) -> torch.Tensor:
    """captum's attribution of logit ``idx[b]`` for each volume, summed over channels."""
    attr = _require_captum()
    xr = x.detach().clone().requires_grad_(True)
    steps, batch = int(kw.pop("n_steps", 32)), int(kw.pop("batch_size", 16))
    if spec.method == "integrated_gradients":
        a = attr.IntegratedGradients(model).attribute(
            xr, baselines=kw.pop("baseline", 0.0), target=idx, n_steps=steps,
            internal_batch_size=max(batch, x.shape[0]),
        )  # fmt: skip
    elif spec.method == "input_x_gradient":
        a = attr.InputXGradient(model).attribute(xr, target=idx)
    elif spec.method == "gradient":
        a = attr.Saliency(model).attribute(xr, target=idx, abs=True)
    elif spec.method == "smoothgrad":
        a = attr.NoiseTunnel(attr.Saliency(model)).attribute(
            xr, nt_type="smoothgrad", nt_samples=int(kw.pop("samples", 16)),
            stdevs=float(kw.pop("noise", 0.15)), nt_samples_batch_size=batch, target=idx,
            abs=True,
        )  # fmt: skip
    else:  # occlusion: the logit's drop when a window is set to the baseline
        win = _occlusion_window(spec.input_size, kw.pop("window", None))
        a = attr.Occlusion(model).attribute(
            xr, sliding_window_shapes=(x.shape[1], *win),
            strides=(x.shape[1], *(max(1, w // 2) for w in win)),
            baselines=kw.pop("baseline", 0.0), target=idx, perturbations_per_eval=batch,
        )  # fmt: skip
    if kw:
        raise TypeError(f"unexpected options for method={spec.method!r}: {sorted(kw)}")
    return a.detach().float().sum(1)


def saliency(
    model: CTModel,
    x: torch.Tensor,
    *,
    method: str | None = None,
    target: int | Sequence[int] | None = None,
    layer: str | Sequence[str] | None = None,
    smooth: int = 3,
    **kw: Any,
) -> torch.Tensor:
    """Where in ``x`` the evidence for ``model``'s logit ``target`` lies.

    Args:
        model: a classification :class:`~ct3dzoo.CTModel` (``num_classes >= 1``).
        x: ``(B, in_chans, D, H, W)`` in [0, 1] (HU windowed), a size the model takes.
        method: ``None`` (:data:`DEFAULT_METHOD`, integrated gradients) or a key of
            :data:`METHODS`. ``"gradcam"``/``"layercam"`` hook stages (pytorch-grad-cam);
            the others attribute to input voxels (captum).
        target: class index (one for all, or one per volume); ``None``: each volume's
            highest logit (with one logit: that one).
        layer: CAM methods only: module name(s); default: the stages whose map has at
            least 4 voxels per axis (:func:`resolve_saliency`).
        smooth: input-resolution methods: width of the box mean (voxels, odd) taken before
            keeping the positive evidence; it removes the stride-2 checkerboard that
            gradients through strided convolutions carry. 1: none.
        **kw: method options: ``n_steps`` (32) and ``baseline`` (0.0, the window's black)
            for integrated gradients; ``samples`` (16) and ``noise`` (0.15, std in [0, 1]
            units) for SmoothGrad; ``window`` ((D, H, W) voxels, default a quarter of each
            axis, stride half of it) and ``baseline`` for occlusion; ``batch_size`` (16).

    Returns:
        ``(B, D, H, W)`` float32 in [0, 1] at the input size, each map scaled to max 1:
        positive evidence only (signed methods), magnitude (gradient, SmoothGrad).

    Warns:
        SaliencyWarning: a map is constant (no voxel carries positive evidence).
    """
    check_classifier(model, x)
    spec = resolve_saliency(
        model, x.shape[2:], method=method, layer=layer, smooth=smooth, window=kw.get("window")
    )
    if spec.method in _CAM:
        if kw:
            raise TypeError(f"unexpected options for method={spec.method!r}: {sorted(kw)}")
        return gradcam(model, x, target=target, layer=list(spec.layers), method=spec.method)
    idx = targets(model, x, target)
    was_training, ckpt = model.training, model.grad_checkpointing
    model.eval()
    model.grad_checkpointing = False
    try:
        with torch.enable_grad():
            a = _attribute(model, x, idx, spec, dict(kw))
    finally:
        model.train(was_training)
        model.grad_checkpointing = ckpt
    if spec.smooth > 1:
        a = F.avg_pool3d(
            a[:, None], spec.smooth, stride=1, padding=spec.smooth // 2, count_include_pad=False
        )[:, 0]
    a = torch.nan_to_num(a.clamp(min=0))
    peak = a.flatten(1).max(1).values.clamp(min=torch.finfo(a.dtype).tiny)
    out = (a / peak[:, None, None, None]).clamp(0, 1).cpu()
    warn_constant(out, spec.method)
    return out
