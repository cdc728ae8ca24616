"""Looking inside a model: saliency maps on volumes, for every architecture, and the
study-level view (which slice window drove the prediction).

:func:`saliency` is the entry point: integrated gradients at the input resolution by default
(captum), or Grad-CAM / LayerCAM on stages large enough to resolve (pytorch-grad-cam); both
come with ``pip install 'ct3dzoo[explain]'``. Grad-CAM itself is ``pytorch-grad-cam``'s (``pip install 'ct3dzoo[explain]'``; 3D since 1.5).
ct3dzoo adds what it lacks for this zoo, and only that:

- the default target layer for every arch, read from the family's stage declaration (the
  last stage; SlowFast: its slow pathway, the fused one, because the stage returns a list;
  MViT: the last block's ``norm1``, because after the final norm the logit reads the class
  token alone, so the other tokens get no gradient);
- ``reshape_transform`` from the family: Swin's channels-last ``(B, D, H, W, C)`` and MViT's
  ``(B, 1 + N, C)`` tokens (class token dropped) to ``(B, C, D, H, W)``; the 2D baselines'
  per-slice ``(B*D, C, h, w)`` to ``(B, C, D, h, w)``;
- gradient checkpointing off and eval mode during the call (the hooks must see one forward);
- the upsampled map clipped to [0, 1] (scipy's cubic zoom overshoots);
- :func:`study_saliency`: sliding slice windows over a whole study.
"""

from .attribution import METHODS, SaliencyMethod, resolve_saliency, saliency
from .gradcam import gradcam
from .study import StudySaliency, study_saliency

__all__ = [
    "METHODS",
    "SaliencyMethod",
    "StudySaliency",
    "gradcam",
    "resolve_saliency",
    "saliency",
    "study_saliency",
]
