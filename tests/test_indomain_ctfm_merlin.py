"""In-domain CT weights from the Hub: CT-FM (MONAI SegResEncoder) and Merlin's image tower.

Checkpoints are made here in each source's own format (published key names and shapes,
random values) and served from a loopback Hub; references are the upstream modules (MONAI's
``SegResEncoder``; torchvision's ResNet inflated by Merlin's rules) built independently of
the ct3dzoo code under test.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import save
from torch import nn
from torchvision.models import resnet

import ct3dzoo
from ct3dzoo.errors import CheckpointMismatchError, WeightsUnavailableError
from ct3dzoo.models.ct_fm import SegResEncoder

CTFM = ct3dzoo.get_pretrained_cfg("ct_fm")
MERLIN = ct3dzoo.get_pretrained_cfg("merlin_i3resnet152")
MERLIN_PREFIX = "encode_image.i3_resnet."


def _perturb_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics (eval mode uses them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(1 + 0.2 * torch.rand(n, generator=g))
    return module.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to float32 rounding, relative to the tensors' scale."""
    scale = b.abs().max().item()
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5 * scale + 1e-6, ((a - b).abs().max(), scale)


@pytest.mark.parametrize("cfg", [CTFM, MERLIN], ids=lambda c: c.name)
def test_ct_rows_are_complete(cfg):
    """What every in-domain CT row states: its source on the Hub, licence, citation, dataset,
    publisher, the notes citing its sources, and an HU mapping (not a user-chosen window)."""
    for key in ("hf_hub_id", "hf_hub_filename", "file_format", "license", "citation", "dataset",
                "publisher", "paper", "notes", "stem", "mean", "std"):  # fmt: skip
        assert getattr(cfg, key), f"{cfg.name}: {key} missing"
    assert cfg.pretrain_source == "ct" and cfg.input_contract.kind == "hu_range"
    assert cfg.input_contract.source and cfg.input_contract.orientation
    assert "github.com" in cfg.notes  # the code the facts were read from
    if cfg.hf_hub_revision is None:
        assert "Revision:" in cfg.notes  # why none is pinned
    info = cfg.input_contract.describe()
    assert "scaled to [0, 1]" in info and "orientation" in info


# ------------------------------------------------------------------------------- CT-FM
def _ctfm_file(*, init_filters: int = 8, blocks_down=(1, 2, 2, 4, 4)) -> dict:
    """An upstream-format CT-FM state dict (MONAI key names); small widths keep it light."""
    torch.manual_seed(0)
    net = SegResEncoder(in_channels=1, init_filters=init_filters, blocks_down=blocks_down)
    return _perturb_norms(net).state_dict()


def test_ct_fm_features_equal_monai_segresencoder(tmp_path):
    """The acceptance test: published settings, MONAI's encoder with random weights saved as
    safetensors under its own key names, loaded through ct3dzoo.load: same features."""
    segresnet_ds = pytest.importorskip("monai.networks.nets.segresnet_ds")
    torch.manual_seed(0)
    ref = segresnet_ds.SegResEncoder(
        spatial_dims=3, in_channels=1, init_filters=32, blocks_down=(1, 2, 2, 4, 4)
    )
    ref = _perturb_norms(ref)
    path = tmp_path / "model.safetensors"
    path.write_bytes(save(ref.state_dict()))
    model = ct3dzoo.load("ct_fm", pretrain=str(path), num_classes=0).eval()
    x = torch.rand(2, 1, 16, 32, 48)  # [0, 1] = HU -1024..2048 scaled
    with torch.no_grad():
        levels = ref(x)
        feats = model.forward_features(x)
        pre = model(x)
    assert len(levels) == 5 and levels[-1].shape == (2, 512, 1, 2, 3)
    _close(feats, levels[-1])
    _close(pre, levels[-1].mean(dim=(2, 3, 4)))  # pre-logits: global average, last level
    # three identical windows through in_chans=3 give the same numbers
    model3 = ct3dzoo.load("ct_fm", pretrain=str(path), num_classes=0, in_chans=3).eval()
    with torch.no_grad():
        _close(model3(x.repeat(1, 3, 1, 1, 1)), pre)


