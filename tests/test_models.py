"""Every registered architecture: API, forward/backward, heads, sizes and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ct3dzoo
from ct3dzoo.models.pv_slowfast import slow_indices

SMALL = (8, 64, 64)
ALL = ct3dzoo.list_models()


def small_model(arch: str, **kw) -> ct3dzoo.CTModel:
    """Random-init model that accepts SMALL volumes (fixed-size archs built for it)."""
    kw.setdefault("num_slices", SMALL[0])
    kw.setdefault("image_size", SMALL[1])
    return ct3dzoo.load(arch, pretrain=None, **kw)


def test_registry_lists_every_family():
    assert sorted(ALL) == ALL
    for name in ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s",
                 "swin3d_t", "swin3d_s", "swin3d_b", "x3d_xs", "x3d_s", "x3d_m", "x3d_l",
                 "slow_r50", "slowfast_r50", "slowfast_r101", "r2plus1d_r50", "csn_r101",
                 "i3d_r50", "c2d_r50", "mvit_base_16x4", "mvit_base_32x3"):  # fmt: skip
        assert name in ALL
    assert ct3dzoo.list_models("x3d*") == ["x3d_l", "x3d_m", "x3d_s", "x3d_xs"]
    assert ct3dzoo.list_models("nothing*") == []
    pre = ct3dzoo.list_pretrained("swin3d_b.*")
    assert pre == ["swin3d_b.kinetics400", "swin3d_b.kinetics400_imagenet22k"]
    assert "r3d_18.kinetics400" in ct3dzoo.list_pretrained()


VIDEO_IMAGENET = [
    a for a in ALL if a != "penet" and ct3dzoo.get_pretrained_cfg(a).pretrain_source != "ct"
]  # in-domain CT rows: tests/test_indomain_*.py


@pytest.mark.parametrize("arch", VIDEO_IMAGENET)
def test_pretrained_cfg_is_complete(arch):
    cfg = ct3dzoo.get_pretrained_cfg(arch)
    for key in ("arch", "tag", "url", "file_format", "mean", "std", "input_size", "stem",
                "num_classes", "license", "citation"):  # fmt: skip
        assert getattr(cfg, key), f"{arch}: {key} missing"
    assert cfg.arch == arch and len(cfg.input_size) == 4 and cfg.input_size[0] == 3
    assert len(cfg.mean) == len(cfg.std) == 3
    assert cfg.url.startswith(("https://download.pytorch.org/", "https://dl.fbaipublicfiles.com/"))


def test_torchvision_facts_match_torchvision():
    """URLs, mean/std and hash prefixes recorded for torchvision archs equal its own Weights."""
    from torchvision.models import get_model_weights

    for full in ct3dzoo.list_pretrained():
        cfg = ct3dzoo.get_pretrained_cfg(full)
        if cfg.publisher != "torchvision":
            continue
        urls = {w.url: w for w in get_model_weights(cfg.upstream_arch or cfg.arch)}
        assert cfg.url in urls, full
        w = urls[cfg.url]
        tf = w.transforms()
        assert tuple(cfg.mean) == pytest.approx(tuple(tf.mean), abs=1e-6), full
        assert tuple(cfg.std) == pytest.approx(tuple(tf.std), abs=1e-6)
        assert cfg.hash_prefix == cfg.url.rsplit("-", 1)[1].split(".")[0]
        assert cfg.num_classes == len(w.meta["categories"])


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(ValueError, match=r"unknown architecture 'r3d18'.*r3d_18"):
        ct3dzoo.load("r3d18")
    with pytest.raises(ValueError, match=r"nearest: .*x3d_s"):
        ct3dzoo.get_pretrained_cfg("x3d_ss")
    with pytest.raises(ValueError, match=r"unknown weights 'swin3d_b.kinetics22k'.*imagenet22k"):
        ct3dzoo.load("swin3d_b", pretrain="kinetics22k")


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("in_chans,num_classes", [(1, 2), (3, 0)])
def test_forward_backward_small(arch, in_chans, num_classes):
    torch.manual_seed(0)
    model = small_model(arch, in_chans=in_chans, num_classes=num_classes)
    x = torch.rand(2, in_chans, *SMALL)
    out = model(x)
    width = num_classes or model.num_features
    assert out.shape == (2, width)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    stem = dict(model.stem_convs())
    assert stem, "every model folds at least one stem conv"
    for conv in stem.values():
        assert conv.weight.shape[1] == in_chans
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert conv.offset.grad is not None
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre.shape == (2, model.num_features)


HEAD_CASES = [(a, h) for a in ("r3d_18", "swin3d_t") for h in ("linear", "mlp", "attention")] + [
    (a, "attention") for a in ("mvit_v2_s", "slowfast_r50", "x3d_xs", "lrcn_resnet18")
]  # every kind on a CNN and a transformer; attention on each special pooling


@pytest.mark.parametrize("arch,head", HEAD_CASES)
def test_head_kinds(arch, head):
    torch.manual_seed(0)
    model = small_model(arch, num_classes=3, head=head).eval()
    x = torch.rand(2, 1, *SMALL)
    out = model(x)
    assert out.shape == (2, 3)
    expected = {"linear": nn.Linear, "mlp": ct3dzoo.heads.MLPHead, "attention": nn.Linear}
    assert isinstance(model.head.fc, expected[head])
    if head == "attention":
        pool = model.head.pool
        if arch.startswith("lrcn"):  # LRCN attends over its BiGRU's per-slice outputs
            pool = pool.reduce.attn
        assert isinstance(pool, ct3dzoo.heads.AttentionPool)
        # the pooled vector depends on every token's content (not a plain average)
        x2 = x.clone()
        x2[:, :, :2] = 0
        assert not torch.allclose(model(x2), out)
    out.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_custom_heads_module_and_callable():
    model = small_model("r3d_18", head=nn.Sequential(nn.Linear(512, 7), nn.Tanh()), num_classes=7)
    out = model(torch.rand(1, 1, *SMALL))
    assert out.shape == (1, 7) and out.abs().max() <= 1
    made = []

    def factory(nf, nc):
        made.append((nf, nc))
        return nn.Linear(nf, nc, bias=False)

    model = small_model("mvit_v2_s", head=factory, num_classes=4)
    assert made == [(768, 4)]
    assert model.head.fc.bias is None
    with pytest.raises(ValueError, match="unknown head 'conv'"):
        small_model("r3d_18", head="conv")


def test_reset_classifier_and_pre_logits():
    torch.manual_seed(0)
    model = small_model("x3d_xs", num_classes=2).eval()
    x = torch.rand(1, 1, *SMALL)
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert pre.shape == (1, 2048) and (pre >= 0).all()  # lin_5 + ReLU
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.num_classes == 5
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), pre)
    model.reset_classifier(3, head="mlp")
    assert isinstance(model.head.fc, ct3dzoo.heads.MLPHead)
    assert model.model_config["head"] == "mlp"


@pytest.mark.parametrize("arch", ["r3d_18", "swin3d_t", "mvit_base_16x4", "slowfast_r50"])
def test_grad_checkpointing_matches(arch):
    torch.manual_seed(0)
    model = small_model(arch, num_classes=2).eval()  # eval: BN/dropout deterministic
    x = torch.rand(2, 1, *SMALL)
    out_a = model(x)
    out_a.sum().backward()
    grads_a = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_b = model(x)
    out_b.sum().backward()
    torch.testing.assert_close(out_a, out_b)
    for n, p in model.named_parameters():
        if n in grads_a:
            torch.testing.assert_close(p.grad, grads_a[n], rtol=1e-4, atol=1e-6)


def test_input_errors_name_the_expected_shape():
    model = small_model("r3d_18")
    with pytest.raises(ValueError, match=r"5-D tensor \(B, 1, D, H, W\).*x\[None, None\]"):
        model(torch.rand(16, 64, 64))
    with pytest.raises(ValueError, match=r"in_chans=1.*got 3 channels"):
        model(torch.rand(1, 3, *SMALL))
    with pytest.raises(TypeError, match="float tensor"):
        model(torch.zeros(1, 1, *SMALL, dtype=torch.int16))
    model = small_model("c2d_r50")
    with pytest.raises(ValueError, match=r"at least D x H x W = 2x32x32; got 1x64x64"):
        model(torch.rand(1, 1, 1, 64, 64))
    model = small_model("slowfast_r50")
    with pytest.raises(ValueError, match=r"divisible by \(4, 1, 1\)"):
        model(torch.rand(1, 1, 18, 64, 64))


def test_fixed_size_error_names_both_sizes():
    model = ct3dzoo.load("mvit_v2_s", pretrain=None)
    assert model.fixed_size == (16, 224, 224)
    with pytest.raises(
        ValueError, match=r"built for D x H x W = 16x224x224.*got 32x160x160.*num_slices=32"
    ):
        model(torch.rand(1, 1, 32, 160, 160))
    with pytest.raises(ValueError, match="divisible by 2"):
        ct3dzoo.load("mvit_v1_b", pretrain=None, num_slices=15)


def test_slowfast_slow_pathway_indices():
    assert slow_indices(32).tolist() == torch.linspace(0, 31, 8).long().tolist()
    assert slow_indices(32).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_indices(4).tolist() == [0]


def test_attention_pool_has_parameters_in_head_only():
    model = small_model("r3d_18", head="attention")
    head_ids = {id(p) for p in model.head.parameters()}
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert head_ids and not head_ids & backbone_ids
    n_all = sum(p.numel() for p in model.parameters())
    n_split = sum(p.numel() for p in model.head.parameters()) + sum(
        p.numel() for p in model.backbone.parameters()
    )
    assert n_all == n_split  # every parameter is either head or backbone


def test_stem_modules_are_the_input_stems():
    model = small_model("slowfast_r50")
    stems = model.stem_modules()
    assert len(stems) == 1
    folded = [m for s in stems for m in s.modules() if isinstance(m, ct3dzoo.adapt.FoldedStemConv)]
    assert len(folded) == 2  # slow and fast pathway stems


@pytest.mark.parametrize("arch", ALL)
def test_runs_at_its_declared_minimum_size(arch):
    probe = ct3dzoo.load(arch, pretrain=None, num_classes=2)
    d, h, w = probe.min_size
    model = small_model(arch, num_classes=2, num_slices=d, image_size=(h, w)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, d, h, w))
    assert out.shape == (1, 2) and torch.isfinite(out).all()
    if d > 1:
        with pytest.raises(ValueError, match=f"at least D x H x W = {d}x{h}x{w}"):
            model.check_input(torch.rand(1, 1, d - 1, h, w))


def test_public_api_names_resolve():
    for name in ct3dzoo.__all__:
        assert getattr(ct3dzoo, name) is not None, name
    assert callable(ct3dzoo.finetune) and callable(ct3dzoo.predict)
    assert ct3dzoo.data.WINDOWS["pe"] == (400.0, 1000.0)  # the paper's PE window
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ct3dzoo.nope  # noqa: B018
