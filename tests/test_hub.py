"""save_pretrained / push_to_hub, and loading them back through local-dir: and hf-hub:."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ct3dzoo


def _x(in_chans: int = 1, seed: int = 0, size=(8, 32, 32)) -> torch.Tensor:
    return torch.rand(2, in_chans, *size, generator=torch.Generator().manual_seed(seed))


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics, so a lost buffer would change the outputs."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("mc3_18", {"num_classes": 3, "in_chans": 1, "head": "linear"}),
        ("mc3_18", {"num_classes": 2, "in_chans": 2, "head": "attention", "drop_rate": 0.1}),
        ("x3d_xs", {"num_classes": 0, "in_chans": 3, "head": "mlp"}),
    ],
)
def test_save_pretrained_local_dir_round_trip_identical(arch, kw, tmp_path):
    model = _perturb(ct3dzoo.load(arch, pretrain=None, **kw))
    out = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]

    again = ct3dzoo.load(f"local-dir:{out}").eval()
    x = _x(kw["in_chans"], size=(4, 32, 32) if arch == "x3d_xs" else (8, 32, 32))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    for k in ("arch", "tag", "in_chans", "num_classes", "head", "drop_rate"):
        assert again.model_config[k] == model.model_config[k]
    sd = load_file(str(out / "model.safetensors"))
    assert sd.keys() == model.state_dict().keys()


def test_config_and_model_card_contents(tmp_path, tv_file):
    model = ct3dzoo.load("mc3_18", pretrain=str(tv_file.path), num_classes=0)
    model.model_config["pretrain"] = "mc3_18.kinetics400"
    out = model.save_pretrained(tmp_path, windows=["pe"])
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "mc3_18"
    assert config["model_config"] == {**model.model_config, "arch_kwargs": {}}
    assert config["num_features"] == 512
    assert config["source_weights"]["tag"] == "kinetics400"
    assert config["source_weights"]["url"].startswith("https://download.pytorch.org/models/mc3_18-")
    assert config["input"]["in_chans"] == 1 and config["input"]["value_range"] == [0.0, 1.0]
    assert config["input"]["windows"][0]["hu_range"] == [-100.0, 900.0]
    assert config["input"]["native_size"] == [16, 112, 112]
    assert config["ct3dzoo_version"] == ct3dzoo.__version__

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ct3dzoo\nlicense: bsd-3-clause\n")
    assert "`mc3_18.kinetics400`" in card and "BSD-3-Clause (torchvision)" in card
    assert "A Closer Look at Spatiotemporal Convolutions" in card  # the source model
    assert "Video Pretraining Advances 3D Deep Learning on Chest CT Tasks" in card  # Ke et al.
    assert "MIDL" in card
    assert "(B, 1, D, H, W)" in card and "[-100, 900] HU" in card and "[0, 1]" in card


def test_custom_head_needs_opt_in_and_head_on_load(tmp_path):
    def factory(n_in: int, n_out: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(n_in, 7), torch.nn.Linear(7, n_out))

    model = _perturb(ct3dzoo.load("mc3_18", pretrain=None, num_classes=2, head=factory))
    with pytest.raises(ValueError, match="allow_custom_head=True"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, allow_custom_head=True)
    with pytest.raises(ValueError, match="custom head; pass the same module or factory as head="):
        ct3dzoo.load(f"local-dir:{tmp_path}")
    again = ct3dzoo.load(f"local-dir:{tmp_path}", head=factory).eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), again(_x()))


def test_load_overrides(tmp_path):
    model = _perturb(ct3dzoo.load("mc3_18", pretrain=None, num_classes=3))
    model.save_pretrained(tmp_path)
    ref = f"local-dir:{tmp_path}"
    two = ct3dzoo.load(ref, num_classes=2).eval()  # new head, same backbone
    assert two.num_classes == 2 and two.head.fc.out_features == 2
    with torch.no_grad():
        assert torch.equal(two.forward_features(_x()), model.forward_features(_x()))
    with pytest.raises(ValueError, match=r"saved with in_chans=1.*in_chans=3"):
        ct3dzoo.load(ref, in_chans=3)
    assert ct3dzoo.load(ref, in_chans=1).in_chans == 1  # same value: fine


def test_bad_refs_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ct3dzoo.load(f"local-dir:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        ct3dzoo.load(f"local-dir:{tmp_path}")
    model = ct3dzoo.load("mc3_18", pretrain=None)
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ValueError, match="one HU window per input channel"):
        model.save_pretrained(tmp_path, windows=["lung", "pe"])


def test_hf_hub_load_through_huggingface_hub(tmp_path, http_server, hf_env, monkeypatch):
    model = _perturb(ct3dzoo.load("mc3_18", pretrain=None, num_classes=2))
    out = model.save_pretrained(tmp_path / "saved")
    files = {f: (out / f).read_bytes() for f in ("config.json", "model.safetensors")}
    commit = http_server.serve_hf_repo("someorg/mc3-ct", files)
    monkeypatch.setenv("HF_ENDPOINT", http_server.base)

    again = ct3dzoo.load("hf-hub:someorg/mc3-ct", progress=False).eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), again(_x()))
    gets = [p for m, p in http_server.requests if m == "GET"]
    assert "/someorg/mc3-ct/resolve/main/config.json" in gets
    # the weights are pinned to the commit the config came from
    assert f"/someorg/mc3-ct/resolve/{commit}/model.safetensors" in gets
    assert again.model_config["loaded_from"] == "hf-hub:someorg/mc3-ct"

    pinned = ct3dzoo.load(f"hf-hub:someorg/mc3-ct@{commit}", progress=False)
    assert pinned.num_classes == 2
    with pytest.raises(ValueError, match="revision given twice"):
        ct3dzoo.load(f"hf-hub:someorg/mc3-ct@{commit}", revision="main")

    n = http_server.count()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # served from the HF cache, no request
    offline = ct3dzoo.load("hf-hub:someorg/mc3-ct").eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), offline(_x()))
    assert http_server.count() == n


def test_push_to_hub_uploads_what_save_pretrained_writes(monkeypatch):
    from huggingface_hub import HfApi

    calls: dict[str, object] = {}

    def create_repo(self, repo_id, **kw):
        calls["create_repo"] = (repo_id, kw)

    def create_branch(self, repo_id, **kw):
        calls["create_branch"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        calls["files"] = sorted(p.name for p in folder.iterdir())
        calls["config"] = json.loads((folder / "config.json").read_text())
        calls["upload"] = (repo_id, kw)
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = ct3dzoo.load("mc3_18", pretrain=None, num_classes=4)
    result = model.push_to_hub("me/mc3-ct", revision="v1", private=True, commit_message="hi")
    assert result == "commit-info"
    assert calls["create_repo"] == (
        "me/mc3-ct",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert calls["create_branch"][1]["branch"] == "v1"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["model_config"]["num_classes"] == 4
    assert calls["upload"][1]["revision"] == "v1" and calls["upload"][1]["commit_message"] == "hi"
