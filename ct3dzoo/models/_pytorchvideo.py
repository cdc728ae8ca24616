"""pytorchvideo's model builders, imported once with its import-time noise filtered.

pytorchvideo 0.1.5 calls ``torch.jit.script`` at import, which recent torch answers with a
``FutureWarning`` on every ``import``. That warning is about pytorchvideo's code, not the
user's, so it is silenced here, narrowly (that message, that category, this import only).
Never import pytorchvideo's ``transforms`` (they fail to import with current torchvision).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    from pytorchvideo.models import hub
    from pytorchvideo.models.hub import vision_transformers as hub_vision_transformers
    from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

__all__ = ["create_multiscale_vision_transformers", "hub", "hub_vision_transformers"]
