"""PENet through ct3dzoo.load, and the paper's 2D slice-wise baselines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

import ct3dzoo
from ct3dzoo.models.penet import PENet

SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "penet"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _norm(x: torch.Tensor, cfg: dict) -> torch.Tensor:
    shape = (1, 3) + (1,) * (x.ndim - 2)
    return (x - torch.tensor(cfg.mean).view(shape)) / torch.tensor(cfg.std).view(shape)


def _save_penet_checkpoint(sd: dict, path: Path) -> None:
    """The published layout: {"model_state": {"module." + key: tensor}, ...}."""
    ckpt = {
        "ckpt_info": {"epoch": 90, "val_loss": 1.0},
        "model_name": "PENetClassifier",
        "model_state": {f"module.{k}": v for k, v in sd.items()},
    }
    torch.save(ckpt, path)


def test_penet_is_registered_with_kinetics600_default():
    cfg = ct3dzoo.get_pretrained_cfg("penet")
    assert cfg.tag == "kinetics600" and cfg.num_classes == 600
    assert cfg.url is None and cfg.filename == "xnet_kin_90.pth.tar"
    assert "stanfordmedicine.box.com" in cfg.url_info


def test_penet_kinetics_without_cache_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CT3DZOO_HOME", str(tmp_path))
    with pytest.raises(
        Exception, match=r"xnet_kin_90.pth.tar.*ct3dzoo fetch penet.kinetics600 --from"
    ):
        ct3dzoo.load("penet", pretrain="kinetics")


def test_penet_grey_equivalence_from_published_format(tmp_path):
    torch.manual_seed(0)
    upstream = PENet(in_chans=3, num_classes=600).eval()
    with torch.no_grad():
        for p in upstream.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "xnet_kin_90.pth.tar"
    _save_penet_checkpoint(upstream.state_dict(), path)
    model = ct3dzoo.load("penet", pretrain=path, num_classes=0).eval()
    cfg = model.pretrained_cfg
    x = torch.rand(1, 1, 24, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = upstream.forward_head(
            upstream.forward_features(_norm(x.repeat(1, 3, 1, 1, 1), cfg)), pre_logits=True
        )
        out = model(x)
    assert rel_err(out, ref) < 1e-5
    assert model.backbone.in_conv[0].weight.shape == (64, 1, 7, 7, 7)


@pytest.mark.skipif(not SPEC.is_dir(), reason="shared/specs/penet is absent")
def test_penet_reference_logits_through_load(tmp_path):
    """The recipe's weights, saved as the published checkpoint and loaded by ct3dzoo.load,
    reproduce logits_rgb; the 1-channel model equals the 3-channel one on repeated input."""
    spec = importlib.util.spec_from_file_location("penet_recipe", SPEC / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    ref = json.loads((SPEC / "reference_logits.json").read_text())
    sd = recipe.fill_state_dict(PENet(in_chans=3, num_classes=600).state_dict())
    path = tmp_path / "xnet_kin_90.pth.tar"
    _save_penet_checkpoint(sd, path)
    rgb_model = ct3dzoo.load("penet", pretrain=path, in_chans=3, num_classes=600).eval()
    cfg = rgb_model.pretrained_cfg
    inp = recipe.make_input((1, 3, 24, 64, 64))
    # ct3dzoo models normalise internally: feed the volume whose normalisation is the input
    x3 = inp * torch.tensor(cfg.std).view(1, 3, 1, 1, 1) + torch.tensor(cfg.mean).view(
        1, 3, 1, 1, 1
    )
    with torch.no_grad():
        logits = rgb_model(x3)
    torch.testing.assert_close(logits[0], torch.tensor(ref["logits_rgb"]), rtol=0, atol=1e-4)
    grey_model = ct3dzoo.load("penet", pretrain=path, in_chans=1, num_classes=600).eval()
    g = torch.rand(1, 1, 24, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            grey_model(g), rgb_model(g.repeat(1, 3, 1, 1, 1)), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("trunk,size", [("resnet18", 224), ("resnext101_32x8d", 64)])
def test_2d_baseline_grey_equivalence_per_slice(trunk, size, tmp_path):
    torch.manual_seed(0)
    upstream = getattr(tvm, trunk)(weights=None).eval()
    with torch.no_grad():
        for k, v in upstream.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(torch.rand_like(v) + 0.5)
            elif v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.02)
    path = tmp_path / f"{trunk}.pth"
    torch.save(upstream.state_dict(), path)
    model = ct3dzoo.load(f"{trunk}_2d", pretrain=path, num_classes=0).eval()
    cfg = model.pretrained_cfg
    x = torch.rand(1, 1, 3, size, size, generator=torch.Generator().manual_seed(2))
    upstream.fc = torch.nn.Identity()
    with torch.no_grad():
        per_slice = model.forward_features(x).mean(dim=(3, 4))[0].t()  # (D, C)
        ref = upstream(_norm(x[0].transpose(0, 1).repeat(1, 3, 1, 1), cfg))  # slices as a batch
        assert rel_err(per_slice, ref) < 1e-5
        torch.testing.assert_close(model(x)[0], ref.mean(0), rtol=1e-4, atol=1e-5)  # mean pool
    lrcn = ct3dzoo.load(f"lrcn_{trunk}", pretrain=path, num_classes=2).eval()
    torch.testing.assert_close(
        lrcn.backbone.conv1.weight, model.backbone.conv1.weight, rtol=0, atol=0
    )  # same adapted trunk, GRU + head new


def test_slice_pooling_modes():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 5, 64, 64)
    mean_m = ct3dzoo.load("resnet18_2d", pretrain=None, num_classes=0).eval()
    max_m = ct3dzoo.load("resnet18_2d", pretrain=None, num_classes=0, slice_pool="max").eval()
    max_m.load_state_dict(mean_m.state_dict())
    with torch.no_grad():
        per_slice = mean_m.forward_features(x).mean(dim=(3, 4))  # (B, C, D)
        torch.testing.assert_close(max_m(x), per_slice.amax(dim=2))
        torch.testing.assert_close(mean_m(x), per_slice.mean(dim=2))
    att = ct3dzoo.load("resnet18_2d", pretrain=None, num_classes=3, slice_pool="attention")
    assert att(x).shape == (2, 3)
    assert any(p.requires_grad for p in att.head.pool.parameters())
    with pytest.raises(ValueError, match="slice_pool must be"):
        ct3dzoo.load("resnet18_2d", pretrain=None, slice_pool="median")


def test_lrcn_is_a_bidirectional_gru_over_slices():
    model = ct3dzoo.load("lrcn_resnet18", pretrain=None, num_classes=0).eval()
    gru = model.head.pool.gru
    assert gru.bidirectional and gru.hidden_size == 256
    assert model.num_features == 512
    assert {id(p) for p in gru.parameters()} <= {id(p) for p in model.head.parameters()}
    x = torch.rand(1, 1, 6, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 512, 6, 2, 2)
        seq = model.head.pool.sequence(feats)
        assert seq.shape == (1, 512, 6, 1, 1)
        torch.testing.assert_close(model(x), seq.mean(dim=(2, 3, 4)))
        # the GRU is sequential: reversing the slice order changes its per-slice outputs
        rev = model.head.pool.sequence(feats.flip(2))
    assert not torch.allclose(seq, rev.flip(2), atol=1e-4)
    att = ct3dzoo.load("lrcn_resnet18", pretrain=None, num_classes=2, head="attention")
    assert isinstance(att.head.pool, ct3dzoo.models.resnet2d.LRCNPool)
    assert att(x).shape == (1, 2)


def test_2d_pretrain_aliases(monkeypatch):
    seen = {}

    def fake(cfg, *, progress=True, validate=None):
        seen["cfg"] = cfg
        return {k: v for k, v in tvm.resnet18(weights=None).state_dict().items()}

    monkeypatch.setattr("ct3dzoo._io.weights.load_pretrained_state_dict", fake)
    model = ct3dzoo.load("resnet18_2d", pretrain="imagenet", num_classes=1000)
    assert seen["cfg"].tag == "imagenet1k_v1"
    assert seen["cfg"].url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert model.model_config["pretrain"] == "resnet18_2d.imagenet1k_v1"
    with pytest.raises(
        ValueError, match="resnet18_2d has no Kinetics weights: use pretrain='imagenet'"
    ):
        ct3dzoo.load("resnet18_2d", pretrain="kinetics")
    assert ct3dzoo.list_pretrained("resnext101_32x8d_2d.*") == [
        "resnext101_32x8d_2d.imagenet1k_v1",
        "resnext101_32x8d_2d.imagenet1k_v2",
    ]
