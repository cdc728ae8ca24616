"""The adaptation contract: adapted 1-channel pre-logits == upstream RGB pre-logits.

For every arch: build the upstream model with random weights, save it in the upstream's own
format, load it through ``ct3dzoo.load(arch, pretrain=path, num_classes=0)`` and compare on a
grey volume at the native clip size (borders included).
"""

from __future__ import annotations

import pytest
import torch
from _upstream import (
    build_upstream,
    native_input,
    normalize_rgb,
    save_upstream,
    upstream_pre_logits,
)
from torch import nn

import ct3dzoo
from ct3dzoo.adapt import FoldedStemConv, fold_stem_weight

VIDEO = [a for a in ct3dzoo.list_models() if ct3dzoo.get_pretrained_cfg(a).publisher
         in ("torchvision", "pytorchvideo") and not ct3dzoo.get_pretrained_cfg(a).upstream_arch]  # fmt: skip
TOL = 1e-5  # relative to the feature norm


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", VIDEO)
def test_grey_equivalence_at_native_size(arch, tmp_path):
    torch.manual_seed(0)
    upstream = build_upstream(arch)
    x = native_input(arch)
    ref = upstream_pre_logits(upstream, arch, x)
    path = tmp_path / (
        "w.pyth" if "pytorchvideo" in ct3dzoo.get_pretrained_cfg(arch).publisher else "w.pth"
    )
    save_upstream(upstream, arch, path)
    del upstream
    model = ct3dzoo.load(arch, pretrain=str(path), num_classes=0).eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape == (1, model.num_features)
    assert rel_err(out, ref) < TOL
    # the stem does 1/3 of the work: one input channel, no hidden repeat
    for _, conv in model.stem_convs():
        assert conv.weight.shape[1] == 1


def test_three_windows_are_the_colour_channels(tmp_path):
    upstream = build_upstream("r3d_18")
    path = tmp_path / "r3d.pth"
    save_upstream(upstream, "r3d_18", path)
    x3 = torch.rand(2, 3, 16, 112, 112, generator=torch.Generator().manual_seed(1))
    upstream.fc = nn.Identity()
    with torch.no_grad():
        ref = upstream(normalize_rgb(x3, "r3d_18"))
        out = ct3dzoo.load("r3d_18", pretrain=path, num_classes=0, in_chans=3).eval()(x3)
    assert rel_err(out, ref) < TOL
    # n = 6 windows: repeat + rescale by 3/6, exact when all six carry the same image
    grey = x3[:, :1]
    with torch.no_grad():
        m1 = ct3dzoo.load("r3d_18", pretrain=path, num_classes=0, in_chans=1).eval()
        m6 = ct3dzoo.load("r3d_18", pretrain=path, num_classes=0, in_chans=6).eval()
        assert rel_err(m6(grey.repeat(1, 6, 1, 1, 1)), m1(grey)) < TOL
    w6 = m6.backbone.stem[0].weight
    w1 = m1.backbone.stem[0].weight
    torch.testing.assert_close(w6.sum(1, keepdim=True), w1)


