"""In-domain CT weights (MedicalNet, Models Genesis) from a loopback Hugging Face Hub.

Checkpoints are built in each source's own format — ``{"state_dict": {"module." + key: ...}}``
with the published key names and shapes, written out here from the upstream layer lists
(MedicalNet ``models/resnet.py``, Models Genesis ``pytorch/unet3d.py`` with its decoder) —
and served as Hub files. Where MONAI is installed, its MedicalNet-compatible ``resnet`` (an
independent implementation that loads the released files strictly) checks those key lists.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ct3dzoo
from ct3dzoo._io.cache import cache_paths
from ct3dzoo.errors import CheckpointMismatchError, WeightsUnavailableError

X = torch.rand(1, 1, 16, 64, 64)
CT_ARCHS = ["genesis_unet3d", *(f"medicalnet_resnet{d}" for d in (10, 18, 34, 50))]
#: MedicalNet depth -> (shortcut type, bias_downsample) as MONAI records them
_MONAI_ARGS = {10: ("B", False), 18: ("A", True), 34: ("A", True), 50: ("B", False)}


def _monai_resnet(depth: int) -> torch.nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    shortcut, bias_down = _MONAI_ARGS[depth]
    return getattr(nets, f"resnet{depth}")(
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type=shortcut,
        bias_downsample=bias_down,
        feed_forward=False,
    )


def _randomise(sd: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


def _upstream_file(sd: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, buf)
    return buf.getvalue()


def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    d = {f"{prefix}.{n}": torch.empty(c) for n in ("weight", "bias", "running_mean", "running_var")}
    return d | {f"{prefix}.num_batches_tracked": torch.tensor(5)}


def medicalnet_state_dict(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of MedicalNet ``resnet{depth}`` (models/resnet.py) without ``conv_seg``:
    what the released files hold (MONAI loads them strictly into the same key set)."""
    bottleneck = depth == 50
    layers = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    shortcut_b = depth in (10, 50)
    e = 4 if bottleneck else 1
    sd = {"conv1.weight": torch.empty(64, 1, 7, 7, 7)} | _bn("bn1", 64)
    cin = 64
    for i, (p, n) in enumerate(zip((64, 128, 256, 512), layers)):
        for j in range(n):
            b = f"layer{i + 1}.{j}"
            if bottleneck:
                sd[f"{b}.conv1.weight"] = torch.empty(p, cin, 1, 1, 1)
                sd[f"{b}.conv2.weight"] = torch.empty(p, p, 3, 3, 3)
                sd[f"{b}.conv3.weight"] = torch.empty(p * e, p, 1, 1, 1)
                sd |= _bn(f"{b}.bn1", p) | _bn(f"{b}.bn2", p) | _bn(f"{b}.bn3", p * e)
            else:
                sd[f"{b}.conv1.weight"] = torch.empty(p, cin, 3, 3, 3)
                sd[f"{b}.conv2.weight"] = torch.empty(p, p, 3, 3, 3)
                sd |= _bn(f"{b}.bn1", p) | _bn(f"{b}.bn2", p)
            if j == 0 and shortcut_b and (i == 1 or cin != p * e):  # layer2 has stride 2
                sd[f"{b}.downsample.0.weight"] = torch.empty(p * e, cin, 1, 1, 1)
                sd |= _bn(f"{b}.downsample.1", p * e)
            cin = p * e
    return _randomise(sd, seed)


def _luconv(prefix: str, cin: int, cout: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.conv1.weight": torch.empty(cout, cin, 3, 3, 3),
        f"{prefix}.conv1.bias": torch.empty(cout),
        **{f"{prefix}.bn1.{n}": torch.empty(cout) for n in ("weight", "bias", "running_mean")},
        f"{prefix}.bn1.running_var": torch.empty(cout),
        f"{prefix}.bn1.num_batches_tracked": torch.tensor(7),
    }


