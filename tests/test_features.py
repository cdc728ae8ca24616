"""Feature pyramids: forward_intermediates and features_only on every architecture."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import ct3dzoo

ALL = ct3dzoo.list_models()
SIZES = ((16, 64, 64), (32, 96, 96))


def _load(arch: str, size, **kw):
    if arch.startswith("mvit"):  # position embeddings are built for one size
        kw.update(num_slices=size[0], image_size=size[1:])
    return ct3dzoo.load(arch, pretrain=None, **kw).eval()


@pytest.mark.parametrize("arch", ALL)
def test_feature_info_matches_the_maps_at_two_sizes(arch):
    torch.manual_seed(0)
    model = None
    for size in SIZES:
        if model is None or arch.startswith("mvit"):
            model = _load(arch, size, features_only=True)
        info = model.feature_info
        assert len(info) == len(model.model.stages()) >= 4
        x = torch.rand(1, 1, *size)
        with torch.no_grad():
            maps = model(x)
        assert len(maps) == len(info)
        for level, m in zip(info, maps):
            d, h, w = level["reduction"]
            want = (1, level["num_chs"], *(math.ceil(s / r) for s, r in zip(size, (d, h, w))))
            assert tuple(m.shape) == want, (level, tuple(m.shape))
            assert torch.isfinite(m).all()
            model.model.get_submodule(level["module"])  # the name is a real module
        reductions = info.reduction()
        assert all(a[i] <= b[i] for a, b in itertools.pairwise(reductions) for i in range(3))


@pytest.mark.parametrize("arch", ["r3d_18", "swin3d_t", "mvit_v2_s", "slowfast_r50", "resnet18_2d"])
def test_last_intermediate_is_the_feature_map(arch):
    torch.manual_seed(0)
    model = _load(arch, SIZES[0])
    x = torch.rand(2, 1, *SIZES[0])
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        ref = model.forward_features(x)
    if isinstance(ref, list):  # SlowFast: both pathways; the maps are the slow one
        assert all(torch.equal(a, b) for a, b in zip(final, ref))
        assert torch.equal(maps[-1], ref[0])
    elif ref.ndim == 3:  # MViT tokens: the map is the tokens minus the class token
        assert torch.equal(final, ref)
        assert torch.equal(maps[-1].flatten(2).transpose(1, 2), ref[:, 1:])
    else:
        assert torch.equal(final, ref) and torch.equal(maps[-1], ref)


def test_indices_and_stop_early_follow_timm():
    torch.manual_seed(0)
    model = _load("r3d_18", SIZES[0])
    x = torch.rand(1, 1, *SIZES[0])
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[1, -1], intermediates_only=True)
        early_final, early = model.forward_intermediates(x, indices=[0, 2], stop_early=True)
    assert len(every) == 5
    assert [torch.equal(a, b) for a, b in zip(last2, every[3:])] == [True, True]
    assert torch.equal(picked[0], every[1]) and torch.equal(picked[1], every[4])
    assert torch.equal(early[1], every[2]) and torch.equal(early_final, every[2])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(ValueError, match="last n"):
        model.forward_intermediates(x, indices=0)


def test_out_indices_select_levels_and_skip_later_stages():
    model = _load("x3d_xs", SIZES[0], features_only=True, out_indices=(1, 3))
    assert [f["index"] for f in model.feature_info] == [1, 3]
    assert model.feature_info.channels() == [24, 96]
    calls = []
    model.model.backbone.blocks[4].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        maps = model(torch.rand(1, 1, *SIZES[0]))
    assert [m.shape[1] for m in maps] == [24, 96] and calls == []
    with pytest.raises(ValueError, match="only with features_only"):
        ct3dzoo.create_model("x3d_xs", out_indices=(1,))


def test_slowfast_fast_pathway_maps():
    torch.manual_seed(0)
    model = _load("slowfast_r50", SIZES[0])
    x = torch.rand(1, 1, *SIZES[0])
    model.feature_pathway = 1
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
    assert torch.equal(maps[-1], final[1])
    for level, m in zip(model.feature_info, maps):
        assert level["reduction"][0] == 1 and m.shape[1] == level["num_chs"]
        assert m.shape[2] == SIZES[0][0]
    assert model.feature_info.channels() == [8, 32, 64, 128, 256]