def test_border_term_is_needed_and_exact():
    """Summing the RGB kernels alone is wrong at the zero-padded borders; the bias map fixes it."""
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 8, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
    mean, std = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
    folded = FoldedStemConv(conv, in_chans=1, mean=mean, std=std)
    x = torch.rand(1, 1, 6, 20, 20)
    m = torch.tensor(mean).view(1, 3, 1, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        ref = conv((x.repeat(1, 3, 1, 1, 1) - m) / s)
        out = folded(x)
        interior_only = (
            nn.functional.conv3d(
                x, fold_stem_weight(conv.weight, mean, std, 1), None, conv.stride, conv.padding
            )
            + folded.bias_map((60, 200, 200))[..., 30:31, 50:51, 50:51]
        )  # a far-interior value
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    border = (interior_only - ref).abs()
    assert border[..., 1:-1, 2:-2, 2:-2].max() < 1e-4  # interior: constant bias suffices
    assert border.max() > 1e-2  # borders: it does not


def test_size_adaptation_transformers(tmp_path):
    """MViTs built for 32 slices x 160 px load native weights; native size is the identity."""
    for arch in ("mvit_v1_b", "mvit_v2_s", "mvit_base_16x4"):
        upstream = build_upstream(arch)
        path = tmp_path / f"{arch}.pth"
        save_upstream(upstream, arch, path)
        src = upstream.state_dict()
        native = ct3dzoo.load(arch, pretrain=path, num_classes=0)
        nsd = native.state_dict()
        for k, v in src.items():  # identity at the native size: position tensors untouched
            if "pos" in k:
                torch.testing.assert_close(nsd["backbone." + k], v, rtol=0, atol=0)
        model = ct3dzoo.load(arch, pretrain=path, num_classes=2, num_slices=32, image_size=160)
        assert model.fixed_size == (32, 160, 160)
        out = model(torch.rand(1, 1, 32, 160, 160))
        assert out.shape == (1, 2) and torch.isfinite(out).all()
        msd = model.state_dict()
        resized = [
            k
            for k in src
            if "pos" in k and tuple(msd["backbone." + k].shape) != tuple(src[k].shape)
        ]
        assert resized, f"{arch}: no size-dependent tensor was resampled"
    # torchvision's own run-time interpolation of rel-pos tables == ours done once at load
    from torchvision.models.video.mvit import _interpolate

    from ct3dzoo.adapt import resample_pos_embed_1d

    t = build_upstream("mvit_v2_s").blocks[0].attn.rel_pos_h.detach()
    torch.testing.assert_close(resample_pos_embed_1d(t, 79), _interpolate(t, 79))


def test_swin_handles_sizes_not_divisible_by_its_patch(tmp_path):
    """Swin pads to its 2x4x4 patches after normalising: the padded voxels carry no mean."""
    upstream = build_upstream("swin3d_t")
    path = tmp_path / "swin.pth"
    save_upstream(upstream, "swin3d_t", path)
    x = torch.rand(1, 1, 9, 62, 70, generator=torch.Generator().manual_seed(0))
    upstream.head = nn.Identity()
    with torch.no_grad():
        ref = upstream(normalize_rgb(x, "swin3d_t"))
        out = ct3dzoo.load("swin3d_t", pretrain=path, num_classes=0).eval()(x)
    assert rel_err(out, ref) < TOL


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path):
    sd = build_upstream("r3d_18").state_dict()
    bad = dict(sd)
    bad.pop("layer1.0.conv1.0.weight")
    bad["layer9.weight"] = torch.zeros(1)
    bad["layer2.0.conv1.1.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as err:
        ct3dzoo.load("r3d_18", pretrain=path)
    msg = str(err.value)
    assert "missing keys (1): backbone.layer1.0.conv1.0.weight" in msg
    assert "unexpected keys (1): backbone.layer9.weight" in msg
    assert "backbone.layer2.0.conv1.1.weight: checkpoint (7,) vs model (128,)" in msg
    # a checkpoint of another arch
    path2 = tmp_path / "mc3.pth"
    torch.save(build_upstream("mc3_18").state_dict(), path2)
    with pytest.raises(
        ValueError,
        match=r"stem.0.weight has shape \(64, 3, 3, 7, 7\), r2plus1d_18 expects \(45, 3, 1, 7, 7\)",
    ):
        ct3dzoo.load("r2plus1d_18", pretrain=path2)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        ct3dzoo.load("r3d_18", pretrain=str(tmp_path / "nope.pth"))


def test_old_checkpoints_without_num_batches_tracked_and_module_prefix(tmp_path):
    up = build_upstream("mc3_18")
    sd = {f"module.{k}": v for k, v in up.state_dict().items() if "num_batches_tracked" not in k}
    path = tmp_path / "mc3.pyth"
    torch.save({"model_state": sd}, path)
    model = ct3dzoo.load("mc3_18", pretrain=path, num_classes=0).eval()
    x = native_input("mc3_18")
    assert rel_err(model(x).detach(), upstream_pre_logits(up, "mc3_18", x)) < TOL


def test_source_classifier_kept_when_classes_match(tmp_path):
    up = build_upstream("r3d_18")
    path = tmp_path / "r3d.pth"
    save_upstream(up, "r3d_18", path)
    model = ct3dzoo.load("r3d_18", pretrain=path, num_classes=400).eval()
    torch.testing.assert_close(model.head.fc.weight, up.fc.weight)
    x = native_input("r3d_18")
    with torch.no_grad():
        assert rel_err(model(x), up(normalize_rgb(x, "r3d_18"))) < TOL
    fresh = ct3dzoo.load("r3d_18", pretrain=path, num_classes=2)
    assert fresh.head.fc.weight.shape == (2, 512)


def test_safetensors_round_trip_of_adapted_weights(tmp_path):
    from safetensors.torch import save_file

    model = ct3dzoo.load("x3d_xs", pretrain=None, num_classes=3, in_chans=1).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = ct3dzoo.load("x3d_xs", pretrain=path, num_classes=3).eval()
    x = torch.rand(1, 1, 4, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
