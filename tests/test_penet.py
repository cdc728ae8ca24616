"""PENet: checkpoint layout, reference logits, and self-contained architecture checks."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from ct3dzoo.models.penet import PENET_CFG, PENet, PENetBottleneck

SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs" / "penet"
N_TENSORS = 225
N_VALUES = 29_626_056

needs_specs = pytest.mark.skipif(not SPECS.is_dir(), reason=f"{SPECS} not present")


def _recipe():
    spec = importlib.util.spec_from_file_location("penet_recipe", SPECS / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model() -> PENet:
    torch.manual_seed(0)
    return PENet().eval()


# ----------------------------------------------------------------- against shared/specs
@needs_specs
def test_state_dict_matches_published_layout(model):
    rows = [line.split("\t") for line in (SPECS / "state_dict_keys.tsv").read_text().splitlines()]
    sd = model.state_dict()
    assert [r[0] for r in rows] == list(sd)
    assert {r[0]: r[1] for r in rows} == {k: str(tuple(v.shape)) for k, v in sd.items()}
    assert {r[2] for r in rows} == {"torch.float32"}
    assert sum(math.prod(ast.literal_eval(r[1])) for r in rows) == N_VALUES


@needs_specs
def test_reference_logits_rgb_and_grey():
    recipe = _recipe()
    ref = json.loads((SPECS / "reference_logits.json").read_text())
    rgb = PENet().eval()
    weights = recipe.fill_state_dict(rgb.state_dict())
    rgb.load_state_dict(weights, strict=True)
    x_rgb = recipe.make_input(ref["input_rgb_shape"])
    x_grey = recipe.make_input(ref["input_grey_shape"])
    with torch.no_grad():
        out_rgb = rgb(x_rgb)[0]
        rgb.expand_grey = True  # the upstream compatibility path: repeat 1 -> 3 channels
        out_expanded = rgb(x_grey)[0]

    # 1-channel adaptation: stem weight summed over the RGB input channels.
    grey = PENet(in_chans=1).eval()
    grey_weights = dict(weights)
    grey_weights["in_conv.0.weight"] = weights["in_conv.0.weight"].sum(1, keepdim=True)
    grey.load_state_dict(grey_weights, strict=True)
    with torch.no_grad():
        out_grey = grey(x_grey)[0]

    ref_rgb = torch.tensor(ref["logits_rgb"])
    ref_grey = torch.tensor(ref["logits_grey_expanded"])
    assert out_rgb.shape == ref_rgb.shape == (600,)
    torch.testing.assert_close(out_rgb, ref_rgb, rtol=0, atol=1e-4)
    torch.testing.assert_close(out_expanded, ref_grey, rtol=0, atol=1e-4)
    torch.testing.assert_close(out_grey, ref_grey, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------- self-contained
def test_counts_at_600_classes(model):
    sd = model.state_dict()
    assert len(sd) == N_TENSORS
    assert sum(v.numel() for v in sd.values()) == N_VALUES
    assert sum(p.numel() for p in model.parameters()) == N_VALUES
    assert len(list(model.buffers())) == 0


def test_block_structure_and_drop_schedule(model):
    blocks = [b for stage in model.encoders for b in stage.penet_blocks]
    assert len(blocks) == 16
    assert [b.drop_prob for b in blocks] == [k / 16 * 0.5 for k in range(16)]
    assert [b.conv2.stride for b in blocks if b.down_sample is not None] == [
        (1, 1, 1),
        (2, 2, 2),
        (2, 2, 2),
        (2, 2, 2),
    ]
    assert [b.conv2.groups for b in blocks] == [32] * 16
    assert model.in_conv[1].num_groups == 4


def test_published_checkpoint_format_loads_strict(model):
    ckpt = {"model_state": {"module." + k: v.clone() + 1 for k, v in model.state_dict().items()}}
    prefix = PENET_CFG["checkpoint_format"]["key_prefix"]
    state = ckpt[PENET_CFG["checkpoint_format"]["state_key"]]
    fresh = PENet()
    result = fresh.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()})
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[prefix + k])


def test_forward_backward_small_grey():
    torch.manual_seed(0)
    net = PENet(in_chans=1, num_classes=3).train()
    x = torch.randn(2, 1, 16, 64, 64)
    feats = net.forward_features(x)
    assert feats.shape == (2, 2048, 1, 2, 2)
    pre = net.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 2048)
    torch.testing.assert_close(pre, feats.mean(dim=(2, 3, 4)))
    logits = net.forward_head(feats)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, net.classifier.fc(pre))
    logits.square().sum().backward()
    assert net.in_conv[0].weight.grad.abs().sum().item() > 0
    assert net.classifier.fc.weight.grad.abs().sum().item() > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("train", [False, True])
def test_grad_checkpointing_identical(train):
    torch.manual_seed(0)
    net = PENet(in_chans=1, num_classes=4).train(train)
    x = torch.randn(2, 1, 8, 32, 32)

    def run(enable: bool):
        net.set_grad_checkpointing(enable)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # same stochastic-depth draws in both runs
        out = net(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad for n, p in net.named_parameters()}

    out_ref, grads_ref = run(False)
    out_ckpt, grads_ckpt = run(True)
    torch.testing.assert_close(out_ckpt, out_ref, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_ref.keys()
    # Blocks skipped by stochastic depth get no gradient: same set in both runs.
    assert [n for n, g in grads_ckpt.items() if g is None] == [
        n for n, g in grads_ref.items() if g is None
    ]
    if train:
        assert any(g is None for g in grads_ref.values())
    for name, g in grads_ref.items():
        if g is not None:
            torch.testing.assert_close(grads_ckpt[name], g, rtol=0, atol=0, msg=name)


def test_stochastic_depth_train_only():
    torch.manual_seed(0)
    net = PENet(in_chans=1, num_classes=5)
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        net.train()
        outs = {}
        for seed in (0, 1, 2, 3):
            torch.manual_seed(seed)
            outs[seed] = net(x)
        torch.manual_seed(0)
        again = net(x)
        net.eval()
        torch.manual_seed(0)
        eval_a = net(x)
        torch.manual_seed(1)
        eval_b = net(x)
    torch.testing.assert_close(again, outs[0], rtol=0, atol=0)
    assert max((outs[s] - outs[0]).abs().max().item() for s in (1, 2, 3)) > 1e-3
    torch.testing.assert_close(eval_a, eval_b, rtol=0, atol=0)

    no_drop = PENet(in_chans=1, num_classes=5, drop_path_rate=0.0)
    no_drop.load_state_dict(net.state_dict())
    no_drop.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = no_drop(x)
        torch.manual_seed(1)
        b = no_drop(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_block_drop_returns_shortcut_at_expected_rate():
    torch.manual_seed(0)
    block = PENetBottleneck(16, 32, stride=2, cardinality=2, drop_prob=0.25).train()
    x = torch.randn(1, 16, 4, 4, 4)
    with torch.no_grad():
        shortcut = block.down_sample(x)
        n_drop = sum(torch.equal(block(x), shortcut) for _ in range(400))
        block.eval()
        assert not torch.equal(block(x), shortcut)
    # Binomial(400, 0.25): mean 100, sd ~8.7; a 5-sd band.
    assert 57 <= n_drop <= 143


@pytest.mark.parametrize(
    ("size", "feat"),
    [
        ((1, 1, 1), (1, 1, 1)),
        ((7, 33, 45), (1, 2, 2)),
        ((9, 65, 31), (1, 3, 1)),
        ((17, 32, 32), (2, 1, 1)),
    ],
)
def test_odd_sizes(model, size, feat):
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
        logits = model(torch.randn(2, 3, *size))
    assert feats.shape == (1, 2048, *feat)
    assert logits.shape == (2, 600)
    assert torch.isfinite(logits).all()


def test_input_errors(model):
    with pytest.raises(ValueError, match=r"minimum input 1 x 1 x 1"):
        model(torch.zeros(1, 3, 0, 32, 32))
    with pytest.raises(ValueError, match=r"in_chans=3, got 2 channels"):
        model(torch.zeros(1, 2, 8, 32, 32))
    with pytest.raises(ValueError, match=r"expand_grey"):
        model(torch.zeros(1, 1, 8, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        model(torch.zeros(3, 8, 32, 32))


def test_expand_grey_equals_repeat(model):
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        ref = model(x.repeat(1, 3, 1, 1, 1))
        model.expand_grey = True
        try:
            out = model(x)
        finally:
            model.expand_grey = False
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_reset_classifier():
    net = PENet(num_classes=600)
    net.reset_classifier(2)
    assert net.classifier.fc.weight.shape == (2, 2048)
    assert net.get_classifier() is net.classifier.fc
    net.reset_classifier(0)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 8, 32, 32))
    assert out.shape == (1, 2048)


def test_cfg_facts():
    assert PENET_CFG["file_name"] == "xnet_kin_90.pth.tar"
    assert PENET_CFG["num_classes"] == 600
    assert PENET_CFG["checkpoint_format"] == {"state_key": "model_state", "key_prefix": "module."}
    assert len(PENET_CFG["mean"]) == len(PENET_CFG["std"]) == 3
    torch.testing.assert_close(
        torch.tensor(PENET_CFG["mean"]),
        torch.tensor([0.4338693, 0.4045516, 0.3776087]),
        atol=1e-6,
        rtol=0,
    )
