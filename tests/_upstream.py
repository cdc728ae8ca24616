"""Build the upstream RGB models and compute their pre-logits, for equivalence tests."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import video as tvv

import ct3dzoo


def build_upstream(arch: str) -> nn.Module:
    """The upstream RGB model with random (perturbed) weights, in eval mode."""
    cfg = ct3dzoo.get_pretrained_cfg(arch)
    if cfg.publisher == "torchvision":
        model = getattr(tvv, arch)(weights=None)
    else:
        from pytorchvideo.models import hub as pvh

        model = getattr(pvh, arch)(pretrained=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.add_(torch.randn(v.shape, generator=g) * 0.02)
    return model.eval()


def native_input(arch: str, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A grey volume in [0, 1] at the arch's native clip size: ``(B, 1, T, H, W)``."""
    _, t, h, w = ct3dzoo.get_pretrained_cfg(arch).input_size
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, t, h, w, generator=g)


def normalize_rgb(x: torch.Tensor, arch: str) -> torch.Tensor:
    """``normalize(x, mean, std)`` with the arch's weights stats; 1 channel is repeated to 3."""
    cfg = ct3dzoo.get_pretrained_cfg(arch)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1, 1)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def upstream_pre_logits(model: nn.Module, arch: str, x: torch.Tensor) -> torch.Tensor:
    """Pre-logits of the upstream model on ``normalize(x.repeat(1, 3, ...), mean, std)``."""
    cfg = ct3dzoo.get_pretrained_cfg(arch)
    rgb = normalize_rgb(x, arch)
    inp = rgb
    if arch.startswith("slowfast"):
        idx = torch.linspace(0, x.shape[2] - 1, x.shape[2] // 4).long()
        inp = [rgb.index_select(2, idx), rgb]
    classifier = model.get_submodule(cfg.classifier[0])
    seen: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    try:
        with torch.no_grad():
            model(inp)
    finally:
        hook.remove()
    feats = seen[0]
    if isinstance(classifier, nn.Conv3d):  # S3D: 1x1x1 conv logits averaged afterwards
        return feats.mean(dim=(2, 3, 4))
    return feats.reshape(feats.shape[0], -1, feats.shape[-1]).mean(1)


def save_upstream(model: nn.Module, arch: str, path) -> None:
    """Save in the upstream's own published format."""
    sd = model.state_dict()
    if ct3dzoo.get_pretrained_cfg(arch).file_format == "pytorchvideo":
        torch.save({"model_state": sd}, path)
    else:
        torch.save(sd, path)
