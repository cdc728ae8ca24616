"""saliency(): every method on a model whose answer is known, the default on a real arch,
the refusal of maps that cannot resolve (1x1x1 CAM) and the warning on constant maps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import ct3dzoo
from ct3dzoo._model import CTModel
from ct3dzoo.errors import SaliencyWarning
from ct3dzoo.explain import METHODS, gradcam, resolve_saliency, saliency
from ct3dzoo.heads import AvgPool

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")
SIZE = (16, 32, 32)
REGION = (slice(9, 12), slice(20, 24), slice(5, 9))  # a 3x4x4 box away from every border


class RegionSum(CTModel):
    """Logit = the mean of the input over ``REGION``: the evidence lies there and only there."""

    def __init__(self) -> None:
        super().__init__(
            num_classes=1, in_chans=1, head="linear", drop_rate=0.0, feature_dim=1,
            num_features=1, default_pool=AvgPool(), spec=None,
        )  # fmt: skip
        self.backbone = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[(slice(None), 0, *REGION)].mean((1, 2, 3))[:, None]


def _input(batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.2 + 0.6 * torch.rand(batch, 1, *SIZE, generator=g)


def _resnet10() -> CTModel:
    torch.manual_seed(0)  # strided: stages 4x8x8, 4x8x8, 2x4x4, 1x2x2, 1x1x1 at 16x32x32
    return ct3dzoo.load("medicalnet_resnet10", pretrain=None, num_classes=1, dilated=False)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("gradcam", "layercam")])
def test_known_answer_argmax_in_region(method):
    x = _input()
    maps = saliency(RegionSum(), x, method=method)
    assert maps.shape == (2, *SIZE) and maps.dtype == torch.float32
    assert maps.min() >= 0 and float(maps.amax((1, 2, 3)).min()) == pytest.approx(1.0)
    inside = torch.zeros(SIZE, dtype=torch.bool)
    inside[REGION] = True
    for m in maps:
        assert inside.flatten()[int(m.argmax())], method
        if method != "occlusion":  # occlusion windows reach past the region
            # beyond the box mean's reach (1 voxel) the map is exactly zero
            far = ~torch.nn.functional.max_pool3d(inside[None].float(), 3, 1, 1)[0].bool()
            assert float(m[far].max()) == 0.0, method


def test_default_on_a_real_arch_resolves():
    model, x = _resnet10(), _input(1)
    spec = resolve_saliency(model, SIZE)
    assert spec.method == "integrated_gradients" and spec.native == (SIZE,)
    assert spec.title == "integrated gradients (16x32x32 -> 16x32x32, 3^3 mean)"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaliencyWarning)
        m = saliency(model, x, n_steps=8)[0]
    assert m.shape == SIZE and float(m.max()) == pytest.approx(1.0)
    assert float(m.std()) > 0.01  # not flat: spread over many values
    assert len(torch.unique(m)) > 1000


def test_gradcam_on_a_1x1x1_stage_raises():
    """The map the demo used to show: Grad-CAM's default (last) stage is 1x1x1 here."""
    model, x = _resnet10(), _input(1)
    with pytest.raises(ValueError, match=r"1x1x1 .*constant by construction.*earlier layer"):
        gradcam(model, x)
    with pytest.raises(ValueError, match="1x1x1"):
        saliency(model, x, method="gradcam", layer="backbone.layer4")


def test_cam_default_layers_are_at_least_4_voxels_per_axis():
    model = _resnet10()
    cam = resolve_saliency(model, SIZE, method="gradcam")
    assert cam.layers == ("backbone.layer1",) and cam.native == ((4, 8, 8),)
    fused = resolve_saliency(model, SIZE, method="layercam")
    assert fused.layers == ("backbone.maxpool", "backbone.layer1")
    assert fused.title == "LayerCAM (maxpool+layer1, 4x8x8 -> 16x32x32)"
    m = saliency(model, _input(1), method="layercam")
    assert m.shape == (1, *SIZE) and float(m.max()) > 0.5 and float(m.std()) > 0
    with pytest.raises(ValueError, match=r">= 4 voxels per axis.*integrated_gradients"):
        resolve_saliency(model, (8, 32, 32), method="gradcam")  # every stage has d <= 2


def test_constant_map_warns():
    model = _resnet10()
    with torch.no_grad():
        model.get_classifier().weight.zero_()  # the logit no longer depends on the input
    with pytest.warns(SaliencyWarning, match=r"volume\(s\) \[0\] is constant"):
        m = saliency(model, _input(1), method="input_x_gradient")
    assert float(m.max()) == 0.0


def test_bad_options():
    model, x = RegionSum(), _input(1)
    with pytest.raises(ValueError, match="method must be None or one of"):
        saliency(model, x, method="cam")
    with pytest.raises(ValueError, match="layer= is for method='gradcam' or 'layercam'"):
        saliency(model, x, layer="backbone")
    with pytest.raises(TypeError, match=r"unexpected options.*n_step"):
        saliency(model, x, n_step=4)
    with pytest.raises(ValueError, match="odd box width"):
        saliency(model, x, smooth=2)


def test_montage_shows_the_slice_through_the_maximum():
    pytest.importorskip("matplotlib")
    from ct3dzoo.viz import saliency_montage

    vol = torch.rand(SIZE)
    sal = torch.zeros(SIZE)
    sal[5, 3, 3] = 1.0  # maximum on slice 5, not one of 4 evenly spaced over 0..15
    mask = torch.zeros(SIZE)
    mask[5, 2:5, 2:5] = 1
    sal[:, 0, 0] = 0.1
    fig = saliency_montage(vol, sal, num_slices=4, contour=mask)
    titles = [ax.get_title() for ax in fig.axes]
    assert "slice 5 (max)" in titles and len(titles) == 4