def genesis_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of ModelsGenesis ``UNet3D(n_class=1, act="relu")``: encoder + decoder."""
    sd: dict[str, torch.Tensor] = {}
    for name, cin, depth in (("down_tr64", 1, 0), ("down_tr128", 64, 1),
                             ("down_tr256", 128, 2), ("down_tr512", 256, 3)):  # fmt: skip
        mid = 32 * 2**depth
        sd |= _luconv(f"{name}.ops.0", cin, mid) | _luconv(f"{name}.ops.1", mid, 2 * mid)
    for name, ch, depth in (("up_tr256", 512, 2), ("up_tr128", 256, 1), ("up_tr64", 128, 0)):
        out = 32 * 2 ** (depth + 1)
        sd[f"{name}.up_conv.weight"] = torch.empty(ch, ch, 2, 2, 2)
        sd[f"{name}.up_conv.bias"] = torch.empty(ch)
        sd |= _luconv(f"{name}.ops.0", ch + ch // 2, out) | _luconv(f"{name}.ops.1", out, out)
    sd["out_tr.final_conv.weight"] = torch.empty(1, 64, 1, 1, 1)
    sd["out_tr.final_conv.bias"] = torch.empty(1)
    return _randomise(sd, seed)


def _serve(http_server, monkeypatch, name: str, body: bytes) -> tuple[str, str]:
    spec = ct3dzoo.get_pretrained_cfg(name)
    http_server.serve_hf_repo(spec.hf_hub_id, {spec.hf_hub_filename: body})
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    return spec.hf_hub_id, spec.hf_hub_filename


def _features(model: ct3dzoo.CTModel, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------- rows
@pytest.mark.parametrize("arch", CT_ARCHS)
def test_ct_rows_are_complete(arch):
    for name in ct3dzoo.list_pretrained(f"{arch}.*"):
        spec = ct3dzoo.get_pretrained_cfg(name)
        assert spec.pretrain_source == "ct"
        assert spec.license and spec.citation and spec.publisher and spec.dataset
        assert spec.hf_hub_id and spec.hf_hub_filename and spec.paper
        assert "https://" in spec.notes and "revision" in spec.notes.lower()
        assert spec.stem == () and spec.mean is None and spec.std is None  # 1 channel, no fold
        assert spec.input_contract.kind in ("hu_range", "zscore") and spec.input_contract.source
    assert ct3dzoo.get_pretrained_cfg(arch).input_contract.kind != "window"


def test_medicalnet_tags_and_files():
    files = {
        n: ct3dzoo.get_pretrained_cfg(n).hf_hub_filename
        for n in ct3dzoo.list_pretrained("medicalnet_*")
    }
    assert files["medicalnet_resnet50.23datasets"] == "resnet_50_23dataset.pth"
    assert files["medicalnet_resnet10.3dseg8"] == "resnet_10.pth"
    assert len(files) == 8
    assert ct3dzoo.get_pretrained_cfg("medicalnet_resnet34").hf_hub_id == (
        "TencentMedicalNet/MedicalNet-Resnet34"
    )
    genesis = ct3dzoo.get_pretrained_cfg("genesis_unet3d.genesis")
    assert (genesis.hf_hub_id, genesis.hf_hub_filename) == (
        "MrGiovanni/ModelsGenesis",
        "Genesis_Chest_CT.pt",
    )
    assert genesis.input_contract.hu_range == (-1000.0, 1000.0)


# ---------------------------------------------------------------- architectures
@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_medicalnet_keys_and_strided_features_match_monai(depth):
    """MONAI's MedicalNet-compatible ResNet (strided layer3/4) is the oracle for key names,
    shapes and, with ``dilated=False``, the features."""
    ref = _monai_resnet(depth).eval()
    sd = _randomise(ref.state_dict(), depth)
    ref.load_state_dict(sd)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert {k: tuple(v.shape) for k, v in medicalnet_state_dict(depth).items()} == shapes
    ours = ct3dzoo.create_model(f"medicalnet_resnet{depth}", num_classes=0, dilated=False)
    assert {k: tuple(v.shape) for k, v in ours.backbone.state_dict().items()} == shapes
    if depth in (10, 18):  # forward passes kept to the small nets
        ours.backbone.load_state_dict(sd)
        x = torch.rand(1, 1, 16, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(_features(ours, x), ref(x), rtol=1e-4, atol=1e-5)


def test_medicalnet_default_geometry_is_the_originals_dilated_one():
    m = ct3dzoo.create_model("medicalnet_resnet18", num_classes=0)
    b = m.backbone
    assert (b.conv1.kernel_size, b.conv1.stride) == ((7, 7, 7), (2, 2, 2))
    assert b.layer3[0].conv1.stride == (1, 1, 1) and b.layer3[0].conv1.dilation == (2, 2, 2)
    assert b.layer4[1].conv2.dilation == (4, 4, 4) and b.layer4[1].conv2.padding == (4, 4, 4)
    with torch.no_grad():
        assert m.eval().forward_features(X).shape == (1, 512, 2, 8, 8)  # total stride 8
        strided = ct3dzoo.create_model("medicalnet_resnet18", dilated=False).eval()
        assert strided.forward_features(X).shape == (1, 512, 1, 2, 2)  # total stride 32


def _genesis_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The upstream encoder written out: conv -> batch-statistics BN (ContBatchNorm3d) ->
    ReLU, twice per level, 2x max pool after the first three levels; global average."""
    for i, name in enumerate(("down_tr64", "down_tr128", "down_tr256", "down_tr512")):
        for j in (0, 1):
            p = f"{name}.ops.{j}"
            x = F.conv3d(x, sd[f"{p}.conv1.weight"], sd[f"{p}.conv1.bias"], padding=1)
            x = F.batch_norm(x, None, None, sd[f"{p}.bn1.weight"], sd[f"{p}.bn1.bias"], True)
            x = F.relu(x)
        if i < 3:
            x = F.max_pool3d(x, 2)
    return x.mean(dim=(2, 3, 4))