def test_ct_fm_row_facts():
    assert CTFM.name == "ct_fm.idc148k" and CTFM.pretrain_source == "ct"
    assert CTFM.hf_hub_id == "project-lighter/ct_fm_feature_extractor"
    assert CTFM.hf_hub_filename == "model.safetensors" and len(CTFM.hf_hub_revision) == 40
    c = CTFM.input_contract
    assert (c.kind, c.hu_range, c.orientation) == ("hu_range", (-1024.0, 2048.0), "SPL")
    assert "Apache-2.0" in CTFM.license and "2501.09001" in CTFM.citation
    assert ct3dzoo.load("ct_fm", pretrain=None).pretrained_cfg is CTFM


def test_ct_fm_hub_download_cache_offline(http_server, hf_env, monkeypatch, tmp_path):
    sd = _ctfm_file()
    body = save(sd)
    commit = http_server.serve_hf_repo(
        CTFM.hf_hub_id, {"model.safetensors": body}, commit=CTFM.hf_hub_revision
    )
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    local = tmp_path / "model.safetensors"
    local.write_bytes(body)
    x = torch.rand(1, 1, 16, 32, 32)

    hub = ct3dzoo.load("ct_fm", pretrain="ct_fm", num_classes=0, init_filters=8, progress=False)
    direct = ct3dzoo.load("ct_fm", pretrain=str(local), num_classes=0, init_filters=8)
    with torch.no_grad():
        assert torch.equal(hub.eval()(x), direct.eval()(x))
    gets = [p for m, p in http_server.requests if m == "GET"]
    assert gets == [f"/{CTFM.hf_hub_id}/resolve/{commit}/model.safetensors"]  # pinned

    n = http_server.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = ct3dzoo.load("ct_fm", pretrain="ct_fm", num_classes=0, init_filters=8)
    with torch.no_grad():
        assert torch.equal(offline.eval()(x), direct(x))
    assert http_server.count() == n  # not one request


def test_ct_fm_wrong_architecture_names_the_mismatch(http_server, hf_env, monkeypatch):
    wrong = _ctfm_file(blocks_down=(1, 2, 2, 4))  # a 4-level encoder, not CT-FM's five
    http_server.serve_hf_repo(
        CTFM.hf_hub_id, {"model.safetensors": save(wrong)}, commit=CTFM.hf_hub_revision
    )
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*backbone\.layers\.4\."):
        ct3dzoo.load("ct_fm", pretrain="ct_fm", init_filters=8, progress=False)
    with pytest.raises(CheckpointMismatchError, match=r"conv_init.weight has shape \(8, 1,"):
        ct3dzoo.load("ct_fm", pretrain="ct_fm", progress=False)  # published width is 32


def test_ct_fm_missing_hub_file_says_repo_file_and_fetch(http_server, hf_env, monkeypatch):
    http_server.serve_hf_repo(CTFM.hf_hub_id, {"config.json": b"{}"})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    with pytest.raises(WeightsUnavailableError) as err:
        ct3dzoo.load("ct_fm", pretrain="ct_fm", progress=False)
    msg = str(err.value)
    assert "project-lighter/ct_fm_feature_extractor" in msg and "model.safetensors" in msg
    assert "ct3dzoo fetch ct_fm.idc148k --from /path/to/model.safetensors" in msg


