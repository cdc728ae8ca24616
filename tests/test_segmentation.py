"""head="segmentation": dense logits at the input size over every stage of the backbone."""

from __future__ import annotations

import pytest
import torch

import ct3dzoo

SIZE = (16, 64, 64)


def _blob(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright sphere (radius 10 voxels) in noise: volume (1, 1, D, H, W), mask (1, 1, D, H, W)."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in SIZE), indexing="ij")
    mask = ((d - 8) ** 2 * 4 + (h - 24) ** 2 + (w - 40) ** 2 <= 100).float()
    x = 0.3 + 0.1 * torch.rand(SIZE, generator=g) + 0.4 * mask
    return x[None, None], mask[None, None]


def _dice(logits: torch.Tensor, mask: torch.Tensor) -> float:
    pred = (logits > 0).float()
    return float(2 * (pred * mask).sum() / (pred.sum() + mask.sum()).clamp_min(1))


@pytest.mark.parametrize("arch", ["r3d_18", "swin3d_t", "mvit_v2_s", "slowfast_r50", "resnet18_2d"])
def test_segmentation_logits_at_input_size_and_gradients_reach_the_stem(arch):
    torch.manual_seed(0)
    model = ct3dzoo.load(
        arch, pretrain=None, head="segmentation", num_classes=2,
        num_slices=SIZE[0], image_size=SIZE[1:],
    )  # fmt: skip
    assert model.head.kind == "segmentation" and model.model_config["head"] == "segmentation"
    x, _ = _blob()
    out = model(x)
    assert out.shape == (1, 2, *SIZE) and torch.isfinite(out).all()
    out[:, 1].mean().backward()
    stem = next(m for _, m in model.stem_convs())
    grad = stem.weight.grad if hasattr(stem, "weight") else next(stem.parameters()).grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="segmentation head"):
        model.forward_head(model.forward_features(x))


def test_segmentation_head_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = ct3dzoo.load("x3d_xs", pretrain=None, head="segmentation", num_classes=1).eval()
    model.save_pretrained(tmp_path / "m")
    again = ct3dzoo.load(f"local-dir:{tmp_path / 'm'}").eval()
    x, _ = _blob()
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_segmentation_needs_classes():
    with pytest.raises(ValueError, match="num_classes >= 1"):
        ct3dzoo.create_model("r3d_18", head="segmentation", num_classes=0)


def test_segmentation_head_overfits_one_blob():
    """15 Adam steps on one synthetic blob: Dice > 0.5 (BCE on the logits). Measured in train
    mode: after so few steps from random init the BatchNorm running statistics lag."""
    torch.manual_seed(0)
    model = ct3dzoo.load("x3d_xs", pretrain=None, head="segmentation", num_classes=1)
    x, mask = _blob()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(4.0))
    model.train()
    assert _dice(model(x).detach(), mask) < 0.5
    for _ in range(15):
        opt.zero_grad()
        loss_fn(model(x), mask).backward()
        opt.step()
    with torch.no_grad():
        assert _dice(model(x), mask) > 0.5