def test_genesis_encoder_matches_the_upstream_forward(tmp_path):
    sd = genesis_state_dict(seed=1)
    path = tmp_path / "Genesis_Chest_CT.pt"
    path.write_bytes(_upstream_file(sd))
    exact = ct3dzoo.load("genesis_unet3d", pretrain=str(path), num_classes=0, bn_batch_stats=True)
    x = torch.rand(2, 1, 16, 32, 32)
    torch.testing.assert_close(_features(exact, x), _genesis_reference(sd, x), rtol=1e-4, atol=1e-5)
    # the default uses the file's running statistics in eval: a different, batch-free output
    plain = ct3dzoo.load("genesis_unet3d", pretrain=str(path), num_classes=0)
    assert _features(plain, x).shape == (2, 512)
    torch.testing.assert_close(_features(plain, x[:1]), _features(plain, x)[:1])
    with pytest.raises(ValueError, match="divisible by"):
        plain(torch.rand(1, 1, 12, 32, 32))


# ------------------------------------------------------------------- through the Hub
@pytest.mark.parametrize(
    "name,make",
    [
        ("medicalnet_resnet18.23datasets", lambda: medicalnet_state_dict(18)),
        ("medicalnet_resnet10.3dseg8", lambda: medicalnet_state_dict(10)),
        ("genesis_unet3d.genesis_chest_ct", genesis_state_dict),
    ],
)
def test_hub_download_converts_caches_and_works_offline(
    name, make, http_server, hf_env, monkeypatch, tmp_path, _isolated_cache
):
    body = _upstream_file(make())
    repo, filename = _serve(http_server, monkeypatch, name, body)
    arch, tag = name.split(".")
    pretrain = "medicalnet" if tag == "23datasets" else tag  # the alias picks the default tag
    model = ct3dzoo.load(arch, pretrain=pretrain, num_classes=0, progress=False)
    assert ("GET", f"/{repo}/resolve/main/{filename}") in http_server.requests
    assert model.model_config["pretrain"] == name
    cached = sorted(p.name for p in (_isolated_cache / "weights").iterdir())
    assert cached == [f"{name}.json", f"{name}.safetensors"]  # converted into our cache
    direct = tmp_path / filename
    direct.write_bytes(body)
    expect = _features(ct3dzoo.load(arch, pretrain=str(direct), num_classes=0))
    torch.testing.assert_close(_features(model), expect, rtol=0, atol=0)
    # offline: zero requests, from the ct3dzoo cache even with the HF cache gone
    n = http_server.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CT3DZOO_OFFLINE", "1")
    for p in sorted(Path(hf_env).rglob("*"), reverse=True):
        p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    again = ct3dzoo.load(arch, pretrain=pretrain, num_classes=0, progress=False)
    torch.testing.assert_close(_features(again), expect, rtol=0, atol=0)
    assert http_server.count() == n