# ------------------------------------------------------------------------------ Merlin
def _inflate_like_merlin(net: resnet.ResNet) -> resnet.ResNet:
    """torchvision's ResNet turned 3-D by Merlin's inflation rules (merlin/models/inflate.py,
    i3res.py): the 7x7 stem -> (3, 7, 7) stride (1, 2, 2); 3x3 convs -> 3x3x3 with the
    spatial stride along D too; 1x1 convs and downsamples -> 1x1x1 (downsample stride along
    D too); max pool 3x3x3 stride 2; BatchNorm as is. torchvision's own forward code runs it."""

    def conv3d(c: nn.Conv2d, *, block_stride: int) -> nn.Conv3d:
        k, s, p = c.kernel_size[0], c.stride[0], c.padding[0]
        if k == 7:
            kernel, stride, pad = (3, 7, 7), (1, 2, 2), (1, 3, 3)
        elif k == 3:
            kernel, stride, pad = (3, 3, 3), (block_stride, s, s), (1, p, p)
        else:
            kernel, stride, pad = (1, 1, 1), (block_stride if s > 1 else 1, s, s), (0, 0, 0)
        return nn.Conv3d(c.in_channels, c.out_channels, kernel, stride, pad, bias=False)

    net.conv1 = conv3d(net.conv1, block_stride=1)
    net.bn1 = nn.BatchNorm3d(64)
    net.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for blk in layer:
            s = blk.conv2.stride[0]
            for name in ("conv1", "conv2", "conv3"):
                setattr(blk, name, conv3d(getattr(blk, name), block_stride=s))
            for name in ("bn1", "bn2", "bn3"):
                setattr(blk, name, nn.BatchNorm3d(getattr(blk, name).num_features))
            if blk.downsample is not None:
                ds = blk.downsample
                blk.downsample = nn.Sequential(
                    conv3d(ds[0], block_stride=s), nn.BatchNorm3d(ds[1].num_features)
                )
    net.avgpool = nn.AdaptiveAvgPool3d(1)
    net.fc = nn.Identity()
    return net


def _merlin_reference(layers=(1, 1, 1, 1)) -> nn.Module:
    torch.manual_seed(0)
    return _perturb_norms(_inflate_like_merlin(resnet.ResNet(resnet.Bottleneck, list(layers))))


def _merlin_checkpoint(ref: nn.Module) -> dict[str, torch.Tensor]:
    """The full MerlinArchitecture state dict: image tower (with its two 1x1x1-conv heads),
    some text-tower tensors and the logit scale, as ``model.state_dict()`` names them."""
    g = torch.Generator().manual_seed(1)
    sd = {MERLIN_PREFIX + k: v for k, v in ref.state_dict().items()}
    sd[MERLIN_PREFIX + "classifier.weight"] = 0.01 * torch.randn(1692, 2048, 1, 1, 1, generator=g)
    sd[MERLIN_PREFIX + "classifier.bias"] = torch.randn(1692, generator=g)
    sd[MERLIN_PREFIX + "contrastive_head.weight"] = torch.randn(512, 2048, 1, 1, 1, generator=g)
    sd[MERLIN_PREFIX + "contrastive_head.bias"] = torch.randn(512, generator=g)
    text = "encode_text.text_encoder.encoder.layer.0.attention.self.query."
    sd[text + "weight"] = torch.randn(768, 768, generator=g)
    sd[text + "bias"] = torch.randn(768, generator=g)
    sd["encode_text.linear_layer.weight"] = torch.randn(512, 768, generator=g)
    sd["encode_text.linear_layer.bias"] = torch.randn(512, generator=g)
    sd["logit_scale"] = torch.ones(())
    return sd


