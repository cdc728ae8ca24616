"""Grad-CAM for every architecture, the randomisation sanity check, the study-level view."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import ct3dzoo
from ct3dzoo.explain import gradcam, study_saliency

pytest.importorskip("pytorch_grad_cam")
ALL = ct3dzoo.list_models()
SIZE = (16, 64, 64)


def _blob() -> torch.Tensor:
    d, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in SIZE), indexing="ij")
    ball = ((d - 8) ** 2 * 4 + (h - 24) ** 2 + (w - 40) ** 2 <= 100).float()
    g = torch.Generator().manual_seed(0)
    return (0.3 + 0.1 * torch.rand(SIZE, generator=g) + 0.4 * ball)[None, None]


def _model(arch: str, **kw) -> ct3dzoo.CTModel:
    torch.manual_seed(0)
    return ct3dzoo.load(arch, pretrain=None, num_slices=SIZE[0], image_size=SIZE[1:], **kw)


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.filterwarnings("ignore::ct3dzoo.errors.SaliencyWarning")  # one target may be flat
def test_gradcam_every_arch(arch):
    model = _model(arch, num_classes=2)
    x = _blob().repeat(2, 1, 1, 1, 1)
    x[1] = x[1].flip(-1)
    fc = model.get_classifier()
    with torch.no_grad():  # logit 1 = -logit 0: its Grad-CAM (before the ReLU) is the negation
        fc.weight[1] = -fc.weight[0]
        fc.bias.zero_()
    cams = [gradcam(model, x, target=t) for t in (0, 1)]
    for cam in cams:
        assert cam.shape == (2, *SIZE) and cam.dtype == torch.float32
        assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert model.training  # the mode is restored
    # one of the two has positive evidence unless the layer gets no gradient from the logits
    cam = max(cams, key=lambda c: float(c.max()))
    assert cam.max() > 0.5
    assert not torch.equal(cam[0], cam[1])  # the map follows the input


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_maps_of_a_randomised_model_differ():
    """Adebayo et al. 2018: re-initialising the explained stage and the head changes the map;
    the same model explains the same volume identically."""
    model = _model("r3d_18", num_classes=1).eval()
    x = _blob()
    a, again = gradcam(model, x), gradcam(model, x)
    assert torch.equal(a, again) and a.max() > 0
    rand = copy.deepcopy(model)
    torch.manual_seed(1)
    for m in [*rand.backbone.layer4.modules(), rand.head.fc]:
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    b = gradcam(rand, x)
    assert _corr(a, b) < 0.5


def test_gradcam_errors():
    model = _model("x3d_xs", num_classes=2)
    with pytest.raises(ValueError, match="not called in the forward"):
        gradcam(model, _blob(), layer="backbone.blocks.5.pool")  # only its parts run
    with pytest.raises(ValueError, match="class index"):
        gradcam(model, _blob(), target=5)
    seg = _model("x3d_xs", num_classes=1, head="segmentation")
    with pytest.raises(ValueError, match="classification"):
        gradcam(seg, _blob())


def test_study_saliency_windows_scores_and_map():
    torch.manual_seed(0)
    model = ct3dzoo.load("x3d_xs", pretrain=None, num_classes=1).eval()
    g = torch.Generator().manual_seed(0)
    vol = 0.2 + 0.1 * torch.rand(40, 64, 64, generator=g)
    vol[28:36, 20:30, 30:40] = 0.9
    # one backward pass (the default, integrated gradients, takes 32; the CLI test runs it)
    res = study_saliency(model, vol, num_slices=16, stride=8, method="input_x_gradient")
    assert res.starts == (0, 8, 16, 24) and res.method == "input_x_gradient"
    with torch.no_grad():  # each score is the model's logit on that window
        want = [float(model(vol[None, None, s : s + 16])[0, 0]) for s in res.starts]
    np.testing.assert_allclose(res.scores, want, rtol=1e-4, atol=1e-5)
    k = int(np.argmax(want))
    assert res.best == (res.starts[k], res.starts[k] + 16) and res.logit == max(res.scores)
    assert res.score == pytest.approx(float(torch.sigmoid(torch.tensor(max(want)))), abs=1e-6)
    assert res.slice_scores.shape == (40,) and res.saliency.shape == (40, 64, 64)
    s0, s1 = res.best
    assert res.saliency[:s0].max() == 0 and res.saliency[s1:].max() == 0
    assert 0 < res.saliency[s0:s1].max() <= 1
    assert res.slice_scores[s0:s1].min() == pytest.approx(res.logit)
    covering = [max(sc for st, sc in zip(res.starts, res.scores) if st <= 5 < st + 16)]
    assert res.slice_scores[5] == pytest.approx(covering[0])
    short = study_saliency(model, vol[:8], num_slices=16, method="input_x_gradient")  # padded
    assert short.starts == (0,) and short.best == (0, 8) and short.saliency.shape == (8, 64, 64)
    with pytest.raises(ValueError, match="target=3 is not an output"):
        study_saliency(model, vol, num_slices=16, target=3)


def test_explain_command_writes_montage_curve_and_summary(tmp_path):
    nib = pytest.importorskip("nibabel")
    pytest.importorskip("matplotlib")
    from ct3dzoo.cli import main

    hu = np.full((48, 48, 40), -800.0, dtype=np.float32)  # x, y, z (NIfTI order)
    hu[20:30, 15:25, 28:34] = 60.0
    path = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([-1.0, -1.0, 2.0, 1.0])), str(path))
    out = tmp_path / "out"
    rc = main(["explain", "r3d_18", str(path), "--out", str(out), "--pretrain", "none",
               "--num-slices", "16", "--stride", "8", "--shape", "0", "48", "48"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "saliency.json").read_text())
    assert summary["window_starts"] == [0, 8, 16, 24]
    s0, s1 = summary["best_window"]
    assert s1 - s0 == 16 and summary["score"] == max(summary["window_scores"])
    assert summary["logit"] == max(summary["window_logits"])
    sal = ct3dzoo.data.read_nifti(out / "saliency.nii.gz")  # on the study's own grid
    study = ct3dzoo.data.read_volume(path)
    assert sal.shape == study.shape and np.allclose(sal.affine, study.affine)
    for f in ("saliency_montage.png", "slice_scores.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