@pytest.mark.parametrize(
    "name,wrong,expect",
    [
        ("medicalnet_resnet34", lambda: medicalnet_state_dict(18), r"missing keys.*layer1\.2"),
        ("medicalnet_resnet18", lambda: medicalnet_state_dict(10), r"unexpected keys.*downsample"),
        (
            "genesis_unet3d",
            lambda: medicalnet_state_dict(10),
            r"missing keys.*down_tr128.*unexpected keys.*layer1",
        ),
    ],
)
def test_wrong_architecture_is_refused(name, wrong, expect, http_server, hf_env, monkeypatch):
    spec = ct3dzoo.get_pretrained_cfg(name)
    _serve(http_server, monkeypatch, spec.name, _upstream_file(wrong()))
    with pytest.raises(
        CheckpointMismatchError, match=rf"(?s){spec.name} does not fit {name}.*{expect}"
    ) as e:
        ct3dzoo.load(name, pretrain=spec.tag, num_classes=0, progress=False)
    assert "nothing was cached" in str(e.value)
    assert not cache_paths(spec.name).weights.exists()  # refused before conversion


def test_fetch_from_a_wrong_file_caches_nothing(tmp_path, _isolated_cache):
    path = tmp_path / "resnet_34_23dataset.pth"
    path.write_bytes(_upstream_file(medicalnet_state_dict(18)))
    with (
        pytest.warns(UserWarning, match="not verified against a published hash"),
        pytest.raises(CheckpointMismatchError, match="not a checkpoint of medicalnet_resnet34"),
    ):
        ct3dzoo.fetch("medicalnet_resnet34", from_file=path)
    assert not (_isolated_cache / "weights").exists() or not any(
        (_isolated_cache / "weights").glob("*.safetensors")
    )


def test_missing_hub_file_says_repo_file_and_fetch_from(http_server, hf_env, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)  # serves nothing: 404
    with pytest.raises(WeightsUnavailableError) as e:
        ct3dzoo.load("medicalnet_resnet18", pretrain="medicalnet", progress=False)
    msg = str(e.value)
    assert "resnet_18_23dataset.pth" in msg and "TencentMedicalNet/MedicalNet-Resnet18" in msg
    assert "ct3dzoo fetch medicalnet_resnet18.23datasets --from" in msg
    with pytest.raises(ValueError, match=r"no Kinetics weights: use pretrain='medicalnet'"):
        ct3dzoo.load("medicalnet_resnet18")  # load()'s default pretrain="kinetics"


def test_pinned_revision_is_what_is_requested(http_server, hf_env, monkeypatch):
    spec = ct3dzoo.get_pretrained_cfg("medicalnet_resnet18.3dseg8")
    assert spec.hf_hub_revision == "ee59c99e39a995fb8c20f2a2650a66161e2df584"
    body = _upstream_file(medicalnet_state_dict(18))
    http_server.serve_hf_repo(spec.hf_hub_id, {"resnet_18.pth": body}, commit=spec.hf_hub_revision)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)
    ct3dzoo.fetch(spec.name, progress=False)
    paths = {p for _, p in http_server.requests}
    assert f"/{spec.hf_hub_id}/resolve/{spec.hf_hub_revision}/resnet_18.pth" in paths
    assert not any("/resolve/main/" in p for p in paths)