def _pt_bytes(sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_merlin_keys_and_shapes_match_inflated_resnet152():
    """At the published depth (ResNet-152), the image tower's tensors are exactly those of
    torchvision's resnet152 inflated by Merlin's rules (built on the meta device)."""
    with torch.device("meta"):
        ref = _inflate_like_merlin(resnet.resnet152())
        model = ct3dzoo.load("merlin_i3resnet152", pretrain=None, num_classes=0)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert want["conv1.weight"] == (64, 3, 3, 7, 7) and "layer3.35.conv2.weight" in want
    upstream = _merlin_checkpoint_shapes(want)
    got = model.adapt_upstream_state_dict(upstream)
    got.pop("classifier.weight"), got.pop("classifier.bias")
    assert {k: tuple(v.shape) for k, v in got.items()} == want
    ours = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    assert ours.pop("conv1.weight") == (64, 1, 3, 7, 7)  # folded: one input channel
    assert ours.pop("conv1.offset") == (64, 1, 3, 7, 7)
    assert ours == {k: s for k, s in want.items() if k != "conv1.weight"}


def _merlin_checkpoint_shapes(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    sd = {MERLIN_PREFIX + k: torch.empty(s, device="meta") for k, s in shapes.items()}
    sd[MERLIN_PREFIX + "classifier.weight"] = torch.empty(1692, 2048, 1, 1, 1, device="meta")
    sd[MERLIN_PREFIX + "classifier.bias"] = torch.empty(1692, device="meta")
    sd[MERLIN_PREFIX + "contrastive_head.weight"] = torch.empty(512, 2048, 1, 1, 1, device="meta")
    sd["encode_text.linear_layer.weight"] = torch.empty(512, 768, device="meta")
    return sd


def test_merlin_features_equal_inflated_reference(tmp_path):
    ref = _merlin_reference((2, 2, 2, 2))
    path = tmp_path / MERLIN.hf_hub_filename
    path.write_bytes(_pt_bytes(_merlin_checkpoint(ref)))
    model = ct3dzoo.load(
        "merlin_i3resnet152", pretrain=str(path), num_classes=0, layers=(2, 2, 2, 2)
    )
    x = torch.rand(2, 1, 16, 64, 48)  # [0, 1] = HU -1000..1000 scaled; axes S, R, A
    with torch.no_grad():
        want = ref(x.repeat(1, 3, 1, 1, 1))  # Merlin repeats its grey input to 3 channels
        _close(model.eval()(x), want)
        assert model.forward_features(x).shape == (2, 2048, 1, 2, 2)  # stride 16 x 32 x 32
    # num_classes=1692 with a linear head keeps the 1692 EHR-phenotype classifier
    full = _merlin_checkpoint(ref)
    cls = ct3dzoo.load(
        "merlin_i3resnet152", pretrain=str(path), num_classes=1692, layers=(2, 2, 2, 2)
    )
    w = full[MERLIN_PREFIX + "classifier.weight"].flatten(1)
    with torch.no_grad():
        _close(cls.eval()(x), want @ w.T + full[MERLIN_PREFIX + "classifier.bias"])


def test_merlin_row_facts():
    assert MERLIN.name == "merlin_i3resnet152.stanford_abct" and MERLIN.pretrain_source == "ct"
    assert MERLIN.hf_hub_id == "stanfordmimi/Merlin"
    assert MERLIN.hf_hub_filename.endswith("_epoch_99.pt")
    c = MERLIN.input_contract
    assert (c.kind, c.hu_range, c.spacing, c.size) == (
        "hu_range", (-1000.0, 1000.0), (3.0, 1.5, 1.5), (160, 224, 224)
    )  # fmt: skip
    assert "MIT" in MERLIN.license and "Blankemeier" in MERLIN.citation


def test_merlin_hub_download_converts_caches_offline(
    http_server, hf_env, monkeypatch, tmp_path, _isolated_cache
):
    ref = _merlin_reference()
    body = _pt_bytes(_merlin_checkpoint(ref))
    http_server.serve_hf_repo(MERLIN.hf_hub_id, {MERLIN.hf_hub_filename: body})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    local = tmp_path / MERLIN.hf_hub_filename
    local.write_bytes(body)
    kw = {"num_classes": 0, "layers": (1, 1, 1, 1)}
    x = torch.rand(1, 1, 16, 32, 32)

    hub = ct3dzoo.load("merlin_i3resnet152", pretrain="merlin", progress=False, **kw).eval()
    direct = ct3dzoo.load("merlin_i3resnet152", pretrain=str(local), **kw).eval()
    with torch.no_grad():
        assert torch.equal(hub(x), direct(x))
        _close(hub(x), ref(x.repeat(1, 3, 1, 1, 1)))
    assert f"/{MERLIN.hf_hub_id}/resolve/main/{MERLIN.hf_hub_filename}" in [
        p for m, p in http_server.requests if m == "GET"
    ]
    cached = sorted(p.name for p in (_isolated_cache / "weights").glob("*"))
    assert cached == [f"{MERLIN.name}.json", f"{MERLIN.name}.safetensors"]  # converted

    n = http_server.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = ct3dzoo.load("merlin_i3resnet152", pretrain="merlin", **kw).eval()
    with torch.no_grad():
        assert torch.equal(offline(x), direct(x))
    assert http_server.count() == n  # not one request


def test_merlin_wrong_architecture_names_the_mismatch(http_server, hf_env, monkeypatch, tmp_path):
    body = _pt_bytes(_merlin_checkpoint(_merlin_reference((1, 1, 1, 1))))
    http_server.serve_hf_repo(MERLIN.hf_hub_id, {MERLIN.hf_hub_filename: body})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*backbone\.layer3\.1\."):
        ct3dzoo.load("merlin_i3resnet152", pretrain="merlin", layers=(1, 1, 2, 1), progress=False)
    # a CT-FM file is no Merlin checkpoint: the stem is missing
    ctfm = tmp_path / "model.safetensors"
    ctfm.write_bytes(save(_ctfm_file()))
    with pytest.raises(CheckpointMismatchError, match=r"no stem weight conv1.weight"):
        ct3dzoo.load("merlin_i3resnet152", pretrain=str(ctfm), layers=(1, 1, 1, 1))


def test_merlin_missing_hub_file_says_repo_file_and_fetch(http_server, hf_env, monkeypatch):
    http_server.serve_hf_repo(MERLIN.hf_hub_id, {"README.md": b"no weights"})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    with pytest.raises(WeightsUnavailableError) as err:
        ct3dzoo.load("merlin_i3resnet152", pretrain="merlin", progress=False)
    msg = str(err.value)
    assert "stanfordmimi/Merlin" in msg and MERLIN.hf_hub_filename in msg
    assert f"ct3dzoo fetch {MERLIN.name} --from /path/to/{MERLIN.hf_hub_filename}" in msg


# ------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("axcodes", ["RAS", "LPI", "PSR"])  # how the file stores its axes
def test_recorded_orientations_match_the_sources_transforms(tmp_path, axcodes):
    """``orientation`` = MONAI axis codes of the model input's (D, H, W): CT-FM's
    ``Orientation('SPL')`` array is ct3dzoo's CTVolume layout as is; Merlin's
    ``Orientationd('RAS')`` array permuted (x, y, z) -> (z, x, y) is the CTVolume with H and W
    flipped and swapped, which is what the code 'SRA' says."""
    nib = pytest.importorskip("nibabel")
    transforms = pytest.importorskip("monai.transforms")
    from nibabel.orientations import aff2axcodes, axcodes2ornt

    data = np.random.default_rng(0).random((6, 5, 4), dtype=np.float32)
    affine = np.eye(4)  # array axis i points along axcodes[i]; 1.5, 2, 3 mm voxels
    affine[:3, :3] = 0
    for i, (world_axis, sign) in enumerate(axcodes2ornt(axcodes)):
        affine[int(world_axis), i] = sign * (1.5, 2.0, 3.0)[i]
    assert "".join(aff2axcodes(affine)) == axcodes
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    vol = torch.from_numpy(ct3dzoo.data.read_nifti(path).hu)  # (D, H, W) = S, P, L

    load = transforms.LoadImage(image_only=True, ensure_channel_first=True)
    img = load(str(path))
    spl = transforms.Orientation(axcodes=CTFM.input_contract.orientation)(img)[0]
    assert torch.equal(torch.as_tensor(spl), vol)
    ras = transforms.Orientation(axcodes="RAS")(img)[0]
    merlin_input = torch.as_tensor(ras).permute(2, 0, 1)  # Merlin's forward: (z, x, y)
    assert MERLIN.input_contract.orientation == "SRA"
    assert torch.equal(merlin_input, vol.flip(-2, -1).transpose(-2, -1))
    assert torch.equal(torch.as_tensor(transforms.Orientation(axcodes="SRA")(img)[0]), merlin_input)
